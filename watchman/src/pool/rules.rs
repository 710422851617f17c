//! What one pod's observation calls for. Pods only move forward (starting → warm → allocated
//! → ending → deleted), and a pod that ran a document's code is never warm again, so every
//! rule here either advances a pod or removes it.

use super::{Limits, Observed, PodAction};
use crate::model::{DiscardReason, EndReason, Health, KernelState, PodState};
use crate::plan::Plan;

/// The action `o` calls for, if any. `plan` is the pod's plan, `None` when the plans file no
/// longer has it.
pub(super) fn judge(
    o: &Observed,
    plan: Option<&Plan>,
    now_ms: u64,
    limits: Limits,
) -> Option<PodAction> {
    let pod = &o.pod;
    let discard = |reason, detail: &str| {
        Some(PodAction::Discard {
            pod: pod.clone(),
            reason,
            detail: detail.to_owned(),
        })
    };
    let end = |reason, detail: &str| {
        Some(PodAction::End {
            pod: pod.clone(),
            reason,
            detail: detail.to_owned(),
        })
    };
    match pod.state {
        PodState::Starting => match o.health.as_ref()? {
            Health::Ready => Some(PodAction::MarkReady {
                pod: pod.clone(),
                endpoint: o.endpoint.clone().unwrap_or_default(),
            }),
            Health::Lost(why) | Health::Preempted(why) => discard(DiscardReason::FailedStart, why),
            Health::NotReady => {
                let startup_ms =
                    u64::try_from(limits.startup_timeout.as_millis()).unwrap_or(u64::MAX);
                if now_ms.saturating_sub(pod.created_ms) > startup_ms {
                    discard(DiscardReason::FailedStart, "did not become ready in time")
                } else {
                    None
                }
            }
        },
        PodState::Warm => match o.health.as_ref()? {
            Health::Lost(why) => discard(DiscardReason::PodLost, why),
            Health::Preempted(why) => discard(DiscardReason::Preempted, why),
            Health::Ready | Health::NotReady if plan.is_none() => {
                discard(DiscardReason::PlanRemoved, "its plan no longer exists")
            }
            Health::Ready | Health::NotReady => None,
        },
        PodState::Allocated => match o.health.as_ref()? {
            Health::Lost(why) => end(EndReason::PodLost, why),
            Health::Preempted(why) => end(EndReason::Preempted, why),
            Health::Ready | Health::NotReady => {
                let (plan, usage) = (plan?, o.usage.as_ref()?);
                if usage.expires_ms.is_some_and(|at| at <= now_ms) {
                    return end(EndReason::Lifetime, "reached the plan's maximum lifetime");
                }
                let activity = usage.activity.as_ref()?;
                let idle_for = (now_ms / 1000).saturating_sub(activity.last_activity);
                let idle = activity.connections == 0
                    && activity.kernel_state != KernelState::Busy
                    && idle_for >= plan.idle_timeout.as_secs();
                if idle {
                    end(EndReason::Idle, &format!("no activity for {idle_for} s"))
                } else {
                    None
                }
            }
        },
        PodState::Ending => Some(PodAction::Delete { pod: pod.clone() }),
    }
}
