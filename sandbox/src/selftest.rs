//! The self-test: a program run in a jail exactly as a kernel would be, that looks around and
//! reports what it can and cannot do. The agent runs it once at start, and turns what init
//! applied plus what the self-test observed into the [`Report`] Middleman logs and enforces.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::init::Applied;
use crate::layers::{Layer, Report};
use crate::policy::JailPolicy;

/// The marker before the self-test's one line on stderr.
pub const MARKER: &str = "NBPLAT-SELFTEST ";

/// What the self-test saw from inside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observations {
    pub uid: u32,
    pub capabilities: bool,
    pub no_new_privs: bool,
    pub seccomp: bool,
    /// `unshare(CLONE_NEWUSER)` was refused.
    pub user_namespace_refused: bool,
    pub pid: i32,
    /// Processes visible in `/proc`.
    pub visible_processes: usize,
    /// Network interfaces visible.
    pub interfaces: Vec<String>,
    /// A TCP listener on loopback was refused.
    pub tcp_refused: bool,
    /// Creating a file at the filesystem's root failed.
    pub root_read_only: bool,
    /// Creating a regular file in the ipc directory failed.
    pub ipc_files_refused: bool,
    /// Binding a unix socket in the ipc directory worked.
    pub ipc_sockets_allowed: bool,
    pub home_writable: bool,
    pub tmp_writable: bool,
    /// The cgroup filesystem is not visible.
    pub cgroup_hidden: bool,
    /// Bytes of the filesystem holding the home directory.
    pub home_bytes: u64,
    /// Could signal a process outside its Landlock domain (the agent, when visible).
    pub outside_signal_refused: Option<bool>,
}

/// Runs the self-test; arguments: the ipc directory and home as the kernel sees them, and the
/// pid of a process outside the domain to try signalling (0: none visible).
pub fn main(args: &[String]) -> i32 {
    let ipc = PathBuf::from(args.first().cloned().unwrap_or_default());
    let home = PathBuf::from(args.get(1).cloned().unwrap_or_default());
    let outside: i32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
    let o = observe(&ipc, &home, outside);
    eprintln!("{MARKER}{}", serde_json::to_string(&o).unwrap_or_default());
    0
}

fn status_field(name: &str) -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        })
}

fn observe(ipc: &Path, home: &Path, outside: i32) -> Observations {
    let caps_zero = ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"]
        .iter()
        .all(|f| status_field(f).is_some_and(|v| v.chars().all(|c| c == '0')));
    let probe_file = |dir: &Path| {
        let p = dir.join(format!(".nbplat-selftest-{}", std::process::id()));
        let ok = std::fs::write(&p, b"x").is_ok();
        let _ = std::fs::remove_file(&p);
        ok
    };
    let socket_path = ipc.join(format!("s{}", std::process::id()));
    let ipc_sockets_allowed = std::os::unix::net::UnixListener::bind(&socket_path).is_ok();
    let _ = std::fs::remove_file(&socket_path);
    let interfaces = std::fs::read_to_string("/proc/net/dev")
        .map(|s| {
            s.lines()
                .skip(2)
                .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let visible_processes = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0);
    let home_bytes = nix::sys::statvfs::statvfs(home)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    Observations {
        uid: nix::unistd::getuid().as_raw(),
        capabilities: !caps_zero,
        no_new_privs: status_field("NoNewPrivs:").as_deref() == Some("1"),
        seccomp: status_field("Seccomp:").as_deref() == Some("2"),
        user_namespace_refused: nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err(),
        pid: std::process::id() as i32,
        visible_processes,
        interfaces,
        tcp_refused: std::net::TcpListener::bind("127.0.0.1:0").is_err(),
        root_read_only: !probe_file(Path::new("/")),
        ipc_files_refused: !probe_file(ipc),
        ipc_sockets_allowed,
        home_writable: probe_file(home),
        tmp_writable: probe_file(Path::new("/tmp")),
        cgroup_hidden: !Path::new("/sys/fs/cgroup").exists(),
        home_bytes,
        outside_signal_refused: (outside > 0)
            .then(|| nix::sys::signal::kill(nix::unistd::Pid::from_raw(outside), None).is_err()),
    }
}

/// Finds the self-test's line in a jail's stderr.
pub fn parse(stderr: &str) -> Option<Observations> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(MARKER))
        .and_then(|json| serde_json::from_str(json).ok())
}

