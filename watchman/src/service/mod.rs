//! Watchman's logic, independent of gRPC:
//!
//! - [`allocator`]: allocation (one atomic store step, a wait for a cold pod up to the
//!   caller's deadline) and session tokens; any replica serves it.
//! - [`reconciler`]: the loop that keeps every plan at its target, run by the replica that
//!   wins the [`election`]; its decisions are the pure [`crate::pool`]'s.
//! - [`election`]: the store's lease or a Kubernetes Lease, behind one type.
//! - [`Watchman`]: the handle the gRPC and HTTP boundaries hold.

pub mod allocator;
pub mod election;
mod error;
pub mod reconciler;

pub(crate) use allocator::valid_id;
pub use allocator::{AllocationRequest, Allocator, Granted};
pub use election::{Election, ElectionError};
pub use error::ServiceError;
pub use reconciler::{Reconciler, ReconcilerStatus};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use session_token::{Role, SigningKey};

use crate::backend::Backend;
use crate::model::{Allocation, DiscardReason, EndReason, Ended};
use crate::plan::Plan;
use crate::pool::PoolCounts;
use crate::store::Store;

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_wait: Duration,
    pub max_wait: Duration,
    pub token_ttl: Duration,
    pub lease_ttl: Duration,
    pub reconcile_interval: Duration,
    pub pod_startup_timeout: Duration,
    /// Pods in flight at once (see [`crate::pool::InFlight`]), and the creation budget's burst.
    pub max_concurrent_starts: usize,
    /// Pods created per second at most (a token bucket, see [`crate::pool::CreateBudget`]).
    pub pod_create_rate: f64,
    /// How often an allocated pod's activity and lifetime are checked.
    pub activity_interval: Duration,
    /// Plans whose pods are not started because this host cannot give their sandbox level,
    /// with why; Allocate for them fails with that reason.
    pub refused_plans: BTreeMap<String, String>,
}

/// What [`Watchman::resolve_pod`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    Live { endpoint: String, document: String },
    Ended(Ended),
    Unknown,
}

/// Cheap-to-clone handle on what the boundaries need: allocation, pool counts, and (for
/// development and tests) deleting every pod.
#[derive(Debug, Clone)]
pub struct Watchman {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    allocator: Allocator,
    plans: Arc<BTreeMap<String, Plan>>,
    store: Store,
    backend: Backend,
}

