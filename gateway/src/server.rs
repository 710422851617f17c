//! The routes and their handlers: the web client's page and assets from the gateway's own
//! build, the landing page from Watchman, and, for `/pods/<pod>/...`, admission (token, origin,
//! limits), resolution, and the relay or the forwarder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admission::{Cidr, Gatekeeper, Limits, Permit, client_address};
use crate::conn::Conn;
use crate::forward::{Forwarder, Upstream};
use crate::refusal::Refusal;
use crate::relay::{self, RelaySettings};
use crate::resolve::{Resolver, Route};

/// Everything a request needs.
#[derive(Debug)]
pub struct Edge {
    pub gate: Gatekeeper,
    pub limits: Limits,
    pub resolver: Resolver,
    pub forwarder: Forwarder,
    pub relay: RelaySettings,
    pub policies: webclient::Policies,
    pub landing: Option<String>,
    /// Watchman's HTTP base, for the Jupyter Server API (`/jupyter/...`).
    pub jupyter_api: Option<String>,
    pub trusted_proxies: Vec<Cidr>,
    pub upstream_connect_timeout: std::time::Duration,
    /// Fires when the gateway drains: relays close their clients with 1012.
    pub drain: CancellationToken,
    /// The relays, so that shutdown waits for them.
    pub tasks: TaskTracker,
}

type Shared = State<Arc<Edge>>;

pub fn router(edge: Arc<Edge>) -> Router {
    let assets = webclient::assets(edge.policies.clone());
    Router::new()
        .route("/", get(landing))
        .route("/open", post(landing))
        .route(
            "/pods/{pod}",
            get(|Path(pod): Path<String>| async move {
                match valid_pod(&pod) {
                    Ok(()) => Redirect::permanent(&format!("/pods/{pod}/")).into_response(),
                    Err(r) => r.respond(),
                }
            }),
        )
        .route("/pods/{pod}/", get(page))
        .route("/pods/{pod}/ws", get(websocket))
        .route("/pods/{pod}/yjs/{document}", get(websocket))
        .route("/pods/{pod}/api/{*rest}", any(api))
        .route(
            "/jupyter/api/kernels/{kernel}/channels",
            get(crate::jupyter::channels),
        )
        .route("/jupyter", any(crate::jupyter::rest))
        .route("/jupyter/{*rest}", any(crate::jupyter::rest))
        .fallback(|| async {
            metrics::counter!("gateway_http_requests_total", "route" => "other", "status" => "404")
                .increment(1);
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "error": "not_found",
                    "message": "nothing here; documents are at /pods/<pod>/",
                })),
            )
        })
        .with_state(edge)
        .merge(assets)
        .layer(axum::middleware::from_fn(count_requests))
}

/// `gateway_http_requests_total{route,status}` for everything but WebSocket upgrades (counted
/// by `gateway_connections_total`) and the fallback (counted there).
async fn count_requests(request: Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path();
    let route = if path == "/" || path == "/open" {
        Some("landing")
    } else if path.starts_with("/jupyter") && !path.ends_with("/channels") {
        Some("jupyter")
    } else if path.starts_with("/assets/") || path.ends_with("-frame.html") {
        Some("asset")
    } else if let Some(rest) = path.strip_prefix("/pods/") {
        match rest.split_once('/') {
            Some((_, "")) => Some("page"),
            Some((_, tail)) if tail.starts_with("api/") => Some("api"),
            _ => None,
        }
    } else {
        None
    };
    let response = next.run(request).await;
    if let Some(route) = route {
        metrics::counter!(
            "gateway_http_requests_total",
            "route" => route,
            "status" => response.status().as_u16().to_string()
        )
        .increment(1);
    }
    response
}

