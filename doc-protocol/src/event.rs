//! What Middleman sends: sequenced events, replies, and the snapshot a client renders from.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    AssistAnswer, CellHeader, CellState, CellView, ExecutionStatus, ExecutionSummary, GraphCell,
    GraphRule, InputOutcome, KernelDescription, KernelState, Limits, Output, PendingInput,
    Reactivity, Resume, RunRecord, StateCause,
};

/// A message from Middleman. Broadcast events carry a `seq`, increasing by one per event within
/// a server's lifetime; replies to one connection (welcome, error, pong) carry none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ServerFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub event: ServerEvent,
}

/// What happened, as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// First message on every connection, and again after a resynchronisation.
    Welcome {
        protocol: u32,
        /// This Middleman's run: `seq` numbers are only comparable within one session.
        session: String,
        /// This connection's id, as it appears in presence.
        client: u64,
        document: String,
        user: String,
        name: String,
        role: String,
        kernel: KernelDescription,
        limits: Limits,
        /// The `seq` of the last broadcast event this welcome accounts for.
        last_seq: u64,
        /// Set when the client asked to resume from this `seq` and could: the events after it
        /// follow, and there is no snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumed_from: Option<u64>,
        /// The whole state at `last_seq` (absent when resumed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<Box<Snapshot>>,
    },
    /// The cell list changed (insert, delete, move, type change), in order.
    Cells { cells: Vec<CellHeader> },
    /// Reply to [`crate::ClientMessage::InsertCell`].
    CellCreated {
        cell_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A cell's state or execution count changed. `cause` says why a stale or blocked cell
    /// is so; `last_run` comes when a run of the cell finished.
    CellState {
        cell_id: String,
        state: CellState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_count: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<StateCause>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_run: Option<RunRecord>,
    },
    /// A cell's outputs were cleared (by a client, or because it started running again).
    OutputsCleared { cell_id: String },
    /// The dependency graph changed: every code cell's definitions, references, edges, errors.
    Graph { cells: Vec<GraphCell> },
    /// The document's reactivity mode changed.
    Reactivity { mode: Reactivity },
    /// The outputs of a cell, for the connection that asked with `fetch_outputs`.
    CellOutputs {
        cell_id: String,
        outputs: Vec<Output>,
    },
    /// The document's graph rule changed (the new graph follows as a `graph` event).
    GraphRule { rule: GraphRule },
    /// A cell was disabled or enabled.
    CellDisabled { cell_id: String, disabled: bool },
    /// A collaborator joined or moved.
    Presence(PresenceInfo),
    /// A collaborator left.
    PresenceLeft { client: u64 },
    /// The kernel's state changed. `reason` says why when it is not plain busy/idle.
    KernelStatus {
        state: KernelState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Set when a new kernel session begins (a restart): results from earlier sessions
        /// are not in the kernel.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kernel_session: Option<String>,
    },
    /// The document came back on a new kernel with the state its checkpoint kept. Once per
    /// resume, after the names are back and before the cells it lists run.
    Resumed(Resume),
    /// Checkpoints cannot be saved (`failing`, with the reason: the store is unreachable;
    /// saving goes on retrying), or can again. The document itself keeps working.
    CheckpointStatus {
        failing: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An execution joined the queue.
    ExecutionQueued {
        execution: ExecutionSummary,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// The execution queue changed: the running execution first, then the waiting ones.
    Queue { executions: Vec<ExecutionSummary> },
    /// An execution was sent to the kernel.
    ExecutionStarted { execution_id: String },
    /// The kernel took the execution's code and gave it this execution count (before its
    /// outputs; silent runs and runs outside the history get none).
    ExecutionInput {
        execution_id: String,
        execution_count: u64,
    },
    /// One output of an execution, in nbformat's shape.
    Output {
        execution_id: String,
        output: Output,
    },
    /// Replace the data of the output displayed earlier with `display_id`.
    UpdateDisplay {
        execution_id: String,
        display_id: String,
        #[cfg_attr(feature = "ts", ts(type = "MimeBundle"))]
        data: Map<String, Value>,
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
        metadata: Map<String, Value>,
    },
    /// Clear the outputs of the execution (`wait`: when the next output arrives).
    ClearOutput { execution_id: String, wait: bool },
    /// The execution's output passed its byte cap; later output was dropped.
    OutputTruncated {
        execution_id: String,
        limit_bytes: u64,
    },
    /// The kernel asks for input (`input()`, `getpass()`).
    InputRequest {
        execution_id: String,
        prompt: String,
        password: bool,
    },
    /// The pending prompt was answered (by `by`) or cancelled (interrupt, timeout, kernel death).
    InputResolved {
        execution_id: String,
        outcome: InputOutcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The execution ended.
    ExecutionFinished {
        execution_id: String,
        status: ExecutionStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_count: Option<u64>,
        duration_ms: u64,
        /// Why, for every status but `ok` and `error`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A request from this connection was refused or could not be parsed. `cell_id` names the
    /// cell the message speaks of (the message itself does not name cells).
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cell_id: Option<String>,
    },
    /// The answer to `complete`, `inspect` or `table_page` (this connection only).
    Assist {
        request_id: String,
        answer: AssistAnswer,
    },
    /// Answer to [`crate::ClientMessage::Ping`].
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// The reactive run asked with `run_all` or `run_stale` and this `request_id` is over: the
    /// graph has nothing more planned or running (its cells ran, failed, or were blocked).
    /// Runs asked while another was going on merge with it and finish with it.
    RunFinished { request_id: String },
    /// Middleman is shutting down; the connection closes next.
    Shutdown { reason: String },
}

/// Machine-readable reason of an [`ServerEvent::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not a known message (`message` says which).
    BadMessage,
    /// Larger than the limit in [`Limits::max_client_message_bytes`].
    TooLarge,
    /// The connection's role may not do this.
    Forbidden,
    /// The execution queue is full.
    QueueFull,
    /// No prompt is pending for that execution (already answered, or cancelled).
    NoPendingInput,
    /// The kernel is dead; send `restart`.
    KernelDead,
    /// Middleman is shutting down, or the document store is unreachable.
    Unavailable,
    /// No cell has that id.
    NoSuchCell,
    /// The edit is not allowed (the last cell, an index out of range, a non-code cell to run).
    InvalidEdit,
}

/// The whole document state a client renders from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Snapshot {
    pub kernel_state: KernelState,
    /// The execution running now, then the queue in order.
    pub executions: Vec<ExecutionSummary>,
    pub cells: Vec<CellView>,
    pub presence: Vec<PresenceInfo>,
    /// The prompt waiting for an answer, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<PendingInput>,
    /// The dependency graph of the code cells.
    #[serde(default)]
    pub graph: Vec<GraphCell>,
    #[serde(default)]
    pub reactivity: Reactivity,
    #[serde(default)]
    pub graph_rule: GraphRule,
    /// The kernel session running now: a cell whose `last_run` names another one has no
    /// results in the kernel.
    #[serde(default)]
    pub kernel_session: String,
    /// How the kernel running now was resumed from the checkpoint, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resume>,
}

/// A collaborator. Identity comes from the token, never from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct PresenceInfo {
    pub client: u64,
    pub user: String,
    pub name: String,
    pub role: String,
    pub color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub cursor: Option<Value>,
}

impl ServerFrame {
    /// Serialises to the JSON text sent on the wire.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string and no value is a
        // float NaN. Fall back to an error frame rather than panic if that ever changes.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"type":"error","code":"bad_message","message":"unserialisable frame: {e}"}}"#
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamName;

    #[test]
    fn frames_flatten_seq_and_tag() {
        let f = ServerFrame {
            seq: Some(7),
            event: ServerEvent::Output {
                execution_id: "e1".into(),
                output: Output::Stream {
                    name: StreamName::Stdout,
                    text: "hi\n".into(),
                },
            },
        };
        let json = f.to_json();
        assert_eq!(
            json,
            r#"{"seq":7,"type":"output","execution_id":"e1","output":{"output_type":"stream","name":"stdout","text":"hi\n"}}"#
        );
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
    }
}
