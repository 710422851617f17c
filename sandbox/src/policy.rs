//! What one jail is made of: the policy the agent hands to the jail's init process on its
//! standard input. Plain data; the agent builds it from its settings and the start request.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the workspace appears inside the jail (and the kernel's home).
pub const JAIL_HOME: &str = "/home/kernel";

/// Where the ipc directory appears inside the jail. Not under `/tmp`: Landlock rights add up
/// along a path, and the ipc directory must not inherit `/tmp`'s right to write files.
pub const JAIL_IPC: &str = "/run/nbplat/ipc";

/// Directories of the host's system that every jail sees read-only (those that exist; a
/// symlink, as `/bin` on merged-usr systems, is recreated as the same symlink).
pub const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Entries of the host's `/etc` a kernel may need (libraries, time zones, certificates,
/// fonts, MIME types). Everything else there (shadow files, keys, service configuration) stays
/// out of view; `passwd`, `group`, `hosts` and `hostname` are written for the jail.
pub const ETC_ENTRIES: [&str; 24] = [
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "mime.types",
    "fonts",
    "alternatives",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "locale.alias",
    "locale.conf",
    "matplotlibrc",
    "python3",
    "python3.11",
];

/// The policy of one jail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailPolicy {
    /// The kernel's command line (paths as seen inside the jail, which are the host's paths).
    pub argv: Vec<String>,
    /// The kernel's whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Run the kernel as this uid and gid; `None`: keep the current user (uid 0 without
    /// capabilities when the agent is root, the container's user in a pod).
    pub uid: Option<u32>,
    /// Build the jail's own namespaces and filesystem. `false` where the platform already
    /// isolates the kernel (a container of its own in a Kubernetes pod) and the agent has no
    /// privileges to do more.
    pub namespaces: bool,
    /// An empty directory the jail's root is mounted on (namespaces only).
    pub root_dir: PathBuf,
    /// Host paths the kernel may read and execute (system directories, its environment).
    pub read_only: Vec<PathBuf>,
    /// The directory of the connection file and the ipc sockets: the kernel may read files and
    /// create sockets there, nothing else.
    pub ipc_dir: PathBuf,
    /// The workspace (host path). With namespaces it appears at [`JAIL_HOME`].
    pub workspace: PathBuf,
    /// Size of the private `/tmp` and `/dev/shm` (each), bytes.
    pub tmp_bytes: u64,
    /// Host name inside the jail.
    pub hostname: String,
    /// `RLIMIT_NOFILE` (0: unchanged).
    pub max_open_files: u64,
    /// `RLIMIT_NPROC` (0: unchanged). Binds only a kernel with a uid of its own.
    pub max_processes: u64,
    /// The kernel's umask (group-writable sockets when another user must connect to them).
    pub umask: u32,
    /// A file bound read-only into the jail at the same path (the self-test binary).
    pub extra_file: Option<PathBuf>,
    /// A TCP-only kernel's ports, each bridged from a socket in the ipc directory
    /// ([`crate::bridge`]); the kernel may bind and connect to these loopback ports only.
    #[serde(default)]
    pub bridges: Vec<crate::bridge::BridgedPort>,
}

impl JailPolicy {
    /// The kernel's home and working directory, as the kernel sees it.
    pub fn home(&self) -> &Path {
        if self.namespaces {
            Path::new(JAIL_HOME)
        } else {
            &self.workspace
        }
    }

    /// The ipc directory as the kernel sees it (connection files name sockets by this path).
    pub fn ipc_in_jail(&self) -> &Path {
        if self.namespaces {
            Path::new(JAIL_IPC)
        } else {
            &self.ipc_dir
        }
    }

