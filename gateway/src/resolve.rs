//! Pod to address, with no configuration per pod: asked of Watchman (`watchman.v1.Routes`),
//! which knows every pod on either backend and why each one ended; cached; concurrent lookups
//! of one pod share one call (a thousand clients reconnecting after a drain ask once); an
//! entry is dropped at once when its upstream fails, so the next connection asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use watchman_proto::v1 as pb;

/// Where a pod is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Its Middleman's base URL (`http://10.1.2.3:8888`).
    Live { endpoint: Arc<str> },
    /// Its allocation ended.
    Ended { reason: String, detail: String },
    /// No such pod.
    Unknown,
}

/// A Jupyter kernel's pod, and a session token for the user on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRoute {
    Live {
        pod: String,
        endpoint: Arc<str>,
        session_token: String,
    },
    /// No such kernel for this token (unknown, ended or someone else's).
    Unknown,
    /// Watchman refused the token.
    Unauthorized(String),
}

/// Watchman could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("resolving the pod failed: {0}")]
pub struct ResolveError(String);

/// How long each kind of answer is believed.
const ENDED_TTL: Duration = Duration::from_secs(60);
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// A Watchman call that takes longer has failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 4096;

type Lookup = Shared<BoxFuture<'static, Result<Route, ResolveError>>>;

enum Slot {
    Ready { route: Route, until: Instant },
    Pending(Lookup),
}

/// The resolver: fixed routes, then Watchman, behind a cache.
#[derive(Clone)]
pub struct Resolver {
    fixed: Arc<HashMap<String, Arc<str>>>,
    watchman: Option<WatchmanClient>,
    cache: Arc<Mutex<HashMap<String, Slot>>>,
    live_ttl: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("fixed", &self.fixed.len())
            .field("watchman", &self.watchman.is_some())
            .finish_non_exhaustive()
    }
}

