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
    /// Extra environment for Middleman (e.g. `JUPYTER_PATH`).
    pub env: Vec<(String, String)>,
    /// Where Middleman saves documents (`--document-store`), shared by every pod so that a
    /// document's next pod restores it.
    pub document_store: String,
    pub document_key_prefix: String,
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
        std::fs::create_dir_all(&dir).map_err(err(dir.display().to_string()))?;
        let limits = &plan.limits;
        let mut cmd = tokio::process::Command::new(&self.settings.middleman_bin);
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--pod", id])
            .arg("--public-key")
            .arg(&self.settings.public_key)
            .args(["--kernel", &plan.kernel])
            .args(["--document-store", &self.settings.document_store])
            .args(["--document-key-prefix", &self.settings.document_key_prefix])
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
            .arg("--kernel-isolate-network")
            .args(["--kernel-uid", &kernel_uid(id).to_string()])
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
