//! The jobs API's fixtures: a deployment with `[plans.free.jobs]`, a `Jobs` client, waiting for
//! runs, and raw HTTP to Watchman's HTTP port.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use watchman_proto::v1 as pb;
use watchman_proto::v1::jobs_client::JobsClient;

use super::{API_TOKEN, Bearer, Deployment};

pub type Jobs = JobsClient<InterceptedService<Channel, Bearer>>;

/// A deployment whose plan `free` has `warm` pods and these `[plans.free.jobs]` lines.
pub fn deployment(tag: &str, warm: u32, jobs: &str) -> Deployment {
    let d = Deployment::new(tag, warm, "30m");
    std::fs::write(
        &d.plans,
        format!(
            "[plans.free]\nkernel = \"python3\"\nwarm = {{ ratio = 0.0, min = {warm}, max = {warm} }}\nidle_timeout = \"30m\"\nmax_lifetime = \"1h\"\n[plans.free.limits]\nexecution_timeout = \"60s\"\nmemory_mib = 2048\n[plans.free.jobs]\nretry_backoff = \"100ms\"\n{jobs}\n"
        ),
    )
    .unwrap();
    d
}

pub async fn jobs_client(addr: std::net::SocketAddr) -> Jobs {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    JobsClient::with_interceptor(channel, Bearer(API_TOKEN.into()))
}

pub fn submission(user: &str, code: &str) -> pb::SubmitExecutionRequest {
    pb::SubmitExecutionRequest {
        user_id: user.into(),
        plan: "free".into(),
        code: code.into(),
        ..Default::default()
    }
}

pub fn run_ref(user: &str, id: &str) -> pb::RunRef {
    pb::RunRef {
        user_id: user.into(),
        run_id: id.into(),
    }
}

/// Waits until the run is finished and returns it.
pub async fn finished(j: &mut Jobs, user: &str, id: &str) -> pb::Run {
    finished_by(
        j,
        user,
        id,
        tokio::time::Instant::now() + Duration::from_secs(240),
    )
    .await
}

pub async fn finished_by(
    j: &mut Jobs,
    user: &str,
    id: &str,
    deadline: tokio::time::Instant,
) -> pb::Run {
    loop {
        let run = j.get_run(run_ref(user, id)).await.unwrap().into_inner();
        if run.finished_at_ms > 0 {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the run is running on a pod and returns the pod.
pub async fn running_on(j: &mut Jobs, user: &str, id: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let run = j.get_run(run_ref(user, id)).await.unwrap().into_inner();
        if run.state == pb::RunState::Running as i32 && !run.pod.is_empty() {
            return run.pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not running: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn outputs(run: &pb::Run) -> Vec<serde_json::Value> {
    serde_json::from_str(&run.outputs_json).unwrap()
}

pub fn stdout(run: &pb::Run) -> String {
    outputs(run)
        .iter()
        .filter(|o| o["output_type"] == "stream")
        .map(|o| o["text"].as_str().unwrap().to_owned())
        .collect()
}

/// A raw HTTP/1.1 exchange with Watchman's HTTP port: (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn audit(j: &mut Jobs, user: &str) -> Vec<pb::AuditEntry> {
    j.list_audit(pb::ListAuditRequest {
        user_id: user.into(),
        limit: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .entries
}

pub fn public_key(d: &Deployment) -> session_token::VerifyingKey {
    session_token::SigningKey::from_pem(&std::fs::read_to_string(&d.key).unwrap())
        .unwrap()
        .verifying_key()
}
