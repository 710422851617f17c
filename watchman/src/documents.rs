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
    /// Watchman's store, for deletions (`note_deleted`): pods bound to a document before it
    /// was deleted may no longer write it.
    deletions: Option<crate::store::Store>,
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
    #[error("the document was deleted")]
    Deleted,
    #[error("Watchman's store is unavailable: {0}")]
    Index(crate::store::StoreError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Refusal::NoCredential | Refusal::BadCredential => {
                (StatusCode::UNAUTHORIZED, "bad_credential")
            }
            Refusal::NoBinding | Refusal::BadBinding(_) => (StatusCode::FORBIDDEN, "bad_binding"),
            Refusal::Store(_) | Refusal::Index(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            Refusal::Deleted => (StatusCode::GONE, "deleted"),
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
            deletions: None,
        }
    }

    /// Refuses writes from pods bound to a document before it was deleted.
    pub fn with_deletions(mut self, store: crate::store::Store) -> Self {
        self.deletions = Some(store);
        self
    }

    /// The document store (Watchman deletes documents from it).
    pub fn store(&self) -> &DocStore {
        &self.store
    }

    /// As [`PodDocuments::authorize`], for a write: refused (410) when the document was
    /// deleted after this pod was bound to it, so that a pod ending at that moment cannot
    /// bring back what was deleted.
    pub(crate) async fn authorize_write(
        &self,
        headers: &HeaderMap,
    ) -> Result<(String, String), Refusal> {
        let (pod, claims) = self.authorize_claims(headers)?;
        if let Some(deletions) = &self.deletions
            && let Some(at) = deletions
                .deleted_at(&claims.doc)
                .await
                .map_err(Refusal::Index)?
        {
            // The pod whose allocation the deletion ended, and any pod bound before it (one
            // ending for another reason at that moment). Pods bound after it (the second is
            // the token's grain) write as usual.
            let ended_by_it = deletions
                .ended_pod(&pod)
                .await
                .map_err(Refusal::Index)?
                .is_some_and(|e| e.reason == crate::model::EndReason::Deleted);
            if ended_by_it || claims.iat < at {
                return Err(Refusal::Deleted);
            }
        }
        Ok((pod, claims.doc))
    }

    /// The document the request may touch: its pod from the credential, its document from the
    /// binding token.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(String, String), Refusal> {
        self.authorize_claims(headers)
            .map(|(pod, claims)| (pod, claims.doc))
    }

    fn authorize_claims(
        &self,
        headers: &HeaderMap,
    ) -> Result<(String, session_token::Claims), Refusal> {
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
        Ok((pod, claims))
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
    let (pod, document) = match d.authorize_write(&headers).await {
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
