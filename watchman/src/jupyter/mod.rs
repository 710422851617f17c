//! The Jupyter Server API on warm pods (docs/jupyter.md): the REST side that JupyterLab,
//! VS Code and jupyter_server's gateway client call (`/jupyter/api/kernelspecs`,
//! `/jupyter/api/kernels`, interrupt, restart, `/jupyter/api`, `/api/me`, `/api/status`), on
//! Watchman's HTTP port, behind the gateway. A kernel start is an allocation (kernels.rs), a
//! kernelspec a plan (specs.rs). The kernel WebSocket itself is the gateway's
//! (`Routes.ResolveKernel`, then the pod's `/jupyter/channels`).
//!
//! Callers present a Jupyter API token (`aud: jupyter`): `Authorization: token <t>`, `Bearer
//! <t>` or `?token=`. No XSRF check: nothing here reads cookies. Product backends mint those
//! tokens with `POST /v1/jupyter-tokens` (the API token).

mod contents;
mod kernels;
mod records;
mod sessions;
mod specs;

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use session_token::{Claims, Expectations, Role, SigningKey, VerifyingKey};

use crate::grpc::ApiAuth;
use crate::service::{ServiceError, Watchman};

/// The jupyter_server version whose API this follows (what `GET /api` says).
const API_VERSION: &str = "2.21.1";
/// Clock skew tolerated on Jupyter tokens.
const LEEWAY_SECS: u64 = 30;
/// The longest Jupyter token `/v1/jupyter-tokens` mints.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long Watchman waits for a pod's kernel action (a restart waits for the new kernel).
const POD_ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a Jupyter request failed. Rendered as Jupyter Server does (`{"message", "reason"}`,
/// which its clients read), plus our `error` code.
#[derive(Debug, thiserror::Error)]
pub enum JupyterError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("Kernel does not exist: {0}")]
    NoKernel(String),
    #[error("No such kernel specification: {0}")]
    NoSpec(String),
    #[error("Session not found: {0}")]
    NoSession(String),
    #[error("No such file: {0}")]
    NoFile(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("viewers may not {0}")]
    Forbidden(&'static str),
    #[error("the kernel's pod did not answer: {0}")]
    Pod(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl JupyterError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            JupyterError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            JupyterError::NoKernel(_)
            | JupyterError::NoSpec(_)
            | JupyterError::NoSession(_)
            | JupyterError::NoFile(_) => (StatusCode::NOT_FOUND, "not_found"),
            JupyterError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            JupyterError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            JupyterError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            JupyterError::Pod(_) => (StatusCode::BAD_GATEWAY, "pod_unavailable"),
            JupyterError::Service(e) => match e {
                ServiceError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
                ServiceError::UnknownPlan { .. } => (StatusCode::NOT_FOUND, "unknown_plan"),
                ServiceError::Exhausted { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "resource_exhausted")
                }
                ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                ServiceError::FailedPrecondition(_) => {
                    (StatusCode::CONFLICT, "failed_precondition")
                }
                ServiceError::Store(_) | ServiceError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
                ServiceError::Token(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        }
    }
}

impl IntoResponse for JupyterError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "jupyter request failed");
        }
        let body = json!({
            "message": self.to_string(),
            "reason": status.canonical_reason().unwrap_or(""),
            "error": code,
        });
        (status, axum::Json(body)).into_response()
    }
}

/// What the Jupyter routes hold.
#[derive(Clone)]
pub struct JupyterApi {
    watchman: Watchman,
    signing: SigningKey,
    verifying: VerifyingKey,
    api: ApiAuth,
    http: reqwest::Client,
    default_plan: Option<String>,
}

impl std::fmt::Debug for JupyterApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JupyterApi")
            .field("default_plan", &self.default_plan)
            .finish_non_exhaustive()
    }
}

impl JupyterApi {
    pub fn new(
        watchman: Watchman,
        signing: SigningKey,
        api: ApiAuth,
        default_plan: Option<String>,
    ) -> Self {
        Self {
            verifying: signing.verifying_key(),
            watchman,
            signing,
            api,
            http: reqwest::Client::builder()
                .timeout(POD_ACTION_TIMEOUT)
                .build()
                .unwrap_or_default(),
            default_plan,
        }
    }

