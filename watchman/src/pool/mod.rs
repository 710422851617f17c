//! The pool's decisions, with no I/O: given what the reconciler observed (every pod with its
//! health and, when due, its use), the plans, the callers waiting for a cold pod and the
//! creation budget, [`decide`] says what to do: mark pods ready, end allocations, discard or
//! delete pods, retire a plan's surplus, start pods. The reconciler
//! ([`crate::service::reconciler`]) gathers the [`Snapshot`] and carries the [`Decision`] out;
//! every rule here is unit-tested without a store, a backend or a clock.
//!
//! - [`rules`]: what one pod's observation calls for (readiness, startup timeout, loss,
//!   preemption, lifetime, idleness).
//! - [`targets`]: how many pods each plan needs (`target_warm` plus demand), how many may
//!   start now (the creation budget and the pods in flight), and which warm pods are surplus.
//! - [`budget`]: the creation rate as a token bucket.

pub mod budget;
mod rules;
mod targets;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{Activity, DiscardReason, EndReason, Health, Pod, PodState};
use crate::plan::Plan;

pub use budget::CreateBudget;
pub use targets::surplus;

/// Counts of one plan's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub warm: u32,
    pub starting: u32,
    pub allocated: u32,
    pub ending: u32,
    /// `target_warm` for the allocated count (without demand).
    pub target: u32,
}

impl PoolCounts {
    /// A plan's counts as the store keeps them, with its target.
    pub fn of(plan: &Plan, c: crate::store::StateCounts) -> Self {
        Self {
            warm: c.warm,
            starting: c.starting,
            allocated: c.allocated,
            ending: c.ending,
            target: plan.target_warm(c.allocated),
        }
    }
}

/// Counts and targets of every plan, from the pods' recorded states. Pods of plans no longer
/// in the file are not counted.
pub fn counts<'p>(
    plans: &BTreeMap<String, Plan>,
    pods: impl IntoIterator<Item = &'p Pod>,
) -> BTreeMap<String, PoolCounts> {
    let mut out: BTreeMap<String, PoolCounts> = plans
        .keys()
        .map(|k| (k.clone(), PoolCounts::default()))
        .collect();
    for p in pods {
        if let Some(c) = out.get_mut(&p.plan) {
            match p.state {
                PodState::Warm => c.warm += 1,
                PodState::Starting => c.starting += 1,
                PodState::Allocated => c.allocated += 1,
                PodState::Ending => c.ending += 1,
            }
        }
    }
    for (name, c) in &mut out {
        if let Some(plan) = plans.get(name) {
            c.target = plan.target_warm(c.allocated);
        }
    }
    out
}

/// One pod as the reconciler observed it this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub pod: Pod,
    /// What the backend's probe found; `None` for pods that are not probed (ending ones).
    pub health: Option<Health>,
    /// A ready starting pod's address, when the backend assigns it (Kubernetes: the pod IP);
    /// `None`: the recorded one stands.
    pub endpoint: Option<String>,
    /// An allocated pod's use, when its periodic check is due (`--activity-interval`).
    pub usage: Option<Usage>,
}

/// What the reconciler read about an allocated pod's use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// When the document's allocation reaches the plan's maximum lifetime (ms since the
    /// epoch); `None`: no live allocation was found.
    pub expires_ms: Option<u64>,
    /// Middleman's report; `None`: not asked (the allocation had expired) or no answer.
    pub activity: Option<Activity>,
}

/// What counts against `--max-concurrent-starts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// Pods not ready yet. Local backend: a create call returns once the process is spawned,
    /// and every starting pod is a kernel booting on this host's CPUs, so a refill must not
    /// boot them all at once.
    StartingPods,
    /// Create calls only (the reconciler makes them in batches of that size). Kubernetes: a
    /// starting pod boots on its node, not here; what needs bounding is the API calls, and the
    /// rate (`--pod-create-rate`) bounds the rest.
    CreateCalls,
}

/// The reconciler's fixed limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A starting pod not ready after this long is replaced.
    pub startup_timeout: Duration,
    /// `--max-concurrent-starts`.
    pub max_in_flight: usize,
    pub in_flight: InFlight,
}

/// Everything a decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// Wall clock of the pass, ms since the epoch.
    pub now_ms: u64,
    pub plans: &'a BTreeMap<String, Plan>,
    /// Every pod the store records, as observed.
    pub pods: &'a [Observed],
    /// Callers waiting for a cold pod, by plan.
    pub demand: &'a BTreeMap<String, u32>,
    /// Pod creations the rate allows now (see [`CreateBudget`]).
    pub creations: usize,
    pub limits: Limits,
}

/// What to do with one existing pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// A starting pod is ready: it becomes warm, at `endpoint` if not empty.
    MarkReady { pod: Pod, endpoint: String },
    /// Remove a pod that serves no document (see [`DiscardReason::healthy`]).
    Discard {
        pod: Pod,
        reason: DiscardReason,
        detail: String,
    },
    /// End the allocation on the pod; the pod becomes ending and a later pass deletes it.
    End {
        pod: Pod,
        reason: EndReason,
        detail: String,
    },
    /// Delete an ending pod and forget it.
    Delete { pod: Pod },
}

/// The outcome of one pass's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// What to do with existing pods; the actions are independent of each other.
    pub pods: Vec<PodAction>,
    /// Plans with more warm and starting pods than they need: their surplus is chosen by
    /// [`surplus`] on a fresh read of the store, because an Allocate may have claimed warm
    /// pods since this snapshot was read (retiring by a stale count could empty the buffer).
    pub retire_surplus: Vec<String>,
    /// One plan name per pod to start, plans taking turns when the budget is short.
    pub starts: Vec<String>,
    /// Counts and targets of every plan in this snapshot (for the pool gauges).
    pub counts: BTreeMap<String, PoolCounts>,
}

/// Decides one reconcile pass.
///
/// Counts come from the snapshot's recorded states: pods allocated, ended or discarded since
/// it was read only make a plan look fuller than it is, so a pass may start too few (the next
/// one catches up) but never too many.
pub fn decide(s: &Snapshot<'_>) -> Decision {
    let mut pods = Vec::new();
    let mut still_starting = 0usize;
    for o in s.pods {
        let action = rules::judge(o, s.plans.get(&o.pod.plan), s.now_ms, s.limits);
        if o.pod.state == PodState::Starting && action.is_none() {
            still_starting += 1;
        }
        pods.extend(action);
    }
    let counts = counts(s.plans, s.pods.iter().map(|o| &o.pod));
    let targets::Outcome {
        starts,
        retire_surplus,
    } = targets::plan(&counts, s.demand, s.creations, s.limits, still_starting);
    Decision {
        pods,
        retire_surplus,
        starts,
        counts,
    }
}
