//! Where pods run: `local` (real Middleman processes on this host, the embedded default) or
//! `kubernetes` (a pod per kernel, watched through kube-runtime).

pub mod kube;
mod local;

pub use self::kube::{KubeBackend, KubeSettings};
pub use local::{LocalBackend, LocalSettings};

use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Taken away by the platform (spot preemption, eviction, node loss), with why.
    Preempted(String),
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
    Kube(KubeBackend),
}

impl Backend {
    /// Starts pod `id` of `plan`.
    pub async fn create(&self, id: &str, plan: &Plan) -> Result<Started, BackendError> {
        match self {
            Backend::Local(b) => b.create(id, plan).await,
            Backend::Kube(b) => b.create(id, plan).await,
        }
    }
    /// Stops the pod and everything it started (grace period, then kill).
    pub async fn delete(&self, pod: &Pod) {
        match self {
            Backend::Local(b) => b.delete(pod).await,
            Backend::Kube(b) => b.delete(&pod.id).await,
        }
    }
    /// Is it alive, and ready?
    pub async fn health(&self, pod: &Pod) -> Health {
        match self {
            Backend::Local(b) => b.health(pod).await,
            Backend::Kube(b) => b.health(pod),
        }
    }
    /// Whether this replica's view of the pods can be trusted (a replica that cannot does not
    /// reconcile).
    pub fn ready(&self) -> bool {
        match self {
            Backend::Local(_) => true,
            Backend::Kube(b) => b.synced(),
        }
    }
    /// How long one reconcile pass may take under a lease of `ttl`; `None`: unbounded (the
    /// local backend's probes wait on processes).
    pub fn pass_limit(&self, ttl: Duration) -> Option<Duration> {
        match self {
            Backend::Local(_) => None,
            Backend::Kube(_) => Some(ttl * 2 / 3),
        }
    }
    /// The pod's address once known (Kubernetes assigns it after scheduling); `None`: unchanged.
    pub fn endpoint(&self, pod: &Pod) -> Option<String> {
        match self {
            Backend::Local(_) => None,
            Backend::Kube(b) => b.endpoint(pod),
        }
    }
    /// Mirrors the store's view of each pod onto the pod (Kubernetes labels and annotations).
    pub async fn mirror(&self, pods: &[Pod]) {
        match self {
            Backend::Local(_) => {}
            Backend::Kube(b) => b.mirror(pods).await,
        }
    }
    /// The backend's own leader election, if it has one (a Kubernetes Lease); `None`: use the
    /// store's lease.
    pub async fn try_lease(&self, holder: &str, ttl: Duration) -> Option<Result<bool, String>> {
        match self {
            Backend::Local(_) => None,
            Backend::Kube(b) => Some(b.try_lease(holder, ttl).await.map_err(|e| e.to_string())),
        }
    }
    /// When the backend's lease was last confirmed held by its authority (a cached answer
    /// is older than the call that returned it).
    pub fn lease_confirmed(&self) -> Option<std::time::Instant> {
        match self {
            Backend::Local(_) => None,
            Backend::Kube(b) => b.lease_confirmed(),
        }
    }
    /// Gives up the backend's lease at shutdown.
    pub async fn release_lease(&self, holder: &str) {
        if let Backend::Kube(b) = self {
            b.release_lease(holder).await;
        }
    }
    /// Middleman's activity report.
    pub async fn activity(&self, pod: &Pod) -> Option<Activity> {
        http_json(&pod.endpoint, "/status").await
    }
    /// Stops pods this backend started that no pod in `known` accounts for (after a crash
    /// between starting a pod and recording it), and returns those worth adopting instead
    /// (healthy unallocated pods of a known plan, after a restart with the memory store).
    pub async fn collect_garbage(&self, known: &[Pod], plans: &BTreeMap<String, Plan>) -> Vec<Pod> {
        match self {
            Backend::Local(b) => {
                b.collect_garbage(known).await;
                Vec::new()
            }
            Backend::Kube(b) => b.collect_garbage(known, plans).await,
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