    /// The caller's verified Jupyter token.
    fn caller(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Claims, JupyterError> {
        let token = token_from(headers, query).ok_or_else(|| {
            JupyterError::Unauthorized(
                "a Jupyter API token is required (Authorization: token <t>, or ?token=)".into(),
            )
        })?;
        self.verify(token)
    }

    /// Verifies a Jupyter API token (never a session token: the audiences differ).
    pub fn verify(&self, token: &str) -> Result<Claims, JupyterError> {
        self.verifying
            .verify(
                token,
                &Expectations {
                    document: None,
                    pod: None,
                    leeway_secs: LEEWAY_SECS,
                    audience: Some(session_token::JUPYTER_AUDIENCE),
                },
            )
            .map_err(|e| JupyterError::Unauthorized(format!("the Jupyter token is refused: {e}")))
    }

    /// For the gateway (`Routes.ResolveKernel`): the kernel's pod and a session token for
    /// the token's user on it.
    pub async fn resolve(
        &self,
        kernel_id: &str,
        jupyter_token: &str,
    ) -> Result<Resolved, JupyterError> {
        let claims = self.verify(jupyter_token)?;
        let kernel = kernels::find(&self.watchman, &claims, kernel_id).await?;
        let (session_token, expires) =
            kernels::session_token(&self.watchman, &claims, &kernel, None).await?;
        Ok(Resolved {
            pod: kernel.allocation.pod,
            endpoint: kernel.allocation.endpoint,
            document: kernel.allocation.document,
            session_token,
            expires,
        })
    }

    /// The plan a spec name means (`None`: the default spec).
    fn plan_named(&self, name: Option<String>) -> Result<String, JupyterError> {
        let name = name
            .filter(|n| !n.is_empty())
            .or_else(|| self.default_plan.clone())
            .or_else(|| self.watchman.plans().keys().next().cloned())
            .unwrap_or_default();
        specs::plan_for(self.watchman.plans(), &name)
            .map(|p| p.name.clone())
            .ok_or_else(|| JupyterError::NoSpec(name.chars().take(64).collect()))
    }

    /// Ends a kernel: its pod is released, its document stays.
    async fn end_kernel(
        &self,
        claims: &Claims,
        kernel: &kernels::Kernel,
    ) -> Result<(), JupyterError> {
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("shut kernels down"));
        }
        self.watchman.release(&kernel.allocation.document).await?;
        tracing::info!(kernel = %kernel.id, user = %claims.sub, "jupyter kernel shut down");
        Ok(())
    }

    async fn model(&self, kernel: &kernels::Kernel) -> Value {
        let status = self.watchman.pod_status(&kernel.allocation.endpoint).await;
        kernels::model(kernel, status.as_ref())
    }

    /// Asks the kernel's pod to interrupt or restart its kernel, as the caller.
    async fn pod_action(
        &self,
        claims: &Claims,
        kernel: &kernels::Kernel,
        action: &str,
    ) -> Result<(), JupyterError> {
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("interrupt or restart the kernel"));
        }
        let (token, _) = kernels::session_token(
            &self.watchman,
            claims,
            kernel,
            Some(Duration::from_secs(300)),
        )
        .await?;
        let url = format!("{}/api/kernel/{action}", kernel.allocation.endpoint);
        let answer = self
            .http
            .post(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| JupyterError::Pod(e.to_string()))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let body = answer.text().await.unwrap_or_default();
        Err(JupyterError::Pod(format!(
            "{action} answered {status}: {}",
            body.chars().take(300).collect::<String>()
        )))
    }
}

/// Where a kernel is, for the gateway.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub pod: String,
    pub endpoint: String,
    pub document: String,
    pub session_token: String,
    pub expires: u64,
}

/// The token from `Authorization: token <t>` (Jupyter's scheme), `Bearer <t>`, or `?token=`.
fn token_from<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(session_token::from_authorization)
        .or_else(|| {
            query?
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "token")
                .map(|(_, v)| v)
        })
        .filter(|t| !t.is_empty())
}

