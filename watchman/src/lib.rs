//! Watchman: keeps a warm buffer of kernel pods per plan and allocates one to a document in
//! milliseconds.
//!
//! Layers, inner to outer:
//! - domain: [`plan`] (plans file, warm target formula) and [`model`] (pods, allocations,
//!   health, end and discard reasons); no Kubernetes, no gRPC, no I/O.
//! - decisions: [`pool`], pure functions from a snapshot of the pods to actions.
//! - logic: [`service`] (the allocator, the reconciler that applies the pool's decisions,
//!   the election), generic over the adapters below and knowing nothing of gRPC.
//! - adapters: [`store`] (memory, Redis) and [`backend`] (local processes, Kubernetes).
//! - runs without a browser: [`jobs`] (one-shot executions on the pools, docs/jobs.md).
//! - boundaries: [`grpc`], [`grpc_jobs`] and the HTTP side (health, metrics, the jobs API, the
//!   development page).
//! - wiring: [`config`] (arguments) and [`runtime`] ([`start`], shutdown).

pub mod backend;
pub mod checkpoints;
pub mod config;
pub mod documents;
pub mod grpc;
mod grpc_conn;
pub mod grpc_jobs;
pub mod jobs;
pub mod jupyter;
pub mod model;
pub mod plan;
pub mod pool;
pub mod retention;
pub mod runtime;
pub mod service;
pub mod store;
mod web;

pub use config::Args;
pub use runtime::{Running, Stopped, start};

/// Logging as every nbplat service does it (text or JSON on stderr, `RUST_LOG` filters).
pub fn init_logging(format: config::LogFormat) {
    telemetry::init_logging(format.as_str());
}
