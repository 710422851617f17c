//! The `watchman.v1.Watchman` gRPC service: a thin adapter over [`crate::service::Watchman`].

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use session_token::Role as TokenRole;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use watchman_proto::v1 as pb;

use crate::model::{Allocation, EndReason, LaunchKind};
use crate::service::{AllocationRequest, ServiceError, Watchman};

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match &e {
            ServiceError::InvalidArgument(_) | ServiceError::UnknownPlan { .. } => {
                Status::invalid_argument(e.to_string())
            }
            ServiceError::Exhausted { .. } => Status::resource_exhausted(e.to_string()),
            ServiceError::NotFound(_) => Status::not_found(e.to_string()),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            ServiceError::Unavailable(_) => {
                tracing::error!(error = %e, "a store failed");
                Status::unavailable("the document or checkpoint store is unavailable; retry")
            }
            ServiceError::Store(_) | ServiceError::Token(_) => {
                // Internals stay in the log, not in the caller's error.
                tracing::error!(error = %e, "internal error");
                Status::unavailable("the allocation store is unavailable; retry")
            }
        }
    }
}

/// Checks `authorization: Bearer <token>` on every call against the tokens this service
/// accepts, in constant time.
#[derive(Clone)]
pub struct ApiAuth {
    tokens: std::sync::Arc<[Box<str>]>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiAuth(..)")
    }
}

impl ApiAuth {
    pub fn new(tokens: &[&str]) -> Self {
        Self {
            tokens: tokens.iter().map(|t| Box::from(*t)).collect(),
        }
    }

    /// Whether `given` is one of the tokens. Every token is compared, so the time says nothing
    /// about which one nearly matched.
    pub fn accepts(&self, given: &str) -> bool {
        !given.is_empty()
            && self.tokens.iter().fold(false, |ok, t| {
                same_secret(given.as_bytes(), t.as_bytes()) | ok
            })
    }
}

/// Whether `a` equals `b`, in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for ApiAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let same = self.accepts(given);
        if given.is_empty() {
            Err(Status::unauthenticated(
                "missing bearer token (authorization: Bearer <token>)",
            ))
        } else if !same {
            Err(Status::unauthenticated("invalid bearer token"))
        } else {
            Ok(request)
        }
    }
}

/// Where clients reach documents: the gateway's public base, or each pod's own address.
#[derive(Debug, Clone, Default)]
pub struct PublicUrl {
    /// `scheme://host[:port]` without a trailing slash; empty: the pod's own address.
    base: String,
}

impl PublicUrl {
    /// `--public-url`: empty, or an `http(s)://host[:port]` base with no path, query or
    /// fragment.
    pub fn parse(base: &str) -> anyhow::Result<Self> {
        let base = base.trim().trim_end_matches('/');
        if base.is_empty() {
            return Ok(Self::default());
        }
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"));
        anyhow::ensure!(
            rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', '@'])),
            "--public-url must be http(s)://host[:port], got {base:?}"
        );
        Ok(Self {
            base: base.to_owned(),
        })
    }

    /// The document's page (the web client) for a pod at `endpoint`.
    pub fn page(&self, pod: &str, endpoint: &str) -> String {
        if self.base.is_empty() {
            format!("{}/", endpoint.trim_end_matches('/'))
        } else {
            format!("{}/pods/{pod}/", self.base)
        }
    }

