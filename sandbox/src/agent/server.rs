//! The kernel agent: the one process that starts, signals and kills kernels, each in a jail of
//! its own. Locally Middleman starts it (as root) over a socket pair on its standard input; on
//! Kubernetes it is the kernel container's entrypoint, listening on a socket in the volume it
//! shares with Middleman's container, and accepting only Middleman's uid. Either way Middleman
//! never runs code as the kernel's user and the kernel never sees what Middleman holds.
//!
//! Startup (single-threaded, before the async runtime): a private mount namespace with the
//! workspace's size-limited filesystem, the cgroup parents, then a self-test jail whose
//! findings become the [`Report`] sent first on every connection.
//!
//! This file holds the agent's whole life (settings, startup, the connection loop and the
//! per-generation supervisor) because each part shares the same small context; the pieces it
//! drives (init, the jail's filesystem, cgroups, rules) live in their own modules.

use std::collections::HashMap;
use std::io::{BufReader, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::protocol::{Event, KernelExit, MAX_LINE, Request, encode};
use crate::cgroup::{CgroupRoot, Controller, KernelCgroup, Limits};
use crate::init::{Applied, InitReport};
use crate::layers::{Layer, Report};
use crate::policy::{JailPolicy, environment_paths};
use crate::selftest::{self, HostFacts};

/// The argument that makes the binary run a jail's init.
pub const INIT_ARG: &str = "__nbplat-jail-init";
/// The argument that makes the binary run the self-test inside a jail.
pub const SELFTEST_ARG: &str = "__nbplat-selftest";

/// Keep this much of a kernel's stderr for its death report.
const STDERR_TAIL: usize = 4096;

/// Whether to build namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Namespaces {
    /// When the agent runs as root and is not in a pod's container.
    Auto,
    On,
    Off,
}

/// Settings of `middleman kernel-agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Listen on this unix socket (a Kubernetes pod's shared volume). Default: serve the
    /// connection on standard input (a socket pair from the Middleman that started the agent).
    #[arg(long, env = "KERNEL_AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// With `--socket`: the only uid allowed to connect (Middleman's).
    #[arg(long, env = "KERNEL_AGENT_ALLOW_UID")]
    pub allow_uid: Option<u32>,
    /// The directory of connection files and ipc sockets, shared with Middleman.
    #[arg(long, env = "KERNEL_AGENT_IPC_DIR")]
    pub ipc_dir: PathBuf,
    /// The kernel's workspace (its home).
    #[arg(long, env = "KERNEL_AGENT_WORKSPACE")]
    pub workspace: PathBuf,
    /// Size limit of the workspace in MiB (0: none).
    #[arg(long, env = "KERNEL_AGENT_WORKSPACE_QUOTA_MIB", default_value_t = 0)]
    pub workspace_quota_mib: u64,
    /// The ext4 image that backs the workspace (outside the kernel's view); without it, a
    /// quota is a tmpfs.
    #[arg(long, env = "KERNEL_AGENT_WORKSPACE_IMAGE")]
    pub workspace_image: Option<PathBuf>,
    /// Run kernels as this uid and gid. Default: the agent's own user (as root: uid 0 without
    /// any privilege, the forced uid-0 mode).
    #[arg(long, env = "KERNEL_AGENT_UID")]
    pub kernel_uid: Option<u32>,
    /// Memory limit of each kernel in MiB (a cgroup; 0: none).
    #[arg(long, env = "KERNEL_AGENT_MEMORY_MIB", default_value_t = 0)]
    pub memory_mib: u64,
    /// Processes and threads of each kernel (a pids cgroup, or a per-uid limit; 0: none).
    #[arg(long, env = "KERNEL_AGENT_MAX_PROCESSES", default_value_t = 0)]
    pub max_processes: u64,
    /// Open files of each kernel process (0: unchanged).
    #[arg(long, env = "KERNEL_AGENT_MAX_OPEN_FILES", default_value_t = 0)]
    pub max_open_files: u64,
    /// CPUs of each kernel (a cgroup quota; 0: none).
    #[arg(long, env = "KERNEL_AGENT_CPUS", default_value_t = 0.0)]
    pub cpus: f64,
    /// Size of the private /tmp and /dev/shm, MiB each.
    #[arg(long, env = "KERNEL_AGENT_TMP_MIB", default_value_t = 256)]
    pub tmp_mib: u64,
    /// More host paths the kernel may read (beyond the system and its environment).
    #[arg(
        long = "read-only",
        env = "KERNEL_AGENT_READ_ONLY",
        value_delimiter = ':'
    )]
    pub read_only: Vec<PathBuf>,
    /// Build the jail's namespaces.
    #[arg(long, env = "KERNEL_AGENT_NAMESPACES", value_enum, default_value_t = Namespaces::Auto)]
    pub namespaces: Namespaces,
    /// The agent runs in a pod's container of its own: the pod gives the kernel its own
    /// filesystem, processes, IPC and limits, and the report says so.
    #[arg(long, env = "KERNEL_AGENT_CONTAINER")]
    pub container: bool,
    /// Host name inside jails.
    #[arg(long, env = "KERNEL_AGENT_HOSTNAME", default_value = "kernel")]
    pub hostname: String,
}