/// The routes under `/jupyter/`, and `/v1/jupyter-tokens`.
pub fn routes(api: JupyterApi) -> Router {
    Router::new()
        .route("/jupyter/api", get(version))
        .route("/jupyter/api/", get(version))
        .route("/jupyter/api/status", get(status))
        .route("/jupyter/api/me", get(me))
        .route("/jupyter/api/kernelspecs", get(kernelspecs))
        .route("/jupyter/api/kernelspecs/{name}", get(kernelspec))
        .route("/jupyter/kernelspecs/{name}/{file}", get(kernelspec_file))
        .route("/jupyter/api/kernels", get(list_kernels).post(start_kernel))
        .route(
            "/jupyter/api/kernels/{id}",
            get(get_kernel).delete(delete_kernel),
        )
        .route("/jupyter/api/kernels/{id}/interrupt", post(interrupt))
        .route("/jupyter/api/kernels/{id}/restart", post(restart))
        .route(
            "/jupyter/api/sessions",
            get(list_sessions).post(create_session),
        )
        .route(
            "/jupyter/api/sessions/{id}",
            get(get_session)
                .patch(update_session)
                .delete(delete_session),
        )
        .route(
            "/jupyter/api/contents",
            get(get_contents).post(create_contents),
        )
        .route(
            "/jupyter/api/contents/",
            get(get_contents).post(create_contents),
        )
        .route(
            "/jupyter/api/contents/{*path}",
            get(get_contents_at)
                .post(post_contents_at)
                .put(save_contents)
                .patch(rename_contents)
                .delete(delete_contents),
        )
        // VS Code's check that this is a plain Jupyter server with no password page.
        .route(
            "/jupyter/tree",
            get(|| async { "Jupyter Server API (nbplat)\n" }),
        )
        .route("/v1/jupyter-tokens", post(mint_token))
        .layer(axum::extract::DefaultBodyLimit::max(
            contents::MAX_FILE_BYTES + (64 << 10),
        ))
        .with_state(api)
}

#[derive(Debug, Deserialize, Default)]
struct RawQuery {
    token: Option<String>,
}

impl RawQuery {
    fn as_query(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("token={t}"))
    }
}

type Q = Query<RawQuery>;

fn counted(route: &'static str, response: Response) -> Response {
    metrics::counter!("watchman_jupyter_requests_total", "route" => route, "status" => response.status().as_u16().to_string()).increment(1);
    response
}

fn respond(route: &'static str, result: Result<Response, JupyterError>) -> Response {
    counted(route, result.unwrap_or_else(IntoResponse::into_response))
}

async fn version() -> Response {
    axum::Json(json!({ "version": API_VERSION })).into_response()
}

async fn status(State(api): State<JupyterApi>, headers: HeaderMap, Query(q): Q) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let live = kernels::list(&api.watchman, &claims).await?;
        let now = kernels::jupyter_time(session_token::now_secs());
        Ok(axum::Json(json!({
            "started": now,
            "last_activity": now,
            "connections": 0,
            "kernels": live.len(),
        }))
        .into_response())
    }
    .await;
    respond("status", result)
}

async fn me(State(api): State<JupyterApi>, headers: HeaderMap, Query(q): Q) -> Response {
    let result = api.caller(&headers, q.as_query().as_deref()).map(|claims| {
        let name = if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name.clone()
        };
        let initials: String = name
            .split_whitespace()
            .filter_map(|w| w.chars().next())
            .take(2)
            .collect();
        axum::Json(json!({
            "identity": {
                "username": claims.sub,
                "name": name,
                "display_name": name,
                "initials": initials,
                "avatar_url": null,
                "color": null,
            },
            "permissions": {},
        }))
        .into_response()
    });
    respond("me", result)
}

async fn kernelspecs(State(api): State<JupyterApi>, headers: HeaderMap, Query(q): Q) -> Response {
    let result = api.caller(&headers, q.as_query().as_deref()).map(|_| {
        let body = specs::all(
            api.watchman.plans(),
            |plan| api.watchman.can_run(plan),
            api.default_plan.as_deref(),
        );
        axum::Json(body).into_response()
    });
    respond("kernelspecs", result)
}

async fn kernelspec(
    State(api): State<JupyterApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = api.caller(&headers, q.as_query().as_deref()).and_then(|_| {
        specs::plan_for(api.watchman.plans(), &name)
            .filter(|p| api.watchman.can_run(&p.name))
            .map(|p| axum::Json(specs::spec(p)).into_response())
            .ok_or_else(|| JupyterError::NoSpec(name.chars().take(64).collect()))
    });
    respond("kernelspecs", result)
}

/// Kernelspec resources (logos): none are served.
async fn kernelspec_file(Path((name, _file)): Path<(String, String)>) -> Response {
    respond(
        "kernelspecs",
        Err(JupyterError::NoSpec(name.chars().take(64).collect())),
    )
}

async fn list_kernels(State(api): State<JupyterApi>, headers: HeaderMap, Query(q): Q) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let live = kernels::list(&api.watchman, &claims).await?;
        let models = futures_util::future::join_all(live.iter().map(|k| api.model(k))).await;
        Ok(axum::Json(models).into_response())
    }
    .await;
    respond("kernels", result)
}

#[derive(Debug, Deserialize, Default)]
struct StartBody {
    name: Option<String>,
}

