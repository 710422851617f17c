//! Finding a kernel by its kernelspec name.

use std::path::{Path, PathBuf};

use jupyter_protocol::JupyterKernelspec;

use super::KernelError;

/// A kernelspec found on disk.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// The kernelspec's directory name, e.g. `python3`.
    pub name: String,
    /// Directory holding `kernel.json`.
    pub dir: PathBuf,
    /// The parsed `kernel.json`.
    pub spec: JupyterKernelspec,
}

impl KernelSpec {
    /// Whether the kernel wants interrupts as `interrupt_request` messages rather than SIGINT.
    pub fn interrupt_by_message(&self) -> bool {
        self.spec.interrupt_mode.as_deref() == Some("message")
    }

    /// Whether the kernel speaks TCP only, and is reached through a bridge in its jail
    /// (`kernel_sandbox::bridge`): the kernelspec says so (`metadata.nbplat.transport` is
    /// `"tcp"`), or it is Deno's (whose own kernelspec says nothing).
    pub fn tcp_only(&self) -> bool {
        let said = self
            .spec
            .metadata
            .as_ref()
            .and_then(|m| m.get("nbplat"))
            .and_then(|n| n.get("transport"))
            .and_then(|t| t.as_str());
        match said {
            Some(transport) => transport == "tcp",
            None => self.is_deno(),
        }
    }

    /// Whether the kernel may publish an execution's result after its idle status (Deno's
    /// does: its result and its status are sent by two tasks), so an execution waits briefly
    /// for one before it ends.
    pub fn results_after_idle(&self) -> bool {
        self.is_deno()
    }

    /// Whether this is Deno's kernel (`deno jupyter`).
    pub fn is_deno(&self) -> bool {
        self.spec
            .argv
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n == "deno")
    }
}

/// The Jupyter data directories searched, in order: `extra`, then `JUPYTER_PATH`, then the user
/// and system directories.
pub fn search_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(path) = std::env::var_os("JUPYTER_PATH") {
        dirs.extend(std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/share/jupyter"));
    }
    dirs.push(PathBuf::from("/usr/local/share/jupyter"));
    dirs.push(PathBuf::from("/usr/share/jupyter"));
    dirs
}

/// Finds the kernelspec `name` in `dirs` (the first match wins).
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<KernelSpec, KernelError> {
    let mut available = Vec::new();
    for data_dir in dirs {
        let kernels = data_dir.join("kernels");
        let candidate = kernels.join(name).join("kernel.json");
        if let Ok(text) = std::fs::read_to_string(&candidate) {
            let spec: JupyterKernelspec =
                serde_json::from_str(&text).map_err(|e| KernelError::BadKernelspec {
                    path: candidate.clone(),
                    reason: e.to_string(),
                })?;
            if spec.argv.is_empty() {
                return Err(KernelError::BadKernelspec {
                    path: candidate,
                    reason: "argv is empty".into(),
                });
            }
            return Ok(KernelSpec {
                name: name.to_owned(),
                dir: kernels.join(name),
                spec,
            });
        }
        if let Ok(entries) = std::fs::read_dir(&kernels) {
            available.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
    }
    available.sort();
    available.dedup();
    Err(KernelError::KernelNotFound {
        name: name.to_owned(),
        available,
        searched: dirs.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_first_and_lists_available() {
        let root = std::env::temp_dir().join(format!("mm-spec-{}", uuid::Uuid::new_v4()));
        let k = root.join("a/kernels/py");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(
            k.join("kernel.json"),
            r#"{"argv":["python","-m","ipykernel_launcher","-f","{connection_file}"],"display_name":"Py","language":"python","interrupt_mode":"message"}"#,
        )
        .unwrap();
        let dirs = vec![root.join("missing"), root.join("a")];
        let spec = find("py", &dirs).unwrap();
        assert_eq!(spec.spec.display_name, "Py");
        assert!(spec.interrupt_by_message());
        assert!(!spec.tcp_only());
        match find("deno", &dirs) {
            Err(KernelError::KernelNotFound { available, .. }) => assert_eq!(available, vec!["py"]),
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn deno_and_marked_kernels_speak_tcp() {
        let spec = |json: &str| KernelSpec {
            name: "k".into(),
            dir: PathBuf::new(),
            spec: serde_json::from_str(json).unwrap(),
        };
        let deno = spec(
            r#"{"argv":["/opt/deno/bin/deno","jupyter","--kernel","--conn","{connection_file}"],"display_name":"Deno","language":"typescript"}"#,
        );
        assert!(deno.tcp_only() && deno.is_deno());
        let marked = spec(
            r#"{"argv":["k"],"display_name":"K","language":"k","metadata":{"nbplat":{"transport":"tcp"}}}"#,
        );
        assert!(marked.tcp_only() && !marked.is_deno());
        let ipc = spec(
            r#"{"argv":["deno"],"display_name":"K","language":"k","metadata":{"nbplat":{"transport":"ipc"}}}"#,
        );
        assert!(!ipc.tcp_only());
    }
}
