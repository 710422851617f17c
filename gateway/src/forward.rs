//! Plain HTTP through the gateway: a pod's data endpoints (`/pods/<pod>/api/...`), the
//! landing page (`/`, `/open`, from Watchman) and the Jupyter Server API (`/jupyter/...`, from
//! Watchman).
//!
//! A pod is untrusted and shares the gateway's origin with every other pod, so what it answers
//! is rewritten before it reaches a browser: only an allowlist of headers passes (no
//! `Set-Cookie`, no policy of the pod's choosing), a `Content-Type` survives only when it is
//! JSON, plain text or bytes (anything else becomes `application/octet-stream`), everything
//! but JSON is an attachment, and every answer carries `Content-Security-Policy: default-src
//! 'none'; sandbox` and `nosniff`. Nothing a pod returns can run as a page or a script here.
//! Bodies stream through both ways; the request body is capped.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::refusal::Refusal;

/// Request headers passed to a pod.
const TO_POD: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::IF_NONE_MATCH,
    header::IF_MATCH,
];

/// Response headers passed from a pod (`Content-Type` and `Content-Disposition` are decided
/// separately).
const FROM_POD: &[HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::VARY,
    header::RETRY_AFTER,
];

/// Media types a pod may answer with as such.
const SAFE_TYPES: &[&str] = &[
    "application/json",
    "text/plain",
    "application/octet-stream",
    "application/x-ipynb+json",
];

/// Request headers passed to the landing page (Watchman, trusted).
const TO_LANDING: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
];

/// Response headers passed from the landing page.
const FROM_LANDING: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_SECURITY_POLICY,
    header::REFERRER_POLICY,
    header::CACHE_CONTROL,
    header::LOCATION,
];

/// Request headers passed to the Jupyter API (Watchman, which checks the token).
const TO_JUPYTER: &[HeaderName] = &[
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::ACCEPT,
];

/// Response headers passed from the Jupyter API.
const FROM_JUPYTER: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::LOCATION,
    header::CACHE_CONTROL,
];

/// The HTTP client towards pods and Watchman's page.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    max_body_bytes: usize,
}

/// Who answers, and so how far it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Pod,
    Landing,
    /// Watchman's Jupyter Server API.
    Jupyter,
}

impl Forwarder {
    pub fn new(connect_timeout: Duration, max_body_bytes: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector);
        Self {
            client,
            max_body_bytes,
        }
    }

    /// Sends `request` to `base` + `path_and_query` and returns the rewritten answer.
    pub async fn forward(
        &self,
        request: Request<Body>,
        base: &str,
        path_and_query: &str,
        client_ip: std::net::IpAddr,
        upstream: Upstream,
    ) -> Result<Response<Body>, Refusal> {
        let uri: Uri = format!("{base}{path_and_query}")
            .parse()
            .map_err(|_| Refusal::BadRequest("the path is not a valid URL"))?;
        let (parts, body) = request.into_parts();
        let patch = upstream == Upstream::Jupyter && parts.method == Method::PATCH;
        if !patch
            && !matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::PUT | Method::POST | Method::DELETE
            )
        {
            return Err(Refusal::BadRequest("method not allowed"));
        }
        let allowed = match upstream {
            Upstream::Pod => TO_POD,
            Upstream::Landing => TO_LANDING,
            Upstream::Jupyter => TO_JUPYTER,
        };
        let mut out = Request::builder().method(parts.method).uri(uri);
        if let Some(h) = out.headers_mut() {
            copy(&parts.headers, h, allowed);
            if let Ok(v) = HeaderValue::from_str(&client_ip.to_string()) {
                h.insert("x-forwarded-for", v);
            }
        }
        let limited = http_body_util::Limited::new(body, self.max_body_bytes);
        let out = out
            .body(Body::new(limited))
            .map_err(|_| Refusal::BadRequest("the request cannot be forwarded"))?;
        let answer = match self.client.request(out).await {
            Ok(a) => a,
            Err(error) => {
                let too_large = std::error::Error::source(&error)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_large {
                    return Err(Refusal::BadRequest("the request body is too large"));
                }
                let kind = if error.is_connect() {
                    "connect"
                } else {
                    "refused"
                };
                metrics::counter!("gateway_upstream_errors_total", "kind" => kind).increment(1);
                tracing::debug!(%error, "upstream request failed");
                return Err(Refusal::UpstreamUnreachable);
            }
        };
        let (parts, body) = answer.into_parts();
        let mut response = Response::new(Body::new(body.map_err(axum::Error::new)));
        *response.status_mut() = parts.status;
        let h = response.headers_mut();
        match upstream {
            Upstream::Landing => copy(&parts.headers, h, FROM_LANDING),
            Upstream::Jupyter => {
                copy(&parts.headers, h, FROM_JUPYTER);
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                webclient::hardening_headers(h);
            }
            Upstream::Pod => sanitize_pod_headers(&parts.headers, h),
        }
        Ok(response)
    }
}

