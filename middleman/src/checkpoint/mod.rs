//! Checkpoints: the kernel's names kept beside the document, so that a document that loses its
//! pod (preemption, node loss, idle reclaim, a crash) comes back on the next one with its state.
//!
//! After each successful cell run the kernel helper (`kernel/nbplat_checkpoint.py`) queues the
//! names that cell defined (asked in the execute request's metadata: no output, no count, no
//! history); its writer thread writes them into the workspace's `.nbplat/checkpoint/` while the
//! kernel is idle. The keeper (`keeper.rs`) reads its report, uploads the new objects and
//! writes the manifest
//! (`manifest.rs`) to the store (`store.rs`), in that order, so a manifest never names an
//! object the store lacks. At shutdown the whole namespace is saved once more. On resume the
//! hub downloads the objects, has the kernel load them, and runs again exactly the cells that
//! define what could not come back (`collab/hub/checkpoints.rs`).

pub mod files;
mod keeper;
pub mod manifest;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};

use self::keeper::Keeper;
use self::manifest::Manifest;
pub use self::store::{CheckpointStore, StoreError};
use crate::kernel::{EventSender, Question, Quiet};
use crate::workspace::{RelPath, Workspace};

/// Where the kernel helper puts its objects, relative to the workspace.
pub const LOCAL_DIR: &str = ".nbplat/checkpoint";

/// The kernel-side path of object `sha256` (a checked SHA-256).
pub fn local_object(sha256: &str) -> Result<RelPath, crate::workspace::WorkspaceError> {
    RelPath::parse(&format!("{LOCAL_DIR}/{sha256}"))
}

/// How checkpoints are made and kept.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub store: CheckpointStore,
    /// The kernel's workspace: its `.nbplat/checkpoint/` is where the kernel writes objects
    /// and reads them back. Reached only through the file API's rules (no link followed,
    /// nothing outside it), since the kernel controls what is there.
    pub workspace: Workspace,
    /// Largest object a name may take; larger names are rebuilt on resume instead.
    pub max_name_bytes: u64,
    /// Largest a document's checkpoint may grow to.
    pub max_bytes: u64,
    /// Largest the workspace's files may be in all to be checkpointed (0: files are not).
    pub max_files_bytes: u64,
    /// How long one save may take in the kernel; names after that are rebuilt on resume.
    pub budget: Duration,
    /// How long the restore may take in the kernel.
    pub restore_timeout: Duration,
}

/// A save the keeper handles when the kernel answers.
#[derive(Debug)]
struct Job {
    document: String,
    cell: Option<String>,
    /// The whole namespace (names the report omits are gone).
    full: bool,
    answer: oneshot::Receiver<Value>,
    /// A save the kernel queued: its report comes in a file of its own.
    queued: Option<Queued>,
    /// The kernel's generation when the save was asked ([`Checkpoints::reset`] moves it on):
    /// a queued save of a kernel that is gone never reports.
    epoch: u64,
    /// Told when the save is stored (or given up).
    done: Option<oneshot::Sender<()>>,
    /// Not a save: the kernel restarted, so the checkpoint is emptied (a later resume must
    /// not bring back what the restart cleared).
    reset: bool,
}

/// A save after a cell, which the kernel queues: the answer only says the cell succeeded, and
/// the report comes in `report-<report>.json`.
#[derive(Debug)]
struct Queued {
    report: u64,
    /// The names asked for (rebuilt on resume if the report never comes).
    names: Vec<String>,
}

/// The document's checkpoints: the handle the hub holds.
#[derive(Debug)]
pub struct Checkpoints {
    settings: CheckpointSettings,
    jobs: mpsc::UnboundedSender<Job>,
    /// The manifest as last written (or loaded on resume); one writer: the keeper, or the
    /// resume before any save.
    manifest: std::sync::Arc<Mutex<Option<Manifest>>>,
    /// Workspace files as last checkpointed (or restored).
    seen: std::sync::Arc<Mutex<HashMap<String, files::Seen>>>,
    /// The last report id handed out.
    reports: AtomicU64,
    /// The kernel's generation (see [`Job::epoch`]).
    epoch: Arc<AtomicU64>,
}