/// What the agent knows besides the jail: the cgroup and workspace it set up, and whether the
/// platform (a pod) isolates the kernel's container.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub memory_limit: Option<String>,
    pub process_limit: Option<String>,
    pub cpu_limit: Option<String>,
    /// Whether the workspace has a size limit, and how (or why not).
    pub workspace_quota: (bool, String),
    /// Set when a pod's container gives the kernel its own filesystem, processes and IPC.
    pub container: bool,
}

/// Builds the report from what init applied, what the self-test saw, and the host facts.
pub fn report(
    policy: &JailPolicy,
    applied: &Applied,
    seen: Option<&Observations>,
    host: &HostFacts,
) -> Report {
    let mut r = Report::default();
    let Some(seen) = seen else {
        for layer in Layer::ALL {
            r.set(layer, false, "the self-test did not run in the jail");
        }
        return r;
    };
    let own_user = seen.uid != 0 && policy.uid.is_some_and(|u| u == seen.uid);
    r.set(
        Layer::OwnUser,
        own_user || (seen.uid != 0 && host.container),
        if seen.uid == 0 {
            "the kernel runs as uid 0 (without privileges)".to_owned()
        } else {
            format!("uid {}", seen.uid)
        },
    );
    r.set(
        Layer::NoPrivileges,
        !seen.capabilities && seen.no_new_privs,
        format!(
            "capabilities {}, no_new_privs {}",
            if seen.capabilities { "held" } else { "none" },
            if seen.no_new_privs { "set" } else { "unset" }
        ),
    );
    let jail = applied.namespaces;
    r.set(
        Layer::Filesystem,
        (jail && seen.root_read_only && seen.ipc_files_refused) || host.container,
        if jail {
            format!(
                "own mount namespace, read-only root: {}",
                seen.root_read_only
            )
        } else if host.container {
            "the pod's container".to_owned()
        } else {
            "shares the host's filesystem view".to_owned()
        },
    );
    r.set(
        Layer::Processes,
        (jail && seen.pid <= 3) || host.container,
        if jail {
            format!(
                "own PID namespace ({} processes visible)",
                seen.visible_processes
            )
        } else if host.container {
            "the pod's container".to_owned()
        } else {
            "shares the host's processes".to_owned()
        },
    );
    r.set(
        Layer::IpcUts,
        jail || host.container,
        if jail {
            "own IPC and UTS namespaces"
        } else if host.container {
            "the pod"
        } else {
            "shared with the host"
        },
    );
    let no_interfaces = seen.interfaces.iter().all(|i| i == "lo");
    r.set(
        Layer::Network,
        seen.tcp_refused && (no_interfaces || applied.landlock_complete),
        if jail && no_interfaces {
            "own network namespace without interfaces".to_owned()
        } else if seen.tcp_refused {
            "TCP refused by Landlock".to_owned()
        } else {
            "TCP works".to_owned()
        },
    );
    r.set(
        Layer::Landlock,
        applied.landlock && seen.ipc_files_refused,
        if applied.landlock {
            "file access limited"
        } else {
            "not supported by this kernel"
        },
    );
    let scopes = applied.landlock_complete && seen.outside_signal_refused != Some(false);
    r.set(
        Layer::Scopes,
        scopes,
        if scopes {
            "signals and abstract sockets stay inside"
        } else {
            "this kernel's Landlock has no scopes (ABI 6)"
        },
    );
    r.set(
        Layer::Seccomp,
        applied.seccomp && seen.seccomp && seen.user_namespace_refused,
        if seen.seccomp {
            "filter installed"
        } else {
            "no filter"
        },
    );
    let limit = |v: &Option<String>| match v {
        Some(d) => (true, d.clone()),
        None => (false, "no controller".to_owned()),
    };
    let (holds, detail) = limit(&host.memory_limit);
    r.set(Layer::Memory, holds, detail);
    let (holds, detail) = limit(&host.process_limit);
    r.set(Layer::ProcessCount, holds, detail);
    let (holds, detail) = limit(&host.cpu_limit);
    r.set(Layer::Cpu, holds, detail);
    r.set(
        Layer::CgroupLocked,
        seen.cgroup_hidden,
        if seen.cgroup_hidden {
            "no cgroup filesystem in view"
        } else {
            "the cgroup filesystem is visible"
        },
    );
    r.set(
        Layer::WorkspaceQuota,
        host.workspace_quota.0,
        host.workspace_quota.1.clone(),
    );
    r
}
