//! Kernel checkpoints on behalf of pods (docs/checkpoints.md), beside their documents: a pod's
//! Middleman reads and writes its document's manifest and objects here, authorized exactly as
//! for its document (pod credential + binding token); Watchman holds the store ([`Backend`]: a
//! directory, or S3 object storage) and touches that document's checkpoint only.
//!
//! - Objects are named by their SHA-256. Through Watchman (a directory store) they are checked
//!   against their names on the way in; with object storage, pods move them themselves with
//!   pre-signed URLs for their own document's objects (`POST .../urls`), and Middleman checks
//!   every object it reads against its name.
//! - A manifest must be bound to the pod's document and name only objects that are stored,
//!   within the size caps; once it is written, the objects it no longer names are removed, and
//!   the index in Watchman's store (`Allocation.resumes`, expiry per plan) records it.
//! - Writes from a pod bound to a document before it was deleted are refused (410).

mod backend;

pub use self::backend::{Backend, BackendError, Transfer};

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use doc_store::checkpoints::{CheckpointError, POD_CHECKPOINT_PATH, is_sha256};
use futures_util::TryStreamExt as _;

use crate::documents::PodDocuments;
use crate::store::Store;

/// Most objects one `urls` request may name.
const MAX_URLS: usize = 4096;

/// The pod checkpoint service.
#[derive(Debug)]
pub struct PodCheckpoints {
    documents: Arc<PodDocuments>,
    backend: Backend,
    index: Store,
    max_object_bytes: u64,
    max_checkpoint_bytes: u64,
}

impl PodCheckpoints {
    pub fn new(
        documents: Arc<PodDocuments>,
        backend: Backend,
        index: Store,
        max_object_bytes: u64,
        max_checkpoint_bytes: u64,
    ) -> Self {
        Self {
            documents,
            backend,
            index,
            max_object_bytes,
            max_checkpoint_bytes,
        }
    }

    /// Whether `document` has a checkpoint its next pod will resume from (the index in
    /// Watchman's store; a directory's is also looked at, as the memory store forgets).
    pub async fn has_checkpoint(&self, document: &str) -> bool {
        match self.index.has_checkpoint(document).await {
            Ok(true) => true,
            Ok(false) => matches!(&self.backend, Backend::Dir(d) if d.has_checkpoint(document)),
            Err(error) => {
                tracing::warn!(%error, "could not look up a checkpoint");
                false
            }
        }
    }

    /// Deletes `document`'s checkpoint (the document is deleted, or its checkpoint expired).
    pub async fn delete(&self, document: &str) -> Result<(), BackendError> {
        self.backend.delete(document).await?;
        if let Err(error) = self.index.forget_checkpoint(document).await {
            tracing::warn!(%error, "a deleted checkpoint is still in the index");
        }
        Ok(())
    }
}

fn refused(status: StatusCode, code: &'static str, message: &str) -> Response {
    metrics::counter!("watchman_pod_checkpoint_refusals_total", "reason" => code).increment(1);
    (
        status,
        axum::Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}

fn store_error(error: &BackendError) -> Response {
    match error {
        BackendError::Dir(CheckpointError::Corrupt { .. } | CheckpointError::BadName(_)) => {
            refused(StatusCode::BAD_REQUEST, "bad_object", &error.to_string())
        }
        BackendError::Dir(CheckpointError::TooLarge { .. }) => refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &error.to_string(),
        ),
        BackendError::Dir(CheckpointError::Missing(_)) => StatusCode::NOT_FOUND.into_response(),
        _ => {
            tracing::warn!(%error, "checkpoint store failed");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &error.to_string(),
            )
        }
    }
}

