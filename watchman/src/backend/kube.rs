//! The Kubernetes backend: one pod per warm kernel, built from the plan (Middleman and the
//! kernel in one container, hardened as DESIGN.md asks), watched through a kube-runtime
//! watcher into a reflector cache. Health checks read that cache, never the API server, so a
//! reconcile pass over thousands of pods costs no requests. What a pod's end looked like
//! (preempted, evicted, failed, deleted) is recorded from the watch events as they arrive,
//! because the object may be gone by the time the reconciler looks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, HTTPGetAction, ObjectFieldSelector, Pod as KubePod, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Toleration as KubeToleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BackendError, Health, Started};
use crate::model::{Pod, PodState, now_ms};
use crate::plan::Plan;

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
}

/// Longest wait for one API write: a reconcile pass must not hang on a slow API server or
/// admission webhook.
const API_TIMEOUT: Duration = Duration::from_secs(5);

fn timed_out() -> kube::Error {
    kube::Error::Service(format!("no answer from the API server within {API_TIMEOUT:?}").into())
}

/// Middleman's port in the pod.
pub const MIDDLEMAN_PORT: i32 = 8888;

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the kernel pods.
    pub namespace: String,
    /// Namespace and name of the reconciler's Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    /// `--pool-id`: marks this deployment's pods.
    pub pool_id: String,
    /// Image when a plan names none.
    pub default_image: String,
    /// PEM of the key Middleman verifies tokens with.
    pub public_key_pem: String,
    /// Middleman's `--document-store` in the pods (`none`, or a Redis URL).
    pub document_store: String,
    pub document_key_prefix: String,
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

/// How a pod ended, as seen in the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Loss {
    Preempted(String),
    Lost(String),
}

