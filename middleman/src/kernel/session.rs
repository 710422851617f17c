//! The kernel session: one actor task owns the kernel process, its sockets, the execution queue
//! and the output buffers. Connections talk to it through [`SessionHandle`]: commands in; what
//! happens goes out as [`ServerEvent`]s on an [`EventSender`] (to the document hub, which orders,
//! records and fans them out).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use jupyter_protocol::{
    ExecuteRequest, ExecutionState, InputReply, InterruptRequest, JupyterMessage,
    JupyterMessageContent, ReplyStatus, ShutdownRequest,
};
use kernel_sandbox::{AgentEvent, Event as AgentReport, KernelExit};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::launcher::{Launched, Launcher, LauncherSettings};
use super::sockets::{self, Channel, KernelEvent, KernelSockets, Tagged};
use super::{KernelSpec, RuntimeDir};
use crate::output::OutputBuffer;
use crate::protocol::{
    ErrorCode, ExecutionStatus, ExecutionSummary, InputOutcome, KernelDescription, KernelState,
    Output, ServerEvent, StreamName,
};

/// What the session needs to know, taken from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub spec: KernelSpec,
    /// How kernels are started (the kernel agent, the sandbox level required).
    pub launcher: LauncherSettings,
    pub execution_timeout: Duration,
    pub interrupt_grace: Duration,
    pub startup_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub max_restarts: u32,
    pub restart_window: Duration,
    pub max_output_bytes: u64,
    pub stream_flush_interval: Duration,
    pub max_queue: usize,
}

/// A request to the session. Each carries a reply channel for refusals.
#[derive(Debug)]
pub enum Command {
    Execute {
        code: String,
        /// The document cell this code came from, if any.
        cell_id: Option<String>,
        request_id: Option<String>,
        stop_on_error: bool,
        by: String,
    },
    InputReply {
        execution_id: String,
        value: String,
        by: String,
    },
    Interrupt {
        by: String,
    },
    Restart {
        by: String,
    },
}

/// Why a command was refused.
pub type Refusal = (ErrorCode, String);

/// Where the session's events go, in the order they happen. Unbounded because the actor must
/// never wait for its reader: the hub waits for the actor when it sends commands, so a full
/// channel could stall both. What flows is bounded upstream (outputs are coalesced and capped).
pub type EventSender = mpsc::UnboundedSender<ServerEvent>;

/// The kernel's state, for readiness and status checks.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub kernel_state: KernelState,
    pub kernel: KernelDescription,
}

/// Cheap-to-clone handle on a running session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    commands: mpsc::Sender<(Command, oneshot::Sender<Result<(), Refusal>>)>,
    snapshot: watch::Receiver<SessionSnapshot>,
}

impl SessionHandle {
    /// Sends a command and waits for it to be accepted or refused.
    pub async fn send(&self, command: Command) -> Result<(), Refusal> {
        let (tx, rx) = oneshot::channel();
        self.commands.send((command, tx)).await.map_err(|_| {
            (
                ErrorCode::Unavailable,
                "the session is shutting down".to_owned(),
            )
        })?;
        rx.await.unwrap_or_else(|_| {
            Err((
                ErrorCode::Unavailable,
                "the session is shutting down".to_owned(),
            ))
        })
    }

    /// A watch of the snapshot (readiness checks).
    pub fn watch(&self) -> watch::Receiver<SessionSnapshot> {
        self.snapshot.clone()
    }
}

/// The session actor.
#[derive(Debug)]
pub struct KernelSession;

