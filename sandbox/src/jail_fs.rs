//! The jail's filesystem, built by its init process in a fresh mount namespace: a small
//! read-only tmpfs root with the system directories, the kernel's environment and a few `/etc`
//! files bound read-only; a private `/tmp` and `/dev/shm` (tmpfs with a size); a minimal `/dev` (with pseudo-terminals of its own);
//! a new read-only `/proc` of the jail's own PID namespace; the workspace at `/home/kernel`
//! and the ipc directory at `/run/nbplat/ipc`. No `/sys`, no cgroup filesystem, nothing else of the
//! host. Then `pivot_root` into it and detach the host's tree.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::policy::{ETC_ENTRIES, JAIL_HOME, JAIL_IPC, JailPolicy, SYSTEM_DIRS, outermost};

/// A failed step, with the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{step} {path}: {reason}")]
pub struct JailFsError {
    step: &'static str,
    path: PathBuf,
    reason: String,
}

fn fail<E: std::fmt::Display>(step: &'static str, path: &Path) -> impl FnOnce(E) -> JailFsError {
    let path = path.to_owned();
    move |e| JailFsError {
        step,
        path,
        reason: e.to_string(),
    }
}

const NONE: Option<&str> = None;

/// Device nodes the jail gets (bound from the host's).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Files of `/proc` hidden behind `/dev/null` (kernel memory, keys, timers, the sysrq trigger).
const PROC_MASKED: [&str; 6] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "sysrq-trigger",
    "kallsyms",
];

/// Builds the jail under `policy.root_dir` and moves into it. Must run in a new mount
/// namespace (and a new PID namespace, for `/proc`), as root.
pub fn enter(policy: &JailPolicy) -> Result<(), JailFsError> {
    let root = &policy.root_dir;
    // Nothing we mount may propagate back to the host.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(fail("make private", Path::new("/")))?;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=16m,mode=0755"),
    )
    .map_err(fail("mount root tmpfs on", root))?;

    // The private /tmp and /dev first: what is bound below may live under /tmp on the host (a
    // checkout there, with the agent's own binary for the self-test), and a later tmpfs would
    // hide it.
    dev(root, policy.tmp_bytes)?;
    let tmp = root.join("tmp");
    mkdir(&tmp)?;
    tmpfs(&tmp, policy.tmp_bytes, "1777")?;
    for dir in SYSTEM_DIRS {
        replicate(root, Path::new(dir))?;
    }
    for path in outermost(policy.read_only.clone()) {
        bind(root, &path, &path, true)?;
    }
    if let Some(file) = &policy.extra_file {
        bind(root, file, file, true)?;
    }
    etc(root, policy)?;
    proc(root)?;
    bind_rw(root, &policy.workspace, Path::new(JAIL_HOME), true)?;
    bind_rw(root, &policy.ipc_dir, Path::new(JAIL_IPC), false)?;
    for dir in ["var", "var/tmp"] {
        mkdir(&root.join(dir))?;
    }

    // The root itself becomes read-only; only the mounts above stay writable.
    mount(
        NONE,
        root,
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        NONE,
    )
    .map_err(fail("remount read-only", root))?;

    // pivot_root(".", "."): the old root ends up stacked on the new one and is detached at
    // once, so no directory for it is needed in the read-only root.
    nix::unistd::chdir(root).map_err(fail("chdir", root))?;
    nix::unistd::pivot_root(".", ".").map_err(fail("pivot_root", root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detach the host tree", root))?;
    nix::unistd::chdir("/").map_err(fail("chdir", Path::new("/")))?;
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), JailFsError> {
    std::fs::create_dir_all(path).map_err(fail("mkdir", path))
}

fn tmpfs(at: &Path, bytes: u64, mode: &str) -> Result<(), JailFsError> {
    let size = if bytes == 0 { 64 << 20 } else { bytes };
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={size},mode={mode}").as_str()),
    )
    .map_err(fail("mount tmpfs on", at))
}

/// `root/<dir>` becomes what `dir` is on the host: the same symlink, or a read-only bind.
fn replicate(root: &Path, dir: &Path) -> Result<(), JailFsError> {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return Ok(());
    };
    let inside = under(root, dir);
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(dir).map_err(fail("readlink", dir))?;
        std::os::unix::fs::symlink(&target, &inside).map_err(fail("symlink", &inside))
    } else {
        bind(root, dir, dir, true)
    }
}

/// `inside` as a path under `root`.
fn under(root: &Path, inside: &Path) -> PathBuf {
    root.join(inside.strip_prefix("/").unwrap_or(inside))
}

