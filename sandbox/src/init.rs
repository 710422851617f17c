//! The jail's init: the process the agent starts for each kernel generation. It reads the
//! [`JailPolicy`] on standard input, builds the jail (new mount, network, IPC, UTS and cgroup
//! namespaces; it is already PID 1 of a new PID namespace), gives up everything it does not
//! need, restricts itself with Landlock and seccomp, starts the kernel under its own user, and
//! waits. What happens is reported as JSON lines on standard output (a pipe only the agent
//! holds): [`InitReport::Started`] with what was applied, then [`InitReport::Exited`].
//!
//! The kernel inherits every restriction from init, so init's own domain is the kernel's: init
//! keeps only `CAP_SETUID`/`CAP_SETGID` (to start the kernel as its user) and is not dumpable,
//! so a kernel running as uid 0 still cannot read or trace it. When init ends, the PID
//! namespace ends and every process the kernel left behind is killed. When the agent ends
//! (standard input closes), init ends.
//!
//! For a kernel that speaks TCP only, init also bridges its ports to sockets in the ipc
//! directory ([`crate::bridge`]), on threads that share its restrictions.
//!
//! Without namespaces (a container in a pod), init is a subreaper: processes the kernel leaves
//! behind become its children, and it kills them when the kernel ends.

use std::io::{BufRead as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use caps::Capability;
use nix::sched::CloneFlags;
use nix::sys::resource::Resource;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::policy::JailPolicy;

/// What init applied, as it reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub namespaces: bool,
    pub uid: u32,
    pub capabilities_dropped: bool,
    pub no_new_privs: bool,
    pub landlock: bool,
    pub landlock_complete: bool,
    pub seccomp: bool,
    /// Steps that failed, with why (the kernel still starts; the report says what holds).
    pub failures: Vec<String>,
}

/// One line init writes to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "init", rename_all = "snake_case")]
pub enum InitReport {
    Started {
        applied: Applied,
    },
    Failed {
        reason: String,
    },
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

fn say(report: &InitReport) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&crate::agent::protocol::encode(report));
    let _ = out.flush();
}

/// Runs init; returns the process's exit code.
pub fn main() -> i32 {
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    let policy: JailPolicy = match stdin
        .read_line(&mut line)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(reason) => {
            say(&InitReport::Failed {
                reason: format!("bad policy: {reason}"),
            });
            return 2;
        }
    };
    drop(stdin);
    match run(&policy) {
        Ok(code) => code,
        Err(error) => {
            say(&InitReport::Failed {
                reason: error.to_string(),
            });
            1
        }
    }
}