    /// The document's WebSocket for a pod at `endpoint`.
    pub fn websocket(&self, pod: &str, endpoint: &str) -> String {
        let page = self.page(pod, endpoint);
        format!(
            "{}ws",
            page.replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        )
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Api {
    watchman: Watchman,
    /// Where clients reach documents.
    public: PublicUrl,
    /// Where stream tasks are tracked, so that shutdown waits for them.
    tasks: TaskTracker,
    /// Fires when shutdown starts: streams end then, instead of holding the server open.
    shutdown: CancellationToken,
    /// Pods' kernel checkpoints, when Watchman keeps them (an allocation says it resumes).
    checkpoints: Option<std::sync::Arc<crate::checkpoints::PodCheckpoints>>,
    /// Deletes documents (`DeleteDocument`).
    retention: Option<std::sync::Arc<crate::retention::Retention>>,
}

impl Api {
    pub fn new(
        watchman: Watchman,
        public: PublicUrl,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        checkpoints: Option<std::sync::Arc<crate::checkpoints::PodCheckpoints>>,
    ) -> Self {
        Self {
            watchman,
            public,
            tasks,
            shutdown,
            checkpoints,
            retention: None,
        }
    }

    /// Serves `DeleteDocument` with `retention` (without it, the call is refused).
    pub fn with_retention(
        mut self,
        retention: std::sync::Arc<crate::retention::Retention>,
    ) -> Self {
        self.retention = Some(retention);
        self
    }

    fn to_pb(
        &self,
        a: &Allocation,
        launch: Option<LaunchKind>,
        token: String,
        token_exp: u64,
    ) -> pb::Allocation {
        let ws = self.public.websocket(&a.pod, &a.endpoint);
        pb::Allocation {
            allocation_id: a.id.clone(),
            document_id: a.document.clone(),
            plan: a.plan.clone(),
            pod: a.pod.clone(),
            websocket_url: ws,
            token,
            token_expires_at: i64::try_from(token_exp).unwrap_or(i64::MAX),
            launch: match launch {
                Some(LaunchKind::Warm) => pb::LaunchKind::Warm,
                Some(LaunchKind::Cold) => pb::LaunchKind::Cold,
                Some(LaunchKind::Existing) => pb::LaunchKind::Existing,
                None => pb::LaunchKind::Unspecified,
            } as i32,
            created_at: i64::try_from(a.created_ms / 1000).unwrap_or(i64::MAX),
            expires_at: i64::try_from(a.expires_ms / 1000).unwrap_or(i64::MAX),
            // Set by `allocate`.
            resumes: false,
        }
    }
}

/// Longest document id, user id, plan or kernel name a request may carry.
const MAX_NAME: usize = 200;
/// Longest display name (it is minted into every token and shown to collaborators).
const MAX_DISPLAY_NAME: usize = 128;

/// Refuses a field longer than `max` characters or holding control characters, naming the
/// field and never echoing the value.
fn bounded(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.chars().count() > max {
        return Err(Status::invalid_argument(format!(
            "{field} is longer than {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field} holds control characters"
        )));
    }
    Ok(())
}

fn role(r: i32) -> Result<TokenRole, Status> {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Unspecified | pb::Role::Editor) => Ok(TokenRole::Editor),
        Ok(pb::Role::Viewer) => Ok(TokenRole::Viewer),
        Err(_) => Err(Status::invalid_argument(format!("unknown role {r}"))),
    }
}