struct Shared {
    settings: KubeSettings,
    pods: Api<KubePod>,
    leases: Api<Lease>,
    cache: reflector::Store<KubePod>,
    /// Ends observed in the watch, by pod name, until the reconciler has dealt with the pod.
    losses: Mutex<HashMap<String, Loss>>,
    /// The lease as last observed, and when (client-go's rule: expiry is judged by the local
    /// clock from when the record last changed, so clock skew between replicas does not matter).
    observed: Mutex<Option<(String, Instant)>>,
    /// When this replica last read or renewed the lease, and whether it held it then: the
    /// lease is touched every third of its duration, not on every reconcile pass.
    checked: Mutex<Option<(Instant, bool)>>,
    /// The watch has listed every pod once, and is not failing now. Until both hold, a pod
    /// missing from the cache proves nothing, and this replica does not reconcile.
    listed: AtomicBool,
    watching: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("settings", &self.settings)
            .field("cached_pods", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// Kernel pods in a Kubernetes namespace.
#[derive(Debug, Clone)]
pub struct KubeBackend {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
        let (cache, mut writer) = reflector::store::<KubePod>();
        let shared = Arc::new(Shared {
            settings,
            pods: pods.clone(),
            leases,
            cache,
            losses: Mutex::new(HashMap::new()),
            observed: Mutex::new(None),
            checked: Mutex::new(None),
            listed: AtomicBool::new(false),
            watching: AtomicBool::new(false),
        });
        let selector = format!("{}={}", keys::POOL, shared.settings.pool_id);
        let watch_shared = shared.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let stream =
                watcher(pods, watcher::Config::default().labels(&selector)).default_backoff();
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    e = stream.next() => e,
                };
                match event {
                    None => return,
                    Some(Err(error)) => {
                        watch_shared.watching.store(false, Ordering::Release);
                        metrics::counter!("watchman_kube_watch_errors_total").increment(1);
                        tracing::warn!(%error, "pod watch failed; retrying");
                    }
                    Some(Ok(event)) => {
                        // The cache keeps what health, endpoints and adoption read (metadata
                        // and status): thousands of full pod specs would be most of
                        // Watchman's memory.
                        let event = event.modify(|pod| {
                            pod.spec = None;
                            pod.metadata.managed_fields = None;
                            if let Some(a) = pod.metadata.annotations.as_mut() {
                                a.remove(keys::PUBLIC_KEY);
                            }
                        });
                        match &event {
                            watcher::Event::InitDone => {
                                watch_shared.listed.store(true, Ordering::Release);
                                watch_shared.watching.store(true, Ordering::Release);
                            }
                            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                                watch_shared.watching.store(true, Ordering::Release);
                            }
                            watcher::Event::Init | watcher::Event::InitApply(_) => {}
                        }
                        watch_shared.observe(&event);
                        writer.apply_watcher_event(&event);
                    }
                }
            }
        });
        Self { shared }
    }

    fn get(&self, id: &str) -> Option<Arc<KubePod>> {
        self.shared
            .cache
            .get(&ObjectRef::new(id).within(&self.shared.settings.namespace))
    }

    /// True while the cache can be trusted: the watch has listed every pod and is not failing.
    pub(super) fn synced(&self) -> bool {
        self.shared.listed.load(Ordering::Acquire) && self.shared.watching.load(Ordering::Acquire)
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
            Err(error) => {
                metrics::counter!("watchman_kube_api_errors_total", "op" => "create").increment(1);
                Err(BackendError::Start {
                    pod: id.to_owned(),
                    reason: error.to_string(),
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
        if let Some(loss) = lock(&self.shared.losses).get(&pod.id) {
            return match loss {
                Loss::Preempted(why) => Health::Preempted(why.clone()),
                Loss::Lost(why) => Health::Lost(why.clone()),
            };
        }
        match self.get(&pod.id) {
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
        let k = self.get(&pod.id)?;
        let ip = k.status.as_ref()?.pod_ip.as_deref()?;
        Some(if ip.contains(':') {
            format!("http://[{ip}]:{MIDDLEMAN_PORT}")
        } else {
            format!("http://{ip}:{MIDDLEMAN_PORT}")
        })
    }

    /// Makes each pod's state label and document annotations match the store (bounded work per
    /// call; the rest follows in the next passes).
    pub(super) async fn mirror(&self, pods: &[Pod]) {
        const PER_PASS: usize = 256;
        // Forget the ends of pods that neither the store nor the cluster has any more.
        {
            let known: std::collections::HashSet<&str> =
                pods.iter().map(|p| p.id.as_str()).collect();
            lock(&self.shared.losses)
                .retain(|name, _| known.contains(name.as_str()) || self.get(name).is_some());
        }
        let stale: Vec<&Pod> = pods
            .iter()
            .filter(|p| {
                self.get(&p.id).is_some_and(|k| {
                    k.metadata.deletion_timestamp.is_none()
                        && label(&k, keys::STATE) != Some(p.state.label())
                })
            })
            .take(PER_PASS)
            .collect();
        for chunk in stale.chunks(16) {
            futures_util::future::join_all(chunk.iter().map(|p| self.mirror_one(p))).await;
        }
    }

    async fn mirror_one(&self, p: &Pod) {
        {
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
                    metrics::counter!("watchman_kube_api_errors_total", "op" => "patch")
                        .increment(1);
                    tracing::debug!(pod = %p.id, %error, "label update failed");
                }
            }
        }
    }

    /// Adopts this deployment's starting and warm pods that the store does not know (after a
    /// restart with the memory store) and deletes every other unknown pod.
    pub(super) async fn collect_garbage(
        &self,
        known: &[Pod],
        plans: &BTreeMap<String, Plan>,
    ) -> Vec<Pod> {
        if !self.synced() {
            return Vec::new();
        }
        let known: std::collections::HashSet<&str> = known.iter().map(|p| p.id.as_str()).collect();
        let mut adopted = Vec::new();
        for k in self.shared.cache.state() {
            let Some(name) = k.metadata.name.as_deref() else {
                continue;
            };
            if known.contains(name) || k.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let plan = label(&k, keys::PLAN).filter(|p| plans.contains_key(*p));
            let state = label(&k, keys::STATE);
            // A pod that carries a document was allocated, whatever its (possibly lagging)
            // state label says.
            let bound = k.metadata.annotations.as_ref().is_some_and(|a| {
                a.contains_key(keys::DOCUMENT) || a.contains_key(keys::ALLOCATION)
            });
            let healthy = !bound && lock(&self.shared.losses).get(name).is_none();
            if let Some(plan) = plan
                && matches!(state, Some("starting" | "warm"))
                && healthy
            {
                tracing::info!(pod = name, plan, "adopting a pod the store does not know");
                adopted.push(Pod {
                    id: name.to_owned(),
                    plan: plan.to_owned(),
                    state: PodState::Starting,
                    endpoint: String::new(),
                    handle: k.metadata.uid.clone().unwrap_or_default(),
                    created_ms: k
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
                        .unwrap_or_else(now_ms),
                    ready_ms: None,
                    document: None,
                    allocation: None,
                });
            } else {
                tracing::warn!(pod = name, ?state, "deleting a pod the store does not know");
                metrics::counter!("watchman_pods_collected_total").increment(1);
                self.delete(name).await;
            }
        }
        adopted
    }

    /// Takes or renews the reconciler Lease; true while `holder` holds it. Renewed every third
    /// of `ttl` (so a leader keeps it through two failed renewals); a follower looks as often.
    pub(super) async fn try_lease(&self, holder: &str, ttl: Duration) -> Result<bool, kube::Error> {
        if let Some((at, held)) = *lock(&self.shared.checked)
            && at.elapsed() < ttl / 3
        {
            return Ok(held);
        }
        let asked = Instant::now();
        let result = tokio::time::timeout(ttl / 3, self.touch_lease(holder, ttl))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        *lock(&self.shared.checked) = match &result {
            Ok(held) => Some((asked, *held)),
            Err(_) => None,
        };
        result
    }

    /// When the API server last confirmed this replica holds the lease.
    pub(super) fn lease_confirmed(&self) -> Option<Instant> {
        lock(&self.shared.checked).and_then(|(at, held)| held.then_some(at))
    }

    async fn touch_lease(&self, holder: &str, ttl: Duration) -> Result<bool, kube::Error> {
        let s = &self.shared;
        let name = &s.settings.lease_name;
        let secs = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current = match s.leases.get_opt(name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(holder.to_owned()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match s.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(holder);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = {
            let mut observed = lock(&s.observed);
            let record = format!(
                "{:?}/{:?}",
                spec.holder_identity,
                spec.renew_time.as_ref().map(|t| t.0)
            );
            match observed.as_ref() {
                Some((r, at)) if *r == record => {
                    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(secs))
                        .unwrap_or(u64::MAX);
                    at.elapsed() > Duration::from_secs(duration)
                }
                _ => {
                    *observed = Some((record, Instant::now()));
                    false
                }
            }
        };
        if !(ours || free || expired) {
            return Ok(false);
        }
        let mut next = current;
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            spec.holder_identity = Some(holder.to_owned());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        next.metadata.resource_version = Some(version);
        match s.leases.replace(name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (at shutdown), so that another replica takes over at once.
    pub(super) async fn release_lease(&self, holder: &str) {
        let s = &self.shared;
        *lock(&s.checked) = None;
        let Ok(Some(mut lease)) = s.leases.get_opt(&s.settings.lease_name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(holder) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = s
            .leases
            .replace(&s.settings.lease_name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(%error, "could not release the lease");
        } else {
            tracing::info!("released the reconciler lease");
        }
    }
}

impl Shared {
    /// Records how a pod ended, from a watch event.
    fn observe(&self, event: &watcher::Event<KubePod>) {
        let (pod, deleted) = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
            watcher::Event::Delete(p) => (p, true),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        let loss = classify(pod).or_else(|| {
            deleted.then(|| Loss::Lost("the pod was deleted from outside Watchman".into()))
        });
        if let Some(loss) = loss {
            let mut losses = lock(&self.losses);
            // The first, most specific reason wins (a preemption is later seen as a deletion).
            losses.entry(name).or_insert(loss);
        }
    }
}

/// What ended a pod, if anything did.
fn classify(pod: &KubePod) -> Option<Loss> {
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    if let Some(c) = conditions
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    {
        let reason = c.reason.as_deref().unwrap_or("Disrupted");
        let message = c.message.as_deref().unwrap_or("");
        let pod_message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
        if reason == "TerminationByKubelet" && storage_eviction(&format!("{message} {pod_message}"))
        {
            return Some(Loss::Lost(format!(
                "evicted for its own storage use: {pod_message}"
            )));
        }
        return Some(Loss::Preempted(
            format!("{reason}: {message}")
                .trim_end_matches(": ")
                .to_owned(),
        ));
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    if phase == "Failed" || phase == "Succeeded" {
        let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
        let exit = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| {
                cs.iter().find_map(|c| {
                    let t = c.state.as_ref()?.terminated.as_ref()?;
                    Some(format!(
                        "container {} exited with {}{}",
                        c.name,
                        t.exit_code,
                        t.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ))
                })
            })
            .unwrap_or_default();
        let what = if reason == "Evicted" {
            let message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
            // The kubelet evicts a pod over its own ephemeral-storage or emptyDir limit: that
            // is the document's code filling the disk, not the platform taking the pod.
            return Some(if storage_eviction(message) {
                Loss::Lost(format!("evicted for its own storage use: {message}"))
            } else {
                Loss::Preempted(format!("evicted: {message}"))
            });
        } else {
            format!("pod {}", phase.to_lowercase())
        };
        return Some(Loss::Lost(
            [what, reason.to_owned(), exit]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": "),
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Loss::Lost("the pod is being deleted".into()));
    }
    None
}

/// Whether a kubelet eviction message is about the pod's own storage limits.
fn storage_eviction(message: &str) -> bool {
    message.contains("ephemeral local storage usage exceeds")
        || message.contains("exceeds the limit")
        || message.contains("emptyDir usage exceeds")
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

/// The pod for `id` of `plan`.
pub fn pod_manifest(settings: &KubeSettings, id: &str, plan: &Plan) -> KubePod {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "middleman".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "watchman".to_owned(),
        ),
        (keys::POOL.to_owned(), settings.pool_id.clone()),
        (keys::PLAN.to_owned(), plan.name.clone()),
        (
            keys::STATE.to_owned(),
            PodState::Starting.label().to_owned(),
        ),
    ]);
    let mut annotations = settings.extra_annotations.clone();
    annotations.insert(keys::PUBLIC_KEY.to_owned(), settings.public_key_pem.clone());
    let limits = &plan.limits;
    let r = &plan.resources;
    let q = |s: &str| Quantity(s.to_owned());
    // Memory and ephemeral storage are always limited (the namespace's admission policy
    // refuses pods without): the plan's values, or the kernel's own memory limit plus room
    // for Middleman.
    let memory_limit = if r.memory_limit.is_empty() {
        format!("{}Mi", limits.memory_mib + 256)
    } else {
        r.memory_limit.clone()
    };
    let ephemeral = if r.ephemeral_storage.is_empty() {
        "1Gi".to_owned()
    } else {
        r.ephemeral_storage.clone()
    };
    let mut requests = BTreeMap::new();
    let mut limit = BTreeMap::new();
    if !r.cpu_request.is_empty() {
        requests.insert("cpu".to_owned(), q(&r.cpu_request));
    }
    if !r.cpu_limit.is_empty() {
        limit.insert("cpu".to_owned(), q(&r.cpu_limit));
    }
    requests.insert(
        "memory".to_owned(),
        q(if r.memory_request.is_empty() {
            &memory_limit
        } else {
            &r.memory_request
        }),
    );
    limit.insert("memory".to_owned(), q(&memory_limit));
    requests.insert("ephemeral-storage".to_owned(), q(&ephemeral));
    limit.insert("ephemeral-storage".to_owned(), q(&ephemeral));

    let mut tolerations: Vec<KubeToleration> = plan
        .tolerations
        .iter()
        .map(|t| KubeToleration {
            key: Some(t.key.clone()),
            operator: Some(t.operator.clone()),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: (!t.effect.is_empty()).then(|| t.effect.clone()),
            ..KubeToleration::default()
        })
        .collect();
    let evict_after = i64::try_from(settings.unreachable_toleration.as_secs()).unwrap_or(30);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        tolerations.push(KubeToleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: Some(evict_after),
            ..KubeToleration::default()
        });
    }
    let image = if plan.image.is_empty() {
        settings.default_image.clone()
    } else {
        plan.image.clone()
    };
    let args: Vec<String> = [
        "--listen",
        &format!("0.0.0.0:{MIDDLEMAN_PORT}"),
        "--pod",
        id,
        "--public-key",
        "/etc/middleman/key/public.pem",
        "--kernel",
        &plan.kernel,
        "--document-store",
        &settings.document_store,
        "--document-key-prefix",
        &settings.document_key_prefix,
        "--runtime-root",
        "/tmp/middleman-runtime",
        "--workspace",
        "/home/kernel/work",
        "--execution-timeout",
        &format!("{}ms", limits.execution_timeout.as_millis()),
        "--max-output-bytes",
        &limits.max_output_bytes.to_string(),
        "--kernel-memory-mib",
        &limits.memory_mib.to_string(),
        "--kernel-max-processes",
        &limits.max_processes.to_string(),
        "--kernel-max-open-files",
        &limits.max_open_files.to_string(),
    ]
    .map(str::to_owned)
    .into();
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let empty_dir = |name: &str, size: &str| Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(q(size)),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    KubePod {
        metadata: ObjectMeta {
            name: Some(id.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(settings.service_account.clone()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            runtime_class_name: (!plan.runtime_class.is_empty())
                .then(|| plan.runtime_class.clone()),
            node_selector: (!plan.node_selector.is_empty()).then(|| plan.node_selector.clone()),
            tolerations: Some(tolerations),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(
                i64::try_from(settings.delete_grace.as_secs()).unwrap_or(30),
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(10001),
                run_as_group: Some(10001),
                fs_group: Some(10001),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "middleman".to_owned(),
                image: Some(image),
                args: Some(args),
                // The root filesystem is read-only: home (IPython's profile, pip --user)
                // and the workspace are on an emptyDir.
                env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                    name: "HOME".to_owned(),
                    value: Some("/home/kernel".to_owned()),
                    ..k8s_openapi::api::core::v1::EnvVar::default()
                }]),
                ports: Some(vec![ContainerPort {
                    name: Some("http".to_owned()),
                    container_port: MIDDLEMAN_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                readiness_probe: Some(probe("/readyz", 1, 2)),
                liveness_probe: Some(probe("/healthz", 10, 3)),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: Some(limit),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".to_owned()]),
                        ..Capabilities::default()
                    }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".to_owned(),
                        ..SeccompProfile::default()
                    }),
                    ..SecurityContext::default()
                }),
                volume_mounts: Some(vec![
                    mount("tmp", "/tmp", false),
                    mount("work", "/home/kernel", false),
                    mount("key", "/etc/middleman/key", true),
                ]),
                ..Container::default()
            }],
            volumes: Some(vec![
                empty_dir("tmp", "256Mi"),
                empty_dir("work", &ephemeral),
                Volume {
                    name: "key".to_owned(),
                    projected: Some(k8s_openapi::api::core::v1::ProjectedVolumeSource {
                        sources: Some(vec![VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(vec![DownwardAPIVolumeFile {
                                    path: "public.pem".to_owned(),
                                    field_ref: Some(ObjectFieldSelector {
                                        field_path: format!(
                                            "metadata.annotations['{}']",
                                            keys::PUBLIC_KEY
                                        ),
                                        ..ObjectFieldSelector::default()
                                    }),
                                    ..DownwardAPIVolumeFile::default()
                                }]),
                            }),
                            ..VolumeProjection::default()
                        }]),
                        ..k8s_openapi::api::core::v1::ProjectedVolumeSource::default()
                    }),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
        status: None,
    }
}
