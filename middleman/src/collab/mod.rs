//! Collaboration: the document hub that every connection goes through, and the parts of its state.
//!
//! The hub ([`Hub`], `hub.rs`) puts everything that happens to a document in one order: kernel
//! events, edits (Yjs updates from clients, cell operations) and presence. Under one mutex, never
//! held across an `await`, each event is applied to the document, given a sequence number,
//! serialised once and sent to every connection through one broadcast ring. It is also the one
//! way into the kernel: connections call the hub (`execute_cell`, `interrupt`, ...), and the hub
//! sends the session its commands and the reactor's runs in the order it decided them.
//!
//! Its state, one concept per file:
//! - `log.rs`: sequence numbers, the replay buffer for reconnecting clients, the broadcast ring;
//! - `presence.rs`: who is in the document and where (presence, Yjs awareness);
//! - `edits.rs`: the shared document as people change it (size limit, the Yjs update of each
//!   server-side change, the cell list);
//! - `dependencies.rs`: the dependency graph kept current (analyses cached per source);
//! - `mirror.rs`: the kernel's events applied to the document (outputs, cell states, queue,
//!   prompt);
//! - `saver.rs`: loading once, debounced saving;
//! - `refusal.rs`: why a request was refused.
//!
//! The reactive rules are pure and live beside the graph (`graph::reactor`); the hub carries out
//! their decisions. `yproto.rs` is the Yjs wire protocol.

pub mod assist;
mod dependencies;
mod edits;
mod hub;
mod log;
mod mirror;
mod presence;
mod refusal;
mod saver;
pub mod yproto;

pub use edits::EditRequest;
pub use hub::{CellRun, Hub, HubSettings, Joined, Subscribed};
pub use log::Frame;
pub use presence::Who;
pub use refusal::Refusal;
