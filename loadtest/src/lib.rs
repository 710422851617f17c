//! Shared parts of the load drivers: starting a real Middleman or a stock Jupyter Server as
//! child processes, speaking to them, and reading their memory and CPU from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use doc_protocol::ServerFrame;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

mod proxy;
pub use proxy::{Chp, Gateway, free_port};

/// How long one step (a connection, a reply) may take before the driver gives up.
pub const STEP: Duration = Duration::from_secs(30);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A fresh scratch directory under the system temp dir.
pub fn tempdir(tag: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Raises this process's soft limit of open files to its hard limit (children inherit it);
/// returns the new limit.
pub fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// The most resident memory a process has had, MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The bearer token the drivers give the Watchmans they start.
pub const API_TOKEN: &str = "bench-api-token-0123456789";

/// Adds `authorization: Bearer API_TOKEN` to every call.
#[derive(Debug, Clone, Copy)]
pub struct Bearer;

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {API_TOKEN}")
                .parse()
                .map_err(|_| tonic::Status::internal("header"))?,
        );
        Ok(r)
    }
}

/// A gRPC client of Watchman.
pub type WatchmanClient = watchman_proto::v1::watchman_client::WatchmanClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A client on its own HTTP/2 connection to Watchman at `addr`.
pub async fn watchman_client(addr: std::net::SocketAddr) -> anyhow::Result<WatchmanClient> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(watchman_proto::v1::watchman_client::WatchmanClient::with_interceptor(channel, Bearer))
}

