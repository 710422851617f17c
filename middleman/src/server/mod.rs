//! The HTTP server: health, readiness, metrics, the web client and the document WebSocket; and
//! the wiring of one Middleman: the kernel session starts first, its events flow into the hub,
//! and the hub (constructed with the session's handle) is the only way connections reach the
//! kernel. Refusals render through [`error::HttpError`].
//!
//! One file: the routes, their handlers and `start` are the server's whole surface and are read
//! together; what grew a concept of its own is beside it (a connection, the web client, errors).

mod connection;
mod error;
mod files;
mod jupyter;
mod jupyter_parking;

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
use crate::collab::{Hub, HubSettings};
use crate::config::ServeArgs;
use crate::document::persist::{DocumentStore, PersistError};
use crate::kernel::{self, KernelSession, RuntimeDir, SessionSettings};
use crate::protocol::{KernelState, Limits};
use error::HttpError;

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
    /// The document store could not be opened.
    #[error("document store {spec}: {source}")]
    Store {
        spec: String,
        #[source]
        source: PersistError,
    },
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
    hub: Arc<Hub>,
    /// The document store, to record the token that proves this pod's document (Watchman's
    /// store needs one before the first load).
    store: Option<DocumentStore>,
    auth: Authenticator,
    args: ServeArgs,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    metrics: PrometheusHandle,
    activity: Activity,
    policies: webclient::Policies,
    /// The kernel's working directory, for the file API.
    workspace: crate::workspace::Workspace,
    /// Jupyter clients' sessions waiting for them to reconnect.
    jupyter_parking: Arc<jupyter_parking::Parking>,
}

