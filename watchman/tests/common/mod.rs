//! Fixtures: Watchman in-process with the local backend (real Middleman and ipykernel
//! processes), a gRPC client, and a Middleman WebSocket client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use watchman_proto::v1 as pb;
use watchman_proto::v1::watchman_client::WatchmanClient;

pub mod gateway;
pub mod jobs;

/// Kubernetes fixtures (testkit), and an in-process replica on them.
pub mod kube {
    pub use testkit::kube::KubeEnv;

    /// An in-process replica of `warm` pods of plan `free` on `k`.
    pub async fn replica(k: &KubeEnv, warm: u32, store: &str, instance: &str) -> watchman::Running {
        replica_of(k, "free", warm, store, instance).await
    }

    /// An in-process replica of `warm` pods of plan `plan` on `k`.
    pub async fn replica_of(
        k: &KubeEnv,
        plan: &str,
        warm: u32,
        store: &str,
        instance: &str,
    ) -> watchman::Running {
        replica_with(k, plan, warm, store, instance, &[]).await
    }

    /// An in-process replica of `warm` pods of plan `plan` on `k`, with `extra` flags.
    pub async fn replica_with(
        k: &KubeEnv,
        plan: &str,
        warm: u32,
        store: &str,
        instance: &str,
        extra: &[&str],
    ) -> watchman::Running {
        use clap::Parser as _;
        let plans = k.write_plans(&k.plan(plan, warm));
        let mut args = vec!["watchman".to_owned()];
        args.extend(k.args(&plans, store, instance, super::API_TOKEN));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        watchman::start(watchman::Args::try_parse_from(args).unwrap())
            .await
            .unwrap()
    }
}

pub const API_TOKEN: &str = "test-api-token-0123456789";

pub use testkit::TempDir as Dir;

pub fn middleman_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/middleman");
    assert!(
        bin.exists(),
        "{} missing: run `make test` (or `cargo build -p middleman`) first",
        bin.display()
    );
    bin
}

/// Settings shared by the replicas of one test deployment.
#[derive(Debug)]
pub struct Deployment {
    pub dir: Dir,
    pub plans: PathBuf,
    pub key: PathBuf,
    pub pool_id: String,
}

/// Whatever happens in the test (a panic included), no process of this deployment survives it.
impl Drop for Deployment {
    fn drop(&mut self) {
        for pid in pool_processes(&self.pool_id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Deployment {
    /// One plan `free` with a fixed warm pool of `warm` and the given idle timeout.
    pub fn new(tag: &str, warm: u32, idle: &str) -> Self {
        assert!(
            std::env::var_os("JUPYTER_PATH").is_some(),
            "JUPYTER_PATH unset: run `make test`, which prepares the Python kernel"
        );
        let dir = Dir::new(tag);
        let plans = dir.0.join("plans.toml");
        std::fs::write(
            &plans,
            format!(
                "[plans.free]\nkernel = \"python3\"\nwarm = {{ ratio = 0.0, min = {warm}, max = {warm} }}\nidle_timeout = \"{idle}\"\nmax_lifetime = \"1h\"\n[plans.free.limits]\nexecution_timeout = \"30s\"\nmax_open_files = 321\nmemory_mib = 2048\n"
            ),
        )
        .unwrap();
        let key = dir.0.join("signing.pem");
        std::fs::write(
            &key,
            session_token::SigningKey::generate().to_pem().unwrap(),
        )
        .unwrap();
        let pool_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        Self {
            dir,
            plans,
            key,
            pool_id,
        }
    }

    /// Starts a replica with `store` (`memory` or a Redis URL) and `extra` flags.
    pub async fn replica(&self, store: &str, extra: &[&str]) -> watchman::Running {
        use clap::Parser as _;
        let mut args: Vec<String> = vec![
            "watchman".into(),
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--plans".into(),
            self.plans.display().to_string(),
            "--signing-key".into(),
            self.key.display().to_string(),
            "--api-token".into(),
            API_TOKEN.into(),
            "--store".into(),
            store.into(),
            "--redis-prefix".into(),
            format!("{}:", self.pool_id),
            "--middleman-bin".into(),
            middleman_bin().display().to_string(),
            "--local-root".into(),
            self.dir.0.join("pods").display().to_string(),
            "--pool-id".into(),
            self.pool_id.clone(),
            "--reconcile-interval".into(),
            "100ms".into(),
            "--lease-ttl".into(),
            "2s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        watchman::start(watchman::Args::try_parse_from(args).unwrap())
            .await
            .unwrap()
    }
}

pub type Client = WatchmanClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, Clone)]
pub struct Bearer(pub String);
impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.0.is_empty() {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", self.0).parse().unwrap(),
            );
        }
        Ok(r)
    }
}

