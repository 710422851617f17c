//! The document WebSocket protocol: every message a client and Middleman exchange.
//!
//! One module of types, serialised one way (JSON text frames, `type` tag in `snake_case`), used by
//! the server, the tests and the load drivers. `docs/protocol.md` is the prose version.
//!
//! Outputs travel in nbformat's own shape (`output_type` = `stream`, `display_data`,
//! `execute_result`, `error`) so that what a client shows is exactly what an `.ipynb` would store.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// First message on every connection.
    Welcome {
        protocol: u32,
        document: String,
        user: String,
        role: String,
        kernel: KernelDescription,
        kernel_state: KernelState,
        /// The execution running now, then the queue in order.
        executions: Vec<ExecutionSummary>,
        limits: Limits,
        /// The `seq` of the last broadcast event before this connection joined.
        last_seq: u64,
    },
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
    /// Middleman is shutting down.
    Unavailable,
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
