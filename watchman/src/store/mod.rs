//! Where pods and allocations live. Allocation is one atomic step here (a Lua script in Redis, a
//! mutex in memory), never a Kubernetes write, so any replica can allocate in milliseconds.

mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::{RedisOptions, RedisStore};

use std::collections::BTreeMap;

use crate::model::{Allocation, EndReason, Ended, Pod};

/// How long a deletion is remembered (longer than any pod's shutdown grace).
const DELETED_FOR_MS: u64 = 3_600_000;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A stored record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Result of [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The document already had this allocation.
    Existing(Allocation),
    /// A warm pod was bound to the document.
    Claimed(Allocation),
    /// The plan has no warm pod.
    Empty,
}

/// How many of a plan's pods are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub warm: u32,
    pub starting: u32,
    pub allocated: u32,
    pub ending: u32,
}

/// The store in use: memory for a single replica, Redis for several.
#[derive(Debug, Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s) => $e,
            Store::Redis($s) => $e,
        }
    };
}

impl Store {
    /// Records a new pod (normally `Starting`).
    pub async fn add_pod(&self, pod: &Pod) -> Result<(), StoreError> {
        dispatch!(self, s => s.add_pod(pod).await)
    }
    /// Starting → Warm, at `endpoint` when it is not empty (a Kubernetes pod's address is
    /// known once it runs). False if the pod is not starting (ended meanwhile).
    pub async fn pod_ready(
        &self,
        id: &str,
        at_ms: u64,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.pod_ready(id, at_ms, endpoint).await)
    }
    /// Atomically: the document's live allocation, or a warm pod of `plan` bound to it using
    /// `template` (its `pod` and `endpoint` are filled in), or `Empty`.
    pub async fn claim(&self, template: &Allocation) -> Result<Claim, StoreError> {
        dispatch!(self, s => s.claim(template).await)
    }
    /// The document's live allocation.
    pub async fn allocation(&self, document: &str) -> Result<Option<Allocation>, StoreError> {
        dispatch!(self, s => s.allocation(document).await)
    }
    /// Ends whatever the pod was doing: state Ending, the document unbound, the end recorded.
    pub async fn end_pod(
        &self,
        pod: &str,
        reason: EndReason,
        detail: &str,
    ) -> Result<Option<Ended>, StoreError> {
        dispatch!(self, s => s.end_pod(pod, reason, detail).await)
    }
    /// Warm or starting → Ending, atomically; false if the pod was claimed (or ended)
    /// meanwhile, so a surplus pod is never taken from under a fresh allocation.
    pub async fn retire(&self, pod: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.retire(pod).await)
    }
    /// How an allocation ended, if it did (kept for an hour).
    pub async fn ended(&self, allocation: &str) -> Result<Option<Ended>, StoreError> {
        dispatch!(self, s => s.ended(allocation).await)
    }
    /// One pod.
    pub async fn pod(&self, id: &str) -> Result<Option<Pod>, StoreError> {
        dispatch!(self, s => s.pod(id).await)
    }
    /// How the allocation on `pod` ended, if it did (kept for an hour).
    pub async fn ended_pod(&self, pod: &str) -> Result<Option<Ended>, StoreError> {
        dispatch!(self, s => s.ended_pod(pod).await)
    }
    /// Forgets a pod (after the backend deleted it).
    pub async fn remove_pod(&self, id: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.remove_pod(id).await)
    }
    /// Pods by state for each of `plans`, without reading the pods (the store keeps counts).
    pub async fn counts(
        &self,
        plans: &[&str],
    ) -> Result<BTreeMap<String, StateCounts>, StoreError> {
        dispatch!(self, s => s.counts(plans).await)
    }
    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }
    /// Every pod (the reconciler's pass; nothing on a request's path).
    pub async fn pods(&self) -> Result<Vec<Pod>, StoreError> {
        dispatch!(self, s => s.pods().await)
    }
    /// Takes or renews the reconciler lease for `ttl_ms`; true when `holder` holds it.
    pub async fn try_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.try_lease(holder, ttl_ms).await)
    }
    /// Records that a caller is waiting for a pod of `plan` until `until_ms` (cold launches).
    pub async fn note_demand(
        &self,
        plan: &str,
        waiter: &str,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.note_demand(plan, waiter, until_ms).await)
    }
    /// Callers still waiting for a pod of `plan`.
    pub async fn demand(&self, plan: &str) -> Result<u32, StoreError> {
        dispatch!(self, s => s.demand(plan).await)
    }
    /// Records that `document`'s checkpoint (of a pod of `plan`) was saved at `at_ms`: the
    /// index behind `Allocation.resumes` and per-plan expiry (the checkpoint itself is in the
    /// checkpoint store).
    pub async fn note_checkpoint(
        &self,
        document: &str,
        plan: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.note_checkpoint(document, plan, at_ms).await)
    }
    /// Whether `document` has a checkpoint on record.
    pub async fn has_checkpoint(&self, document: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.has_checkpoint(document).await)
    }
    /// Up to `limit` documents of `plan` whose checkpoint was last saved before `before_ms`.
    pub async fn checkpoints_before(
        &self,
        plan: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.checkpoints_before(plan, before_ms, limit).await)
    }
    /// Drops `document`'s checkpoint from the index.
    pub async fn forget_checkpoint(&self, document: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.forget_checkpoint(document).await)
    }
    /// Records that `document` was deleted at `at_secs`: for the next hour, pods bound to it
    /// before then may no longer save its snapshot or checkpoint (a pod ending at that moment
    /// would otherwise bring them back).
    pub async fn note_deleted(&self, document: &str, at_secs: u64) -> Result<(), StoreError> {
        dispatch!(self, s => s.note_deleted(document, at_secs).await)
    }
    /// When `document` was deleted, within the last hour.
    pub async fn deleted_at(&self, document: &str) -> Result<Option<u64>, StoreError> {
        dispatch!(self, s => s.deleted_at(document).await)
    }
    /// Keeps record `id` of `kind` (Jupyter sessions, contents) in `scope` (a user's or a
    /// document's), as JSON; false when the scope already holds `max` records of that kind and
    /// this is a new one.
    pub async fn put_record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
        json: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.put_record(kind, scope, id, json, max).await)
    }
    /// Record `id` of `kind` in `scope`.
    pub async fn record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.record(kind, scope, id).await)
    }
    /// Every record of `kind` in `scope`, by id.
    pub async fn records(
        &self,
        kind: &str,
        scope: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, s => s.records(kind, scope).await)
    }
    /// Forgets record `id` of `kind` in `scope`; whether it was there.
    pub async fn delete_record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_record(kind, scope, id).await)
    }
}
