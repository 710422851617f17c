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
    /// Serve the kernel agent: start, interrupt and kill kernels in their sandbox (the kernel
    /// container's entrypoint on Kubernetes; Middleman starts it itself elsewhere).
    KernelAgent(Box<kernel_sandbox::AgentArgs>),
    /// Report which sandbox layers hold on this host, as JSON, and exit non-zero when
    /// `--require`'s level is not met (Watchman runs this before starting a plan's pods).
    SandboxCheck(SandboxCheckArgs),
}

/// Settings of `middleman sandbox-check`.
#[derive(Debug, Clone, Args)]
pub struct SandboxCheckArgs {
    /// The level to check for.
    #[arg(long, default_value = "none")]
    pub require: kernel_sandbox::Level,
    /// The agent's settings, as the pods would get them.
    #[command(flatten)]
    pub agent: kernel_sandbox::AgentArgs,
}

/// Settings of `middleman serve`. Every flag can also be set from the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is logged).
    #[arg(long, env = "MIDDLEMAN_LISTEN", default_value = "127.0.0.1:8888")]
    pub listen: SocketAddr,

    /// Threads running Middleman's tasks. One (the default) runs them all on one thread: an
    /// execution goes from a client's WebSocket to the kernel and back without handing work
    /// to another thread, which on a pod of one or two cores shared with the kernel costs
    /// more than a second thread gives (docs/benchmarks.md). Blocking work (files,
    /// checkpoints) runs on threads of its own either way.
    #[arg(long, env = "MIDDLEMAN_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,

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

    /// Memory limit of the kernel in MiB (a cgroup: past it the kernel is stopped and the cell
    /// says so; 0: none).
    #[arg(long, env = "MIDDLEMAN_KERNEL_MEMORY_MIB", default_value_t = 0)]
    pub kernel_memory_mib: u64,

    /// The JavaScript heap a JS/TS (Deno) kernel's code may use, MiB: V8's limit is this plus
    /// the kernel's own share (docs/sandbox.md); past it the kernel is stopped and the cell
    /// says so. 0: the engine's default.
    #[arg(long, env = "MIDDLEMAN_KERNEL_JS_HEAP_MIB", default_value_t = 0)]
    pub kernel_js_heap_mib: u64,

    /// Processes and threads the kernel may run (a pids cgroup, or a per-uid limit with
    /// `--kernel-uid`; 0: none).
    #[arg(long, env = "MIDDLEMAN_KERNEL_MAX_PROCESSES", default_value_t = 0)]
    pub kernel_max_processes: u64,

    /// Open files of the kernel (0: none).
    #[arg(long, env = "MIDDLEMAN_KERNEL_MAX_OPEN_FILES", default_value_t = 0)]
    pub kernel_max_open_files: u64,

    /// CPUs the kernel may use (a cgroup quota where the host has the controller; 0: none).
    #[arg(long, env = "MIDDLEMAN_KERNEL_CPUS", default_value_t = 0.0)]
    pub kernel_cpus: f64,

    /// Size of the kernel's private /tmp and /dev/shm, MiB each.
    #[arg(long, env = "MIDDLEMAN_KERNEL_TMP_MIB", default_value_t = 256)]
    pub kernel_tmp_mib: u64,

    /// Size limit of the workspace in MiB (an ext4 image on a loop device, else a tmpfs; 0:
    /// none).
    #[arg(long, env = "MIDDLEMAN_WORKSPACE_QUOTA_MIB", default_value_t = 0)]
    pub workspace_quota_mib: u64,

    /// Run the kernel as this uid (and gid). Without it, a root Middleman's kernel runs as uid
    /// 0 with no privileges at all (the sandbox holds either way).
    #[arg(long, env = "MIDDLEMAN_KERNEL_UID")]
    pub kernel_uid: Option<u32>,

    /// More host paths the kernel may read (`:`-separated), beyond the system directories and
    /// its own environment.
    #[arg(
        long = "kernel-read-only",
        env = "MIDDLEMAN_KERNEL_READ_ONLY",
        value_delimiter = ':'
    )]
    pub kernel_read_only: Vec<PathBuf>,

    /// Build the kernel's namespaces (`auto`: when Middleman runs as root).
    #[arg(long, env = "MIDDLEMAN_KERNEL_NAMESPACES", value_enum, default_value_t = kernel_sandbox::agent::server::Namespaces::Auto)]
    pub kernel_namespaces: kernel_sandbox::agent::server::Namespaces,

    /// The sandbox level the kernel requires; Middleman refuses to start a kernel the host
    /// cannot give it (`none`, `standard`, `strict`; see docs/operations.md).
    #[arg(long, env = "MIDDLEMAN_SANDBOX_REQUIRE", default_value = "none")]
    pub sandbox_require: kernel_sandbox::Level,

    /// What the plan allows, in a sentence people read when the kernel has no network (`%pip
    /// install`, a lookup or a connection fails at once with it): for example "Team plans can
    /// reach PyPI; upload data files with the Files panel."
    #[arg(long, env = "MIDDLEMAN_PLAN_NOTE", default_value = "")]
    pub plan_note: String,

    /// The kernel agent's socket, when it runs in a container of its own (Kubernetes). Without
    /// it, Middleman starts the agent itself.
    #[arg(long, env = "MIDDLEMAN_KERNEL_AGENT")]
    pub kernel_agent: Option<PathBuf>,

    /// With `--kernel-agent`: the ipc directory shared with the agent's container.
    #[arg(long, env = "MIDDLEMAN_KERNEL_IPC_DIR", requires = "kernel_agent")]
    pub kernel_ipc_dir: Option<PathBuf>,

    /// The binary that serves `kernel-agent` when Middleman starts the agent itself (default:
    /// this one).
    #[arg(long, env = "MIDDLEMAN_KERNEL_AGENT_BIN")]
    pub kernel_agent_bin: Option<PathBuf>,

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

    /// A request's head must arrive within this (also how long an idle kept-alive HTTP
    /// connection stays open).
    #[arg(long, env = "MIDDLEMAN_HTTP_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// A request, its body included, must be answered within this (WebSockets, once
    /// upgraded, are watched by their pings instead).
    #[arg(long, env = "MIDDLEMAN_HTTP_REQUEST_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,

    /// How long shutdown waits for connections and the kernel to finish.
    #[arg(long, env = "MIDDLEMAN_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format: `text` or `json`.
    #[arg(long, env = "MIDDLEMAN_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Where the document is saved: `watchman+http://host:port` (Watchman keeps it; this pod
    /// reaches its own document only), a `redis://` URL, or a directory (default: the user's
    /// state directory). `none` keeps it in memory only.
    #[arg(long, env = "MIDDLEMAN_DOCUMENT_STORE", default_value_t = default_store())]
    pub document_store: String,

    /// With a `watchman+http://` document store: the file holding this pod's credential
    /// (Watchman writes it; the kernel never sees it).
    #[arg(long, env = "MIDDLEMAN_POD_CREDENTIAL_FILE")]
    pub pod_credential_file: Option<PathBuf>,

    /// Where the kernel's checkpoints are kept (its names, saved after each cell and at
    /// shutdown, restored when the document comes back on a new kernel): a directory, or
    /// `watchman+http://host:port` (with the document store there: the pod reaches only its
    /// own document's checkpoint). Unset or `none`: no checkpoints.
    #[arg(long, env = "MIDDLEMAN_CHECKPOINT_STORE")]
    pub checkpoint_store: Option<String>,

    /// Largest object one name may take in a checkpoint (MiB); a larger name is rebuilt by
    /// running its cell again on resume.
    #[arg(
        long,
        env = "MIDDLEMAN_CHECKPOINT_MAX_NAME_MIB",
        default_value_t = 1024
    )]
    pub checkpoint_max_name_mib: u64,

    /// Largest a document's checkpoint may grow to (MiB).
    #[arg(long, env = "MIDDLEMAN_CHECKPOINT_MAX_MIB", default_value_t = 4096)]
    pub checkpoint_max_mib: u64,

    /// Largest the workspace's files may be, in all, to be checkpointed with the kernel's
    /// names (MiB; files past it, in path order, are not kept). 0: files are not checkpointed.
    #[arg(
        long,
        env = "MIDDLEMAN_CHECKPOINT_MAX_FILES_MIB",
        default_value_t = 1024
    )]
    pub checkpoint_max_files_mib: u64,

    /// How long one save may hold the kernel after a cell; names past it are rebuilt on resume.
    #[arg(long, env = "MIDDLEMAN_CHECKPOINT_BUDGET", default_value = "2s", value_parser = parse_duration)]
    pub checkpoint_budget: Duration,

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

    /// Largest file accepted by the file API's upload (`PUT /api/files/content`); larger
    /// uploads are refused with 413 and leave nothing behind.
    #[arg(long, env = "MIDDLEMAN_MAX_UPLOAD_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_upload_bytes: u64,
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

pub use telemetry::{DurationError, parse_duration};

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