/// Watchman's `Routes` service with the gateway's bearer token.
#[derive(Clone)]
struct WatchmanClient {
    client: pb::routes_client::RoutesClient<tonic::transport::Channel>,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Resolver {
    /// `watchman`: its gRPC URL and bearer token. The channel connects lazily (and reconnects),
    /// so a gateway starts while Watchman is still coming up.
    pub fn new(
        fixed: &[(String, String)],
        watchman: Option<(&str, &str)>,
        live_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let watchman = match watchman {
            Some((url, token)) => {
                let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
                    .connect_timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                Some(WatchmanClient {
                    client: pb::routes_client::RoutesClient::new(channel),
                    bearer: format!("Bearer {token}").parse()?,
                })
            }
            None => None,
        };
        Ok(Self {
            fixed: Arc::new(
                fixed
                    .iter()
                    .map(|(pod, url)| (pod.clone(), Arc::from(url.as_str())))
                    .collect(),
            ),
            watchman,
            cache: Arc::default(),
            live_ttl,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A cache: whatever a panic left half-done is at worst asked again.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where `pod` is.
    pub async fn resolve(&self, pod: &str) -> Result<Route, ResolveError> {
        if let Some(endpoint) = self.fixed.get(pod) {
            return Ok(Route::Live {
                endpoint: endpoint.clone(),
            });
        }
        let now = Instant::now();
        let lookup = {
            let mut cache = self.lock();
            match cache.get(pod) {
                Some(Slot::Ready { route, until }) if *until > now => {
                    metrics::counter!("gateway_resolve_total", "outcome" => "cached").increment(1);
                    return Ok(route.clone());
                }
                Some(Slot::Pending(lookup)) => lookup.clone(),
                _ => {
                    if cache.len() >= SWEEP_AT {
                        cache.retain(|_, s| match s {
                            Slot::Ready { until, .. } => *until > now,
                            Slot::Pending(_) => true,
                        });
                    }
                    let lookup = self.clone().ask(pod.to_owned()).boxed().shared();
                    cache.insert(pod.to_owned(), Slot::Pending(lookup.clone()));
                    lookup
                }
            }
        };
        let result = lookup.clone().await;
        let mut cache = self.lock();
        // Only the lookup that is still the pending one settles the slot.
        if let Some(Slot::Pending(current)) = cache.get(pod)
            && current.ptr_eq(&lookup)
        {
            match &result {
                Ok(route) => {
                    let ttl = match route {
                        Route::Live { .. } => self.live_ttl,
                        Route::Ended { .. } => ENDED_TTL,
                        Route::Unknown => UNKNOWN_TTL,
                    };
                    cache.insert(
                        pod.to_owned(),
                        Slot::Ready {
                            route: route.clone(),
                            until: Instant::now() + ttl,
                        },
                    );
                }
                Err(_) => {
                    cache.remove(pod);
                }
            }
        }
        result
    }

    /// Where a Jupyter client's kernel is, asked of Watchman with the client's token. Not
    /// cached: the answer carries a session token minted for this client.
    pub async fn resolve_kernel(
        &self,
        kernel_id: &str,
        jupyter_token: &str,
    ) -> Result<KernelRoute, ResolveError> {
        let Some(w) = &self.watchman else {
            return Ok(KernelRoute::Unknown);
        };
        let started = Instant::now();
        let mut request = tonic::Request::new(pb::ResolveKernelRequest {
            kernel_id: kernel_id.to_owned(),
            jupyter_token: jupyter_token.to_owned(),
        });
        request.set_timeout(CALL_TIMEOUT);
        request
            .metadata_mut()
            .insert("authorization", w.bearer.clone());
        let answer =
            tokio::time::timeout(CALL_TIMEOUT, w.client.clone().resolve_kernel(request)).await;
        metrics::histogram!("gateway_resolve_seconds").record(started.elapsed().as_secs_f64());
        let route = match answer {
            Ok(Ok(a)) => {
                let a = a.into_inner();
                Ok(KernelRoute::Live {
                    pod: a.pod,
                    endpoint: Arc::from(a.endpoint.trim_end_matches('/')),
                    session_token: a.session_token,
                })
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Ok(KernelRoute::Unknown),
            Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated => {
                Ok(KernelRoute::Unauthorized(status.message().to_owned()))
            }
            Ok(Err(status)) => Err(ResolveError(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(_) => Err(ResolveError("Watchman did not answer in time".into())),
        };
        let outcome = match &route {
            Ok(KernelRoute::Live { .. }) => "live",
            Ok(KernelRoute::Unknown | KernelRoute::Unauthorized(_)) => "unknown",
            Err(_) => "error",
        };
        metrics::counter!("gateway_resolve_total", "outcome" => outcome).increment(1);
        route
    }

    /// Forgets what is known of `pod` (its upstream failed or closed).
    pub fn invalidate(&self, pod: &str) {
        let mut cache = self.lock();
        if let Some(Slot::Ready { .. }) = cache.get(pod) {
            cache.remove(pod);
        }
    }

    async fn ask(self, pod: String) -> Result<Route, ResolveError> {
        let started = Instant::now();
        let result = self.ask_watchman(&pod).await;
        metrics::histogram!("gateway_resolve_seconds").record(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(Route::Live { .. }) => "live",
            Ok(Route::Ended { .. }) => "ended",
            Ok(Route::Unknown) => "unknown",
            Err(_) => "error",
        };
        metrics::counter!("gateway_resolve_total", "outcome" => outcome).increment(1);
        if let Err(error) = &result {
            metrics::counter!("gateway_upstream_errors_total", "kind" => "resolve").increment(1);
            tracing::warn!(%pod, %error, "could not resolve pod");
        }
        result
    }

    async fn ask_watchman(&self, pod: &str) -> Result<Route, ResolveError> {
        let Some(w) = &self.watchman else {
            return Ok(Route::Unknown);
        };
        let mut request = tonic::Request::new(pb::ResolvePodRequest {
            pod: pod.to_owned(),
        });
        request.set_timeout(CALL_TIMEOUT);
        request
            .metadata_mut()
            .insert("authorization", w.bearer.clone());
        let answer =
            match tokio::time::timeout(CALL_TIMEOUT, w.client.clone().resolve_pod(request)).await {
                Ok(Ok(a)) => a.into_inner(),
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                    return Ok(Route::Unknown);
                }
                Ok(Err(status)) => {
                    return Err(ResolveError(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
                Err(_) => return Err(ResolveError("Watchman did not answer in time".into())),
            };
        match answer.route {
            Some(pb::resolve_pod_response::Route::Live(live)) => Ok(Route::Live {
                endpoint: Arc::from(live.endpoint.trim_end_matches('/')),
            }),
            Some(pb::resolve_pod_response::Route::Ended(ended)) => Ok(Route::Ended {
                reason: end_reason(ended.reason).to_owned(),
                detail: ended.detail,
            }),
            None => Err(ResolveError("Watchman's answer named no route".into())),
        }
    }
}

fn end_reason(r: i32) -> &'static str {
    match pb::EndReason::try_from(r) {
        Ok(pb::EndReason::Released) => "released",
        Ok(pb::EndReason::Idle) => "idle",
        Ok(pb::EndReason::Lifetime) => "lifetime",
        Ok(pb::EndReason::PodLost) => "pod_lost",
        Ok(pb::EndReason::Preempted) => "preempted",
        Ok(pb::EndReason::Deleted) => "deleted",
        _ => "ended",
    }
}
