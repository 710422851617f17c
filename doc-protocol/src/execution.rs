//! The kernel and its executions as clients see them: kernel state, the queue, how an execution
//! ended, prompts.

use serde::{Deserialize, Serialize};

/// The kernel's lifecycle as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum KernelState {
    /// Launching, or waiting for its first reply.
    Starting,
    /// Ready, nothing running.
    Idle,
    /// Running an execution.
    Busy,
    /// Died or was stopped; a new process is starting.
    Restarting,
    /// Gave up after too many restarts; a client's `restart` tries again.
    Dead,
}

/// A kernel's identity, from its kernelspec and `kernel_info_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct KernelDescription {
    pub name: String,
    pub display_name: String,
    pub language: String,
}

/// An execution as listed in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ExecutionSummary {
    pub id: String,
    /// The cell it runs, when it was queued with `execute_cell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    /// The display name of whoever queued it.
    pub by: String,
    pub code: String,
    pub running: bool,
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Ran to completion.
    Ok,
    /// Raised an error (see the `error` output).
    Error,
    /// Never ran: an earlier execution failed or was interrupted, or the kernel restarted.
    Aborted,
    /// Stopped by a client's interrupt.
    Interrupted,
    /// Stopped because it ran past the wall-clock limit.
    TimedOut,
    /// The kernel died while running it.
    KernelDied,
}

/// An `input()` prompt waiting for an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PendingInput {
    pub execution_id: String,
    pub prompt: String,
    pub password: bool,
}

/// How a prompt was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum InputOutcome {
    Answered,
    Cancelled,
}
