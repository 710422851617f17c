//! Why the gateway turned a request away, as the JSON a client reads and the label a metric
//! counts. Every refusal is decided before an upstream connection is opened, except the last
//! three, which are about the upstream itself.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no session token (Authorization: Bearer, or ?token=)")]
    TokenMissing,
    #[error("{0}")]
    TokenInvalid(String),
    #[error("the session token has expired")]
    TokenExpired,
    #[error("the session token is for another pod")]
    WrongPod,
    #[error("this page's origin may not connect here")]
    OriginNotAllowed,
    #[error("too many connections for this user")]
    UserLimit,
    #[error("too many connections from this address")]
    AddressLimit,
    #[error("this gateway is at its connection limit; retry")]
    Capacity,
    #[error("no such pod")]
    UnknownPod,
    #[error("Kernel does not exist: {0}")]
    UnknownKernel(String),
    #[error("the pod's allocation ended ({reason}): {detail}")]
    PodEnded { reason: String, detail: String },
    #[error("this gateway is shutting down; retry")]
    Draining,
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("pods cannot be looked up right now; retry")]
    ResolveFailed,
    #[error("the pod could not be reached")]
    UpstreamUnreachable,
    #[error("the pod did not answer in time")]
    UpstreamTimeout,
}

impl Refusal {
    /// The `error` field, and the `reason` label of `gateway_refusals_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::TokenMissing => "token_missing",
            Refusal::TokenInvalid(_) => "token_invalid",
            Refusal::TokenExpired => "token_expired",
            Refusal::WrongPod => "wrong_pod",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::UserLimit => "user_limit",
            Refusal::AddressLimit => "address_limit",
            Refusal::Capacity => "capacity",
            Refusal::UnknownPod => "unknown_pod",
            Refusal::UnknownKernel(_) => "unknown_kernel",
            Refusal::PodEnded { .. } => "pod_ended",
            Refusal::Draining => "draining",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::ResolveFailed => "resolve_failed",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::TokenMissing | Refusal::TokenInvalid(_) | Refusal::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::WrongPod | Refusal::OriginNotAllowed => StatusCode::FORBIDDEN,
            Refusal::UserLimit | Refusal::AddressLimit | Refusal::Capacity => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::UnknownPod | Refusal::UnknownKernel(_) => StatusCode::NOT_FOUND,
            Refusal::PodEnded { .. } => StatusCode::GONE,
            Refusal::Draining | Refusal::ResolveFailed => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The error as a client's response; also counted.
    pub fn respond(&self) -> Response {
        let (error, label) = (self.code(), self.metric_label());
        if let Some(label) = label {
            metrics::counter!("gateway_refusals_total", "reason" => label).increment(1);
        }
        let mut body = serde_json::json!({ "error": error, "message": self.to_string() });
        if let Refusal::PodEnded { reason, detail } = self {
            body["reason"] = serde_json::json!(reason);
            body["detail"] = serde_json::json!(detail);
        }
        let mut response = (self.status(), axum::Json(body)).into_response();
        let h = response.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(
            self,
            Refusal::Draining | Refusal::Capacity | Refusal::ResolveFailed
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    /// The refusals counted by `gateway_refusals_total` (upstream failures are counted by
    /// `gateway_upstream_errors_total` instead).
    fn metric_label(&self) -> Option<&'static str> {
        match self {
            Refusal::ResolveFailed | Refusal::UpstreamUnreachable | Refusal::UpstreamTimeout => {
                None
            }
            other => Some(other.code()),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.respond()
    }
}
