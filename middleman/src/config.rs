//! Command-line and environment configuration, parsed once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Middleman: the sidecar that drives a document's kernel and serves its collaborators.
#[derive(Debug, Parser)]
#[command(name = "middleman", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one document: start its kernel, accept WebSocket connections.
    Serve(Box<ServeArgs>),
    /// Write a new Ed25519 key pair (signing.pem, public.pem) for development tokens.
    Keygen(KeygenArgs),
    /// Mint a session token with a private key (development; Watchman mints in production).
    Token(TokenArgs),
}

/// Settings of `middleman serve`. Every flag can also be set from the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is logged).
    #[arg(long, env = "MIDDLEMAN_LISTEN", default_value = "127.0.0.1:8888")]
    pub listen: SocketAddr,

    /// The document this Middleman serves; tokens for other documents are refused. When unset
    /// (a warm pod waiting for Watchman to allocate it), the pod binds to the document of the
    /// first valid token it sees and refuses every other document from then on.
    #[arg(long, env = "MIDDLEMAN_DOCUMENT")]
    pub document: Option<String>,

    /// This pod's name; tokens for other pods are refused.
    #[arg(long, env = "MIDDLEMAN_POD")]
    pub pod: String,

    /// File holding the Ed25519 public key (SPKI PEM) that verifies session tokens.
    #[arg(long, env = "MIDDLEMAN_PUBLIC_KEY")]
    pub public_key: PathBuf,

    /// Kernelspec name of the kernel to run.
    #[arg(long, env = "MIDDLEMAN_KERNEL", default_value = "python3")]
    pub kernel: String,

    /// Extra Jupyter data directories searched for `kernels/<name>/kernel.json`, before
    /// `JUPYTER_PATH` and the system directories.
    #[arg(
        long = "kernel-path",
        env = "MIDDLEMAN_KERNEL_PATH",
        value_delimiter = ':'
    )]
    pub kernel_paths: Vec<PathBuf>,

    /// Parent of the private runtime directory (connection file and ipc sockets).
    #[arg(long, env = "MIDDLEMAN_RUNTIME_ROOT", default_value_os_t = std::env::temp_dir().join("middleman-runtime"))]
    pub runtime_root: PathBuf,

    /// Working directory of the kernel (created if missing). Defaults to a directory inside the
    /// runtime directory.
    #[arg(long, env = "MIDDLEMAN_WORKSPACE")]
    pub workspace: Option<PathBuf>,

    /// Address-space limit of the kernel process in MiB (0: none). Allocations past it raise
    /// `MemoryError` in Python instead of getting the pod killed.
    #[arg(long, env = "MIDDLEMAN_KERNEL_MEMORY_MIB", default_value_t = 0)]
    pub kernel_memory_mib: u64,

    /// Processes the kernel's user may run (0: none). Binds only when the kernel runs as an
    /// unprivileged user (`--kernel-uid`).
    #[arg(long, env = "MIDDLEMAN_KERNEL_MAX_PROCESSES", default_value_t = 0)]
    pub kernel_max_processes: u64,

    /// Open files of the kernel (0: none).
    #[arg(long, env = "MIDDLEMAN_KERNEL_MAX_OPEN_FILES", default_value_t = 0)]
    pub kernel_max_open_files: u64,

    /// Run the kernel in a new network namespace with no interfaces (no network at all; the
    /// ipc sockets are files and keep working).
    #[arg(long, env = "MIDDLEMAN_KERNEL_ISOLATE_NETWORK")]
    pub kernel_isolate_network: bool,

    /// Run the kernel as this uid (and gid), where the host allows it.
    #[arg(long, env = "MIDDLEMAN_KERNEL_UID")]
    pub kernel_uid: Option<u32>,

    /// Wall-clock limit of one execution; past it the execution is interrupted, then the kernel
    /// restarted if it does not stop.
    #[arg(long, env = "MIDDLEMAN_EXECUTION_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub execution_timeout: Duration,

    /// How long an interrupted execution may take to stop before the kernel is killed and restarted.
    #[arg(long, env = "MIDDLEMAN_INTERRUPT_GRACE", default_value = "3s", value_parser = parse_duration)]
    pub interrupt_grace: Duration,

    /// How long a new kernel may take to answer `kernel_info_request`.
    #[arg(long, env = "MIDDLEMAN_KERNEL_STARTUP_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub kernel_startup_timeout: Duration,

    /// Heartbeat period; three missed beats in a row count as a dead kernel.
    #[arg(long, env = "MIDDLEMAN_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Automatic restarts allowed within `restart-window` before the kernel is shown as dead.
    #[arg(long, env = "MIDDLEMAN_MAX_RESTARTS", default_value_t = 5)]
    pub max_restarts: u32,

    /// Window over which `max-restarts` is counted.
    #[arg(long, env = "MIDDLEMAN_RESTART_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub restart_window: Duration,

    /// Bytes of output one execution may produce; later output is dropped with a notice.
    #[arg(long, env = "MIDDLEMAN_MAX_OUTPUT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_output_bytes: u64,

    /// Largest message a client may send.
    #[arg(long, env = "MIDDLEMAN_MAX_CLIENT_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_client_message_bytes: usize,

    /// Minimum time between two stream updates of one execution sent to clients (the first is
    /// sent at once, later chunks are coalesced).
    #[arg(long, env = "MIDDLEMAN_STREAM_FLUSH_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub stream_flush_interval: Duration,

    /// Frames buffered per connection; a client further behind is disconnected (close 4008).
    #[arg(long, env = "MIDDLEMAN_CLIENT_QUEUE", default_value_t = 512)]
    pub client_queue: usize,

    /// Executions that may wait in the queue.
    #[arg(long, env = "MIDDLEMAN_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,

    /// Origins allowed to open the WebSocket (browser `Origin` header). Empty: same origin as the
    /// `Host` header. Connections without an Origin header (non-browser clients) are allowed.
    #[arg(
        long = "allowed-origin",
        env = "MIDDLEMAN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Seconds of clock skew tolerated when checking token expiry.
    #[arg(long, env = "MIDDLEMAN_TOKEN_LEEWAY_SECS", default_value_t = 30)]
    pub token_leeway_secs: u64,

    /// Interval of WebSocket pings; a connection silent for three intervals is closed.
    #[arg(long, env = "MIDDLEMAN_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How long shutdown waits for connections and the kernel to finish.
    #[arg(long, env = "MIDDLEMAN_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "MIDDLEMAN_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Where the document is saved: a `redis://` URL, or a directory (default: the user's
    /// state directory). `none` keeps it in memory only.
    #[arg(long, env = "MIDDLEMAN_DOCUMENT_STORE", default_value_t = default_store())]
    pub document_store: String,

    /// Key prefix of documents in Redis (`<prefix>notebook:<document>`).
    #[arg(long, env = "MIDDLEMAN_DOCUMENT_KEY_PREFIX", default_value = "nbplat:")]
    pub document_key_prefix: String,

    /// Edits and outputs are saved at most this long after they happen.
    #[arg(long, env = "MIDDLEMAN_SAVE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub save_interval: Duration,

    /// Collaborators allowed in the document at once.
    #[arg(long, env = "MIDDLEMAN_MAX_CLIENTS", default_value_t = 256)]
    pub max_clients: usize,

    /// Events kept for clients that reconnect (they get a snapshot when they missed more).
    #[arg(long, env = "MIDDLEMAN_REPLAY_FRAMES", default_value_t = 8192)]
    pub replay_frames: usize,

    /// Bytes of events kept for clients that reconnect.
    #[arg(long, env = "MIDDLEMAN_REPLAY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub replay_bytes: usize,

    /// Largest the shared document's text (its CRDT) may grow to; edits beyond are refused.
    #[arg(long, env = "MIDDLEMAN_MAX_DOCUMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_document_bytes: usize,

    /// Largest `.ipynb` accepted by the import endpoint.
    #[arg(long, env = "MIDDLEMAN_MAX_IMPORT_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_import_bytes: usize,
}