impl AppState {
    /// Hands a verified token to the store as the proof of this pod's document.
    fn bind_store(&self, headers: &HeaderMap, query_token: Option<&str>) {
        if let (Some(store), Some(token)) = (
            &self.store,
            crate::auth::Authenticator::token_from(headers, query_token),
        ) {
            store.bind(token);
        }
    }
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
    /// Stops the kernel session (after the last checkpoint).
    session_stop: CancellationToken,
    http: tokio::task::JoinHandle<()>,
    session: tokio::task::JoinHandle<()>,
    tracker: TaskTracker,
    grace: Duration,
    hub: Arc<Hub>,
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
        // The last checkpoint may take most of the grace period; the rest is left for the
        // session, the document and the connections.
        let started = tokio::time::Instant::now();
        let checkpoint_deadline = started + grace.mul_f64(0.8);
        self.hub.final_checkpoint(checkpoint_deadline).await;
        self.session_stop.cancel();
        let drained = tokio::time::timeout_at(started + grace, async {
            self.tracker.close();
            self.tracker.wait().await;
            let _ = self.http.await;
            let _ = self.session.await;
            // The kernel's last events (executions aborted by the shutdown) are saved too.
            self.hub.save_now().await;
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
    let runtime = RuntimeDir::create(&args.runtime_root)?;
    let launcher = launcher_settings(&args, &spec, &runtime)?;
    // The file API's view of the workspace: with `--kernel-agent`, `--workspace` as mounted in
    // this container; else where the agent this Middleman starts puts it, seen through the
    // agent's mount namespace when it has one (it makes one when it runs as root).
    let workspace = match &args.kernel_agent {
        Some(_) => crate::workspace::Workspace::new(args.workspace.clone(), None),
        None => crate::workspace::Workspace::new(
            Some(local_workspace(&args, &runtime)),
            nix::unistd::geteuid()
                .is_root()
                .then(|| launcher.agent_pid.clone()),
        ),
    };
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

    let store = match args.document_store.as_str() {
        "" | "none" => None,
        spec => Some(
            DocumentStore::open(
                spec,
                &args.document_key_prefix,
                args.pod_credential_file.as_deref(),
            )
            .await
            .map_err(|source| StartError::Store {
                spec: spec.to_owned(),
                source,
            })?,
        ),
    };
    let limits = Limits {
        max_client_message_bytes: args.max_client_message_bytes as u64,
        max_output_bytes: args.max_output_bytes,
        execution_timeout_ms: u64::try_from(args.execution_timeout.as_millis()).unwrap_or(u64::MAX),
        max_clients: args.max_clients as u64,
        stream_flush_interval_ms: u64::try_from(args.stream_flush_interval.as_millis())
            .unwrap_or(u64::MAX),
    };
    let store_binding = store.clone();
    let hub_settings = HubSettings {
        client_queue: args.client_queue,
        replay_frames: args.replay_frames,
        replay_bytes: args.replay_bytes,
        max_clients: args.max_clients,
        save_debounce: args.save_interval,
        awareness_timeout: Duration::from_secs(30),
        max_document_bytes: args.max_document_bytes,
        limits,
    };

    let shutdown = CancellationToken::new();
    let settings = SessionSettings {
        spec,
        launcher,
        execution_timeout: args.execution_timeout,
        interrupt_grace: args.interrupt_grace,
        startup_timeout: args.kernel_startup_timeout,
        heartbeat_interval: args.heartbeat_interval,
        max_restarts: args.max_restarts,
        restart_window: args.restart_window,
        max_output_bytes: args.max_output_bytes,
        stream_flush_interval: args.stream_flush_interval,
        max_queue: args.max_queue,
    };
    // The kernel first: its events go into a channel the hub reads, and the hub gets its handle,
    // so data flows one way: connections -> hub -> session, session -> events -> hub.
    let (events, kernel_events) = tokio::sync::mpsc::unbounded_channel();
    // The session outlives the shutdown signal until the last checkpoint is saved.
    let session_stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let checkpoint_store = match args.checkpoint_store.as_deref() {
        None | Some("") | Some("none") => None,
        Some(spec) if spec.starts_with("watchman+") => {
            match store.as_ref().and_then(|s| s.remote()) {
                Some(remote) => Some(crate::checkpoint::CheckpointStore::Watchman(Box::new(
                    remote.clone(),
                ))),
                None => {
                    return Err(StartError::Store {
                        spec: spec.to_owned(),
                        source: crate::document::persist::PersistError::Store(
                            doc_store::StoreError::Watchman(
                                "checkpoints through Watchman need the document store there too"
                                    .into(),
                            ),
                        ),
                    });
                }
            }
        }
        Some(dir) => Some(crate::checkpoint::CheckpointStore::Dir(
            doc_store::checkpoints::CheckpointDir::new(dir.strip_prefix("file://").unwrap_or(dir)),
        )),
    };
    let checkpoints = checkpoint_store.map(|store| {
        let settings = crate::checkpoint::CheckpointSettings {
            store,
            workspace: workspace.clone(),
            max_name_bytes: args.checkpoint_max_name_mib << 20,
            max_bytes: args.checkpoint_max_mib << 20,
            max_files_bytes: args.checkpoint_max_files_mib << 20,
            budget: args.checkpoint_budget,
            restore_timeout: args.kernel_startup_timeout.max(Duration::from_secs(300)),
        };
        let (checkpoints, keeper) =
            crate::checkpoint::Checkpoints::new(settings, events.clone(), session_stop.clone());
        tracker.spawn(keeper.instrument(tracing::info_span!("checkpoints")));
        Arc::new(checkpoints)
    });
    let (session, session_join) =
        KernelSession::spawn(settings, runtime, events, session_stop.clone());
    let hub = Arc::new(Hub::new(hub_settings, store, session, checkpoints));
    {
        // Ends when the session ends (after its last events, at shutdown), not before.
        let follower = hub.clone();
        tracker.spawn(
            async move { follower.follow_kernel(kernel_events).await }
                .instrument(tracing::info_span!("kernel_events")),
        );
        let (saver, token) = (hub.clone(), shutdown.clone());
        tracker.spawn(
            async move { saver.run_saver(token).await }.instrument(tracing::info_span!("saver")),
        );
        let (expirer, token) = (hub.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        _ = tick.tick() => expirer.expire_awareness(),
                    }
                }
            }
            .instrument(tracing::info_span!("awareness_expiry")),
        );
        if let Some(document) = args.document.clone() {
            // Restore at start, not at the first connection, so the document is ready (and a
            // broken store shows in the logs) before anyone arrives.
            let loader = hub.clone();
            tracker.spawn(
                async move {
                    if loader.ensure_loaded(&document).await.is_err() {
                        tracing::warn!("the document will be loaded when a client connects");
                    }
                }
                .instrument(tracing::info_span!("load")),
            );
        }
    }
    let state = Arc::new(AppState {
        hub: hub.clone(),
        store: store_binding,
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
        metrics: {
            let handle = crate::telemetry::prometheus();
            register_metrics();
            files::register_metrics();
            handle
        },
        activity: Activity::default(),
        policies: webclient::Policies::new(&args.allowed_origins),
        workspace,
        jupyter_parking: Arc::default(),
    });
    state.activity.touch();
    let app = router(state);
    let token = shutdown.clone();
    let deadlines = httpserve::Deadlines {
        header: args.http_header_timeout,
        request: args.http_request_timeout,
    };
    let http = tokio::spawn(
        httpserve::serve(listener, app, token, deadlines)
            .instrument(tracing::info_span!("http", %addr)),
    );
    tracing::info!(document = ?args.document, pod = %args.pod, "listening on http://{addr}");
    Ok(Running {
        addr,
        shutdown,
        session_stop,
        http,
        session: session_join,
        tracker,
        grace: args.shutdown_grace,
        hub,
    })
}