impl Checkpoints {
    /// The handle and the keeper's task (spawn it; it ends when `stop` is cancelled, after
    /// the saves already handed to it are stored, or at once when the store keeps failing).
    pub fn new(
        settings: CheckpointSettings,
        events: EventSender,
        stop: tokio_util::sync::CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let manifest = std::sync::Arc::new(Mutex::new(None));
        let seen = std::sync::Arc::new(Mutex::new(HashMap::new()));
        let epoch = Arc::new(AtomicU64::new(0));
        let keeper = Keeper::new(
            settings.clone(),
            manifest.clone(),
            seen.clone(),
            epoch.clone(),
            events,
        );
        (
            Self {
                settings,
                jobs,
                manifest,
                seen,
                reports: AtomicU64::new(0),
                epoch,
            },
            keeper.run(rx, stop),
        )
    }

    pub fn settings(&self) -> &CheckpointSettings {
        &self.settings
    }

    /// The save to send after the run of `cell`, which defines `names`: the kernel queues it
    /// only if the run succeeded, writes it while idle (the cell after it does not wait for
    /// the writing) and reports in a file of its own.
    pub fn after_cell(&self, document: &str, cell: &str, names: &[String]) -> Option<Quiet> {
        if names.is_empty() {
            return None;
        }
        let report = self.reports.fetch_add(1, Ordering::Relaxed) + 1;
        let content = serde_json::json!({
            "names": names,
            "max_name_bytes": self.settings.max_name_bytes,
            "budget_ms": self.settings.budget.as_millis() as u64,
            "report": report,
        });
        Some(self.job(
            document,
            Some(cell.to_owned()),
            false,
            content,
            None,
            Some(Queued {
                report,
                names: names.to_vec(),
            }),
        ))
    }

    /// The save of the whole namespace (at shutdown), but `except` (what an interrupted cell
    /// may have left half done). `done` is told once it is stored.
    pub fn everything(
        &self,
        document: &str,
        except: &[String],
        done: oneshot::Sender<()>,
    ) -> Quiet {
        let content = serde_json::json!({
            "op": "checkpoint_save",
            "except": except,
            "max_name_bytes": self.settings.max_name_bytes,
            "budget_ms": self.settings.budget.as_millis() as u64,
        });
        self.job(document, None, except.is_empty(), content, Some(done), None)
    }

    fn job(
        &self,
        document: &str,
        cell: Option<String>,
        full: bool,
        content: Value,
        done: Option<oneshot::Sender<()>>,
        queued: Option<Queued>,
    ) -> Quiet {
        let (tx, rx) = oneshot::channel();
        let _ = self.jobs.send(Job {
            document: document.to_owned(),
            cell,
            full,
            answer: rx,
            queued,
            epoch: self.epoch.load(Ordering::Relaxed),
            done,
            reset: false,
        });
        Quiet {
            question: Question {
                msg_type: "nbplat_request",
                content,
            },
            answer: tx,
        }
    }

    /// The kernel restarted: what it had is gone, so is its checkpoint (in order with the
    /// saves before it).
    pub fn reset(&self, document: &str) {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let (_, answer) = oneshot::channel();
        let _ = self.jobs.send(Job {
            document: document.to_owned(),
            cell: None,
            full: true,
            answer,
            queued: None,
            epoch,
            done: None,
            reset: true,
        });
    }

    /// Loads the document's manifest for a resume; from now on saves build on it (or on a new
    /// one when there is none, or it is not usable).
    pub async fn load(&self, document: &str) -> Result<Option<Manifest>, StoreError> {
        let loaded = self.settings.store.manifest(document).await;
        let mut current = self.manifest.lock().await;
        *current = Some(match &loaded {
            Ok(Some(m)) => m.clone(),
            _ => Manifest::new(document),
        });
        loaded
    }

    /// Writes the checkpoint's workspace files back (before the names: no cell runs without
    /// them). Returns how many came back, and why the others did not.
    pub async fn restore_files(&self, manifest: &Manifest) -> (u32, Vec<(String, String)>) {
        if manifest.files.is_empty() && manifest.files_skipped.is_empty() {
            return (0, Vec::new());
        }
        let mut seen = self.seen.lock().await;
        files::restore(
            &self.settings.store,
            &self.settings.workspace,
            manifest,
            self.settings.max_files_bytes,
            &mut seen,
        )
        .await
    }

    /// Forgets names that could not be restored (their cells run again and save them anew).
    pub async fn forget(&self, names: impl IntoIterator<Item = String>) {
        if let Some(m) = self.manifest.lock().await.as_mut() {
            for n in names {
                m.names.remove(&n);
            }
        }
    }
}
