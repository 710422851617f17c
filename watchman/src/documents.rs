//! Documents on behalf of pods. A pod's Middleman holds no store-wide credential: it reads and
//! saves its document here, with its pod credential (an HMAC Watchman derives from its signing
//! key, given to the pod at creation) and a session token minted for that pod (which names the
//! one document the pod serves). Watchman holds the store (a directory or Redis) and touches
//! that document only.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use doc_store::{BINDING_HEADER, DocStore, POD_DOCUMENT_PATH};
use session_token::{SigningKey, VerifyingKey};

/// The pod document service.
#[derive(Debug)]
pub struct PodDocuments {
    signing: SigningKey,
    verifying: VerifyingKey,
    store: DocStore,
    max_bytes: usize,
}

/// Why a pod's request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a pod credential is required (Authorization: Bearer)")]
    NoCredential,
    #[error("the pod credential is not genuine")]
    BadCredential,
    #[error("a session token for this pod is required ({BINDING_HEADER})")]
    NoBinding,
    #[error("the session token does not bind this pod: {0}")]
    BadBinding(session_token::TokenError),
    #[error("the document store is unavailable: {0}")]
    Store(doc_store::StoreError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Refusal::NoCredential | Refusal::BadCredential => {
                (StatusCode::UNAUTHORIZED, "bad_credential")
            }
            Refusal::NoBinding | Refusal::BadBinding(_) => (StatusCode::FORBIDDEN, "bad_binding"),
            Refusal::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        };
        metrics::counter!("watchman_pod_document_refusals_total", "reason" => code).increment(1);
        (
            status,
            axum::Json(serde_json::json!({ "error": code, "message": self.to_string() })),
        )
            .into_response()
    }
}

impl PodDocuments {
    pub fn new(signing: SigningKey, store: DocStore, max_bytes: usize) -> Self {
        Self {
            verifying: signing.verifying_key(),
            signing,
            store,
            max_bytes,
        }
    }

    /// The document the request may touch: its pod from the credential, its document from the
    /// binding token.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(String, String), Refusal> {
        let credential = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Refusal::NoCredential)?;
        let pod = self
            .signing
            .check_pod_credential(credential)
            .ok_or(Refusal::BadCredential)?;
        let binding = headers
            .get(BINDING_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(Refusal::NoBinding)?;
        let claims = self
            .verifying
            .verify_binding(binding, &pod)
            .map_err(Refusal::BadBinding)?;
        Ok((pod, claims.doc))
    }
}

/// `GET` and `PUT` of the calling pod's document.
pub(crate) fn routes(documents: Arc<PodDocuments>) -> Router {
    let limit = documents.max_bytes;
    Router::new()
        .route(POD_DOCUMENT_PATH, get(load).put(save))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(documents)
}

async fn load(State(d): State<Arc<PodDocuments>>, headers: HeaderMap) -> Response {
    let (pod, document) = match d.authorize(&headers) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match d.store.load(&document).await {
        Ok(Some(bytes)) => {
            metrics::counter!("watchman_pod_document_requests_total", "op" => "load").increment(1);
            tracing::debug!(%pod, %document, bytes = bytes.len(), "document loaded for its pod");
            bytes.into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => Refusal::Store(e).into_response(),
    }
}

async fn save(State(d): State<Arc<PodDocuments>>, headers: HeaderMap, body: Bytes) -> Response {
    let (pod, document) = match d.authorize(&headers) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match d.store.save(&document, body.to_vec()).await {
        Ok(()) => {
            metrics::counter!("watchman_pod_document_requests_total", "op" => "save").increment(1);
            tracing::debug!(%pod, %document, bytes = body.len(), "document saved for its pod");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => Refusal::Store(e).into_response(),
    }
}
