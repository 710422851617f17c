//! The Middleman document protocol: every message a client and Middleman exchange over the
//! document WebSocket, and the views of cells, outputs and the dependency graph they carry.
//!
//! One crate of types, serialised one way (JSON text frames, `type` tag in `snake_case`), used by
//! Middleman, its tests and the load drivers; the web client's TypeScript declarations are
//! generated from it (`protocol-ts`, behind the `ts` feature) and checked by
//! `scripts/check-protocol-types.sh`. It depends on serde alone: no async runtime, HTTP, ZeroMQ,
//! CRDT or parser, so anything may speak the protocol without pulling in the server.
//! `docs/protocol.md` is the prose version. The Yjs binary frames are not here: they are
//! y-protocols' own format (`middleman::collab::yproto`).
//!
//! Outputs travel in nbformat's own shape (`output_type` = `stream`, `display_data`,
//! `execute_result`, `error`) so that what a client shows is exactly what an `.ipynb` would store.

mod assist;
mod cell;
mod checkpoint;
mod client;
mod event;
mod execution;
mod graph;
mod limits;
mod output;

pub use assist::{
    AssistAnswer, AssistRefusal, Completion, TABLE_MIME, TableColumn, TableOutput, TableSort,
};
pub use cell::{
    CellHeader, CellKind, CellRuntime, CellState, CellView, DeferredOutputs, GraphRule, Reactivity,
    RunRecord, StateCause,
};
pub use checkpoint::{LostFile, LostName, RerunCell, RestoredNames, Resume};
pub use client::ClientMessage;
pub use event::{ErrorCode, PresenceInfo, ServerEvent, ServerFrame, Snapshot};
pub use execution::{
    ExecutionStatus, ExecutionSummary, InputOutcome, KernelDescription, KernelState, PendingInput,
};
pub use graph::{GraphCell, GraphError};
pub use limits::{Limits, MAX_AWARENESS_IDS, MAX_AWARENESS_STATE_BYTES, MAX_CURSOR_BYTES};
pub use output::{Output, StreamName};

/// Version of this protocol, sent in [`ServerEvent::Welcome`].
pub const PROTOCOL_VERSION: u32 = 1;