/// Binds host `source` at `target` (a path inside the jail), read-only when asked, never with
/// set-uid or devices.
fn bind(root: &Path, source: &Path, target: &Path, read_only: bool) -> Result<(), JailFsError> {
    let meta = std::fs::metadata(source).map_err(fail("stat", source))?;
    let at = under(root, target);
    if meta.is_dir() {
        mkdir(&at)?;
    } else {
        if let Some(parent) = at.parent() {
            mkdir(parent)?;
        }
        std::fs::write(&at, b"").map_err(fail("create mount point", &at))?;
    }
    mount(Some(source), &at, NONE, MsFlags::MS_BIND, NONE).map_err(fail("bind", source))?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(NONE, &at, NONE, flags, NONE).map_err(fail("remount", &at))
}

fn bind_rw(root: &Path, source: &Path, target: &Path, exec: bool) -> Result<(), JailFsError> {
    bind(root, source, target, false)?;
    if !exec {
        let at = under(root, target);
        mount(
            NONE,
            &at,
            NONE,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            NONE,
        )
        .map_err(fail("remount noexec", &at))?;
    }
    Ok(())
}

/// `/etc`: the allow-listed host entries read-only, and the jail's own identity files.
fn etc(root: &Path, policy: &JailPolicy) -> Result<(), JailFsError> {
    let etc = root.join("etc");
    mkdir(&etc)?;
    for name in ETC_ENTRIES {
        let host = Path::new("/etc").join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).map_err(fail("readlink", &host))?;
            let at = etc.join(name);
            std::os::unix::fs::symlink(&target, &at).map_err(fail("symlink", &at))?;
        } else {
            bind(root, &host, &host, true)?;
        }
    }
    let (uid, name) = match policy.uid {
        Some(uid) if uid != 0 => (uid, "kernel"),
        _ => (0, "root"),
    };
    let passwd = if uid == 0 {
        format!("root:x:0:0:kernel:{JAIL_HOME}:/usr/sbin/nologin\n")
    } else {
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n{name}:x:{uid}:{uid}:kernel:{JAIL_HOME}:/usr/sbin/nologin\n"
        )
    };
    let group = if uid == 0 {
        "root:x:0:\n".to_owned()
    } else {
        format!("root:x:0:\n{name}:x:{uid}:\n")
    };
    let files = [
        ("passwd", passwd),
        ("group", group),
        (
            "hosts",
            format!(
                "127.0.0.1 localhost {0}\n::1 localhost {0}\n",
                policy.hostname
            ),
        ),
        ("hostname", format!("{}\n", policy.hostname)),
        ("resolv.conf", String::new()),
    ];
    for (name, content) in files {
        let at = etc.join(name);
        std::fs::write(&at, content).map_err(fail("write", &at))?;
    }
    Ok(())
}

/// `/dev`: a few device nodes, the usual links, and a private `/dev/shm`.
fn dev(root: &Path, shm_bytes: u64) -> Result<(), JailFsError> {
    let dev = root.join("dev");
    mkdir(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(fail("mount tmpfs on", &dev))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let at = dev.join(name);
        std::fs::write(&at, b"").map_err(fail("create mount point", &at))?;
        mount(Some(&host), &at, NONE, MsFlags::MS_BIND, NONE).map_err(fail("bind", &host))?;
        mount(
            NONE,
            &at,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            NONE,
        )
        .map_err(fail("remount", &at))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = dev.join(name);
        std::os::unix::fs::symlink(target, &at).map_err(fail("symlink", &at))?;
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    tmpfs(&shm, shm_bytes, "1777")?;
    // Pseudo-terminals of its own (a new devpts instance: the host's terminals stay unseen),
    // for what runs commands through one: IPython's `!cmd` and `%pip`, `pexpect`.
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,max=64"),
    )
    .map_err(fail("mount devpts on", &pts))?;
    let ptmx = dev.join("ptmx");
    std::os::unix::fs::symlink("pts/ptmx", &ptmx).map_err(fail("symlink", &ptmx))?;
    mount(
        NONE,
        &dev,
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("size=64k,mode=0755"),
    )
    .map_err(fail("remount read-only", &dev))
}

/// A new `/proc` for the jail's PID namespace, read-only, with the revealing files masked.
fn proc(root: &Path) -> Result<(), JailFsError> {
    let proc = root.join("proc");
    mkdir(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        NONE,
    )
    .map_err(fail("mount proc on", &proc))?;
    for name in PROC_MASKED {
        let at = proc.join(name);
        if at.exists() {
            mount(Some("/dev/null"), &at, NONE, MsFlags::MS_BIND, NONE)
                .map_err(fail("mask", &at))?;
        }
    }
    Ok(())
}
