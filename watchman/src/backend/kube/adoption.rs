//! Pods of this pool that the store does not know: after a restart with the memory store,
//! or a crash between creating a pod and recording it. Healthy starting or warm pods of a
//! known plan are adopted (a warm kernel is worth keeping); every other unknown pod is deleted,
//! because it may have run a document's code, and such a pod is never given to another one.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod as KubePod;

use super::{KubeBackend, keys, label};
use crate::model::{Pod, PodState, now_ms};
use crate::plan::Plan;

/// What to do with a pod the store does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Record it (as starting: the next pass checks it is ready).
    Adopt(Pod),
    /// Delete it.
    Delete,
}

/// The verdict on the unknown pod `k`; `lost`: the watch saw it end.
pub(super) fn judge(
    k: &KubePod,
    name: &str,
    plans: &BTreeMap<String, Plan>,
    lost: bool,
) -> Verdict {
    let plan = label(k, keys::PLAN).filter(|p| plans.contains_key(*p));
    let state = label(k, keys::STATE).and_then(PodState::from_label);
    // A pod that carries a document was allocated, whatever its (possibly lagging) state
    // label says.
    let bound = k
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(keys::DOCUMENT) || a.contains_key(keys::ALLOCATION));
    let healthy = !bound && !lost;
    match plan {
        Some(plan) if matches!(state, Some(PodState::Starting | PodState::Warm)) && healthy => {
            Verdict::Adopt(Pod {
                id: name.to_owned(),
                plan: plan.to_owned(),
                state: PodState::Starting,
                endpoint: String::new(),
                handle: k.metadata.uid.clone().unwrap_or_default(),
                created_ms: k
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
                    .unwrap_or_else(now_ms),
                ready_ms: None,
                document: None,
                allocation: None,
            })
        }
        _ => Verdict::Delete,
    }
}

impl KubeBackend {
    /// Adopts this deployment's starting and warm pods that `known` does not account for and
    /// deletes every other unknown pod. Nothing is judged before the watch has listed every
    /// pod: a pod missing from a partial cache proves nothing.
    pub(in crate::backend) async fn collect_garbage(
        &self,
        known: &[Pod],
        plans: &BTreeMap<String, Plan>,
    ) -> Vec<Pod> {
        if !self.synced() {
            return Vec::new();
        }
        let known: HashSet<&str> = known.iter().map(|p| p.id.as_str()).collect();
        let mut adopted = Vec::new();
        for k in self.watch().pods() {
            let Some(name) = k.metadata.name.as_deref() else {
                continue;
            };
            if known.contains(name) || k.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let lost = self.watch().loss(name).is_some();
            match judge(&k, name, plans, lost) {
                Verdict::Adopt(pod) => {
                    tracing::info!(pod = name, plan = %pod.plan, "adopting a pod the store does not know");
                    adopted.push(pod);
                }
                Verdict::Delete => {
                    let state = label(&k, keys::STATE);
                    tracing::warn!(pod = name, ?state, "deleting a pod the store does not know");
                    metrics::counter!("watchman_pods_collected_total").increment(1);
                    self.delete(name).await;
                }
            }
        }
        adopted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn unknown(labels: serde_json::Value, annotations: serde_json::Value) -> KubePod {
        let mut pod = json!({"metadata": {
            "name": "free-1", "uid": "u-1", "creationTimestamp": "2025-01-01T00:00:00Z"
        }});
        pod["metadata"]["labels"] = labels;
        pod["metadata"]["annotations"] = annotations;
        serde_json::from_value(pod).unwrap()
    }

    #[test]
    fn only_healthy_unbound_starting_or_warm_pods_of_a_known_plan_are_adopted() {
        let plans = crate::plan::parse_plans(
            "test",
            "[plans.free]\nwarm = { ratio = 0.0, min = 1, max = 1 }\n",
        )
        .unwrap();
        let labels = |plan: &str, state: &str| json!({keys::POOL: "p", keys::PLAN: plan, keys::STATE: state});
        let none = json!({});
        let bound = json!({keys::DOCUMENT: "doc-1"});
        let cases = [
            (
                "warm",
                unknown(labels("free", "warm"), none.clone()),
                false,
                true,
            ),
            (
                "starting",
                unknown(labels("free", "starting"), none.clone()),
                false,
                true,
            ),
            (
                "allocated",
                unknown(labels("free", "allocated"), none.clone()),
                false,
                false,
            ),
            (
                "ending",
                unknown(labels("free", "ending"), none.clone()),
                false,
                false,
            ),
            (
                "unlabelled state",
                unknown(json!({keys::PLAN: "free"}), none.clone()),
                false,
                false,
            ),
            (
                "unknown plan",
                unknown(labels("gold", "warm"), none.clone()),
                false,
                false,
            ),
            (
                "warm label but bound to a document",
                unknown(labels("free", "warm"), bound),
                false,
                false,
            ),
            (
                "warm label but an allocation annotation",
                unknown(labels("free", "warm"), json!({keys::ALLOCATION: "a-1"})),
                false,
                false,
            ),
            (
                "warm but lost",
                unknown(labels("free", "warm"), none.clone()),
                true,
                false,
            ),
        ];
        for (what, pod, lost, adopt) in cases {
            match judge(&pod, "free-1", &plans, lost) {
                Verdict::Adopt(p) => {
                    assert!(adopt, "{what}: adopted");
                    assert_eq!(
                        (p.id.as_str(), p.plan.as_str(), p.state, p.handle.as_str()),
                        ("free-1", "free", PodState::Starting, "u-1"),
                        "{what}"
                    );
                    assert_eq!(p.created_ms, 1_735_689_600_000, "{what}");
                }
                Verdict::Delete => assert!(!adopt, "{what}: deleted"),
            }
        }
    }
}
