//! The saver: loads the document from its store once, before anyone joins, and writes it back at
//! most `--save-interval` after each change (a burst of edits is one write), retrying failures
//! every second and writing once more at shutdown. What to write comes from the hub, under its
//! lock, so the saver never sees a half-applied change.

use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Refusal;
use crate::document::Notebook;
use crate::document::persist::DocumentStore;

/// Loading and debounced saving of one document (see the module docs).
#[derive(Debug)]
pub(super) struct Saver {
    store: Option<DocumentStore>,
    debounce: Duration,
    /// Rung on every change.
    changed: Notify,
    /// One load at a time; the others wait and find it done.
    loading: tokio::sync::Mutex<()>,
}

/// The document's bytes to write, and under which id.
pub(super) type Pending = (String, Vec<u8>);

impl Saver {
    pub(super) fn new(store: Option<DocumentStore>, debounce: Duration) -> Self {
        Self {
            store,
            debounce,
            changed: Notify::new(),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// Something changed: save soon.
    pub(super) fn changed(&self) {
        self.changed.notify_one();
    }

    /// Holds off other loads while one is under way.
    pub(super) async fn loading(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.loading.lock().await
    }

    /// The stored document (`None`: nothing stored, or no store).
    pub(super) async fn load(&self, document: &str) -> Result<Option<Notebook>, Refusal> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        store.load(document).await.map_err(|error| {
            tracing::error!(%error, document, "cannot load the document");
            metrics::counter!("middleman_document_load_errors_total").increment(1);
            Refusal::StoreUnavailable
        })
    }

    /// Saves changes at most the debounce interval after they happen, until `shutdown`; then
    /// saves what is left. `take` returns what to write when the document changed (and marks
    /// it clean); `failed` marks it changed again after a failed write.
    pub(super) async fn run(
        &self,
        shutdown: CancellationToken,
        take: impl Fn() -> Option<Pending>,
        failed: impl Fn(),
    ) {
        if self.store.is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.changed.notified() => {}
            }
            // Gather a burst of edits into one write.
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.debounce) => {}
            }
            if !self.save(&take, &failed).await {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                self.changed.notify_one();
            }
        }
        self.save(&take, &failed).await;
    }

    /// Writes the document if it changed. Returns false when the write failed (it stays
    /// changed).
    pub(super) async fn save(&self, take: impl Fn() -> Option<Pending>, failed: impl Fn()) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        let Some((document, bytes)) = take() else {
            return true;
        };
        let started = Instant::now();
        match store.save_bytes(&document, bytes).await {
            Ok(()) => {
                metrics::histogram!("middleman_document_save_seconds")
                    .record(started.elapsed().as_secs_f64());
                true
            }
            Err(error) => {
                tracing::warn!(%error, "saving the document failed; retrying");
                metrics::counter!("middleman_document_save_errors_total").increment(1);
                failed();
                false
            }
        }
    }
}
