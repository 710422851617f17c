//! The HTTP server: health, readiness, metrics, the try-it page and the document WebSocket.

mod connection;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::config::ServeArgs;
use crate::kernel::{self, KernelSession, RuntimeDir, SessionHandle, SessionSettings};
use crate::protocol::KernelState;

/// Failures while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The public key file could not be read or parsed.
    #[error("public key {path}: {reason}")]
    PublicKey {
        path: std::path::PathBuf,
        reason: String,
    },
    /// The kernel could not be found or prepared.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct AppState {
    session: SessionHandle,
    auth: Authenticator,
    args: ServeArgs,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    metrics: PrometheusHandle,
    activity: Activity,
}

/// What Watchman reads to decide that a pod is idle.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    /// Unix seconds of the last client message, connection or disconnection.
    pub(crate) last: std::sync::atomic::AtomicU64,
}

impl Activity {
    pub(crate) fn touch(&self) {
        self.last.store(
            session_token::now_secs(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// A started Middleman.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    session: tokio::task::JoinHandle<()>,
    tracker: TaskTracker,
    grace: Duration,
}

impl Running {
    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until shutdown is requested, then drains: clients are told and disconnected, the
    /// kernel is shut down, the runtime directory is removed. Bounded by the shutdown grace.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        let grace = self.grace;
        let drained = tokio::time::timeout(grace, async {
            self.tracker.close();
            self.tracker.wait().await;
            let _ = self.http.await;
            let _ = self.session.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "shutdown grace period ran out"
            );
        }
        tracing::info!("middleman stopped");
    }

    /// Requests shutdown and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Starts the kernel and the HTTP server. Returns once the socket is bound; the kernel becomes
/// ready in the background (see `/readyz`).
pub async fn start(args: ServeArgs) -> Result<Running, StartError> {
    let key_pem = std::fs::read_to_string(&args.public_key).map_err(|e| StartError::PublicKey {
        path: args.public_key.clone(),
        reason: e.to_string(),
    })?;
    let key =
        session_token::VerifyingKey::from_pem(&key_pem).map_err(|e| StartError::PublicKey {
            path: args.public_key.clone(),
            reason: e.to_string(),
        })?;
    let spec = kernel::spec::find(&args.kernel, &kernel::spec::search_dirs(&args.kernel_paths))?;
    let sandbox = kernel::sandbox::Sandbox::resolve(
        &kernel::sandbox::SandboxRequest {
            memory_mib: args.kernel_memory_mib,
            max_processes: args.kernel_max_processes,
            max_open_files: args.kernel_max_open_files,
            isolate_network: args.kernel_isolate_network,
            uid: args.kernel_uid,
        },
        spec.spec
            .argv
            .first()
            .map(String::as_str)
            .unwrap_or_default(),
        &spec.dir,
    );
    let runtime = RuntimeDir::create(&args.runtime_root)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: args.listen,
        source,
    })?;

    let shutdown = CancellationToken::new();
    let settings = SessionSettings {
        spec,
        sandbox,
        workspace: args.workspace.clone(),
        execution_timeout: args.execution_timeout,
        interrupt_grace: args.interrupt_grace,
        startup_timeout: args.kernel_startup_timeout,
        heartbeat_interval: args.heartbeat_interval,
        max_restarts: args.max_restarts,
        restart_window: args.restart_window,
        max_output_bytes: args.max_output_bytes,
        stream_flush_interval: args.stream_flush_interval,
        max_queue: args.max_queue,
        broadcast_capacity: args.client_queue,
    };
    let (session, session_join) = KernelSession::spawn(settings, runtime, shutdown.clone());
    let tracker = TaskTracker::new();
    let state = Arc::new(AppState {
        session,
        auth: Authenticator::new(
            key,
            args.document.clone(),
            args.pod.clone(),
            args.token_leeway_secs,
            args.allowed_origins.clone(),
        ),
        args: args.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        metrics: crate::telemetry::prometheus(),
        activity: Activity::default(),
    });
    state.activity.touch();
    let app = router(state);
    let token = shutdown.clone();
    let http = tokio::spawn(
        async move {
            use axum::serve::ListenerExt as _;
            // Frames are small and latency-bound: never let Nagle hold one back for an ACK.
            let listener = listener.tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "could not set TCP_NODELAY");
                }
            });
            let served = axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "http server failed");
            }
        }
        .instrument(tracing::info_span!("http", %addr)),
    );
    tracing::info!(document = ?args.document, pod = %args.pod, "listening on http://{addr}");
    Ok(Running {
        addr,
        shutdown,
        http,
        session: session_join,
        tracker,
        grace: args.shutdown_grace,
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(page_script))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/ws", get(websocket))
        .with_state(state)
}

/// The try-it page: a strict CSP, no inline script, nothing fetched from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

async fn page() -> Response {
    static_asset(include_str!("page.html"), "text/html; charset=utf-8")
}

async fn page_script() -> Response {
    static_asset(include_str!("page.js"), "text/javascript; charset=utf-8")
}

fn static_asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let kernel_state = state.session.watch().borrow().kernel_state;
    let ready = matches!(kernel_state, KernelState::Idle | KernelState::Busy);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ready": ready, "kernel_state": kernel_state });
    (status, axum::Json(body)).into_response()
}

/// Liveness detail for Watchman: kernel state, connected clients and the last activity, so it
/// can end idle allocations. Carries no document content.
async fn status(State(state): State<Arc<AppState>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let kernel_state = state.session.watch().borrow().kernel_state;
    let body = serde_json::json!({
        "document": state.auth.document(),
        "kernel_state": kernel_state,
        "connections": state.activity.connections.load(Relaxed),
        "last_activity": state.activity.last.load(Relaxed),
    });
    axum::Json(body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[derive(Debug, serde::Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "middleman is shutting down",
        );
    }
    let claims = match state.auth.check(&headers, query.token.as_deref()) {
        Ok(c) => c,
        Err(error) => {
            metrics::counter!("middleman_ws_refused_total", "reason" => error.code()).increment(1);
            tracing::info!(%error, "websocket refused");
            return refuse(error.status(), error.code(), &error.to_string());
        }
    };
    let limit = state.args.max_client_message_bytes;
    let st = state.clone();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("connection", user = %claims.sub, role = %claims.role);
            let tracker = st.tracker.clone();
            async move {
                tracker
                    .spawn(connection::serve(socket, st, claims).instrument(span))
                    .await
                    .ok();
            }
        })
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}