/// A Watchman in this process with the local backend, in `dir`: `plans` (TOML) as its plans
/// file, a fresh signing key (its public half in `dir/keys/public.pem`, for a gateway),
/// [`API_TOKEN`], real pods of `middleman_bin` under `dir/pods`, `reconcile_interval`; `extra`
/// flags after those.
pub async fn local_watchman(
    dir: &Path,
    plans: &str,
    middleman_bin: &Path,
    reconcile_interval: &str,
    extra: &[&str],
) -> anyhow::Result<(watchman::Running, WatchmanClient)> {
    use clap::Parser as _;
    std::fs::create_dir_all(dir)?;
    let plans_file = dir.join("plans.toml");
    std::fs::write(&plans_file, plans)?;
    let keys = Keys::generate(&dir.join("keys"))?;
    let mut args: Vec<String> = [
        "watchman",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--api-token",
        API_TOKEN,
        "--reconcile-interval",
        reconcile_interval,
    ]
    .map(str::to_owned)
    .into();
    for (flag, value) in [
        ("--plans", plans_file.display().to_string()),
        ("--signing-key", keys.signing_pem().display().to_string()),
        ("--middleman-bin", middleman_bin.display().to_string()),
        ("--local-root", dir.join("pods").display().to_string()),
        (
            "--pool-id",
            format!("bench-{}", uuid::Uuid::new_v4().simple()),
        ),
    ] {
        args.extend([flag.to_owned(), value]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let w = watchman::start(watchman::Args::try_parse_from(args)?).await?;
    let c = watchman_client(w.grpc_addr).await?;
    Ok((w, c))
}

/// Waits until some pool Watchman lists is `ready`, asking every `every`, for at most `within`.
pub async fn wait_pool(
    c: &mut WatchmanClient,
    within: Duration,
    every: Duration,
    ready: impl Fn(&watchman_proto::v1::PoolStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let pools = c
            .list_pools(watchman_proto::v1::ListPoolsRequest {})
            .await?
            .into_inner()
            .pools;
        if pools.iter().any(&ready) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("no pool was ready within {} s: {pools:?}", within.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}

/// CPU time (user + system) a process has used, seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((utime + stime) / ticks)
}

/// The peak RSS of `pid`, sampled every 20 ms until `stop` is cancelled.
pub fn sample_peak_rss(
    pid: u32,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut peak: f64 = 0.0;
        loop {
            peak = peak.max(rss_mib(pid).unwrap_or(0.0));
            tokio::select! {
                () = stop.cancelled() => return peak,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
}

/// The next JSON frame of a Middleman connection (binary Yjs frames are skipped).
pub async fn next_frame(ws: &mut Ws) -> anyhow::Result<ServerFrame> {
    loop {
        match tokio::time::timeout(STEP, ws.next())
            .await?
            .context("connection ended")??
        {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(c) => bail!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// An Ed25519 key pair in a scratch directory: Middlemen (and a gateway) verify with
/// `public.pem`; the driver mints tokens in-process, as Watchman does, so that thousands of
/// connections need no process each.
#[derive(Debug, Clone)]
pub struct Keys {
    dir: PathBuf,
    key: session_token::SigningKey,
}

impl Keys {
    /// A fresh pair, written to `dir/signing.pem` and `dir/public.pem`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = session_token::SigningKey::generate();
        std::fs::write(dir.join("signing.pem"), key.to_pem()?)?;
        std::fs::write(dir.join("public.pem"), key.verifying_key().to_pem()?)?;
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// The signing key's file (PKCS#8 PEM).
    pub fn signing_pem(&self) -> PathBuf {
        self.dir.join("signing.pem")
    }

    /// The public key's file (SPKI PEM).
    pub fn public_pem(&self) -> PathBuf {
        self.dir.join("public.pem")
    }

    /// An editor's token for `user` in document `doc` on `pod`, valid for an hour (what
    /// `middleman token` mints).
    pub fn token(&self, doc: &str, pod: &str, user: &str) -> anyhow::Result<String> {
        let claims = session_token::Claims::new(
            "middleman-dev",
            user,
            user,
            doc,
            pod,
            session_token::Role::Editor,
            3600,
        );
        Ok(self.key.mint(&claims)?)
    }
}

/// A Middleman child process serving one document (`bench`), with the keys that mint its tokens.
#[derive(Debug)]
pub struct Middleman {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub addr: String,
    pub pod: String,
    /// When the process was spawned (what a pod's start time counts from).
    pub spawned: Instant,
    /// How long after `spawned` it said it listens.
    pub listening: Duration,
    keys: Keys,
}

/// The address in a log line `... listening on http://ADDR ...`, if it is one.
pub fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split("listening on http://").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
        .collect();
    (!addr.is_empty()).then_some(addr)
}

impl Middleman {
    /// Starts `bin serve` for document `bench` on pod `local` with `extra` flags and keys of its
    /// own; waits until it listens. The kernel is python3 unless `extra` names one (`--kernel`).
    pub async fn start(bin: &Path, scratch: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let keys = Keys::generate(&scratch.join("keys"))?;
        Self::start_with(bin, scratch, &keys, "local", extra).await
    }

    /// Starts `bin serve` for document `bench` as pod `pod`, verifying with `keys`; waits until
    /// it listens. Several may share `scratch` and `keys`.
    pub async fn start_with(
        bin: &Path,
        scratch: &Path,
        keys: &Keys,
        pod: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let spawned = Instant::now();
        let mut child = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--document",
                "bench",
                "--pod",
                pod,
            ])
            .args(if extra.contains(&"--kernel") {
                &[] as &[&str]
            } else {
                &["--kernel", "python3"][..]
            })
            .args(if extra.contains(&"--document-store") {
                &[] as &[&str]
            } else {
                &["--document-store", "none"][..]
            })
            .args(extra)
            .arg("--public-key")
            .arg(keys.public_pem())
            .arg("--runtime-root")
            .arg(scratch.join(format!("run-{pod}")))
            .env("RUST_LOG", "warn,middleman::server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("no pid")?;
        let mut lines =
            tokio::io::BufReader::new(child.stderr.take().context("no stderr")?).lines();
        let addr: String = tokio::time::timeout(Duration::from_secs(120), async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = listening_addr(&line) {
                    return Ok(addr);
                }
                seen.push(line);
            }
            Err(seen.join("\n"))
        })
        .await?
        .map_err(|said| anyhow::anyhow!("middleman did not start; it said:\n{said}"))?;
        let listening = spawned.elapsed();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            addr,
            pod: pod.to_owned(),
            spawned,
            listening,
            keys: keys.clone(),
        })
    }

    /// A token for `user` (an editor).
    pub async fn token(&self, user: &str) -> anyhow::Result<String> {
        self.keys.token("bench", &self.pod, user)
    }

    /// The port it listens on.
    pub fn port(&self) -> anyhow::Result<u16> {
        Ok(self.addr.rsplit(':').next().unwrap_or("0").parse()?)
    }

    /// Waits until `/readyz` answers 200 (the kernel is up).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.ready_after(Duration::from_millis(50)).await.map(drop)
    }

    /// Asks `/readyz` every `poll` until it answers 200 (the kernel started and answered
    /// `kernel_info`); returns how long after `spawned` that was, to within `poll` and one
    /// request.
    pub async fn ready_after(&self, poll: Duration) -> anyhow::Result<Duration> {
        let port = self.port()?;
        let deadline = self.spawned + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http(port, "GET", "/readyz", "", "").await {
                return Ok(self.spawned.elapsed());
            }
            tokio::time::sleep(poll).await;
        }
        bail!("middleman {} not ready after 120 s", self.pod)
    }

    /// The kernel sandbox's layers as its `/metrics` reports them (`middleman_sandbox_layer`):
    /// (those that hold, those that do not), by name. Empty until a kernel has started.
    pub async fn sandbox_layers(&self) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let (status, body) = http(self.port()?, "GET", "/metrics", "", "").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        let (mut held, mut not) = (Vec::new(), Vec::new());
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("middleman_sandbox_layer{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let Some(name) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("layer=\""))
                .map(|n| n.trim_end_matches('"').to_owned())
            else {
                continue;
            };
            if value.trim() == "1" {
                held.push(name);
            } else {
                not.push(name);
            }
        }
        held.sort();
        not.sort();
        Ok((held, not))
    }

    /// Connects a WebSocket client with `token`.
    pub async fn connect(&self, token: &str) -> anyhow::Result<Ws> {
        connect(&format!("ws://{}/ws?token={token}", self.addr)).await
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Stops it as a pod is stopped (SIGTERM: it drains, saving what it keeps) and waits.
    pub async fn terminate(mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait().await;
    }
}

