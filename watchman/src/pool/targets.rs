//! How many pods each plan needs and may get now, and which warm pods are surplus.
//!
//! A plan needs `target_warm(allocated)` warm or starting pods (see [`Plan::target_warm`])
//! plus one per caller waiting for a cold pod. Pods are started up to the creation budget and
//! the room left in flight; when that is short, plans take turns so that none starves.

use std::collections::BTreeMap;

use super::{InFlight, Limits, PoolCounts, counts};
use crate::model::{Pod, PodState};
use crate::plan::Plan;

/// Starts and retirements of one pass.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) starts: Vec<String>,
    pub(super) retire_surplus: Vec<String>,
}

/// `still_starting`: pods that will still be starting once this pass's actions are done.
pub(super) fn plan(
    counts: &BTreeMap<String, PoolCounts>,
    demand: &BTreeMap<String, u32>,
    creations: usize,
    limits: Limits,
    still_starting: usize,
) -> Outcome {
    let mut wanted: Vec<(&str, usize)> = Vec::new();
    let mut retire_surplus = Vec::new();
    for (name, c) in counts {
        let target = c
            .target
            .saturating_add(demand.get(name).copied().unwrap_or(0));
        let have = c.warm + c.starting;
        if have < target {
            wanted.push((name, (target - have) as usize));
        } else if c.warm > 0 && have > target {
            retire_surplus.push(name.clone());
        }
    }
    let total: usize = wanted.iter().map(|(_, n)| n).sum();
    let room = match limits.in_flight {
        InFlight::StartingPods => limits.max_in_flight.max(1).saturating_sub(still_starting),
        InFlight::CreateCalls => usize::MAX,
    };
    let allowed = total.min(creations).min(room);
    Outcome {
        starts: take_turns(&wanted, allowed),
        retire_surplus,
    }
}

/// `allowed` plan names out of `wanted` (plan, count): every plan's pods in turn when all fit,
/// else one pod of each plan per round, so that every plan gets its share of a short budget.
fn take_turns(wanted: &[(&str, usize)], allowed: usize) -> Vec<String> {
    let total: usize = wanted.iter().map(|(_, n)| n).sum();
    if allowed >= total {
        return wanted
            .iter()
            .flat_map(|(plan, n)| std::iter::repeat_n((*plan).to_owned(), *n))
            .collect();
    }
    let mut left: Vec<(&str, usize)> = wanted.to_vec();
    let mut out = Vec::with_capacity(allowed);
    while out.len() < allowed {
        for (plan, n) in &mut left {
            if out.len() == allowed {
                break;
            }
            if *n > 0 {
                *n -= 1;
                out.push((*plan).to_owned());
            }
        }
    }
    out
}

/// The warm pods of `plan` to retire, judged on `pods` as just read from the store: as many as
/// the plan has above its target (with `demand` waiting callers), never more than are warm.
pub fn surplus<'p>(
    plan: &str,
    plans: &BTreeMap<String, Plan>,
    pods: &'p [Pod],
    demand: u32,
) -> Vec<&'p Pod> {
    let fresh = counts(plans, pods).remove(plan).unwrap_or_default();
    let have = fresh.warm + fresh.starting;
    let target = fresh.target.saturating_add(demand);
    let n = have.saturating_sub(target).min(fresh.warm) as usize;
    pods.iter()
        .filter(|p| p.plan == plan && p.state == PodState::Warm)
        .take(n)
        .collect()
}
