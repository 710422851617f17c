//! The jobs API as HTTP/JSON, for backends without gRPC (docs/jobs.md, `docs/jobs-openapi.yaml`).
//! The same bearer token as the gRPC API; the same errors, as `{"error", "message"}`.

use std::convert::Infallible;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::model::{NotebookMode, NotebookSpec, RunEvent, Webhook};
use super::schedules::{Schedule, ScheduleAction};
use super::{JobError, Jobs, Submission};
use crate::grpc::ApiAuth;

/// The OpenAPI description, served at `/v1/openapi.yaml`.
const OPENAPI: &str = include_str!("../../../docs/jobs-openapi.yaml");

#[derive(Clone)]
struct AppState {
    jobs: Jobs,
    auth: ApiAuth,
}

/// `/v1/runs...` and `/v1/audit`.
pub fn routes(jobs: Jobs, auth: ApiAuth) -> Router {
    Router::new()
        .route("/v1/runs", post(submit).get(list))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/cancel", post(cancel))
        .route("/v1/runs/{id}/events", get(events))
        .route("/v1/notebook-runs", post(submit_notebook))
        .route("/v1/schedules", post(create_schedule).get(list_schedules))
        .route(
            "/v1/schedules/{id}",
            get(get_schedule).delete(delete_schedule),
        )
        .route("/v1/schedules/{id}/{action}", post(schedule_action))
        .route("/v1/audit", get(audit))
        .route("/v1/openapi.yaml", get(openapi))
        // The largest plan's notebook (32 MiB), with room for the JSON around it.
        .layer(DefaultBodyLimit::max(
            usize::try_from(crate::plan::MAX_NOTEBOOK_BYTES).unwrap_or(32 << 20) + (1 << 20),
        ))
        .with_state(AppState { jobs, auth })
}

fn refuse(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "message": message.into()})),
    )
        .into_response()
}

impl IntoResponse for JobError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            JobError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            JobError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            JobError::Quota(_) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            JobError::Conflict(_) => (StatusCode::CONFLICT, "idempotency_conflict"),
            JobError::InFlight(_) => (StatusCode::CONFLICT, "idempotency_in_flight"),
            JobError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            JobError::Store(e) => {
                tracing::error!(error = %e, "jobs store failed");
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the jobs store is unavailable; retry",
                );
            }
        };
        refuse(status, code, self.to_string())
    }
}

/// A caller with the API token.
struct Authorized;

impl FromRequestParts<AppState> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &AppState,
    ) -> Result<Self, Response> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if s.auth.accepts(given) {
            Ok(Self)
        } else {
            Err(refuse(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing or invalid bearer token (Authorization: Bearer <token>)",
            ))
        }
    }
}

/// `?user_id=...&limit=...`, refused as JSON when malformed.
struct ForUser(UserQuery);

