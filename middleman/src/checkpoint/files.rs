//! Workspace files in the checkpoint: the files people and their code wrote beside the
//! notebook come back on the next pod, as the kernel's names do.
//!
//! After each save of names the keeper walks the workspace ([`Workspace::walk_files`]: regular
//! files only; links, fifos, sockets and devices are never followed nor stored), hashes the
//! files whose size or modification time changed, uploads those whose bytes are new, and records
//! every file by its SHA-256 in the manifest. Files that would take the total past the cap
//! (in path order) are not kept, and the manifest says so. On resume they are written back (through the file API's rules)
//! before the kernel's names are restored, so no cell runs without them.
//!
//! [`plan`] is the decision (pure); [`save`] and [`restore`] do the I/O.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;

use super::manifest::{Manifest, SavedFile};
use super::store::{CheckpointStore, StoreError};
use crate::workspace::{FileStamp, RelPath, UPLOAD_PREFIX, Workspace};

/// Most files a workspace checkpoint walks (past it, files are not checkpointed this time).
pub const MAX_FILES: usize = 10_000;

/// Directories never kept: the checkpoint's own scratch, and the tools' caches and settings
/// that every pod's image brings anew.
const SKIPPED_DIRS: &[&str] = &[
    ".nbplat",
    ".ipython",
    ".jupyter",
    ".cache",
    ".local",
    ".config",
    "__pycache__",
    ".ipynb_checkpoints",
];

/// Whether the walk leaves directory `path` out.
pub fn skipped_dir(path: &RelPath) -> bool {
    path.name()
        .is_some_and(|n| SKIPPED_DIRS.contains(&n) || n.starts_with(UPLOAD_PREFIX))
}

/// A file as last checkpointed: what it looked like, and its bytes' SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub modified_ns: i128,
    pub sha256: String,
}

/// What one save does with the files found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Unchanged since they were recorded: kept as they are.
    pub keep: BTreeMap<String, SavedFile>,
    /// New or changed: hashed, and uploaded if their bytes are new.
    pub hash: Vec<FileStamp>,
    /// Not kept, and why.
    pub skipped: BTreeMap<String, String>,
}

/// Decides, for the files `found` (in path order), which are unchanged since `seen` and still
/// in `recorded`, which must be read, and which are left out: those that would take the files
/// past `cap` bytes in all (smaller ones after them may still fit).
pub fn plan(
    found: &[FileStamp],
    seen: &HashMap<String, Seen>,
    recorded: &BTreeMap<String, SavedFile>,
    cap: u64,
) -> Plan {
    let mut plan = Plan::default();
    let mut total: u64 = 0;
    for file in found {
        let path = file.path.to_string();
        if file
            .path
            .name()
            .is_some_and(|n| n.starts_with(UPLOAD_PREFIX))
        {
            continue;
        }
        // A file that does not fit is left out; smaller ones after it may still fit.
        if total.saturating_add(file.size) > cap {
            plan.skipped.insert(
                path,
                format!(
                    "the workspace's files are over the checkpoint's cap of {} MiB",
                    cap >> 20
                ),
            );
            continue;
        }
        total += file.size;
        let unchanged = seen.get(&path).zip(recorded.get(&path)).filter(|(s, r)| {
            s.size == file.size && s.modified_ns == file.modified_ns && s.sha256 == r.sha256
        });
        match unchanged {
            Some((_, r)) => {
                plan.keep.insert(path, r.clone());
            }
            None => plan.hash.push(file.clone()),
        }
    }
    plan
}

