//! Checkpoint objects moved straight between a pod and object storage, with the pre-signed URLs
//! Watchman hands out for the pod's own document's objects (one object, one method, a few
//! minutes each): the store's credentials never reach the pod, and the bytes do not pass
//! through Watchman. HTTP or HTTPS (the system's trusted roots).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyDataStream, BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWrite;

use crate::checkpoints::{CheckpointError, copy_checked};

type UrlBody = BoxBody<Bytes, std::io::Error>;
/// (transfer, object) -> (URL, usable until).
type Known = HashMap<(Transfer, String), (String, Instant)>;

/// Which way an object moves (`GET` or `PUT` in Watchman's `urls` request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum Transfer {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "PUT")]
    Put,
}

impl Transfer {
    pub(crate) fn method(self) -> &'static str {
        match self {
            Transfer::Get => "GET",
            Transfer::Put => "PUT",
        }
    }
}

/// Bytes read from a file at a time for an upload.
const CHUNK: usize = 1 << 20;

/// A URL is not used in its last `MARGIN` (a transfer started then could outlive it).
const MARGIN: Duration = Duration::from_secs(30);

/// The HTTP(S) client and the URLs Watchman handed out, until they expire.
#[derive(Clone)]
pub(crate) struct Urls {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, UrlBody>,
    known: Arc<Mutex<Known>>,
    /// Whether Watchman hands out URLs at all (`None`: not asked yet).
    pub(crate) presigns: Arc<Mutex<Option<bool>>>,
}

impl Urls {
    pub(crate) fn new() -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(b) => b,
            Err(error) => {
                // No trusted roots on this host: plain HTTP stores still work, HTTPS fails
                // with a clear error on use.
                tracing::warn!(%error, "no trusted roots for checkpoint URLs");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            known: Arc::new(Mutex::new(HashMap::new())),
            presigns: Arc::new(Mutex::new(None)),
        }
    }

    /// A usable URL for the object, if one was handed out.
    pub(crate) fn get(&self, transfer: Transfer, sha256: &str) -> Option<String> {
        let known = self.known.lock().ok()?;
        let (url, until) = known.get(&(transfer, sha256.to_owned()))?;
        (Instant::now() < *until).then(|| url.clone())
    }

    /// Keeps URLs that stay valid for `ttl` from now.
    pub(crate) fn remember(
        &self,
        transfer: Transfer,
        urls: impl IntoIterator<Item = (String, String)>,
        ttl: Duration,
    ) {
        let until = Instant::now() + ttl.saturating_sub(MARGIN);
        if let Ok(mut known) = self.known.lock() {
            let now = Instant::now();
            known.retain(|_, (_, u)| *u > now);
            for (sha, url) in urls {
                known.insert((transfer, sha), (url, until));
            }
        }
    }

    /// Uploads `size` bytes of `file` to `url` (with `headers`: Watchman's own URL needs the
    /// pod's credential; a pre-signed one needs nothing), streamed.
    pub(crate) async fn put(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        file: tokio::fs::File,
        size: u64,
    ) -> Result<(), CheckpointError> {
        let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK).map_ok(Frame::data);
        let mut request = hyper::Request::put(url).header(hyper::header::CONTENT_LENGTH, size);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(StreamBody::new(stream).boxed())
            .map_err(|e| transfer_error("PUT", &e))?;
        let response = tokio::time::timeout(transfer_time(size), self.client.request(request))
            .await
            .map_err(|_| transfer_error("PUT", &"timed out"))?
            .map_err(|e| transfer_error("PUT", &e))?;
        let status = response.status();
        if !status.is_success() {
            let body = read_error(response.into_body()).await;
            return Err(transfer_error("PUT", &format!("{status}: {body}")));
        }
        Ok(())
    }

    /// Downloads the object at `url` (with `headers`, as for [`Urls::put`]) into `dst`,
    /// streamed and checked against its name.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        sha256: &str,
        dst: impl AsyncWrite + Unpin,
        limit: u64,
    ) -> Result<(), CheckpointError> {
        let mut request = hyper::Request::get(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| transfer_error("GET", &e))?;
        let within = transfer_time(limit.min(1 << 30));
        let fetched = tokio::time::timeout(within, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transfer_error("GET", &e))?;
            let status = response.status();
            if status == hyper::StatusCode::NOT_FOUND {
                return Err(CheckpointError::Missing(sha256.to_owned()));
            }
            if !status.is_success() {
                let body = read_error(response.into_body()).await;
                return Err(transfer_error("GET", &format!("{status}: {body}")));
            }
            let stream = BodyDataStream::new(response.into_body()).map_err(std::io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            copy_checked(reader, dst, sha256, limit, Path::new(sha256)).await
        })
        .await;
        fetched.map_err(|_| transfer_error("GET", &"timed out"))?
    }
}

/// A minute, plus the time to move `bytes` at 10 MiB/s.
fn transfer_time(bytes: u64) -> Duration {
    Duration::from_secs(60 + bytes / (10 << 20))
}

fn transfer_error(method: &str, e: &dyn std::fmt::Display) -> CheckpointError {
    CheckpointError::Transfer(format!("{method} through a pre-signed URL: {e}"))
}

/// The start of an error answer (S3 answers XML), for the log.
async fn read_error(body: hyper::body::Incoming) -> String {
    let limited = http_body_util::Limited::new(body, 4096);
    match tokio::time::timeout(Duration::from_secs(5), limited.collect()).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes())
            .chars()
            .take(300)
            .collect(),
        _ => String::new(),
    }
}
