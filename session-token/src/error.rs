use thiserror::Error;

/// Why a token or key was refused. The messages are safe to show a client: they never echo the
/// token or key material.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token is longer than [`crate::MAX_TOKEN_LEN`].
    #[error("token is too long ({len} bytes, limit {limit})")]
    TooLong { len: usize, limit: usize },
    /// Not three base64url segments, or a segment is not the JSON it should be.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than EdDSA.
    #[error("token algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// The signature does not verify with our public key.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired {ago_secs} s ago")]
    Expired { ago_secs: u64 },
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The token was minted for another document.
    #[error("token is for another document")]
    WrongDocument,
    /// The token was minted for another pod.
    #[error("token is for another pod")]
    WrongPod,
    /// The token is of another kind (a Jupyter API token where a session token is needed, or
    /// the reverse).
    #[error("token is not for this service")]
    WrongAudience,
    /// A key file could not be parsed.
    #[error("key is invalid: {0}")]
    Key(String),
}