fn end_reason(r: EndReason) -> pb::EndReason {
    match r {
        EndReason::Released => pb::EndReason::Released,
        EndReason::Idle => pb::EndReason::Idle,
        EndReason::Lifetime => pb::EndReason::Lifetime,
        EndReason::PodLost => pb::EndReason::PodLost,
        EndReason::Preempted => pb::EndReason::Preempted,
        EndReason::Deleted => pb::EndReason::Deleted,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AllocationEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watchman_server::Watchman for Api {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::Allocation>, Status> {
        let r = request.into_inner();
        bounded("document_id", &r.document_id, MAX_NAME)?;
        bounded("plan", &r.plan, MAX_NAME)?;
        bounded("kernel", &r.kernel, MAX_NAME)?;
        bounded("user_id", &r.user_id, MAX_NAME)?;
        bounded("user_name", &r.user_name, MAX_DISPLAY_NAME)?;
        let wait = (r.wait_ms > 0).then(|| Duration::from_millis(u64::from(r.wait_ms)));
        let g = self
            .watchman
            .allocate(&AllocationRequest {
                document: &r.document_id,
                plan: &r.plan,
                kernel: &r.kernel,
                user: &r.user_id,
                user_name: &r.user_name,
                role: role(r.role)?,
                wait,
            })
            .await?;
        let mut allocation = self.to_pb(&g.allocation, Some(g.launch), g.token, g.token_expires);
        // A new pod for a document with a checkpoint resumes from it.
        if matches!(g.launch, LaunchKind::Warm | LaunchKind::Cold)
            && let Some(c) = &self.checkpoints
        {
            allocation.resumes = c.has_checkpoint(&r.document_id).await;
        }
        Ok(Response::new(allocation))
    }

    async fn delete_document(
        &self,
        request: Request<pb::DeleteDocumentRequest>,
    ) -> Result<Response<pb::DeleteDocumentResponse>, Status> {
        let document = request.into_inner().document_id;
        bounded("document_id", &document, MAX_NAME)?;
        let Some(retention) = &self.retention else {
            return Err(Status::unimplemented(
                "this Watchman does not delete documents",
            ));
        };
        let deleted = retention.delete_document(&self.watchman, &document).await?;
        Ok(Response::new(pb::DeleteDocumentResponse {
            released: deleted.released,
            snapshot: deleted.snapshot,
            checkpoint: deleted.checkpoint,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let document = request.into_inner().document_id;
        bounded("document_id", &document, MAX_NAME)?;
        let released = self.watchman.release(&document).await?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    async fn get_allocation(
        &self,
        request: Request<pb::GetAllocationRequest>,
    ) -> Result<Response<pb::Allocation>, Status> {
        let document = request.into_inner().document_id;
        bounded("document_id", &document, MAX_NAME)?;
        let a = self.watchman.get(&document).await?;
        Ok(Response::new(self.to_pb(&a, None, String::new(), 0)))
    }

    type WatchAllocationStream = EventStream;

    async fn watch_allocation(
        &self,
        request: Request<pb::WatchAllocationRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let document = request.into_inner().document_id;
        bounded("document_id", &document, MAX_NAME)?;
        let first = self.watchman.get(&document).await?;
        let api = self.clone();
        // Polls the store, so it works whichever replica ends the allocation. Four polls a
        // second is fast enough for a UI and costs one GET per watcher.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let span =
            tracing::info_span!("watch_allocation", document = %document, allocation = %first.id);
        self.tasks.spawn(
            async move {
                let ready = api.to_pb(&first, None, String::new(), 0);
                let event = pb::AllocationEvent {
                    event: Some(pb::allocation_event::Event::Ready(ready)),
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        () = api.shutdown.cancelled() => {
                            // The caller watches again, on another replica or after restart.
                            let _ = tx.try_send(Err(Status::unavailable(
                                "watchman is shutting down; watch again",
                            )));
                            return;
                        }
                        () = tx.closed() => return,
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    let current = match api.watchman.get(&document).await {
                        Ok(a) => Some(a),
                        Err(ServiceError::NotFound(_)) => None,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    if current.as_ref().is_some_and(|a| a.id == first.id) {
                        continue;
                    }
                    let ended = match api.watchman.ended(&first.id).await {
                        Ok(Some(e)) => pb::Ended {
                            allocation_id: e.allocation,
                            reason: end_reason(e.reason) as i32,
                            detail: e.detail,
                        },
                        _ => pb::Ended {
                            allocation_id: first.id.clone(),
                            reason: pb::EndReason::Unspecified as i32,
                            detail: "ended".into(),
                        },
                    };
                    let _ = tx
                        .send(Ok(pb::AllocationEvent {
                            event: Some(pb::allocation_event::Event::Ended(ended)),
                        }))
                        .await;
                    return;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_pools(
        &self,
        _request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let pools = self
            .watchman
            .pool_counts()
            .await?
            .into_iter()
            .map(|(plan, c)| pb::PoolStatus {
                plan,
                warm: c.warm,
                starting: c.starting,
                allocated: c.allocated,
                target_warm: c.target,
            })
            .collect();
        Ok(Response::new(pb::ListPoolsResponse { pools }))
    }

    async fn mint_token(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenResponse>, Status> {
        let r = request.into_inner();
        bounded("document_id", &r.document_id, MAX_NAME)?;
        bounded("user_id", &r.user_id, MAX_NAME)?;
        bounded("user_name", &r.user_name, MAX_DISPLAY_NAME)?;
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(r.ttl_seconds)));
        let (a, token, exp) = self
            .watchman
            .mint_for(&r.document_id, &r.user_id, &r.user_name, role(r.role)?, ttl)
            .await?;
        let url = self.to_pb(&a, None, String::new(), 0).websocket_url;
        Ok(Response::new(pb::MintTokenResponse {
            token,
            expires_at: i64::try_from(exp).unwrap_or(i64::MAX),
            websocket_url: url,
        }))
    }
}

/// The `watchman.v1.Routes` service: where a pod is, for the gateway.
#[derive(Debug, Clone)]
pub struct RoutesApi {
    watchman: Watchman,
    jupyter: crate::jupyter::JupyterApi,
}

impl RoutesApi {
    pub fn new(watchman: Watchman, jupyter: crate::jupyter::JupyterApi) -> Self {
        Self { watchman, jupyter }
    }
}

#[tonic::async_trait]
impl pb::routes_server::Routes for RoutesApi {
    async fn resolve_pod(
        &self,
        request: Request<pb::ResolvePodRequest>,
    ) -> Result<Response<pb::ResolvePodResponse>, Status> {
        use crate::service::Resolved;
        let pod = request.into_inner().pod;
        bounded("pod", &pod, MAX_NAME)?;
        let route = match self.watchman.resolve_pod(&pod).await? {
            Resolved::Live { endpoint, document } => {
                pb::resolve_pod_response::Route::Live(pb::PodRoute {
                    pod,
                    endpoint,
                    document_id: document,
                })
            }
            Resolved::Ended(e) => pb::resolve_pod_response::Route::Ended(pb::PodEnded {
                pod,
                reason: end_reason(e.reason) as i32,
                detail: e.detail,
                ended_at: i64::try_from(e.at_ms / 1000).unwrap_or(i64::MAX),
            }),
            Resolved::Unknown => return Err(Status::not_found(format!("no pod {pod:?}"))),
        };
        Ok(Response::new(pb::ResolvePodResponse { route: Some(route) }))
    }

    async fn resolve_kernel(
        &self,
        request: Request<pb::ResolveKernelRequest>,
    ) -> Result<Response<pb::ResolveKernelResponse>, Status> {
        use crate::jupyter::JupyterError;
        let request = request.into_inner();
        bounded("kernel_id", &request.kernel_id, MAX_NAME)?;
        bounded(
            "jupyter_token",
            &request.jupyter_token,
            session_token::MAX_TOKEN_LEN,
        )?;
        let resolved = self
            .jupyter
            .resolve(&request.kernel_id, &request.jupyter_token)
            .await
            .map_err(|e| match e {
                JupyterError::Unauthorized(m) => Status::unauthenticated(m),
                JupyterError::NoKernel(_) => Status::not_found(e.to_string()),
                JupyterError::Service(s) => Status::from(s),
                other => Status::unavailable(other.to_string()),
            })?;
        Ok(Response::new(pb::ResolveKernelResponse {
            pod: resolved.pod,
            endpoint: resolved.endpoint,
            document_id: resolved.document,
            session_token: resolved.session_token,
            session_token_expires: i64::try_from(resolved.expires).unwrap_or(i64::MAX),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn documents_are_reached_through_the_gateway_when_it_has_a_public_url() {
        let direct = PublicUrl::parse("").unwrap();
        assert_eq!(
            direct.websocket("p1", "http://10.0.0.5:8888"),
            "ws://10.0.0.5:8888/ws"
        );
        assert_eq!(
            direct.page("p1", "http://10.0.0.5:8888/"),
            "http://10.0.0.5:8888/"
        );
        let edge = PublicUrl::parse("https://notebooks.example.com/").unwrap();
        assert_eq!(
            edge.websocket("p1", "http://10.0.0.5:8888"),
            "wss://notebooks.example.com/pods/p1/ws"
        );
        assert_eq!(
            edge.page("p1", "http://10.0.0.5:8888"),
            "https://notebooks.example.com/pods/p1/"
        );
        for bad in [
            "notebooks.example.com",
            "https://h/pods",
            "ftp://h",
            "https://u@h",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_route_service_accepts_its_tokens_only() {
        use tonic::service::Interceptor as _;
        let mut auth = ApiAuth::new(&["api-token-0123456789", "route-token-0123456789"]);
        let call = |auth: &mut ApiAuth, token: &str| {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            auth.call(r).map(|_| ()).map_err(|s| s.code())
        };
        assert!(call(&mut auth, "route-token-0123456789").is_ok());
        assert!(call(&mut auth, "api-token-0123456789").is_ok());
        assert_eq!(
            call(&mut auth, "route-token-012345678"),
            Err(tonic::Code::Unauthenticated)
        );
        let mut api_only = ApiAuth::new(&["api-token-0123456789"]);
        assert_eq!(
            call(&mut api_only, "route-token-0123456789"),
            Err(tonic::Code::Unauthenticated)
        );
    }
}