/// Why the agent could not set itself up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("private mount namespace: {0}")]
    MountNamespace(#[source] nix::Error),
    #[error("{path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a generation could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cgroup: {0}")]
    Cgroup(#[source] std::io::Error),
    #[error("cannot start the jail: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot hand the jail its policy: {0}")]
    Policy(#[source] std::io::Error),
    #[error("bad bridged port {0} (privileged, or named twice)")]
    BridgePort(u16),
    #[error("bad connection file name {0:?}")]
    ConnectionFileName(String),
    #[error("{path}: {source}")]
    ConnectionFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The jail's init said why, or ended without a word (its stderr's last line).
    #[error("{0}")]
    Jail(String),
}

/// What every generation shares.
#[derive(Debug)]
struct Context {
    template: JailPolicy,
    cgroups: Option<CgroupRoot>,
    limits: Limits,
    memory_mib: u64,
    container: bool,
    report: Report,
}

/// Runs the agent; returns the process's exit code.
pub fn main(args: AgentArgs) -> i32 {
    let _ = crate::privileges::not_dumpable();
    let _ = crate::privileges::no_core_dumps();
    let context = match prepare(&args) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("kernel agent: {e}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kernel agent: {e}");
            return 1;
        }
    };
    let code = runtime.block_on(serve(args, context.clone()));
    let _ = std::fs::remove_dir(&context.template.root_dir);
    code
}

/// What holds for kernels started with `args` on this host: the same preparation and self-test
/// as an agent's start.
pub fn check(args: &AgentArgs) -> Result<Report, SetupError> {
    let context = prepare(args)?;
    let _ = std::fs::remove_dir(&context.template.root_dir);
    Ok(context.report)
}