pub async fn client(addr: std::net::SocketAddr, token: &str) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    WatchmanClient::with_interceptor(channel, Bearer(token.into()))
}

pub fn allocate_req(doc: &str, wait_ms: u32) -> pb::AllocateRequest {
    pb::AllocateRequest {
        document_id: doc.into(),
        plan: "free".into(),
        kernel: String::new(),
        user_id: "ada".into(),
        user_name: "Ada".into(),
        role: pb::Role::Editor as i32,
        wait_ms,
    }
}

/// Waits until plan `free` has `warm` warm pods.
pub async fn wait_warm(c: &mut Client, warm: u32) {
    wait_warm_plan(c, "free", warm).await;
}

/// Waits until `plan` has `warm` warm pods.
pub async fn wait_warm_plan(c: &mut Client, plan: &str, warm: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let pools = c
            .list_pools(pb::ListPoolsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pools;
        if pools.iter().any(|p| p.plan == plan && p.warm >= warm) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool did not fill: {pools:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to the allocation's Middleman and runs `code`, returning the text/plain result.
pub async fn run_code(a: &pb::Allocation, code: &str) -> String {
    use middleman::protocol::{ClientMessage, Output, ServerEvent, ServerFrame};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}?token={}", a.websocket_url, a.token);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .unwrap();
    let msg = ClientMessage::Execute {
        code: code.into(),
        request_id: None,
        stop_on_error: true,
    };
    ws.send(Message::text(serde_json::to_string(&msg).unwrap()))
        .await
        .unwrap();
    let mut result = String::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let f: ServerFrame = serde_json::from_str(&t).unwrap();
        match f.event {
            ServerEvent::Output {
                output: Output::ExecuteResult { data, .. },
                ..
            } => {
                result = data["text/plain"].as_str().unwrap_or_default().to_owned();
            }
            ServerEvent::Output {
                output: Output::Stream { text, .. },
                ..
            } => result.push_str(&text),
            ServerEvent::ExecutionFinished { .. } => return result,
            _ => {}
        }
    }
}

/// The process id of a local pod (its Middleman).
pub async fn pod_pid(w: &watchman::Running, pod: &str) -> i32 {
    w.watchman
        .store()
        .pods()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.id == pod)
        .unwrap()
        .handle
        .parse()
        .unwrap()
}

/// Waits until process `pid` is gone (30 s at most; `what` says what it was).
pub async fn wait_pid_gone(pid: i32, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pid_alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Pids of live processes carrying `WATCHMAN_POOL=<pool_id>`.
pub fn pool_processes(pool_id: &str) -> Vec<i32> {
    let marker = format!("WATCHMAN_POOL={pool_id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            (env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) && pid_alive(pid))
                .then_some(pid)
        })
        .collect()
}

/// Waits until the replica has completed `n` more reconcile passes as leader than now:
/// whatever those passes would do wrong with the state they saw, they have done.
pub async fn more_passes(w: &watchman::Running, n: u64) {
    let mut status = w.reconciler.clone();
    let start = status.borrow_and_update().passes;
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.leading && s.passes >= start + n),
    )
    .await
    .expect("no reconcile passes for 120 s")
    .expect("the reconciler stopped");
}

/// Stops a replica, then deletes its pods (stopping first, so the reconciler cannot refill).
pub async fn teardown(w: watchman::Running) {
    let wm = w.watchman.clone();
    let _ = w.stop().await;
    wm.delete_all_pods().await.unwrap();
}

/// Waits until no process of the pool is left.
pub async fn wait_pool_gone(pool_id: &str) -> bool {
    for _ in 0..100 {
        if pool_processes(pool_id).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Status code of `GET path` on Watchman's HTTP address.
pub async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
