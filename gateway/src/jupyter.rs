//! The Jupyter Server API at `/jupyter/` (docs/jupyter.md): its REST calls go to Watchman
//! (`--jupyter-api`), which allocates and answers; a kernel's WebSocket
//! (`/jupyter/api/kernels/<id>/channels`) is admitted here (a Jupyter API token, the origin,
//! the per-user and per-address limits), resolved through Watchman (`Routes.ResolveKernel`:
//! the kernel's pod and a session token minted for this user on it) and relayed to the pod's
//! `/jupyter/channels` like any document connection: frame limits, drain, a pod that ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;

use crate::admission::{Gatekeeper, client_address};
use crate::forward::Upstream;
use crate::refusal::Refusal;
use crate::resolve::KernelRoute;
use crate::server::{
    Edge, Relayed, UpstreamFailure, connect_upstream, explain, query_token, relay_upgraded,
    websocket_key,
};

/// The REST side: forwarded to Watchman, which checks the token on every call.
pub async fn rest(
    State(edge): State<Arc<Edge>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let Some(base) = edge.jupyter_api.as_deref() else {
        return Refusal::BadRequest("this gateway does not serve the Jupyter API").respond();
    };
    if edge.drain.is_cancelled() {
        return Refusal::Draining.respond();
    }
    // Only the Jupyter API: no path climbs out of /jupyter/ to Watchman's other routes.
    if request.uri().path().split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase();
        segment == ".." || segment == "." || ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
    }) {
        return Refusal::BadRequest("not a Jupyter API path").respond();
    }
    let client = client_address(peer, request.headers(), &edge.trusted_proxies);
    let path = request
        .uri()
        .path_and_query()
        .map_or("/jupyter", |p| p.as_str())
        .to_owned();
    match edge
        .forwarder
        .forward(request, base, &path, client, Upstream::Jupyter)
        .await
    {
        Ok(r) => r,
        Err(r) => r.respond(),
    }
}

/// `/jupyter/api/kernels/<id>/channels`: the kernel WebSocket.
pub async fn channels(
    State(edge): State<Arc<Edge>>,
    Path(kernel): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
) -> Response {
    let started = Instant::now();
    if edge.drain.is_cancelled() {
        return Refusal::Draining.respond();
    }
    let key = match websocket_key(&request) {
        Ok(k) => k,
        Err(r) => return r.respond(),
    };
    let query = request.uri().query().map(str::to_owned);
    let token = query_token(query.as_deref());
    let claims = match edge.gate.admit_jupyter(request.headers(), token.as_deref()) {
        Ok(c) => c,
        Err(r) => return r.respond(),
    };
    let Some(jupyter_token) = Gatekeeper::token(request.headers(), token.as_deref()) else {
        return Refusal::TokenMissing.respond();
    };
    let client = client_address(peer, request.headers(), &edge.trusted_proxies);
    let permit = match edge.limits.acquire(&claims.sub, client) {
        Ok(p) => p,
        Err(r) => return r.respond(),
    };
    let (pod, endpoint, session_token) =
        match edge.resolver.resolve_kernel(&kernel, jupyter_token).await {
            Ok(KernelRoute::Live {
                pod,
                endpoint,
                session_token,
            }) => (pod, endpoint, session_token),
            Ok(KernelRoute::Unknown) => {
                return Refusal::UnknownKernel(kernel.chars().take(64).collect()).respond();
            }
            Ok(KernelRoute::Unauthorized(why)) => return Refusal::TokenInvalid(why).respond(),
            Err(_) => return Refusal::ResolveFailed.respond(),
        };
    // The pod sees the session token Watchman minted, never the client's Jupyter token; only
    // the client's session id (its identity for stdin) goes on.
    let session_id: String = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "session_id")
        .map(|(_, v)| {
            v.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .take(128)
                .collect()
        })
        .unwrap_or_default();
    let target = format!("/jupyter/channels?session_id={session_id}");
    let mut passed = Vec::new();
    if let Some(protocols) = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
        passed.push((header::SEC_WEBSOCKET_PROTOCOL, protocols.clone()));
    }
    match HeaderValue::from_str(&format!("Bearer {session_token}")) {
        Ok(v) => passed.push((header::AUTHORIZATION, v)),
        Err(_) => return Refusal::ResolveFailed.respond(),
    }
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