impl KernelSession {
    /// Starts the kernel and the actor. The actor stops, shutting the kernel down and removing
    /// the runtime directory, when `shutdown` is cancelled; await the returned handle for that.
    pub fn spawn(
        settings: SessionSettings,
        runtime: RuntimeDir,
        events: EventSender,
        shutdown: CancellationToken,
    ) -> (SessionHandle, tokio::task::JoinHandle<()>) {
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let kernel = KernelDescription {
            name: settings.spec.name.clone(),
            display_name: settings.spec.spec.display_name.clone(),
            language: settings.spec.spec.language.clone(),
        };
        let (snap_tx, snap_rx) = watch::channel(SessionSnapshot {
            kernel_state: KernelState::Starting,
            kernel: kernel.clone(),
        });
        // Small: each queued message may be large, and the actor drains faster than kernels write.
        let (kernel_tx, kernel_rx) = mpsc::channel(64);
        let (agent_tx, agent_rx) = mpsc::channel(64);
        let actor = Actor {
            launcher: Launcher::new(settings.launcher.clone(), agent_tx),
            settings,
            runtime,
            events,
            snapshot: snap_tx,
            state: KernelState::Starting,
            kernel_tx,
            generation: 0,
            phase: Phase::Down,
            queue: VecDeque::new(),
            current: None,
            outputs: HashMap::new(),
            output_order: VecDeque::new(),
            crash_times: VecDeque::new(),
            restart_at: None,
            next_id: 0,
        };
        let span = tracing::info_span!("kernel_session", kernel = %kernel.name);
        let join = tokio::spawn(
            actor
                .run(cmd_rx, kernel_rx, agent_rx, shutdown)
                .instrument(span),
        );
        (
            SessionHandle {
                commands: cmd_tx,
                snapshot: snap_rx,
            },
            join,
        )
    }
}

