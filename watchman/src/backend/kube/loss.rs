//! How a pod ended, read from what the watch delivers (pure: no API calls, unit-tested).
//!
//! The distinction matters to the caller: `PREEMPTED` means the platform took the pod away
//! (spot reclaim, drain, eviction, node loss) and the document should simply be reopened;
//! `POD_LOST` means the pod itself failed or was removed by someone else, which may be the
//! document's own doing (filling its disk, crashing its container). Kubernetes marks the first
//! kind with a `DisruptionTarget` condition (reason `PreemptionByScheduler`,
//! `DeletionByTaintManager`, `EvictionByEvictionAPI`, `DeletionByPodGC`,
//! `TerminationByKubelet`) before it deletes the pod; the second shows as a failed phase or a
//! deletion without that condition.

use k8s_openapi::api::core::v1::Pod as KubePod;

/// How a pod ended, with the detail shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Loss {
    /// Taken away by the platform.
    Preempted(String),
    /// Failed, or deleted from outside Watchman.
    Lost(String),
}

/// What a watch event says about how `pod` ended, if it did; `deleted`: the event is the
/// object's deletion.
pub(super) fn observed(pod: &KubePod, deleted: bool) -> Option<Loss> {
    classify(pod)
        .or_else(|| deleted.then(|| Loss::Lost("the pod was deleted from outside Watchman".into())))
}

/// What ended a pod, if anything did.
fn classify(pod: &KubePod) -> Option<Loss> {
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    if let Some(c) = conditions
        .iter()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    {
        let reason = c.reason.as_deref().unwrap_or("Disrupted");
        let message = c.message.as_deref().unwrap_or("");
        let pod_message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
        if reason == "TerminationByKubelet" && storage_eviction(&format!("{message} {pod_message}"))
        {
            return Some(Loss::Lost(format!(
                "evicted for its own storage use: {pod_message}"
            )));
        }
        return Some(Loss::Preempted(
            format!("{reason}: {message}")
                .trim_end_matches(": ")
                .to_owned(),
        ));
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    if phase == "Failed" || phase == "Succeeded" {
        let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
        let exit = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| {
                cs.iter().find_map(|c| {
                    let t = c.state.as_ref()?.terminated.as_ref()?;
                    Some(format!(
                        "container {} exited with {}{}",
                        c.name,
                        t.exit_code,
                        t.reason
                            .as_deref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ))
                })
            })
            .unwrap_or_default();
        let what = if reason == "Evicted" {
            let message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
            // The kubelet evicts a pod over its own ephemeral-storage or emptyDir limit: that
            // is the document's code filling the disk, not the platform taking the pod.
            return Some(if storage_eviction(message) {
                Loss::Lost(format!("evicted for its own storage use: {message}"))
            } else {
                Loss::Preempted(format!("evicted: {message}"))
            });
        } else {
            format!("pod {}", phase.to_lowercase())
        };
        return Some(Loss::Lost(
            [what, reason.to_owned(), exit]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": "),
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Loss::Lost("the pod is being deleted".into()));
    }
    None
}