/// Opens a WebSocket to `url` with `TCP_NODELAY` set (as a browser does).
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    Ok(ws)
}

/// A plain HTTP/1.1 request with a Jupyter token; returns (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    http_with(port, method, path, &format!("token {token}"), body).await
}

/// A plain HTTP/1.1 request with this `Authorization` header; returns (status, body).
pub async fn http_with(
    port: u16,
    method: &str,
    path: &str,
    authorization: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

/// A stock Jupyter Server (from the tools' environment) with one kernel (python3 unless named:
/// the kernelspec on `JUPYTER_PATH`, as Middleman runs it).
#[derive(Debug)]
pub struct JupyterServer {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub port: u16,
    pub token: String,
    pub kernel_id: String,
}

impl JupyterServer {
    /// Starts the server and a python3 kernel; waits until the kernel answers `kernel_info`.
    pub async fn start(venv: &Path, scratch: &Path) -> anyhow::Result<Self> {
        Self::start_kernel(venv, scratch, "python3").await
    }

    /// Starts the server and a kernel of the kernelspec `kernel`; waits until the kernel
    /// answers `kernel_info`.
    pub async fn start_kernel(venv: &Path, scratch: &Path, kernel: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let root = scratch.join("jroot");
        std::fs::create_dir_all(&root)?;
        let child = tokio::process::Command::new(venv.join("bin/jupyter"))
            // CI and this machine run as root; the server refuses that without --allow-root.
            .args([
                "server",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
            ])
            .arg(format!("--ServerApp.port={port}"))
            .arg(format!("--IdentityProvider.token={token}"))
            .arg(format!("--ServerApp.root_dir={}", root.display()))
            .env("JUPYTER_RUNTIME_DIR", scratch.join("jrt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("no pid")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let kernel_id = loop {
            if let Ok((201, body)) = http(
                port,
                "POST",
                "/api/kernels",
                &token,
                &serde_json::json!({ "name": kernel }).to_string(),
            )
            .await
            {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                break v["id"].as_str().context("kernel id")?.to_owned();
            }
            if Instant::now() > deadline {
                bail!("jupyter server did not start");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let server = Self {
            child,
            pid,
            port,
            token,
            kernel_id,
        };
        // Handshake: kernel_info until the kernel answers.
        let mut ws = server.connect().await?;
        let session = uuid::Uuid::new_v4().to_string();
        loop {
            let (id, text) = jupyter_msg(&session, "kernel_info_request", &serde_json::json!({}));
            ws.send(Message::text(text)).await?;
            let got = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    let Some(Ok(Message::Text(t))) = ws.next().await else {
                        return false;
                    };
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                    if v["msg_type"] == "kernel_info_reply"
                        && v["parent_header"]["msg_id"] == id.as_str()
                    {
                        return true;
                    }
                }
            })
            .await;
            if got == Ok(true) {
                break;
            }
            if Instant::now() > deadline {
                bail!("kernel behind jupyter server did not answer");
            }
        }
        Ok(server)
    }

    /// A new kernel WebSocket (the `/api/kernels/{id}/channels` endpoint).
    pub async fn connect(&self) -> anyhow::Result<Ws> {
        let url = format!(
            "ws://127.0.0.1:{}/api/kernels/{}/channels?token={}",
            self.port, self.kernel_id, self.token
        );
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        Ok(ws)
    }

    /// Shuts its kernel down, then kills the server. Killed first, the server would leave the
    /// kernel running: ipykernel notices its parent is gone, Deno's kernel does not.
    pub async fn stop(mut self) {
        let path = format!("/api/kernels/{}", self.kernel_id);
        let _ = http(self.port, "DELETE", &path, &self.token, "").await;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A Jupyter message for the kernel WebSocket's shell channel: (msg_id, JSON text).
pub fn jupyter_msg(session: &str, msg_type: &str, content: &serde_json::Value) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    let m = serde_json::json!({
        "header": {"msg_id": id, "msg_type": msg_type, "session": session, "username": "bench", "version": "5.3", "date": "2026-01-01T00:00:00Z"},
        "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []
    });
    (id, m.to_string())
}

/// What a client saw of one cell's run.
#[derive(Debug)]
pub struct CellRun {
    /// Everything it printed, as received.
    pub text: String,
    /// When its run finished, from the caller's start.
    pub at: Duration,
    /// Whether the connection was resynchronised meanwhile (a snapshot replaced missed events).
    pub resynced: bool,
}

/// Reads `ws` until the run of `cell` finishes.
pub async fn read_cell_run(ws: &mut Ws, cell: &str, start: Instant) -> anyhow::Result<CellRun> {
    use doc_protocol::{Output, ServerEvent};
    let mut execution = None;
    let mut text = String::new();
    let mut resynced = false;
    loop {
        match next_frame(ws).await?.event {
            ServerEvent::ExecutionQueued { execution: e, .. }
                if e.cell_id.as_deref() == Some(cell) =>
            {
                execution = Some(e.id);
            }
            ServerEvent::Output {
                execution_id,
                output: Output::Stream { text: t, .. },
            } if Some(&execution_id) == execution.as_ref() => text.push_str(&t),
            ServerEvent::ExecutionFinished { execution_id, .. }
                if Some(&execution_id) == execution.as_ref() =>
            {
                return Ok(CellRun {
                    text,
                    at: start.elapsed(),
                    resynced,
                });
            }
            ServerEvent::Welcome { .. } => resynced = true,
            _ => {}
        }
    }
}

/// Whether `text` is exactly the lines `0..n`, and how many lines it has.
pub fn numbered_lines(text: &str, n: usize) -> (bool, usize) {
    let mut count = 0;
    let mut in_order = true;
    for (i, line) in text.lines().enumerate() {
        if line.parse::<usize>().ok() != Some(i) {
            in_order = false;
        }
        count += 1;
    }
    (in_order && count == n, count)
}
