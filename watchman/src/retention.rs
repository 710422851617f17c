//! What Watchman keeps of a document after its pods, and for how long (docs/checkpoints.md):
//! its saved snapshot and its kernel checkpoint go when the document is deleted
//! (`DeleteDocument`), and a checkpoint not saved for its plan's `checkpoint_ttl` expires.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::checkpoints::PodCheckpoints;
use crate::documents::PodDocuments;
use crate::model::{EndReason, now_ms};
use crate::plan::Plan;
use crate::service::{ServiceError, Watchman};
use crate::store::Store;

/// Most expired checkpoints one sweep deletes per plan (the next sweep goes on).
const SWEEP_BATCH: usize = 100;

/// What `DeleteDocument` found and deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub released: bool,
    pub snapshot: bool,
    pub checkpoint: bool,
}

/// Deletion and expiry of what documents leave behind.
#[derive(Debug)]
pub struct Retention {
    store: Store,
    documents: Arc<PodDocuments>,
    checkpoints: Option<Arc<PodCheckpoints>>,
    plans: Arc<BTreeMap<String, Plan>>,
}

impl Retention {
    pub fn new(
        store: Store,
        documents: Arc<PodDocuments>,
        checkpoints: Option<Arc<PodCheckpoints>>,
        plans: Arc<BTreeMap<String, Plan>>,
    ) -> Self {
        Self {
            store,
            documents,
            checkpoints,
            plans,
        }
    }

    /// Deletes the document: the deletion is recorded first (so that its pod, ending now,
    /// cannot save it again), then its allocation ends, then its snapshot and checkpoint go.
    pub async fn delete_document(
        &self,
        watchman: &Watchman,
        document: &str,
    ) -> Result<Deleted, ServiceError> {
        crate::service::valid_id("document_id", document)?;
        self.store.note_deleted(document, now_ms() / 1000).await?;
        let released = watchman
            .end(document, EndReason::Deleted, "the document was deleted")
            .await?;
        let snapshot = self
            .documents
            .store()
            .delete(document)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("document store: {e}")))?;
        let checkpoint = match &self.checkpoints {
            Some(c) => {
                let had = c.has_checkpoint(document).await;
                c.delete(document)
                    .await
                    .map_err(|e| ServiceError::Unavailable(format!("checkpoint store: {e}")))?;
                had
            }
            None => false,
        };
        metrics::counter!("watchman_documents_deleted_total").increment(1);
        tracing::info!(%document, released, snapshot, checkpoint, "document deleted");
        Ok(Deleted {
            released,
            snapshot,
            checkpoint,
        })
    }

    /// Deletes the checkpoints that expired under their plan's `checkpoint_ttl`, every
    /// `interval`, until `shutdown`. Any replica may run it: deleting twice is harmless.
    pub async fn expire(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let Some(checkpoints) = self.checkpoints.clone() else {
            return;
        };
        loop {
            for plan in self.plans.values() {
                if let Err(error) = self.sweep(&checkpoints, plan).await {
                    tracing::warn!(plan = %plan.name, %error, "checkpoint expiry failed; retrying next sweep");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn sweep(
        &self,
        checkpoints: &PodCheckpoints,
        plan: &Plan,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some(ttl) = plan.checkpoint_ttl else {
            return Ok(());
        };
        let now = now_ms();
        let before = now.saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        for document in self
            .store
            .checkpoints_before(&plan.name, before, SWEEP_BATCH)
            .await?
        {
            if self.store.allocation(&document).await?.is_some() {
                // In use: its pod saves it again (or its last save at the end does).
                self.store
                    .note_checkpoint(&document, &plan.name, now)
                    .await?;
                continue;
            }
            checkpoints.delete(&document).await?;
            metrics::counter!("watchman_checkpoints_expired_total", "plan" => plan.name.clone())
                .increment(1);
            tracing::info!(%document, plan = %plan.name, "checkpoint expired");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoints::Backend;
    use crate::model::{Allocation, Pod, PodState};
    use doc_store::checkpoints::CheckpointDir;

    #[tokio::test]
    async fn expired_checkpoints_go_and_those_in_use_or_recent_stay() {
        let dir = testkit::TempDir::new("retention");
        let store = Store::Memory(crate::store::MemoryStore::default());
        let docs = doc_store::DocStore::open(&dir.0.join("docs").display().to_string(), "", None)
            .await
            .unwrap();
        let documents = Arc::new(PodDocuments::new(
            session_token::SigningKey::generate(),
            docs,
            1 << 20,
        ));
        let checkpoint_dir = CheckpointDir::new(dir.0.join("ckpt"));
        let now = now_ms();
        for (doc, at) in [("old", 0), ("live", 0), ("new", now), ("other-plan", 0)] {
            checkpoint_dir.put_manifest(doc, b"{}").await.unwrap();
            let plan = if doc == "other-plan" { "keep" } else { "free" };
            store.note_checkpoint(doc, plan, at).await.unwrap();
        }
        // "live" is allocated: its pod is serving it.
        store
            .add_pod(&Pod {
                id: "p1".into(),
                plan: "free".into(),
                state: PodState::Starting,
                endpoint: "http://127.0.0.1:1".into(),
                handle: String::new(),
                created_ms: now,
                ready_ms: None,
                document: None,
                allocation: None,
            })
            .await
            .unwrap();
        store.pod_ready("p1", now, "").await.unwrap();
        let claim = store
            .claim(&Allocation {
                id: "a1".into(),
                document: "live".into(),
                plan: "free".into(),
                pod: String::new(),
                endpoint: String::new(),
                user: "ada".into(),
                created_ms: now,
                expires_ms: now + 3_600_000,
            })
            .await
            .unwrap();
        assert!(matches!(claim, crate::store::Claim::Claimed(_)));
        let plans = crate::plan::parse_plans(
            "test",
            "[plans.free]\nwarm = { ratio = 0.0, min = 0, max = 0 }\ncheckpoint_ttl = \"1h\"\n\
             [plans.keep]\nwarm = { ratio = 0.0, min = 0, max = 0 }\ncheckpoint_ttl = \"never\"\n",
        )
        .unwrap();
        let checkpoints = Arc::new(PodCheckpoints::new(
            documents.clone(),
            Backend::Dir(checkpoint_dir.clone()),
            store.clone(),
            1 << 20,
            1 << 30,
        ));
        let retention = Retention::new(
            store.clone(),
            documents,
            Some(checkpoints.clone()),
            Arc::new(plans),
        );
        for plan in retention.plans.values() {
            retention.sweep(&checkpoints, plan).await.unwrap();
        }
        assert!(!checkpoint_dir.has_checkpoint("old"));
        assert!(!store.has_checkpoint("old").await.unwrap());
        for kept in ["live", "new", "other-plan"] {
            assert!(checkpoint_dir.has_checkpoint(kept), "{kept}");
            assert!(store.has_checkpoint(kept).await.unwrap(), "{kept}");
        }
        // The one in use counts as saved now: the next sweep does not look at it again.
        assert!(
            store
                .checkpoints_before("free", now, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
