//! The kernel agent: its wire protocol, the agent itself, and Middleman's client.

pub mod client;
pub mod protocol;
pub mod server;
