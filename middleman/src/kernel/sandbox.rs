//! OS limits for the kernel process, applied with standard tools so that no `unsafe` is needed:
//! `unshare --net` (a new, empty network namespace: not even loopback), `setpriv` (an
//! unprivileged uid and gid, no supplementary groups) and `prlimit` (address space, processes,
//! open files). Each is used only where the host allows it, and the log says what is and is not
//! enforced.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct SandboxRequest {
    pub memory_mib: u64,
    pub max_processes: u64,
    pub max_open_files: u64,
    pub isolate_network: bool,
    pub uid: Option<u32>,
}

/// What will actually be applied.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Arguments put before the kernel's own argv.
    pub prefix: Vec<String>,
    /// Owner to give the runtime directory and workspace (when the kernel runs as another user).
    pub owner: Option<u32>,
    /// Put each kernel in a pids cgroup under this root with this `pids.max`.
    pub pids_cgroup: Option<(PathBuf, u64)>,
}

fn works(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a user other than the owner can reach and run `path` (every ancestor searchable).
pub(crate) fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let mut dir: Option<&Path> = real.parent();
    while let Some(d) = dir {
        match std::fs::metadata(d) {
            Ok(m) if m.permissions().mode() & 0o001 != 0 => {}
            _ => return false,
        }
        dir = d.parent();
    }
    std::fs::metadata(&real).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005)
}

impl Sandbox {
    /// Works out the wrapper for `kernel_argv0`, logging every limit that cannot be enforced.
    pub fn resolve(req: &SandboxRequest, kernel_argv0: &str, kernelspec_dir: &Path) -> Self {
        let mut prefix = Vec::new();
        let mut owner = None;
        if req.isolate_network {
            if works("unshare", &["--net", "--", "true"]) {
                prefix.extend(["unshare", "--net", "--"].map(String::from));
                tracing::info!("kernel network: isolated (new network namespace)");
            } else {
                tracing::warn!(
                    "kernel network: NOT isolated: this host does not allow new network namespaces (unshare --net failed)"
                );
            }
        }
        if let Some(uid) = req.uid {
            let program = which(kernel_argv0);
            let reachable = program.as_deref().is_some_and(reachable_by_others)
                && reachable_by_others(&kernelspec_dir.join("kernel.json"));
            if !reachable {
                tracing::warn!(
                    uid,
                    program = ?program,
                    "kernel user: NOT dropped, the kernel runs as this process's user: its interpreter or kernelspec is not reachable by other users (install it outside a private home directory); the process limit does not bind root"
                );
            } else if works(
                "setpriv",
                &[
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    "true",
                ],
            ) {
                prefix.extend([
                    "setpriv".to_string(),
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".into(),
                    "--".into(),
                ]);
                owner = Some(uid);
                tracing::info!(uid, "kernel user: unprivileged uid");
            } else {
                tracing::warn!(
                    uid,
                    "kernel user: NOT dropped: setpriv is not permitted here"
                );
            }
        }
        let root_kernel = owner.is_none() && nix::unistd::geteuid().is_root();
        if root_kernel {
            // A root kernel could raise its own hard limits back (CAP_SYS_RESOURCE) and read any
            // file: run it as uid 0 with no capabilities at all, so the limits below bind.
            let drop_caps = [
                "--no-new-privs",
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--",
            ];
            if works("setpriv", &[&drop_caps[..], &["true"]].concat()) {
                prefix.push("setpriv".into());
                prefix.extend(drop_caps.map(String::from));
                tracing::info!("kernel capabilities: all dropped (uid 0 without privileges)");
            } else {
                tracing::warn!(
                    "kernel capabilities: NOT dropped: the kernel runs as root and can lift its own limits"
                );
            }
        }
        let mut limits = Vec::new();
        if req.memory_mib > 0 {
            limits.push(format!(
                "--as={}",
                req.memory_mib.saturating_mul(1024 * 1024)
            ));
        }
        let mut pids_cgroup = None;
        if req.max_processes > 0 {
            match super::cgroup::pids_root() {
                Some(root)
                    if super::cgroup::PidsCgroup::create(&root, 0, req.max_processes).is_ok() =>
                {
                    tracing::info!(max_processes = req.max_processes, root = %root.display(), "kernel process limit: pids cgroup");
                    pids_cgroup = Some((root, req.max_processes));
                }
                _ if !root_kernel => limits.push(format!("--nproc={}", req.max_processes)),
                _ => tracing::warn!(
                    max_processes = req.max_processes,
                    "kernel process limit: NOT applied: no writable pids cgroup, and RLIMIT_NPROC does not bind a kernel running as uid 0"
                ),
            }
            if pids_cgroup.is_some() && !root_kernel {
                // Belt and braces: the per-uid limit too.
                limits.push(format!("--nproc={}", req.max_processes));
            }
        }
        if req.max_open_files > 0 {
            limits.push(format!("--nofile={}", req.max_open_files));
        }
        if !limits.is_empty() {
            if works("prlimit", &["--nofile=64", "--", "true"]) {
                prefix.push("prlimit".into());
                prefix.extend(limits);
                prefix.push("--".into());
                tracing::info!(
                    memory_mib = req.memory_mib,
                    max_processes = req.max_processes,
                    max_open_files = req.max_open_files,
                    "kernel limits applied"
                );
            } else {
                tracing::warn!("kernel limits: NOT applied: prlimit is not available");
            }
        }
        Self {
            prefix,
            owner,
            pids_cgroup,
        }
    }
}

/// Resolves a program name on PATH (kernelspecs usually give an absolute path already).
fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() {
        return Some(p.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|c| c.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_directories_are_not_reachable() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = std::env::temp_dir().join(format!("mm-sbx-{}", uuid::Uuid::new_v4().simple()));
        let private = root.join("private");
        std::fs::create_dir_all(&private).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = private.join("python");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable_by_others(&file));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Every ancestor up to / must be searchable too; the temp dir normally is.
        assert_eq!(reachable_by_others(&file), reachable_by_others(&root));
        std::fs::remove_dir_all(root).unwrap();
    }
}
