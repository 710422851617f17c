//! The keeper: the task that stores the kernel's saves, in the order the kernel made them.
//!
//! A save after a cell is queued in the kernel (its writer thread writes it while idle): the
//! answer only says it was queued, and the report comes in `report-<id>.json` beside the
//! objects, waited for here. Batches are stored at most every [`STORE_INTERVAL`]; the saves
//! ready by then are stored together: of the objects they name, only those the manifest
//! still names at the end are uploaded (a name saved twice in a row uploads once), and the
//! manifest is written once. The last save at shutdown does not wait for the interval.
//! Workspace files are walked at most every [`FILES_INTERVAL`] and always for the last save;
//! a walk put off is done once the keeper has been idle that long.

use std::collections::{BTreeSet, HashMap};
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::manifest::{Manifest, Reported, Uploads};
use super::{CheckpointSettings, Job, LOCAL_DIR, StoreError, files, local_object};
use crate::kernel::EventSender;
use crate::protocol::ServerEvent;
use crate::workspace::{RelPath, WorkspaceError};

/// How often, at most, a batch of saves is stored: the saves made meanwhile wait in the
/// kernel's directory and are stored together (a name saved again in the meantime once).
const STORE_INTERVAL: Duration = Duration::from_millis(250);
/// How often, at most, the workspace's files are walked for changes.
const FILES_INTERVAL: Duration = Duration::from_secs(2);
/// How long the keeper waits for the kernel's answer (the cell before the save may still be
/// running: the save runs after it).
const ANSWER_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How long it waits for a queued save's report once the kernel said it queued it.
const REPORT_WAIT: Duration = Duration::from_secs(600);
/// A report larger than this is not read (the kernel wrote it; it lists names).
const MAX_REPORT_BYTES: u64 = 16 << 20;

/// A save with its report in hand.
struct Ready {
    document: String,
    cell: Option<String>,
    full: bool,
    reported: Vec<Reported>,
    done: Option<oneshot::Sender<()>>,
}

pub(super) struct Keeper {
    settings: CheckpointSettings,
    manifest: Arc<Mutex<Option<Manifest>>>,
    seen: Arc<Mutex<HashMap<String, files::Seen>>>,
    epoch: Arc<AtomicU64>,
    events: EventSender,
    /// The store failed last time (clients were told).
    failing: AtomicBool,
}

impl Keeper {
    pub(super) fn new(
        settings: CheckpointSettings,
        manifest: Arc<Mutex<Option<Manifest>>>,
        seen: Arc<Mutex<HashMap<String, files::Seen>>>,
        epoch: Arc<AtomicU64>,
        events: EventSender,
    ) -> Self {
        Self {
            settings,
            manifest,
            seen,
            epoch,
            events,
            failing: AtomicBool::new(false),
        }
    }

