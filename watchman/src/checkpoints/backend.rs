//! Where Watchman keeps pods' checkpoints: a local directory (the embedded default), or object
//! storage over the S3 API (`s3://bucket/prefix`, shared by every replica). Per document, under
//! the hex of its id: `manifest.json` and `objects/<sha256>`.
//!
//! With object storage, pods move objects themselves, through pre-signed URLs that Watchman
//! hands out for one object, one method and a few minutes ([`Backend::presign`]); the store's
//! credentials stay in Watchman. A directory has no such URLs: objects go through Watchman.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use doc_store::checkpoints::{CheckpointDir, CheckpointError, document_key};
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer as _};
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutPayload};

/// Failures of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Dir(#[from] CheckpointError),
    #[error("object storage: {0}")]
    Object(#[from] object_store::Error),
    #[error("checkpoint store {spec:?}: {reason}")]
    Config { spec: String, reason: String },
}

/// A checkpoint store.
#[derive(Debug, Clone)]
pub enum Backend {
    Dir(CheckpointDir),
    Object(ObjectCheckpoints),
}

/// Checkpoints in an S3 bucket, under a prefix.
#[derive(Debug, Clone)]
pub struct ObjectCheckpoints {
    store: Arc<AmazonS3>,
    prefix: String,
    url_ttl: Duration,
}

pub use doc_store::Transfer;

impl Backend {
    /// `s3://bucket[/prefix][?endpoint=...&region=...&allow_http=true]`, else a directory.
    /// S3 options (object_store's names: `endpoint`, `region`, `access_key_id`,
    /// `secret_access_key`, `allow_http`, ...) come from the `AWS_*` variables, then the
    /// `options` file (`key=value` lines: where credentials belong, as a mounted secret), then
    /// the spec's query (never credentials: a spec is logged). Pre-signed URLs live for
    /// `url_ttl`.
    pub fn open(
        spec: &str,
        options: Option<&std::path::Path>,
        url_ttl: Duration,
    ) -> Result<Self, BackendError> {
        let Some(rest) = spec.strip_prefix("s3://") else {
            return Ok(Backend::Dir(CheckpointDir::new(
                spec.strip_prefix("file://").unwrap_or(spec),
            )));
        };
        let config = |reason: String| BackendError::Config {
            spec: spec.to_owned(),
            reason,
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(config("no bucket named".into()));
        }
        let mut builder = AmazonS3Builder::from_env();
        if let Some(path) = options {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config(format!("{}: {e}", path.display())))?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (key, value) = line
                    .split_once('=')
                    .ok_or_else(|| config(format!("{}: expected key=value", path.display())))?;
                let key = key.trim().parse().map_err(|e| config(format!("{e}")))?;
                builder = builder.with_config(key, value.trim());
            }
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            if key.contains("secret") || key.contains("access_key") || key.contains("token") {
                return Err(config(format!(
                    "{key} belongs in the options file or the environment, not in the spec"
                )));
            }
            let key = key.parse().map_err(|e| config(format!("{e}")))?;
            builder = builder.with_config(key, value);
        }
        let store = builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| config(e.to_string()))?;
        Ok(Backend::Object(ObjectCheckpoints {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            url_ttl,
        }))
    }

    /// Whether pods move objects themselves ([`Backend::presign`]).
    pub fn presigns(&self) -> bool {
        matches!(self, Backend::Object(_))
    }

    pub async fn manifest(&self, document: &str) -> Result<Option<Vec<u8>>, BackendError> {
        match self {
            Backend::Dir(dir) => Ok(dir.manifest(document).await?),
            Backend::Object(o) => match o.store.get(&o.manifest(document)).await {
                Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    pub async fn put_manifest(&self, document: &str, bytes: &[u8]) -> Result<(), BackendError> {
        match self {
            Backend::Dir(dir) => Ok(dir.put_manifest(document, bytes).await?),
            Backend::Object(o) => {
                o.store
                    .put(&o.manifest(document), PutPayload::from(bytes.to_vec()))
                    .await?;
                Ok(())
            }
        }
    }

    /// The document's stored objects and their sizes.
    pub async fn objects(&self, document: &str) -> Result<BTreeMap<String, u64>, BackendError> {
        match self {
            Backend::Dir(dir) => Ok(dir.objects(document).await?),
            Backend::Object(o) => {
                let prefix = o.objects(document);
                let mut found = BTreeMap::new();
                let mut listed = o.store.list(Some(&prefix));
                while let Some(meta) = listed.try_next().await? {
                    if let Some(name) = meta.location.filename()
                        && doc_store::checkpoints::is_sha256(name)
                    {
                        found.insert(name.to_owned(), meta.size);
                    }
                }
                Ok(found)
            }
        }
    }

    /// Removes the document's objects that `keep` does not name.
    pub async fn prune(&self, document: &str, keep: &BTreeSet<&str>) -> Result<(), BackendError> {
        match self {
            Backend::Dir(dir) => Ok(dir.prune(document, keep).await?),
            Backend::Object(o) => {
                let stale: Vec<Path> = self
                    .objects(document)
                    .await?
                    .into_keys()
                    .filter(|sha| !keep.contains(sha.as_str()))
                    .map(|sha| o.object(document, &sha))
                    .collect();
                o.delete_all(stale).await
            }
        }
    }

    /// Deletes the document's checkpoint (its manifest first: a half-deleted checkpoint is
    /// never resumed from).
    pub async fn delete(&self, document: &str) -> Result<(), BackendError> {
        match self {
            Backend::Dir(dir) => Ok(dir.delete(document).await?),
            Backend::Object(o) => {
                match o.store.delete(&o.manifest(document)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                let all: Vec<Path> = self
                    .objects(document)
                    .await?
                    .into_keys()
                    .map(|sha| o.object(document, &sha))
                    .collect();
                o.delete_all(all).await
            }
        }
    }

    /// Pre-signed URLs for the document's objects `shas` (already checked to be SHA-256 names),
    /// and how long they last; `None` for a directory.
    pub async fn presign(
        &self,
        document: &str,
        transfer: Transfer,
        shas: &[String],
    ) -> Result<Option<(BTreeMap<String, String>, Duration)>, BackendError> {
        let Backend::Object(o) = self else {
            return Ok(None);
        };
        let method = match transfer {
            Transfer::Get => Method::GET,
            Transfer::Put => Method::PUT,
        };
        let paths: Vec<Path> = shas.iter().map(|sha| o.object(document, sha)).collect();
        let urls = o.store.signed_urls(method, &paths, o.url_ttl).await?;
        Ok(Some((
            shas.iter()
                .cloned()
                .zip(urls.into_iter().map(String::from))
                .collect(),
            o.url_ttl,
        )))
    }
}

impl ObjectCheckpoints {
    fn document(&self, document: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(document_key(document))
        } else {
            Path::from(format!("{}/{}", self.prefix, document_key(document)))
        }
    }

    fn manifest(&self, document: &str) -> Path {
        self.document(document).join("manifest.json")
    }

    fn objects(&self, document: &str) -> Path {
        self.document(document).join("objects")
    }

    fn object(&self, document: &str, sha: &str) -> Path {
        self.objects(document).join(sha)
    }

    async fn delete_all(&self, paths: Vec<Path>) -> Result<(), BackendError> {
        if paths.is_empty() {
            return Ok(());
        }
        let stream = futures_util::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(stream);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