    /// Paths the kernel may read and execute, as the kernel sees them (Landlock rules).
    pub fn readable_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
        paths.push(PathBuf::from("/etc"));
        paths.push(PathBuf::from("/proc"));
        paths.extend(self.read_only.iter().cloned());
        paths.extend(self.extra_file.iter().cloned());
        paths.sort();
        paths.dedup();
        paths
    }

    /// Directories the kernel may change freely, as the kernel sees them.
    pub fn writable_paths(&self) -> Vec<PathBuf> {
        vec![
            self.home().to_owned(),
            PathBuf::from("/tmp"),
            PathBuf::from("/dev/shm"),
        ]
    }
}

/// The installation prefix of an executable: the parent of its `bin/` directory, else its own
/// directory. `/usr/bin/python3` gives `/usr`; `/opt/venv/bin/python` gives `/opt/venv`.
pub fn prefix_of(executable: &Path) -> Option<PathBuf> {
    let dir = executable.parent()?;
    if dir.file_name().is_some_and(|n| n == "bin") {
        dir.parent().map(Path::to_owned)
    } else {
        Some(dir.to_owned())
    }
}

/// The read-only paths a kernel started with `argv0` needs beyond the system directories: the
/// prefix of the program as named (a virtual environment) and of the file it resolves to (the
/// interpreter the environment was made from, with its standard library).
pub fn environment_paths(argv0: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if argv0.is_absolute() {
        paths.extend(prefix_of(argv0));
        if let Ok(real) = std::fs::canonicalize(argv0) {
            paths.extend(prefix_of(&real));
        }
    }
    paths.retain(|p| !is_covered(p));
    outermost(paths)
}

/// `paths` without duplicates and without paths inside another one of them, sorted.
pub fn outermost(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut out: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for p in paths {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

/// Whether `path` is inside a system directory every jail sees anyway.
fn is_covered(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| path.starts_with(d)) || path == Path::new("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(
            prefix_of(Path::new("/usr/bin/python3")),
            Some(PathBuf::from("/usr"))
        );
        assert_eq!(
            prefix_of(Path::new("/srv/venv/bin/python")),
            Some(PathBuf::from("/srv/venv"))
        );
        assert_eq!(
            prefix_of(Path::new("/srv/tools/deno")),
            Some(PathBuf::from("/srv/tools"))
        );
    }

    #[test]
    fn environment_paths_skip_system_dirs_and_follow_links() {
        assert!(environment_paths(Path::new("/usr/bin/python3")).is_empty());
        assert!(environment_paths(Path::new("python3")).is_empty());
        let root = std::env::temp_dir().join(format!("sbx-env-{}", std::process::id()));
        let base = root.join("base/bin");
        let venv = root.join("venv/bin");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&venv).unwrap();
        std::fs::write(base.join("python3.11"), "").unwrap();
        let link = venv.join("python");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(base.join("python3.11"), &link).unwrap();
        let paths = environment_paths(&link);
        let real_root = std::fs::canonicalize(&root).unwrap();
        assert!(paths.contains(&root.join("venv")), "{paths:?}");
        assert!(paths.contains(&real_root.join("base")), "{paths:?}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nested_paths_are_dropped() {
        let paths = outermost(vec![
            PathBuf::from("/srv/a/b"),
            PathBuf::from("/srv/a"),
            PathBuf::from("/srv/ab"),
            PathBuf::from("/srv/a"),
        ]);
        assert_eq!(
            paths,
            vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/ab")]
        );
    }

    #[test]
    fn landlock_paths_follow_the_mode() {
        let mut p = JailPolicy {
            namespaces: true,
            workspace: PathBuf::from("/srv/pods/p1/workspace"),
            read_only: vec![PathBuf::from("/srv/venv")],
            ..JailPolicy::default()
        };
        assert_eq!(p.home(), Path::new(JAIL_HOME));
        assert_eq!(p.ipc_in_jail(), Path::new(JAIL_IPC));
        assert!(p.writable_paths().contains(&PathBuf::from(JAIL_HOME)));
        assert!(p.readable_paths().contains(&PathBuf::from("/srv/venv")));
        p.namespaces = false;
        assert_eq!(p.home(), Path::new("/srv/pods/p1/workspace"));
    }
}
