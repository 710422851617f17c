//! The shared document: ordered cells whose sources are collaborative text (a `yrs` CRDT, laid
//! out like jupyter_ydoc's notebook so Yjs clients interoperate), with outputs, execution counts
//! and states kept outside the CRDT (putting outputs in the shared document is what makes other
//! tools' notebooks bloat and load slowly). `notebook.rs` (the CRDT and the cells' runtimes) and
//! `ipynb.rs` (nbformat 4.5 import and export) are pure logic; `persist.rs` is the one adapter:
//! snapshots to a file (atomic replace) or Redis.

pub mod ipynb;
mod notebook;
pub mod persist;

pub use doc_protocol::{CellKind, CellRuntime, CellState, CellView};
pub use notebook::{DocumentError, Notebook};