/// How kernels are launched: through the agent in the pod's kernel container
/// (`--kernel-agent`), or an agent this Middleman starts with the sandbox flags.
fn launcher_settings(
    args: &ServeArgs,
    spec: &kernel::KernelSpec,
    runtime: &RuntimeDir,
) -> Result<kernel::LauncherSettings, StartError> {
    use std::ffi::OsString;
    if let Some(socket) = &args.kernel_agent {
        return Ok(kernel::LauncherSettings {
            agent: kernel_sandbox::AgentTarget::Socket(socket.clone()),
            ipc_dir: args
                .kernel_ipc_dir
                .clone()
                .unwrap_or_else(|| runtime.path().to_owned()),
            require: args.sandbox_require,
            plan_note: args.plan_note.clone(),
            js_heap_mib: args.kernel_js_heap_mib,
            agent_pid: kernel::AgentPid::default(),
        });
    }
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| kernel::KernelError::RuntimeDir { path, source }
    };
    // Only `ipc/` is shared with the kernel; the workspace's image stays beside it, unseen.
    let ipc = runtime.path().join("ipc");
    std::fs::create_dir(&ipc).map_err(io(&ipc))?;
    let workspace = local_workspace(args, runtime);
    let program = match &args.kernel_agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(io(std::path::Path::new("/proc/self/exe")))?,
    };
    let mut agent: Vec<OsString> = vec![
        "--workspace".into(),
        workspace.clone().into(),
        "--workspace-image".into(),
        workspace.with_extension("img").into(),
        "--workspace-quota-mib".into(),
        args.workspace_quota_mib.to_string().into(),
        "--memory-mib".into(),
        args.kernel_memory_mib.to_string().into(),
        "--max-processes".into(),
        args.kernel_max_processes.to_string().into(),
        "--max-open-files".into(),
        args.kernel_max_open_files.to_string().into(),
        "--cpus".into(),
        args.kernel_cpus.to_string().into(),
        "--tmp-mib".into(),
        args.kernel_tmp_mib.to_string().into(),
        "--namespaces".into(),
        match args.kernel_namespaces {
            kernel_sandbox::agent::server::Namespaces::Auto => "auto",
            kernel_sandbox::agent::server::Namespaces::On => "on",
            kernel_sandbox::agent::server::Namespaces::Off => "off",
        }
        .into(),
    ];
    if let Some(uid) = args.kernel_uid {
        agent.push("--kernel-uid".into());
        agent.push(uid.to_string().into());
    }
    // The kernelspec's directory ({resource_dir}) and whatever the operator adds.
    for path in std::iter::once(&spec.dir).chain(&args.kernel_read_only) {
        agent.push("--read-only".into());
        agent.push(path.clone().into());
    }
    let mut settings = kernel::LauncherSettings::local(
        program,
        ipc,
        agent,
        args.sandbox_require,
        args.plan_note.clone(),
    );
    settings.js_heap_mib = args.kernel_js_heap_mib;
    Ok(settings)
}