fn copy(from: &HeaderMap, to: &mut HeaderMap, allowed: &[HeaderName]) {
    for name in allowed {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// What a browser gets of a pod's answer (see the module's documentation).
pub fn sanitize_pod_headers(from: &HeaderMap, to: &mut HeaderMap) {
    copy(from, to, FROM_POD);
    let given = from
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = given
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let safe = SAFE_TYPES.contains(&essence.as_str());
    let content_type = if !safe {
        "application/octet-stream".to_owned()
    } else if essence.starts_with("text/") {
        // Text is UTF-8 here, whatever the pod says: no charset games.
        format!("{essence}; charset=utf-8")
    } else {
        essence.clone()
    };
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        to.insert(header::CONTENT_TYPE, v);
    }
    let json = essence == "application/json" || essence == "application/x-ipynb+json";
    let disposition = from.get(header::CONTENT_DISPOSITION).filter(|v| {
        v.to_str()
            .is_ok_and(|s| s.trim_start().starts_with("attachment"))
    });
    match disposition {
        Some(v) => {
            to.insert(header::CONTENT_DISPOSITION, v.clone());
        }
        None if !json => {
            to.insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment"),
            );
        }
        None => {}
    }
    to.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox; frame-ancestors 'none'"),
    );
    to.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    webclient::hardening_headers(to);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut from = HeaderMap::new();
        for (k, v) in pairs {
            from.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut to = HeaderMap::new();
        sanitize_pod_headers(&from, &mut to);
        to
    }

    #[test]
    fn a_pod_cannot_serve_a_page_or_a_script_or_set_a_cookie() {
        for hostile in [
            "text/html",
            "text/html; charset=utf-8",
            "application/javascript",
            "text/javascript",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "multipart/x-mixed-replace; boundary=x",
            "",
        ] {
            let h = pod(&[
                ("content-type", hostile),
                ("set-cookie", "session=stolen; Path=/"),
                ("content-security-policy", "script-src *"),
                ("access-control-allow-origin", "*"),
                ("content-disposition", "inline"),
            ]);
            assert_eq!(
                h[header::CONTENT_TYPE],
                "application/octet-stream",
                "{hostile}"
            );
            assert_eq!(h[header::CONTENT_DISPOSITION], "attachment", "{hostile}");
            assert!(h.get(header::SET_COOKIE).is_none());
            assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
            assert_eq!(
                h[header::CONTENT_SECURITY_POLICY],
                "default-src 'none'; sandbox; frame-ancestors 'none'"
            );
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn data_keeps_its_type_and_attachments_their_names() {
        let h = pod(&[("content-type", "application/json"), ("etag", "\"abc\"")]);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert!(h.get(header::CONTENT_DISPOSITION).is_none());
        assert_eq!(h[header::ETAG], "\"abc\"");
        let h = pod(&[
            ("content-type", "application/x-ipynb+json"),
            ("content-disposition", "attachment; filename=\"a.ipynb\""),
        ]);
        assert_eq!(h[header::CONTENT_TYPE], "application/x-ipynb+json");
        assert_eq!(
            h[header::CONTENT_DISPOSITION],
            "attachment; filename=\"a.ipynb\""
        );
        let h = pod(&[("content-type", "TEXT/PLAIN; charset=utf-7")]);
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h[header::CONTENT_DISPOSITION], "attachment");
    }
}