#[derive(Debug)]
struct Pending {
    id: String,
    cell_id: Option<String>,
    code: String,
    by: String,
    stop_on_error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopCause {
    Interrupt,
    Timeout,
}

#[derive(Debug)]
struct Running {
    pending: Pending,
    msg_id: String,
    started: Instant,
    deadline: Instant,
    reply: Option<(ReplyStatus, u64)>,
    /// When the reply arrived; the idle status is awaited for at most [`IDLE_GRACE`] after it.
    reply_at: Option<Instant>,
    idle: bool,
    stopping: Option<(StopCause, Instant)>,
    input: Option<JupyterMessage>,
}

#[derive(Debug)]
enum Phase {
    /// No process (before the first start, between restarts, dead, or shut down).
    Down,
    /// Launch requested from the agent, handshake under way.
    Starting {
        tasks: Vec<tokio::task::AbortHandle>,
    },
    /// Connected and answering.
    Ready {
        tasks: Vec<tokio::task::AbortHandle>,
        sockets: Box<KernelSockets>,
    },
}

/// How long an execution whose reply arrived waits for the kernel's idle status.
const IDLE_GRACE: Duration = Duration::from_secs(5);

/// Output buffers kept for executions that finished, so late output (a background thread
/// printing after the cell ended) still lands on the right execution, within its cap.
const RECENT_OUTPUTS: usize = 32;

struct Actor {
    settings: SessionSettings,
    /// Kept for its removal on drop (the connection files and sockets live in it).
    #[allow(dead_code)]
    runtime: RuntimeDir,
    launcher: Launcher,
    events: EventSender,
    snapshot: watch::Sender<SessionSnapshot>,
    state: KernelState,
    kernel_tx: mpsc::Sender<Tagged>,
    generation: u64,
    phase: Phase,
    queue: VecDeque<Pending>,
    current: Option<Running>,
    /// Output buffers by the kernel `msg_id` of the execute request.
    outputs: HashMap<String, OutputBuffer>,
    output_order: VecDeque<String>,
    crash_times: VecDeque<Instant>,
    restart_at: Option<Instant>,
    next_id: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<(Command, oneshot::Sender<Result<(), Refusal>>)>,
        mut kernel_rx: mpsc::Receiver<Tagged>,
        mut agent_rx: mpsc::Receiver<AgentEvent>,
        shutdown: CancellationToken,
    ) {
        self.start_kernel().await;
        loop {
            let timer = self.next_timer();
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((command, reply)) = commands.recv() => {
                    let result = self.on_command(command).await;
                    let _ = reply.send(result);
                }
                Some(tagged) = kernel_rx.recv() => {
                    if tagged.generation == self.generation {
                        self.on_kernel_event(tagged.event).await;
                    }
                }
                Some(event) = agent_rx.recv() => self.on_agent_event(event).await,
                () = sleep_until_opt(timer) => self.on_timer().await,
            }
        }
        self.shutdown(&mut agent_rx).await;
    }

    /// What the kernel agent reports: a launch that failed, a kernel that ended, or the end of
    /// the agent itself.
    async fn on_agent_event(&mut self, event: AgentEvent) {
        match event {
            AgentEvent::Event(AgentReport::StartFailed { generation, reason })
                if generation == self.generation =>
            {
                tracing::error!(%reason, "the agent could not start the kernel");
                self.on_kernel_lost(
                    "launch_failed",
                    format!("the kernel could not be started: {reason}"),
                );
            }
            AgentEvent::Event(AgentReport::Exited { generation, exit })
                if generation == self.generation =>
            {
                self.on_kernel_event(KernelEvent::Exited(exit)).await;
            }
            AgentEvent::Event(AgentReport::Started { generation }) => {
                tracing::debug!(generation, "kernel process started");
            }
            AgentEvent::Event(_) => {}
            AgentEvent::Closed(why) => {
                tracing::error!(%why, "the kernel agent stopped");
                self.launcher.agent_gone();
                if !matches!(self.phase, Phase::Down) {
                    self.on_kernel_lost(
                        "launch_failed",
                        format!("the kernel's sandbox agent stopped ({why})"),
                    );
                }
            }
        }
    }

    // ---- broadcasting -------------------------------------------------------------------

    fn emit(&mut self, event: ServerEvent) {
        // Nobody reading (the hub is gone at the very end of a shutdown) is fine.
        let _ = self.events.send(event);
    }

    fn set_state(&mut self, state: KernelState, reason: Option<String>) {
        if self.state == state && reason.is_none() {
            return;
        }
        self.state = state;
        for s in [
            KernelState::Starting,
            KernelState::Idle,
            KernelState::Busy,
            KernelState::Restarting,
            KernelState::Dead,
        ] {
            metrics::gauge!("middleman_kernel_state", "state" => state_label(s))
                .set(if s == state { 1.0 } else { 0.0 });
        }
        self.snapshot.send_modify(|s| s.kernel_state = state);
        self.emit(ServerEvent::KernelStatus { state, reason });
    }

    fn publish_queue(&mut self) {
        let mut list = Vec::with_capacity(self.queue.len() + 1);
        if let Some(r) = &self.current {
            list.push(summary(&r.pending, true));
        }
        list.extend(self.queue.iter().map(|p| summary(p, false)));
        metrics::gauge!("middleman_execution_queue_depth").set(self.queue.len() as f64);
        self.emit(ServerEvent::Queue { executions: list });
    }

    // ---- kernel lifecycle ---------------------------------------------------------------

    async fn start_kernel(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        self.restart_at = None;
        let Launched { connection } =
            match self.launcher.launch(&self.settings.spec, generation).await {
                Ok(l) => l,
                Err(error) => {
                    tracing::error!(%error, "kernel launch failed");
                    if matches!(error, super::launcher::LaunchError::Level { .. }) {
                        // Retrying cannot help: the host does not give what the plan requires.
                        self.set_state(
                            KernelState::Dead,
                            Some(format!("the kernel cannot be started: {error}")),
                        );
                        return;
                    }
                    self.on_kernel_lost(
                        "launch_failed",
                        format!("the kernel could not be started: {error}"),
                    );
                    return;
                }
            };
        let tx = self.kernel_tx.clone();
        let timeout = self.settings.startup_timeout;
        let max_message = usize::try_from(self.settings.max_output_bytes).unwrap_or(usize::MAX);
        let starter = tokio::spawn(
            async move {
                let result = match tokio::time::timeout(
                    timeout,
                    sockets::connect(&connection, generation, tx.clone(), max_message),
                )
                .await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "the kernel did not answer within {} s",
                        timeout.as_secs()
                    )),
                };
                let _ = tx
                    .send(Tagged {
                        generation,
                        event: KernelEvent::Started(result),
                    })
                    .await;
            }
            .in_current_span(),
        );
        self.phase = Phase::Starting {
            tasks: vec![starter.abort_handle()],
        };
    }

    /// Kills the kernel's process group and forgets its tasks; later events of this generation
    /// are ignored.
    fn stop_kernel(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Down) {
            Phase::Down => {}
            Phase::Starting { tasks } | Phase::Ready { tasks, .. } => {
                // The agent kills the whole jail (its PID namespace and cgroup).
                self.launcher.kill(self.generation);
                for t in tasks {
                    t.abort();
                }
            }
        }
        self.generation += 1;
    }

    /// The kernel died or could not start: finish what ran, abort what waited, restart unless
    /// it keeps dying.
    fn on_kernel_lost(&mut self, cause: &'static str, reason: String) {
        tracing::warn!(cause, %reason, "kernel lost");
        metrics::counter!("middleman_kernel_restarts_total", "cause" => cause).increment(1);
        self.stop_kernel();
        self.finish_current(ExecutionStatus::KernelDied, Some(reason.clone()));
        self.abort_queue("the kernel restarted");
        let now = Instant::now();
        self.crash_times.push_back(now);
        while self
            .crash_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.settings.restart_window)
        {
            self.crash_times.pop_front();
        }
        if self.crash_times.len() > self.settings.max_restarts as usize {
            let reason = format!(
                "{reason}; it died {} times within {} s, so it was not restarted. Restart it to try again.",
                self.crash_times.len(),
                self.settings.restart_window.as_secs()
            );
            self.set_state(KernelState::Dead, Some(reason));
            return;
        }
        self.set_state(KernelState::Restarting, Some(reason));
        // Back off a little when it keeps failing, so a kernel that dies at start does not spin.
        let backoff = Duration::from_millis(200 * (1 << self.crash_times.len().min(5)) as u64);
        self.restart_at = Some(now + backoff);
    }

    async fn on_kernel_event(&mut self, event: KernelEvent) {
        match event {
            KernelEvent::Started(Ok(mut sockets)) => {
                let Phase::Starting { tasks } = std::mem::replace(&mut self.phase, Phase::Down)
                else {
                    return;
                };
                sockets.start_heartbeat(
                    self.settings.heartbeat_interval,
                    self.generation,
                    self.kernel_tx.clone(),
                );
                if let Some(info) = &sockets.kernel_info {
                    let language = info.language_info.name.clone();
                    self.snapshot.send_modify(|s| s.kernel.language = language);
                }
                self.phase = Phase::Ready { tasks, sockets };
                tracing::info!(generation = self.generation, "kernel ready");
                self.set_state(KernelState::Idle, None);
                self.start_next().await;
            }
            KernelEvent::Started(Err(reason)) => {
                self.on_kernel_lost("startup_failed", reason);
            }
            KernelEvent::Exited(exit) => {
                let reason = exit_reason(&exit);
                let cause = if exit.out_of_memory {
                    "out_of_memory"
                } else {
                    "exited"
                };
                self.on_kernel_lost(cause, reason);
            }
            KernelEvent::HeartbeatLost => {
                self.on_kernel_lost(
                    "heartbeat",
                    "the kernel stopped answering heartbeats and was restarted".into(),
                );
            }
            KernelEvent::Message(channel, msg) => self.on_message(channel, *msg).await,
            KernelEvent::Oversized(o) => {
                tracing::debug!(bytes = o.bytes, msg_type = %o.msg_type, "oversized kernel message");
                let Some(buffer) = self.outputs.get_mut(&o.parent_msg_id) else {
                    return;
                };
                let now = Instant::now();
                let mut events = Vec::new();
                if let Some((name, prefix)) = o.stream_prefix {
                    let name = if name == "stderr" {
                        StreamName::Stderr
                    } else {
                        StreamName::Stdout
                    };
                    buffer.stream(now, name, &prefix, &mut events);
                }
                buffer.over_limit(now, &mut events);
                for e in events {
                    self.emit(e);
                }
            }
        }
    }

    // ---- executions ---------------------------------------------------------------------

    async fn on_command(&mut self, command: Command) -> Result<(), Refusal> {
        match command {
            Command::Execute {
                code,
                cell_id,
                request_id,
                stop_on_error,
                by,
            } => {
                if self.state == KernelState::Dead {
                    return Err((
                        ErrorCode::KernelDead,
                        "the kernel is dead; restart it first".into(),
                    ));
                }
                if self.queue.len() >= self.settings.max_queue {
                    return Err((
                        ErrorCode::QueueFull,
                        format!("{} executions are already queued", self.queue.len()),
                    ));
                }
                self.next_id += 1;
                let pending = Pending {
                    id: format!(
                        "x{}-{}",
                        self.next_id,
                        &uuid::Uuid::new_v4().simple().to_string()[..6]
                    ),
                    cell_id,
                    code,
                    by,
                    stop_on_error,
                };
                self.emit(ServerEvent::ExecutionQueued {
                    execution: summary(&pending, false),
                    request_id,
                });
                self.queue.push_back(pending);
                self.publish_queue();
                self.start_next().await;
                Ok(())
            }
            Command::InputReply {
                execution_id,
                value,
                by,
            } => {
                let Some(running) = self
                    .current
                    .as_mut()
                    .filter(|r| r.pending.id == execution_id)
                else {
                    return Err((
                        ErrorCode::NoPendingInput,
                        format!("no prompt is pending for {execution_id}"),
                    ));
                };
                let Some(request) = running.input.take() else {
                    return Err((
                        ErrorCode::NoPendingInput,
                        format!("no prompt is pending for {execution_id}"),
                    ));
                };
                let reply = InputReply {
                    value,
                    status: ReplyStatus::Ok,
                    error: None,
                }
                .as_child_of(&request);
                if let Phase::Ready { sockets, .. } = &mut self.phase
                    && let Err(error) = sockets.stdin.send(reply).await
                {
                    tracing::warn!(%error, "could not send input_reply");
                }
                self.emit(ServerEvent::InputResolved {
                    execution_id,
                    outcome: InputOutcome::Answered,
                    by: Some(by),
                });
                Ok(())
            }
            Command::Interrupt { by } => {
                tracing::info!(%by, "interrupt requested");
                self.abort_queue(&format!("interrupted by {by}"));
                self.begin_stop(StopCause::Interrupt).await;
                Ok(())
            }
            Command::Restart { by } => {
                tracing::info!(%by, "restart requested");
                metrics::counter!("middleman_kernel_restarts_total", "cause" => "requested")
                    .increment(1);
                self.stop_kernel();
                let reason = format!("the kernel was restarted by {by}");
                self.finish_current(ExecutionStatus::Aborted, Some(reason.clone()));
                self.abort_queue(&reason);
                self.crash_times.clear();
                self.set_state(KernelState::Restarting, Some(reason));
                self.start_kernel().await;
                Ok(())
            }
        }
    }

    async fn start_next(&mut self) {
        if self.current.is_some() || self.state == KernelState::Dead {
            return;
        }
        let Phase::Ready { sockets, .. } = &mut self.phase else {
            return;
        };
        let Some(pending) = self.queue.pop_front() else {
            return;
        };
        let mut request = ExecuteRequest::new(pending.code.clone());
        request.allow_stdin = true;
        // We keep our own queue and send one request at a time, so the kernel never aborts on
        // our behalf.
        request.stop_on_error = false;
        let message: JupyterMessage = request.into();
        let msg_id = message.header.msg_id.clone();
        if let Err(error) = sockets.shell.send(message).await {
            tracing::error!(%error, "could not send execute_request");
            self.queue.push_front(pending);
            self.on_kernel_lost("socket", format!("the kernel connection failed: {error}"));
            return;
        }
        let now = Instant::now();
        self.remember_output(
            msg_id.clone(),
            OutputBuffer::new(
                pending.id.clone(),
                self.settings.max_output_bytes,
                self.settings.stream_flush_interval,
            ),
        );
        self.emit(ServerEvent::ExecutionStarted {
            execution_id: pending.id.clone(),
        });
        self.current = Some(Running {
            pending,
            msg_id,
            started: now,
            deadline: now + self.settings.execution_timeout,
            reply: None,
            reply_at: None,
            idle: false,
            stopping: None,
            input: None,
        });
        self.publish_queue();
        self.set_state(KernelState::Busy, None);
    }

    fn remember_output(&mut self, msg_id: String, buffer: OutputBuffer) {
        self.outputs.insert(msg_id.clone(), buffer);
        self.output_order.push_back(msg_id);
        while self.output_order.len() > RECENT_OUTPUTS {
            if let Some(old) = self.output_order.pop_front() {
                self.outputs.remove(&old);
            }
        }
    }

    /// Interrupts the running execution; escalation to a kill happens in [`Self::on_timer`].
    async fn begin_stop(&mut self, cause: StopCause) {
        let grace = self.settings.interrupt_grace;
        let by_message = self.settings.spec.interrupt_by_message();
        let Some(running) = self.current.as_mut() else {
            return;
        };
        if running.stopping.is_some() {
            return;
        }
        running.stopping = Some((cause, Instant::now() + grace));
        let cancelled = running.input.take().map(|_| running.pending.id.clone());
        match &mut self.phase {
            Phase::Ready { sockets, .. } if by_message => {
                if let Err(error) = sockets.control.send(InterruptRequest {}.into()).await {
                    tracing::warn!(%error, "could not send interrupt_request");
                }
            }
            Phase::Ready { .. } | Phase::Starting { .. } => {
                self.launcher.signal(self.generation, Signal::SIGINT)
            }
            Phase::Down => {}
        }
        if let Some(execution_id) = cancelled {
            self.emit(ServerEvent::InputResolved {
                execution_id,
                outcome: InputOutcome::Cancelled,
                by: None,
            });
        }
    }

    fn abort_queue(&mut self, reason: &str) {
        let aborted: Vec<Pending> = self.queue.drain(..).collect();
        for p in aborted {
            metrics::counter!("middleman_executions_total", "status" => "aborted").increment(1);
            self.emit(ServerEvent::ExecutionFinished {
                execution_id: p.id,
                status: ExecutionStatus::Aborted,
                execution_count: None,
                duration_ms: 0,
                reason: Some(reason.to_owned()),
            });
        }
        self.publish_queue();
    }

    /// Ends the running execution with `status` (overridden by an interrupt or timeout in
    /// progress), flushing its output first.
    fn finish_current(&mut self, status: ExecutionStatus, reason: Option<String>) {
        let Some(running) = self.current.take() else {
            return;
        };
        let mut events = Vec::new();
        if let Some(buffer) = self.outputs.get_mut(&running.msg_id) {
            buffer.flush(Instant::now(), &mut events);
            metrics::counter!("middleman_output_bytes_total").increment(buffer.used());
        }
        for e in events {
            self.emit(e);
        }
        if running.input.is_some() {
            self.emit(ServerEvent::InputResolved {
                execution_id: running.pending.id.clone(),
                outcome: InputOutcome::Cancelled,
                by: None,
            });
        }
        let (status, reason) = match (running.stopping, status) {
            (
                Some((StopCause::Interrupt, _)),
                ExecutionStatus::Error | ExecutionStatus::Aborted,
            ) => (ExecutionStatus::Interrupted, Some("interrupted".to_owned())),
            (Some((StopCause::Interrupt, _)), ExecutionStatus::KernelDied) => (
                ExecutionStatus::Interrupted,
                Some(reason.unwrap_or_else(|| "interrupted".into())),
            ),
            (
                Some((StopCause::Timeout, _)),
                ExecutionStatus::Error | ExecutionStatus::Aborted | ExecutionStatus::KernelDied,
            ) => (
                ExecutionStatus::TimedOut,
                Some(format!(
                    "the execution ran longer than its limit of {} s{}",
                    self.settings.execution_timeout.as_secs(),
                    reason.map(|r| format!("; {r}")).unwrap_or_default()
                )),
            ),
            (_, s) => (s, reason),
        };
        let elapsed = running.started.elapsed();
        metrics::counter!("middleman_executions_total", "status" => status_label(status))
            .increment(1);
        metrics::histogram!("middleman_execution_duration_seconds").record(elapsed.as_secs_f64());
        self.emit(ServerEvent::ExecutionFinished {
            execution_id: running.pending.id.clone(),
            status,
            execution_count: running.reply.map(|(_, c)| c),
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            reason,
        });
        let stop_rest = match status {
            ExecutionStatus::Error => running.pending.stop_on_error,
            ExecutionStatus::Interrupted | ExecutionStatus::TimedOut => true,
            _ => false,
        };
        if stop_rest {
            self.abort_queue(&format!(
                "an earlier execution ended: {}",
                status_label(status)
            ));
        }
        self.publish_queue();
    }

    async fn maybe_finish(&mut self) {
        let Some(running) = &self.current else { return };
        let (Some((status, _)), true) = (&running.reply, running.idle) else {
            return;
        };
        let status = match status {
            ReplyStatus::Ok => ExecutionStatus::Ok,
            ReplyStatus::Error => ExecutionStatus::Error,
            _ => ExecutionStatus::Aborted,
        };
        self.finish_current(status, None);
        if self.queue.is_empty() && matches!(self.phase, Phase::Ready { .. }) {
            self.set_state(KernelState::Idle, None);
        }
        self.start_next().await;
    }

    async fn on_message(&mut self, channel: Channel, msg: JupyterMessage) {
        let parent = msg
            .parent_header
            .as_ref()
            .map(|h| h.msg_id.clone())
            .unwrap_or_default();
        let is_current = self.current.as_ref().is_some_and(|r| r.msg_id == parent);
        match (channel, msg.content) {
            (Channel::Shell, JupyterMessageContent::ExecuteReply(reply)) if is_current => {
                if let Some(r) = self.current.as_mut() {
                    r.reply = Some((
                        reply.status,
                        u64::try_from(reply.execution_count.value()).unwrap_or(0),
                    ));
                    r.reply_at = Some(Instant::now());
                }
                self.maybe_finish().await;
            }
            (Channel::IoPub, JupyterMessageContent::Status(status))
                if is_current && status.execution_state == ExecutionState::Idle =>
            {
                if let Some(r) = self.current.as_mut() {
                    r.idle = true;
                }
                self.maybe_finish().await;
            }
            (Channel::IoPub, JupyterMessageContent::Status(_)) => {}
            (Channel::Stdin, JupyterMessageContent::InputRequest(request)) if is_current => {
                let mut events = Vec::new();
                if let Some(buffer) = self.outputs.get_mut(&parent) {
                    buffer.flush(Instant::now(), &mut events);
                }
                for e in events {
                    self.emit(e);
                }
                let Some(running) = self.current.as_mut() else {
                    return;
                };
                let execution_id = running.pending.id.clone();
                let prompt_msg = JupyterMessage {
                    zmq_identities: msg.zmq_identities,
                    header: msg.header,
                    parent_header: msg.parent_header,
                    metadata: msg.metadata,
                    content: JupyterMessageContent::InputRequest(request.clone()),
                    buffers: Vec::new(),
                    channel: None,
                };
                if running.stopping.is_some() {
                    // Nobody will answer a prompt of an execution being stopped.
                    return;
                }
                running.input = Some(prompt_msg);
                metrics::counter!("middleman_input_requests_total").increment(1);
                self.emit(ServerEvent::InputRequest {
                    execution_id,
                    prompt: request.prompt,
                    password: request.password,
                });
            }
            (Channel::IoPub, content) => self.on_output(&parent, content),
            _ => {}
        }
    }

    fn on_output(&mut self, parent: &str, content: JupyterMessageContent) {
        let Some(buffer) = self.outputs.get_mut(parent) else {
            return;
        };
        let now = Instant::now();
        let mut events = Vec::new();
        match content {
            JupyterMessageContent::StreamContent(s) => {
                let name = match s.name {
                    jupyter_protocol::Stdio::Stderr => StreamName::Stderr,
                    _ => StreamName::Stdout,
                };
                buffer.stream(now, name, &s.text, &mut events);
            }
            JupyterMessageContent::DisplayData(d) => {
                let display_id = d.transient.and_then(|t| t.display_id);
                buffer.rich(
                    now,
                    Output::DisplayData {
                        data: media_map(&d.data),
                        metadata: d.metadata,
                        display_id,
                    },
                    &mut events,
                );
            }
            JupyterMessageContent::ExecuteResult(r) => {
                let execution_count = u64::try_from(r.execution_count.value()).unwrap_or(0);
                buffer.rich(
                    now,
                    Output::ExecuteResult {
                        execution_count,
                        data: media_map(&r.data),
                        metadata: r.metadata,
                    },
                    &mut events,
                );
            }
            JupyterMessageContent::ErrorOutput(e) => {
                buffer.rich(
                    now,
                    Output::Error {
                        ename: e.ename,
                        evalue: e.evalue,
                        traceback: e.traceback,
                    },
                    &mut events,
                );
            }
            JupyterMessageContent::UpdateDisplayData(u) => {
                if let Some(id) = u.transient.display_id {
                    buffer.update_display(now, id, media_map(&u.data), u.metadata, &mut events);
                }
            }
            JupyterMessageContent::ClearOutput(c) => buffer.clear(now, c.wait, &mut events),
            _ => {}
        }
        for e in events {
            self.emit(e);
        }
    }

    // ---- timers -------------------------------------------------------------------------

    fn next_timer(&self) -> Option<Instant> {
        let flush = self
            .outputs
            .values()
            .filter_map(OutputBuffer::flush_at)
            .min();
        let exec = self.current.as_ref().map(|r| {
            let limit = match r.stopping {
                Some((_, escalate_at)) => escalate_at,
                None => r.deadline,
            };
            match r.reply_at {
                Some(at) if !r.idle => limit.min(at + IDLE_GRACE),
                _ => limit,
            }
        });
        [flush, exec, self.restart_at].into_iter().flatten().min()
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let mut events = Vec::new();
        for buffer in self.outputs.values_mut() {
            if buffer.flush_at().is_some_and(|t| t <= now) {
                buffer.flush(now, &mut events);
            }
        }
        for e in events {
            self.emit(e);
        }
        if self.restart_at.is_some_and(|t| t <= now) {
            self.restart_at = None;
            self.start_kernel().await;
        }
        let Some(running) = &self.current else { return };
        if !running.idle && running.reply_at.is_some_and(|at| at + IDLE_GRACE <= now) {
            // The reply came but the idle status never did (a PUB socket drops messages past
            // its high-water mark): do not leave the execution, and everyone queued behind it,
            // waiting for the wall-clock limit.
            tracing::warn!(execution = %running.pending.id, "no idle status after the reply; finishing the execution");
            if let Some(r) = self.current.as_mut() {
                r.idle = true;
            }
            self.maybe_finish().await;
            return;
        }
        match running.stopping {
            None if running.deadline <= now => {
                tracing::warn!(execution = %running.pending.id, "execution timed out; interrupting");
                self.abort_queue("an earlier execution timed out");
                self.begin_stop(StopCause::Timeout).await;
            }
            Some((cause, escalate_at)) if escalate_at <= now => {
                tracing::warn!(execution = %running.pending.id, ?cause, "kernel ignored the interrupt; restarting it");
                let label = if cause == StopCause::Timeout {
                    "timeout"
                } else {
                    "interrupt"
                };
                metrics::counter!("middleman_kernel_restarts_total", "cause" => label).increment(1);
                let reason = format!(
                    "the code did not stop within {} s of the interrupt, so the kernel was restarted",
                    self.settings.interrupt_grace.as_secs_f64()
                );
                self.stop_kernel();
                self.finish_current(ExecutionStatus::KernelDied, Some(reason.clone()));
                self.abort_queue(&reason);
                self.set_state(KernelState::Restarting, Some(reason));
                self.start_kernel().await;
            }
            _ => {}
        }
    }

    // ---- shutdown -----------------------------------------------------------------------

    async fn shutdown(&mut self, agent_rx: &mut mpsc::Receiver<AgentEvent>) {
        tracing::info!("shutting the kernel down");
        self.abort_queue("middleman is shutting down");
        self.finish_current(
            ExecutionStatus::Aborted,
            Some("middleman is shutting down".into()),
        );
        if let Phase::Ready { sockets, .. } = &mut self.phase {
            let request: JupyterMessage = ShutdownRequest { restart: false }.into();
            if sockets.control.send(request).await.is_ok() {
                // Give the kernel a moment to exit cleanly, then kill whatever is left.
                let generation = self.generation;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(event) = agent_rx.recv().await {
                        match event {
                            AgentEvent::Event(AgentReport::Exited { generation: g, .. })
                                if g == generation =>
                            {
                                break;
                            }
                            AgentEvent::Closed(_) => break,
                            _ => {}
                        }
                    }
                })
                .await;
            }
        }
        self.stop_kernel();
        self.set_state(KernelState::Dead, Some("middleman shut down".into()));
    }
}

