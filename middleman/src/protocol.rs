//! The document WebSocket protocol: every message a client and Middleman exchange.
//!
//! One module of types, serialised one way (JSON text frames, `type` tag in `snake_case`), used by
//! the server, the tests and the load drivers. `docs/protocol.md` is the prose version.
//!
//! Outputs travel in nbformat's own shape (`output_type` = `stream`, `display_data`,
//! `execute_result`, `error`) so that what a client shows is exactly what an `.ipynb` would store.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::document::{CellKind, CellState, CellView};
pub use crate::graph::{GraphCell, GraphError};

/// How the document reacts when a cell runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reactivity {
    /// Running a cell runs the cells that depend on it.
    #[default]
    Autorun,
    /// Dependents are marked stale; `run_stale` brings them up to date.
    Lazy,
}

/// Version of this protocol, sent in [`ServerEvent::Welcome`].
pub const PROTOCOL_VERSION: u32 = 1;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Queue `code` for execution. `request_id` is echoed in [`ServerEvent::ExecutionQueued`] so
    /// the sender can learn the execution id.
    Execute {
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// Abort the executions queued behind this one if it fails (Jupyter's default).
        #[serde(default = "yes")]
        stop_on_error: bool,
    },
    /// Queue the source of code cell `cell_id`; its outputs, execution count and state are kept
    /// in the document.
    ExecuteCell {
        cell_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(default = "yes")]
        stop_on_error: bool,
    },
    /// Insert a cell at `index` (0 = first; the length appends). Answered with
    /// [`ServerEvent::CellCreated`].
    InsertCell {
        index: u32,
        cell_type: CellKind,
        #[serde(default)]
        source: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Delete a cell (a document keeps at least one).
    DeleteCell { cell_id: String },
    /// Move a cell so that it ends at `index`.
    MoveCell { cell_id: String, index: u32 },
    /// Change a cell's type (code, markdown, raw).
    SetCellType {
        cell_id: String,
        cell_type: CellKind,
    },
    /// Replace a cell's source as a minimal edit (Yjs clients edit the text in place instead).
    SetSource { cell_id: String, source: String },
    /// Clear the outputs of one cell, or of every cell.
    ClearOutputs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cell_id: Option<String>,
    },
    /// Where this collaborator is: the cell and an editor-defined cursor (at most 1 KiB of JSON).
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cell_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Value>,
    },
    /// Disable or enable a cell (a disabled cell does not run and blocks its dependents).
    SetCellDisabled { cell_id: String, disabled: bool },
    /// Autorun or lazy, for the whole document.
    SetReactivity { mode: Reactivity },
    /// Run every stale cell, in dependency order.
    RunStale,
    /// Answer the pending `input()` prompt of `execution_id`. The first answer wins.
    InputReply { execution_id: String, value: String },
    /// Interrupt the running execution and cancel the queued ones. Escalates to a kernel restart
    /// if the code ignores the interrupt.
    Interrupt,
    /// Restart the kernel (its state is lost; queued executions are aborted).
    Restart,
    /// Application-level keepalive; answered with [`ServerEvent::Pong`].
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

fn yes() -> bool {
    true
}

/// A message from Middleman. Broadcast events carry a `seq`, increasing by one per event within
/// a server's lifetime; replies to one connection (welcome, error, pong) carry none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub event: ServerEvent,
}

/// What happened, as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Reply to [`ClientMessage::InsertCell`].
    CellCreated {
        cell_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A cell's state or execution count changed.
    CellState {
        cell_id: String,
        state: CellState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        execution_count: Option<u64>,
    },
    /// A cell's outputs were cleared (by a client, or because it started running again).
    OutputsCleared { cell_id: String },
    /// The dependency graph changed: every code cell's definitions, references, edges, errors.
    Graph { cells: Vec<GraphCell> },
    /// The document's reactivity mode changed.
    Reactivity { mode: Reactivity },
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
    /// One output of an execution, in nbformat's shape.
    Output {
        execution_id: String,
        output: Output,
    },
    /// Replace the data of the output displayed earlier with `display_id`.
    UpdateDisplay {
        execution_id: String,
        display_id: String,
        data: Map<String, Value>,
        #[serde(default)]
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
    /// A request from this connection was refused or could not be parsed.
    Error { code: ErrorCode, message: String },
    /// Answer to [`ClientMessage::Ping`].
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// Middleman is shutting down; the connection closes next.
    Shutdown { reason: String },
}

/// The kernel's lifecycle as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// How a prompt was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputOutcome {
    Answered,
    Cancelled,
}

/// Machine-readable reason of an [`ServerEvent::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A cell's id and type, as listed in [`ServerEvent::Cells`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellHeader {
    pub id: String,
    pub cell_type: CellKind,
}

/// A collaborator. Identity comes from the token, never from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub client: u64,
    pub user: String,
    pub name: String,
    pub role: String,
    pub color: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Value>,
}

/// An `input()` prompt waiting for an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingInput {
    pub execution_id: String,
    pub prompt: String,
    pub password: bool,
}

/// A kernel's identity, from its kernelspec and `kernel_info_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct KernelDescription {
    pub name: String,
    pub display_name: String,
    pub language: String,
}

/// An execution as listed in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Limits a client should know about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_client_message_bytes: u64,
    pub max_output_bytes: u64,
    pub execution_timeout_ms: u64,
    /// Collaborators allowed in the document at once.
    pub max_clients: u64,
    /// Streamed output reaches clients at most once per this interval per execution.
    pub stream_flush_interval_ms: u64,
}

/// One output, in nbformat 4 shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "output_type", rename_all = "snake_case")]
pub enum Output {
    Stream {
        name: StreamName,
        text: String,
    },
    DisplayData {
        data: Map<String, Value>,
        #[serde(default)]
        metadata: Map<String, Value>,
        /// Kept outside nbformat's fields so later `update_display` messages can find it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_id: Option<String>,
    },
    ExecuteResult {
        execution_count: u64,
        data: Map<String, Value>,
        #[serde(default)]
        metadata: Map<String, Value>,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
}

/// Which stream a `stream` output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
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

    #[test]
    fn client_messages_parse_from_documented_json() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"execute","code":"1+1","request_id":"r1"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Execute {
                code: "1+1".into(),
                request_id: Some("r1".into()),
                stop_on_error: true
            }
        );
        let m: ClientMessage = serde_json::from_str(r#"{"type":"interrupt"}"#).unwrap();
        assert_eq!(m, ClientMessage::Interrupt);
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"rm_rf"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"execute"}"#).is_err());
    }

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
