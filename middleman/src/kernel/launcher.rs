//! Starting, interrupting and killing kernels, always through the kernel agent: locally an agent
//! this Middleman starts (as its child, over a socket pair), on Kubernetes the agent in the
//! pod's kernel container. Middleman never runs code as the kernel, never shares its
//! environment with it, and refuses to start kernels when the sandbox cannot give the level the
//! plan requires.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use jupyter_protocol::ConnectionInfo;
use jupyter_protocol::connection_info::Transport;
use kernel_sandbox::{Agent, AgentEvent, AgentTarget, Layer, Level, Report, Request};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::KernelSpec;

/// Failures of a launch.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The agent could not be started or reached.
    #[error(transparent)]
    Agent(#[from] kernel_sandbox::AgentError),
    /// The sandbox cannot give the level required.
    #[error(
        "the sandbox cannot give the required level {required}: {} do not hold ({})",
        missing.iter().map(|l| l.name()).collect::<Vec<_>>().join(", "),
        report.describe()
    )]
    Level {
        required: Level,
        missing: Vec<Layer>,
        report: Report,
    },
    /// The kernelspec's command line is empty.
    #[error("the kernelspec's argv is empty")]
    EmptyArgv,
    /// No free loopback ports for a TCP-only kernel.
    #[error("no free loopback ports for the kernel: {0}")]
    Ports(#[source] std::io::Error),
    /// The ipc directory cannot be opened.
    #[error("ipc directory {path}: {source}")]
    IpcDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How kernels are launched, from the configuration.
#[derive(Debug, Clone)]
pub struct LauncherSettings {
    /// The agent to start or reach.
    pub agent: AgentTarget,
    /// The ipc directory as Middleman sees it (shared with the agent).
    pub ipc_dir: PathBuf,
    /// The level the plan requires.
    pub require: Level,
    /// What the plan allows, told to a kernel without network (`--plan-note`).
    pub plan_note: String,
    /// The JavaScript heap a JS/TS kernel's code may use, MiB (`--kernel-js-heap-mib`; 0: the
    /// engine's default).
    pub js_heap_mib: u64,
    /// Where the current agent's pid is published (the workspace's filesystem lives in its
    /// mount namespace; the file API reaches it through `/proc/<pid>/root`).
    pub agent_pid: AgentPid,
}

/// The pid of the agent this Middleman started, while it runs: a cheap shared handle the
/// launcher writes and the file API reads.
#[derive(Debug, Clone, Default)]
pub struct AgentPid(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl AgentPid {
    /// The agent's pid, if this Middleman started one and it is open.
    pub fn get(&self) -> Option<u32> {
        Some(self.0.load(std::sync::atomic::Ordering::Acquire)).filter(|pid| *pid != 0)
    }

    fn set(&self, pid: Option<u32>) {
        self.0
            .store(pid.unwrap_or(0), std::sync::atomic::Ordering::Release);
    }
}

impl LauncherSettings {
    /// An agent started by this Middleman: `program kernel-agent <args>`.
    pub fn local(
        program: PathBuf,
        ipc_dir: PathBuf,
        args: Vec<OsString>,
        require: Level,
        plan_note: String,
    ) -> Self {
        let mut all = vec![OsString::from("kernel-agent")];
        all.push("--ipc-dir".into());
        all.push(ipc_dir.clone().into_os_string());
        all.extend(args);
        Self {
            agent: AgentTarget::Spawn { program, args: all },
            ipc_dir,
            require,
            plan_note,
            js_heap_mib: 0,
            agent_pid: AgentPid::default(),
        }
    }
}

/// The session's handle on the agent.
#[derive(Debug)]
pub(crate) struct Launcher {
    settings: LauncherSettings,
    agent: Option<Agent>,
    events: mpsc::Sender<AgentEvent>,
    /// The ipc directory, held open: Middleman reaches the kernel's sockets through
    /// `/proc/self/fd/<fd>/`, because a unix socket's path is limited to 107 bytes and a pod's
    /// directory can be deeper than that.
    ipc: Option<std::fs::File>,
}

/// What the session needs to talk to a started kernel.
#[derive(Debug)]
pub(crate) struct Launched {
    /// The kernel's channels as Middleman reaches them.
    pub(crate) endpoints: super::channels::Endpoints,
}

impl Launcher {
    pub(crate) fn new(settings: LauncherSettings, events: mpsc::Sender<AgentEvent>) -> Self {
        Self {
            settings,
            agent: None,
            events,
            ipc: None,
        }
    }

    /// A short path to the ipc directory (see [`Launcher::ipc`]). An agent this Middleman
    /// started gives the directory a filesystem of its own in its mount namespace, so it is
    /// opened through the agent's root.
    fn ipc_path(&mut self, agent_pid: Option<u32>) -> Result<PathBuf, LaunchError> {
        use std::os::fd::AsRawFd as _;
        if self.ipc.is_none() {
            let through_agent = agent_pid.map(|pid| {
                PathBuf::from(format!("/proc/{pid}/root")).join(
                    self.settings
                        .ipc_dir
                        .strip_prefix("/")
                        .unwrap_or(&self.settings.ipc_dir),
                )
            });
            let dir = through_agent
                .and_then(|p| std::fs::File::open(p).ok())
                .map_or_else(|| std::fs::File::open(&self.settings.ipc_dir), Ok)
                .map_err(|source| LaunchError::IpcDir {
                    path: self.settings.ipc_dir.clone(),
                    source,
                })?;
            self.ipc = Some(dir);
        }
        Ok(self
            .ipc
            .as_ref()
            .map(|f| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
            .unwrap_or_else(|| self.settings.ipc_dir.clone()))
    }

    /// The agent, opened (and its report checked against the required level) if need be.
    async fn agent(&mut self) -> Result<&Agent, LaunchError> {
        if self.agent.is_none() {
            let agent = Agent::open(&self.settings.agent, self.events.clone()).await?;
            log_report(&agent.report);
            let missing = agent.report.missing(self.settings.require);
            if !missing.is_empty() {
                return Err(LaunchError::Level {
                    required: self.settings.require,
                    missing,
                    report: agent.report.clone(),
                });
            }
            self.settings.agent_pid.set(agent.pid());
            self.agent = Some(agent);
        }
        self.agent.as_ref().ok_or_else(|| {
            LaunchError::Agent(kernel_sandbox::AgentError::Protocol("is gone".into()))
        })
    }

    /// Forgets the agent after its connection ended; the next launch opens a new one (with a
    /// new ipc filesystem).
    pub(crate) fn agent_gone(&mut self) {
        self.agent = None;
        self.ipc = None;
        self.settings.agent_pid.set(None);
    }

    /// Asks the agent to start `generation` of `spec`'s kernel. The outcome arrives as an
    /// agent event; the returned connection is where the kernel will listen.
    pub(crate) async fn launch(
        &mut self,
        spec: &KernelSpec,
        generation: u64,
    ) -> Result<Launched, LaunchError> {
        let agent_pid = self.agent().await?.pid();
        let ipc_host = self.ipc_path(agent_pid)?;
        let note = self.settings.plan_note.clone();
        let js_heap_mib = self.settings.js_heap_mib;
        let agent = self.agent().await?;
        let offline = super::network::network_off(&agent.report);
        let ipc_kernel = PathBuf::from(&agent.ipc_dir);
        // Each generation gets fresh socket paths, so a dying kernel's sockets never collide
        // with its successor's.
        let socket_base = format!("k{generation}");
        let key = uuid::Uuid::new_v4().simple().to_string();
        let info = |dir: &Path| ConnectionInfo {
            transport: Transport::IPC,
            ip: dir.join(&socket_base).display().to_string(),
            shell_port: 1,
            iopub_port: 2,
            stdin_port: 3,
            control_port: 4,
            hb_port: 5,
            key: key.clone(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: Some(spec.name.clone()),
        };
        // A TCP-only kernel listens on loopback ports, and the jail listens on the same socket
        // paths, handing Middleman a connection to the kernel's port for each connection made.
        let (for_kernel, bridges) = if spec.tcp_only() {
            let ports = free_ports().map_err(LaunchError::Ports)?;
            let bridges = (1..=5)
                .zip(ports)
                .map(|(n, port)| (format!("{socket_base}-{n}"), port))
                .collect();
            let tcp = ConnectionInfo {
                transport: Transport::TCP,
                ip: "127.0.0.1".into(),
                shell_port: ports[0],
                iopub_port: ports[1],
                stdin_port: ports[2],
                control_port: ports[3],
                hb_port: ports[4],
                ..info(&ipc_kernel)
            };
            (tcp, bridges)
        } else {
            (info(&ipc_kernel), Vec::new())
        };
        let file_name = format!("kernel-{generation}.json");
        let file_in_kernel = ipc_kernel.join(&file_name).display().to_string();
        let mut argv: Vec<String> = spec
            .spec
            .argv
            .iter()
            .map(|a| {
                a.replace("{connection_file}", &file_in_kernel)
                    .replace("{resource_dir}", &spec.dir.display().to_string())
            })
            .collect();
        if argv.is_empty() {
            return Err(LaunchError::EmptyArgv);
        }
        let connection = serde_json::to_string(&for_kernel)
            .map_err(|e| kernel_sandbox::AgentError::Protocol(e.to_string()))?;
        let mut env: Vec<(String, String)> = spec
            .spec
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        super::helper::add_helper(&mut argv);
        if offline {
            super::network::say_no_network(&mut argv, &mut env, &note);
        }
        if spec.is_deno() {
            super::heap::limit_deno(&mut env, js_heap_mib);
        }
        agent.send(Request::Start {
            generation,
            argv,
            env,
            connection_file: file_name,
            connection,
            bridges,
        })?;
        tracing::info!(generation, kernel = %spec.name, "kernel launch requested");
        Ok(Launched {
            endpoints: super::channels::Endpoints {
                info: info(&ipc_host),
                handed: spec.tcp_only(),
            },
        })
    }

    /// The JavaScript heap the plan gives a JS/TS kernel's code, MiB (0: none set).
    pub(crate) fn js_heap_mib(&self) -> u64 {
        self.settings.js_heap_mib
    }

    /// Sends `signal` to the generation's processes.
    pub(crate) fn signal(&self, generation: u64, signal: Signal) {
        if let Some(agent) = &self.agent
            && let Err(error) = agent.send(Request::Signal {
                generation,
                signal: signal as i32,
            })
        {
            tracing::warn!(%error, "could not ask the agent to signal the kernel");
        }
    }

    /// Kills every process of the generation.
    pub(crate) fn kill(&self, generation: u64) {
        if let Some(agent) = &self.agent
            && let Err(error) = agent.send(Request::Kill { generation })
        {
            tracing::warn!(%error, "could not ask the agent to kill the kernel");
        }
    }
}

/// Five loopback ports free now, for a TCP-only kernel. With namespaces they are on the jail's
/// own loopback, where anything is free; in a pod's kernel container they are on the pod's,
/// which Middleman shares, so they must not be Middleman's own.
fn free_ports() -> std::io::Result<[u16; 5]> {
    let listeners = (0..5)
        .map(|_| std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; 5];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Logs what holds, one line per layer, and exports it as a metric.
fn log_report(report: &Report) {
    for state in &report.layers {
        metrics::gauge!("middleman_sandbox_layer", "layer" => state.layer.name())
            .set(if state.holds { 1.0 } else { 0.0 });
        if state.holds {
            tracing::info!(layer = %state.layer, detail = %state.detail, "sandbox layer holds");
        } else {
            tracing::warn!(layer = %state.layer, detail = %state.detail, "sandbox layer NOT enforced");
        }
    }
    tracing::info!(level = %report.level(), "kernel sandbox");
}