/// Everything before the first connection: mount namespace, workspace, cgroups, self-test.
fn prepare(args: &AgentArgs) -> Result<Context, SetupError> {
    let root = nix::unistd::geteuid().is_root();
    let namespaces = match args.namespaces {
        Namespaces::On => true,
        Namespaces::Off => false,
        Namespaces::Auto => root && !args.container,
    };
    let quota_bytes = args.workspace_quota_mib.saturating_mul(1 << 20);
    let owner = args.kernel_uid.filter(|u| *u != 0);
    let mut workspace_quota = (false, "no quota configured".to_owned());
    if root && !args.container {
        // Mounts made from here on (the workspace's filesystem) are the agent's alone and end
        // with its last process.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(SetupError::MountNamespace)?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(SetupError::MountNamespace)?;
        let quota = crate::workspace::prepare(
            &args.workspace,
            args.workspace_image.as_deref(),
            quota_bytes,
            owner,
        );
        workspace_quota = (quota.holds(), quota.describe());
        // The kernel may create sockets in the ipc directory (Landlock allows nothing else
        // there), and each leaves an inode: a small tmpfs of the agent's own bounds how many.
        // Middleman reaches it through /proc/<agent>/root.
        let uid = owner.unwrap_or(0);
        let options = format!("size=1m,nr_inodes=512,mode=0700,uid={uid},gid={uid}");
        if let Err(e) = nix::mount::mount(
            Some("tmpfs"),
            &args.ipc_dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        ) {
            tracing::warn!(error = %e, "the ipc directory keeps the host's filesystem (no tmpfs)");
        }
    } else {
        std::fs::create_dir_all(&args.workspace).map_err(|source| SetupError::Directory {
            path: args.workspace.clone(),
            source,
        })?;
        if args.container && quota_bytes > 0 {
            workspace_quota = (
                true,
                format!("{} MiB (the pod's volume limit)", args.workspace_quota_mib),
            );
        }
    }
    if let Some(uid) = owner {
        // The kernel creates its sockets here; Landlock lets it do nothing else.
        let _ = std::os::unix::fs::chown(&args.ipc_dir, Some(uid), Some(uid));
    }
    // An empty directory to mount each jail's root on (in the jail's own namespace, so one
    // serves every jail). Beside the ipc directory, which its owner removes.
    let jail_root = args
        .ipc_dir
        .parent()
        .filter(|p| *p != Path::new("/"))
        .map(Path::to_owned)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(".jail-root-{}", std::process::id()));
    if namespaces {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&jail_root)
            .map_err(|source| SetupError::Directory {
                path: jail_root.clone(),
                source,
            })?;
    }
    let cgroups = (root && !args.container).then(CgroupRoot::detect).flatten();
    let limits = Limits {
        memory_bytes: args.memory_mib.saturating_mul(1 << 20),
        max_processes: args.max_processes,
        cpus: args.cpus,
    };
    let template = JailPolicy {
        argv: Vec::new(),
        env: Vec::new(),
        uid: args.kernel_uid,
        namespaces,
        root_dir: jail_root,
        read_only: args.read_only.clone(),
        ipc_dir: args.ipc_dir.clone(),
        workspace: args.workspace.clone(),
        tmp_bytes: args.tmp_mib.saturating_mul(1 << 20),
        hostname: args.hostname.clone(),
        max_open_files: args.max_open_files,
        // RLIMIT_NPROC counts every process of the uid on the host: it binds a kernel with a
        // uid of its own, and is the process limit where no pids cgroup exists.
        max_processes: if owner.is_some() || args.container {
            args.max_processes
        } else {
            0
        },
        umask: if args.container { 0o007 } else { 0o022 },
        extra_file: None,
        bridges: Vec::new(),
    };
    let mut host = HostFacts {
        workspace_quota,
        container: args.container,
        ..HostFacts::default()
    };
    let has = |c: Controller| cgroups.as_ref().is_some_and(|g| g.has(c));
    let version = cgroups.as_ref().map(CgroupRoot::version).unwrap_or("");
    if args.memory_mib > 0 && has(Controller::Memory) {
        host.memory_limit = Some(format!("{} MiB, cgroup {version}", args.memory_mib));
    } else if args.container {
        host.memory_limit = container_memory_limit();
    }
    if args.max_processes > 0 {
        if has(Controller::Pids) {
            host.process_limit = Some(format!("{} processes, pids cgroup", args.max_processes));
        } else if template.max_processes > 0 {
            host.process_limit = Some(format!(
                "{} processes of the kernel's user",
                args.max_processes
            ));
        }
    }
    if args.cpus > 0.0 && has(Controller::Cpu) {
        host.cpu_limit = Some(format!("{} CPUs, cgroup {version}", args.cpus));
    }
    let mut context = Context {
        template,
        cgroups,
        limits,
        memory_mib: args.memory_mib,
        container: args.container,
        report: Report::default(),
    };
    context.report = self_test(&context, &host);
    Ok(context)
}

/// The memory limit of the agent's own container (cgroup v2), if it has one.
fn container_memory_limit() -> Option<String> {
    let text = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    let bytes: u64 = text.trim().parse().ok()?;
    Some(format!("{} MiB, the container's limit", bytes >> 20))
}

