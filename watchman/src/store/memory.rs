use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{Claim, StateCounts, StoreError};
use crate::model::{Allocation, EndReason, Ended, Pod, PodState, now_ms};

/// Single-replica store: one mutex over plain maps. The lock is never held across an await.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: BTreeMap<String, Pod>,
    by_document: HashMap<String, Allocation>,
    ended: HashMap<String, Ended>,
    /// The same records by pod.
    ended_pods: HashMap<String, Ended>,
    lease: Option<(String, u64)>,
    demand: HashMap<String, HashMap<String, u64>>,
    /// Checkpoints by document: plan, saved at (ms).
    checkpoints: HashMap<String, (String, u64)>,
    /// Deleted documents: deleted at (s), forgotten after (ms).
    deleted: HashMap<String, (u64, u64)>,
    /// Small records by (kind, scope), then id: Jupyter sessions and contents.
    records: HashMap<(String, String), BTreeMap<String, String>>,
}

impl MemoryStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the process, so recover the data instead of poisoning on.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn add_pod(&self, pod: &Pod) -> Result<(), StoreError> {
        self.lock().pods.insert(pod.id.clone(), pod.clone());
        Ok(())
    }

    pub(super) async fn pod_ready(
        &self,
        id: &str,
        at_ms: u64,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        match g.pods.get_mut(id) {
            Some(p) if p.state == PodState::Starting => {
                p.state = PodState::Warm;
                p.ready_ms = Some(at_ms);
                if !endpoint.is_empty() {
                    p.endpoint = endpoint.to_owned();
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn claim(&self, template: &Allocation) -> Result<Claim, StoreError> {
        let mut g = self.lock();
        if let Some(a) = g.by_document.get(&template.document) {
            return Ok(Claim::Existing(a.clone()));
        }
        let Some(pod) = g
            .pods
            .values_mut()
            .find(|p| p.plan == template.plan && p.state == PodState::Warm)
        else {
            return Ok(Claim::Empty);
        };
        pod.state = PodState::Allocated;
        pod.document = Some(template.document.clone());
        pod.allocation = Some(template.id.clone());
        let allocation = Allocation {
            pod: pod.id.clone(),
            endpoint: pod.endpoint.clone(),
            ..template.clone()
        };
        g.by_document
            .insert(template.document.clone(), allocation.clone());
        Ok(Claim::Claimed(allocation))
    }

    pub(super) async fn allocation(
        &self,
        document: &str,
    ) -> Result<Option<Allocation>, StoreError> {
        Ok(self.lock().by_document.get(document).cloned())
    }

    pub(super) async fn retire(&self, pod: &str) -> Result<bool, StoreError> {
        let mut g = self.lock();
        match g.pods.get_mut(pod) {
            Some(p) if matches!(p.state, PodState::Warm | PodState::Starting) => {
                p.state = PodState::Ending;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn end_pod(
        &self,
        pod: &str,
        reason: EndReason,
        detail: &str,
    ) -> Result<Option<Ended>, StoreError> {
        let mut g = self.lock();
        let Some(p) = g.pods.get_mut(pod) else {
            return Ok(None);
        };
        let was = p.state;
        p.state = PodState::Ending;
        let (Some(document), Some(allocation), PodState::Allocated) =
            (p.document.clone(), p.allocation.clone(), was)
        else {
            return Ok(None);
        };
        g.by_document.remove(&document);
        let ended = Ended {
            allocation: allocation.clone(),
            document,
            pod: pod.to_owned(),
            reason,
            detail: detail.to_owned(),
            at_ms: now_ms(),
        };
        g.ended.insert(allocation, ended.clone());
        g.ended_pods.insert(pod.to_owned(), ended.clone());
        let cutoff = now_ms().saturating_sub(3_600_000);
        g.ended.retain(|_, e| e.at_ms > cutoff);
        g.ended_pods.retain(|_, e| e.at_ms > cutoff);
        Ok(Some(ended))
    }

    pub(super) async fn ended(&self, allocation: &str) -> Result<Option<Ended>, StoreError> {
        Ok(self.lock().ended.get(allocation).cloned())
    }

    pub(super) async fn pod(&self, id: &str) -> Result<Option<Pod>, StoreError> {
        Ok(self.lock().pods.get(id).cloned())
    }

    pub(super) async fn ended_pod(&self, pod: &str) -> Result<Option<Ended>, StoreError> {
        Ok(self.lock().ended_pods.get(pod).cloned())
    }

    pub(super) async fn remove_pod(&self, id: &str) -> Result<(), StoreError> {
        self.lock().pods.remove(id);
        Ok(())
    }

    pub(super) async fn pods(&self) -> Result<Vec<Pod>, StoreError> {
        Ok(self.lock().pods.values().cloned().collect())
    }

    /// Counted under the lock: one pass over pods held in memory (microseconds for thousands).
    pub(super) async fn counts(
        &self,
        plans: &[&str],
    ) -> Result<BTreeMap<String, StateCounts>, StoreError> {
        let mut out: BTreeMap<String, StateCounts> = plans
            .iter()
            .map(|p| ((*p).to_owned(), StateCounts::default()))
            .collect();
        for p in self.lock().pods.values() {
            if let Some(c) = out.get_mut(&p.plan) {
                match p.state {
                    PodState::Warm => c.warm += 1,
                    PodState::Starting => c.starting += 1,
                    PodState::Allocated => c.allocated += 1,
                    PodState::Ending => c.ending += 1,
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub(super) async fn try_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let now = now_ms();
        match &g.lease {
            Some((h, until)) if h != holder && *until > now => Ok(false),
            _ => {
                g.lease = Some((holder.to_owned(), now + ttl_ms));
                Ok(true)
            }
        }
    }

    pub(super) async fn note_demand(
        &self,
        plan: &str,
        waiter: &str,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        self.lock()
            .demand
            .entry(plan.to_owned())
            .or_default()
            .insert(waiter.to_owned(), until_ms);
        Ok(())
    }

    pub(super) async fn demand(&self, plan: &str) -> Result<u32, StoreError> {
        let mut g = self.lock();
        let now = now_ms();
        let Some(waiters) = g.demand.get_mut(plan) else {
            return Ok(0);
        };
        waiters.retain(|_, until| *until > now);
        Ok(u32::try_from(waiters.len()).unwrap_or(u32::MAX))
    }

    pub(super) async fn note_checkpoint(
        &self,
        document: &str,
        plan: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.lock()
            .checkpoints
            .insert(document.to_owned(), (plan.to_owned(), at_ms));
        Ok(())
    }

    pub(super) async fn has_checkpoint(&self, document: &str) -> Result<bool, StoreError> {
        Ok(self.lock().checkpoints.contains_key(document))
    }

    pub(super) async fn checkpoints_before(
        &self,
        plan: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let g = self.lock();
        let mut old: Vec<(u64, &String)> = g
            .checkpoints
            .iter()
            .filter(|(_, (p, at))| p == plan && *at < before_ms)
            .map(|(d, (_, at))| (*at, d))
            .collect();
        old.sort();
        Ok(old
            .into_iter()
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect())
    }

    pub(super) async fn forget_checkpoint(&self, document: &str) -> Result<(), StoreError> {
        self.lock().checkpoints.remove(document);
        Ok(())
    }

    pub(super) async fn note_deleted(
        &self,
        document: &str,
        at_secs: u64,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        let now = now_ms();
        g.deleted.retain(|_, (_, until)| *until > now);
        g.deleted
            .insert(document.to_owned(), (at_secs, now + super::DELETED_FOR_MS));
        Ok(())
    }

    pub(super) async fn put_record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
        json: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let set = g
            .records
            .entry((kind.to_owned(), scope.to_owned()))
            .or_default();
        if !set.contains_key(id) && set.len() >= max {
            return Ok(false);
        }
        set.insert(id.to_owned(), json.to_owned());
        Ok(true)
    }

    pub(super) async fn record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .records
            .get(&(kind.to_owned(), scope.to_owned()))
            .and_then(|set| set.get(id).cloned()))
    }

    pub(super) async fn records(
        &self,
        kind: &str,
        scope: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .lock()
            .records
            .get(&(kind.to_owned(), scope.to_owned()))
            .map(|set| set.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    pub(super) async fn delete_record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        let key = (kind.to_owned(), scope.to_owned());
        let removed = g
            .records
            .get_mut(&key)
            .is_some_and(|set| set.remove(id).is_some());
        if g.records.get(&key).is_some_and(BTreeMap::is_empty) {
            g.records.remove(&key);
        }
        Ok(removed)
    }

    pub(super) async fn deleted_at(&self, document: &str) -> Result<Option<u64>, StoreError> {
        let now = now_ms();
        Ok(self
            .lock()
            .deleted
            .get(document)
            .filter(|(_, until)| *until > now)
            .map(|(at, _)| *at))
    }
}
