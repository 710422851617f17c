//! Why the hub refused a request. Each refusal becomes a protocol `error` event (its
//! [`ErrorCode`] and text) on the connection that asked, or an HTTP error at the server's
//! boundary; the texts are safe to show a client.

use super::yproto::YError;
use crate::document::{CellKind, DocumentError};
use crate::graph::reactor::NotRunnable;
use crate::protocol::{ErrorCode, MAX_AWARENESS_STATE_BYTES, MAX_CURSOR_BYTES};

/// A request the hub did not carry out.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The document could not be loaded from its store (yet).
    #[error("the document store is unavailable; try again shortly")]
    StoreUnavailable,
    /// `max` collaborators are already connected.
    #[error("the document already has {max} collaborators")]
    DocumentFull { max: usize },
    /// A viewer sent a Yjs update.
    #[error("viewers cannot edit")]
    ViewerEdit,
    /// A viewer sent a message only editors may send.
    #[error("viewers cannot edit, run code, answer prompts, interrupt or restart")]
    ViewerAction,
    /// A JSON text frame that is not a protocol message.
    #[error("unreadable message: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// A client message larger than the connection allows (the connection closes).
    #[error("message exceeds {limit} bytes")]
    MessageTooLarge { limit: usize },
    /// A binary frame that is not a y-protocols message.
    #[error("bad Yjs message: {0}")]
    BadYjs(#[source] YError),
    /// An awareness message whose update does not decode.
    #[error("bad awareness update: {0}")]
    BadAwareness(#[source] YError),
    /// An awareness state that is not JSON.
    #[error("awareness state is not JSON")]
    AwarenessNotJson,
    /// An awareness state over the protocol's limit.
    #[error("awareness states are limited to {MAX_AWARENESS_STATE_BYTES} bytes")]
    AwarenessTooLarge,
    /// A presence cursor over the protocol's limit.
    #[error("cursors are limited to {MAX_CURSOR_BYTES} bytes of JSON")]
    CursorTooLarge,
    /// The edit would take the shared text past `--max-document-bytes`.
    #[error("the document would exceed its limit of {max} bytes")]
    DocumentTooLarge { max: usize },
    /// The document refused the operation (no such cell, the last cell, a bad index or update).
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Only code cells run.
    #[error("the cell is {}, not code", kind.as_str())]
    NotCode { cell: String, kind: CellKind },
    /// The graph does not let the cell run (disabled, a graph error, a disabled dependency).
    #[error(transparent)]
    NotRunnable(#[from] NotRunnable),
    /// The kernel session refused the command (a dead kernel, a full queue, no pending prompt,
    /// shutting down).
    #[error(transparent)]
    Kernel(#[from] crate::kernel::SessionRefusal),
    /// A `fetch_outputs` for too many cells at once.
    #[error("fetch_outputs takes at most {max} cells a message")]
    TooManyCells { max: usize },
    /// A `run_all`/`run_stale` with a `request_id` while this many already wait for theirs.
    #[error("{max} runs already wait to be told they are over; ask again once one is")]
    TooManyRunWaiters { max: usize },
}

impl Refusal {
    /// The cell the refusal speaks of, if one (its text does not name it: clients show cells
    /// by position).
    pub fn cell(&self) -> Option<&str> {
        match self {
            Refusal::NotCode { cell, .. } => Some(cell),
            Refusal::NotRunnable(n) => Some(n.cell()),
            Refusal::Document(DocumentError::NoSuchCell(cell)) => Some(cell),
            _ => None,
        }
    }

    /// The protocol's code for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::StoreUnavailable | Refusal::DocumentFull { .. } => ErrorCode::Unavailable,
            Refusal::TooManyRunWaiters { .. } => ErrorCode::QueueFull,
            Refusal::ViewerEdit | Refusal::ViewerAction => ErrorCode::Forbidden,
            Refusal::Unreadable(_)
            | Refusal::BadYjs(_)
            | Refusal::BadAwareness(_)
            | Refusal::AwarenessNotJson => ErrorCode::BadMessage,
            Refusal::MessageTooLarge { .. }
            | Refusal::AwarenessTooLarge
            | Refusal::CursorTooLarge
            | Refusal::DocumentTooLarge { .. }
            | Refusal::TooManyCells { .. } => ErrorCode::TooLarge,
            Refusal::Document(e) => match e {
                DocumentError::NoSuchCell(_) => ErrorCode::NoSuchCell,
                DocumentError::BadUpdate(_) | DocumentError::BadNotebook(_) => {
                    ErrorCode::BadMessage
                }
                DocumentError::LastCell | DocumentError::OutOfRange { .. } => {
                    ErrorCode::InvalidEdit
                }
            },
            Refusal::NotCode { .. } | Refusal::NotRunnable(_) => ErrorCode::InvalidEdit,
            Refusal::Kernel(refusal) => refusal.code(),
        }
    }
}
