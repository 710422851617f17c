//! Session tokens: compact JWTs signed with Ed25519 (`alg: EdDSA`).
//!
//! Watchman holds the private key and mints a token per collaborator; Middleman holds only the
//! public key, so a compromised pod can read tokens but never mint one. The claims bind the user,
//! the document, the pod, the role and the expiry; Middleman checks every one of them on every
//! connection.
//!
//! The encoder and verifier are written out here rather than taken from a general JWT library
//! because we accept exactly one algorithm and one key type: there is no `alg` negotiation to get
//! wrong (`none`, HMAC-with-public-key confusion), and the checks are few enough to read in full.

mod claims;
mod error;
mod keys;
mod pod_credential;

pub use claims::{Claims, Role};
pub use error::TokenError;
pub use keys::{SigningKey, VerifyingKey};

/// Largest token we will even try to parse. Real tokens are ~400 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a verifier requires of a token besides a valid signature.
#[derive(Debug, Clone, Default)]
pub struct Expectations<'a> {
    /// The document this server serves; `None` accepts any document.
    pub document: Option<&'a str>,
    /// The pod this server runs in; `None` accepts any pod.
    pub pod: Option<&'a str>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// The token kind required: `None` for session tokens (no `aud`), [`JUPYTER_AUDIENCE`] for
    /// Jupyter API tokens. A token of another kind is refused, so neither passes as the other.
    pub audience: Option<&'a str>,
}

/// The `aud` of a Jupyter API token: a user's key to the Jupyter Server API (kernels on warm
/// pods), never accepted where a session token is needed.
pub const JUPYTER_AUDIENCE: &str = "jupyter";

/// The token in an `Authorization` header's value: `Bearer <t>`, or `token <t>` as Jupyter's
/// clients send it (the scheme in any case). Empty tokens are none.
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
    let token = token.trim();
    (known && !token.is_empty()).then_some(token)
}

/// Current Unix time in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
