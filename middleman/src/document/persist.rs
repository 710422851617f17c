//! Saving and restoring a document: the CRDT state plus the cells' runtimes, to a file (atomic
//! replace) or to Redis. What is saved is a versioned JSON snapshot.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{CellRuntime, DocumentError, Notebook};

/// Persistence failures.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Store(#[from] doc_store::StoreError),
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
    #[serde(default)]
    graph_rule: crate::graph::GraphRule,
}

/// Encodes a document for storage.
pub fn encode(nb: &Notebook) -> Vec<u8> {
    let snapshot = Snapshot {
        version: 1,
        state: base64::engine::general_purpose::STANDARD.encode(nb.encode_state()),
        runtimes: nb.runtimes().clone(),
        lazy: nb.lazy,
        graph_rule: nb.graph_rule,
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
    nb.graph_rule = s.graph_rule;
    Ok(nb)
}

/// Where documents are kept: a directory, Redis, or Watchman (see `doc_store`).
#[derive(Clone, Debug)]
pub struct DocumentStore(doc_store::DocStore);

impl DocumentStore {
    /// Opens the store named by `spec`: a `redis://` or `rediss://` URL (keys under `prefix`),
    /// a directory (a path, or a `file://` URL), or `watchman+http://host:port` (with the pod's
    /// credential in `credential_file`).
    pub async fn open(
        spec: &str,
        prefix: &str,
        credential_file: Option<&std::path::Path>,
    ) -> Result<Self, PersistError> {
        Ok(Self(
            doc_store::DocStore::open(spec, prefix, credential_file).await?,
        ))
    }

    /// Records the session token that proves which document this pod serves (needed by the
    /// Watchman store before its first load).
    pub fn bind(&self, token: &str) {
        self.0.bind(token);
    }

    /// Watchman on behalf of this pod, when that is the store (checkpoints go there too, under
    /// the same binding).
    pub fn remote(&self) -> Option<&doc_store::Remote> {
        self.0.remote()
    }

    /// Saves the document.
    pub async fn save(&self, document: &str, nb: &Notebook) -> Result<(), PersistError> {
        self.save_bytes(document, encode(nb)).await
    }

    /// Saves a document encoded with [`encode`].
    pub async fn save_bytes(&self, document: &str, bytes: Vec<u8>) -> Result<(), PersistError> {
        Ok(self.0.save(document, bytes).await?)
    }

    /// Loads the document, if it was ever saved.
    pub async fn load(&self, document: &str) -> Result<Option<Notebook>, PersistError> {
        let bytes = self.0.load(document).await?;
        bytes.map(|b| decode(&b)).transpose()
    }
}