/// Walks the workspace and brings the manifest's files up to date: new and changed files are
/// uploaded (before the manifest that names them is written, as objects are). A file the
/// kernel changes while it is read is left as it was recorded, until the next save.
pub async fn save(
    store: &CheckpointStore,
    workspace: &Workspace,
    manifest: &mut Manifest,
    seen: &mut HashMap<String, Seen>,
    cap: u64,
) -> Result<u64, StoreError> {
    let walk = {
        let workspace = workspace.clone();
        tokio::task::spawn_blocking(move || workspace.walk_files(skipped_dir, MAX_FILES)).await
    };
    let found = match walk {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            tracing::debug!(%error, "workspace files not checkpointed this time");
            return Ok(0);
        }
        Err(_) => return Ok(0),
    };
    let plan = plan(&found, seen, &manifest.files, cap);
    let mut files = plan.keep;
    seen.retain(|path, _| files.contains_key(path));
    let mut hashed = Vec::new();
    for stamp in plan.hash {
        match hash(workspace, &stamp.path).await {
            Some((sha256, size)) => hashed.push((stamp, sha256, size)),
            None => {
                // Gone or unreadable since the walk: kept as recorded, if it was.
                let path = stamp.path.to_string();
                if let Some(r) = manifest.files.get(&path) {
                    files.insert(path, r.clone());
                }
            }
        }
    }
    let stored = manifest.objects();
    let new: Vec<String> = hashed
        .iter()
        .map(|(_, sha, _)| sha.clone())
        .filter(|sha| !stored.contains(sha.as_str()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    drop(stored);
    store.prepare(doc_store::Transfer::Put, &new).await;
    let mut uploaded: u64 = 0;
    let mut done = std::collections::BTreeSet::new();
    for (stamp, sha256, size) in hashed {
        let path = stamp.path.to_string();
        if new.contains(&sha256) && !done.contains(&sha256) {
            let Ok(opened) = workspace.open_read(&stamp.path) else {
                continue;
            };
            match store
                .put_object(
                    &manifest.document,
                    &sha256,
                    tokio::fs::File::from_std(opened.file),
                    cap,
                )
                .await
            {
                Ok(()) => {
                    uploaded += size;
                    done.insert(sha256.clone());
                }
                Err(e) if e.is_corrupt() => {
                    // Changed while it was uploaded: the next save takes it.
                    if let Some(r) = manifest.files.get(&path) {
                        files.insert(path, r.clone());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        seen.insert(
            path.clone(),
            Seen {
                size: stamp.size,
                modified_ns: stamp.modified_ns,
                sha256: sha256.clone(),
            },
        );
        files.insert(
            path,
            SavedFile {
                sha256,
                bytes: size,
            },
        );
    }
    manifest.files = files;
    manifest.files_skipped = plan.skipped;
    Ok(uploaded)
}

/// The SHA-256 and size of the regular file at `path`, read through the file API's rules.
async fn hash(workspace: &Workspace, path: &RelPath) -> Option<(String, u64)> {
    let workspace = workspace.clone();
    let path = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut opened = workspace.open_read(&path).ok()?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut size: u64 = 0;
        loop {
            let n = opened.file.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            size += n as u64;
            context.update(&buf[..n]);
        }
        let sha: String = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some((sha, size))
    })
    .await
    .ok()
    .flatten()
}

/// Writes the manifest's files back into the workspace. Returns how many came back and, for
/// the others, why not.
pub async fn restore(
    store: &CheckpointStore,
    workspace: &Workspace,
    manifest: &Manifest,
    limit: u64,
    seen: &mut HashMap<String, Seen>,
) -> (u32, Vec<(String, String)>) {
    let mut restored = Vec::new();
    let mut lost: Vec<(String, String)> = manifest
        .files_skipped
        .iter()
        .map(|(p, r)| (p.clone(), r.clone()))
        .collect();
    for (path, saved) in &manifest.files {
        let written = async {
            let rel = RelPath::parse(path).map_err(|e| e.to_string())?;
            if let Some(parent) = parent(&rel) {
                workspace.create_dirs(&parent).map_err(|e| e.to_string())?;
            }
            let (upload, file) = workspace.create_upload(&rel).map_err(|e| e.to_string())?;
            store
                .get_object(
                    &manifest.document,
                    &saved.sha256,
                    tokio::fs::File::from_std(file),
                    limit,
                )
                .await
                .map_err(|e| e.to_string())?;
            upload.commit().map_err(|e| e.to_string())
        }
        .await;
        match written {
            Ok(()) => restored.push(path),
            Err(reason) => lost.push((path.clone(), reason)),
        }
    }
    // Recorded as written now, so the next save does not read them again.
    if let Ok(found) = workspace.walk_files(skipped_dir, MAX_FILES) {
        for stamp in found {
            let path = stamp.path.to_string();
            if let Some(saved) = manifest.files.get(&path)
                && restored.contains(&&path)
            {
                seen.insert(
                    path,
                    Seen {
                        size: stamp.size,
                        modified_ns: stamp.modified_ns,
                        sha256: saved.sha256.clone(),
                    },
                );
            }
        }
    }
    (u32::try_from(restored.len()).unwrap_or(u32::MAX), lost)
}

fn parent(path: &RelPath) -> Option<RelPath> {
    let text = path.to_string();
    let (dir, _) = text.rsplit_once('/')?;
    RelPath::parse(dir).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &str, size: u64, modified_ns: i128) -> FileStamp {
        FileStamp {
            path: RelPath::parse(path).unwrap(),
            size,
            modified_ns,
        }
    }

    fn saved(sha: &str, bytes: u64) -> SavedFile {
        SavedFile {
            sha256: sha.to_owned(),
            bytes,
        }
    }

    #[test]
    fn unchanged_files_are_kept_changed_and_new_ones_read_and_the_cap_holds() {
        let found = vec![
            stamp("a.csv", 10, 1),
            stamp("b.txt", 20, 2),
            stamp("data/big.bin", 100, 3),
            stamp("new.txt", 5, 4),
            stamp(".upload-123", 5, 4),
        ];
        let seen: HashMap<String, Seen> = [
            (
                "a.csv".to_owned(),
                Seen {
                    size: 10,
                    modified_ns: 1,
                    sha256: "aa".into(),
                },
            ),
            (
                "b.txt".to_owned(),
                Seen {
                    size: 20,
                    modified_ns: 1,
                    sha256: "bb".into(),
                },
            ),
        ]
        .into();
        let recorded: BTreeMap<String, SavedFile> = [
            ("a.csv".to_owned(), saved("aa", 10)),
            ("b.txt".to_owned(), saved("bb", 20)),
            ("gone.txt".to_owned(), saved("cc", 1)),
        ]
        .into();
        let p = plan(&found, &seen, &recorded, 50);
        assert_eq!(p.keep, [("a.csv".to_owned(), saved("aa", 10))].into());
        let hashed: Vec<String> = p.hash.iter().map(|f| f.path.to_string()).collect();
        // b.txt changed (modified since), new.txt is new; the removed file is simply absent.
        assert_eq!(hashed, ["b.txt", "new.txt"]);
        assert_eq!(
            p.skipped.keys().collect::<Vec<_>>(),
            ["data/big.bin"],
            "past the cap"
        );
    }

    #[test]
    fn a_file_seen_but_not_recorded_is_read_again() {
        let found = vec![stamp("a.csv", 10, 1)];
        let seen: HashMap<String, Seen> = [(
            "a.csv".to_owned(),
            Seen {
                size: 10,
                modified_ns: 1,
                sha256: "aa".into(),
            },
        )]
        .into();
        let p = plan(&found, &seen, &BTreeMap::new(), 1 << 20);
        assert_eq!(p.hash.len(), 1);
        assert!(p.keep.is_empty());
    }

    #[test]
    fn tool_directories_are_not_walked() {
        for dir in [".nbplat", ".ipython", "x/__pycache__", ".upload-1"] {
            assert!(skipped_dir(&RelPath::parse(dir).unwrap()), "{dir}");
        }
        for dir in ["data", "x/.git", "outputs"] {
            assert!(!skipped_dir(&RelPath::parse(dir).unwrap()), "{dir}");
        }
    }
}
