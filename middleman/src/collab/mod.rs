//! Collaboration: the document hub that every connection and the kernel session share.
//!
//! The hub puts everything that happens to a document in one order: kernel events (outputs,
//! queue, prompts), edits (Yjs updates from clients, cell operations) and presence. Each event is
//! applied to the document, given a sequence number, serialised once and sent to every connection
//! through one broadcast ring, and kept in a bounded replay buffer for clients that reconnect.
//! State lives behind one mutex that is never held across an `await`.

mod hub;
pub mod yproto;

pub use hub::{EditRequest, Frame, Hub, HubSettings, Joined, Who};