async fn start_kernel(
    State(api): State<JupyterApi>,
    headers: HeaderMap,
    Query(q): Q,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        // An empty body starts the default kernel, as in Jupyter Server.
        let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
            StartBody::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| JupyterError::BadRequest(format!("the body is not a kernel request: {e}")))?
        };
        let plan = api.plan_named(body.name)?;
        let kernel = kernels::start(&api.watchman, &claims, &plan).await?;
        tracing::info!(kernel = %kernel.id, user = %claims.sub, %plan, document = %kernel.allocation.document, "jupyter kernel started");
        let model = api.model(&kernel).await;
        let mut response = (StatusCode::CREATED, axum::Json(model)).into_response();
        if let Ok(location) = HeaderValue::from_str(&format!("/jupyter/api/kernels/{}", kernel.id)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }
    .await;
    respond("start", result)
}

async fn get_kernel(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let kernel = kernels::find(&api.watchman, &claims, &id).await?;
        Ok(axum::Json(api.model(&kernel).await).into_response())
    }
    .await;
    respond("kernel", result)
}

async fn delete_kernel(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("shut kernels down"));
        }
        let kernel = kernels::find(&api.watchman, &claims, &id).await?;
        api.end_kernel(&claims, &kernel).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    respond("delete", result)
}

async fn interrupt(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let kernel = kernels::find(&api.watchman, &claims, &id).await?;
        api.pod_action(&claims, &kernel, "interrupt").await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    respond("interrupt", result)
}

async fn restart(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let kernel = kernels::find(&api.watchman, &claims, &id).await?;
        api.pod_action(&claims, &kernel, "restart").await?;
        Ok(axum::Json(api.model(&kernel).await).into_response())
    }
    .await;
    respond("restart", result)
}

#[derive(Debug, Deserialize)]
struct MintBody {
    user_id: String,
    #[serde(default)]
    user_name: String,
    /// Empty: a user token (each kernel start makes a new document).
    #[serde(default)]
    document_id: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// `POST /v1/jupyter-tokens` (the API token): a Jupyter API token for a user, or for a user in
/// one document.
async fn mint_token(
    State(api): State<JupyterApi>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !api.api.accepts(given) {
            return Err(JupyterError::Unauthorized(
                "the API token is required (Authorization: Bearer)".into(),
            ));
        }
        let body: MintBody = serde_json::from_slice(&body).map_err(|e| {
            JupyterError::BadRequest(format!("the body is not a token request: {e}"))
        })?;
        crate::service::valid_id("user_id", &body.user_id)?;
        if !body.document_id.is_empty() {
            crate::service::valid_id("document_id", &body.document_id)?;
        }
        let role = match body.role.as_deref() {
            None | Some("editor") => Role::Editor,
            Some("viewer") => Role::Viewer,
            Some(other) => {
                return Err(JupyterError::BadRequest(format!(
                    "role must be editor or viewer, not {:?}",
                    other.chars().take(20).collect::<String>()
                )));
            }
        };
        let ttl = Duration::from_secs(body.ttl_seconds.unwrap_or(24 * 3600)).min(MAX_TOKEN_TTL);
        let name = if body.user_name.is_empty() {
            body.user_id.clone()
        } else {
            body.user_name.clone()
        };
        let claims = Claims::jupyter(
            "watchman",
            &body.user_id,
            &name,
            &body.document_id,
            role,
            ttl.as_secs(),
        );
        let token = api
            .signing
            .mint(&claims)
            .map_err(|e| JupyterError::Service(ServiceError::Token(e)))?;
        Ok(axum::Json(json!({ "token": token, "expires": claims.exp })).into_response())
    }
    .await;
    respond("token", result)
}

/// A JSON body, or the empty object when there is none.
fn json_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, JupyterError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| JupyterError::BadRequest(format!("the body is not what this call takes: {e}")))
}

async fn list_sessions(State(api): State<JupyterApi>, headers: HeaderMap, Query(q): Q) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        Ok(axum::Json(api.list_sessions(&claims).await?).into_response())
    }
    .await;
    respond("sessions", result)
}

async fn create_session(
    State(api): State<JupyterApi>,
    headers: HeaderMap,
    Query(q): Q,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let model = api.create_session(&claims, json_body(&body)?).await?;
        Ok((StatusCode::CREATED, axum::Json(model)).into_response())
    }
    .await;
    respond("sessions", result)
}

async fn get_session(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        Ok(axum::Json(api.get_session(&claims, &id).await?).into_response())
    }
    .await;
    respond("sessions", result)
}

async fn update_session(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        let model = api.update_session(&claims, &id, json_body(&body)?).await?;
        Ok(axum::Json(model).into_response())
    }
    .await;
    respond("sessions", result)
}

