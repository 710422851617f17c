//! The domain: pods, allocations and how they end. No Kubernetes, no gRPC.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a pod is in its life. A pod only moves forward: Starting → Warm → Allocated → Ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// Created, kernel not ready yet.
    Starting,
    /// Ready, in the buffer, never used.
    Warm,
    /// Bound to a document.
    Allocated,
    /// To be deleted (a pod that ran code is never reused).
    Ending,
}

impl PodState {
    pub fn label(self) -> &'static str {
        match self {
            PodState::Starting => "starting",
            PodState::Warm => "warm",
            PodState::Allocated => "allocated",
            PodState::Ending => "ending",
        }
    }
}

/// A pod as the store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub id: String,
    pub plan: String,
    pub state: PodState,
    /// Base URL of its Middleman, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    /// Backend handle (local: the process id).
    pub handle: String,
    pub created_ms: u64,
    #[serde(default)]
    pub ready_ms: Option<u64>,
    #[serde(default)]
    pub document: Option<String>,
    #[serde(default)]
    pub allocation: Option<String>,
}

/// How a document got its pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchKind {
    Warm,
    Cold,
    Existing,
}

impl LaunchKind {
    pub fn label(self) -> &'static str {
        match self {
            LaunchKind::Warm => "warm",
            LaunchKind::Cold => "cold",
            LaunchKind::Existing => "existing",
        }
    }
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Released,
    Idle,
    Lifetime,
    PodLost,
    Preempted,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Idle => "idle",
            EndReason::Lifetime => "lifetime",
            EndReason::PodLost => "pod_lost",
            EndReason::Preempted => "preempted",
        }
    }
}

/// A document's binding to a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: String,
    pub document: String,
    pub plan: String,
    pub pod: String,
    pub endpoint: String,
    pub user: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// The record of an ended allocation, kept a while for `WatchAllocation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub allocation: String,
    pub document: String,
    pub pod: String,
    pub reason: EndReason,
    pub detail: String,
    pub at_ms: u64,
}
