//! Middleman: the sidecar in every notebook pod.
//!
//! Layers: [`protocol`] (the document protocol's types, from the `doc-protocol` crate), pure
//! logic ([`document`]'s notebook and `.ipynb` conversion, [`graph`] and its reactor, [`sql`]
//! cells, `output` safety), [`collab`] (the document hub: one lock, the one way into the kernel), adapters
//! ([`kernel`]: ZeroMQ and the session actor that owns the kernel; `document::persist`: file and
//! Redis), [`server`] (HTTP and WebSocket), [`config`] and [`cli`] (wiring). Data flows one way:
//! connection -> hub -> kernel session for commands; session -> events -> hub -> connections
//! for what happened.

pub mod auth;
pub mod checkpoint;
pub mod cli;
pub mod collab;
pub mod config;
pub mod document;
pub mod graph;
pub mod jupyter;
pub mod kernel;
mod output;
pub mod protocol;
pub mod server;
pub mod sql;
pub mod telemetry;
pub mod workspace;

pub use server::{Running, StartError, start};
