//! Command-line and environment configuration. Values that select behaviour are parsed into
//! enums here, so a bad one is refused at start with clap's message, not found out later.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::plan::{DurationError, parse_duration};

fn duration(s: &str) -> Result<Duration, DurationError> {
    parse_duration(s)
}

/// A value of the command line or environment that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--store` is neither `memory` nor a Redis URL.
    #[error("expected `memory` or a Redis URL (redis://host:port/db): {0}")]
    Store(#[source] redis::RedisError),
    /// `--pod-document-store` is neither `none` nor a Redis URL.
    #[error(
        "expected `none` or Watchman's http:// or https:// URL as the pods reach it (pods keep their documents through Watchman, never with a store's credentials)"
    )]
    PodDocumentStore,
    /// `--pod-annotation` is not `key=value`.
    #[error("expected key=value")]
    Annotation,
    /// `--pod-create-rate` is not a positive number.
    #[error("expected a number of pods per second above 0")]
    Rate,
}

/// Where Watchman keeps pods and allocations (`--store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// In this process: one replica only.
    Memory,
    /// A Redis URL: any number of replicas.
    Redis(String),
}

impl StoreUrl {
    /// The Redis URL Middleman can use as its document store too (`redis://` or `rediss://`,
    /// the schemes Middleman speaks), if this is one.
    pub fn shared_with_pods(&self) -> Option<&str> {
        match self {
            StoreUrl::Redis(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(url)
            }
            _ => None,
        }
    }

    /// `memory` or `redis`, for logs (never the URL, which may hold a password).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreUrl::Memory => "memory",
            StoreUrl::Redis(_) => "redis",
        }
    }
}

fn store_url(s: &str) -> Result<StoreUrl, ConfigError> {
    if s == "memory" {
        return Ok(StoreUrl::Memory);
    }
    redis::IntoConnectionInfo::into_connection_info(s).map_err(ConfigError::Store)?;
    Ok(StoreUrl::Redis(s.to_owned()))
}

/// Where pods run (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// Middleman processes on this host.
    Local,
    /// A pod per kernel in a Kubernetes namespace.
    Kubernetes,
}

/// Middleman's `--document-store` in Kubernetes pods (`--pod-document-store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodDocumentStore {
    /// Documents live in the pod's memory only.
    None,
    /// Watchman, at this URL as the pods reach it: each pod reads and saves its own document
    /// with its pod credential, and a document's next pod restores it from there.
    Watchman(String),
}

impl std::fmt::Display for PodDocumentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodDocumentStore::None => f.write_str("none"),
            PodDocumentStore::Watchman(url) => f.write_str(url),
        }
    }
}

fn pod_document_store(s: &str) -> Result<PodDocumentStore, ConfigError> {
    if s == "none" {
        return Ok(PodDocumentStore::None);
    }
    let url = s.trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or(ConfigError::PodDocumentStore)?;
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(ConfigError::PodDocumentStore);
    }
    Ok(PodDocumentStore::Watchman(url.to_owned()))
}

