//! Kernel checkpoints on behalf of pods (docs/checkpoints.md), beside their documents: a pod's
//! Middleman reads and writes its document's manifest and objects here, authorized exactly as
//! for its document (pod credential + binding token); Watchman holds the store and touches that
//! document's checkpoint only. Objects are checked against their names (SHA-256) on the way
//! in; a manifest must be bound to the pod's document and name only objects that are stored,
//! and once it is written the objects it no longer names are removed.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use doc_store::checkpoints::{CheckpointDir, CheckpointError, POD_CHECKPOINT_PATH, is_sha256};
use futures_util::TryStreamExt as _;

use crate::documents::PodDocuments;

/// The pod checkpoint service.
#[derive(Debug)]
pub struct PodCheckpoints {
    documents: Arc<PodDocuments>,
    store: CheckpointDir,
    max_object_bytes: u64,
}

impl PodCheckpoints {
    /// Whether `document` has a checkpoint its next pod will resume from.
    pub fn has_checkpoint(&self, document: &str) -> bool {
        self.store.has_checkpoint(document)
    }

    pub fn new(documents: Arc<PodDocuments>, store: CheckpointDir, max_object_bytes: u64) -> Self {
        Self {
            documents,
            store,
            max_object_bytes,
        }
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

fn store_error(error: &CheckpointError) -> Response {
    match error {
        CheckpointError::Corrupt { .. } | CheckpointError::BadName(_) => {
            refused(StatusCode::BAD_REQUEST, "bad_object", &error.to_string())
        }
        CheckpointError::TooLarge { .. } => refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &error.to_string(),
        ),
        CheckpointError::Missing(_) => StatusCode::NOT_FOUND.into_response(),
        _ => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &error.to_string(),
        ),
    }
}

/// `GET`/`PUT` of the calling pod's checkpoint manifest and objects.
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
    match c.store.manifest(&document).await {
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
    let (pod, document) = match c.documents.authorize(&headers) {
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
    let named: BTreeSet<&str> = manifest["names"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|v| v["sha256"].as_str())
        .collect();
    for sha in &named {
        if !is_sha256(sha) || c.store.open_object(&document, sha).await.is_err() {
            return refused(
                StatusCode::CONFLICT,
                "missing_object",
                &format!("the manifest names {sha}, which is not stored"),
            );
        }
    }
    if let Err(e) = c.store.put_manifest(&document, &body).await {
        return store_error(&e);
    }
    if let Err(error) = c.store.prune(&document, &named).await {
        tracing::debug!(%error, "could not remove old checkpoint objects");
    }
    metrics::counter!("watchman_pod_checkpoint_requests_total", "op" => "save_manifest")
        .increment(1);
    tracing::debug!(%pod, %document, objects = named.len(), "checkpoint manifest saved");
    StatusCode::NO_CONTENT.into_response()
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
    match c.store.open_object(&document, &sha).await {
        Ok((file, size)) => {
            metrics::counter!("watchman_pod_checkpoint_requests_total", "op" => "load_object")
                .increment(1);
            metrics::counter!("watchman_pod_checkpoint_bytes_total", "op" => "load")
                .increment(size);
            let stream = tokio_util::io::ReaderStream::new(file);
            Body::from_stream(stream).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn save_object(
    State(c): State<Arc<PodCheckpoints>>,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (_, document) = match c.documents.authorize(&headers) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    match c
        .store
        .put_object(&document, &sha, reader, c.max_object_bytes)
        .await
    {
        Ok(()) => {
            metrics::counter!("watchman_pod_checkpoint_requests_total", "op" => "save_object")
                .increment(1);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use session_token::{Claims, Role, SigningKey};
    use tower::ServiceExt as _;

    fn sha(bytes: &[u8]) -> String {
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

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
        let documents = Arc::new(PodDocuments::new(key.clone(), docs, 1 << 20));
        let store = CheckpointDir::new(dir.0.join("ckpt"));
        let app = routes(Arc::new(PodCheckpoints::new(documents, store, 1 << 20)));
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
        assert_eq!(
            send(&app, &a, "GET", &format!("objects/{id}"), Vec::new()).await,
            (200, object)
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
    }
}
