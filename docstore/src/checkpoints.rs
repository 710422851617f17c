//! Where kernel checkpoints are kept (docs/checkpoints.md): per document, a manifest (opaque
//! JSON here) and objects named by the SHA-256 of their bytes.
//!
//! - [`CheckpointDir`]: a local directory; every write goes through a temporary and a rename,
//!   every object is checked against its name on the way in and out. Documents' directories
//!   are named by the hex of their id, so no id names a path.
//! - [`Remote`]'s checkpoint calls: a pod's Middleman asks Watchman (`/v1/pod/checkpoint/...`)
//!   with its pod credential and binding token, as for its document; Watchman keeps a
//!   [`CheckpointDir`] and touches only that document's checkpoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::presigned::Transfer;
use crate::{Remote, StoreError};

/// Watchman's path for a pod's checkpoint: `<path>/manifest`, `<path>/objects/<sha256>`.
pub const POD_CHECKPOINT_PATH: &str = "/v1/pod/checkpoint";

/// Where a document's checkpoint is kept in any store: the hex of its id, so that no id names
/// a path or a key of another document.
pub fn document_key(document: &str) -> String {
    document.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a SHA-256 in lowercase hex (an object's name).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checkpoint store failures.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint object {sha256} is corrupt (its bytes do not hash to its name)")]
    Corrupt { sha256: String },
    #[error("checkpoint object {0:?} is not a SHA-256 name")]
    BadName(String),
    #[error("checkpoint object is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("checkpoint object {0} is not in the store")]
    Missing(String),
    #[error(transparent)]
    Remote(#[from] StoreError),
    #[error("checkpoint object transfer failed: {0}")]
    Transfer(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Checkpoints under a local directory.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
}

impl CheckpointDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn document_dir(&self, document: &str) -> PathBuf {
        self.root.join(document_key(document))
    }

    /// Whether the document has a checkpoint (a stat: cheap enough for `Allocate`).
    pub fn has_checkpoint(&self, document: &str) -> bool {
        self.document_dir(document).join("manifest.json").is_file()
    }

    /// The document's manifest, if it has one.
    pub async fn manifest(&self, document: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        let path = self.document_dir(document).join("manifest.json");
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub async fn put_manifest(&self, document: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let dir = self.document_dir(document);
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let path = dir.join("manifest.json");
        replace_with(&path, |mut file, tmp| async move {
            file.write_all(bytes).await.map_err(io(&tmp))?;
            file.flush().await.map_err(io(&tmp))
        })
        .await
    }

    /// Stores the object read from `src`, if its bytes hash to `sha256` and are at most
    /// `limit`.
    pub async fn put_object(
        &self,
        document: &str,
        sha256: &str,
        src: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<(), CheckpointError> {
        if !is_sha256(sha256) {
            return Err(CheckpointError::BadName(sha256.to_owned()));
        }
        let dir = self.document_dir(document).join("objects");
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let path = dir.join(sha256);
        replace_with(&path, |file, tmp| async move {
            copy_checked(src, file, sha256, limit, &tmp).await
        })
        .await
    }

    /// Opens an object for reading (the reader checks it with [`copy_checked`]).
    pub async fn open_object(
        &self,
        document: &str,
        sha256: &str,
    ) -> Result<(tokio::fs::File, u64), CheckpointError> {
        if !is_sha256(sha256) {
            return Err(CheckpointError::BadName(sha256.to_owned()));
        }
        let path = self.document_dir(document).join("objects").join(sha256);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::Missing(sha256.to_owned()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let size = file.metadata().await.map_err(io(&path))?.len();
        Ok((file, size))
    }

    /// The document's stored objects and their sizes.
    pub async fn objects(
        &self,
        document: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>, CheckpointError> {
        let dir = self.document_dir(document).join("objects");
        let mut found = std::collections::BTreeMap::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(io(&dir)(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io(&dir))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_sha256(&name) {
                let size = entry.metadata().await.map_err(io(&dir))?.len();
                found.insert(name, size);
            }
        }
        Ok(found)
    }

    /// Removes the document's objects that `keep` does not name.
    pub async fn prune(
        &self,
        document: &str,
        keep: &BTreeSet<&str>,
    ) -> Result<(), CheckpointError> {
        let dir = self.document_dir(document).join("objects");
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&dir)(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io(&dir))? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if is_sha256(&name) && !keep.contains(name.as_ref()) {
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        Ok(())
    }

    /// Deletes the document's checkpoint.
    pub async fn delete(&self, document: &str) -> Result<(), CheckpointError> {
        let dir = self.document_dir(document);
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Writes `path` through a temporary beside it: `write` fills the temporary, which replaces
/// `path` only if that succeeds (and is removed otherwise), so a crash or a refusal never leaves
/// half a file under the real name.
async fn replace_with<F, Fut>(path: &Path, write: F) -> Result<(), CheckpointError>
where
    F: FnOnce(tokio::fs::File, PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(), CheckpointError>>,
{
    let tmp = temporary(path);
    let written = async {
        let file = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        write(file, tmp.clone()).await?;
        tokio::fs::rename(&tmp, path).await.map_err(io(path))
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    written
}

fn temporary(path: &Path) -> PathBuf {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    path.with_extension(format!("tmp-{}-{n:x}", std::process::id()))
}

/// Copies `src` to `dst` in chunks (objects may be as large as a kernel's memory), failing if
/// the bytes pass `limit` or do not hash to `sha256`. `path` names the store's side in errors.
pub async fn copy_checked(
    mut src: impl AsyncRead + Unpin,
    mut dst: impl AsyncWrite + Unpin,
    sha256: &str,
    limit: u64,
    path: &Path,
) -> Result<(), CheckpointError> {
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        // The buffer is filled before it is written: an HTTP body comes in small pieces, and
        // each write to a tokio file is a trip to the blocking pool (a 1 GB restore took
        // seconds more in 4 KiB writes).
        let mut filled = 0;
        let mut end = false;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..]).await.map_err(io(path))?;
            if n == 0 {
                end = true;
                break;
            }
            filled += n;
        }
        total += filled as u64;
        if total > limit {
            return Err(CheckpointError::TooLarge { limit });
        }
        hash.update(&buf[..filled]);
        dst.write_all(&buf[..filled]).await.map_err(io(path))?;
        if end {
            break;
        }
    }
    dst.flush().await.map_err(io(path))?;
    let digest: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != sha256 {
        return Err(CheckpointError::Corrupt {
            sha256: sha256.to_owned(),
        });
    }
    Ok(())
}

impl Remote {
    /// The pod's checkpoint manifest, if it has one.
    pub async fn checkpoint_manifest(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        let path = format!("{POD_CHECKPOINT_PATH}/manifest");
        Ok(self
            .call(hyper::Method::GET, &path, Bytes::new())
            .await?
            .map(|b| b.to_vec()))
    }

    pub async fn put_checkpoint_manifest(&self, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        let path = format!("{POD_CHECKPOINT_PATH}/manifest");
        self.call(hyper::Method::PUT, &path, Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// Asks Watchman for pre-signed URLs for these objects (one request for many). False
    /// when its store has none: objects then go through Watchman.
    pub async fn presign(
        &self,
        transfer: Transfer,
        shas: &[String],
    ) -> Result<bool, CheckpointError> {
        if shas.is_empty() || self.urls.presigns.lock().is_ok_and(|p| *p == Some(false)) {
            return Ok(false);
        }
        if shas.iter().any(|s| !is_sha256(s)) {
            return Err(CheckpointError::BadName(shas.join(",")));
        }
        let mut presigned = false;
        for batch in shas.chunks(MAX_URLS_ASKED) {
            let ask = format!(
                r#"{{"method":"{}","objects":[{}]}}"#,
                transfer.method(),
                batch
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let path = format!("{POD_CHECKPOINT_PATH}/urls");
            let Some(answer) = self
                .call(hyper::Method::POST, &path, Bytes::from(ask))
                .await?
            else {
                if let Ok(mut p) = self.urls.presigns.lock() {
                    *p = Some(false);
                }
                return Ok(false);
            };
            let (urls, ttl) = parse_urls(&answer)?;
            self.urls.remember(transfer, urls, ttl);
            presigned = true;
        }
        if let Ok(mut p) = self.urls.presigns.lock() {
            *p = Some(true);
        }
        Ok(presigned)
    }

    /// A URL for the object: one handed out before, or a new one; `None` when Watchman's
    /// store has none.
    async fn presigned(
        &self,
        transfer: Transfer,
        sha256: &str,
    ) -> Result<Option<String>, CheckpointError> {
        if let Some(url) = self.urls.get(transfer, sha256) {
            return Ok(Some(url));
        }
        if !self.presign(transfer, &[sha256.to_owned()]).await? {
            return Ok(None);
        }
        Ok(self.urls.get(transfer, sha256))
    }

    /// Uploads an object: straight to object storage with a pre-signed URL, or through
    /// Watchman (read whole: one name is at most the plan's per-name cap).
    pub async fn put_checkpoint_object(
        &self,
        sha256: &str,
        src: tokio::fs::File,
        limit: u64,
    ) -> Result<(), CheckpointError> {
        if !is_sha256(sha256) {
            return Err(CheckpointError::BadName(sha256.to_owned()));
        }
        let size = src.metadata().await.map_err(io(Path::new(sha256)))?.len();
        if size > limit {
            return Err(CheckpointError::TooLarge { limit });
        }
        if let Some(url) = self.presigned(Transfer::Put, sha256).await? {
            return self.urls.put(&url, &[], src, size).await;
        }
        let url = self.url(&format!("{POD_CHECKPOINT_PATH}/objects/{sha256}"));
        self.urls.put(&url, &self.headers().await?, src, size).await
    }

    /// Downloads an object into `dst`, checked against its name.
    pub async fn get_checkpoint_object(
        &self,
        sha256: &str,
        dst: impl AsyncWrite + Unpin,
        limit: u64,
    ) -> Result<(), CheckpointError> {
        if !is_sha256(sha256) {
            return Err(CheckpointError::BadName(sha256.to_owned()));
        }
        if let Some(url) = self.presigned(Transfer::Get, sha256).await? {
            return self.urls.fetch(&url, &[], sha256, dst, limit).await;
        }
        let url = self.url(&format!("{POD_CHECKPOINT_PATH}/objects/{sha256}"));
        self.urls
            .fetch(&url, &self.headers().await?, sha256, dst, limit)
            .await
    }
}

/// Most objects one `urls` request names (Watchman's cap).
const MAX_URLS_ASKED: usize = 4096;

/// Watchman's answer to `urls`: `{"urls": {sha: url}, "expires_in_secs": n}`.
fn parse_urls(
    answer: &[u8],
) -> Result<(Vec<(String, String)>, std::time::Duration), CheckpointError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        urls: std::collections::BTreeMap<String, String>,
        expires_in_secs: u64,
    }
    let a: Answer = serde_json::from_slice(answer)
        .map_err(|e| CheckpointError::Transfer(format!("Watchman's URLs: {e}")))?;
    Ok((
        a.urls.into_iter().collect(),
        std::time::Duration::from_secs(a.expires_in_secs),
    ))
}
