//! The limits a client must respect: sent in the welcome, or fixed by the protocol.

use serde::{Deserialize, Serialize};

/// Limits a client should know about (sent in [`crate::ServerEvent::Welcome`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Limits {
    pub max_client_message_bytes: u64,
    pub max_output_bytes: u64,
    pub execution_timeout_ms: u64,
    /// Collaborators allowed in the document at once.
    pub max_clients: u64,
    /// Streamed output reaches clients at most once per this interval per execution.
    pub stream_flush_interval_ms: u64,
}

/// Longest awareness state (JSON) a client may publish.
pub const MAX_AWARENESS_STATE_BYTES: usize = 8 * 1024;
/// Awareness client ids one connection may own (a browser tab uses one).
pub const MAX_AWARENESS_IDS: usize = 4;
/// Longest cursor (JSON) in a presence message.
pub const MAX_CURSOR_BYTES: usize = 1024;
