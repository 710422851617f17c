//! Where documents' snapshots are kept, as opaque bytes per document id: a directory (one file
//! per document, replaced atomically), Redis (`<prefix>notebook:<document>`), or Watchman.
//!
//! The first two are store-wide: whoever holds the directory or the Redis password reaches
//! every document. Pods therefore use the third: Middleman sends its snapshot to Watchman with
//! its pod credential and a session token minted for its pod, and Watchman, which holds the
//! store-wide access, reads or writes that one document only. A kernel that took over its
//! Middleman reaches nothing but its own document.

pub mod checkpoints;
mod presigned;

pub use presigned::Transfer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The header carrying the session token that proves which document a pod serves.
pub const BINDING_HEADER: &str = "x-nbplat-binding";
/// Watchman's path for a pod's document.
pub const POD_DOCUMENT_PATH: &str = "/v1/pod/document";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A document file could not be read or written.
    #[error("document file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Watchman could not be reached or refused.
    #[error("watchman: {0}")]
    Watchman(String),
    /// Watchman cannot be asked yet: no session token has shown which document this pod
    /// serves.
    #[error("no client has connected yet, so the document this pod serves is not proven")]
    Unbound,
}

/// How long one request to Watchman may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read back from Watchman (a snapshot, or one checkpoint object).
const MAX_REMOTE_BYTES: usize = 2 * 1024 * 1024 * 1024;

/// A document store.
#[derive(Clone)]
pub enum DocStore {
    /// One file per document in a directory.
    File(PathBuf),
    /// Redis, under `<prefix>notebook:<document>`.
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
    /// Watchman, on behalf of one pod.
    Watchman(Box<Remote>),
}

impl std::fmt::Debug for DocStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocStore::File(p) => write!(f, "File({})", p.display()),
            DocStore::Redis { prefix, .. } => write!(f, "Redis({prefix})"),
            DocStore::Watchman(r) => write!(f, "Watchman({})", r.base),
        }
    }
}

/// Watchman as a store, for one pod.
#[derive(Clone)]
pub struct Remote {
    base: String,
    credential_file: PathBuf,
    binding: Arc<Mutex<Option<String>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Checkpoint objects' pre-signed URLs and their client.
    urls: presigned::Urls,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base", &self.base)
            .field("credential_file", &self.credential_file)
            .finish_non_exhaustive()
    }
}

/// The file name of a document in a directory store. Document ids are restricted upstream;
/// encoded anyway so that no id can name a path.
pub fn file_name(document: &str) -> String {
    let safe: String = document
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{:016x}.json", fnv(document))
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl DocStore {
    /// Opens the store named by `spec`: a `redis://` or `rediss://` URL (keys under `prefix`),
    /// a directory (a path, or a `file://` URL), or `watchman+http://host:port` with the pod's
    /// credential in `credential_file`.
    pub async fn open(
        spec: &str,
        prefix: &str,
        credential_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            let conn = redis::aio::ConnectionManager::new(redis::Client::open(spec)?).await?;
            return Ok(Self::Redis {
                conn,
                prefix: prefix.to_owned(),
            });
        }
        if let Some(base) = spec.strip_prefix("watchman+") {
            let credential_file = credential_file
                .ok_or_else(|| StoreError::Watchman("a pod credential file is required".into()))?;
            return Ok(Self::Watchman(Box::new(Remote {
                base: base.trim_end_matches('/').to_owned(),
                credential_file: credential_file.to_owned(),
                binding: Arc::new(Mutex::new(None)),
                client: Client::builder(TokioExecutor::new()).build_http(),
                urls: presigned::Urls::new(),
            })));
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        Ok(Self::File(PathBuf::from(dir)))
    }

    /// Records the session token that proves which document this pod serves (Watchman only;
    /// the first one is kept: every token for this pod names the same document).
    pub fn bind(&self, token: &str) {
        if let DocStore::Watchman(remote) = self
            && let Ok(mut binding) = remote.binding.lock()
            && binding.is_none()
        {
            *binding = Some(token.to_owned());
        }
    }

    /// Whether saves and loads can go ahead (a Watchman store needs a binding first).
    pub fn is_bound(&self) -> bool {
        match self {
            DocStore::Watchman(remote) => remote.binding.lock().is_ok_and(|b| b.is_some()),
            _ => true,
        }
    }

    /// Saves `bytes` as `document`'s snapshot.
    pub async fn save(&self, document: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            DocStore::File(dir) => {
                let path = dir.join(file_name(document));
                let tmp = path.with_extension("json.tmp");
                let err = |source| StoreError::File {
                    path: path.clone(),
                    source,
                };
                tokio::fs::create_dir_all(dir).await.map_err(err)?;
                tokio::fs::write(&tmp, &bytes).await.map_err(err)?;
                // Replace atomically: a crash mid-write leaves the previous version intact.
                tokio::fs::rename(&tmp, &path).await.map_err(err)?;
            }
            DocStore::Redis { conn, prefix } => {
                let mut c = conn.clone();
                redis::cmd("SET")
                    .arg(format!("{prefix}notebook:{document}"))
                    .arg(bytes)
                    .query_async::<()>(&mut c)
                    .await?;
            }
            DocStore::Watchman(remote) => {
                remote
                    .call(hyper::Method::PUT, POD_DOCUMENT_PATH, Bytes::from(bytes))
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes `document`'s snapshot; true when there was one. A pod cannot delete its
    /// document (only the platform does, through Watchman's `DeleteDocument`).
    pub async fn delete(&self, document: &str) -> Result<bool, StoreError> {
        match self {
            DocStore::File(dir) => {
                let path = dir.join(file_name(document));
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(source) => Err(StoreError::File { path, source }),
                }
            }
            DocStore::Redis { conn, prefix } => {
                let mut c = conn.clone();
                let n: u64 = redis::cmd("DEL")
                    .arg(format!("{prefix}notebook:{document}"))
                    .query_async(&mut c)
                    .await?;
                Ok(n > 0)
            }
            DocStore::Watchman(_) => Err(StoreError::Watchman(
                "a pod cannot delete its document".into(),
            )),
        }
    }

    /// Loads `document`'s snapshot, if it was ever saved.
    pub async fn load(&self, document: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            DocStore::File(dir) => {
                let path = dir.join(file_name(document));
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::File { path, source }),
                }
            }
            DocStore::Redis { conn, prefix } => {
                let mut c = conn.clone();
                Ok(redis::cmd("GET")
                    .arg(format!("{prefix}notebook:{document}"))
                    .query_async(&mut c)
                    .await?)
            }
            DocStore::Watchman(remote) => Ok(remote
                .call(hyper::Method::GET, POD_DOCUMENT_PATH, Bytes::new())
                .await?
                .map(|b| b.to_vec())),
        }
    }
}