/// Whether a kubelet eviction message is about the pod's own storage limits.
fn storage_eviction(message: &str) -> bool {
    message.contains("ephemeral local storage usage exceeds")
        || message.contains("exceeds the limit")
        || message.contains("emptyDir usage exceeds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value, deleting: bool) -> KubePod {
        let mut pod = json!({"metadata": {"name": "free-1"}});
        if deleting {
            pod["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        pod["status"] = status;
        serde_json::from_value(pod).unwrap()
    }

    fn disruption(reason: Option<&str>, message: Option<&str>, status: &str) -> serde_json::Value {
        let mut c = json!({"type": "DisruptionTarget", "status": status});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        c
    }

    fn terminated(code: i32, reason: &str) -> serde_json::Value {
        json!([{
            "name": "middleman", "image": "m", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": reason}}
        }])
    }

    #[test]
    fn watch_events_give_the_reason_and_the_detail() {
        let running =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        let storage =
            "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi.";
        let emptydir = "Usage of EmptyDir volume \"work\" exceeds the limit \"1Gi\".";
        let memory = "The node was low on resource: memory.";
        let preempted = |s: &str| Some(Loss::Preempted(s.to_owned()));
        let lost = |s: &str| Some(Loss::Lost(s.to_owned()));
        let cases: Vec<(&str, KubePod, bool, Option<Loss>)> = vec![
            ("running", pod(running.clone(), false), false, None),
            (
                "deleted by someone else",
                pod(running.clone(), false),
                true,
                lost("the pod was deleted from outside Watchman"),
            ),
            (
                "being deleted",
                pod(running.clone(), true),
                false,
                lost("the pod is being deleted"),
            ),
            (
                "evicted through the Eviction API (a drain, the spot termination handler)",
                pod(
                    json!({"phase": "Running", "conditions": [disruption(
                        Some("EvictionByEvictionAPI"),
                        Some("Eviction API: evicting"),
                        "True"
                    )]}),
                    true,
                ),
                true,
                preempted("EvictionByEvictionAPI: Eviction API: evicting"),
            ),
            (
                "its node went away (no message)",
                pod(
                    json!({"conditions": [disruption(Some("DeletionByPodGC"), None, "True")]}),
                    false,
                ),
                false,
                preempted("DeletionByPodGC"),
            ),
            (
                "a disruption without a reason",
                pod(
                    json!({"conditions": [disruption(None, Some("node drained"), "True")]}),
                    false,
                ),
                false,
                preempted("Disrupted: node drained"),
            ),
            (
                "a disruption condition that is not true",
                pod(
                    json!({"phase": "Running", "conditions": [disruption(Some("DeletionByTaintManager"), None, "False")]}),
                    false,
                ),
                false,
                None,
            ),
            (
                "terminated by the kubelet for its own storage use",
                pod(
                    json!({"message": storage, "conditions": [disruption(Some("TerminationByKubelet"), Some("evicting"), "True")]}),
                    false,
                ),
                false,
                lost(&format!("evicted for its own storage use: {storage}")),
            ),
            (
                "terminated by the kubelet under node memory pressure",
                pod(
                    json!({"message": memory, "conditions": [disruption(Some("TerminationByKubelet"), Some(memory), "True")]}),
                    false,
                ),
                false,
                preempted(&format!("TerminationByKubelet: {memory}")),
            ),
            (
                "evicted for its emptyDir (older kubelets: a failed phase)",
                pod(
                    json!({"phase": "Failed", "reason": "Evicted", "message": emptydir}),
                    false,
                ),
                false,
                lost(&format!("evicted for its own storage use: {emptydir}")),
            ),
            (
                "evicted under node pressure (a failed phase)",
                pod(
                    json!({"phase": "Failed", "reason": "Evicted", "message": memory}),
                    false,
                ),
                false,
                preempted(&format!("evicted: {memory}")),
            ),
            (
                "its container was killed",
                pod(
                    json!({"phase": "Failed", "containerStatuses": terminated(137, "Error")}),
                    false,
                ),
                false,
                lost("pod failed: container middleman exited with 137 (Error)"),
            ),
            (
                "failed with a reason of its own",
                pod(
                    json!({"phase": "Failed", "reason": "DeadlineExceeded"}),
                    false,
                ),
                false,
                lost("pod failed: DeadlineExceeded"),
            ),
            (
                "Middleman exited",
                pod(
                    json!({"phase": "Succeeded", "containerStatuses": terminated(0, "Completed")}),
                    true,
                ),
                true,
                lost("pod succeeded: container middleman exited with 0 (Completed)"),
            ),
        ];
        for (what, pod, deleted, expected) in cases {
            assert_eq!(observed(&pod, deleted), expected, "{what}");
        }
    }
}
