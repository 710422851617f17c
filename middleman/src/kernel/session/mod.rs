//! The kernel session: one actor task owns the kernel (through the agent), its sockets, the
//! execution queue and the output buffers, so nothing else touches them and there are no locks.
//! The hub talks to it through [`SessionHandle`]: commands in; what happens goes out as
//! [`ServerEvent`]s on an [`EventSender`] (to the hub, which orders, records and fans them out).
//!
//! The actor's parts live beside it: lifecycle.rs (starting, stopping, the one restart path and
//! the crash window), executions.rs (the queue, stopping, ending an execution), status.rs (how
//! an execution's status is resolved, pure), iopub.rs (IOPub messages as outputs, pure),
//! refusal.rs. This file keeps the actor's state, its loop, its commands, the kernel's messages
//! and its timers: one state machine, whose transitions read best next to each other (over 500
//! lines for that reason).

mod comms;
mod executions;
mod iopub;
mod lifecycle;
mod refusal;
mod side;
mod status;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use jupyter_protocol::{
    ExecutionState, InputReply, JupyterMessage, JupyterMessageContent, ReplyStatus, ShutdownRequest,
};
use kernel_sandbox::{AgentEvent, Event as AgentReport, KernelExit};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use self::comms::{CommEvent, CommParent, CommReceiver, Forward};
use self::iopub::IopubOutput;
use self::lifecycle::{CrashWindow, Restart};
pub use self::refusal::SessionRefusal;
pub use self::side::{AnswerSender, Question, Quiet};
use self::status::{StopCause, state_label};
use super::launcher::{Launcher, LauncherSettings};
use super::sockets::{Channel, KernelEvent, KernelSockets, Tagged};
use super::{KernelSpec, RuntimeDir};
use crate::output::OutputBuffer;
use crate::protocol::{
    ExecutionStatus, ExecutionSummary, InputOutcome, KernelDescription, KernelState, ServerEvent,
    StreamName,
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
        /// Sent on the main shell right after the execution's request, so the kernel handles
        /// it after this code and before anything queued behind it (a checkpoint of what the
        /// cell defined).
        then: Option<Quiet>,
        /// The request's Jupyter options and where its reply goes (a Jupyter client's run).
        options: ExecOptions,
    },
    /// Sent on the main shell now (after the execution in progress, before those queued), or
    /// as soon as a kernel is ready: a checkpoint's restore, or the last save at shutdown.
    Quiet(Quiet),
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
    /// A side question (completion, inspection, a table page): answered on `answer`, beside
    /// any running cell when the kernel has a subshell; refused while it is busy otherwise.
    Ask {
        question: Question,
        answer: AnswerSender,
    },
    /// A Jupyter client's comm message, to the kernel's main shell as it is.
    Forward(Forward),
}

/// An execution's Jupyter options, as a Jupyter client asked them (the document's own runs
/// take the default: visible, in the history, allowed to prompt, no reply wanted).
#[derive(Debug)]
pub struct ExecOptions {
    pub silent: bool,
    pub store_history: bool,
    pub allow_stdin: bool,
    pub user_expressions: serde_json::Map<String, serde_json::Value>,
    /// Only whoever ran it may answer its prompts (a Jupyter client's `input()`, which Jupyter
    /// sends to the asking client alone; a `getpass()` is no collaborator's to answer).
    pub own_prompts: bool,
    /// Gets the kernel's `execute_reply` content as it came (payload, user expressions).
    pub reply: Option<oneshot::Sender<serde_json::Value>>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            silent: false,
            store_history: true,
            allow_stdin: true,
            user_expressions: serde_json::Map::new(),
            own_prompts: false,
            reply: None,
        }
    }
}

/// Why a command was refused.
pub type Refusal = SessionRefusal;

/// Where the session's events go, in the order they happen. Unbounded because the actor must
/// never wait for its reader: the hub waits for the actor when it sends commands, so a full
/// channel could stall both. What flows is bounded upstream (outputs are coalesced and capped).
pub type EventSender = mpsc::UnboundedSender<ServerEvent>;

/// The kernel's state, for readiness and status checks.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    pub kernel_state: KernelState,
    pub kernel: KernelDescription,
    /// The running kernel's `kernel_info_reply` content, as it answered at start.
    pub kernel_info: Option<std::sync::Arc<serde_json::Value>>,
}

/// Cheap-to-clone handle on a running session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    commands: mpsc::Sender<(Command, oneshot::Sender<Result<(), Refusal>>)>,
    snapshot: watch::Receiver<SessionSnapshot>,
    comms: tokio::sync::broadcast::Sender<std::sync::Arc<CommEvent>>,
}

