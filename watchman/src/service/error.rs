//! Why a request failed; mapped to gRPC codes at the boundary ([`crate::grpc`]).

use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such plan.
    #[error("unknown plan {plan:?} (plans: {known})")]
    UnknownPlan { plan: String, known: String },
    /// No pod became available before the deadline.
    #[error(
        "no pod of plan {plan:?} became available within {waited_ms} ms (warm {warm}, starting {starting}); retry later or with a longer wait"
    )]
    Exhausted {
        plan: String,
        waited_ms: u64,
        warm: u32,
        starting: u32,
    },
    /// The document has no live allocation.
    #[error("document {0:?} has no live allocation")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A document or checkpoint store failed.
    #[error("{0}")]
    Unavailable(String),
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(#[from] session_token::TokenError),
}
