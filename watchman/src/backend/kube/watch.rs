//! The pod watch: a kube-runtime watcher on this pool's pods feeding a reflector cache, and
//! the record of how pods ended as the events arrive (the object may be gone by the time the
//! reconciler looks). Health checks, endpoints and adoption read this cache, never the API
//! server, so a reconcile pass over thousands of pods makes no request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod as KubePod;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::keys;
use super::loss::{self, Loss};

/// The cache of this pool's pods (metadata and status only) and the ends seen in the watch.
pub(super) struct PodWatch {
    namespace: String,
    cache: reflector::Store<KubePod>,
    /// Ends observed in the watch, by pod name, until the reconciler has dealt with the pod.
    losses: Mutex<HashMap<String, Loss>>,
    /// The watch has listed every pod once, and is not failing now. Until both hold, a pod
    /// missing from the cache proves nothing, and this replica does not reconcile.
    listed: AtomicBool,
    watching: AtomicBool,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("namespace", &self.namespace)
            .field("cached_pods", &self.cache.len())
            .field("synced", &self.synced())
            .finish_non_exhaustive()
    }
}

impl PodWatch {
    /// Starts watching the pods of `api` labelled `selector` (tracked, stopped by `shutdown`).
    pub(super) fn start(
        api: Api<KubePod>,
        namespace: &str,
        selector: &str,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Arc<Self> {
        let (cache, mut writer) = reflector::store::<KubePod>();
        let watch = Arc::new(Self {
            namespace: namespace.to_owned(),
            cache,
            losses: Mutex::new(HashMap::new()),
            listed: AtomicBool::new(false),
            watching: AtomicBool::new(false),
        });
        let shared = watch.clone();
        let stop = shutdown.clone();
        let config = watcher::Config::default().labels(selector);
        tracker.spawn(
            async move {
                let stream = watcher(api, config).default_backoff();
                let mut stream = std::pin::pin!(stream);
                loop {
                    let event = tokio::select! {
                        () = stop.cancelled() => return,
                        e = stream.next() => e,
                    };
                    match event {
                        None => return,
                        Some(Err(error)) => {
                            shared.watching.store(false, Ordering::Release);
                            metrics::counter!("watchman_kube_watch_errors_total").increment(1);
                            tracing::warn!(%error, "pod watch failed; retrying");
                        }
                        Some(Ok(event)) => {
                            // The cache keeps what health, endpoints and adoption read
                            // (metadata and status): thousands of full pod specs would be
                            // most of Watchman's memory.
                            let event = event.modify(|pod| {
                                pod.spec = None;
                                pod.metadata.managed_fields = None;
                                if let Some(a) = pod.metadata.annotations.as_mut() {
                                    a.remove(keys::PUBLIC_KEY);
                                }
                            });
                            match &event {
                                watcher::Event::InitDone => {
                                    shared.listed.store(true, Ordering::Release);
                                    shared.watching.store(true, Ordering::Release);
                                }
                                watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                                    shared.watching.store(true, Ordering::Release);
                                }
                                watcher::Event::Init | watcher::Event::InitApply(_) => {}
                            }
                            shared.observe(&event);
                            writer.apply_watcher_event(&event);
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("pod_watch", namespace)),
        );
        watch
    }

    /// True while the cache can be trusted: the watch has listed every pod and is not failing.
    pub(super) fn synced(&self) -> bool {
        self.listed.load(Ordering::Acquire) && self.watching.load(Ordering::Acquire)
    }

    /// The cached pod `name`.
    pub(super) fn get(&self, name: &str) -> Option<Arc<KubePod>> {
        self.cache
            .get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// Every cached pod.
    pub(super) fn pods(&self) -> Vec<Arc<KubePod>> {
        self.cache.state()
    }

    /// How pod `name` ended, if the watch saw it end.
    pub(super) fn loss(&self, name: &str) -> Option<Loss> {
        self.lock_losses().get(name).cloned()
    }

    /// Forgets the ends of pods that neither `known` nor the cache has any more.
    pub(super) fn forget_losses(&self, known: &dyn Fn(&str) -> bool) {
        let mut losses = self.lock_losses();
        losses.retain(|name, _| known(name) || self.get(name).is_some());
    }

    fn lock_losses(&self) -> std::sync::MutexGuard<'_, HashMap<String, Loss>> {
        self.losses.lock().unwrap_or_else(PoisonError::into_inner)
    }

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
        if let Some(loss) = loss::observed(pod, deleted) {
            // The first, most specific reason wins (a preemption is later seen as a deletion).
            self.lock_losses().entry(name).or_insert(loss);
        }
    }
}