impl FromRequestParts<AppState> for ForUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &AppState,
    ) -> Result<Self, Response> {
        match Query::<UserQuery>::from_request_parts(parts, s).await {
            Ok(Query(q)) => Ok(Self(q)),
            Err(e) => Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("user_id is required: {}", e.body_text()),
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    user_id: String,
    plan: String,
    #[serde(default)]
    kernel: String,
    code: String,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    idempotency_key: String,
}

async fn submit(
    State(s): State<AppState>,
    _: Authorized,
    headers: HeaderMap,
    body: Result<axum::Json<SubmitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body {
        Ok(axum::Json(b)) => b,
        Err(e) => return refuse(e.status(), "invalid_argument", e.body_text()),
    };
    // The header, as HTTP APIs usually take it, or the field.
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or(body.idempotency_key);
    let submission = Submission {
        user_id: body.user_id,
        plan: body.plan,
        kernel: body.kernel,
        code: body.code,
        stdin: body.stdin,
        timeout_ms: body.timeout_ms,
        idempotency_key: key,
        ..Submission::default()
    };
    match s.jobs.submit(submission).await {
        Ok(run) => (StatusCode::ACCEPTED, axum::Json(run)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotebookBody {
    user_id: String,
    plan: String,
    /// The user's document; or absent, `notebook`.
    #[serde(default)]
    document: String,
    /// An nbformat 4 notebook (a JSON object).
    #[serde(default)]
    notebook: Option<serde_json::Value>,
    #[serde(default)]
    mode: NotebookMode,
    #[serde(default)]
    parameters: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    stdin: String,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    webhook: Option<Webhook>,
}

/// The JSON body, or a 4xx that says what is wrong with it.
fn body_of<T>(
    body: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
) -> Result<T, Box<Response>> {
    body.map(|axum::Json(b)| b)
        .map_err(|e| Box::new(refuse(e.status(), "invalid_argument", e.body_text())))
}

async fn submit_notebook(
    State(s): State<AppState>,
    _: Authorized,
    headers: HeaderMap,
    body: Result<axum::Json<NotebookBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match body_of(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or(body.idempotency_key);
    let submission = Submission {
        user_id: body.user_id,
        plan: body.plan,
        code: body.notebook.map(|n| n.to_string()).unwrap_or_default(),
        stdin: body.stdin,
        timeout_ms: body.timeout_ms,
        idempotency_key: key,
        notebook: Some(NotebookSpec {
            document: body.document,
            mode: body.mode,
            parameters: body.parameters,
        }),
        webhook: body.webhook,
        fired_by: None,
        ..Submission::default()
    };
    match s.jobs.submit(submission).await {
        Ok(run) => (StatusCode::ACCEPTED, axum::Json(run)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn answer<T: serde::Serialize>(r: Result<T, JobError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn create_schedule(
    State(s): State<AppState>,
    _: Authorized,
    body: Result<axum::Json<Schedule>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body_of(body) {
        Ok(schedule) => match s.jobs.create_schedule(schedule).await {
            Ok(created) => (StatusCode::CREATED, axum::Json(created)).into_response(),
            Err(e) => e.into_response(),
        },
        Err(r) => *r,
    }
}

async fn list_schedules(State(s): State<AppState>, _: Authorized, ForUser(q): ForUser) -> Response {
    answer(
        s.jobs
            .list_schedules(&q.user_id)
            .await
            .map(|all| json!({ "schedules": all })),
    )
}

async fn get_schedule(
    State(s): State<AppState>,
    _: Authorized,
    Path(id): Path<String>,
    ForUser(q): ForUser,
) -> Response {
    answer(
        s.jobs
            .on_schedule(&q.user_id, &id, ScheduleAction::Get)
            .await,
    )
}

async fn delete_schedule(
    State(s): State<AppState>,
    _: Authorized,
    Path(id): Path<String>,
    ForUser(q): ForUser,
) -> Response {
    answer(
        s.jobs
            .on_schedule(&q.user_id, &id, ScheduleAction::Delete)
            .await,
    )
}

/// `POST /v1/schedules/{id}/pause` and `.../resume`.
async fn schedule_action(
    State(s): State<AppState>,
    _: Authorized,
    Path((id, action)): Path<(String, String)>,
    ForUser(q): ForUser,
) -> Response {
    let action = match action.as_str() {
        "pause" => ScheduleAction::Pause,
        "resume" => ScheduleAction::Resume,
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such schedule action",
            );
        }
    };
    answer(s.jobs.on_schedule(&q.user_id, &id, action).await)
}

#[derive(Deserialize)]
struct UserQuery {
    user_id: String,
    #[serde(default)]
    limit: usize,
}

async fn list(State(s): State<AppState>, _: Authorized, ForUser(q): ForUser) -> Response {
    let limit = if q.limit == 0 { 50 } else { q.limit };
    match s.jobs.list(&q.user_id, limit).await {
        Ok(runs) => axum::Json(json!({ "runs": runs })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn get_run(
    State(s): State<AppState>,
    _: Authorized,
    Path(id): Path<String>,
    ForUser(q): ForUser,
) -> Response {
    match s.jobs.get(&q.user_id, &id).await {
        Ok(run) => axum::Json(run).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel(
    State(s): State<AppState>,
    _: Authorized,
    Path(id): Path<String>,
    ForUser(q): ForUser,
) -> Response {
    match s.jobs.cancel(&q.user_id, &id).await {
        Ok(run) => axum::Json(run).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Server-sent events: `state` (the run), `output` (one nbformat output), `finished` (the run).
async fn events(
    State(s): State<AppState>,
    _: Authorized,
    Path(id): Path<String>,
    ForUser(q): ForUser,
) -> Response {
    let rx = match s.jobs.watch(&q.user_id, &id).await {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let sse = match &event {
            RunEvent::State(run) => Event::default().event("state").json_data(run),
            RunEvent::Output(o) => Event::default().event("output").json_data(o),
            RunEvent::Finished(run) => Event::default().event("finished").json_data(run),
        };
        let sse = sse.unwrap_or_else(|_| Event::default().event("error"));
        Some((Ok::<_, Infallible>(sse), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn audit(State(s): State<AppState>, _: Authorized, ForUser(q): ForUser) -> Response {
    let limit = if q.limit == 0 { 100 } else { q.limit };
    match s.jobs.audit_of(&q.user_id, limit).await {
        Ok(entries) => axum::Json(json!({ "entries": entries })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}
