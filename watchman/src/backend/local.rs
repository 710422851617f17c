//! The local backend: each pod is a real Middleman process (with its kernel) on this host.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{BackendError, Started};
use crate::model::{Health, Pod};
use crate::plan::Plan;

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The middleman binary.
    pub middleman_bin: PathBuf,
    /// Public key Middleman verifies tokens with.
    pub public_key: PathBuf,
    /// Parent of every pod's runtime and workspace directories.
    pub root: PathBuf,
    /// Marks processes as this Watchman's, for garbage collection (`WATCHMAN_POOL` in their
    /// environment).
    pub pool_id: String,
    /// Middleman's whole environment (e.g. `JUPYTER_PATH`, `PATH`): nothing else of
    /// Watchman's reaches it.
    pub env: Vec<(String, String)>,
    /// Watchman's HTTP address, where pods read and save their own documents.
    pub watchman_url: String,
    /// Pods keep kernel checkpoints through Watchman.
    pub checkpoints: bool,
    /// Derives each pod's credential.
    pub signing_key: session_token::SigningKey,
}

/// Runs each pod as a real Middleman process (with its kernel) on a free loopback port, in its
/// own process group, with a private directory. Not a mock: the same binary as production.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    settings: std::sync::Arc<LocalSettings>,
}

impl LocalBackend {
    pub fn new(settings: LocalSettings) -> Self {
        Self {
            settings: std::sync::Arc::new(settings),
        }
    }

