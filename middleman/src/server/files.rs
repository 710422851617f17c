//! The file API over the kernel's workspace (`/api/files`): list, download, upload, rename and
//! delete, authenticated like `/api/notebook` (editors write; viewers list and download). The
//! filesystem rules live in [`crate::workspace`]; this is the HTTP side: paths from the query,
//! bodies streamed under a cap, refusals as JSON with a metric and a log line each.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{AppState, authorize};
use crate::server::error::HttpError;
use crate::workspace::{RelPath, WorkspaceError};

/// Bytes read from a file per chunk of a download.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, serde::Deserialize)]
pub(super) struct PathQuery {
    token: Option<String>,
    #[serde(default)]
    path: String,
    /// Downloads: at most this many bytes from the start (a preview).
    limit: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct RenameBody {
    from: String,
    to: String,
}

/// Runs one operation's handler and counts its outcome, and a refusal by its reason, with a
/// log line.
async fn recorded<T>(
    op: &'static str,
    handler: impl Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    let result = handler.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(error) => {
            let code = error.status_and_code().1;
            metrics::counter!("middleman_files_refusals_total", "reason" => code).increment(1);
            tracing::info!(op, %error, code, "file request refused");
            "refused"
        }
    };
    metrics::counter!("middleman_files_requests_total", "op" => op, "outcome" => outcome)
        .increment(1);
    result
}

/// Runs a blocking workspace call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| {
            HttpError::Files(WorkspaceError::Io {
                path: String::new(),
                source: std::io::Error::other(e.to_string()),
            })
        })?
        .map_err(HttpError::Files)
}

/// Refuses viewers.
fn editor(claims: &session_token::Claims) -> Result<(), HttpError> {
    if claims.role.can_edit() {
        Ok(())
    } else {
        Err(HttpError::ViewerWrite)
    }
}

/// `GET /api/files?path=`: a directory's entries, and what this caller may do.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    recorded("list", async {
        let claims = authorize(&state, &headers, query.token.as_deref()).await?;
        let path = RelPath::parse(&query.path)?;
        let workspace = state.workspace.clone();
        let shown = path.to_string();
        let listing = blocking(move || workspace.list(&path)).await?;
        Ok(Json(serde_json::json!({
            "path": shown,
            "entries": listing.entries,
            "omitted": listing.omitted,
            "can_edit": claims.role.can_edit(),
            "max_upload_bytes": state.args.max_upload_bytes,
        }))
        .into_response())
    })
    .await
}

/// `GET /api/files/content?path=[&limit=]`: a regular file, as an attachment.
pub(super) async fn download(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    recorded("download", async {
        authorize(&state, &headers, query.token.as_deref()).await?;
        let path = RelPath::parse(&query.path)?;
        let name = path.name().unwrap_or("file").to_owned();
        let workspace = state.workspace.clone();
        let opened = blocking(move || workspace.open_read(&path)).await?;
        let length = query.limit.map_or(opened.size, |l| l.min(opened.size));
        metrics::counter!("middleman_files_downloaded_bytes_total").increment(length);
        // Exactly `length` bytes: a file the kernel grows meanwhile is cut there, one it
        // shrinks ends the response early (the client sees a short body).
        let reader = tokio::fs::File::from_std(opened.file).take(length);
        let stream = futures_util::stream::unfold(reader, |mut reader| async move {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), reader))
                }
                Err(e) => Some((Err(e), reader)),
            }
        });
        let mut response = Body::from_stream(stream).into_response();
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-file-size", HeaderValue::from(opened.size));
        if let Ok(v) = HeaderValue::from_str(&attachment(&name)) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
        Ok(response)
    })
    .await
}