/// Runs the self-test in a jail and builds the report from it.
fn self_test(context: &Context, host: &HostFacts) -> Report {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            let mut r = Report::default();
            for l in Layer::ALL {
                r.set(l, false, format!("self-test not run: {e}"));
            }
            return r;
        }
    };
    let mut policy = context.template.clone();
    let outside = if context.container {
        std::process::id().to_string()
    } else {
        "0".to_owned()
    };
    policy.argv = vec![
        exe.display().to_string(),
        SELFTEST_ARG.to_owned(),
        policy.ipc_in_jail().display().to_string(),
        policy.home().display().to_string(),
        outside,
    ];
    policy.extra_file = Some(exe);
    let (events, mut received) = mpsc::unbounded_channel();
    let outcome = start(context, 0, &policy, events);
    let (applied, exit) = match outcome {
        Ok(running) => {
            let applied = running.applied.clone();
            drop(running);
            let mut exit = None;
            while let Some(event) = received.blocking_recv() {
                if let Event::Exited { exit: e, .. } = event {
                    exit = Some(e);
                    break;
                }
            }
            (applied, exit)
        }
        Err(reason) => {
            tracing::error!(%reason, "the sandbox self-test could not start");
            (Applied::default(), None)
        }
    };
    let seen = exit.as_ref().and_then(|e| selftest::parse(&e.stderr_tail));
    if seen.is_none() {
        tracing::error!(exit = ?exit, "the sandbox self-test reported nothing");
    }
    let mut report = selftest::report(&policy, &applied, seen.as_ref(), host);
    for failure in &applied.failures {
        tracing::warn!(%failure, "a sandbox step failed");
    }
    if !context.template.namespaces && !context.container {
        report.set(
            Layer::Filesystem,
            report.holds(Layer::Filesystem),
            "no namespaces: the agent is not root",
        );
    }
    report
}

/// A started generation: what the connection loop needs to signal and kill it.
#[derive(Debug)]
struct Running {
    /// Init's pid, which is also the process group of everything in the jail.
    pgid: i32,
    cgroup: Option<Arc<KernelCgroup>>,
    applied: Applied,
}

