//! The web client: the notebook page and its assets, built from `web/` into `middleman/web-dist/`
//! (committed) and embedded in the binary, so nothing is fetched from anywhere else at run time.
//!
//! Every response carries a strict Content-Security-Policy. The page may load only its own
//! script and style sheet, connect only to this origin, and frame only its own frame documents,
//! sandboxed without `allow-same-origin` (an opaque origin), each with a policy of its own that
//! reaches no network: `/output-frame.html`, where HTML outputs run with their inline scripts,
//! and `/chart-frame.html`, where `assets/chart.js` (Vega) draws charts, with no inline script
//! and no eval.
//!
//! The script and style sheet are also embedded gzipped (level 9, built by `web/build.mjs`) and
//! sent as such, with `Content-Encoding: gzip`, to clients whose `Accept-Encoding` allows gzip.
//!
//! Middleman serves it for a pod reached directly (development, tests); the gateway serves the
//! same bytes on the public origin, so that no pod ever serves a page there.
//!
//! One file: the assets, their caching and encoding headers and the security policies are one
//! concern (what the browser may do with what this server sends), and half is tests.

use std::sync::LazyLock;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    body: &'static [u8],
    /// The same bytes gzipped, when the build writes a `.gz` next to the file.
    gzip: Option<&'static [u8]>,
    content_type: &'static str,
    /// `hashed`: referenced from the page with `?v=<hash>`, so cacheable for a year.
    hashed: bool,
    /// The first 16 hex digits of its SHA-256: the page's `?v=` and its `ETag`.
    hash: LazyLock<String>,
}

macro_rules! asset {
    ($name:ident, $path:literal, $content_type:literal, $hashed:literal) => {
        asset!($name, $path, None, $content_type, $hashed);
    };
    ($name:ident, $path:literal, gzip $gz:literal, $content_type:literal, $hashed:literal) => {
        asset!(
            $name,
            $path,
            Some(include_bytes!($gz)),
            $content_type,
            $hashed
        );
    };
    ($name:ident, $path:literal, $gzip:expr, $content_type:literal, $hashed:literal) => {
        static $name: Asset = Asset {
            body: include_bytes!($path),
            gzip: $gzip,
            content_type: $content_type,
            hashed: $hashed,
            hash: LazyLock::new(|| short_hash(include_bytes!($path))),
        };
    };
}

asset!(
    INDEX,
    "../../middleman/web-dist/index.html",
    "text/html; charset=utf-8",
    false
);
asset!(
    FRAME,
    "../../middleman/web-dist/output-frame.html",
    "text/html; charset=utf-8",
    false
);
asset!(
    CHART_FRAME,
    "../../middleman/web-dist/chart-frame.html",
    "text/html; charset=utf-8",
    false
);
asset!(
    APP_JS,
    "../../middleman/web-dist/assets/app.js",
    gzip "../../middleman/web-dist/assets/app.js.gz",
    "text/javascript; charset=utf-8",
    true
);
asset!(
    APP_CSS,
    "../../middleman/web-dist/assets/app.css",
    gzip "../../middleman/web-dist/assets/app.css.gz",
    "text/css; charset=utf-8",
    true
);
asset!(
    CHART_JS,
    "../../middleman/web-dist/assets/chart.js",
    gzip "../../middleman/web-dist/assets/chart.js.gz",
    "text/javascript; charset=utf-8",
    true
);
asset!(
    LICENSES,
    "../../middleman/web-dist/assets/licenses.txt",
    "text/plain; charset=utf-8",
    false
);

/// KaTeX's fonts (math in markdown cells), served as `/assets/fonts/<name>.woff2`; app.css
/// asks for each with `?v=<hash>`.
macro_rules! fonts {
    ($($name:literal),* $(,)?) => {
        static FONTS: [(&str, Asset); [$($name),*].len()] = [$((
            concat!($name, ".woff2"),
            Asset {
                body: include_bytes!(concat!("../../middleman/web-dist/assets/fonts/", $name, ".woff2")),
                gzip: None,
                content_type: "font/woff2",
                hashed: true,
                hash: LazyLock::new(|| {
                    short_hash(include_bytes!(concat!("../../middleman/web-dist/assets/fonts/", $name, ".woff2")))
                }),
            },
        )),*];
    };
}

