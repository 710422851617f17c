//! The web client: the notebook page and its assets, built from `web/` into `middleman/web-dist/`
//! (committed) and embedded in the binary, so nothing is fetched from anywhere else at run time.
//!
//! Every response carries a strict Content-Security-Policy. The page may load only its own
//! script and style sheet, connect only to this origin, and frame only `/output-frame.html`,
//! which HTML outputs run in: sandboxed without `allow-same-origin` (an opaque origin), with a
//! policy of its own that lets inline scripts run but reach no network.

use std::sync::LazyLock;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// `hashed`: referenced from the page with `?v=<hash>`, so cacheable for a year.
    hashed: bool,
    /// The first 16 hex digits of its SHA-256: the page's `?v=` and its `ETag`.
    hash: LazyLock<String>,
}

macro_rules! asset {
    ($name:ident, $path:literal, $content_type:literal, $hashed:literal) => {
        static $name: Asset = Asset {
            body: include_bytes!($path),
            content_type: $content_type,
            hashed: $hashed,
            hash: LazyLock::new(|| short_hash(include_bytes!($path))),
        };
    };
}

asset!(
    INDEX,
    "../../web-dist/index.html",
    "text/html; charset=utf-8",
    false
);
asset!(
    FRAME,
    "../../web-dist/output-frame.html",
    "text/html; charset=utf-8",
    false
);
asset!(
    APP_JS,
    "../../web-dist/assets/app.js",
    "text/javascript; charset=utf-8",
    true
);
asset!(
    APP_CSS,
    "../../web-dist/assets/app.css",
    "text/css; charset=utf-8",
    true
);
asset!(
    LICENSES,
    "../../web-dist/assets/licenses.txt",
    "text/plain; charset=utf-8",
    false
);

fn short_hash(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_of(asset: &Asset) -> String {
    asset.hash.clone()
}

/// The Content-Security-Policies, built once at start from `--allowed-origin` (the origins that
/// may also embed the client in a frame).
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    /// The page's policy with `{nonce}` where each response's style nonce goes.
    page_template: String,
    /// The same without a nonce, for the assets.
    page: HeaderValue,
    frame: HeaderValue,
}

impl Policies {
    pub(crate) fn new(allowed_origins: &[String]) -> Self {
        // Only origins that are plain scheme://host[:port] go into the header.
        let ancestors: String = std::iter::once("'self'".to_owned())
            .chain(
                allowed_origins
                    .iter()
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| is_origin(o)),
            )
            .collect::<Vec<_>>()
            .join(" ");
        // CodeMirror adds its themes as <style> elements: they carry this response's nonce.
        let page_template = format!(
            "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{{nonce}}'; \
             img-src 'self' data: blob:; connect-src 'self'; frame-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors {ancestors}"
        );
        let page = page_template.replace(" 'nonce-{nonce}'", "");
        // HTML outputs: their own inline scripts and styles, embedded images, and no network.
        // `sandbox allow-scripts` keeps the frame an opaque origin even when it is opened on its
        // own (top level, or framed without the page's sandbox attribute).
        let frame = format!(
            "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; \
             img-src data: blob:; font-src data:; media-src data: blob:; base-uri 'none'; \
             form-action 'none'; frame-ancestors {ancestors}; sandbox allow-scripts"
        );
        Self {
            page_template,
            page: HeaderValue::from_str(&page).unwrap_or(HeaderValue::from_static(
                "default-src 'none'; frame-ancestors 'none'",
            )),
            frame: HeaderValue::from_str(&frame).unwrap_or(HeaderValue::from_static(
                "default-src 'none'; frame-ancestors 'none'",
            )),
        }
    }
}

fn is_origin(o: &str) -> bool {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    rest.is_some_and(|host| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    })
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct Version {
    v: Option<String>,
}