/// `GET`/`PUT` of the calling pod's checkpoint manifest and objects, and `POST .../urls`.
pub(crate) fn routes(checkpoints: Arc<PodCheckpoints>) -> Router {
    // Manifests are small; objects are streamed and capped by `max_object_bytes` as they come.
    Router::new()
        .route(
            &format!("{POD_CHECKPOINT_PATH}/manifest"),
            get(load_manifest)
                .put(save_manifest)
                .layer(DefaultBodyLimit::max(16 * 1024 * 1024)),
        )
        .route(
            &format!("{POD_CHECKPOINT_PATH}/urls"),
            post(urls).layer(DefaultBodyLimit::max(1024 * 1024)),
        )
        .route(
            &format!("{POD_CHECKPOINT_PATH}/objects/{{sha}}"),
            get(load_object)
                .put(save_object)
                .layer(DefaultBodyLimit::disable()),
        )
        .with_state(checkpoints)
}

async fn load_manifest(State(c): State<Arc<PodCheckpoints>>, headers: HeaderMap) -> Response {
    let (_, document) = match c.documents.authorize(&headers) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match c.backend.manifest(&document).await {
        Ok(Some(bytes)) => bytes.into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => store_error(&e),
    }
}

async fn save_manifest(
    State(c): State<Arc<PodCheckpoints>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (pod, document) = match c.documents.authorize_write(&headers).await {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "bad_manifest",
            "the manifest is not JSON",
        );
    };
    if manifest["document"].as_str() != Some(document.as_str()) {
        return refused(
            StatusCode::FORBIDDEN,
            "bad_binding",
            "the manifest names another document than this pod's",
        );
    }
    // The kernel's names' objects and the workspace files'.
    let named: BTreeSet<&str> = ["names", "files"]
        .iter()
        .filter_map(|key| manifest[*key].as_object())
        .flat_map(|m| m.values())
        .filter_map(|v| v["sha256"].as_str())
        .collect();
    let stored = match c.backend.objects(&document).await {
        Ok(stored) => stored,
        Err(e) => return store_error(&e),
    };
    let mut total: u64 = 0;
    for sha in &named {
        let Some(size) = stored.get(*sha).filter(|_| is_sha256(sha)) else {
            return refused(
                StatusCode::CONFLICT,
                "missing_object",
                &format!("the manifest names {sha}, which is not stored"),
            );
        };
        total += size;
        if *size > c.max_object_bytes || total > c.max_checkpoint_bytes {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!(
                    "the checkpoint is over its caps ({} bytes an object, {} in all)",
                    c.max_object_bytes, c.max_checkpoint_bytes
                ),
            );
        }
    }
    if let Err(e) = c.backend.put_manifest(&document, &body).await {
        return store_error(&e);
    }
    if let Err(error) = c.backend.prune(&document, &named).await {
        tracing::debug!(%error, "could not remove old checkpoint objects");
    }
    let plan = match c.index.pod(&pod).await {
        Ok(Some(p)) => p.plan,
        _ => String::new(),
    };
    if let Err(error) = c
        .index
        .note_checkpoint(&document, &plan, crate::model::now_ms())
        .await
    {
        tracing::warn!(%error, "a checkpoint is not in the index");
    }
    metrics::counter!("watchman_pod_checkpoint_requests_total", "op" => "save_manifest")
        .increment(1);
    tracing::debug!(%pod, %document, objects = named.len(), bytes = total, "checkpoint manifest saved");
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, serde::Deserialize)]
struct UrlsRequest {
    method: Transfer,
    objects: Vec<String>,
}

