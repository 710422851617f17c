//! A pids cgroup per kernel: `pids.max` caps every process and thread the kernel and its
//! children create, whatever their uid (so a fork bomb fails inside the cell instead of taking
//! the host down). cgroup v2 (`pids` in the unified hierarchy) or v1 (`/sys/fs/cgroup/pids`).

use std::path::{Path, PathBuf};

const PREFIX: &str = "middleman-";

/// Where new pids cgroups can be made, if anywhere.
pub(crate) fn pids_root() -> Option<PathBuf> {
    let v1 = Path::new("/sys/fs/cgroup/pids");
    if v1.join("cgroup.procs").exists() {
        return Some(v1.to_owned());
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
    controllers
        .split_whitespace()
        .any(|c| c == "pids")
        .then(|| v2.to_owned())
}

/// One kernel generation's cgroup; removed (after its processes are gone) on drop.
#[derive(Debug)]
pub(crate) struct PidsCgroup {
    path: PathBuf,
}

impl PidsCgroup {
    /// Creates `<root>/middleman-<pid>-<generation>` with `pids.max = max`, after removing
    /// stale ones left by Middlemen that no longer run.
    pub(crate) fn create(root: &Path, generation: u64, max: u64) -> std::io::Result<Self> {
        sweep(root);
        let path = root.join(format!("{PREFIX}{}-{generation}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::fs::write(path.join("pids.max"), max.to_string())?;
        Ok(Self { path })
    }

    /// Moves process `pid` (and so everything it forks from now on) into the cgroup.
    pub(crate) fn add(&self, pid: i32) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }
}

impl PidsCgroup {
    /// SIGKILLs every process in the cgroup, repeatedly, until it is empty (a fork bomb may
    /// still be forking while we kill). Bounded: gives up after a second.
    pub(crate) fn kill_all(&self) {
        let procs = self.path.join("cgroup.procs");
        for _ in 0..100 {
            let Ok(list) = std::fs::read_to_string(&procs) else {
                return;
            };
            let pids: Vec<i32> = list.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!(cgroup = %self.path.display(), "processes survived SIGKILL in the kernel's cgroup");
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Processes killed a moment ago may still be exiting; a later sweep removes what
        // cannot be removed now.
        for _ in 0..20 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            // rmdir of a cgroup only succeeds once it is empty; that is the check we want.
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}
