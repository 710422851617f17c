//! Middleman: the sidecar in every notebook pod.
//!
//! Layers: [`protocol`] (the WebSocket message types, no I/O), [`output`] (output safety, pure
//! logic), [`kernel`] (the ZeroMQ adapter and the session actor that owns the kernel),
//! [`server`] (HTTP and WebSocket), [`config`] and [`cli`] (wiring).

pub mod auth;
pub mod cli;
pub mod collab;
pub mod config;
pub mod document;
pub mod graph;
pub mod kernel;
mod output;
pub mod protocol;
pub mod server;
pub mod telemetry;

pub use server::{Running, StartError, start};
