//! Where pods run: `local` (real Middleman processes on this host, the embedded default) or
//! `kubernetes` (a pod per kernel, watched through kube-runtime).

pub mod kube;
mod local;
mod probe;

pub use self::kube::{KubeBackend, KubeLease, KubeSettings};
pub use local::{LocalBackend, LocalSettings};

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{Activity, Health, Pod};
use crate::plan::Plan;
use crate::pool::InFlight;

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A local pod's port, directory or process could not be set up.
    #[error("cannot start pod {pod}: {what}: {source}")]
    Io {
        pod: String,
        /// What was being done (`reserving a port`, the path of a directory or binary).
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A local pod's process exited as soon as it was spawned.
    #[error("cannot start pod {pod}: middleman exited at once")]
    ExitedAtOnce { pod: String },
    /// The API server refused the pod, or did not answer in time.
    #[error("cannot create pod {pod}: {source}")]
    Create {
        pod: String,
        #[source]
        source: Box<::kube::Error>,
    },
    /// The host cannot give a plan's kernels the sandbox level the plan requires.
    #[error("sandbox level {level} needs {missing}, which this host does not give")]
    SandboxUnmet {
        level: kernel_sandbox::Level,
        /// The layers that do not hold, `,`-separated.
        missing: String,
    },
    /// The sandbox check itself could not run.
    #[error("the sandbox check failed: {0}")]
    SandboxCheck(String),
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
    pub async fn mirror(&self, pods: &[&Pod], until: Option<std::time::Instant>) {
        match self {
            Backend::Local(_) => {}
            Backend::Kube(b) => b.mirror(pods, until).await,
        }
    }
    /// What counts against `--max-concurrent-starts` (see [`InFlight`]).
    pub fn in_flight(&self) -> InFlight {
        match self {
            Backend::Local(_) => InFlight::StartingPods,
            Backend::Kube(_) => InFlight::CreateCalls,
        }
    }
    /// Middleman's activity report.
    pub async fn activity(&self, pod: &Pod) -> Option<Activity> {
        probe::get_json(&pod.endpoint, "/status").await
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

/// Middleman's `/status` at `endpoint`, as it is (see [`crate::service::Watchman::pod_status`]).
pub(crate) async fn pod_status(endpoint: &str) -> Option<serde_json::Value> {
    probe::get_json(endpoint, "/status").await
}