    /// Stores saves until `stop`; what was handed over before the stop is still stored (the
    /// last save at shutdown is), within the caller's grace; nothing new is awaited.
    pub(super) async fn run(self, mut jobs: mpsc::UnboundedReceiver<Job>, stop: CancellationToken) {
        // A job taken to join a batch whose answer was not there yet.
        let mut carried: Option<Job> = None;
        let mut walked: Option<Instant> = None;
        let mut walk_owed = false;
        let mut stored: Option<Instant> = None;
        loop {
            let job = match carried.take() {
                Some(job) => Some(job),
                None => {
                    let walk_at = (walk_owed && !stop.is_cancelled())
                        .then(|| walked.map_or_else(Instant::now, |t| t + FILES_INTERVAL));
                    tokio::select! {
                        job = jobs.recv() => job,
                        () = stop.cancelled() => jobs.try_recv().ok(),
                        () = sleep_until(walk_at), if walk_at.is_some() => {
                            self.walk_files(&stop).await;
                            walked = Some(Instant::now());
                            walk_owed = false;
                            continue;
                        }
                    }
                }
            };
            let Some(mut job) = job else { break };
            if job.reset {
                self.reset(job, &stop).await;
                continue;
            }
            let mut batch = Vec::new();
            match tokio::time::timeout(ANSWER_WAIT, &mut job.answer).await {
                Ok(Ok(answer)) => {
                    if let Some(at) = stored.map(|t| t + STORE_INTERVAL)
                        && job.done.is_none()
                    {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = stop.cancelled() => {}
                        }
                    }
                    batch.extend(self.resolve(job, answer, &stop).await);
                }
                // The cell failed, the kernel went away (a restart, shutdown) or never
                // answered: nothing to store.
                _ => tell(job.done),
            }
            // Saves made while the last batch was stored join this one.
            while let Ok(mut next) = jobs.try_recv() {
                if next.reset {
                    carried = Some(next);
                    break;
                }
                match next.answer.try_recv() {
                    Ok(answer) => batch.extend(self.resolve(next, answer, &stop).await),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        carried = Some(next);
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => tell(next.done),
                }
            }
            if batch.is_empty() {
                continue;
            }
            let walk = batch.iter().any(|r| r.done.is_some())
                || walked.is_none_or(|t| t.elapsed() >= FILES_INTERVAL);
            self.store(batch, walk, &stop).await;
            stored = Some(Instant::now());
            if walk {
                walked = Some(Instant::now());
            }
            walk_owed = !walk;
        }
    }

    /// The save's report: the answer itself, or for a queued save the report file the
    /// kernel's writer leaves (its names are to be rebuilt if it never comes).
    async fn resolve(&self, job: Job, answer: Value, stop: &CancellationToken) -> Option<Ready> {
        let report = match &job.queued {
            None => Some(answer),
            Some(queued) => self.report_file(queued.report, job.epoch, stop).await,
        };
        let reported = match (report, &job.queued) {
            (Some(report), _) => report.get("names").and_then(Value::as_array).map(|names| {
                names
                    .iter()
                    .filter_map(|v| serde_json::from_value(v.clone()).ok())
                    .collect()
            }),
            // The kernel is gone (it restarted: the reset that follows empties all).
            (None, _) if self.epoch.load(Ordering::Relaxed) != job.epoch => None,
            (None, Some(queued)) => Some(
                queued
                    .names
                    .iter()
                    .map(|name| Reported::recompute(name, "its save did not finish"))
                    .collect(),
            ),
            (None, None) => None,
        };
        let Some(reported) = reported else {
            tell(job.done);
            return None;
        };
        Some(Ready {
            reported,
            document: job.document,
            cell: job.cell,
            full: job.full,
            done: job.done,
        })
    }

    /// Waits for `report-<id>.json` (the kernel's writer renames it into place when done),
    /// reads and removes it. None: it did not come (in time, or from this kernel).
    async fn report_file(&self, id: u64, epoch: u64, stop: &CancellationToken) -> Option<Value> {
        let path = RelPath::parse(&format!("{LOCAL_DIR}/report-{id}.json")).ok()?;
        let workspace = &self.settings.workspace;
        let mut deadline = Instant::now() + REPORT_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            match workspace.open_read(&path) {
                Ok(open) => {
                    let mut bytes = Vec::new();
                    let read = open
                        .file
                        .take(MAX_REPORT_BYTES)
                        .read_to_end(&mut bytes)
                        .map(|_| bytes);
                    let _ = workspace.delete(&path);
                    return match read.map(|b| serde_json::from_slice(&b)) {
                        Ok(Ok(report)) => Some(report),
                        _ => {
                            tracing::warn!(id, "a checkpoint report could not be read");
                            None
                        }
                    };
                }
                Err(WorkspaceError::NotFound(_)) => {}
                Err(error) => {
                    tracing::warn!(%error, id, "a checkpoint report could not be opened");
                    return None;
                }
            }
            if self.epoch.load(Ordering::Relaxed) != epoch || Instant::now() > deadline {
                return None;
            }
            if stop.is_cancelled() {
                // Shutting down: the last save drains the writer first, so this comes soon.
                deadline = deadline.min(Instant::now() + Duration::from_secs(30));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// The kernel restarted: its checkpoint is emptied.
    async fn reset(&self, job: Job, stop: &CancellationToken) {
        let empty = Manifest::new(&job.document);
        *self.manifest.lock().await = Some(empty.clone());
        let _ = self
            .retry(stop, || self.settings.store.put_manifest(&empty))
            .await;
        tracing::info!("the kernel restarted: its checkpoint is emptied");
        tell(job.done);
    }

    /// Stores a batch of saves: their objects (those still named at the end), the workspace's
    /// files if `walk`, then the manifest. Everyone waiting for one of them is told at the end.
    async fn store(&self, batch: Vec<Ready>, walk: bool, stop: &CancellationToken) {
        let started = std::time::Instant::now();
        let mut dones = Vec::new();
        let mut guard = self.manifest.lock().await;
        let mut uploads: Uploads = Vec::new();
        let mut document = String::new();
        for ready in batch {
            let manifest = guard.get_or_insert_with(|| Manifest::new(&ready.document));
            if manifest.document != ready.document {
                *manifest = Manifest::new(&ready.document);
                uploads.clear();
            }
            uploads.extend(manifest.apply(
                ready.cell.as_deref(),
                &ready.reported,
                ready.full,
                self.settings.max_bytes,
            ));
            metrics::counter!("middleman_checkpoints_total", "kind" => if ready.cell.is_some() { "cell" } else { "all" })
                .increment(1);
            dones.extend(ready.done);
            document = ready.document;
        }
        let Some(manifest) = guard.as_mut() else {
            dones.into_iter().for_each(|d| tell(Some(d)));
            return;
        };
        let workspace = &self.settings.workspace;
        let (uploads, replaced) = still_named(uploads, &manifest.objects());
        for (sha, _) in &replaced {
            if let Ok(path) = local_object(sha) {
                let _ = workspace.delete(&path);
            }
        }
        metrics::counter!("middleman_checkpoint_superseded_total").increment(replaced.len() as u64);
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
                    // Given up (shutdown): this batch is not stored.
                    dones.into_iter().for_each(|d| tell(Some(d)));
                    return;
                }
            }
        }
        let file_bytes = if walk {
            self.save_files(manifest).await
        } else {
            0
        };
        if let Some(manifest) = self.put_manifest(guard, stop).await {
            for (sha, bytes) in &uploads {
                if let Ok(path) = local_object(sha) {
                    let _ = workspace.delete(&path);
                }
                metrics::counter!("middleman_checkpoint_bytes_total").increment(*bytes);
            }
            metrics::counter!("middleman_checkpoint_bytes_total").increment(file_bytes);
            metrics::histogram!("middleman_checkpoint_store_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::gauge!("middleman_checkpoint_bytes").set(manifest.bytes() as f64);
            tracing::debug!(uploads = uploads.len(), "checkpoint stored");
        }
        dones.into_iter().for_each(|d| tell(Some(d)));
    }

    /// Checkpoints the workspace's changed files into `manifest`; returns the bytes stored.
    async fn save_files(&self, manifest: &mut Manifest) -> u64 {
        if self.settings.max_files_bytes == 0 {
            return 0;
        }
        let mut seen = self.seen.lock().await;
        match files::save(
            &self.settings.store,
            &self.settings.workspace,
            manifest,
            &mut seen,
            self.settings.max_files_bytes,
        )
        .await
        {
            Ok(bytes) => bytes,
            Err(error) => {
                // The names are stored; the files as they were recorded.
                tracing::warn!(%error, "workspace files not checkpointed this time");
                0
            }
        }
    }

    /// The walk of the workspace's files put off by the last batch (no save since).
    async fn walk_files(&self, stop: &CancellationToken) {
        let mut guard = self.manifest.lock().await;
        let Some(manifest) = guard.as_mut() else {
            return;
        };
        let before = (manifest.files.clone(), manifest.files_skipped.clone());
        let bytes = self.save_files(manifest).await;
        if (&manifest.files, &manifest.files_skipped) == (&before.0, &before.1) {
            return;
        }
        if self.put_manifest(guard, stop).await.is_some() {
            metrics::counter!("middleman_checkpoint_bytes_total").increment(bytes);
        }
    }

    /// Writes the manifest `guard` holds, once the lock is let go; it, if it was stored.
    async fn put_manifest(
        &self,
        guard: tokio::sync::MutexGuard<'_, Option<Manifest>>,
        stop: &CancellationToken,
    ) -> Option<Manifest> {
        let manifest = guard.clone()?;
        drop(guard);
        self.retry(stop, || self.settings.store.put_manifest(&manifest))
            .await
            .ok()
            .map(|()| manifest)
    }

    /// Runs a store operation until it succeeds, backing off (0.5 s doubling to 30 s) and
    /// telling clients once while it fails; a corrupt object is not retried, and a stop ends
    /// the retrying after one more attempt.
    async fn retry<F, Fut>(&self, stop: &CancellationToken, mut op: F) -> Result<(), StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StoreError>>,
    {
        let mut backoff = Duration::from_millis(500);
        loop {
            match op().await {
                Ok(()) => {
                    if self.failing.swap(false, Ordering::Relaxed) {
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
                    if !self.failing.swap(true, Ordering::Relaxed) {
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

/// The uploads a batch's saves asked for, split into those the manifest still names at the
/// end (each object once, in order) and those a later save in the batch replaced.
fn still_named(uploads: Uploads, named: &BTreeSet<&str>) -> (Uploads, Uploads) {
    let mut seen = BTreeSet::new();
    uploads
        .into_iter()
        .filter(|(sha, _)| seen.insert(sha.clone()))
        .partition(|(sha, _)| named.contains(sha.as_str()))
}

fn tell(done: Option<oneshot::Sender<()>>) {
    if let Some(done) = done {
        let _ = done.send(());
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(list: &[&str]) -> Vec<(String, u64)> {
        list.iter().map(|s| ((*s).to_owned(), 1)).collect()
    }

    #[test]
    fn a_batch_uploads_only_what_its_manifest_still_names_and_each_object_once() {
        // x saved as a then b, y saved as c twice (and as b by chance): a was replaced.
        let named = BTreeSet::from(["b", "c"]);
        let (keep, replaced) = still_named(up(&["a", "c", "b", "c", "b"]), &named);
        assert_eq!(keep, up(&["c", "b"]));
        assert_eq!(replaced, up(&["a"]));
        // Nothing asked, nothing done.
        assert_eq!(still_named(Vec::new(), &named), (Vec::new(), Vec::new()));
    }
}
