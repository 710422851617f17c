//! What a run is, as stored and as the HTTP API shows it (the gRPC messages mirror it).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for a slot of its plan.
    Queued,
    /// An attempt is on a pod.
    Running,
    /// An attempt was lost to the infrastructure; the next waits its backoff.
    Retrying,
    Succeeded,
    /// The code raised, or its kernel died: never retried.
    Failed,
    /// It ran past its time limit: never retried.
    TimedOut,
    Cancelled,
    /// Every attempt was lost to the infrastructure.
    Errored,
}

impl RunState {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running | Self::Retrying)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Errored => "errored",
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    /// The code raised.
    UserError,
    /// The kernel died while running it (its memory limit, `os._exit`): the code's doing.
    KernelDied,
    TimedOut,
    Cancelled,
    /// The pod ended under the attempt, or Watchman lost its connection to it.
    PodLost,
    /// No pod of the plan became available in time.
    NoPod,
    /// The allocation or document store failed.
    StoreError,
}

impl Outcome {
    /// Whether the infrastructure, not the code, ended the attempt (the only ones retried).
    pub fn is_infrastructure(self) -> bool {
        matches!(self, Self::PodLost | Self::NoPod | Self::StoreError)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::UserError => "user_error",
            Self::KernelDied => "kernel_died",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::PodLost => "pod_lost",
            Self::NoPod => "no_pod",
            Self::StoreError => "store_error",
        }
    }
}

/// One attempt of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    #[serde(default)]
    pub pod: String,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub detail: String,
    /// When the next attempt starts, if this one is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
}

/// A signed receipt: `payload` is the exact bytes signed (docs/jobs.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub payload: String,
    pub signature: String,
    pub key_id: String,
}

/// How a notebook run runs its cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotebookMode {
    /// Every code cell once, in dependency order.
    #[default]
    All,
    /// The stale cells only (a document's).
    Stale,
}

/// What a notebook run runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotebookSpec {
    /// The user's document it runs in, its outputs written there; empty: the run's `code` is
    /// an uploaded `.ipynb`, run on a fresh pod.
    #[serde(default)]
    pub document: String,
    #[serde(default)]
    pub mode: NotebookMode,
    /// Injected as papermill does (`params.rs`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// Where a run's end is told: an HTTP POST signed with HMAC-SHA256 (`webhook.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// The HMAC key. Never shown back: runs and schedules come out with it blank.
    #[serde(default)]
    pub secret: String,
    #[serde(default)]
    pub on_success: bool,
    #[serde(default)]
    pub on_failure: bool,
}

impl Webhook {
    /// Blanks the secret of a webhook about to be shown.
    pub fn redact(webhook: &mut Option<Self>) {
        if let Some(w) = webhook {
            w.secret.clear();
        }
    }
}

/// The schedule that fired a run, and the due time it fired it for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    pub schedule_id: String,
    pub due_at_ms: u64,
}

/// A run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub user_id: String,
    pub plan: String,
    pub kernel: String,
    pub state: RunState,
    pub code: String,
    pub code_sha256: String,
    #[serde(default)]
    pub stdin: String,
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// nbformat 4 outputs.
    #[serde(default)]
    pub outputs: Vec<Value>,
    #[serde(default)]
    pub outputs_truncated: bool,
    pub queued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The pod of the last attempt.
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub exit_reason: String,
    #[serde(default)]
    pub cpu_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// When a finished run is forgotten (0 while it is not finished).
    #[serde(default)]
    pub expires_at_ms: u64,
    #[serde(default)]
    pub cancel_requested: bool,
    /// A notebook run's notebook (absent for an execution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebook: Option<NotebookSpec>,
    /// A notebook run's executed notebook (`.ipynb`), once it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_notebook: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_by: Option<Fired>,
}

/// What a run runs, as its receipt hashes it: the code (or the uploaded notebook), or for a run
/// on a user's document, the document and how it is run (its parameters included).
pub fn input_text(code: &str, notebook: Option<&NotebookSpec>) -> String {
    match notebook {
        Some(n) if !n.document.is_empty() => serde_json::to_string(n).unwrap_or_default(),
        _ => code.to_owned(),
    }
}

impl Run {
    /// The run as listed: a notebook run without its notebooks (uploaded and executed), which
    /// may be megabytes each; `GetRun` shows them.
    pub fn summary(mut self) -> Self {
        if self.notebook.is_some() {
            self.code.clear();
            self.result_notebook = None;
        }
        self
    }

    /// The run as shown to its user: without its webhook's secret.
    pub fn redacted(mut self) -> Self {
        Webhook::redact(&mut self.webhook);
        self
    }
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// submitted, replayed, quota_refused, started, retry, cancel, finished
    pub event: String,
    pub user_id: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub plan: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub code_sha256: String,
    #[serde(default)]
    pub detail: String,
}

impl AuditEntry {
    pub fn of(run: &Run, event: &str, detail: impl Into<String>) -> Self {
        Self {
            at_ms: crate::model::now_ms(),
            event: event.to_owned(),
            user_id: run.user_id.clone(),
            run_id: run.id.clone(),
            plan: run.plan.clone(),
            pod: run.pod.clone(),
            code_sha256: run.code_sha256.clone(),
            detail: detail.into(),
        }
    }
}

/// What a live watcher is told.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// The run changed state (or: the run as the stream starts).
    State(Box<Run>),
    /// One nbformat output.
    Output(Value),
    /// The run's final form.
    Finished(Box<Run>),
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