/// Starts one jail: cgroup, init (PID 1 of a new PID namespace), the policy on its standard
/// input. A supervisor thread reports the kernel's end on `events`.
fn start(
    context: &Context,
    generation: u64,
    policy: &JailPolicy,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Running, StartError> {
    let cgroup = match &context.cgroups {
        Some(root) => Some(Arc::new(
            root.create(&format!("g{generation}"), context.limits)
                .map_err(StartError::Cgroup)?,
        )),
        None => None,
    };
    let new_pid_namespace = policy.namespaces;
    // unshare(CLONE_NEWPID) only affects the calling thread's future children, and a thread
    // that made it can no longer start threads: a throwaway thread does the spawn.
    let spawned = std::thread::spawn(move || -> std::io::Result<Child> {
        if new_pid_namespace {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(std::io::Error::from)?;
        }
        Command::new("/proc/self/exe")
            .arg(INIT_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
    })
    .join()
    .map_err(|_| StartError::Spawn(std::io::Error::other("the spawning thread panicked")))?
    .map_err(StartError::Spawn)?;
    let mut child = spawned;
    let pid = child.id();
    // A pid always fits an i32 (pid_max is at most 2^22).
    let pgid = i32::try_from(pid).unwrap_or(i32::MAX);
    if let Some(cg) = &cgroup
        && let Err(e) = cg.add(pid)
    {
        let _ = child.kill();
        let _ = child.wait();
        return Err(StartError::Cgroup(e));
    }
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(StartError::Spawn(std::io::Error::other(
            "the jail's pipes are missing",
        )));
    };
    // Only now may init go on: it is in its cgroup before it can start anything.
    let mut line = serde_json::to_vec(policy).map_err(|e| StartError::Policy(e.into()))?;
    line.push(b'\n');
    stdin
        .write_all(&line)
        .and_then(|()| stdin.flush())
        .map_err(StartError::Policy)?;
    let tail = Arc::new(Mutex::new(String::new()));
    let tail_writer = tail.clone();
    let stderr_thread = std::thread::spawn(move || drain(stderr, &tail_writer));
    let mut reports = BufReader::new(stdout);
    let first = read_report(&mut reports);
    let applied = match first {
        Some(InitReport::Started { applied }) => applied,
        other => {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = child.wait();
            let _ = stderr_thread.join();
            let reason = match other {
                Some(InitReport::Failed { reason }) => reason,
                _ => last_line(&tail).unwrap_or_else(|| "the jail ended at once".into()),
            };
            return Err(StartError::Jail(reason));
        }
    };
    let memory_limit_mib =
        (context.memory_mib > 0 && cgroup.is_some()).then_some(context.memory_mib);
    let watched = cgroup.clone();
    std::thread::spawn(move || {
        // Standard input stays open as init's lifeline until the kernel has ended.
        let _lifeline = stdin;
        let mut exit = KernelExit {
            memory_limit_mib,
            ..KernelExit::default()
        };
        while let Some(report) = read_report(&mut reports) {
            if let InitReport::Exited { code, signal } = report {
                exit.code = code;
                exit.signal = signal;
                break;
            }
        }
        let status = child.wait();
        if exit.code.is_none() && exit.signal.is_none() {
            // Init itself was killed (a kill request, or the kernel took it down with it).
            if let Ok(status) = status {
                use std::os::unix::process::ExitStatusExt as _;
                exit.code = status.code();
                exit.signal = status.signal();
            }
        }
        let _ = stderr_thread.join();
        exit.stderr_tail = tail.lock().map(|t| t.clone()).unwrap_or_default();
        if let Some(cg) = &watched {
            exit.out_of_memory = cg.oom_kills() > 0;
            cg.kill_all();
        }
        let _ = events.send(Event::Exited { generation, exit });
    });
    Ok(Running {
        pgid,
        cgroup,
        applied,
    })
}

fn read_report(reader: &mut impl std::io::BufRead) -> Option<InitReport> {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {
                if let Ok(report) = serde_json::from_str(&line) {
                    return Some(report);
                }
            }
        }
    }
}

/// Reads a pipe to its end in fixed-size reads (a kernel writing without newlines cannot make
/// us allocate), keeping only the tail.
fn drain(mut pipe: impl std::io::Read, tail: &Mutex<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut t) = tail.lock() {
            t.push_str(&String::from_utf8_lossy(&buf[..n]));
            if t.len() > STDERR_TAIL {
                let mut cut = t.len() - STDERR_TAIL;
                while !t.is_char_boundary(cut) {
                    cut += 1;
                }
                t.drain(..cut);
            }
        }
    }
}

fn last_line(tail: &Mutex<String>) -> Option<String> {
    let t = tail.lock().ok()?;
    t.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(300).collect())
}

/// The policy for one kernel generation of a start request.
fn policy_for(context: &Context, argv: Vec<String>, env: Vec<(String, String)>) -> JailPolicy {
    let mut policy = context.template.clone();
    let prefixes = argv
        .first()
        .map(|a| environment_paths(Path::new(a)))
        .unwrap_or_default();
    let home = policy.home().display().to_string();
    let mut path: Vec<String> = prefixes
        .iter()
        .map(|p| p.join("bin").display().to_string())
        .collect();
    path.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(String::from));
    let user = if policy.uid.is_some_and(|u| u != 0) {
        "kernel"
    } else {
        "root"
    };
    let mut full_env: Vec<(String, String)> = vec![
        ("PATH".into(), path.join(":")),
        ("HOME".into(), home.clone()),
        ("USER".into(), user.into()),
        ("LOGNAME".into(), user.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TMPDIR".into(), "/tmp".into()),
        ("SHELL".into(), "/bin/sh".into()),
        ("IPYTHONDIR".into(), format!("{home}/.ipython")),
    ];
    for (k, v) in env {
        full_env.retain(|(existing, _)| *existing != k);
        full_env.push((k, v));
    }
    policy.read_only.extend(prefixes);
    policy.argv = argv;
    policy.env = full_env;
    policy
}

