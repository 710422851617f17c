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
    /// As Kubernetes labels and metrics show it.
    pub fn label(self) -> &'static str {
        match self {
            PodState::Starting => "starting",
            PodState::Warm => "warm",
            PodState::Allocated => "allocated",
            PodState::Ending => "ending",
        }
    }

    /// The state a [`Self::label`] names.
    pub fn from_label(label: &str) -> Option<Self> {
        [
            PodState::Starting,
            PodState::Warm,
            PodState::Allocated,
            PodState::Ending,
        ]
        .into_iter()
        .find(|s| s.label() == label)
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
    /// The document was deleted (`DeleteDocument`).
    Deleted,
}

impl EndReason {
    /// Every reason, for metrics that must exist before the first event.
    pub const ALL: [EndReason; 6] = [
        EndReason::Released,
        EndReason::Idle,
        EndReason::Lifetime,
        EndReason::PodLost,
        EndReason::Preempted,
        EndReason::Deleted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            EndReason::Released => "released",
            EndReason::Idle => "idle",
            EndReason::Lifetime => "lifetime",
            EndReason::PodLost => "pod_lost",
            EndReason::Preempted => "preempted",
            EndReason::Deleted => "deleted",
        }
    }
}

/// Why a pod that serves no document is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardReason {
    /// It died, or was not ready within the startup timeout.
    FailedStart,
    /// A warm pod died or vanished.
    PodLost,
    /// A warm pod was taken away by the platform (spot preemption, eviction, node loss).
    Preempted,
    /// Its plan is no longer in the plans file.
    PlanRemoved,
    /// The plan has more warm pods than its target.
    Surplus,
}

impl DiscardReason {
    /// Every reason, for metrics that must exist before the first event.
    pub const ALL: [DiscardReason; 5] = [
        DiscardReason::FailedStart,
        DiscardReason::PodLost,
        DiscardReason::Preempted,
        DiscardReason::PlanRemoved,
        DiscardReason::Surplus,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DiscardReason::FailedStart => "failed_start",
            DiscardReason::PodLost => "pod_lost",
            DiscardReason::Preempted => "preempted",
            DiscardReason::PlanRemoved => "plan_removed",
            DiscardReason::Surplus => "surplus",
        }
    }

    /// A healthy pod (surplus, or of a removed plan) is retired only if no Allocate claimed it
    /// meanwhile; a dead one is removed whatever happened, and an allocation made on it in the
    /// meantime ends with [`Self::end_reason`].
    pub fn healthy(self) -> bool {
        matches!(self, DiscardReason::PlanRemoved | DiscardReason::Surplus)
    }

    /// How an allocation that claimed the pod meanwhile ends.
    pub fn end_reason(self) -> EndReason {
        match self {
            DiscardReason::Preempted => EndReason::Preempted,
            _ => EndReason::PodLost,
        }
    }
}

/// What a probe of a pod found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running; the kernel is ready.
    Ready,
    /// Running; not ready yet.
    NotReady,
    /// Gone, with why.
    Lost(String),
    /// Taken away by the platform (spot preemption, eviction, node loss), with why.
    Preempted(String),
}

impl Health {
    /// Whether the pod still runs (ready or not).
    pub fn alive(&self) -> bool {
        matches!(self, Health::Ready | Health::NotReady)
    }
}

/// The kernel's state as Middleman reports it. Only `busy` matters to Watchman (a busy kernel
/// is never idle); Middleman's other states need no variant of their own here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelState {
    Busy,
    #[serde(other)]
    NotBusy,
}

/// What Middleman's `/status` reports about use, for idle timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Activity {
    /// Open client connections.
    pub connections: u64,
    /// Last activity, in seconds since the Unix epoch.
    pub last_activity: u64,
    pub kernel_state: KernelState,
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
