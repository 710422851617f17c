//! The Kubernetes backend: one pod per warm kernel, built from the plan ([`manifest`]),
//! watched through a kube-runtime watcher into a reflector cache ([`watch`]). Health checks
//! read that cache, never the API server, so a reconcile pass over thousands of pods costs no
//! requests; how a pod ended is classified from the watch events ([`loss`]). The reconciler is
//! elected with a `coordination.k8s.io` Lease ([`lease`]), and a leader's first pass adopts or
//! deletes the pool's pods the store does not know ([`adoption`]).

mod adoption;
mod lease;
mod loss;
mod manifest;
mod watch;

pub use lease::KubeLease;
pub use manifest::{MIDDLEMAN_PORT, pod_manifest};

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BackendError, Started};
use crate::model::{Health, Pod, PodState, now_ms};
use crate::plan::Plan;
use loss::Loss;
use watch::PodWatch;

/// Labels and annotations Watchman puts on its pods.
pub mod keys {
    /// Which deployment of Watchman owns the pod (`--pool-id`); the watch selects on it.
    pub const POOL: &str = "nbplat.dev/pool";
    pub const PLAN: &str = "nbplat.dev/plan";
    /// starting, warm, allocated or ending: mirrors the store, for operators and adoption.
    pub const STATE: &str = "nbplat.dev/state";
    /// Annotation: the document an allocated pod serves.
    pub const DOCUMENT: &str = "nbplat.dev/document";
    /// Annotation: the allocation id.
    pub const ALLOCATION: &str = "nbplat.dev/allocation";
    /// Annotation: the public key Middleman verifies tokens with (mounted as a file through
    /// the downward API, so no Secret or ConfigMap has to be created per pod).
    pub const PUBLIC_KEY: &str = "nbplat.dev/public-key";
    /// Annotation: the pod's credential for its own document (mounted the same way, in
    /// Middleman's container only).
    pub const POD_CREDENTIAL: &str = "nbplat.dev/pod-credential";
}

/// Longest wait for one API write: a reconcile pass must not hang on a slow API server or
/// admission webhook.
const API_TIMEOUT: Duration = Duration::from_secs(5);

fn timed_out() -> kube::Error {
    kube::Error::Service(format!("no answer from the API server within {API_TIMEOUT:?}").into())
}

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the kernel pods.
    pub namespace: String,
    /// `--pool-id`: marks this deployment's pods.
    pub pool_id: String,
    /// Image when a plan names none.
    pub default_image: String,
    /// PEM of the key Middleman verifies tokens with.
    pub public_key_pem: String,
    /// Where the pods keep their documents: nowhere, or Watchman (each its own).
    pub document_store: crate::config::PodDocumentStore,
    /// Pods keep kernel checkpoints through Watchman (with the document store there).
    pub checkpoints: bool,
    /// Derives each pod's credential.
    pub signing_key: session_token::SigningKey,
    /// Service account of the pods (it has no bindings; its token is never mounted).
    pub service_account: String,
    /// Grace period of a pod deletion.
    pub delete_grace: Duration,
    /// How long a pod stays on a node that stopped answering before it is evicted (its kernel
    /// is gone anyway; the default of 300 s would leave a user waiting on a dead pod).
    pub unreachable_toleration: Duration,
    /// Extra annotations on every pod (e.g. kwok test hooks).
    pub extra_annotations: BTreeMap<String, String>,
}

struct Shared {
    settings: KubeSettings,
    pods: Api<KubePod>,
    watch: Arc<PodWatch>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("settings", &self.settings)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

/// Kernel pods in a Kubernetes namespace.
#[derive(Debug, Clone)]
pub struct KubeBackend {
    shared: Arc<Shared>,
}

impl KubeBackend {
    /// Starts the pod watch (tracked, stopped by `shutdown`).
    pub fn start(
        client: &Client,
        settings: KubeSettings,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let pods: Api<KubePod> = Api::namespaced(client.clone(), &settings.namespace);
        let selector = format!("{}={}", keys::POOL, settings.pool_id);
        let watch = PodWatch::start(
            pods.clone(),
            &settings.namespace,
            &selector,
            shutdown,
            tracker,
        );
        Self {
            shared: Arc::new(Shared {
                settings,
                pods,
                watch,
            }),
        }
    }

    fn watch(&self) -> &PodWatch {
        &self.shared.watch
    }