/// Why a jail could not be set up or its kernel started.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("new namespaces: {0}")]
    Namespaces(#[source] nix::Error),
    #[error("host name: {0}")]
    Hostname(#[source] nix::Error),
    #[error("jail filesystem: {0}")]
    Filesystem(#[from] crate::jail_fs::JailFsError),
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error("empty command line")]
    EmptyArgv,
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waitpid: {0}")]
    Wait(#[source] nix::Error),
}

fn run(policy: &JailPolicy) -> Result<i32, InitError> {
    let mut applied = Applied {
        namespaces: policy.namespaces,
        ..Applied::default()
    };
    let mut failures: Vec<String> = Vec::new();
    let mut failed = |what: &str, e: &dyn std::fmt::Display| {
        failures.push(format!("{what}: {e}"));
    };
    if let Err(e) = crate::privileges::not_dumpable() {
        failed("not dumpable", &e);
    }
    if policy.namespaces {
        nix::sched::unshare(
            CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWCGROUP,
        )
        .map_err(InitError::Namespaces)?;
        nix::unistd::sethostname(&policy.hostname).map_err(InitError::Hostname)?;
        crate::jail_fs::enter(policy)?;
        if !policy.bridges.is_empty() {
            crate::bridge::loopback_up()?;
        }
    } else if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        failed("subreaper", &e);
    }
    for (resource, value) in [
        (Resource::RLIMIT_NOFILE, policy.max_open_files),
        (Resource::RLIMIT_NPROC, policy.max_processes),
    ] {
        if let Err(e) = crate::privileges::limit(resource, value) {
            failed("limit", &e);
        }
    }
    if let Err(e) = crate::privileges::no_core_dumps() {
        failed("core dumps", &e);
    }
    let current = nix::unistd::getuid().as_raw();
    let target = policy.uid.unwrap_or(current);
    applied.uid = target;
    let switch = target != current;
    // A TCP-only kernel's sockets, made while init may still write the kernel's ipc directory.
    let bridges = crate::bridge::listen(&policy.bridges, switch.then_some(target), policy.umask)?;
    let keep: &[Capability] = if switch {
        &[Capability::CAP_SETUID, Capability::CAP_SETGID]
    } else {
        &[]
    };
    match crate::privileges::drop_capabilities(keep) {
        Ok(()) => applied.capabilities_dropped = true,
        Err(e) => failed("capabilities", &e),
    }
    match crate::privileges::no_new_privileges() {
        Ok(()) => applied.no_new_privs = true,
        Err(e) => failed("no_new_privs", &e),
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(policy.umask));
    match crate::rules::restrict(policy) {
        Ok(outcome) => {
            applied.landlock = outcome.filesystem;
            applied.landlock_complete = outcome.complete;
        }
        Err(e) => failed("landlock", &e),
    }
    match crate::seccomp::Filter::build().and_then(|f| f.apply()) {
        Ok(()) => applied.seccomp = true,
        Err(e) => failed("seccomp", &e),
    }
    // The agent holds our standard input open for the kernel's life; when it closes, the
    // agent is gone and so must we be (with the namespace, the kernel goes too). Started after
    // the restrictions, so the thread has them too.
    let lifeline = std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(|| {
            let mut sink = [0u8; 64];
            while std::io::Read::read(&mut std::io::stdin(), &mut sink).is_ok_and(|n| n > 0) {}
            end_all_children();
            exit_now(137);
        });
    if let Err(e) = lifeline {
        failed("lifeline", &e);
    }
    crate::bridge::serve(bridges);
    applied.failures = failures;

    let Some((program, args)) = policy.argv.split_first() else {
        return Err(InitError::EmptyArgv);
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(policy.env.iter().cloned())
        .current_dir(policy.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if switch {
        command.uid(target).gid(target);
    }
    let child = command.spawn().map_err(|source| InitError::Spawn {
        program: program.clone(),
        source,
    })?;
    // A pid always fits an i32 (pid_max is at most 2^22).
    let kernel = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // Signals meant for the kernel's process group (interrupts) must not end init. Blocked
    // only now: a child inherits its parent's mask, and the kernel must start without one. (As
    // PID 1 of its namespace init ignores them anyway; without namespaces it is not PID 1.)
    let mut blocked = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        blocked.add(s);
    }
    if let Err(e) = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), None) {
        applied.failures.push(format!("sigprocmask: {e}"));
    }
    // After the spawn, the kernel has them and init does not need them.
    let _ = crate::privileges::drop_capabilities(&[]);
    say(&InitReport::Started { applied });

    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == kernel => {
                return Ok(finish(Some(code), None));
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == kernel => {
                return Ok(finish(None, Some(signal as i32)));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(InitError::Wait(e)),
        }
    }
}

/// Reports the kernel's end, and (without a PID namespace to do it) ends what it left behind.
fn finish(code: Option<i32>, signal: Option<i32>) -> i32 {
    end_all_children();
    say(&InitReport::Exited { code, signal });
    0
}

/// SIGKILLs every child of this process (orphans of the kernel reparented to us) and reaps them.
/// As PID 1 of the jail's namespace, exiting does this anyway.
fn end_all_children() {
    if std::process::id() == 1 {
        return;
    }
    for _ in 0..50 {
        let children = children_of(std::process::id());
        if children.is_empty() {
            return;
        }
        for pid in children {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        while let Ok(status) = waitpid(
            Pid::from_raw(-1),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Pids whose parent is `parent`, from `/proc`.
pub(crate) fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces and parentheses; fields follow the last ')'.
                    let rest = s.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[expect(
    clippy::exit,
    reason = "the lifeline thread ends init at once when the agent is gone"
)]
fn exit_now(code: i32) -> ! {
    std::process::exit(code)
}