impl DocStore {
    /// Watchman on behalf of this pod, when that is the store (its checkpoints go there too).
    pub fn remote(&self) -> Option<&Remote> {
        match self {
            DocStore::Watchman(remote) => Some(remote),
            _ => None,
        }
    }
}

impl Remote {
    /// What proves who asks: the pod's credential and its binding token.
    pub(crate) async fn headers(&self) -> Result<[(&'static str, String); 2], StoreError> {
        let binding = self
            .binding
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .ok_or(StoreError::Unbound)?;
        // Read each time: a credential file may be replaced (rotated) while the pod runs.
        let credential = tokio::fs::read_to_string(&self.credential_file)
            .await
            .map_err(|e| {
                StoreError::Watchman(format!("{}: {e}", self.credential_file.display()))
            })?;
        Ok([
            ("authorization", format!("Bearer {}", credential.trim())),
            (BINDING_HEADER, binding),
        ])
    }

    /// Watchman's URL for `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request for this pod's document or checkpoint at `path`; `Ok(None)` when Watchman
    /// has nothing there.
    pub(crate) async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
    ) -> Result<Option<Bytes>, StoreError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in self.headers().await? {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| StoreError::Watchman(e.to_string()))?;
        let response = tokio::time::timeout(REMOTE_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| StoreError::Watchman("timed out".into()))?
            .map_err(|e| StoreError::Watchman(e.to_string()))?;
        let status = response.status();
        let body = tokio::time::timeout(
            REMOTE_TIMEOUT,
            Limited::new(response.into_body(), MAX_REMOTE_BYTES).collect(),
        )
        .await
        .map_err(|_| StoreError::Watchman("timed out reading the answer".into()))?
        .map_err(|e| StoreError::Watchman(e.to_string()))?
        .to_bytes();
        match status.as_u16() {
            200 => Ok(Some(body)),
            204 => Ok(Some(Bytes::new())),
            404 => Ok(None),
            code => Err(StoreError::Watchman(format!(
                "{code}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_never_name_a_path() {
        for doc in ["../../etc/passwd", "a/b", "..", "x\0y"] {
            let name = file_name(doc);
            assert!(!name.contains('/') && !name.starts_with('.'), "{name}");
        }
        assert_ne!(file_name("a/b"), file_name("a_b"));
    }

    #[tokio::test]
    async fn a_directory_store_round_trips() {
        let dir = testkit::TempDir::new("docstore");
        let store = DocStore::open(&dir.0.display().to_string(), "p:", None)
            .await
            .unwrap();
        assert!(store.is_bound());
        assert_eq!(store.load("d1").await.unwrap(), None);
        store.save("d1", b"one".to_vec()).await.unwrap();
        store.save("d1", b"two".to_vec()).await.unwrap();
        assert_eq!(
            store.load("d1").await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
    }

    #[tokio::test]
    async fn a_watchman_store_needs_a_binding_first() {
        let store = DocStore::open(
            "watchman+http://127.0.0.1:9",
            "",
            Some(Path::new("/nonexistent")),
        )
        .await
        .unwrap();
        assert!(!store.is_bound());
        assert!(matches!(store.load("d1").await, Err(StoreError::Unbound)));
    }
}