    /// True while the cache can be trusted: the watch has listed every pod and is not failing.
    pub(super) fn synced(&self) -> bool {
        self.watch().synced()
    }

    pub(super) async fn create(&self, id: &str, plan: &Plan) -> Result<Started, BackendError> {
        let pod = pod_manifest(&self.shared.settings, id, plan);
        let created = tokio::time::timeout(
            API_TIMEOUT,
            self.shared.pods.create(&PostParams::default(), &pod),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        match created {
            Ok(created) => Ok(Started {
                endpoint: String::new(),
                handle: created.metadata.uid.unwrap_or_default(),
            }),
            Err(source) => {
                metrics::counter!("watchman_kube_api_errors_total", "op" => "create").increment(1);
                Err(BackendError::Create {
                    pod: id.to_owned(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// Deletes pod `id` with the grace period (a pod already gone is fine).
    pub(super) async fn delete(&self, id: &str) {
        let grace = u32::try_from(self.shared.settings.delete_grace.as_secs()).unwrap_or(30);
        let params = DeleteParams {
            grace_period_seconds: Some(grace),
            ..DeleteParams::default()
        };
        let deleted = tokio::time::timeout(API_TIMEOUT, self.shared.pods.delete(id, &params))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        match deleted {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                // Left to garbage collection: the pod is no longer in the store.
                metrics::counter!("watchman_kube_api_errors_total", "op" => "delete").increment(1);
                tracing::warn!(pod = id, %error, "pod deletion failed");
            }
        }
    }

    pub(super) fn health(&self, pod: &Pod) -> Health {
        if let Some(loss) = self.watch().loss(&pod.id) {
            return match loss {
                Loss::Preempted(why) => Health::Preempted(why),
                Loss::Lost(why) => Health::Lost(why),
            };
        }
        match self.watch().get(&pod.id) {
            Some(k) if is_ready(&k) => Health::Ready,
            Some(_) => Health::NotReady,
            // The watch may not have delivered a pod created a moment ago, or may be down.
            None if !self.synced() || now_ms().saturating_sub(pod.created_ms) < 60_000 => {
                Health::NotReady
            }
            None => Health::Lost("the pod does not exist".into()),
        }
    }

    /// `http://<pod IP>:8888` once the pod has an address.
    pub(super) fn endpoint(&self, pod: &Pod) -> Option<String> {
        let k = self.watch().get(&pod.id)?;
        let ip = k.status.as_ref()?.pod_ip.as_deref()?;
        Some(if ip.contains(':') {
            format!("http://[{ip}]:{MIDDLEMAN_PORT}")
        } else {
            format!("http://{ip}:{MIDDLEMAN_PORT}")
        })
    }

    /// Makes each pod's state label and document annotations match the store (bounded work per
    /// call, in count and by `until`; the rest follows in the next passes).
    pub(super) async fn mirror(&self, pods: &[&Pod], until: Option<std::time::Instant>) {
        const PER_PASS: usize = 256;
        // Forget the ends of pods that neither the store nor the cluster has any more.
        let known: HashSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
        self.watch().forget_losses(&|name| known.contains(name));
        let stale: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| {
                self.watch().get(&p.id).is_some_and(|k| {
                    k.metadata.deletion_timestamp.is_none()
                        && label(&k, keys::STATE) != Some(p.state.label())
                })
            })
            .take(PER_PASS)
            .collect();
        for chunk in stale.chunks(16) {
            if until.is_some_and(|t| std::time::Instant::now() >= t) {
                break;
            }
            futures_util::future::join_all(chunk.iter().map(|p| self.mirror_one(p))).await;
        }
    }

    async fn mirror_one(&self, p: &Pod) {
        let mut annotations = serde_json::Map::new();
        if p.state == PodState::Allocated {
            annotations.insert(keys::DOCUMENT.into(), p.document.clone().into());
            annotations.insert(keys::ALLOCATION.into(), p.allocation.clone().into());
        }
        let patch = serde_json::json!({
            "metadata": {"labels": {keys::STATE: p.state.label()}, "annotations": annotations}
        });
        let r = tokio::time::timeout(
            API_TIMEOUT,
            self.shared
                .pods
                .patch(&p.id, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        match r {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                metrics::counter!("watchman_kube_api_errors_total", "op" => "patch").increment(1);
                tracing::debug!(pod = %p.id, %error, "label update failed");
            }
        }
    }
}

fn is_ready(pod: &KubePod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn label<'a>(pod: &'a KubePod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}
