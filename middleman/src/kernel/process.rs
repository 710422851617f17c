use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use jupyter_protocol::ConnectionInfo;
use jupyter_protocol::connection_info::Transport;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt as _;
use tokio::process::Child;

use super::{KernelError, KernelSpec};

/// A launched kernel process and how to reach it.
#[derive(Debug)]
pub(crate) struct Launched {
    pub(crate) child: Child,
    pub(crate) pid: i32,
    pub(crate) connection: ConnectionInfo,
    /// The tail of what the kernel wrote to its stderr, for death reports.
    pub(crate) stderr_tail: std::sync::Arc<std::sync::Mutex<String>>,
    /// The kernel's pids cgroup, removed when this is dropped.
    pub(crate) cgroup: Option<super::cgroup::PidsCgroup>,
}

/// Keep this much of the kernel's stderr for the death report.
const STDERR_TAIL: usize = 2048;

/// Writes a connection file for generation `generation` of the kernel into `runtime` and starts
/// the kernel in its own process group (so that interrupts and kills reach everything it forked).
pub(crate) fn launch(
    spec: &KernelSpec,
    sandbox: &super::sandbox::Sandbox,
    runtime: &Path,
    workspace: &Path,
    generation: u64,
) -> Result<Launched, KernelError> {
    let connection = ConnectionInfo {
        transport: Transport::IPC,
        // Each generation gets fresh socket paths so a dying kernel's sockets never collide with
        // its successor's.
        ip: runtime.join(format!("k{generation}")).display().to_string(),
        shell_port: 1,
        iopub_port: 2,
        stdin_port: 3,
        control_port: 4,
        hb_port: 5,
        key: uuid::Uuid::new_v4().simple().to_string(),
        signature_scheme: "hmac-sha256".into(),
        kernel_name: Some(spec.name.clone()),
    };
    let file = runtime.join(format!("kernel-{generation}.json"));
    let io_err = |source| KernelError::RuntimeDir {
        path: file.clone(),
        source,
    };
    let json = serde_json::to_vec(&connection).map_err(|e| io_err(std::io::Error::other(e)))?;
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(io_err)?;
        f.write_all(&json).map_err(io_err)?;
    }
    std::fs::create_dir_all(workspace).map_err(|source| KernelError::RuntimeDir {
        path: workspace.to_owned(),
        source,
    })?;

    let argv: Vec<String> = spec
        .spec
        .argv
        .iter()
        .map(|a| {
            a.replace("{connection_file}", &file.display().to_string())
                .replace("{resource_dir}", &spec.dir.display().to_string())
        })
        .collect();
    if let Some(uid) = sandbox.owner {
        // The kernel, running as `uid`, must read its connection file, create its sockets in
        // the runtime directory, and own its workspace.
        for path in [runtime, file.as_path(), workspace] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).map_err(|source| {
                KernelError::RuntimeDir {
                    path: path.to_owned(),
                    source,
                }
            })?;
        }
    }
    let argv: Vec<String> = sandbox.prefix.iter().cloned().chain(argv).collect();
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| KernelError::BadKernelspec {
            path: spec.dir.join("kernel.json"),
            reason: "argv is empty".into(),
        })?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(workspace)
        .envs(spec.spec.env.clone().unwrap_or_default())
        // ipykernel exits when this process goes away, even after a crash of ours.
        .env("JPY_PARENT_PID", std::process::id().to_string())
        // A kernel under another uid cannot write our HOME; give it its workspace.
        .envs(
            sandbox
                .owner
                .map(|_| {
                    [
                        ("HOME", workspace.to_owned()),
                        ("IPYTHONDIR", workspace.join(".ipython")),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| KernelError::Spawn {
        argv0: program.clone(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| KernelError::Spawn {
            argv0: program.clone(),
            source: std::io::Error::other("kernel exited before its pid could be read"),
        })?;
    // Into its pids cgroup before it has had time to fork (it is still exec-ing the wrappers).
    let cgroup = sandbox.pids_cgroup.as_ref().and_then(|(root, max)| {
        let attached = super::cgroup::PidsCgroup::create(root, generation, *max).and_then(|cg| cg.add(pid).map(|()| cg));
        attached
            .map_err(|error| tracing::error!(%error, pid, "could not put the kernel in its pids cgroup; its process limit is not enforced"))
            .ok()
    });
    let stderr_tail = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(mut stderr) = child.stderr.take() {
        let tail = stderr_tail.clone();
        // Drains stderr in fixed-size reads (a kernel writing without newlines cannot make us
        // allocate), keeping only the tail. Ends when the kernel closes stderr.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                tracing::debug!(pid, stderr = %text.trim_end(), "kernel stderr");
                if let Ok(mut t) = tail.lock() {
                    t.push_str(&text);
                    if t.len() > STDERR_TAIL {
                        let mut cut = t.len() - STDERR_TAIL;
                        while !t.is_char_boundary(cut) {
                            cut += 1;
                        }
                        t.drain(..cut);
                    }
                }
            }
        });
    }
    tracing::info!(pid, generation, kernel = %spec.name, "kernel launched");
    Ok(Launched {
        child,
        pid,
        connection,
        stderr_tail,
        cgroup,
    })
}

/// Sends `signal` to the kernel's whole process group.
pub(crate) fn signal_group(pid: i32, signal: Signal) {
    if let Err(error) = killpg(Pid::from_raw(pid), signal) {
        // ESRCH: already gone, which is what we wanted.
        if error != nix::errno::Errno::ESRCH {
            tracing::warn!(pid, %signal, %error, "could not signal kernel process group");
        }
    }
}

/// A person-readable cause of a kernel's exit.
pub fn exit_cause(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("the kernel process exited with code {code}");
    }
    match status.signal() {
        Some(9) => "the kernel was killed (SIGKILL), most likely for using too much memory".into(),
        Some(11) => "the kernel crashed (segmentation fault)".into(),
        Some(6) => "the kernel aborted (SIGABRT)".into(),
        Some(sig) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown signal");
            format!("the kernel was terminated by signal {sig} ({name})")
        }
        None => "the kernel exited".into(),
    }
}
