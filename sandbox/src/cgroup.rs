//! A cgroup per kernel generation: memory (a real limit, reported when the kernel is killed
//! for it), processes and CPU, on cgroup v1 (a hierarchy per controller, under the agent's own
//! cgroup) or v2 (`/sys/fs/cgroup/nbplat.kernels/`). The kernel never sees the cgroup
//! filesystem (its mount namespace has none), so it cannot raise its own limits.

use std::path::{Path, PathBuf};

const PREFIX: &str = "nbplat-";
const V2_PARENT: &str = "nbplat.kernels";

/// The controllers we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// Limits of one kernel (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub max_processes: u64,
    /// CPUs (1.5 = one and a half cores).
    pub cpus: f64,
}

/// Where kernels' cgroups can be made on this host.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    v2: bool,
    /// The parent directory of kernel cgroups, per controller we can write.
    parents: Vec<(Controller, PathBuf)>,
}

impl CgroupRoot {
    /// Finds writable parents for each controller; `None` when there is none at all.
    pub fn detect() -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let base = Path::new("/sys/fs/cgroup");
        let v2_controllers = std::fs::read_to_string(base.join("cgroup.controllers")).ok();
        let parents: Vec<(Controller, PathBuf)> = match v2_controllers {
            Some(available) => {
                // Unified hierarchy: one parent for all, at the top (a process-holding cgroup
                // cannot have controllers enabled for its children, so our own cannot be used).
                let parent = base.join(V2_PARENT);
                let wanted: Vec<Controller> = Controller::ALL
                    .into_iter()
                    .filter(|c| available.split_whitespace().any(|a| a == c.name()))
                    .collect();
                let enable: String = wanted.iter().map(|c| format!("+{} ", c.name())).collect();
                let _ = std::fs::write(base.join("cgroup.subtree_control"), enable.trim());
                if std::fs::create_dir_all(&parent).is_err() {
                    return None;
                }
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), enable.trim());
                let enabled = std::fs::read_to_string(parent.join("cgroup.subtree_control"))
                    .unwrap_or_default();
                wanted
                    .into_iter()
                    .filter(|c| enabled.split_whitespace().any(|e| e == c.name()))
                    .map(|c| (c, parent.clone()))
                    .collect()
            }
            None => Controller::ALL
                .into_iter()
                .filter_map(|c| {
                    let path = own_v1_path(&own, c.name())?;
                    let parent = base.join(c.name()).join(path.trim_start_matches('/'));
                    writable(&parent).then_some((c, parent))
                })
                .collect(),
        };
        if parents.is_empty() {
            return None;
        }
        Some(Self {
            v2: base.join("cgroup.controllers").exists(),
            parents,
        })
    }

    /// Whether kernels' cgroups get this controller.
    pub fn has(&self, controller: Controller) -> bool {
        self.parents.iter().any(|(c, _)| *c == controller)
    }

    /// Which cgroup version this is, for logs.
    pub fn version(&self) -> &'static str {
        if self.v2 { "v2" } else { "v1" }
    }

    /// Creates the cgroup `nbplat-<agent pid>-<name>` with `limits`, after removing empty
    /// ones left by agents that no longer run.
    pub fn create(&self, name: &str, limits: Limits) -> std::io::Result<KernelCgroup> {
        let dir_name = format!("{PREFIX}{}-{name}", std::process::id());
        let mut dirs: Vec<(Controller, PathBuf)> = Vec::new();
        for (controller, parent) in &self.parents {
            sweep(parent);
            let dir = parent.join(&dir_name);
            if !dirs.iter().any(|(_, d)| *d == dir) {
                match std::fs::create_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            dirs.push((*controller, dir));
        }
        let cgroup = KernelCgroup { v2: self.v2, dirs };
        cgroup.apply(limits)?;
        Ok(cgroup)
    }
}

fn own_v1_path(own: &str, controller: &str) -> Option<String> {
    own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!("{PREFIX}probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// One kernel generation's cgroup (a directory per controller on v1). Removed on drop, once
/// its processes are gone.
#[derive(Debug)]
pub struct KernelCgroup {
    v2: bool,
    dirs: Vec<(Controller, PathBuf)>,
}

impl KernelCgroup {
    fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    fn apply(&self, limits: Limits) -> std::io::Result<()> {
        if let Some(dir) = self.dir(Controller::Memory)
            && limits.memory_bytes > 0
        {
            if self.v2 {
                std::fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())?;
                // No swap: a kernel over its limit is stopped, not slowed to a crawl.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            } else {
                std::fs::write(
                    dir.join("memory.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                )?;
                let _ = std::fs::write(
                    dir.join("memory.memsw.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                );
            }
        }
        if let Some(dir) = self.dir(Controller::Pids)
            && limits.max_processes > 0
        {
            std::fs::write(dir.join("pids.max"), limits.max_processes.to_string())?;
        }
        if let Some(dir) = self.dir(Controller::Cpu)
            && limits.cpus > 0.0
        {
            let period: u64 = 100_000;
            let quota = ((limits.cpus * period as f64).round() as u64).max(1000);
            if self.v2 {
                std::fs::write(dir.join("cpu.max"), format!("{quota} {period}"))?;
            } else {
                std::fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` (and so everything it starts from now on) into the cgroup.
    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        let mut done: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if !done.contains(&dir.as_path()) {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
                done.push(dir);
            }
        }
        Ok(())
    }

    /// How many times the kernel's processes were killed for memory.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dir(Controller::Memory) else {
            return 0;
        };
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        let Some((_, dir)) = self.dirs.first() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|list| list.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the cgroup until it is empty (a fork bomb may still be forking
    /// while we kill). Bounded: gives up after about a second.
    pub fn kill_all(&self) {
        if self.v2
            && let Some((_, dir)) = self.dirs.first()
            && std::fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for _ in 0..100 {
            let pids = self.pids();
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
        tracing::warn!(cgroup = ?self.dirs.first(), "processes survived SIGKILL in the kernel's cgroup");
    }
}

impl Drop for KernelCgroup {
    fn drop(&mut self) {
        // Processes killed a moment ago may still be exiting; a later sweep removes what cannot
        // be removed now.
        for (_, dir) in &self.dirs {
            for _ in 0..20 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Removes `nbplat-<pid>-*` cgroups of agents that no longer run (rmdir only succeeds on an
/// empty cgroup, which is the check we want).
fn sweep(parent: &Path) {
    for (path, _) in crate::stale::of_dead_processes(parent, PREFIX) {
        let _ = std::fs::remove_dir(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_of_a_v1_controller() {
        let own = "12:pids:/a/b\n4:memory:/process_api/x\n1:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            own_v1_path(own, "memory").as_deref(),
            Some("/process_api/x")
        );
        assert_eq!(own_v1_path(own, "cpu").as_deref(), Some("/"));
        assert_eq!(own_v1_path(own, "pids").as_deref(), Some("/a/b"));
        assert_eq!(own_v1_path(own, "blkio"), None);
    }
}
