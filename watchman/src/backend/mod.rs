//! Where pods run. `local` (real Middleman processes on this host) is the embedded default; the
//! Kubernetes backend arrives with its own issue.

mod local;

pub use local::{LocalBackend, LocalSettings};

use crate::model::Pod;
use crate::plan::Plan;

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The pod could not be started.
    #[error("cannot start pod {pod}: {reason}")]
    Start { pod: String, reason: String },
}

/// What a probe of a pod found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running; the kernel is ready.
    Ready,
    /// Running; not ready yet.
    NotReady,
    /// Gone, with why.
    Lost(String),
}

/// What Middleman reports about use, for idle timeouts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Activity {
    pub connections: u64,
    pub last_activity: u64,
    pub kernel_state: String,
}

/// A started pod: where to reach it and the backend's handle on it.
#[derive(Debug, Clone)]
pub struct Started {
    pub endpoint: String,
    pub handle: String,
}

/// The backend in use.
#[derive(Debug, Clone)]
pub enum Backend {
    Local(LocalBackend),
}

impl Backend {
    /// Starts pod `id` of `plan`.
    pub async fn create(&self, id: &str, plan: &Plan) -> Result<Started, BackendError> {
        match self {
            Backend::Local(b) => b.create(id, plan).await,
        }
    }
    /// Stops the pod and everything it started (grace period, then kill).
    pub async fn delete(&self, pod: &Pod) {
        match self {
            Backend::Local(b) => b.delete(pod).await,
        }
    }
    /// Is it alive, and ready?
    pub async fn health(&self, pod: &Pod) -> Health {
        match self {
            Backend::Local(b) => b.health(pod).await,
        }
    }
    /// Middleman's activity report.
    pub async fn activity(&self, pod: &Pod) -> Option<Activity> {
        http_json(&pod.endpoint, "/status").await
    }
    /// Stops processes this backend started that no pod in `known` accounts for (after a crash
    /// between starting a pod and recording it).
    pub async fn collect_garbage(&self, known: &[Pod]) {
        match self {
            Backend::Local(b) => b.collect_garbage(known).await,
        }
    }
}

/// GET `path` on `base` (`http://host:port`) and decode JSON; None on any failure. A tiny
/// HTTP/1.1 client: Watchman only ever talks to Middleman's own endpoints on loopback or the
/// pod network, so a full client library is not worth its weight.
pub(crate) async fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hostport = base.strip_prefix("http://")?.trim_end_matches('/');
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(512);
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

async fn http_json<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> Option<T> {
    let (status, body) = http_get(base, path).await?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}