async fn delete_session(
    State(api): State<JupyterApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.as_query().as_deref())?;
        api.delete_session(&claims, &id).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    respond("sessions", result)
}

#[derive(Debug, Deserialize, Default)]
struct ContentsQuery {
    token: Option<String>,
    content: Option<String>,
}

impl ContentsQuery {
    fn token(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("token={t}"))
    }

    fn with_content(&self) -> bool {
        self.content.as_deref() != Some("0")
    }
}

async fn get_contents(
    State(api): State<JupyterApi>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
) -> Response {
    contents_get(&api, &headers, &q, "").await
}

async fn get_contents_at(
    State(api): State<JupyterApi>,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
) -> Response {
    contents_get(&api, &headers, &q, &path).await
}

async fn contents_get(
    api: &JupyterApi,
    headers: &HeaderMap,
    q: &ContentsQuery,
    path: &str,
) -> Response {
    let result = async {
        let claims = api.caller(headers, q.token().as_deref())?;
        // Checkpoints: none are kept; listing them is an empty list.
        if path.ends_with("/checkpoints") {
            return Ok(axum::Json(json!([])).into_response());
        }
        Ok(axum::Json(api.get_contents(&claims, path, q.with_content()).await?).into_response())
    }
    .await;
    respond("contents", result)
}

async fn create_contents(
    State(api): State<JupyterApi>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.token().as_deref())?;
        let model = api.create_untitled(&claims, json_body(&body)?).await?;
        Ok((StatusCode::CREATED, axum::Json(model)).into_response())
    }
    .await;
    respond("contents", result)
}

/// POST under a path: a new untitled file in the root (the only directory), or a checkpoint.
async fn post_contents_at(
    State(api): State<JupyterApi>,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.token().as_deref())?;
        if path.ends_with("/checkpoints") {
            let file = path.trim_end_matches("/checkpoints");
            let model = api.get_contents(&claims, file, false).await?;
            let checkpoint = json!({ "id": "checkpoint", "last_modified": model["last_modified"] });
            return Ok((StatusCode::CREATED, axum::Json(checkpoint)).into_response());
        }
        if !path.trim_matches('/').is_empty() {
            return Err(JupyterError::BadRequest(
                "there are no directories here".into(),
            ));
        }
        let model = api.create_untitled(&claims, json_body(&body)?).await?;
        Ok((StatusCode::CREATED, axum::Json(model)).into_response())
    }
    .await;
    respond("contents", result)
}

async fn save_contents(
    State(api): State<JupyterApi>,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.token().as_deref())?;
        let (model, created) = api.save(&claims, &path, json_body(&body)?).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, axum::Json(model)).into_response())
    }
    .await;
    respond("contents", result)
}

async fn rename_contents(
    State(api): State<JupyterApi>,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.token().as_deref())?;
        let model = api.rename(&claims, &path, json_body(&body)?).await?;
        Ok(axum::Json(model).into_response())
    }
    .await;
    respond("contents", result)
}

async fn delete_contents(
    State(api): State<JupyterApi>,
    Path(path): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ContentsQuery>,
) -> Response {
    let result = async {
        let claims = api.caller(&headers, q.token().as_deref())?;
        if path.contains("/checkpoints") {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        api.delete_file(&claims, &path).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    respond("contents", result)
}

/// Creates the request counters at zero.
pub fn register_metrics() {
    for route in [
        "kernels",
        "start",
        "kernel",
        "delete",
        "interrupt",
        "restart",
        "kernelspecs",
        "status",
        "me",
        "token",
        "sessions",
        "contents",
    ] {
        metrics::counter!("watchman_jupyter_requests_total", "route" => route, "status" => "200")
            .increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_jupyters_places() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("token abc"));
        assert_eq!(token_from(&h, None), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(token_from(&h, Some("token=q")), Some("xyz"));
        assert_eq!(
            token_from(&HeaderMap::new(), Some("a=1&token=q")),
            Some("q")
        );
        assert_eq!(token_from(&HeaderMap::new(), Some("token=")), None);
        assert_eq!(token_from(&HeaderMap::new(), None), None);
    }

    #[test]
    fn refusals_read_as_jupyter_servers() {
        let e = JupyterError::NoKernel("k1".into());
        assert_eq!(e.to_string(), "Kernel does not exist: k1");
        assert_eq!(e.status_and_code().0, StatusCode::NOT_FOUND);
        assert_eq!(
            JupyterError::Unauthorized("x".into()).status_and_code().0,
            StatusCode::UNAUTHORIZED
        );
    }
}