impl Watchman {
    pub fn new(
        plans: Arc<BTreeMap<String, Plan>>,
        store: Store,
        backend: Backend,
        key: SigningKey,
        settings: &Settings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                allocator: Allocator::new(plans.clone(), store.clone(), key, settings),
                plans,
                store,
                backend,
            }),
        }
    }

    pub fn plans(&self) -> &BTreeMap<String, Plan> {
        &self.inner.plans
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// See [`Allocator::can_run`].
    pub fn can_run(&self, plan: &str) -> bool {
        self.inner.allocator.can_run(plan)
    }

    /// Middleman's `/status` of a pod at `endpoint` (kernel state, connections, last activity),
    /// if it answers within 2 s.
    pub async fn pod_status(&self, endpoint: &str) -> Option<serde_json::Value> {
        crate::backend::pod_status(endpoint).await
    }

    /// See [`Allocator::allocate`].
    pub async fn allocate(&self, request: &AllocationRequest<'_>) -> Result<Granted, ServiceError> {
        self.inner.allocator.allocate(request).await
    }

    /// See [`Allocator::release`].
    pub async fn release(&self, document: &str) -> Result<bool, ServiceError> {
        self.inner.allocator.release(document).await
    }

    /// See [`Allocator::end`].
    pub async fn end(
        &self,
        document: &str,
        reason: crate::model::EndReason,
        detail: &str,
    ) -> Result<bool, ServiceError> {
        self.inner.allocator.end(document, reason, detail).await
    }

    /// See [`Allocator::get`].
    pub async fn get(&self, document: &str) -> Result<Allocation, ServiceError> {
        self.inner.allocator.get(document).await
    }

    /// See [`Allocator::ended`].
    pub async fn ended(&self, id: &str) -> Result<Option<Ended>, ServiceError> {
        self.inner.allocator.ended(id).await
    }

    /// Where `pod` is, for the gateway: its Middleman while it serves a document, how its
    /// allocation ended once it did, or `Unknown` (no such pod, or one that never served a
    /// document: no token can name it).
    pub async fn resolve_pod(&self, pod: &str) -> Result<Resolved, ServiceError> {
        allocator::valid_id("pod", pod)?;
        let store = &self.inner.store;
        if let Some(p) = store.pod(pod).await?
            && p.state == crate::model::PodState::Allocated
            && let Some(document) = p.document
        {
            return Ok(Resolved::Live {
                endpoint: p.endpoint,
                document,
            });
        }
        Ok(match store.ended_pod(pod).await? {
            Some(ended) => Resolved::Ended(ended),
            None => Resolved::Unknown,
        })
    }

    /// See [`Allocator::mint_for`].
    pub async fn mint_for(
        &self,
        document: &str,
        user: &str,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<(Allocation, String, u64), ServiceError> {
        self.inner
            .allocator
            .mint_for(document, user, name, role, ttl)
            .await
    }

    /// See [`Allocator::pool_counts`].
    pub async fn pool_counts(&self) -> Result<BTreeMap<String, PoolCounts>, ServiceError> {
        self.inner.allocator.pool_counts().await
    }

    /// Deletes every pod this replica knows of (used by tests and `--delete-pods-on-exit`).
    pub async fn delete_all_pods(&self) -> Result<(), ServiceError> {
        let inner = &self.inner;
        let pods = inner.store.pods().await?;
        join_all(pods.iter().map(|p| async move {
            inner.backend.delete(p).await;
            let _ = inner.store.remove_pod(&p.id).await;
        }))
        .await;
        Ok(())
    }
}

/// Ends whatever allocation pod `pod` (of `plan`) holds, recording why; the pod becomes ending
/// and the reconciler deletes it. `None` if it held none.
pub(crate) async fn end_allocation(
    store: &Store,
    pod: &str,
    plan: &str,
    reason: EndReason,
    detail: &str,
) -> Result<Option<Ended>, ServiceError> {
    let ended = store.end_pod(pod, reason, detail).await?;
    if ended.is_some() {
        metrics::counter!("watchman_pods_ended_total", "plan" => plan.to_owned(), "reason" => reason.label()).increment(1);
        tracing::info!(pod, reason = reason.label(), detail, "allocation ended");
    }
    Ok(ended)
}

/// Creates every counter that only moves on rare events at zero, so that dashboards and
/// `increase()` in alerts see the first event.
pub fn register_metrics(plans: &[String]) {
    let reasons: BTreeSet<&str> = EndReason::ALL
        .map(EndReason::label)
        .into_iter()
        .chain(DiscardReason::ALL.map(DiscardReason::label))
        .collect();
    for op in ["create", "delete", "patch"] {
        metrics::counter!("watchman_kube_api_errors_total", "op" => op).increment(0);
    }
    metrics::counter!("watchman_kube_watch_errors_total").increment(0);
    metrics::counter!("watchman_pods_collected_total").increment(0);
    metrics::counter!("watchman_reconcile_timeouts_total").increment(0);
    for op in ["load", "save"] {
        metrics::counter!("watchman_pod_document_requests_total", "op" => op).increment(0);
    }
    for reason in ["bad_credential", "bad_binding", "store_unavailable"] {
        metrics::counter!("watchman_pod_document_refusals_total", "reason" => reason).increment(0);
    }
    for plan in plans {
        metrics::counter!("watchman_pods_adopted_total", "plan" => plan.clone()).increment(0);
        metrics::counter!("watchman_pod_start_failures_total", "plan" => plan.clone()).increment(0);
        for reason in &reasons {
            metrics::counter!("watchman_pods_ended_total", "plan" => plan.clone(), "reason" => *reason)
                .increment(0);
        }
    }
}
