//! Comms (ipywidgets and other objects that live in the kernel and in a client): Jupyter
//! clients' `comm_open`, `comm_msg` and `comm_close` are passed to the kernel's main shell with
//! their buffers, and the kernel's comm messages go out on a side channel to Jupyter
//! connections, outside the document (they are the live state of widgets, not outputs). Each
//! message is capped at the execution's output cap; a connection that falls behind loses comm
//! messages, not document events.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

/// Comm messages the side channel holds for a slow connection.
pub(super) const CHANNEL_CAPACITY: usize = 256;
/// Forwarded requests remembered, to route the kernel's answers and statuses.
const REMEMBERED: usize = 256;

/// A Jupyter client's message for the kernel.
#[derive(Debug, Clone)]
pub struct Forward {
    /// `comm_open`, `comm_msg` or `comm_close`.
    pub msg_type: &'static str,
    /// The client's `msg_id`: the kernel parents its answers to it.
    pub msg_id: String,
    pub content: Value,
    pub metadata: Value,
    pub buffers: Vec<Bytes>,
}

/// What a kernel comm message answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommParent {
    /// An execution (a cell that made a widget).
    Execution(String),
    /// A forwarded client message, by its `msg_id`.
    Request(String),
    /// Nothing known.
    None,
}

/// A kernel comm message (or the status of a forwarded request), for Jupyter connections.
#[derive(Debug, Clone)]
pub struct CommEvent {
    /// `comm_open`, `comm_msg`, `comm_close`, or `status` (of a forwarded request).
    pub msg_type: String,
    pub content: Value,
    pub metadata: Value,
    pub buffers: Vec<Bytes>,
    pub parent: CommParent,
}

/// The receiving end of the side channel.
pub type CommReceiver = tokio::sync::broadcast::Receiver<Arc<CommEvent>>;

/// The forwarded requests' ids, the last [`REMEMBERED`].
#[derive(Debug, Default)]
pub(super) struct Forwarded {
    ids: VecDeque<String>,
}

impl Forwarded {
    pub(super) fn remember(&mut self, msg_id: String) {
        if self.ids.len() >= REMEMBERED {
            self.ids.pop_front();
        }
        self.ids.push_back(msg_id);
    }

    pub(super) fn contains(&self, msg_id: &str) -> bool {
        self.ids.iter().any(|id| id == msg_id)
    }
}

/// The size a comm message counts against the cap: its content and buffers.
pub(super) fn size(content: &Value, buffers: &[Bytes]) -> u64 {
    let json = serde_json::to_vec(content).map_or(0, |v| v.len());
    u64::try_from(json + buffers.iter().map(Bytes::len).sum::<usize>()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_ids_are_bounded() {
        let mut f = Forwarded::default();
        for n in 0..(REMEMBERED + 10) {
            f.remember(format!("m{n}"));
        }
        assert!(!f.contains("m0"));
        assert!(f.contains(&format!("m{}", REMEMBERED + 9)));
    }

    #[test]
    fn size_counts_buffers() {
        let v = serde_json::json!({"a": 1});
        assert_eq!(size(&v, &[Bytes::from_static(b"12345")]), 7 + 5);
    }
}