fn annotation(s: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = s.split_once('=').ok_or(ConfigError::Annotation)?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

fn rate(s: &str) -> Result<f64, ConfigError> {
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or(ConfigError::Rate)
}

/// Log format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// As the telemetry crate takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Watchman: warm kernel pods per plan, allocated to documents over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "watchman", version, about, args_override_self = true)]
pub struct Args {
    /// gRPC address (Allocate, Release, ...; health and reflection too).
    #[arg(long, env = "WATCHMAN_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// HTTP address for /healthz, /metrics and (with --dev-page) the try-it page.
    #[arg(long, env = "WATCHMAN_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// The plans file (TOML; see watchman/plans.example.toml).
    #[arg(long, env = "WATCHMAN_PLANS")]
    pub plans: PathBuf,
    /// `memory` (one replica) or a Redis URL (`redis://127.0.0.1:6379/0`).
    #[arg(long, env = "WATCHMAN_STORE", default_value = "memory", value_parser = store_url, hide_env_values = true)]
    pub store: StoreUrl,
    /// Prefix of every Redis key (several Watchman deployments can share a Redis).
    #[arg(long, env = "WATCHMAN_REDIS_PREFIX", default_value = "watchman:")]
    pub redis_prefix: String,
    /// How long one Redis command may take before it counts as failed.
    #[arg(long, env = "WATCHMAN_REDIS_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub redis_timeout: Duration,
    /// How long a Redis call that is safe to repeat (reads, claims, renewals) is retried after
    /// a timeout or a lost connection before the caller gets UNAVAILABLE; `0s`: never.
    #[arg(long, env = "WATCHMAN_REDIS_RETRY_FOR", default_value = "3s", value_parser = duration)]
    pub redis_retry_for: Duration,
    /// Ed25519 private key (PKCS#8 PEM) that signs session tokens.
    #[arg(long, env = "WATCHMAN_SIGNING_KEY")]
    pub signing_key: PathBuf,
    /// File holding the bearer token gRPC callers must present.
    #[arg(long, env = "WATCHMAN_API_TOKEN_FILE", conflicts_with = "api_token")]
    pub api_token_file: Option<PathBuf>,
    /// The bearer token itself (prefer the file, or the environment, over the command line).
    #[arg(long, env = "WATCHMAN_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// TLS certificate chain (PEM) for the gRPC API. With `--tls-key`, the API speaks TLS.
    #[arg(long, env = "WATCHMAN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the gRPC API.
    #[arg(long, env = "WATCHMAN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS, on top of the bearer token.
    #[arg(long, env = "WATCHMAN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Where pods run: `local` (Middleman processes on this host) or `kubernetes`.
    #[arg(long, env = "WATCHMAN_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Kubeconfig file (kubernetes backend). Default: the in-cluster service account, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    #[arg(long, env = "WATCHMAN_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the kernel pods (kubernetes backend).
    #[arg(long, env = "WATCHMAN_POD_NAMESPACE", default_value = "nbplat-pods")]
    pub pod_namespace: String,
    /// Namespace of the reconciler's coordination.k8s.io Lease (Watchman's own namespace).
    #[arg(long, env = "WATCHMAN_LEASE_NAMESPACE", default_value = "nbplat")]
    pub lease_namespace: String,
    /// Name of the reconciler's Lease.
    #[arg(long, env = "WATCHMAN_LEASE_NAME", default_value = "watchman")]
    pub lease_name: String,
    /// Middleman image of plans that name none (kubernetes backend).
    #[arg(
        long,
        env = "WATCHMAN_POD_IMAGE",
        default_value = "ghcr.io/nbplat/middleman:0.1.0"
    )]
    pub pod_image: String,
    /// Where Kubernetes pods keep their documents: `none` (in memory only) or Watchman's URL
    /// as the pods reach it (`http://watchman.nbplat.svc:8080`): each pod then reads and saves
    /// its own document through Watchman, with a credential that reaches nothing else.
    #[arg(long, env = "WATCHMAN_POD_DOCUMENT_STORE", default_value = "none", value_parser = pod_document_store)]
    pub pod_document_store: PodDocumentStore,
    /// Key prefix of documents in Watchman's document store (`<prefix>notebook:<document>`
    /// in Redis): apart from `--redis-prefix`, so documents and Watchman's records never mix.
    #[arg(
        long,
        env = "WATCHMAN_POD_DOCUMENT_KEY_PREFIX",
        default_value = "nbplat:"
    )]
    pub pod_document_key_prefix: String,
    /// Service account of the kernel pods (no bindings; its token is never mounted).
    #[arg(
        long,
        env = "WATCHMAN_POD_SERVICE_ACCOUNT",
        default_value = "middleman"
    )]
    pub pod_service_account: String,
    /// Grace period when a pod is deleted.
    #[arg(long, env = "WATCHMAN_POD_DELETE_GRACE", default_value = "10s", value_parser = duration)]
    pub pod_delete_grace: Duration,
    /// How long a pod stays bound to a node that stopped answering before it is evicted.
    #[arg(long, env = "WATCHMAN_POD_UNREACHABLE_TOLERATION", default_value = "30s", value_parser = duration)]
    pub pod_unreachable_toleration: Duration,
    /// Extra annotation on every pod, `key=value` (repeatable).
    #[arg(
        long = "pod-annotation",
        env = "WATCHMAN_POD_ANNOTATIONS",
        value_delimiter = ',',
        value_parser = annotation
    )]
    pub pod_annotations: Vec<(String, String)>,
    /// Pods created per second at most, over all plans.
    #[arg(long, env = "WATCHMAN_POD_CREATE_RATE", default_value = "16", value_parser = rate)]
    pub pod_create_rate: f64,
    /// How often an allocated pod's activity (idle timeout) and lifetime are checked.
    #[arg(long, env = "WATCHMAN_ACTIVITY_INTERVAL", default_value = "2s", value_parser = duration)]
    pub activity_interval: Duration,
    /// The middleman binary (local backend). Default: next to this binary.
    #[arg(long, env = "WATCHMAN_MIDDLEMAN_BIN")]
    pub middleman_bin: Option<PathBuf>,
    /// Directory for local pods' runtime and workspace directories.
    #[arg(long, env = "WATCHMAN_LOCAL_ROOT", default_value_os_t = std::env::temp_dir().join("watchman-local"))]
    pub local_root: PathBuf,
    /// Name shared by the replicas of one deployment (marks local pods for garbage collection).
    #[arg(long, env = "WATCHMAN_POOL_ID", default_value = "default")]
    pub pool_id: String,
    /// This replica's name in the reconciler lease. Default: host, pid and a random suffix.
    #[arg(long, env = "WATCHMAN_INSTANCE")]
    pub instance: Option<String>,
    /// Default wait for a pod when the buffer is empty.
    #[arg(long, env = "WATCHMAN_DEFAULT_WAIT", default_value = "10s", value_parser = duration)]
    pub default_wait: Duration,
    /// Longest wait a caller may ask for.
    #[arg(long, env = "WATCHMAN_MAX_WAIT", default_value = "60s", value_parser = duration)]
    pub max_wait: Duration,
    /// Lifetime of minted session tokens.
    #[arg(long, env = "WATCHMAN_TOKEN_TTL", default_value = "1h", value_parser = duration)]
    pub token_ttl: Duration,
    /// Reconciler lease time; another replica takes over this long after the leader stops.
    #[arg(long, env = "WATCHMAN_LEASE_TTL", default_value = "5s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// Reconciler period.
    #[arg(long, env = "WATCHMAN_RECONCILE_INTERVAL", default_value = "250ms", value_parser = duration)]
    pub reconcile_interval: Duration,
    /// A pod not ready after this long is replaced.
    #[arg(long, env = "WATCHMAN_POD_STARTUP_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub pod_startup_timeout: Duration,
    /// Pods in flight at once: local backend, pods not ready yet (each is a kernel booting on
    /// this host); kubernetes, create calls. Also the creation budget's burst.
    #[arg(long, env = "WATCHMAN_MAX_CONCURRENT_STARTS", default_value_t = 4)]
    pub max_concurrent_starts: usize,
    /// The gateway's public base URL (`https://notebooks.example.com`): documents are then
    /// reached at `<base>/pods/<pod>/` and their WebSocket at `wss://…/pods/<pod>/ws`. Empty:
    /// each pod's own address (development without a gateway).
    #[arg(long, env = "WATCHMAN_PUBLIC_URL", default_value = "")]
    pub public_url: String,
    /// File holding the bearer token of the gateway, which may call `watchman.v1.Routes` (and
    /// nothing else). The API token is accepted there too.
    #[arg(long, env = "WATCHMAN_ROUTE_TOKEN_FILE")]
    pub route_token_file: Option<PathBuf>,
    /// Where pods' documents are kept (pods reach them only through Watchman, each its own):
    /// a directory or a Redis URL. Default: the Redis of `--store`, else
    /// `<local-root>/documents`.
    #[arg(long, env = "WATCHMAN_DOCUMENT_STORE")]
    pub document_store: Option<String>,
    /// Where pods' kernel checkpoints are kept (each pod reaches only its own document's,
    /// through Watchman): a directory, or `s3://bucket[/prefix]` (object storage, configured
    /// by the usual `AWS_*` variables; pods then move objects with pre-signed URLs). Default:
    /// `<local-root>/checkpoints`. Pods are started with checkpoints on; `none` turns them off.
    #[arg(long, env = "WATCHMAN_CHECKPOINT_STORE")]
    pub checkpoint_store: Option<String>,
    /// S3 options of an `s3://` checkpoint store, `key=value` lines (credentials:
    /// `access_key_id`, `secret_access_key`; mount it from a secret).
    #[arg(long, env = "WATCHMAN_CHECKPOINT_STORE_OPTIONS")]
    pub checkpoint_store_options: Option<std::path::PathBuf>,
    /// How long a pre-signed checkpoint URL stays valid.
    #[arg(long, env = "WATCHMAN_CHECKPOINT_URL_TTL", default_value = "5m", value_parser = duration)]
    pub checkpoint_url_ttl: Duration,
    /// Largest checkpoint (all its objects) a pod may keep, MiB.
    #[arg(long, env = "WATCHMAN_MAX_CHECKPOINT_MIB", default_value_t = 16 * 1024)]
    pub max_checkpoint_mib: u64,
    /// How often expired checkpoints (plans' `checkpoint_ttl`) are looked for.
    #[arg(long, env = "WATCHMAN_CHECKPOINT_SWEEP_INTERVAL", default_value = "5m", value_parser = duration)]
    pub checkpoint_sweep_interval: Duration,
    /// Largest checkpoint object (one name of a kernel) a pod may store, MiB.
    #[arg(
        long,
        env = "WATCHMAN_MAX_CHECKPOINT_OBJECT_MIB",
        default_value_t = 1024
    )]
    pub max_checkpoint_object_mib: u64,
    /// Largest document snapshot a pod may save, bytes.
    #[arg(long, env = "WATCHMAN_MAX_DOCUMENT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_document_bytes: usize,
    /// The kernelspec Jupyter clients get by default (`/jupyter/api/kernelspecs`'s `default`);
    /// empty: the first plan.
    #[arg(long, env = "WATCHMAN_JUPYTER_DEFAULT_PLAN", default_value = "")]
    pub jupyter_default_plan: String,
    /// Serve the try-it page on the HTTP address (development only: it allocates without auth).
    #[arg(long, env = "WATCHMAN_DEV_PAGE")]
    pub dev_page: bool,
    /// Delete every pod on shutdown (development; production keeps pods across restarts).
    #[arg(long, env = "WATCHMAN_DELETE_PODS_ON_EXIT")]
    pub delete_pods_on_exit: bool,
    /// Drain time on SIGTERM.
    #[arg(long, env = "WATCHMAN_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Log format.
    #[arg(long, env = "WATCHMAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["watchman", "--plans", "p.toml", "--signing-key", "k.pem"];
        argv.extend(extra);
        Args::try_parse_from(argv)
    }

    #[test]
    fn values_that_select_behaviour_are_parsed_at_start() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.store, StoreUrl::Memory);
        assert_eq!(a.backend, BackendKind::Local);
        assert_eq!(a.pod_document_store, PodDocumentStore::None);
        assert_eq!(a.log_format, LogFormat::Text);
        let a = parse(&[
            "--store",
            "redis://127.0.0.1:6379/0",
            "--backend",
            "kubernetes",
            "--pod-document-store",
            "http://watchman.nbplat.svc:8080/",
            "--pod-annotation",
            "a=1,b = two",
            "--pod-create-rate",
            "2.5",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(a.store, StoreUrl::Redis("redis://127.0.0.1:6379/0".into()));
        assert_eq!(a.store.shared_with_pods(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(a.backend, BackendKind::Kubernetes);
        assert_eq!(
            a.pod_document_store,
            PodDocumentStore::Watchman("http://watchman.nbplat.svc:8080".into())
        );
        assert_eq!(
            a.pod_annotations,
            [("a".into(), "1".into()), ("b".into(), "two".into())]
        );
        assert_eq!(a.pod_create_rate, 2.5);
        assert_eq!(a.log_format, LogFormat::Json);
    }

    #[test]
    fn invalid_values_are_refused_with_what_was_expected() {
        let cases: &[(&[&str], &str)] = &[
            (&["--store", "memroy"], "expected `memory` or a Redis URL"),
            (
                &["--store", "http://127.0.0.1:6379"],
                "expected `memory` or a Redis URL",
            ),
            (
                &["--backend", "kube"],
                "[possible values: local, kubernetes]",
            ),
            (
                &["--pod-document-store", "/var/lib/docs"],
                "expected `none` or Watchman's",
            ),
            (
                &["--pod-document-store", "redis://:secret@redis:6379/0"],
                "never with a store's credentials",
            ),
            (&["--pod-annotation", "novalue"], "expected key=value"),
            (&["--pod-create-rate", "0"], "above 0"),
            (&["--pod-create-rate", "NaN"], "above 0"),
            (&["--log-format", "yaml"], "[possible values: text, json]"),
            (&["--lease-ttl", "soon"], "not a duration"),
            (&["--lease-ttl", "5w"], "unknown unit"),
        ];
        for (argv, expected) in cases {
            let e = parse(argv).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
                ),
                "{argv:?}: {e}"
            );
            let text = e.to_string();
            assert!(text.contains(expected), "{argv:?}: {text}");
        }
    }
}