fn serve(asset: &Asset, csp: &HeaderValue, headers: &HeaderMap, version: Option<&str>) -> Response {
    let hash = hash_of(asset);
    let etag = format!("\"{hash}\"");
    let immutable = asset.hashed && version == Some(hash.as_str());
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    if !matches {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The page, with a fresh style nonce in its policy and in its `csp-nonce` meta element (which
/// the client hands to CodeMirror). Never cached, since the nonce changes every time.
pub(crate) fn page(policies: &Policies) -> Response {
    let nonce = fresh_nonce();
    let body = String::from_utf8_lossy(INDEX.body).replace("__CSP_NONCE__", &nonce);
    let csp = policies.page_template.replace("{nonce}", &nonce);
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(INDEX.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match HeaderValue::from_str(&csp) {
        Ok(v) => h.insert(header::CONTENT_SECURITY_POLICY, v),
        Err(_) => h.insert(header::CONTENT_SECURITY_POLICY, policies.page.clone()),
    };
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// 128 random bits, base64 (the nonce of one page response).
fn fresh_nonce() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // No randomness: a nonce that matches nothing, so CodeMirror's styles are refused
        // rather than allowed by a guessable value.
        return "unavailable".to_owned();
    }
    data_encoding::BASE64.encode(&bytes)
}

pub(crate) fn output_frame(policies: &Policies, headers: &HeaderMap) -> Response {
    serve(&FRAME, &policies.frame, headers, None)
}

pub(crate) fn script(policies: &Policies, headers: &HeaderMap, q: &Query<Version>) -> Response {
    serve(&APP_JS, &policies.page, headers, q.v.as_deref())
}

pub(crate) fn style(policies: &Policies, headers: &HeaderMap, q: &Query<Version>) -> Response {
    serve(&APP_CSS, &policies.page, headers, q.v.as_deref())
}

pub(crate) fn licenses(policies: &Policies, headers: &HeaderMap) -> Response {
    serve(&LICENSES, &policies.page, headers, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_the_embedded_assets_by_hash() {
        let index = std::str::from_utf8(INDEX.body).unwrap();
        assert!(index.contains("__CSP_NONCE__"));
        assert!(index.contains(&format!("/assets/app.js?v={}", hash_of(&APP_JS))));
        assert!(index.contains(&format!("/assets/app.css?v={}", hash_of(&APP_CSS))));
    }

    #[test]
    fn policies_are_strict_and_embeddable_by_allowed_origins_only() {
        let p = Policies::new(&[
            "https://app.example.com/".into(),
            "javascript:alert(1)".into(),
            "https://evil.example; script-src *".into(),
        ]);
        let page = p.page.to_str().unwrap();
        assert!(page.contains("script-src 'self';"));
        assert!(page.contains("style-src 'self';"));
        let response = super::page(&p);
        let with_nonce = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        let nonce = with_nonce
            .split("'nonce-")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .unwrap();
        assert_eq!(nonce.len(), 24);
        assert_ne!(
            with_nonce,
            super::page(&p).headers()[header::CONTENT_SECURITY_POLICY]
        );
        assert!(!page.contains("unsafe"));
        assert!(page.ends_with("frame-ancestors 'self' https://app.example.com"));
        let frame = p.frame.to_str().unwrap();
        assert!(frame.contains("default-src 'none'"));
        assert!(!frame.contains("connect-src"));
    }

    #[test]
    fn etags_answer_not_modified_and_versioned_assets_are_immutable() {
        let p = Policies::new(&[]);
        let hash = hash_of(&APP_JS);
        let r = serve(&APP_JS, &p.page, &HeaderMap::new(), Some(&hash));
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        let r = serve(&APP_JS, &p.page, &HeaderMap::new(), Some("old"));
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"{hash}\"")).unwrap(),
        );
        assert_eq!(
            serve(&APP_CSS, &p.page, &h, None).status(),
            StatusCode::OK,
            "another file's tag does not match"
        );
        assert_eq!(
            serve(&APP_JS, &p.page, &h, None).status(),
            StatusCode::NOT_MODIFIED
        );
    }
}
