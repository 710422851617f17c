//! Authenticating a connection: the session token and the browser's Origin.

use axum::http::{HeaderMap, StatusCode, header};
use session_token::{Claims, Expectations, TokenError, VerifyingKey};

/// Why a connection was refused before the WebSocket upgrade.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the `Authorization` header or the `token` query parameter.
    #[error("a session token is required (Authorization: Bearer <token>, or ?token=)")]
    Missing,
    /// The token failed verification.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// A browser page of another origin tried to connect.
    #[error("origin {0:?} is not allowed")]
    Origin(String),
}

impl AuthError {
    /// HTTP status for the refusal: 401 for credentials, 403 for a token that is valid but
    /// not for this server, or a foreign origin.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing => StatusCode::UNAUTHORIZED,
            AuthError::Token(TokenError::WrongDocument | TokenError::WrongPod)
            | AuthError::Origin(_) => StatusCode::FORBIDDEN,
            AuthError::Token(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// Short machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Token(TokenError::Expired { .. }) => "token_expired",
            AuthError::Token(TokenError::WrongDocument) => "token_wrong_document",
            AuthError::Token(TokenError::WrongPod) => "token_wrong_pod",
            AuthError::Token(_) => "token_invalid",
            AuthError::Origin(_) => "origin_not_allowed",
        }
    }
}

/// Checks a connection's token against this server's document and pod.
#[derive(Debug)]
pub struct Authenticator {
    key: VerifyingKey,
    /// The configured document, or the one this pod bound to on its first connection.
    document: std::sync::OnceLock<String>,
    pod: String,
    leeway_secs: u64,
    allowed_origins: Vec<String>,
}

impl Authenticator {
    pub fn new(
        key: VerifyingKey,
        document: Option<String>,
        pod: String,
        leeway_secs: u64,
        allowed_origins: Vec<String>,
    ) -> Self {
        let bound = std::sync::OnceLock::new();
        if let Some(d) = document {
            let _ = bound.set(d);
        }
        Self {
            key,
            document: bound,
            pod,
            leeway_secs,
            allowed_origins,
        }
    }

    /// The document this server serves, once known.
    pub fn document(&self) -> Option<&str> {
        self.document.get().map(String::as_str)
    }

    /// The token from `Authorization: Bearer` (or Jupyter's `token`), else the `token` query
    /// parameter.
    pub fn token_from<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(session_token::from_authorization)
            .or(query_token)
            .filter(|t| !t.is_empty())
    }

    /// Verifies origin and token.
    pub fn check(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Claims, AuthError> {
        self.check_origin(headers)?;
        let token = Self::token_from(headers, query_token).ok_or(AuthError::Missing)?;
        let expect = Expectations {
            document: self.document.get().map(String::as_str),
            pod: Some(&self.pod),
            leeway_secs: self.leeway_secs,
            audience: None,
        };
        let claims = self.key.verify(token, &expect)?;
        // A pod serves one document for its whole life: the first valid token binds it. The
        // token is signed by Watchman, which only mints tokens for the document it bound to
        // this pod, so the first token's document is the allocated one.
        let bound = self.document.get_or_init(|| {
            tracing::info!(document = %claims.doc, "pod bound to its document");
            claims.doc.clone()
        });
        if *bound != claims.doc {
            return Err(AuthError::Token(TokenError::WrongDocument));
        }
        Ok(claims)
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            // Not a browser (browsers always send Origin on WebSocket handshakes).
            return Ok(());
        };
        let allowed = if self.allowed_origins.is_empty() {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| !host.is_empty() && rest.trim_end_matches('/') == host)
        } else {
            self.allowed_origins
                .iter()
                .any(|o| o.trim_end_matches('/') == origin)
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Origin(origin.to_owned()))
        }
    }
}
