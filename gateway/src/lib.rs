//! The gateway: one public address for every document (docs/gateway.md).
//!
//! - [`admission`]: tokens, origins, client addresses, connection limits;
//! - [`resolve`]: pod to address through Watchman, cached;
//! - [`relay`]: the WebSocket relay, over [`conn`] (a side's stream) and [`frames`] (frame
//!   headers read as they pass);
//! - [`forward`]: the data endpoints and the landing page, with a pod's answers made harmless;
//! - [`server`]: the routes; [`tls`]: HTTPS; this file: starting, draining, the metrics port.

pub mod admission;
pub mod config;
pub mod conn;
pub mod forward;
pub mod frames;
pub mod jupyter;
pub mod refusal;
pub mod relay;
pub mod resolve;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::Args;

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    /// Stops accepting and ends the HTTP servers.
    stop: CancellationToken,
    /// Closes every relay with 1012.
    drain: CancellationToken,
    draining: Arc<AtomicBool>,
    servers: TaskTracker,
    relays: TaskTracker,
    grace: Duration,
}

impl Running {
    /// The public address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Drains: not ready any more, no new connections, every client closed with 1012 (they
    /// reconnect through another replica), then waits up to the grace period for the relays.
    pub async fn drain(self) {
        tracing::info!(grace = ?self.grace, "draining");
        self.draining.store(true, Ordering::SeqCst);
        metrics::gauge!("gateway_draining").set(1.0);
        self.stop.cancel();
        self.drain.cancel();
        self.relays.close();
        self.servers.close();
        let wait = async {
            self.relays.wait().await;
            self.servers.wait().await;
        };
        if tokio::time::timeout(self.grace, wait).await.is_err() {
            tracing::warn!("drain grace ran out with connections still open");
        }
        tracing::info!("drained");
    }
}

/// Binds, and serves until [`Running::drain`].
pub async fn start(args: Args) -> anyhow::Result<Running> {
    let pem = std::fs::read_to_string(&args.public_key)
        .with_context(|| format!("reading {}", args.public_key.display()))?;
    let key = session_token::VerifyingKey::from_pem(&pem).context("the public key")?;
    let watchman_token = match &args.watchman_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    anyhow::ensure!(
        args.watchman.is_some() || !args.routes.is_empty(),
        "nothing to route to: give --watchman (production) or --route POD=URL (development)"
    );
    anyhow::ensure!(
        args.watchman.is_none() || watchman_token.is_some(),
        "--watchman needs --watchman-token-file (Watchman's --route-token-file)"
    );
    let resolver = resolve::Resolver::new(
        &args.routes,
        args.watchman.as_deref().zip(watchman_token.as_deref()),
        args.route_cache_ttl,
    )?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };

    let handle = telemetry::prometheus();
    register_metrics();
    let stop = CancellationToken::new();
    let drain = CancellationToken::new();
    let draining = Arc::new(AtomicBool::new(false));
    let servers = TaskTracker::new();
    let relays = TaskTracker::new();
    let edge = Arc::new(server::Edge {
        gate: admission::Gatekeeper::new(key, args.token_leeway_secs, &args.allowed_origins),
        limits: admission::Limits::new(
            args.max_connections_per_user,
            args.max_connections_per_address,
            args.max_connections,
        ),
        resolver,
        forwarder: forward::Forwarder::new(args.upstream_connect_timeout, args.max_body_bytes),
        relay: relay::RelaySettings {
            max_frame_bytes: args.max_frame_bytes,
            ping_interval: args.ping_interval,
            idle_timeout: args.idle_timeout,
            send_timeout: args.send_timeout,
        },
        policies: webclient::Policies::new(&args.allowed_origins),
        landing: args
            .landing
            .as_ref()
            .map(|l| l.trim_end_matches('/').to_owned()),
        jupyter_api: args
            .jupyter_api
            .as_ref()
            .map(|l| l.trim_end_matches('/').to_owned()),
        trusted_proxies: args.trusted_proxies.clone(),
        upstream_connect_timeout: args.upstream_connect_timeout,
        drain: drain.clone(),
        tasks: relays.clone(),
    });

    let listener = bind(args.listen, args.reuse_port)?;
    let addr = listener.local_addr()?;
    let deadlines = httpserve::Deadlines {
        header: args.handshake_timeout,
        request: args.request_timeout,
    };
    let app = server::router(edge);
    let scheme = if tls.is_some() { "https" } else { "http" };
    match tls {
        Some(acceptor) => servers.spawn(
            httpserve::serve_with(listener, app, stop.clone(), deadlines, acceptor)
                .instrument(tracing::info_span!("public", %addr)),
        ),
        None => servers.spawn(
            httpserve::serve(listener, app, stop.clone(), deadlines)
                .instrument(tracing::info_span!("public", %addr)),
        ),
    };

    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let ready = draining.clone();
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let draining = ready.load(Ordering::SeqCst);
                async move {
                    if draining {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining")
                    } else {
                        (StatusCode::OK, "ready")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = handle.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        );
    // The metrics port outlives the drain a little, so the last scrape sees it.
    let ops_stop = CancellationToken::new();
    {
        let ops_stop = ops_stop.clone();
        let stop = stop.clone();
        let relays = relays.clone();
        servers.spawn(async move {
            stop.cancelled().await;
            relays.wait().await;
            ops_stop.cancel();
        });
    }
    servers.spawn(
        httpserve::serve(
            metrics_listener,
            ops,
            ops_stop,
            httpserve::Deadlines::default(),
        )
        .instrument(tracing::info_span!("metrics", addr = %metrics_addr)),
    );
    tracing::info!(%metrics_addr, "listening on {scheme}://{addr}");
    Ok(Running {
        addr,
        metrics_addr,
        stop,
        drain,
        draining,
        servers,
        relays,
        grace: args.drain_grace,
    })
}

/// The public listener; with `reuse_port`, shared with other replicas on this host.
fn bind(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }?;
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(4096)?)
}

/// Declares every metric, so dashboards show zeros rather than gaps.
fn register_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("gateway_connections_active", "WebSockets relayed now");
    describe_counter!(
        "gateway_connections_total",
        "WebSockets relayed, by how they ended"
    );
    for outcome in relay::Outcome::ALL {
        metrics::counter!("gateway_connections_total", "outcome" => outcome.label()).absolute(0);
    }
    describe_histogram!(
        "gateway_upgrade_seconds",
        metrics::Unit::Seconds,
        "From a WebSocket request's arrival to both sides open"
    );
    describe_counter!(
        "gateway_upstream_errors_total",
        "Failures reaching pods or Watchman, by kind"
    );
    // At 0 from the start: `increase()` then sees a kind's first error, and the checks of
    // scripts/test-ops.sh can require the name.
    for kind in ["connect", "timeout", "refused", "closed", "resolve"] {
        metrics::counter!("gateway_upstream_errors_total", "kind" => kind).absolute(0);
    }
    describe_counter!("gateway_bytes_total", "WebSocket payload bytes relayed");
    describe_counter!(
        "gateway_refusals_total",
        "Requests turned away before any upstream connection, by reason"
    );
    describe_counter!(
        "gateway_http_requests_total",
        "HTTP requests (not WebSockets), by route and status"
    );
    describe_counter!("gateway_resolve_total", "Pod lookups, by outcome");
    describe_histogram!(
        "gateway_resolve_seconds",
        metrics::Unit::Seconds,
        "Pod lookups that asked Watchman"
    );
    describe_gauge!("gateway_draining", "1 while this replica drains");
    metrics::gauge!("gateway_draining").set(0.0);
    metrics::gauge!("gateway_connections_active").increment(0.0);
}
