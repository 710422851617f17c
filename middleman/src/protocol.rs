//! The document protocol's types, from the `doc-protocol` crate (re-exported so that paths stay
//! short: `crate::protocol::ServerEvent`).

pub use doc_protocol::*;
