//! Checkpoints: the kernel's names kept beside the document, so that a document that loses its
//! pod (preemption, node loss, idle reclaim, a crash) comes back on the next one with its state.
//!
//! After each successful cell run the kernel helper (`kernel/nbplat_checkpoint.py`) serialises
//! the names that cell defined into the workspace's `.nbplat/checkpoint/` directory, on the main
//! shell right after the cell (a quiet request: no output, no count, no history). The keeper
//! (this file's task) reads its report, uploads the new objects and writes the manifest
//! (`manifest.rs`) to the store (`store.rs`), in that order, so a manifest never names an
//! object the store lacks. At shutdown the whole namespace is saved once more. On resume the
//! hub downloads the objects, has the kernel load them, and runs again exactly the cells that
//! define what could not come back (`collab/hub/resume.rs`).

pub mod files;
pub mod manifest;
pub mod store;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};

use self::manifest::{Manifest, Reported};
pub use self::store::{CheckpointStore, StoreError};
use crate::kernel::{EventSender, Question, Quiet};
use crate::protocol::ServerEvent;
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
    /// Told when the save is stored (or given up).
    done: Option<oneshot::Sender<()>>,
    /// Not a save: the kernel restarted, so the checkpoint is emptied (a later resume must
    /// not bring back what the restart cleared).
    reset: bool,
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
        let keeper = Keeper {
            settings: settings.clone(),
            manifest: manifest.clone(),
            seen: seen.clone(),
            events,
            failing: std::sync::atomic::AtomicBool::new(false),
        };
        (
            Self {
                settings,
                jobs,
                manifest,
                seen,
            },
            keeper.run(rx, stop),
        )
    }

    pub fn settings(&self) -> &CheckpointSettings {
        &self.settings
    }

    /// The save to send after the run of `cell`, which defines `names`: the kernel does it
    /// only if the run succeeded.
    pub fn after_cell(&self, document: &str, cell: &str, names: &[String]) -> Option<Quiet> {
        if names.is_empty() {
            return None;
        }
        let content = serde_json::json!({
            "op": "checkpoint_save",
            "names": names,
            "if_succeeded": true,
            "max_name_bytes": self.settings.max_name_bytes,
            "budget_ms": self.settings.budget.as_millis() as u64,
        });
        Some(self.job(document, Some(cell.to_owned()), false, content, None))
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
        self.job(document, None, except.is_empty(), content, Some(done))
    }

    fn job(
        &self,
        document: &str,
        cell: Option<String>,
        full: bool,
        content: Value,
        done: Option<oneshot::Sender<()>>,
    ) -> Quiet {
        let (tx, rx) = oneshot::channel();
        let _ = self.jobs.send(Job {
            document: document.to_owned(),
            cell,
            full,
            answer: rx,
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
        let (_, answer) = oneshot::channel();
        let _ = self.jobs.send(Job {
            document: document.to_owned(),
            cell: None,
            full: true,
            answer,
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

/// The task that stores saves, one at a time, in the order the kernel made them.
struct Keeper {
    settings: CheckpointSettings,
    manifest: std::sync::Arc<Mutex<Option<Manifest>>>,
    seen: std::sync::Arc<Mutex<HashMap<String, files::Seen>>>,
    events: EventSender,
    /// The store failed last time (clients were told).
    failing: std::sync::atomic::AtomicBool,
}

/// How long the keeper waits for the kernel's report beyond the save's own budget (the cell
/// before it may still be running: the save runs after it).
const REPORT_WAIT: Duration = Duration::from_secs(24 * 3600);

impl Keeper {
    async fn run(
        self,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let job = tokio::select! {
                job = jobs.recv() => job,
                () = stop.cancelled() => {
                    // What was handed over before the stop is still stored (the last save at
                    // shutdown is), within the caller's grace; nothing new is awaited.
                    jobs.try_recv().ok()
                }
            };
            let Some(job) = job else { break };
            let done = self.store(job, &stop).await;
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
    }

    /// Stores one save; returns whom to tell.
    async fn store(
        &self,
        job: Job,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<oneshot::Sender<()>> {
        let Job {
            document,
            cell,
            full,
            answer,
            done,
            reset,
        } = job;
        if reset {
            let empty = Manifest::new(&document);
            *self.manifest.lock().await = Some(empty.clone());
            let _ = self
                .retry(stop, || self.settings.store.put_manifest(&empty))
                .await;
            tracing::info!("the kernel restarted: its checkpoint is emptied");
            return done;
        }
        let report = match tokio::time::timeout(REPORT_WAIT, answer).await {
            Ok(Ok(report)) => report,
            // The kernel went away (a restart, shutdown) or never answered: nothing to store.
            _ => return done,
        };
        let Some(names) = report.get("names").and_then(Value::as_array) else {
            return done;
        };
        let reported: Vec<Reported> = names
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect();
        let started = std::time::Instant::now();
        let mut guard = self.manifest.lock().await;
        let manifest = guard.get_or_insert_with(|| Manifest::new(&document));
        if manifest.document != document {
            *manifest = Manifest::new(&document);
        }
        let uploads = manifest.apply(cell.as_deref(), &reported, full, self.settings.max_bytes);
        let workspace = &self.settings.workspace;
        let shas: Vec<String> = uploads.iter().map(|(sha, _)| sha.clone()).collect();
        self.settings
            .store
            .prepare(doc_store::Transfer::Put, &shas)
            .await;
        for (sha, _) in &uploads {
            let opened = local_object(sha).and_then(|p| workspace.open_read(&p));
            let file = match opened {
                Ok(opened) => opened.file,
                Err(error) => {
                    tracing::warn!(%error, "a checkpoint object is missing");
                    manifest
                        .lost_object(sha, "its bytes were not found where the kernel wrote them");
                    continue;
                }
            };
            let stored = self
                .retry(stop, || async {
                    let io = |source| {
                        StoreError::Store(doc_store::checkpoints::CheckpointError::Io {
                            path: LOCAL_DIR.into(),
                            source,
                        })
                    };
                    let mut file = file.try_clone().map_err(io)?;
                    std::io::Seek::rewind(&mut file).map_err(io)?;
                    self.settings
                        .store
                        .put_object(
                            &document,
                            sha,
                            tokio::fs::File::from_std(file),
                            self.settings.max_name_bytes,
                        )
                        .await
                })
                .await;
            match stored {
                Ok(()) => {}
                Err(e) if e.is_corrupt() => {
                    manifest.lost_object(sha, "its bytes changed before they were stored");
                }
                Err(_) => {
                    // Given up (shutdown): this save is not stored.
                    return done;
                }
            }
        }
        let mut file_bytes = 0;
        if self.settings.max_files_bytes > 0 {
            let mut seen = self.seen.lock().await;
            match files::save(
                &self.settings.store,
                workspace,
                manifest,
                &mut seen,
                self.settings.max_files_bytes,
            )
            .await
            {
                Ok(bytes) => file_bytes = bytes,
                Err(error) => {
                    // The names are stored below; the files as they were recorded.
                    tracing::warn!(%error, "workspace files not checkpointed this time");
                }
            }
        }
        let manifest = manifest.clone();
        drop(guard);
        if self
            .retry(stop, || self.settings.store.put_manifest(&manifest))
            .await
            .is_err()
        {
            return done;
        }
        for (sha, bytes) in &uploads {
            if let Ok(path) = local_object(sha) {
                let _ = workspace.delete(&path);
            }
            metrics::counter!("middleman_checkpoint_bytes_total").increment(*bytes);
        }
        metrics::counter!("middleman_checkpoint_bytes_total").increment(file_bytes);
        metrics::counter!("middleman_checkpoints_total", "kind" => if cell.is_some() { "cell" } else { "all" })
            .increment(1);
        metrics::histogram!("middleman_checkpoint_store_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("middleman_checkpoint_bytes").set(manifest.bytes() as f64);
        tracing::debug!(cell = ?cell, names = reported.len(), uploads = uploads.len(), "checkpoint stored");
        done
    }

    /// Runs a store operation until it succeeds, backing off (0.5 s doubling to 30 s) and
    /// telling clients once while it fails; a corrupt object is not retried, and a stop ends
    /// the retrying after one more attempt.
    async fn retry<F, Fut>(
        &self,
        stop: &tokio_util::sync::CancellationToken,
        mut op: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut backoff = Duration::from_millis(500);
        loop {
            match op().await {
                Ok(()) => {
                    if self
                        .failing
                        .swap(false, std::sync::atomic::Ordering::Relaxed)
                    {
                        let _ = self.events.send(ServerEvent::CheckpointStatus {
                            failing: false,
                            reason: None,
                        });
                    }
                    return Ok(());
                }
                Err(e) if e.is_corrupt() => return Err(e),
                Err(error) => {
                    metrics::counter!("middleman_checkpoint_store_errors_total").increment(1);
                    tracing::warn!(%error, "checkpoint store failed; retrying");
                    if !self
                        .failing
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        let _ = self.events.send(ServerEvent::CheckpointStatus {
                            failing: true,
                            reason: Some(format!(
                                "checkpoints cannot be saved ({error}); retrying"
                            )),
                        });
                    }
                    if stop.is_cancelled() {
                        return Err(error);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
