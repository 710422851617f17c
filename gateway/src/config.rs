//! The gateway's flags. Every one can be set from the environment (`GATEWAY_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::admission::Cidr;

/// The public edge: routes `/pods/<pod>/...` to that pod's Middleman.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about)]
pub struct Args {
    /// Public address (HTTP, or HTTPS with `--tls-cert`). Port 0 picks one.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bind the public address with SO_REUSEPORT, so several replicas on one host share it
    /// (the kernel spreads new connections over those still listening).
    #[arg(long, env = "GATEWAY_REUSE_PORT")]
    pub reuse_port: bool,
    /// `/metrics`, `/healthz` and `/readyz`; not for the public.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    /// Ed25519 public key (SPKI PEM) that session tokens are verified with.
    #[arg(long, env = "GATEWAY_PUBLIC_KEY")]
    pub public_key: PathBuf,
    /// Watchman's gRPC address, where pods are resolved (`watchman.v1.Routes`).
    #[arg(long, env = "GATEWAY_WATCHMAN")]
    pub watchman: Option<String>,
    /// File holding the bearer token for Watchman's `Routes` service (Watchman's
    /// `--route-token-file`).
    #[arg(long, env = "GATEWAY_WATCHMAN_TOKEN_FILE")]
    pub watchman_token_file: Option<PathBuf>,
    /// A fixed route `POD=http://host:port`, looked up before Watchman (development and
    /// benchmarks; repeatable, or `,`-separated in the environment).
    #[arg(long = "route", env = "GATEWAY_ROUTES", value_delimiter = ',', value_parser = static_route)]
    pub routes: Vec<(String, String)>,
    /// Where `/` and `/open` are proxied from: Watchman's `--dev-page` (development).
    #[arg(long, env = "GATEWAY_LANDING")]
    pub landing: Option<String>,
    /// Where `/jupyter/...` (the Jupyter Server API, docs/jupyter.md) is proxied from:
    /// Watchman's HTTP address. Kernel WebSockets are resolved through `--watchman`.
    #[arg(long, env = "GATEWAY_JUPYTER_API")]
    pub jupyter_api: Option<String>,
    /// TLS certificate chain (PEM). With `--tls-key`, the public address speaks HTTPS.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Browser origins allowed besides the gateway's own (`,`-separated). Empty: only pages
    /// of the host they connect to.
    #[arg(
        long = "allowed-origin",
        env = "GATEWAY_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed: the client is the rightmost address
    /// not among them. Empty: the peer is the client.
    #[arg(
        long = "trusted-proxy",
        env = "GATEWAY_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
    /// Connections (WebSockets and API calls in flight) one user may hold on this replica.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 64)]
    pub max_connections_per_user: usize,
    /// Connections one client address may hold on this replica.
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 512
    )]
    pub max_connections_per_address: usize,
    /// Connections this replica holds at most.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,
    /// A request head, and a TLS handshake, must arrive within this.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,
    /// An API call (its body included) must be answered within this.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub request_timeout: Duration,
    /// Largest WebSocket message from a client, over all its fragments (bigger: close 1009).
    /// The gateway buffers no message (frames pass as they come); Middleman's own client
    /// limit (1 MiB by default) is lower, and this refuses a flood before it reaches the pod.
    #[arg(long, env = "GATEWAY_MAX_FRAME_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Largest API request body.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024 + 64 * 1024)]
    pub max_body_bytes: usize,
    /// How often the gateway pings each client.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "20s", value_parser = duration)]
    pub ping_interval: Duration,
    /// A client that sends nothing (pongs included) for this long is closed (4000).
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// A client that accepts nothing for this long is cut off (it sees 1006 and reconnects):
    /// a slow reader never makes the gateway buffer.
    #[arg(long, env = "GATEWAY_SEND_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub send_timeout: Duration,
    /// Connecting to a pod (TCP and the WebSocket handshake) must take less than this.
    #[arg(long, env = "GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub upstream_connect_timeout: Duration,
    /// How long a resolved live pod is believed without asking Watchman again (an upstream
    /// failure drops it at once).
    #[arg(long, env = "GATEWAY_ROUTE_CACHE_TTL", default_value = "10s", value_parser = duration)]
    pub route_cache_ttl: Duration,
    /// Seconds of clock skew tolerated on token expiry.
    #[arg(long, env = "GATEWAY_TOKEN_LEEWAY_SECS", default_value_t = 30)]
    pub token_leeway_secs: u64,
    /// On SIGTERM: stop accepting, close clients with 1012 (they reconnect elsewhere), and exit
    /// within this.
    #[arg(long, env = "GATEWAY_DRAIN_GRACE", default_value = "30s", value_parser = duration)]
    pub drain_grace: Duration,
    /// `text` or `json`; `RUST_LOG` filters.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

fn static_route(s: &str) -> Result<(String, String), String> {
    let (pod, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POD=URL, got {s:?}"))?;
    if pod.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("expected POD=http://host:port, got {s:?}"));
    }
    Ok((pod.to_owned(), url.trim_end_matches('/').to_owned()))
}

fn duration(s: &str) -> Result<Duration, telemetry::DurationError> {
    telemetry::parse_duration(s)
}
