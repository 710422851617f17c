//! Watchman's HTTP side: health, metrics, and (development only) the landing page that creates or
//! opens a document and lands in its notebook (Middleman's web client).

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::grpc::PublicUrl;
use crate::service::Watchman;

#[derive(Clone)]
struct AppState {
    watchman: Watchman,
    metrics: PrometheusHandle,
    public: PublicUrl,
}

pub(crate) fn router(
    watchman: Watchman,
    metrics: PrometheusHandle,
    dev_page: bool,
    public: PublicUrl,
) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics));
    if dev_page {
        router = router.route("/", get(page)).route("/open", post(open));
    }
    router.with_state(AppState {
        watchman,
        metrics,
        public,
    })
}

/// Ready when the store answers (a replica that cannot reach Redis should get no traffic).
async fn readyz(State(s): State<AppState>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(2), s.watchman.store().ping()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {error}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store did not answer in 2 s",
        )
            .into_response(),
    }
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn page(State(s): State<AppState>) -> Response {
    let pools = s.watchman.pool_counts().await.unwrap_or_default();
    let options: String = s
        .watchman
        .plans()
        .keys()
        .map(|p| {
            let c = pools.get(p).cloned().unwrap_or_default();
            format!(
                "<option value=\"{0}\">{0} ({1} warm, {2} starting, {3} in use)</option>",
                escape(p),
                c.warm,
                c.starting,
                c.allocated
            )
        })
        .collect();
    let suggested = format!("doc-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Watchman</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:560px;margin:4rem auto;color:#1d2330}}
input,select,button{{font:inherit;padding:.4rem .6rem;margin:.3rem 0;width:100%;box-sizing:border-box}}
button{{background:#1d2330;color:#fff;border:0;border-radius:4px;cursor:pointer}}</style></head>
<body><h1>Open a document</h1>
<p>Watchman hands the document a pre-booted kernel from the warm pool, then you land in the
notebook. Opening the same document again returns the same kernel; open it in a second window
under another name to edit together.</p>
<form method="post" action="/open">
<label>Document<input name="document" value="{suggested}" required pattern="[A-Za-z0-9._:@\-]+"></label>
<label>Plan<select name="plan">{options}</select></label>
<label>Your name<input name="name" value="Developer"></label>
<label>Role<select name="role"><option value="editor">editor</option><option value="viewer">viewer (read-only)</option></select></label>
<button type="submit">Open</button></form></body></html>"#
    );
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        )],
        Html(html),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct OpenForm {
    document: String,
    plan: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
}

async fn open(State(s): State<AppState>, Form(form): Form<OpenForm>) -> Response {
    // One user per name, so two windows under two names are two collaborators.
    let user: String = std::iter::once("local-".to_owned())
        .chain(
            form.name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .map(|c| c.to_ascii_lowercase().to_string()),
        )
        .collect();
    let role = if form.role == "viewer" {
        session_token::Role::Viewer
    } else {
        session_token::Role::Editor
    };
    let request = crate::service::AllocationRequest {
        document: &form.document,
        plan: &form.plan,
        kernel: "",
        user: &user,
        user_name: &form.name,
        role,
        wait: None,
    };
    match s.watchman.allocate(&request).await {
        // Not a redirect: CSP `form-action` also governs where a form's redirect may go, and
        // the pod is another origin. A page that navigates on its own is not a form action.
        Ok(g) => {
            let page = s.public.page(&g.allocation.pod, &g.allocation.endpoint);
            let url = escape(&format!("{page}#token={}", g.token));
            let html = format!(
                "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={url}\"><title>Opening</title><p>Opening <a href=\"{url}\">{}</a>…</p>",
                escape(&g.allocation.document)
            );
            (
                [
                    (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
                    (header::REFERRER_POLICY, "no-referrer"),
                ],
                Html(html),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(format!(
                "<p>Could not open the document: {}</p><p><a href=\"/\">Back</a></p>",
                escape(&e.to_string())
            )),
        )
            .into_response(),
    }
}
