use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use super::KernelError;

/// A private (mode 0700) directory holding the connection file and the `ipc://` sockets of one
/// Middleman's kernel. Removed on drop; directories left behind by a Middleman that crashed are
/// swept by the next one that starts under the same root.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

const PREFIX: &str = "mm-";

impl RuntimeDir {
    /// Creates a fresh directory under `root`, after removing stale ones of dead processes.
    pub fn create(root: &Path) -> Result<Self, KernelError> {
        let err = |source| KernelError::RuntimeDir {
            path: root.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(err)?;
        sweep_stale(root);
        let path = root.join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| KernelError::RuntimeDir {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove runtime directory");
        }
    }
}

/// Removes `mm-<pid>-*` directories whose process no longer exists. Symlinks are never followed:
/// only real directories we could have made are touched.
fn sweep_stale(root: &Path) {
    for (path, pid) in kernel_sandbox::stale::of_dead_processes(root, PREFIX) {
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), pid, "removed stale runtime directory of a dead middleman")
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not remove stale runtime directory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_removed_on_drop_and_stale_swept() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = std::env::temp_dir().join(format!("mm-rt-test-{}", uuid::Uuid::new_v4()));
        // A directory left by a process that cannot exist (pid beyond pid_max).
        let stale = root.join("mm-4194305-deadbeef");
        std::fs::create_dir_all(stale.join("inner")).unwrap();
        let dir = RuntimeDir::create(&root).unwrap();
        assert!(!stale.exists(), "stale directory swept");
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