/// Pod names as Watchman makes them: short, and nothing a path or a URL could be bent with.
fn valid_pod(pod: &str) -> Result<(), Refusal> {
    let ok = !pod.is_empty()
        && pod.len() <= 200
        && pod
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
        && pod != "."
        && pod != "..";
    if ok {
        Ok(())
    } else {
        Err(Refusal::BadRequest("not a pod name"))
    }
}

async fn page(State(edge): Shared, Path(pod): Path<String>) -> Response {
    if let Err(r) = valid_pod(&pod) {
        return r.respond();
    }
    webclient::page(&edge.policies)
}

async fn landing(
    State(edge): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let Some(base) = edge.landing.as_deref() else {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This is the notebook gateway. Documents are at /pods/<pod>/ (your product links there).\n",
        )
            .into_response();
    };
    let client = client_address(peer, request.headers(), &edge.trusted_proxies);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    match edge
        .forwarder
        .forward(request, base, &path, client, Upstream::Landing)
        .await
    {
        Ok(r) => r,
        Err(r) => r.respond(),
    }
}

/// The query's `token`, if any.
pub(crate) fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        // Tokens are base64url and dots: nothing in them is percent-encoded.
        .map(|(_, v)| v.to_owned())
}

/// Who came in, and where their pod is.
struct Admitted {
    claims: session_token::Claims,
    /// Holds the connection's place in the limits until dropped.
    permit: Permit,
    client: std::net::IpAddr,
    endpoint: Arc<str>,
}

/// Admission shared by the WebSocket and the API: token, origin, limits, in that order, and
/// only then the pod's address.
async fn admit(
    edge: &Edge,
    pod: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    let (claims, permit, client) = check(edge, pod, headers, query, peer)?;
    let endpoint = live_endpoint(edge, pod).await?;
    Ok(Admitted {
        claims,
        permit,
        client,
        endpoint,
    })
}