fonts!(
    "KaTeX_AMS-Regular",
    "KaTeX_Caligraphic-Bold",
    "KaTeX_Caligraphic-Regular",
    "KaTeX_Fraktur-Bold",
    "KaTeX_Fraktur-Regular",
    "KaTeX_Main-Bold",
    "KaTeX_Main-BoldItalic",
    "KaTeX_Main-Italic",
    "KaTeX_Main-Regular",
    "KaTeX_Math-BoldItalic",
    "KaTeX_Math-Italic",
    "KaTeX_SansSerif-Bold",
    "KaTeX_SansSerif-Italic",
    "KaTeX_SansSerif-Regular",
    "KaTeX_Script-Regular",
    "KaTeX_Size1-Regular",
    "KaTeX_Size2-Regular",
    "KaTeX_Size3-Regular",
    "KaTeX_Size4-Regular",
    "KaTeX_Typewriter-Regular",
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

/// The routes of everything but the page: the frames, the script, the style sheet, the fonts,
/// the licences. Middleman serves the page at `/`, the gateway at `/pods/<pod>/`; both merge
/// these at the root, where the page asks for them.
pub fn assets<S: Clone + Send + Sync + 'static>(policies: Policies) -> Router<S> {
    type P = State<Arc<Policies>>;
    Router::new()
        .route(
            "/output-frame.html",
            get(|State(p): P, h: HeaderMap| async move { output_frame(&p, &h) }),
        )
        .route(
            "/chart-frame.html",
            get(|State(p): P, h: HeaderMap| async move { chart_frame(&p, &h) }),
        )
        .route(
            "/assets/chart.js",
            get(|State(p): P, h: HeaderMap, q: Query<Version>| async move {
                chart_script(&p, &h, &q)
            }),
        )
        .route(
            "/assets/app.js",
            get(|State(p): P, h: HeaderMap, q: Query<Version>| async move { script(&p, &h, &q) }),
        )
        .route(
            "/assets/app.css",
            get(|State(p): P, h: HeaderMap, q: Query<Version>| async move { style(&p, &h, &q) }),
        )
        .route(
            "/assets/fonts/{name}",
            get(
                |State(p): P, h: HeaderMap, Path(name): Path<String>, q: Query<Version>| async move {
                    font(&p, &h, &name, &q)
                },
            ),
        )
        .route(
            "/assets/licenses.txt",
            get(|State(p): P, h: HeaderMap| async move { licenses(&p, &h) }),
        )
        .with_state(Arc::new(policies))
}

/// The Content-Security-Policies, built once at start from `--allowed-origin` (the origins that
/// may also embed the client in a frame).
#[derive(Debug, Clone)]
pub struct Policies {
    /// The page's policy with `{nonce}` where each response's style nonce goes.
    page_template: String,
    /// The same without a nonce, for the assets.
    page: HeaderValue,
    frame: HeaderValue,
    chart: HeaderValue,
}

