//! The shared document: ordered cells whose sources are collaborative text (a `yrs` CRDT, laid
//! out like jupyter_ydoc's notebook so Yjs clients interoperate), with outputs, execution counts
//! and states kept outside the CRDT (putting outputs in the shared document is what makes other
//! tools' notebooks bloat and load slowly). Pure logic: no I/O, no kernel, no sockets.

pub mod ipynb;
mod notebook;
pub mod persist;

pub use notebook::{CellKind, CellRuntime, CellState, CellView, DocumentError, Notebook};