fn check(
    edge: &Edge,
    pod: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Result<(session_token::Claims, Permit, std::net::IpAddr), Refusal> {
    if edge.drain.is_cancelled() {
        return Err(Refusal::Draining);
    }
    valid_pod(pod)?;
    let token = query_token(query);
    let claims = edge.gate.admit(headers, token.as_deref(), pod)?;
    let client = client_address(peer, headers, &edge.trusted_proxies);
    let permit = edge.limits.acquire(&claims.sub, client)?;
    Ok((claims, permit, client))
}

/// Where the pod is, or why it cannot be reached.
async fn live_endpoint(edge: &Edge, pod: &str) -> Result<Arc<str>, Refusal> {
    match edge.resolver.resolve(pod).await {
        Ok(Route::Live { endpoint }) => Ok(endpoint),
        Ok(Route::Ended { reason, detail }) => Err(Refusal::PodEnded { reason, detail }),
        Ok(Route::Unknown) => Err(Refusal::UnknownPod),
        Err(_) => Err(Refusal::ResolveFailed),
    }
}

/// After an upstream failure: an ended pod says so; otherwise the failure stands.
pub(crate) async fn explain(edge: &Edge, pod: &str, failure: Refusal) -> Refusal {
    edge.resolver.invalidate(pod);
    match live_endpoint(edge, pod).await {
        Err(ended @ (Refusal::PodEnded { .. } | Refusal::UnknownPod)) => ended,
        _ => failure,
    }
}

async fn api(
    State(edge): Shared,
    Path((pod, rest)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let query = request.uri().query().map(str::to_owned);
    let Admitted {
        permit: _permit,
        client,
        endpoint,
        ..
    } = match admit(&edge, &pod, request.headers(), query.as_deref(), peer).await {
        Ok(a) => a,
        Err(r) => return r.respond(),
    };
    let path = match &query {
        Some(q) => format!("/api/{rest}?{q}"),
        None => format!("/api/{rest}"),
    };
    match edge
        .forwarder
        .forward(request, &endpoint, &path, client, Upstream::Pod)
        .await
    {
        Ok(r) => r,
        Err(failure @ Refusal::UpstreamUnreachable) => {
            explain(&edge, &pod, failure).await.respond()
        }
        Err(r) => r.respond(),
    }
}

/// Whether `request` asks for a WebSocket (RFC 6455 4.2.1), and its key.
pub(crate) fn websocket_key(request: &Request) -> Result<HeaderValue, Refusal> {
    let h = request.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if request.method() != Method::GET
        || !has(header::CONNECTION, "upgrade")
        || !has(header::UPGRADE, "websocket")
        || h.get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
    {
        return Err(Refusal::BadRequest("expected a WebSocket upgrade"));
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(Refusal::BadRequest("expected a WebSocket upgrade"))
}

async fn websocket(
    State(edge): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let Some((pod, upstream_path)) = path
        .strip_prefix("/pods/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(pod, tail)| (pod.to_owned(), format!("/{tail}")))
    else {
        return Refusal::BadRequest("not a pod path").respond();
    };
    let key = match websocket_key(&request) {
        Ok(k) => k,
        Err(r) => return r.respond(),
    };
    let query = request.uri().query().map(str::to_owned);
    let Admitted {
        claims,
        permit,
        client,
        endpoint,
    } = match admit(&edge, &pod, request.headers(), query.as_deref(), peer).await {
        Ok(a) => a,
        Err(r) => return r.respond(),
    };
    let target = match &query {
        Some(q) => format!("{upstream_path}?{q}"),
        None => upstream_path,
    };
    // Passed on as they came: Middleman verifies the token again, from wherever the client put it.
    let passed = [header::SEC_WEBSOCKET_PROTOCOL, header::AUTHORIZATION]
        .into_iter()
        .filter_map(|name| {
            let value = request.headers().get(&name)?.clone();
            Some((name, value))
        })
        .collect::<Vec<_>>();
    let upstream = match connect_upstream(&edge, &endpoint, &target, &passed, client).await {
        Ok(u) => u,
        Err(UpstreamFailure::Refused(response)) => return response,
        Err(UpstreamFailure::Failed(failure)) => {
            return explain(&edge, &pod, failure).await.respond();
        }
    };
    let relayed = Relayed {
        user: claims.sub,
        client,
        pod,
        permit,
        started,
    };
    relay_upgraded(&edge, &mut request, &key, upstream, relayed)
}

/// A client admitted to a relay: who, from where, to which pod.
pub(crate) struct Relayed {
    pub user: String,
    pub client: std::net::IpAddr,
    pub pod: String,
    pub permit: Permit,
    pub started: Instant,
}

/// Answers the client's upgrade and relays it to the pod's side once upgraded.
pub(crate) fn relay_upgraded(
    edge: &Arc<Edge>,
    request: &mut Request,
    key: &HeaderValue,
    upstream: Upstreamed,
    relayed: Relayed,
) -> Response {
    let Relayed {
        user,
        client,
        pod,
        permit,
        started,
    } = relayed;
    let (upstream, chosen_protocol) = upstream;
    let on_upgrade = hyper::upgrade::on(request);
    let settings = edge.relay;
    let drain = edge.drain.clone();
    let resolver = edge.resolver.clone();
    let span = tracing::info_span!("relay", %pod, %user, %client);
    edge.tasks.spawn(
        async move {
            let _permit = permit;
            let client = match on_upgrade.await {
                Ok(upgraded) => Conn::from_upgraded(upgraded),
                Err(error) => {
                    tracing::debug!(%error, "client upgrade failed");
                    return;
                }
            };
            let active = metrics::gauge!("gateway_connections_active");
            active.increment(1.0);
            let outcome = relay::run(client, upstream, settings, drain, resolver, pod).await;
            active.decrement(1.0);
            metrics::counter!("gateway_connections_total", "outcome" => outcome.label())
                .increment(1);
            tracing::debug!(outcome = outcome.label(), "relay ended");
        }
        .instrument(span),
    );
    metrics::histogram!("gateway_upgrade_seconds").record(started.elapsed().as_secs_f64());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = chosen_protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    response
}

pub(crate) enum UpstreamFailure {
    /// The pod answered the handshake with a refusal: passed on (its JSON error, reshaped).
    Refused(Response),
    /// The pod could not be reached.
    Failed(Refusal),
}

/// The pod's side after its handshake (with the bytes read past it), and the subprotocol the
/// pod chose.
pub(crate) type Upstreamed = ((Conn, Bytes), Option<HeaderValue>);

/// The largest refusal body read from a pod's handshake.
const REFUSAL_BYTES: usize = 64 * 1024;

/// Opens the WebSocket to the pod: our own HTTP/1.1 upgrade (hyper), so that what follows is
/// the raw connection the relay reads frames from.
pub(crate) async fn connect_upstream(
    edge: &Edge,
    endpoint: &str,
    target: &str,
    passed: &[(header::HeaderName, HeaderValue)],
    client: std::net::IpAddr,
) -> Result<Upstreamed, UpstreamFailure> {
    let Some(authority) = endpoint.strip_prefix("http://") else {
        // Pods speak plain HTTP inside the cluster (only the gateway may reach them).
        tracing::warn!(%endpoint, "unsupported pod endpoint");
        return Err(UpstreamFailure::Failed(Refusal::UpstreamUnreachable));
    };
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let mut builder = hyper::Request::get(target)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key);
    for (name, value) in passed {
        builder = builder.header(name, value);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        builder = builder.header("x-forwarded-for", v);
    }
    let Ok(request) = builder.body(http_body_util::Empty::<Bytes>::new()) else {
        return Err(UpstreamFailure::Failed(Refusal::BadRequest(
            "the path is not a valid URL",
        )));
    };
    let unreachable = |_| UpstreamFailure::Failed(Refusal::UpstreamUnreachable);
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| UpstreamFailure::Failed(Refusal::UpstreamUnreachable))?;
        // Drives the connection until the upgrade hands it over (or it fails).
        edge.tasks.spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| UpstreamFailure::Failed(Refusal::UpstreamUnreachable))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), REFUSAL_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(refused(status, &body));
        }
        let accepted = response
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes());
        if !accepted {
            return Err(UpstreamFailure::Failed(Refusal::UpstreamUnreachable));
        }
        let chosen = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .cloned();
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|_| UpstreamFailure::Failed(Refusal::UpstreamUnreachable))?;
        Ok((Conn::from_upgraded(upgraded), chosen))
    };
    match tokio::time::timeout(edge.upstream_connect_timeout, connect).await {
        Ok(Ok(upstream)) => Ok(upstream),
        Ok(Err(failure)) => {
            let kind = match failure {
                UpstreamFailure::Failed(_) => "connect",
                UpstreamFailure::Refused(_) => "refused",
            };
            metrics::counter!("gateway_upstream_errors_total", "kind" => kind).increment(1);
            Err(failure)
        }
        Err(_) => {
            metrics::counter!("gateway_upstream_errors_total", "kind" => "timeout").increment(1);
            Err(UpstreamFailure::Failed(Refusal::UpstreamTimeout))
        }
    }
}

/// A refusal from Middleman's handshake becomes the same status with its `error` and
/// `message`, and nothing else of what the pod sent.
fn refused(status: StatusCode, body: &[u8]) -> UpstreamFailure {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(500).collect::<String>())
    };
    let body = serde_json::json!({
        "error": field("error").unwrap_or_else(|| "upstream_refused".to_owned()),
        "message": field("message").unwrap_or_else(|| format!("the pod refused the connection ({status})")),
    });
    let status = if status.is_client_error() || status.is_server_error() {
        status
    } else {
        StatusCode::BAD_GATEWAY
    };
    UpstreamFailure::Refused((status, axum::Json(body)).into_response())
}