fn default_store() -> String {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("middleman/documents").display().to_string()
}

/// Settings of `middleman keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Directory to write `signing.pem` (mode 0600) and `public.pem` into.
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Settings of `middleman token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The private key (PKCS#8 PEM).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub doc: String,
    #[arg(long)]
    pub pod: String,
    #[arg(long)]
    pub user: String,
    /// Display name shown to collaborators (defaults to the user id).
    #[arg(long)]
    pub name: Option<String>,
    /// `editor` or `viewer`.
    #[arg(long, default_value = "editor")]
    pub role: session_token::Role,
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

/// A duration flag that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// The number part is not a number.
    #[error("{0:?} is not a duration (try 500ms, 3s, 10m, 1h)")]
    NotANumber(String),
    /// The unit is not one of ms, s, m, h.
    #[error("{text:?}: unknown unit {unit:?} (ms, s, m, h)")]
    UnknownUnit { text: String, unit: String },
    /// Negative or not finite.
    #[error("{0:?} is not a valid duration")]
    OutOfRange(String),
}

/// Parses `500ms`, `3s`, `10m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: s.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(DurationError::OutOfRange(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl ServeArgs {
    /// Parses `middleman serve` flags from an argument list (tests build their config this way,
    /// so they exercise the same parser as the binary).
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("middleman"))
            .chain(args.into_iter().map(Into::into));
        Wrapper::try_parse_from(argv).map(|w| w.serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("3 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