impl SessionHandle {
    /// Sends a command and waits for it to be accepted or refused.
    pub async fn send(&self, command: Command) -> Result<(), Refusal> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((command, tx))
            .await
            .map_err(|_| SessionRefusal::ShuttingDown)?;
        rx.await.unwrap_or(Err(SessionRefusal::ShuttingDown))
    }

    /// A watch of the snapshot (readiness checks).
    pub fn watch(&self) -> watch::Receiver<SessionSnapshot> {
        self.snapshot.clone()
    }

    /// The kernel's comm messages from now on (see comms.rs).
    pub fn comms(&self) -> CommReceiver {
        self.comms.subscribe()
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
            kernel_info: None,
        });
        // Small: each queued message may be large, and the actor drains faster than kernels write.
        let (kernel_tx, kernel_rx) = mpsc::channel(64);
        let (agent_tx, agent_rx) = mpsc::channel(64);
        let crashes = CrashWindow::new(settings.max_restarts, settings.restart_window);
        let (comms, _) = tokio::sync::broadcast::channel(comms::CHANNEL_CAPACITY);
        let actor = Actor {
            comms: comms.clone(),
            forwarded: comms::Forwarded::default(),
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
            crashes,
            restart_at: None,
            next_id: 0,
            waiting: side::Waiting::default(),
            quiet: Vec::new(),
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
                comms,
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
    then: Option<Quiet>,
    options: ExecOptions,
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
    /// The kernel may publish this execution's result after its idle status (Deno's), the code
    /// may show one, and none has come yet: a successful end waits briefly for it.
    awaits_late_result: bool,
    /// Until when the execution, replied and idle, waits for that result
    /// ([`LATE_RESULT_GRACE`]).
    settle_until: Option<Instant>,
    stopping: Option<(StopCause, Instant)>,
    input: Option<JupyterMessage>,
    /// Where the answer of the quiet request carried by this execution goes, and what it asked
    /// (a checkpoint save in the request's metadata, executions.rs).
    save: Option<(AnswerSender, serde_json::Value)>,
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

/// The ready kernel's next shell or IOPub message; never while no kernel is ready.
async fn next_kernel_message(phase: &mut Phase) -> KernelEvent {
    match phase {
        Phase::Ready { sockets, .. } => sockets.next_event().await,
        Phase::Down | Phase::Starting { .. } => std::future::pending().await,
    }
}

/// How long an execution whose reply arrived waits for the kernel's idle status.
const IDLE_GRACE: Duration = Duration::from_secs(5);

/// How long a successful execution without a result, replied and idle, waits for a result a
/// kernel publishes after its idle status. Deno's kernel sends `execute_result` from another
/// task than its status, and about one in eight came after `idle` (by up to ~6 ms, measured);
/// a result that comes later still reaches the cell, after the execution's end. Cells that
/// cannot show a value (their last statement a declaration or a `console` call) do not wait.
const LATE_RESULT_GRACE: Duration = Duration::from_millis(25);

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
    crashes: CrashWindow,
    restart_at: Option<Instant>,
    next_id: u64,
    /// Side questions sent to the kernel and not yet answered.
    waiting: side::Waiting,
    /// Quiet requests waiting for a kernel to be ready.
    quiet: Vec<Quiet>,
    /// The kernel's comm messages, for Jupyter connections.
    comms: tokio::sync::broadcast::Sender<std::sync::Arc<CommEvent>>,
    /// Jupyter clients' comm messages passed to the kernel.
    forwarded: comms::Forwarded,
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
                event = next_kernel_message(&mut self.phase) => self.on_kernel_event(event).await,
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
                self.restart(Restart::Lost {
                    cause: "launch_failed",
                    reason: format!("the kernel could not be started: {reason}"),
                })
                .await;
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
                    self.restart(Restart::Lost {
                        cause: "launch_failed",
                        reason: format!("the kernel's sandbox agent stopped ({why})"),
                    })
                    .await;
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
        self.announce_state(state, reason, None);
    }

    /// Sets and announces the kernel's state; `kernel_session` names a new kernel session
    /// (a kernel process that just became ready: nothing earlier cells ran is in it).
    fn announce_state(
        &mut self,
        state: KernelState,
        reason: Option<String>,
        kernel_session: Option<String>,
    ) {
        if self.state == state && reason.is_none() && kernel_session.is_none() {
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
        self.emit(ServerEvent::KernelStatus {
            state,
            reason,
            kernel_session,
        });
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

    // ---- kernel lifecycle: lifecycle.rs -----------------------------------------------

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
                    let raw = serde_json::to_value(info).ok().map(std::sync::Arc::new);
                    self.snapshot.send_modify(|s| {
                        s.kernel.language = language;
                        s.kernel_info = raw;
                    });
                }
                self.phase = Phase::Ready { tasks, sockets };
                // Unique across Middlemen too: a document that comes back on another pod
                // must not take the new kernel for the one its cells ran in.
                let kernel_session = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                tracing::info!(generation = self.generation, %kernel_session, "kernel ready");
                self.announce_state(KernelState::Idle, None, Some(kernel_session));
                for quiet in std::mem::take(&mut self.quiet) {
                    self.send_quiet(quiet).await;
                }
                self.start_next().await;
            }
            KernelEvent::Started(Err(reason)) => {
                self.restart(Restart::Lost {
                    cause: "startup_failed",
                    reason: reason.to_string(),
                })
                .await;
            }
            KernelEvent::Exited(exit) => {
                let heap = super::heap::exhausted(&exit, self.launcher.js_heap_mib());
                let cause = if exit.out_of_memory || heap.is_some() {
                    "out_of_memory"
                } else {
                    "exited"
                };
                let reason = heap.unwrap_or_else(|| exit_reason(&exit));
                self.restart(Restart::Lost { cause, reason }).await;
            }
            KernelEvent::HeartbeatLost => {
                self.restart(Restart::Lost {
                    cause: "heartbeat",
                    reason: "the kernel stopped answering heartbeats and was restarted".into(),
                })
                .await;
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
                then,
                options,
            } => {
                if self.state == KernelState::Dead {
                    return Err(SessionRefusal::KernelDead);
                }
                if self.queue.len() >= self.settings.max_queue {
                    return Err(SessionRefusal::QueueFull {
                        queued: self.queue.len(),
                    });
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
                    then,
                    options,
                };
                let queued = summary(&pending, false);
                self.queue.push_back(pending);
                // What can start now goes to the kernel before anyone is told: its request
                // leaves ahead of the clients' frames, which then go out in one burst.
                let started = self.send_next().await;
                self.emit(ServerEvent::ExecutionQueued {
                    execution: queued,
                    request_id,
                });
                match started {
                    Some(execution_id) => self.announce_started(execution_id),
                    None => self.publish_queue(),
                }
                Ok(())
            }
            Command::Quiet(quiet) => {
                if self.state == KernelState::Dead {
                    return Err(SessionRefusal::KernelDead);
                }
                if matches!(self.phase, Phase::Ready { .. }) {
                    self.send_quiet(quiet).await;
                } else {
                    self.quiet.push(quiet);
                }
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
                    return Err(SessionRefusal::NoPendingInput {
                        execution_id: execution_id.clone(),
                    });
                };
                if running.pending.options.own_prompts && running.pending.by != by {
                    return Err(SessionRefusal::PromptForOther {
                        by: running.pending.by.clone(),
                    });
                }
                let Some(request) = running.input.take() else {
                    return Err(SessionRefusal::NoPendingInput {
                        execution_id: execution_id.clone(),
                    });
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
                self.restart(Restart::Requested { by }).await;
                Ok(())
            }
            Command::Forward(forward) => {
                let Phase::Ready { sockets, .. } = &mut self.phase else {
                    return Err(SessionRefusal::NotReady);
                };
                let outgoing = super::wire::Outgoing {
                    msg_type: forward.msg_type,
                    msg_id: Some(&forward.msg_id),
                    content: &forward.content,
                    metadata: &forward.metadata,
                    buffers: &forward.buffers,
                };
                match sockets.forward(&outgoing).await {
                    Ok(()) => {
                        self.forwarded.remember(forward.msg_id);
                        Ok(())
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not pass a comm message on");
                        Err(SessionRefusal::NotReady)
                    }
                }
            }
            Command::Ask { question, answer } => {
                let Phase::Ready { sockets, .. } = &mut self.phase else {
                    return Err(SessionRefusal::NotReady);
                };
                if sockets.subshell.is_none() && self.current.is_some() {
                    return Err(SessionRefusal::Busy);
                }
                if !self.waiting.has_room() {
                    return Err(SessionRefusal::TooManyQuestions);
                }
                match sockets.ask(question.msg_type, &question.content).await {
                    Ok(msg_id) => {
                        self.waiting.insert(msg_id, answer);
                        Ok(())
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not ask the kernel");
                        Err(SessionRefusal::NotReady)
                    }
                }
            }
        }
    }

    /// Sends a quiet request on the main shell; if that fails, its asker sees the answer
    /// channel close.
    async fn send_quiet(&mut self, quiet: Quiet) {
        let Phase::Ready { sockets, .. } = &mut self.phase else {
            return;
        };
        match sockets
            .ask_main(quiet.question.msg_type, &quiet.question.content)
            .await
        {
            Ok(msg_id) => self.waiting.insert(msg_id, quiet.answer),
            Err(error) => tracing::warn!(%error, "could not send a quiet request"),
        }
    }

    async fn on_message(&mut self, channel: Channel, msg: JupyterMessage) {
        let parent = msg
            .parent_header
            .as_ref()
            .map(|h| h.msg_id.clone())
            .unwrap_or_default();
        if channel == Channel::Shell && self.waiting.is_waiting(&parent) {
            let content = serde_json::to_value(&msg.content).unwrap_or_default();
            self.waiting.answer(&parent, content);
            return;
        }
        if channel == Channel::IoPub && self.is_comm_traffic(&msg.content, &parent) {
            self.publish_comm(msg, &parent);
            return;
        }
        let is_current = self.current.as_ref().is_some_and(|r| r.msg_id == parent);
        match (channel, msg.content) {
            (Channel::Shell, JupyterMessageContent::ExecuteReply(reply)) if is_current => {
                if let Some(r) = self.current.as_mut() {
                    if let Some(answer) = r.save.take() {
                        executions::answer_save(answer, &reply.status);
                    }
                    if let Some(to) = r.pending.options.reply.take() {
                        let _ = to.send(serde_json::to_value(&reply).unwrap_or_default());
                    }
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
            (Channel::IoPub, JupyterMessageContent::ExecuteInput(input)) if is_current => {
                if let (Some(r), Ok(count)) = (
                    self.current.as_ref(),
                    u64::try_from(input.execution_count.value()),
                ) {
                    self.emit(ServerEvent::ExecutionInput {
                        execution_id: r.pending.id.clone(),
                        execution_count: count,
                    });
                }
            }
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
            (Channel::IoPub, content) => {
                if self.on_output(&parent, content)
                    && let Some(r) = self.current.as_mut().filter(|r| r.msg_id == parent)
                {
                    r.awaits_late_result = false;
                    if r.settle_until.is_some() {
                        self.maybe_finish().await;
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether an IOPub message is for the comm side channel: a comm message, or the status
    /// of a forwarded comm message.
    fn is_comm_traffic(&self, content: &JupyterMessageContent, parent: &str) -> bool {
        match content {
            JupyterMessageContent::CommOpen(_)
            | JupyterMessageContent::CommMsg(_)
            | JupyterMessageContent::CommClose(_) => true,
            JupyterMessageContent::Status(_) => self.forwarded.contains(parent),
            _ => false,
        }
    }

    /// Sends a kernel comm message to the Jupyter connections, within the output cap.
    fn publish_comm(&mut self, msg: JupyterMessage, parent: &str) {
        let content = serde_json::to_value(&msg.content).unwrap_or_default();
        if comms::size(&content, &msg.buffers) > self.settings.max_output_bytes {
            metrics::counter!("middleman_comm_messages_dropped_total").increment(1);
            return;
        }
        let parent = if let Some(r) = self.current.as_ref().filter(|r| r.msg_id == parent) {
            CommParent::Execution(r.pending.id.clone())
        } else if let Some(buffer) = self.outputs.get(parent) {
            CommParent::Execution(buffer.execution_id().to_owned())
        } else if self.forwarded.contains(parent) {
            CommParent::Request(parent.to_owned())
        } else {
            CommParent::None
        };
        let event = CommEvent {
            msg_type: msg.header.msg_type.clone(),
            content,
            metadata: msg.metadata,
            buffers: msg.buffers,
            parent,
        };
        // Nobody listening (no Jupyter client) is fine.
        let _ = self.comms.send(std::sync::Arc::new(event));
    }

    /// Records an output; `true` when it was an execution's result or error.
    fn on_output(&mut self, parent: &str, content: JupyterMessageContent) -> bool {
        let Some(buffer) = self.outputs.get_mut(parent) else {
            return false;
        };
        let Some(output) = iopub::output_of(content) else {
            return false;
        };
        let result = matches!(
            &output,
            IopubOutput::Rich(
                crate::protocol::Output::ExecuteResult { .. }
                    | crate::protocol::Output::Error { .. }
            )
        );
        let now = Instant::now();
        let mut events = Vec::new();
        match output {
            IopubOutput::Stream { name, text } => buffer.stream(now, name, &text, &mut events),
            IopubOutput::Rich(output) => buffer.rich(now, output, &mut events),
            IopubOutput::Update {
                display_id,
                data,
                metadata,
            } => buffer.update_display(now, display_id, data, metadata, &mut events),
            IopubOutput::Clear { wait } => buffer.clear(now, wait, &mut events),
        }
        for e in events {
            self.emit(e);
        }
        result
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
            let limit = match r.reply_at {
                Some(at) if !r.idle => limit.min(at + IDLE_GRACE),
                _ => limit,
            };
            r.settle_until.map_or(limit, |settle| limit.min(settle))
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
        if running.settle_until.is_some_and(|t| t <= now) {
            self.maybe_finish().await;
            return;
        }
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
                self.restart(Restart::Unresponsive(cause)).await;
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