/// What a kernel's end is shown as: the cause, and for a failing exit code the last line it
/// wrote to stderr.
fn exit_reason(exit: &KernelExit) -> String {
    let reason = exit.describe();
    match exit.hint() {
        Some(hint) if exit.code.is_some_and(|c| c != 0) => format!("{reason}: {hint}"),
        _ => reason,
    }
}

fn summary(p: &Pending, running: bool) -> ExecutionSummary {
    ExecutionSummary {
        id: p.id.clone(),
        cell_id: p.cell_id.clone(),
        by: p.by.clone(),
        code: p.code.clone(),
        running,
    }
}

fn media_map(media: &jupyter_protocol::Media) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(media) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn status_label(s: ExecutionStatus) -> &'static str {
    match s {
        ExecutionStatus::Ok => "ok",
        ExecutionStatus::Error => "error",
        ExecutionStatus::Aborted => "aborted",
        ExecutionStatus::Interrupted => "interrupted",
        ExecutionStatus::TimedOut => "timed_out",
        ExecutionStatus::KernelDied => "kernel_died",
    }
}

fn state_label(s: KernelState) -> &'static str {
    match s {
        KernelState::Starting => "starting",
        KernelState::Idle => "idle",
        KernelState::Busy => "busy",
        KernelState::Restarting => "restarting",
        KernelState::Dead => "dead",
    }
}
