//! Logging and metrics set-up, shared with Watchman (the `telemetry` crate).

pub use telemetry::{init_logging, prometheus};
