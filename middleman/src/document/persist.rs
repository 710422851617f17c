//! Saving and restoring a document: the CRDT state plus the cells' runtimes, to a file (atomic
//! replace) or to Redis. What is saved is a versioned JSON snapshot.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{CellRuntime, DocumentError, Notebook};

/// Persistence failures.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("document file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored document is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// base64 of the Yjs update (v1) holding the whole CRDT state.
    state: String,
    runtimes: HashMap<String, CellRuntime>,
    #[serde(default)]
    lazy: bool,
}

/// Encodes a document for storage.
pub fn encode(nb: &Notebook) -> Vec<u8> {
    let snapshot = Snapshot {
        version: 1,
        state: base64::engine::general_purpose::STANDARD.encode(nb.encode_state()),
        runtimes: nb.runtimes().clone(),
        lazy: nb.lazy,
    };
    serde_json::to_vec(&snapshot).unwrap_or_default()
}

/// Decodes a stored document.
pub fn decode(bytes: &[u8]) -> Result<Notebook, PersistError> {
    let s: Snapshot =
        serde_json::from_slice(bytes).map_err(|e| PersistError::Corrupt(e.to_string()))?;
    if s.version != 1 {
        return Err(PersistError::Corrupt(format!(
            "unknown snapshot version {}",
            s.version
        )));
    }
    let state = base64::engine::general_purpose::STANDARD
        .decode(s.state)
        .map_err(|e| PersistError::Corrupt(e.to_string()))?;
    let mut nb = Notebook::restore(&state, s.runtimes)?;
    nb.lazy = s.lazy;
    Ok(nb)
}

/// Where documents are kept.
#[derive(Clone)]
pub enum DocumentStore {
    /// One file per document in a directory.
    File(PathBuf),
    /// Redis, under `<prefix>notebook:<document>`.
    Redis {
        conn: redis::aio::ConnectionManager,
        prefix: String,
    },
}

impl std::fmt::Debug for DocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocumentStore::File(p) => write!(f, "File({})", p.display()),
            DocumentStore::Redis { prefix, .. } => write!(f, "Redis({prefix})"),
        }
    }
}

fn file_name(document: &str) -> String {
    // Document ids are restricted upstream; encode anyway so no id can name a path.
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

impl DocumentStore {
    /// Connects to Redis at `url`.
    pub async fn redis(url: &str, prefix: &str) -> Result<Self, PersistError> {
        let conn = redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?;
        Ok(Self::Redis {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    /// Opens the store named by `spec`: a `redis://` or `rediss://` URL (keys under `prefix`),
    /// or a directory (a path, or a `file://` URL).
    pub async fn open(spec: &str, prefix: &str) -> Result<Self, PersistError> {
        if spec.starts_with("redis://") || spec.starts_with("rediss://") {
            return Self::redis(spec, prefix).await;
        }
        let dir = spec.strip_prefix("file://").unwrap_or(spec);
        Ok(Self::File(PathBuf::from(dir)))
    }

    /// Saves the document.
    pub async fn save(&self, document: &str, nb: &Notebook) -> Result<(), PersistError> {
        self.save_bytes(document, encode(nb)).await
    }

    /// Saves a document encoded with [`encode`].
    pub async fn save_bytes(&self, document: &str, bytes: Vec<u8>) -> Result<(), PersistError> {
        match self {
            DocumentStore::File(dir) => {
                let path = dir.join(file_name(document));
                let tmp = path.with_extension("json.tmp");
                let err = |source| PersistError::File {
                    path: path.clone(),
                    source,
                };
                tokio::fs::create_dir_all(dir).await.map_err(err)?;
                tokio::fs::write(&tmp, &bytes).await.map_err(err)?;
                // Replace atomically: a crash mid-write leaves the previous version intact.
                tokio::fs::rename(&tmp, &path).await.map_err(err)?;
            }
            DocumentStore::Redis { conn, prefix } => {
                let mut c = conn.clone();
                redis::cmd("SET")
                    .arg(format!("{prefix}notebook:{document}"))
                    .arg(bytes)
                    .query_async::<()>(&mut c)
                    .await?;
            }
        }
        Ok(())
    }

    /// Loads the document, if it was ever saved.
    pub async fn load(&self, document: &str) -> Result<Option<Notebook>, PersistError> {
        let bytes: Option<Vec<u8>> = match self {
            DocumentStore::File(dir) => {
                let path = dir.join(file_name(document));
                match tokio::fs::read(&path).await {
                    Ok(b) => Some(b),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(source) => return Err(PersistError::File { path, source }),
                }
            }
            DocumentStore::Redis { conn, prefix } => {
                let mut c = conn.clone();
                redis::cmd("GET")
                    .arg(format!("{prefix}notebook:{document}"))
                    .query_async(&mut c)
                    .await?
            }
        };
        bytes.map(|b| decode(&b)).transpose()
    }
}