/// `Content-Disposition` naming `name`: an ASCII fallback and the exact name (RFC 6266).
fn attachment(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `PUT /api/files/content?path=`: the body becomes the file (editors only), streamed to a
/// temporary under `--max-upload-bytes` and renamed over the target when complete.
pub(super) async fn upload(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    recorded("upload", async {
        let claims = authorize(&state, &headers, query.token.as_deref()).await?;
        editor(&claims)?;
        let path = RelPath::parse(&query.path)?;
        let limit = state.args.max_upload_bytes;
        let too_large = HttpError::UploadTooLarge { limit };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large);
        }
        let workspace = state.workspace.clone();
        let target = path.clone();
        let (pending, file) = blocking(move || workspace.create_upload(&target)).await?;
        // From here, returning early drops `pending`, which removes the temporary.
        let mut file = tokio::fs::File::from_std(file);
        let mut written: u64 = 0;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| HttpError::BadBody(e.to_string()))?;
            written = written.saturating_add(chunk.len() as u64);
            if written > limit {
                return Err(too_large);
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| write_error(&path, e))?;
        }
        file.flush().await.map_err(|e| write_error(&path, e))?;
        // Delayed allocation can report a full quota only when the data reaches the disk.
        file.sync_all().await.map_err(|e| write_error(&path, e))?;
        drop(file);
        blocking(move || pending.commit()).await?;
        metrics::counter!("middleman_files_uploaded_bytes_total").increment(written);
        tracing::info!(user = %claims.sub, path = %path, bytes = written, "file uploaded");
        Ok((
            StatusCode::CREATED,
            Json(serde_json::json!({ "path": path.to_string(), "size": written })),
        )
            .into_response())
    })
    .await
}

fn write_error(path: &RelPath, error: std::io::Error) -> HttpError {
    let errno = error.raw_os_error().map(nix::errno::Errno::from_raw);
    HttpError::Files(match errno {
        Some(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT | nix::errno::Errno::EFBIG) => {
            WorkspaceError::Full
        }
        _ => WorkspaceError::Io {
            path: path.to_string(),
            source: error,
        },
    })
}

/// `DELETE /api/files?path=`: a file, link or empty directory (editors only).
pub(super) async fn delete(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    recorded("delete", async {
        let claims = authorize(&state, &headers, query.token.as_deref()).await?;
        editor(&claims)?;
        let path = RelPath::parse(&query.path)?;
        let workspace = state.workspace.clone();
        let target = path.clone();
        let kind = blocking(move || workspace.delete(&target)).await?;
        tracing::info!(user = %claims.sub, path = %path, %kind, "file deleted");
        Ok(Json(serde_json::json!({ "deleted": path.to_string() })).into_response())
    })
    .await
}

/// `POST /api/files/rename` `{"from", "to"}`: never replaces (editors only).
pub(super) async fn rename(
    State(state): State<Arc<AppState>>,
    Query(query): Query<PathQuery>,
    headers: HeaderMap,
    body: Result<Json<RenameBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, HttpError> {
    recorded("rename", async {
        let claims = authorize(&state, &headers, query.token.as_deref()).await?;
        editor(&claims)?;
        let Json(body) = body.map_err(|e| HttpError::BadBody(e.body_text()))?;
        let from = RelPath::parse(&body.from)?;
        let to = RelPath::parse(&body.to)?;
        let workspace = state.workspace.clone();
        let (f, t) = (from.clone(), to.clone());
        blocking(move || workspace.rename(&f, &t)).await?;
        tracing::info!(user = %claims.sub, from = %from, to = %to, "file renamed");
        Ok(
            Json(serde_json::json!({ "from": from.to_string(), "to": to.to_string() }))
                .into_response(),
        )
    })
    .await
}

/// Creates the counters at zero (see `register_metrics`).
pub(super) fn register_metrics() {
    for op in ["list", "download", "upload", "delete", "rename"] {
        for outcome in ["ok", "refused"] {
            metrics::counter!("middleman_files_requests_total", "op" => op, "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::counter!("middleman_files_uploaded_bytes_total").increment(0);
    metrics::counter!("middleman_files_downloaded_bytes_total").increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachment_names_are_quoted_safely() {
        assert_eq!(
            attachment("a b.csv"),
            "attachment; filename=\"a b.csv\"; filename*=UTF-8''a%20b.csv"
        );
        let odd = attachment("x\".csv");
        assert!(odd.starts_with("attachment; filename=\"x_.csv\""));
        assert!(HeaderValue::from_str(&attachment("données.csv")).is_ok());
    }
}