/// The connection loop: one Middleman at a time.
async fn serve(args: AgentArgs, context: Arc<Context>) -> i32 {
    // A pod's containers are all sent SIGTERM at once; the kernel must outlive it until
    // Middleman has saved its last checkpoint. The agent ends with its Middleman's connection
    // (or at the kubelet's SIGKILL after the grace period). A handler, not SIG_IGN: the kernels
    // it starts must not inherit an ignored SIGTERM.
    // SIGINT too: a terminal's Ctrl-C reaches the agent Middleman started beside it.
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        match signal(kind) {
            Ok(mut received) => {
                tokio::spawn(async move {
                    while received.recv().await.is_some() {
                        tracing::info!("kernel agent: signalled; serving until Middleman leaves");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "kernel agent: cannot handle a signal"),
        }
    }
    let Some(path) = &args.socket else {
        let stream = match stdin_socket() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("kernel agent: standard input is not a socket: {e}");
                return 1;
            }
        };
        session(stream, &context).await;
        return 0;
    };
    let _ = std::fs::remove_file(path);
    let listener = match tokio::net::UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kernel agent: {}: {e}", path.display());
            return 1;
        }
    };
    if let Some(uid) = args.allow_uid {
        // The socket must be connectable by Middleman's user; the peer check below is the
        // real gate.
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
        tracing::info!(uid, socket = %path.display(), "kernel agent listening");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let allowed = match (stream.peer_cred(), args.allow_uid) {
            (Ok(cred), Some(uid)) => cred.uid() == uid,
            (Ok(cred), None) => cred.uid() == nix::unistd::geteuid().as_raw(),
            (Err(_), _) => false,
        };
        if !allowed {
            tracing::warn!("kernel agent: refused a connection from another user");
            continue;
        }
        session(stream, &context).await;
    }
}