impl Policies {
    pub fn new(allowed_origins: &[String]) -> Self {
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
             img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; frame-src 'self'; base-uri 'none'; \
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
        // Charts: this origin's chart script only (`'self'` is the URL's origin even in an
        // opaque-origin frame), no eval (Vega's expression interpreter), no inline style (a
        // constructed style sheet), embedded images, and no network.
        let chart = format!(
            "default-src 'none'; script-src 'self'; img-src data: blob:; base-uri 'none'; \
             form-action 'none'; frame-ancestors {ancestors}; sandbox allow-scripts"
        );
        let fallback = || HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'");
        Self {
            page_template,
            page: HeaderValue::from_str(&page).unwrap_or_else(|_| fallback()),
            frame: HeaderValue::from_str(&frame).unwrap_or_else(|_| fallback()),
            chart: HeaderValue::from_str(&chart).unwrap_or_else(|_| fallback()),
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
pub struct Version {
    v: Option<String>,
}

/// Whether `Accept-Encoding` allows gzip (RFC 9110 12.5.3): `gzip` (or `x-gzip`) with a
/// q-value above 0, or else `*` with a q-value above 0. `gzip;q=0` refuses it even if `*` is
/// listed.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = 1.0_f32;
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    // A malformed q-value counts as 0: do not guess.
                    q = v
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
            }
            let slot = match coding.as_str() {
                "gzip" | "x-gzip" => &mut gzip,
                "*" => &mut any,
                _ => continue,
            };
            // Listed twice: the highest q wins.
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

fn serve(asset: &Asset, csp: &HeaderValue, headers: &HeaderMap, version: Option<&str>) -> Response {
    let hash = hash_of(asset);
    let gzip = asset.gzip.filter(|_| accepts_gzip(headers));
    // Each encoding has its own tag, so a cache never answers one with the other's bytes.
    let etag = if gzip.is_some() {
        format!("\"{hash}-gzip\"")
    } else {
        format!("\"{hash}\"")
    };
    let immutable = asset.hashed && version == Some(hash.as_str());
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        gzip.unwrap_or(asset.body).into_response()
    };
    let h = response.headers_mut();
    if !matches {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if gzip.is_some() {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
    if asset.gzip.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
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
    hardening_headers(h);
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// The page, with a fresh style nonce in its policy and in its `csp-nonce` meta element (which
/// the client hands to CodeMirror). Never cached, since the nonce changes every time.
pub fn page(policies: &Policies) -> Response {
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
    hardening_headers(h);
    response
}

/// What every response of the client carries besides its policy: no type sniffing, no referrer.
/// The gateway puts them on what it relays from pods too.
pub fn hardening_headers(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
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

pub fn output_frame(policies: &Policies, headers: &HeaderMap) -> Response {
    serve(&FRAME, &policies.frame, headers, None)
}

pub fn chart_frame(policies: &Policies, headers: &HeaderMap) -> Response {
    serve(&CHART_FRAME, &policies.chart, headers, None)
}

/// Vega for the chart frames. Their origin is opaque, so `Cross-Origin-Resource-Policy:
/// same-origin` would block it there; it is a public library, readable by anyone.
pub fn chart_script(policies: &Policies, headers: &HeaderMap, q: &Query<Version>) -> Response {
    let mut response = serve(&CHART_JS, &policies.page, headers, q.v.as_deref());
    response.headers_mut().insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}

pub fn script(policies: &Policies, headers: &HeaderMap, q: &Query<Version>) -> Response {
    serve(&APP_JS, &policies.page, headers, q.v.as_deref())
}

pub fn style(policies: &Policies, headers: &HeaderMap, q: &Query<Version>) -> Response {
    serve(&APP_CSS, &policies.page, headers, q.v.as_deref())
}

pub fn licenses(policies: &Policies, headers: &HeaderMap) -> Response {
    serve(&LICENSES, &policies.page, headers, None)
}

/// One of KaTeX's fonts by file name, or 404.
pub fn font(policies: &Policies, headers: &HeaderMap, name: &str, q: &Query<Version>) -> Response {
    match FONTS.iter().find(|(n, _)| *n == name) {
        Some((_, asset)) => serve(asset, &policies.page, headers, q.v.as_deref()),
        None => StatusCode::NOT_FOUND.into_response(),
    }
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
        let chart = std::str::from_utf8(CHART_FRAME.body).unwrap();
        assert!(chart.contains(&format!("/assets/chart.js?v={}", hash_of(&CHART_JS))));
    }

    #[test]
    fn the_style_sheet_asks_for_every_embedded_font_by_hash() {
        let css = std::str::from_utf8(APP_CSS.body).unwrap();
        for (name, font) in &FONTS {
            assert!(
                css.contains(&format!("url(fonts/{name}?v={})", hash_of(font))),
                "{name}"
            );
        }
        assert_eq!(css.matches("url(fonts/").count(), FONTS.len());
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
        let chart = p.chart.to_str().unwrap();
        assert!(chart.starts_with("default-src 'none'; script-src 'self';"));
        assert!(!chart.contains("unsafe") && !chart.contains("connect-src"));
        assert!(chart.ends_with("sandbox allow-scripts"));
    }

    #[test]
    fn only_the_chart_script_is_loadable_from_opaque_origin_frames() {
        let p = Policies::new(&[]);
        let corp = |r: Response| r.headers()["cross-origin-resource-policy"].clone();
        let q = Query(Version { v: None });
        assert_eq!(
            corp(chart_script(&p, &HeaderMap::new(), &q)),
            "cross-origin"
        );
        assert_eq!(corp(script(&p, &HeaderMap::new(), &q)), "same-origin");
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

    fn accepting(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn accept_encoding_q_values() {
        for yes in [
            "gzip",
            "gzip, deflate, br, zstd",
            "br;q=1.0, GZip;q=0.5",
            "x-gzip",
            "*",
            "br, *;q=0.1",
            "gzip;q=0, gzip;q=0.2",
        ] {
            assert!(accepts_gzip(&accepting(yes)), "{yes}");
        }
        for no in [
            "",
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip; q=0.000",
            "gzip;q=0, *",
            "*;q=0",
            "gzip;q=bogus",
            "gzip;q=2",
            "gzipx",
        ] {
            assert!(!accepts_gzip(&accepting(no)), "{no}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    /// `gzip -dc` of the bytes: the build's gzip must decode to exactly the plain file.
    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip is installed");
        let mut stdin = child.stdin.take().unwrap();
        let input = bytes.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "gzip -dc failed");
        out.stdout
    }

    #[tokio::test]
    async fn assets_are_sent_gzipped_when_accepted_and_plain_otherwise() {
        let p = Policies::new(&[]);
        for asset in [&APP_JS, &APP_CSS, &CHART_JS] {
            let hash = hash_of(asset);
            let gz = serve(asset, &p.page, &accepting("gzip, deflate, br"), Some(&hash));
            assert_eq!(gz.status(), StatusCode::OK);
            assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
            assert_eq!(gz.headers()[header::VARY], "Accept-Encoding");
            assert_eq!(gz.headers()[header::CONTENT_TYPE], asset.content_type);
            assert_eq!(gz.headers()[header::ETAG], format!("\"{hash}-gzip\""));
            assert!(
                gz.headers()[header::CACHE_CONTROL]
                    .to_str()
                    .unwrap()
                    .contains("immutable")
            );
            let gz_body = body(gz).await;
            assert!(gz_body.len() < asset.body.len() / 2);
            assert_eq!(gunzip(&gz_body), asset.body);

            for headers in [HeaderMap::new(), accepting("gzip;q=0, br")] {
                let plain = serve(asset, &p.page, &headers, Some(&hash));
                assert_eq!(plain.status(), StatusCode::OK);
                assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
                assert_eq!(plain.headers()[header::VARY], "Accept-Encoding");
                assert_eq!(plain.headers()[header::ETAG], format!("\"{hash}\""));
                assert_eq!(body(plain).await, asset.body);
            }

            // A tag answers only its own encoding.
            let mut h = accepting("gzip");
            h.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&format!("\"{hash}-gzip\"")).unwrap(),
            );
            let r = serve(asset, &p.page, &h, None);
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
            assert_eq!(r.headers()[header::VARY], "Accept-Encoding");
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            assert_eq!(serve(asset, &p.page, &h, None).status(), StatusCode::OK);
            h.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&format!("\"{hash}\"")).unwrap(),
            );
            assert_eq!(
                serve(asset, &p.page, &h, None).status(),
                StatusCode::NOT_MODIFIED
            );
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
            assert_eq!(serve(asset, &p.page, &h, None).status(), StatusCode::OK);
        }
        // Files without a gzipped copy are always plain, without Vary.
        let r = serve(&LICENSES, &p.page, &accepting("gzip"), None);
        assert!(r.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(r.headers().get(header::VARY).is_none());
        assert_eq!(body(r).await, LICENSES.body);
    }
}