    pub(super) async fn create(&self, id: &str, plan: &Plan) -> Result<Started, BackendError> {
        let err = |what: String| {
            move |source| BackendError::Io {
                pod: id.to_owned(),
                what,
                source,
            }
        };
        // Reserve a port by binding and releasing it; Middleman binds it a moment later. A
        // collision makes that pod fail to start, and the reconciler replaces it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(err("reserving a port".into()))?
            .port();
        let dir = self.settings.root.join(id);
        create_private_dir(&dir).map_err(err(dir.display().to_string()))?;
        // The pod's credential reaches its own document through Watchman, nothing else. It is
        // Middleman's alone: the kernel's jail shows nothing of the pod's directory but its
        // workspace and ipc directory.
        let credential = dir.join("credential");
        write_private(&credential, &self.settings.signing_key.pod_credential(id))
            .map_err(err(credential.display().to_string()))?;
        let limits = &plan.limits;
        let mut cmd = tokio::process::Command::new(&self.settings.middleman_bin);
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--pod", id])
            .arg("--public-key")
            .arg(&self.settings.public_key)
            .args(plan.kernel_args())
            .args([
                "--document-store",
                &format!("watchman+{}", self.settings.watchman_url),
            ])
            .args(if self.settings.checkpoints {
                let mut args = vec![
                    "--checkpoint-store".to_owned(),
                    format!("watchman+{}", self.settings.watchman_url),
                ];
                args.extend(limits.checkpoint_args());
                args
            } else {
                Vec::new()
            })
            .arg("--pod-credential-file")
            .arg(&credential)
            .arg("--runtime-root")
            .arg(dir.join("run"))
            .arg("--workspace")
            .arg(dir.join("workspace"))
            .args([
                "--execution-timeout",
                &format!("{}ms", limits.execution_timeout.as_millis()),
            ])
            .args(["--max-output-bytes", &limits.max_output_bytes.to_string()])
            .args(["--kernel-memory-mib", &limits.memory_mib.to_string()])
            .args(["--kernel-max-processes", &limits.max_processes.to_string()])
            .args([
                "--kernel-max-open-files",
                &limits.max_open_files.to_string(),
            ])
            .args(["--workspace-quota-mib", &limits.workspace_mib.to_string()])
            .args(["--kernel-cpus", &plan.cpus().to_string()])
            .args(["--kernel-uid", &kernel_uid(id).to_string()])
            .args(["--sandbox-require", plan.sandbox.name()])
            .env_clear()
            .envs(self.settings.env.iter().cloned())
            .env("WATCHMAN_POOL", &self.settings.pool_id)
            .env("WATCHMAN_POD", id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(err(self.settings.middleman_bin.display().to_string()))?;
        let pid = child
            .id()
            .ok_or_else(|| BackendError::ExitedAtOnce { pod: id.to_owned() })?;
        // The child is not awaited here: the reconciler watches it through its pid, which also
        // works for pods adopted after a Watchman restart. A reaper collects the exit status.
        tokio::spawn(async move {
            let mut child = child;
            let _ = child.wait().await;
        });
        Ok(Started {
            endpoint: format!("http://127.0.0.1:{port}"),
            handle: pid.to_string(),
        })
    }

    /// Checks that pods of `plan` get the sandbox level it requires, by running Middleman's
    /// sandbox check with the pods' own settings (the same self-test their agents run).
    pub async fn check_sandbox(&self, plan: &Plan) -> Result<(), BackendError> {
        if plan.sandbox == kernel_sandbox::Level::None {
            return Ok(());
        }
        let dir = self
            .settings
            .root
            .join(format!("sandbox-check-{}", plan.name));
        let _ = std::fs::remove_dir_all(&dir);
        create_private_dir(&dir.join("ipc"))
            .map_err(|e| BackendError::SandboxCheck(format!("{}: {e}", dir.display())))?;
        let limits = &plan.limits;
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(&self.settings.middleman_bin)
                .arg("sandbox-check")
                .args(["--require", plan.sandbox.name()])
                .arg("--ipc-dir")
                .arg(dir.join("ipc"))
                .arg("--workspace")
                .arg(dir.join("workspace"))
                .arg("--workspace-image")
                .arg(dir.join("workspace.img"))
                .args([
                    "--workspace-quota-mib",
                    &limits.workspace_mib.min(64).to_string(),
                ])
                .args([
                    "--kernel-uid",
                    &kernel_uid(&format!("check-{}", plan.name)).to_string(),
                ])
                .args(["--memory-mib", &limits.memory_mib.to_string()])
                .args(["--max-processes", &limits.max_processes.to_string()])
                .env_clear()
                .envs(self.settings.env.iter().cloned())
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        let output = output
            .map_err(|_| BackendError::SandboxCheck("it did not finish within 60 s".into()))?
            .map_err(|e| {
                BackendError::SandboxCheck(format!(
                    "{}: {e}",
                    self.settings.middleman_bin.display()
                ))
            })?;
        if output.status.success() {
            return Ok(());
        }
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let missing = report["missing"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|l| l.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|m| !m.is_empty());
        Err(match missing {
            Some(missing) => BackendError::SandboxUnmet {
                level: plan.sandbox,
                missing,
            },
            None => BackendError::SandboxCheck(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ),
        })
    }

    pub(super) async fn delete(&self, pod: &Pod) {
        if let Some(pid) = pid_of(pod) {
            // SIGTERM lets Middleman tell its clients and shut the kernel down.
            let _ = killpg(pid, Signal::SIGTERM);
            for _ in 0..50 {
                if !alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let dir = self.settings.root.join(&pod.id);
        if dir.starts_with(&self.settings.root) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub(super) async fn health(&self, pod: &Pod) -> Health {
        let Some(pid) = pid_of(pod) else {
            return Health::Lost("no process".into());
        };
        if !alive(pid) {
            return Health::Lost(format!("middleman process {pid} exited"));
        }
        match super::probe::get(&pod.endpoint, "/readyz").await {
            Some((200, _)) => Health::Ready,
            _ => Health::NotReady,
        }
    }

    pub(super) async fn collect_garbage(&self, known: &[Pod]) {
        let known: std::collections::HashSet<&str> = known.iter().map(|p| p.id.as_str()).collect();
        let marker = format!("WATCHMAN_POOL={}", self.settings.pool_id);
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            if !vars.contains(&marker.as_bytes()) {
                continue;
            }
            let pod = vars
                .iter()
                .find_map(|v| v.strip_prefix(b"WATCHMAN_POD="))
                .and_then(|v| std::str::from_utf8(v).ok());
            // Only the Middleman itself (group leader) is judged; its kernel goes with its group.
            let leader =
                nix::unistd::getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid);
            if let Some(pod) = pod
                && leader
                && !known.contains(pod)
            {
                tracing::warn!(pid, pod, "stopping an orphaned local pod");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Creates `dir` readable by its owner only.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `content` to a new file readable by its owner only.
fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(content.as_bytes())
}

/// A uid of its own for each pod's kernel (process limits count per uid, and one kernel must not
/// signal another's processes). Deterministic, so an adopted pod keeps its uid.
fn kernel_uid(pod: &str) -> u32 {
    let hash = pod.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    200_000 + u32::try_from(hash % 800_000).unwrap_or(0)
}

fn pid_of(pod: &Pod) -> Option<Pid> {
    pod.handle
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
}

fn alive(pid: Pid) -> bool {
    // Zombies count as dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}