fn stdin_socket() -> std::io::Result<tokio::net::UnixStream> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// Serves one Middleman until it disconnects; its kernels end with it.
async fn session(stream: tokio::net::UnixStream, context: &Arc<Context>) {
    let (read, mut write) = stream.into_split();
    let (events, mut received) = mpsc::unbounded_channel::<Event>();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let ready = Event::Ready {
        report: context.report.clone(),
        ipc_dir: context.template.ipc_in_jail().display().to_string(),
        home: context.template.home().display().to_string(),
    };
    if write.write_all(&encode(&ready)).await.is_err() {
        return;
    }
    // Lines are read by a task of their own, so that waiting for one never loses half of it.
    let (requests_tx, mut requests) = mpsc::channel::<Request>(16);
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(read);
        let mut line = Vec::new();
        while let Ok(true) = read_line(&mut lines, &mut line).await {
            match serde_json::from_slice(&line) {
                Ok(request) => {
                    if requests_tx.send(request).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kernel agent: bad request");
                    break;
                }
            }
        }
    });
    let mut reap = tokio::time::interval(std::time::Duration::from_secs(2));
    'serve: loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { break };
                for event in handle(request, context, &mut running, &events).await {
                    if write.write_all(&encode(&event)).await.is_err() {
                        break 'serve;
                    }
                }
            }
            Some(event) = received.recv() => {
                if let Event::Exited { generation, .. } = &event {
                    running.remove(generation);
                }
                if write.write_all(&encode(&event)).await.is_err() {
                    break;
                }
            }
            _ = reap.tick(), if context.container => reap_orphans(&running),
        }
    }
    reader.abort();
    for (_, r) in running.drain() {
        kill(&r, context.container);
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes; `Ok(false)` at the end of the stream.
async fn read_line(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    let mut limited = (&mut *reader).take(MAX_LINE as u64 + 1);
    let n = limited.read_until(b'\n', line).await?;
    if n == 0 || line.len() > MAX_LINE {
        return Ok(false);
    }
    Ok(true)
}

async fn handle(
    request: Request,
    context: &Arc<Context>,
    running: &mut HashMap<u64, Running>,
    events: &mpsc::UnboundedSender<Event>,
) -> Vec<Event> {
    match request {
        Request::Start {
            generation,
            argv,
            env,
            connection_file,
            connection,
            bridges,
        } => {
            if let Some(old) = running.remove(&generation) {
                kill(&old, context.container);
            }
            if let Err(error) = write_connection_file(context, &connection_file, &connection) {
                return vec![Event::StartFailed {
                    generation,
                    reason: error.to_string(),
                }];
            }
            let mut policy = policy_for(context, argv, env);
            match bridged_ports(&policy, &bridges) {
                Ok(ports) => policy.bridges = ports,
                Err(error) => {
                    return vec![Event::StartFailed {
                        generation,
                        reason: error.to_string(),
                    }];
                }
            }
            let (ctx, tx) = (context.clone(), events.clone());
            let started =
                tokio::task::spawn_blocking(move || start(&ctx, generation, &policy, tx)).await;
            match started {
                Ok(Ok(r)) => {
                    running.insert(generation, r);
                    vec![Event::Started { generation }]
                }
                Ok(Err(error)) => vec![Event::StartFailed {
                    generation,
                    reason: error.to_string(),
                }],
                Err(e) => vec![Event::StartFailed {
                    generation,
                    reason: e.to_string(),
                }],
            }
        }
        Request::Signal { generation, signal } => {
            // Only what an interrupt needs; killing has its own request.
            let signal = match Signal::try_from(signal) {
                Ok(s @ (Signal::SIGINT | Signal::SIGTERM | Signal::SIGQUIT)) => s,
                _ => return Vec::new(),
            };
            if let Some(r) = running.get(&generation) {
                let _ = killpg(Pid::from_raw(r.pgid), signal);
            }
            Vec::new()
        }
        Request::Kill { generation } => {
            if let Some(r) = running.get(&generation) {
                kill(r, context.container);
            }
            Vec::new()
        }
    }
}

/// A TCP-only kernel's bridges: plain socket names in the ipc directory (as the kernel sees
/// it), and ports a kernel may listen on (not privileged ones, not twice).
fn bridged_ports(
    policy: &JailPolicy,
    bridges: &[(String, u16)],
) -> Result<Vec<crate::bridge::BridgedPort>, StartError> {
    let mut seen = std::collections::HashSet::new();
    bridges
        .iter()
        .map(|(name, port)| {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(StartError::ConnectionFileName(name.clone()));
            }
            if *port < 1024 || !seen.insert(*port) {
                return Err(StartError::BridgePort(*port));
            }
            Ok(crate::bridge::BridgedPort {
                socket: policy.ipc_in_jail().join(name),
                port: *port,
            })
        })
        .collect()
}

/// Writes the connection file where the kernel reads it, owned by the kernel's user.
fn write_connection_file(context: &Context, name: &str, content: &str) -> Result<(), StartError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(StartError::ConnectionFileName(name.to_owned()));
    }
    let file_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StartError::ConnectionFile { path, source }
    };
    let path = context.template.ipc_dir.join(name);
    let _ = std::fs::remove_file(&path);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(file_error(&path))?;
        f.write_all(content.as_bytes()).map_err(file_error(&path))?;
    }
    if let Some(uid) = context.template.uid.filter(|u| *u != 0) {
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).map_err(file_error(&path))?;
    }
    Ok(())
}

/// Kills a generation: its process group (init and the kernel), its cgroup, and in a pod's
/// container everything but the agent (processes that left the group).
fn kill(running: &Running, container: bool) {
    let _ = killpg(Pid::from_raw(running.pgid), Signal::SIGKILL);
    if let Some(cg) = &running.cgroup {
        cg.kill_all();
    }
    if container && std::process::id() == 1 {
        for pid in crate::init::children_of(1) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// As a container's PID 1 the agent inherits every orphan; collects those that are not the
/// jails it supervises (whose statuses their threads collect).
fn reap_orphans(running: &HashMap<u64, Running>) {
    if std::process::id() != 1 {
        return;
    }
    for pid in crate::init::children_of(1) {
        if running.values().any(|r| r.pgid == pid) {
            continue;
        }
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}