/// The workspace of a kernel this Middleman's own agent runs.
fn local_workspace(args: &ServeArgs, runtime: &RuntimeDir) -> std::path::PathBuf {
    args.workspace
        .clone()
        .unwrap_or_else(|| runtime.path().join("workspace"))
}

fn router(state: Arc<AppState>) -> Router {
    let assets = webclient::assets(state.policies.clone());
    Router::new()
        .route(
            "/",
            get(|State(s): State<Arc<AppState>>| async move { webclient::page(&s.policies) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/ws", get(websocket))
        .route("/yjs/{document}", get(websocket_yjs))
        .route("/jupyter/channels", get(websocket_jupyter))
        .route("/api/files", get(files::list).delete(files::delete))
        .route(
            "/api/files/content",
            get(files::download).put(files::upload),
        )
        .route("/api/files/rename", axum::routing::post(files::rename))
        .route(
            "/api/kernel/interrupt",
            axum::routing::post(interrupt_kernel),
        )
        .route("/api/kernel/restart", axum::routing::post(restart_kernel))
        .route(
            "/api/notebook",
            get(export_notebook)
                .put(import_notebook)
                .layer(axum::extract::DefaultBodyLimit::max(
                    state.args.max_import_bytes,
                )),
        )
        .with_state(state)
        .merge(assets)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let kernel_state = state.hub.kernel().kernel_state;
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
/// can end idle allocations. Carries no document content, and names the document only to a
/// caller with a valid token for it.
async fn status(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let kernel_state = state.hub.kernel().kernel_state;
    let mut body = serde_json::json!({
        "kernel_state": kernel_state,
        "connections": state.activity.connections.load(Relaxed),
        "last_activity": state.activity.last.load(Relaxed),
    });
    if crate::auth::Authenticator::token_from(&headers, None).is_some()
        && state.auth.check(&headers, None).is_ok()
    {
        body["document"] = serde_json::json!(state.auth.document());
    }
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
    /// With `since`: resume a session from the last `seq` seen.
    session: Option<String>,
    since: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ChannelsQuery {
    token: Option<String>,
    /// The client's session: a reconnect with it takes its parked session over.
    #[serde(default)]
    session_id: String,
}

/// Authenticates an HTTP request and loads the document.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<session_token::Claims, HttpError> {
    let claims = state.auth.check(headers, token).inspect_err(|error| {
        tracing::info!(%error, "request refused");
    })?;
    state.bind_store(headers, token);
    state.hub.ensure_loaded(&claims.doc).await?;
    Ok(claims)
}

/// `POST /api/kernel/interrupt` (editors): what the web client's interrupt does; Watchman's
/// Jupyter API calls it for a Jupyter client's REST interrupt.
async fn interrupt_kernel(
    State(state): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let by = authorize_editor(&state, &headers, query.token.as_deref()).await?;
    state.hub.interrupt(by).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/kernel/restart` (editors): restarts the kernel and answers once the new one is
/// ready (at most `--kernel-startup-timeout`), as Jupyter's REST restart does.
async fn restart_kernel(
    State(state): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let by = authorize_editor(&state, &headers, query.token.as_deref()).await?;
    let mut watch = state.hub.session_watch();
    state.hub.restart(by).await?;
    let ready = watch.wait_for(|s| matches!(s.kernel_state, KernelState::Idle | KernelState::Busy));
    match tokio::time::timeout(state.args.kernel_startup_timeout, ready).await {
        Ok(Ok(_)) => Ok(StatusCode::NO_CONTENT.into_response()),
        _ => Err(HttpError::KernelNotReady),
    }
}

/// Authenticates a kernel action: an editor's, named as collaborators see them.
async fn authorize_editor(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<String, HttpError> {
    let claims = authorize(state, headers, token).await?;
    if !claims.role.can_edit() {
        return Err(HttpError::ViewerAction);
    }
    Ok(who_of(&claims).name)
}

/// Who a token names, as collaborators see them.
fn who_of(claims: &session_token::Claims) -> crate::collab::Who {
    crate::collab::Who {
        user: claims.sub.clone(),
        name: if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name.clone()
        },
        role: claims.role,
    }
}

/// `GET /api/notebook`: the document as an nbformat 4.5 `.ipynb`.
async fn export_notebook(
    State(state): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let claims = authorize(&state, &headers, query.token.as_deref()).await?;
    let body = state.hub.export();
    let mut response = axum::Json(body).into_response();
    let safe: String = claims
        .doc
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(100)
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}.ipynb\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `PUT /api/notebook`: replaces the document with an `.ipynb` (editors only).
async fn import_notebook(
    State(state): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, HttpError> {
    let claims = authorize(&state, &headers, query.token.as_deref()).await?;
    if !claims.role.can_edit() {
        return Err(HttpError::ViewerImport);
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::TooLarge {
                limit: state.args.max_import_bytes,
            }
        } else {
            HttpError::BadBody(rejection.body_text())
        }
    })?;
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(HttpError::NotJson)?;
    let kernel = state.hub.kernel().kernel;
    let imported =
        crate::document::ipynb::import(&json, &kernel).map_err(HttpError::BadNotebook)?;
    let cells = imported.notebook.len();
    state.hub.import(&imported.notebook).await;
    tracing::info!(user = %claims.sub, cells, changes = imported.changes.len(), "notebook imported");
    Ok(
        axum::Json(serde_json::json!({ "cells": cells, "changes": imported.changes }))
            .into_response(),
    )
}

async fn websocket(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    upgrade(state, query, headers, ws, None).await
}

/// `/yjs/{document}`: the document's CRDT alone, for stock Yjs providers (y-websocket's
/// `WebsocketProvider` puts the room in the path and `params` in the query: `?token=`). The
/// room must be the token's document.
async fn websocket_yjs(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(document): axum::extract::Path<String>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    upgrade(state, query, headers, ws, Some(document)).await
}

/// `/jupyter/channels`: the kernel WebSocket of stock Jupyter clients, in the
/// `v1.kernel.websocket.jupyter.org` subprotocol when offered, else the legacy JSON form
/// (docs/jupyter.md). The same token, admission and limits as `/ws`.
async fn websocket_jupyter(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ChannelsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    let (claims, mut who) = admit(&state, query.token.as_deref(), &headers, None).await?;
    who.name = format!("{} (Jupyter)", who.name);
    let subscribed = state.hub.subscribe(&who).inspect_err(|_| {
        metrics::counter!("middleman_ws_refused_total", "reason" => "document_full").increment(1);
    })?;
    let guard = connection::Membership::new(state.hub.clone(), subscribed.client);
    // A session is its user's: another user naming it starts a session of their own.
    let session_id = if query.session_id.is_empty()
        || query.session_id.len() > 128
        || !query
            .session_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        String::new()
    } else {
        format!("{}\u{0}{}", claims.sub, query.session_id)
    };
    let ws = ws.protocols([crate::jupyter::wire::SUBPROTOCOL]);
    let framing = if ws.selected_protocol().is_some() {
        crate::jupyter::wire::Framing::V1
    } else {
        crate::jupyter::wire::Framing::Legacy
    };
    let seat = jupyter::Seat {
        claims,
        who,
        subscribed,
        membership: guard,
        framing,
        session_id,
    };
    let limit = state.args.max_client_message_bytes;
    let st = state.clone();
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("jupyter", client = seat.subscribed.client, user = %seat.claims.sub, role = %seat.claims.role);
            let tracker = st.tracker.clone();
            async move {
                tracker
                    .spawn(
                        jupyter::serve(socket, st, seat).instrument(span),
                    )
                    .await
                    .ok();
            }
        }))
}

/// Authenticates a WebSocket's token (the room, for a Yjs peer, must be its document) and
/// loads the document; returns who connects.
async fn admit(
    state: &AppState,
    token: Option<&str>,
    headers: &HeaderMap,
    yjs_room: Option<&str>,
) -> Result<(session_token::Claims, crate::collab::Who), HttpError> {
    if state.shutdown.is_cancelled() {
        return Err(HttpError::ShuttingDown);
    }
    let claims = state.auth.check(headers, token).inspect_err(|error| {
        metrics::counter!("middleman_ws_refused_total", "reason" => error.code()).increment(1);
        tracing::info!(%error, "websocket refused");
    })?;
    if yjs_room.is_some_and(|room| room != claims.doc) {
        return Err(HttpError::WrongRoom);
    }
    state.bind_store(headers, token);
    state.hub.ensure_loaded(&claims.doc).await?;
    let who = who_of(&claims);
    Ok((claims, who))
}

/// Authenticates, admits and upgrades a document connection; `yjs_room` makes it Yjs-only.
async fn upgrade(
    state: Arc<AppState>,
    query: WsQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
    yjs_room: Option<String>,
) -> Result<Response, HttpError> {
    let (claims, who) = admit(
        &state,
        query.token.as_deref(),
        &headers,
        yjs_room.as_deref(),
    )
    .await?;
    let yjs_only = yjs_room.is_some();
    let resume = query
        .session
        .as_deref()
        .zip(query.since)
        .filter(|_| !yjs_only);
    // Admit before upgrading, so a full document is a plain HTTP refusal.
    let joined = state.hub.join(&who, &claims.doc, resume).inspect_err(|_| {
        metrics::counter!("middleman_ws_refused_total", "reason" => "document_full").increment(1);
    })?;
    let guard = connection::Membership::new(state.hub.clone(), joined.client);
    let limit = state.args.max_client_message_bytes;
    let st = state.clone();
    Ok(ws
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("connection", client = joined.client, user = %claims.sub, role = %claims.role);
            let tracker = st.tracker.clone();
            async move {
                tracker
                    .spawn(
                        connection::serve(socket, st, claims, who, joined, guard, yjs_only)
                            .instrument(span),
                    )
                    .await
                    .ok();
            }
        }))
}

/// Creates every counter that only moves on rare events at zero, so that dashboards and
/// `increase()` in alerts see the first event.
fn register_metrics() {
    for name in [
        "middleman_document_save_errors_total",
        "middleman_document_load_errors_total",
        "middleman_output_truncations_total",
        "middleman_resumes_total",
        "middleman_checkpoint_store_errors_total",
        "middleman_checkpoint_bytes_total",
        "middleman_comm_messages_dropped_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for kind in ["cell", "all"] {
        metrics::counter!("middleman_checkpoints_total", "kind" => kind).increment(0);
    }
    for outcome in ["restored", "fallback"] {
        metrics::counter!("middleman_checkpoint_resumes_total", "outcome" => outcome).increment(0);
    }
    for channel in ["shell", "iopub", "stdin", "control"] {
        metrics::counter!("middleman_kernel_messages_dropped_total", "channel" => channel)
            .increment(0);
    }
    for cause in [
        "exited",
        "heartbeat",
        "startup_failed",
        "launch_failed",
        "out_of_memory",
        "socket",
        "interrupt",
        "timeout",
        "requested",
    ] {
        metrics::counter!("middleman_kernel_restarts_total", "cause" => cause).increment(0);
    }
    for outcome in [
        "resumed", "expired", "overflow", "lagged", "shutdown", "refused",
    ] {
        metrics::counter!("middleman_jupyter_sessions_parked_total", "outcome" => outcome)
            .increment(0);
    }
    for action in ["resynced", "dropped"] {
        metrics::counter!("middleman_slow_clients_total", "action" => action).increment(0);
    }
}
