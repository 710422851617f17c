//! The HTTP error of Middleman's boundary: every refusal before a WebSocket upgrade, and every
//! failed `/api/notebook` or `/api/files` request, renders as its status and a JSON body
//! `{"error": code, "message": text}` (docs/protocol.md lists the codes).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::auth::AuthError;
use crate::collab::Refusal;
use crate::document::DocumentError;

/// Why an HTTP request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The token or the Origin did not pass.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The hub refused (the store is unreachable, the document is full).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Middleman is draining.
    #[error("middleman is shutting down")]
    ShuttingDown,
    /// A viewer tried to replace the document.
    #[error("viewers cannot import notebooks")]
    ViewerImport,
    /// The body of an import is not JSON.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body of an import is JSON but not an nbformat 4 notebook.
    #[error(transparent)]
    BadNotebook(DocumentError),
    /// The body of an import is larger than `--max-import-bytes`.
    #[error("the notebook is larger than the import limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// A Yjs-only connection named another room than the token's document.
    #[error("the room is not the token's document")]
    WrongRoom,
    /// A viewer tried to change the workspace's files.
    #[error("viewers cannot change files")]
    ViewerWrite,
    /// An upload is larger than `--max-upload-bytes`.
    #[error("the file is larger than the upload limit of {limit} bytes; nothing was written")]
    UploadTooLarge { limit: u64 },
    /// A file request the workspace refused.
    #[error(transparent)]
    Files(#[from] crate::workspace::WorkspaceError),
    /// The body of an import could not be read.
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    /// A viewer tried to interrupt or restart the kernel.
    #[error("viewers cannot interrupt or restart the kernel")]
    ViewerAction,
    /// A restarted kernel did not become ready within `--kernel-startup-timeout`.
    #[error("the kernel did not come back in time; it is still starting or has failed")]
    KernelNotReady,
}

impl HttpError {
    /// The status and the machine-readable code of the body.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            HttpError::Auth(e) => (e.status(), e.code()),
            HttpError::Refused(Refusal::StoreUnavailable) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            HttpError::Refused(Refusal::DocumentFull { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "document_full")
            }
            // Nothing else reaches HTTP; should it, it is the client's request that was wrong.
            HttpError::Refused(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            HttpError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            HttpError::ViewerImport => (StatusCode::FORBIDDEN, "forbidden"),
            HttpError::NotJson(_) | HttpError::BadNotebook(_) => {
                (StatusCode::BAD_REQUEST, "bad_notebook")
            }
            HttpError::WrongRoom => (StatusCode::FORBIDDEN, "wrong_document"),
            HttpError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            HttpError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            HttpError::ViewerWrite | HttpError::ViewerAction => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            HttpError::KernelNotReady => (StatusCode::GATEWAY_TIMEOUT, "kernel_not_ready"),
            HttpError::UploadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            HttpError::Files(e) => (files_status(e), e.code()),
        }
    }
}

/// The status of a workspace refusal.
fn files_status(error: &crate::workspace::WorkspaceError) -> StatusCode {
    use crate::workspace::WorkspaceError as W;
    match error {
        W::BadPath(_) => StatusCode::BAD_REQUEST,
        W::NotFound(_) => StatusCode::NOT_FOUND,
        W::Symlink(_) | W::NotRegular { .. } | W::Permission(_) => StatusCode::FORBIDDEN,
        W::NotADirectory(_) | W::IsADirectory(_) | W::Exists(_) | W::NotEmpty(_) => {
            StatusCode::CONFLICT
        }
        W::Full => StatusCode::INSUFFICIENT_STORAGE,
        W::TooMany(_) => StatusCode::PAYLOAD_TOO_LARGE,
        W::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        W::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}