/// Pre-signed URLs for the pod's own document's objects; 404 when the store is a directory
/// (objects then go through Watchman).
async fn urls(State(c): State<Arc<PodCheckpoints>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<UrlsRequest>(&body) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected {\"method\": \"GET\"|\"PUT\", \"objects\": [sha256, ...]}",
        );
    };
    let authorized = match request.method {
        Transfer::Get => c.documents.authorize(&headers),
        Transfer::Put => c.documents.authorize_write(&headers).await,
    };
    let (_, document) = match authorized {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    if request.objects.len() > MAX_URLS || !request.objects.iter().all(|s| is_sha256(s)) {
        return refused(
            StatusCode::BAD_REQUEST,
            "bad_object",
            &format!("at most {MAX_URLS} objects, each named by its SHA-256 in lowercase hex"),
        );
    }
    match c
        .backend
        .presign(&document, request.method, &request.objects)
        .await
    {
        Ok(Some((urls, ttl))) => {
            metrics::counter!("watchman_pod_checkpoint_urls_total").increment(urls.len() as u64);
            axum::Json(serde_json::json!({
                "urls": urls,
                "expires_in_secs": ttl.as_secs(),
            }))
            .into_response()
        }
        Ok(None) => refused(
            StatusCode::NOT_FOUND,
            "not_presigned",
            "this store has no pre-signed URLs: objects go through Watchman",
        ),
        Err(e) => store_error(&e),
    }
}

fn through_watchman(c: &PodCheckpoints) -> Option<&doc_store::checkpoints::CheckpointDir> {
    match &c.backend {
        Backend::Dir(dir) => Some(dir),
        Backend::Object(_) => None,
    }
}

fn use_urls() -> Response {
    refused(
        StatusCode::CONFLICT,
        "use_urls",
        "objects of this store are moved with pre-signed URLs (POST .../urls)",
    )
}

async fn load_object(
    State(c): State<Arc<PodCheckpoints>>,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (_, document) = match c.documents.authorize(&headers) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let Some(dir) = through_watchman(&c) else {
        return use_urls();
    };
    match dir.open_object(&document, &sha).await {
        Ok((file, size)) => {
            metrics::counter!("watchman_pod_checkpoint_requests_total", "op" => "load_object")
                .increment(1);
            metrics::counter!("watchman_pod_checkpoint_bytes_total", "op" => "load")
                .increment(size);
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
            Body::from_stream(stream).into_response()
        }
        Err(e) => store_error(&e.into()),
    }
}

