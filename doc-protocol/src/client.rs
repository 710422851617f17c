//! What a client sends.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CellKind, GraphRule, Reactivity, TableSort};

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Queue `code` for execution. `request_id` is echoed in [`crate::ServerEvent::ExecutionQueued`] so
    /// the sender can learn the execution id.
    Execute {
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        /// Abort the executions queued behind this one if it fails (Jupyter's default).
        #[serde(default = "yes")]
        #[cfg_attr(feature = "ts", ts(as = "Option<bool>", optional))]
        stop_on_error: bool,
    },
    /// Queue the source of code cell `cell_id`; its outputs, execution count and state are kept
    /// in the document.
    ExecuteCell {
        cell_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        #[serde(default = "yes")]
        #[cfg_attr(feature = "ts", ts(as = "Option<bool>", optional))]
        stop_on_error: bool,
    },
    /// Insert a cell at `index` (0 = first; the length appends). Answered with
    /// [`crate::ServerEvent::CellCreated`].
    InsertCell {
        index: u32,
        cell_type: CellKind,
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(as = "Option<String>", optional))]
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
        #[cfg_attr(feature = "ts", ts(type = "unknown"))]
        cursor: Option<Value>,
    },
    /// Disable or enable a cell (a disabled cell does not run and blocks its dependents).
    SetCellDisabled { cell_id: String, disabled: bool },
    /// Autorun or lazy, for the whole document.
    SetReactivity { mode: Reactivity },
    /// Positional or strict definitions, for the whole document (editors).
    SetGraphRule { rule: GraphRule },
    /// Run every stale cell, in dependency order. With `request_id`, `run_finished` tells when
    /// the graph has nothing more planned or running.
    RunStale {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Run every code cell once, in dependency order (document order under the positional
    /// rule); cells that may not run, and what depends on them, are blocked with a cause.
    /// With `request_id`, `run_finished` tells when the graph has nothing more planned or
    /// running.
    RunAll {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Send the outputs a welcome snapshot deferred (at most 64 cells a message; viewers too).
    /// Answered with one `cell_outputs` per cell, to this connection only.
    FetchOutputs { cell_ids: Vec<String> },
    /// Answer the pending `input()` prompt of `execution_id`. The first answer wins.
    InputReply { execution_id: String, value: String },
    /// Interrupt the running execution and cancel the queued ones. Escalates to a kernel restart
    /// if the code ignores the interrupt.
    Interrupt,
    /// Restart the kernel (its state is lost; queued executions are aborted).
    Restart,
    /// Completions of `code` at `cursor` (UTF-16 units), in the language of cell `cell_id`
    /// (Python, or SQL for a SQL cell). Answered with `assist`, to this connection only.
    Complete {
        request_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cell_id: Option<String>,
        code: String,
        cursor: u32,
    },
    /// What the kernel knows about the name at `cursor` of `code` (signature, docstring; more
    /// with `detail` 1). Answered with `assist`.
    Inspect {
        request_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cell_id: Option<String>,
        code: String,
        cursor: u32,
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(as = "Option<u8>", optional))]
        detail: u8,
    },
    /// Rows `offset..offset + limit` (at most 1,000) of a table output, sorted by `sort` when
    /// given. Answered with `assist`.
    TablePage {
        request_id: String,
        table: String,
        offset: u64,
        limit: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort: Option<TableSort>,
    },
    /// Application-level keepalive; answered with [`crate::ServerEvent::Pong`].
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
}

fn yes() -> bool {
    true
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
}
