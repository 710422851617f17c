//! Where this Middleman keeps checkpoints: a local directory (the embedded default and tests
//! of one Middleman), or Watchman on behalf of this pod (`watchman+http://`: the pod reaches
//! only its own document's checkpoint, with its pod credential and binding, as for its
//! document). The storage itself is `doc_store::checkpoints`; this file adds what a manifest
//! must be to be used: of this version and bound to this document.

use std::collections::BTreeSet;

use doc_store::Remote;
use doc_store::checkpoints::{CheckpointDir, CheckpointError};

use super::manifest::{self, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Store(#[from] CheckpointError),
    #[error("checkpoint manifest of {document:?} is not usable: {reason}")]
    BadManifest { document: String, reason: String },
}

impl StoreError {
    /// The object's bytes did not hash to its name: retrying will not help.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Store(CheckpointError::Corrupt { .. }))
    }
}

/// A checkpoint store.
#[derive(Debug, Clone)]
pub enum CheckpointStore {
    Dir(CheckpointDir),
    Watchman(Box<Remote>),
}

impl CheckpointStore {
    /// The document's manifest, if it has one. One that does not parse, is of another
    /// version or names another document is an error (the resume then says so).
    pub async fn manifest(&self, document: &str) -> Result<Option<Manifest>, StoreError> {
        let bytes = match self {
            CheckpointStore::Dir(dir) => dir.manifest(document).await?,
            CheckpointStore::Watchman(remote) => remote.checkpoint_manifest().await?,
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let bad = |reason: String| StoreError::BadManifest {
            document: document.to_owned(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.version != manifest::VERSION {
            return Err(bad(format!(
                "version {} is not {}",
                manifest.version,
                manifest::VERSION
            )));
        }
        if manifest.document != document {
            return Err(bad(format!(
                "it belongs to document {:?}",
                manifest.document
            )));
        }
        Ok(Some(manifest))
    }

    /// Writes the manifest; a directory store also removes the objects it no longer names
    /// (Watchman does that itself).
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| StoreError::BadManifest {
            document: manifest.document.clone(),
            reason: e.to_string(),
        })?;
        match self {
            CheckpointStore::Dir(dir) => {
                dir.put_manifest(&manifest.document, &bytes).await?;
                let keep: BTreeSet<&str> = manifest.objects();
                if let Err(error) = dir.prune(&manifest.document, &keep).await {
                    tracing::debug!(%error, "could not remove old checkpoint objects");
                }
            }
            CheckpointStore::Watchman(remote) => remote.put_checkpoint_manifest(bytes).await?,
        }
        Ok(())
    }

    /// Asks ahead, in one request, for what moving these objects needs (pre-signed URLs, when
    /// Watchman keeps checkpoints in object storage). A failure here only means each object
    /// asks on its own.
    pub async fn prepare(&self, transfer: doc_store::Transfer, shas: &[String]) {
        if let CheckpointStore::Watchman(remote) = self
            && let Err(error) = remote.presign(transfer, shas).await
        {
            tracing::debug!(%error, "could not ask for checkpoint URLs ahead");
        }
    }

    /// Stores an object read from `src`, checked against its name on the way.
    pub async fn put_object(
        &self,
        document: &str,
        sha256: &str,
        src: tokio::fs::File,
        limit: u64,
    ) -> Result<(), StoreError> {
        match self {
            CheckpointStore::Dir(dir) => dir.put_object(document, sha256, src, limit).await?,
            CheckpointStore::Watchman(remote) => {
                remote.put_checkpoint_object(sha256, src, limit).await?;
            }
        }
        Ok(())
    }

    /// Writes an object into `dst`, checked against its name (the caller keeps `dst` only
    /// when this succeeds).
    pub async fn get_object(
        &self,
        document: &str,
        sha256: &str,
        dst: tokio::fs::File,
        limit: u64,
    ) -> Result<(), StoreError> {
        match self {
            CheckpointStore::Dir(dir) => {
                let (src, _) = dir.open_object(document, sha256).await?;
                doc_store::checkpoints::copy_checked(
                    src,
                    dst,
                    sha256,
                    limit,
                    std::path::Path::new(sha256),
                )
                .await?;
            }
            CheckpointStore::Watchman(remote) => {
                remote.get_checkpoint_object(sha256, dst, limit).await?;
            }
        }
        Ok(())
    }
}