async fn save_object(
    State(c): State<Arc<PodCheckpoints>>,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (_, document) = match c.documents.authorize_write(&headers).await {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let Some(dir) = through_watchman(&c) else {
        return use_urls();
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    match dir
        .put_object(&document, &sha, reader, c.max_object_bytes)
        .await
    {
        Ok(()) => {
            metrics::counter!("watchman_pod_checkpoint_requests_total", "op" => "save_object")
                .increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(&e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use session_token::{Claims, Role, SigningKey};
    use tower::ServiceExt as _;

    use crate::jobs::model::sha256_hex as sha;

    struct Pod {
        credential: String,
        binding: String,
    }

    fn pod(key: &SigningKey, pod: &str, doc: &str) -> Pod {
        let claims = Claims::new("t", "ada", "Ada", doc, pod, Role::Editor, 600);
        Pod {
            credential: key.pod_credential(pod),
            binding: key.mint(&claims).unwrap(),
        }
    }

    async fn send(
        app: &Router,
        who: &Pod,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{POD_CHECKPOINT_PATH}/{path}"))
            .header("authorization", format!("Bearer {}", who.credential))
            .header(doc_store::BINDING_HEADER, &who.binding)
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    #[tokio::test]
    async fn a_pod_reaches_its_own_documents_checkpoint_and_nothing_it_names_is_unchecked() {
        let dir = testkit::TempDir::new("pod-ckpt");
        let key = SigningKey::generate();
        let docs = doc_store::DocStore::open(&dir.0.join("docs").display().to_string(), "", None)
            .await
            .unwrap();
        let index = Store::Memory(crate::store::MemoryStore::default());
        let documents =
            Arc::new(PodDocuments::new(key.clone(), docs, 1 << 20).with_deletions(index.clone()));
        let backend = Backend::Dir(doc_store::checkpoints::CheckpointDir::new(
            dir.0.join("ckpt"),
        ));
        let checkpoints = Arc::new(PodCheckpoints::new(
            documents,
            backend,
            index.clone(),
            1 << 20,
            1 << 30,
        ));
        let app = routes(checkpoints.clone());
        let a = pod(&key, "pod-a", "d1");
        let b = pod(&key, "pod-b", "d2");
        let object = b"cloudpickle bytes".to_vec();
        let id = sha(&object);
        // Bytes that do not hash to their name are refused; the right ones are stored.
        assert_eq!(
            send(&app, &a, "PUT", &format!("objects/{id}"), b"other".to_vec())
                .await
                .0,
            400
        );
        assert_eq!(
            send(&app, &a, "PUT", "objects/..%2Fx", object.clone())
                .await
                .0,
            400
        );
        assert_eq!(
            send(&app, &a, "PUT", &format!("objects/{id}"), object.clone())
                .await
                .0,
            204
        );
        // A manifest must be the pod's document's and name only stored objects.
        let manifest = |doc: &str, sha: &str| {
            serde_json::to_vec(&serde_json::json!({
                "version": 1, "document": doc,
                "names": {"x": {"kind": "pickle", "sha256": sha, "bytes": 17}},
                "recompute": {}
            }))
            .unwrap()
        };
        assert_eq!(
            send(&app, &a, "PUT", "manifest", manifest("d2", &id))
                .await
                .0,
            403
        );
        assert_eq!(
            send(&app, &a, "PUT", "manifest", manifest("d1", &sha(b"none")))
                .await
                .0,
            409
        );
        assert_eq!(
            send(&app, &a, "PUT", "manifest", manifest("d1", &id))
                .await
                .0,
            204
        );
        assert_eq!(send(&app, &a, "GET", "manifest", Vec::new()).await.0, 200);
        assert!(checkpoints.has_checkpoint("d1").await);
        assert!(!checkpoints.has_checkpoint("d2").await);
        // A directory store has no pre-signed URLs.
        let ask =
            serde_json::to_vec(&serde_json::json!({"method": "GET", "objects": [id]})).unwrap();
        assert_eq!(send(&app, &a, "POST", "urls", ask).await.0, 404);
        assert_eq!(
            send(&app, &a, "GET", &format!("objects/{id}"), Vec::new()).await,
            (200, object.clone())
        );
        // Another document's pod sees none of it, even knowing the object's name.
        assert_eq!(send(&app, &b, "GET", "manifest", Vec::new()).await.0, 404);
        assert_eq!(
            send(&app, &b, "GET", &format!("objects/{id}"), Vec::new())
                .await
                .0,
            404
        );
        // A credential for one pod with the binding of another is refused.
        let forged = Pod {
            credential: a.credential.clone(),
            binding: b.binding.clone(),
        };
        assert_eq!(
            send(&app, &forged, "GET", "manifest", Vec::new()).await.0,
            403
        );
        let anonymous = Pod {
            credential: String::new(),
            binding: String::new(),
        };
        assert_eq!(
            send(&app, &anonymous, "GET", "manifest", Vec::new())
                .await
                .0,
            401
        );
        // Objects past the cap are refused as they stream in.
        let big = vec![7u8; (1 << 20) + 1];
        assert_eq!(
            send(&app, &a, "PUT", &format!("objects/{}", sha(&big)), big)
                .await
                .0,
            413
        );
        // Once the document is deleted, the pod bound to it before may read but not write.
        index
            .note_deleted("d1", crate::model::now_ms() / 1000 + 1)
            .await
            .unwrap();
        assert_eq!(
            send(&app, &a, "PUT", "manifest", manifest("d1", &id))
                .await
                .0,
            410
        );
        assert_eq!(
            send(&app, &a, "PUT", &format!("objects/{id}"), object.clone())
                .await
                .0,
            410
        );
        // Deleting the checkpoint removes it from the store and the index.
        checkpoints.delete("d1").await.unwrap();
        assert!(!checkpoints.has_checkpoint("d1").await);
        assert_eq!(send(&app, &a, "GET", "manifest", Vec::new()).await.0, 404);
    }
}
