//! The workspace's size limit. The agent, as root, gives the workspace a filesystem of its own
//! in the agent's private mount namespace: an ext4 image on a loop device (a real disk quota:
//! writes past it fail with "No space left on device"), else a tmpfs of the same size. The
//! image outlives kernel restarts (its files do); it is deleted with the pod's directory, and
//! the mount ends with the last process of the namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How the workspace is limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quota {
    /// An ext4 image of this many bytes on a loop device.
    Image { bytes: u64, image: PathBuf },
    /// A tmpfs of this many bytes (counts against the kernel's memory).
    Tmpfs { bytes: u64 },
    /// Not limited, with why.
    None(String),
}

impl Quota {
    /// Whether a limit holds.
    pub fn holds(&self) -> bool {
        !matches!(self, Quota::None(_))
    }

    /// A few words for the report.
    pub fn describe(&self) -> String {
        match self {
            Quota::Image { bytes, .. } => {
                format!("{} MiB ext4 image on a loop device", bytes >> 20)
            }
            Quota::Tmpfs { bytes } => format!("{} MiB tmpfs", bytes >> 20),
            Quota::None(why) => why.clone(),
        }
    }
}

/// Prepares `workspace` with a filesystem of `bytes`, owned by `owner`. Must run in a private
/// mount namespace, as root. `image` is where the ext4 image lives (outside the kernel's view).
pub fn prepare(workspace: &Path, image: Option<&Path>, bytes: u64, owner: Option<u32>) -> Quota {
    if let Err(e) = std::fs::create_dir_all(workspace) {
        return Quota::None(format!("{}: {e}", workspace.display()));
    }
    if bytes == 0 {
        chown(workspace, owner);
        return Quota::None("no quota configured".into());
    }
    let uid = owner.unwrap_or(0);
    if let Some(image) = image {
        match loop_mount(workspace, image, bytes, uid) {
            Ok(()) => {
                chown(workspace, owner);
                // A fresh ext4 has a root-owned lost+found; the kernel's home starts empty.
                let _ = std::fs::remove_dir(workspace.join("lost+found"));
                return Quota::Image {
                    bytes,
                    image: image.to_owned(),
                };
            }
            Err(error) => {
                tracing::warn!(%error, "workspace: no loop-mounted image, trying a tmpfs");
            }
        }
    }
    let options = format!("size={bytes},mode=0700,uid={uid},gid={uid}");
    match nix::mount::mount(
        Some("tmpfs"),
        workspace,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(options.as_str()),
    ) {
        Ok(()) => Quota::Tmpfs { bytes },
        Err(e) => {
            chown(workspace, owner);
            Quota::None(format!("cannot mount a filesystem for the workspace: {e}"))
        }
    }
}

fn chown(path: &Path, owner: Option<u32>) {
    if let Some(uid) = owner {
        let _ = std::os::unix::fs::chown(path, Some(uid), Some(uid));
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    }
}

/// Why the loop-mounted image could not be made or mounted.
#[derive(Debug, thiserror::Error)]
enum ImageError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program}: {detail}")]
    Tool { program: String, detail: String },
}

fn loop_mount(workspace: &Path, image: &Path, bytes: u64, uid: u32) -> Result<(), ImageError> {
    let file_error = |source| ImageError::File {
        path: image.to_owned(),
        source,
    };
    if !image.exists() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(image)
            .map_err(file_error)?;
        file.set_len(bytes).map_err(file_error)?;
        drop(file);
        run(Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E"])
            .arg(format!(
                "root_owner={uid}:{uid},lazy_itable_init=1,lazy_journal_init=1"
            ))
            .arg(image))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(image);
        })?;
    }
    // mount(8) finds a free loop device and sets it to clear itself when unmounted.
    run(Command::new(tool("mount"))
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
        .arg(image)
        .arg(workspace))
}

/// A system tool by name: from `PATH`, else the usual system directories (an agent's `PATH` may
/// lack the `sbin` ones).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run(command: &mut Command) -> Result<(), ImageError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| ImageError::Tool {
            program: program.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            program,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
