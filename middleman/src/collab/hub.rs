//! The hub: one lock over the document's state, and the one way in for connections. It composes
//! the parts in this module (the event log, presence, edits, the dependency graph, the execution
//! mirror, the saver) with the reactor (`graph::reactor`), and it is the only path to the kernel
//! session: commands are decided under the lock, queued in an outbox, and delivered in that
//! order, so an interrupt can never overtake a run decided before it.
//!
//! It is one file because it is the composition: each operation takes the lock, asks the parts,
//! announces what changed and carries out the reactor's decisions; splitting it further would
//! split those steps from the lock they need.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Refusal;
use super::assist;
use super::dependencies::Dependencies;
use super::edits::{EditRequest, Edits};
use super::log::{EventLog, Frame};
use super::mirror::Mirror;
use super::presence::{Presence, Who};
use super::saver::{Pending, Saver};
use super::yproto::{self, AwarenessEntry, YMessage};

mod checkpoints;
use crate::checkpoint::Checkpoints;
use crate::document::persist::{self, DocumentStore};
use crate::document::{CellKind, CellState, Notebook};
use crate::graph::reactor::{self, Decision, Event, Reactor};
use crate::kernel::{Command, ExecOptions, Quiet, SessionHandle, SessionRefusal, SessionSnapshot};
use crate::protocol::{
    AssistAnswer, AssistRefusal, Limits, PROTOCOL_VERSION, Reactivity, ServerEvent, ServerFrame,
    Snapshot, StateCause,
};

/// How the hub is sized.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Frames a connection may fall behind before it is resynchronised.
    pub client_queue: usize,
    /// Sequenced frames kept for reconnecting clients, by count and by bytes.
    pub replay_frames: usize,
    pub replay_bytes: usize,
    /// Collaborators allowed at once.
    pub max_clients: usize,
    /// Edits are saved at most this long after they happen.
    pub save_debounce: Duration,
    /// Awareness states not renewed for this long are removed (y-protocols uses 30 s).
    pub awareness_timeout: Duration,
    /// Largest the shared text may grow to (sum of the updates applied since it was loaded).
    pub max_document_bytes: usize,
    pub limits: Limits,
}

/// What a joining (or resynchronised) connection sends before live frames.
#[derive(Debug)]
pub struct Joined {
    pub client: u64,
    pub frames: broadcast::Receiver<Frame>,
    /// Welcome, then missed frames (on resume), then the Yjs sync opening.
    pub opening: Vec<Message>,
    /// Live frames with `seq <= last_seq` are already accounted for.
    pub last_seq: u64,
}

/// What a [`Hub::subscribe`]d connection starts from.
#[derive(Debug)]
pub struct Subscribed {
    pub client: u64,
    pub frames: broadcast::Receiver<Frame>,
    /// The kernel session now (later ones come in `kernel_status` events).
    pub kernel_session: String,
}

/// A run of a document cell, as asked.
#[derive(Debug)]
pub struct CellRun {
    pub cell_id: String,
    pub request_id: Option<String>,
    pub stop_on_error: bool,
    pub by: String,
    pub options: ExecOptions,
}

/// A command for the kernel session, decided under the lock.
#[derive(Debug)]
struct Outgoing {
    command: Command,
    answer: Answer,
}

/// Who hears how the session answered a command.
#[derive(Debug)]
enum Answer {
    /// A connection: a refusal is its reply.
    Caller(oneshot::Sender<Result<(), Refusal>>),
    /// The reactor, for its run of this cell: a refusal ends the run.
    Reactor(String),
    /// Nobody (the names of a deleted cell): a refusal is only logged.
    Nobody,
}

/// At most this many reactive runs wait to be told they are over.
const MAX_RUN_WAITERS: usize = 256;

#[derive(Debug)]
struct State {
    log: EventLog,
    edits: Edits,
    presence: Presence,
    deps: Dependencies,
    mirror: Mirror,
    reactor: Reactor,
    /// Commands for the session, in the order they were decided.
    outbox: VecDeque<Outgoing>,
    /// The document id once loaded (nothing is saved before that).
    document: Option<String>,
    /// Loaded, and its kernel state restore sent: connections may join.
    ready: bool,
    /// Changed since it was last written.
    dirty: bool,
    /// Who started the reactive run in progress (its executions say "<name> (graph)").
    plan_by: String,
    /// The `request_id`s of the reactive runs asked for with one, told `run_finished` when the
    /// graph has nothing more planned or running.
    run_waiters: Vec<String>,
    /// How the kernel session named here was resumed from the checkpoint.
    resumed: Option<(String, crate::protocol::Resume)>,
    /// The kernel's state is being restored: commands wait in the outbox, so that none runs
    /// before the restore and the cells it runs again (checkpoints.rs).
    resuming: bool,
}

/// The document hub (see the module docs).
pub struct Hub {
    state: Mutex<State>,
    session: SessionHandle,
    /// Held while delivering the outbox, so commands reach the session in the order decided.
    delivery: tokio::sync::Mutex<()>,
    saver: Saver,
    settings: HubSettings,
    clients: AtomicUsize,
    next_client: AtomicU64,
    /// The kernel's checkpoints, when they are kept.
    checkpoints: Option<std::sync::Arc<Checkpoints>>,
}

impl std::fmt::Debug for Hub {
    /// Not the state: its replay buffer alone may hold megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.clients())
            .field("saver", &self.saver)
            .finish_non_exhaustive()
    }
}

fn yjs(message: &YMessage) -> Message {
    Message::Binary(Bytes::from(message.encode()))
}

impl Hub {
    /// A hub for one document, saved to `store` (when given), whose kernel is `session`. Feed
    /// it the session's events with [`Hub::follow_kernel`].
    pub fn new(
        settings: HubSettings,
        store: Option<DocumentStore>,
        session: SessionHandle,
        checkpoints: Option<std::sync::Arc<Checkpoints>>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                log: EventLog::new(
                    settings.client_queue,
                    settings.replay_frames,
                    settings.replay_bytes,
                ),
                edits: Edits::new(settings.max_document_bytes),
                presence: Presence::default(),
                // Code cells are analysed in the kernel's language (Deno's: TypeScript),
                // which its kernelspec names.
                deps: Dependencies::new(crate::graph::Language::of(
                    &session.watch().borrow().kernel.language,
                )),
                mirror: Mirror::default(),
                reactor: Reactor::default(),
                outbox: VecDeque::new(),
                document: None,
                ready: false,
                dirty: false,
                plan_by: String::new(),
                run_waiters: Vec::new(),
                resumed: None,
                resuming: false,
            }),
            session,
            delivery: tokio::sync::Mutex::new(()),
            saver: Saver::new(store, settings.save_debounce),
            settings,
            clients: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            checkpoints,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to serve (every mutation is a single step), so keep going rather than poison everyone.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel as the session last reported it (readiness, status, the welcome).
    pub fn kernel(&self) -> SessionSnapshot {
        self.session.watch().borrow().clone()
    }

    /// A watch of the kernel as the session reports it (a Jupyter client waits on it for the
    /// kernel's info while it starts).
    pub fn session_watch(&self) -> tokio::sync::watch::Receiver<SessionSnapshot> {
        self.session.watch()
    }

    /// Asks the kernel a side question and waits (at most [`ASSIST_DEADLINE`]) for the answer.
    /// Never queued behind a cell: the session refuses at once what it cannot ask now.
    pub async fn assist(&self, ask: &assist::Ask) -> AssistAnswer {
        let kind = ask
            .cell_id()
            .and_then(|id| self.lock().edits.source(id).ok())
            .map_or(CellKind::Code, |(kind, _)| kind);
        let (tx, rx) = oneshot::channel();
        let command = Command::Ask {
            question: assist::question(ask, kind),
            answer: tx,
        };
        if let Err(refusal) = self.session.send(command).await {
            let reason = match refusal {
                SessionRefusal::Busy => AssistRefusal::Busy,
                SessionRefusal::TooManyQuestions => AssistRefusal::RateLimited,
                _ => AssistRefusal::NoKernel,
            };
            return assist::refused(reason, refusal.to_string());
        }
        match tokio::time::timeout(ASSIST_DEADLINE, rx).await {
            Ok(Ok(content)) => assist::answer(ask, &content),
            Ok(Err(_)) => assist::refused(AssistRefusal::NoKernel, "the kernel went away"),
            Err(_) => assist::refused(
                AssistRefusal::Timeout,
                format!(
                    "the kernel did not answer within {} s",
                    ASSIST_DEADLINE.as_secs()
                ),
            ),
        }
    }

    /// The kernel's comm messages from now on (Jupyter connections; not the document's).
    pub fn comms(&self) -> crate::kernel::CommReceiver {
        self.session.comms()
    }

    /// Passes a Jupyter client's comm message to the kernel.
    pub async fn forward(&self, forward: crate::kernel::Forward) -> Result<(), Refusal> {
        self.session
            .send(Command::Forward(forward))
            .await
            .map_err(Refusal::from)
    }

    /// Asks the kernel a Jupyter shell request as it is (a Jupyter client's completion,
    /// inspection, history...) and waits at most [`ASSIST_DEADLINE`] for the reply's content.
    /// Refused at once, as [`Self::assist`] is, when the kernel cannot be asked now.
    pub async fn ask_raw(&self, msg_type: &'static str, content: Value) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        let command = Command::Ask {
            question: crate::kernel::Question { msg_type, content },
            answer: tx,
        };
        self.session
            .send(command)
            .await
            .map_err(|refusal| refusal.to_string())?;
        match tokio::time::timeout(ASSIST_DEADLINE, rx).await {
            Ok(Ok(content)) => Ok(content),
            Ok(Err(_)) => Err("the kernel went away".into()),
            Err(_) => Err(format!(
                "the kernel did not answer within {} s",
                ASSIST_DEADLINE.as_secs()
            )),
        }
    }

    /// Connections currently joined.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Loads `document` from the store the first time it is asked for. Until this succeeds no
    /// one joins, so an unreachable store can never lead to an empty document overwriting the
    /// saved one.
    #[tracing::instrument(skip_all, fields(%document))]
    pub async fn ensure_loaded(self: &std::sync::Arc<Self>, document: &str) -> Result<(), Refusal> {
        if self.lock().ready {
            return Ok(());
        }
        let _loading = self.saver.loading().await;
        if self.lock().ready {
            return Ok(());
        }
        let loaded = self.saver.load(document).await?;
        {
            let mut st = self.lock();
            if let Some(nb) = &loaded {
                tracing::info!(document, cells = nb.len(), "document restored");
            }
            st.edits.restore(loaded);
            st.document = Some(document.to_owned());
            let sources = st.edits.nb.sources();
            self.regraph(&mut st, &sources);
            // What the saved cells show is not in this kernel (if it is up; else when it is).
            self.new_kernel(&mut st);
        }
        self.deliver().await;
        // The kernel's names come back before anyone joins, ahead of any execution.
        if let Some(checkpoints) = &self.checkpoints {
            self.resume(checkpoints.clone(), document).await;
        }
        self.lock().ready = true;
        Ok(())
    }

    // ---- connections ----------------------------------------------------------------------

    /// Admits a connection (or refuses: the document is full). `resume` is the session and
    /// last `seq` a reconnecting client saw.
    pub fn join(
        &self,
        who: &Who,
        document: &str,
        resume: Option<(&str, u64)>,
    ) -> Result<Joined, Refusal> {
        let client = self.admit(who)?;
        let st = self.lock();
        Ok(self.opening(&st, client, who, document, resume))
    }

    /// Admits a connection that speaks another protocol (Jupyter's): it is present like any
    /// collaborator and reads the live events, with no welcome, snapshot or Yjs opening.
    pub fn subscribe(&self, who: &Who) -> Result<Subscribed, Refusal> {
        let client = self.admit(who)?;
        let st = self.lock();
        Ok(Subscribed {
            client,
            frames: st.log.subscribe(),
            kernel_session: st.mirror.kernel_session.clone(),
        })
    }

    /// Takes a seat (or refuses: the document is full) and announces who took it.
    fn admit(&self, who: &Who) -> Result<u64, Refusal> {
        let max = self.settings.max_clients;
        if self
            .clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refusal::DocumentFull { max });
        }
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("middleman_collaborators").set(self.clients() as f64);
        let mut st = self.lock();
        let info = st.presence.join(client, who);
        st.log.emit(ServerEvent::Presence(info));
        Ok(client)
    }

    /// A fresh snapshot for a connection that fell behind.
    pub fn resync(&self, client: u64, who: &Who, document: &str) -> Joined {
        let st = self.lock();
        self.opening(&st, client, who, document, None)
    }

    /// The welcome and what follows it. Taken under the lock with the subscription, so the
    /// client's view is "snapshot (or missed events) at `last_seq`, then every later event".
    fn opening(
        &self,
        st: &State,
        client: u64,
        who: &Who,
        document: &str,
        resume: Option<(&str, u64)>,
    ) -> Joined {
        let frames = st.log.subscribe();
        let missed = resume.and_then(|(session, since)| {
            st.log.missed(session, since).map(|frames| (since, frames))
        });
        let snapshot = missed.is_none().then(|| {
            let deferred = large_outputs(st.edits.nb.runtimes(), SNAPSHOT_OUTPUT_BUDGET);
            let cells = st.edits.nb.cells_deferring(&deferred);
            Box::new(Snapshot {
                kernel_state: st.mirror.kernel_state,
                executions: st.mirror.executions.clone(),
                cells,
                presence: st.presence.people(),
                input: st.mirror.input.clone(),
                graph: st.deps.graph.cells().to_vec(),
                reactivity: reactivity_of(&st.edits.nb),
                graph_rule: st.edits.nb.graph_rule,
                kernel_session: st.mirror.kernel_session.clone(),
                resumed: st
                    .resumed
                    .as_ref()
                    .filter(|(session, _)| *session == st.mirror.kernel_session)
                    .map(|(_, r)| r.clone()),
            })
        });
        let welcome = ServerEvent::Welcome {
            protocol: PROTOCOL_VERSION,
            session: st.log.session().to_owned(),
            client,
            document: document.to_owned(),
            user: who.user.clone(),
            name: who.name.clone(),
            role: who.role.to_string(),
            kernel: self.kernel().kernel,
            limits: self.settings.limits.clone(),
            last_seq: st.log.seq(),
            resumed_from: missed.as_ref().map(|(since, _)| *since),
            snapshot,
        };
        let mut opening = vec![Message::Text(Utf8Bytes::from(
            ServerFrame {
                seq: None,
                event: welcome,
            }
            .to_json(),
        ))];
        if let Some((_, frames)) = missed {
            metrics::counter!("middleman_resumes_total").increment(1);
            opening.extend(frames);
        } else {
            // A Yjs peer with nothing gets everything; one with state asks for the rest.
            opening.push(yjs(&YMessage::SyncStep2(st.edits.nb.encode_state())));
        }
        opening.push(yjs(&YMessage::SyncStep1(st.edits.nb.state_vector())));
        if let Some(update) = st.presence.awareness_update() {
            opening.push(yjs(&YMessage::Awareness(update)));
        }
        Joined {
            client,
            frames,
            opening,
            last_seq: st.log.seq(),
        }
    }

    /// A connection left: its presence and awareness go with it.
    pub fn leave(&self, client: u64) {
        self.clients.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("middleman_collaborators").set(self.clients() as f64);
        let mut st = self.lock();
        let (left, gone) = st.presence.leave(client);
        if left {
            st.log.emit(ServerEvent::PresenceLeft { client });
        }
        relay_awareness(&st, &gone);
    }

    /// Removes awareness states their clients stopped renewing.
    pub fn expire_awareness(&self) {
        let mut st = self.lock();
        let gone = st.presence.expire(self.settings.awareness_timeout);
        relay_awareness(&st, &gone);
    }

    // ---- client messages ------------------------------------------------------------------

    /// A Yjs binary frame from a connection. Returns the frames to send back to it alone.
    pub async fn on_yjs(
        &self,
        client: u64,
        who: &Who,
        bytes: &[u8],
    ) -> Result<Vec<Message>, Refusal> {
        let message = YMessage::decode(bytes).map_err(Refusal::BadYjs)?;
        let replies = {
            let mut st = self.lock();
            match message {
                YMessage::SyncStep1(sv) => {
                    let diff = st.edits.nb.encode_diff(&sv).map_err(Refusal::Document)?;
                    vec![yjs(&YMessage::SyncStep2(diff))]
                }
                YMessage::SyncStep2(update) | YMessage::Update(update) => {
                    if !who.role.can_edit() {
                        return Err(Refusal::ViewerEdit);
                    }
                    st.edits.apply_update(&update)?;
                    st.log.relay(client, &YMessage::Update(update));
                    self.after_edit(&mut st);
                    Vec::new()
                }
                YMessage::Awareness(update) => {
                    let entries =
                        yproto::decode_awareness(&update).map_err(Refusal::BadAwareness)?;
                    let accepted = st.presence.publish(client, who, entries)?;
                    if !accepted.is_empty() {
                        st.log.relay(
                            client,
                            &YMessage::Awareness(yproto::encode_awareness(&accepted)),
                        );
                    }
                    Vec::new()
                }
                YMessage::QueryAwareness => {
                    vec![yjs(&YMessage::Awareness(st.presence.all_awareness()))]
                }
            }
        };
        self.deliver().await;
        Ok(replies)
    }

    /// A cell operation from an editor (the connection checked the role). Returns the reply
    /// for the sender, if any.
    pub async fn edit(&self, request: EditRequest) -> Result<Option<ServerEvent>, Refusal> {
        let reply = {
            let mut st = self.lock();
            let st = &mut *st;
            st.edits.room_for(&request)?;
            match request {
                EditRequest::Insert {
                    index,
                    kind,
                    source,
                    request_id,
                } => {
                    let cell_id = self.mutate(st, |nb| nb.insert_cell(index, kind, &source))?;
                    Some(ServerEvent::CellCreated {
                        cell_id,
                        request_id,
                    })
                }
                EditRequest::Delete { cell_id } => {
                    self.mutate(st, |nb| nb.delete_cell(&cell_id))?;
                    None
                }
                EditRequest::Move { cell_id, index } => {
                    self.mutate(st, |nb| nb.move_cell(&cell_id, index))?;
                    None
                }
                EditRequest::SetKind { cell_id, kind } => {
                    let was = st.edits.source(&cell_id)?.0;
                    self.mutate(st, |nb| nb.set_kind(&cell_id, kind))?;
                    if was.runs() && was != kind {
                        st.log.emit(ServerEvent::OutputsCleared { cell_id });
                    }
                    None
                }
                EditRequest::SetSource { cell_id, source } => {
                    self.mutate(st, |nb| nb.set_source(&cell_id, &source))?;
                    None
                }
                EditRequest::ClearOutputs { cell_id } => {
                    for id in st.edits.clearing(cell_id)? {
                        if st.edits.nb.clear_outputs(&id).is_ok() {
                            st.log.emit(ServerEvent::OutputsCleared { cell_id: id });
                        }
                    }
                    self.touched(st);
                    None
                }
            }
        };
        self.deliver().await;
        Ok(reply)
    }

    /// Where connection `client` is (anyone may say, viewers included).
    pub fn presence(
        &self,
        client: u64,
        cell_id: Option<String>,
        cursor: Option<Value>,
    ) -> Result<(), Refusal> {
        let mut st = self.lock();
        if let Some(info) = st.presence.moved(client, cell_id, cursor)? {
            st.log.emit(ServerEvent::Presence(info));
        }
        Ok(())
    }

    /// Runs a code cell's current source (queued by `by`).
    #[tracing::instrument(skip_all, fields(cell = %cell_id))]
    pub async fn execute_cell(
        &self,
        cell_id: String,
        request_id: Option<String>,
        stop_on_error: bool,
        by: String,
    ) -> Result<(), Refusal> {
        let answer = {
            let mut st = self.lock();
            let run = CellRun {
                cell_id,
                request_id,
                stop_on_error,
                by,
                options: ExecOptions::default(),
            };
            self.queue_cell(&mut st, run)?
        };
        self.answer(answer).await
    }

    /// Puts `code` in cell `cell_id` (appended when the document has no such cell) and runs
    /// it, as one step: a Jupyter client's visible execution, which lands in the document.
    #[tracing::instrument(skip_all, fields(cell = %run.cell_id))]
    pub async fn execute_source(&self, run: CellRun, code: &str) -> Result<(), Refusal> {
        let answer = {
            let mut st = self.lock();
            let st = &mut *st;
            match st.edits.source(&run.cell_id) {
                Ok((kind, source)) => {
                    if !kind.runs() {
                        self.mutate(st, |nb| nb.set_kind(&run.cell_id, CellKind::Code))?;
                    }
                    if source != code {
                        self.mutate(st, |nb| nb.set_source(&run.cell_id, code))?;
                    }
                }
                Err(_) => {
                    st.edits.room_for(&EditRequest::Insert {
                        index: 0,
                        kind: CellKind::Code,
                        source: code.to_owned(),
                        request_id: None,
                    })?;
                    self.mutate(st, |nb| {
                        nb.insert_cell_with_id(nb.len(), &run.cell_id, CellKind::Code, code)
                    })?;
                }
            }
            self.queue_cell(st, run)?
        };
        self.answer(answer).await
    }

    /// Queues a run of a cell's current source (the lock held).
    fn queue_cell(
        &self,
        st: &mut State,
        run: CellRun,
    ) -> Result<oneshot::Receiver<Result<(), Refusal>>, Refusal> {
        let (kind, source) = st.edits.source(&run.cell_id)?;
        let Some(code) = kernel_code(kind, source) else {
            return Err(Refusal::NotCode {
                cell: run.cell_id,
                kind,
            });
        };
        if let Some(reason) = reactor::not_runnable(&document_of(st), &run.cell_id) {
            return Err(reason.into());
        }
        let then = self.save_after(st, &run.cell_id);
        let command = Command::Execute {
            code,
            cell_id: Some(run.cell_id),
            request_id: run.request_id,
            stop_on_error: run.stop_on_error,
            by: run.by,
            then,
            options: run.options,
        };
        Ok(ask(st, command))
    }

    /// Runs code outside the document (a console; a Jupyter client's silent run).
    pub async fn execute(
        &self,
        code: String,
        request_id: Option<String>,
        stop_on_error: bool,
        by: String,
        options: ExecOptions,
    ) -> Result<(), Refusal> {
        let command = Command::Execute {
            code,
            cell_id: None,
            request_id,
            stop_on_error,
            by,
            then: None,
            options,
        };
        let answer = ask(&mut self.lock(), command);
        self.answer(answer).await
    }

    /// Answers the pending prompt of `execution_id` (the first answer wins).
    pub async fn input_reply(
        &self,
        execution_id: String,
        value: String,
        by: String,
    ) -> Result<(), Refusal> {
        let command = Command::InputReply {
            execution_id,
            value,
            by,
        };
        let answer = ask(&mut self.lock(), command);
        self.answer(answer).await
    }

    /// Interrupts the running execution, aborts the queue, and cancels the rest of a reactive
    /// run (`docs/reactivity.md`).
    #[tracing::instrument(skip_all, fields(%by))]
    pub async fn interrupt(&self, by: String) -> Result<(), Refusal> {
        let answer = {
            let mut st = self.lock();
            self.react(&mut st, Event::Interrupted);
            ask(&mut st, Command::Interrupt { by })
        };
        self.answer(answer).await
    }

    /// Restarts the kernel (also revives a dead one).
    #[tracing::instrument(skip_all, fields(%by))]
    pub async fn restart(&self, by: String) -> Result<(), Refusal> {
        let answer = ask(&mut self.lock(), Command::Restart { by });
        self.answer(answer).await
    }

    /// Runs every stale cell in dependency order (asked by `by`); `request_id` is told when
    /// the run is over.
    pub async fn run_stale(&self, by: String, request_id: Option<String>) -> Result<(), Refusal> {
        self.plan(by, Event::RunStale, request_id).await
    }

    /// Runs every code cell once, in dependency order (asked by `by`); `request_id` is told
    /// when the run is over.
    pub async fn run_all(&self, by: String, request_id: Option<String>) -> Result<(), Refusal> {
        self.plan(by, Event::RunAll, request_id).await
    }

    /// A reactive run that `by` asked for: its executions are theirs.
    #[tracing::instrument(skip_all, fields(%by, ?event))]
    async fn plan(
        &self,
        by: String,
        event: Event<'_>,
        request_id: Option<String>,
    ) -> Result<(), Refusal> {
        {
            let mut st = self.lock();
            // Bounded: a run asked for with an id once this many wait is refused, not left
            // untold (the asker may try again).
            if let Some(id) = request_id
                && !st.run_waiters.contains(&id)
            {
                if st.run_waiters.len() >= MAX_RUN_WAITERS {
                    return Err(Refusal::TooManyRunWaiters {
                        max: MAX_RUN_WAITERS,
                    });
                }
                st.run_waiters.push(id);
            }
            st.plan_by = by;
            self.react(&mut st, event);
        }
        self.deliver().await;
        Ok(())
    }

    /// Sets the document's reactivity mode.
    pub fn set_reactivity(&self, mode: Reactivity) {
        let mut st = self.lock();
        let lazy = mode == Reactivity::Lazy;
        if st.edits.nb.lazy != lazy {
            st.edits.nb.lazy = lazy;
            st.log.emit(ServerEvent::Reactivity { mode });
            self.touched(&mut st);
        }
    }

    /// The current outputs of `cell_ids` (for `fetch_outputs`: what a snapshot deferred).
    pub fn outputs(&self, cell_ids: &[String]) -> Result<Vec<ServerEvent>, Refusal> {
        if cell_ids.len() > MAX_FETCH_CELLS {
            return Err(Refusal::TooManyCells {
                max: MAX_FETCH_CELLS,
            });
        }
        let st = self.lock();
        let runtimes = st.edits.nb.runtimes();
        cell_ids
            .iter()
            .map(|id| {
                // Every cell has a runtime entry (the document adds one with the cell).
                let outputs = runtimes
                    .get(id)
                    .ok_or_else(|| crate::document::DocumentError::NoSuchCell(id.clone()))?
                    .outputs
                    .clone();
                Ok(ServerEvent::CellOutputs {
                    cell_id: id.clone(),
                    outputs,
                })
            })
            .collect()
    }

    /// Sets how the document's graph resolves names defined in several cells; the graph is
    /// rebuilt, and cells that now read from other cells go stale.
    pub async fn set_graph_rule(&self, rule: crate::graph::GraphRule) {
        {
            let mut st = self.lock();
            if st.edits.nb.graph_rule == rule {
                return;
            }
            st.edits.nb.graph_rule = rule;
            st.log.emit(ServerEvent::GraphRule { rule });
            let sources = st.edits.nb.sources();
            self.regraph(&mut st, &sources);
            self.touched(&mut st);
        }
        self.deliver().await;
    }

    /// Disables or enables a cell.
    pub fn set_disabled(&self, cell_id: &str, disabled: bool) -> Result<(), Refusal> {
        let mut st = self.lock();
        let r = st.edits.nb.runtime_mut(cell_id)?;
        if r.disabled != disabled {
            r.disabled = disabled;
            st.log.emit(ServerEvent::CellDisabled {
                cell_id: cell_id.to_owned(),
                disabled,
            });
            self.touched(&mut st);
        }
        Ok(())
    }

    /// The document as `.ipynb` JSON.
    pub fn export(&self) -> Value {
        let kernel = self.kernel().kernel;
        self.lock().edits.export(&kernel)
    }

    /// Replaces the document with an imported notebook; collaborators see the change live.
    #[tracing::instrument(skip_all, fields(cells = imported.len()))]
    pub async fn import(&self, imported: &Notebook) {
        {
            let mut st = self.lock();
            // Replacing never fails; an error here would only mean nothing changed.
            let _ = self.mutate(&mut st, |nb| {
                nb.replace_all(imported);
                Ok(())
            });
            for cell in st.edits.nb.cells() {
                st.log.emit(ServerEvent::CellState {
                    cell_id: cell.id,
                    state: cell.runtime.state,
                    execution_count: cell.runtime.execution_count,
                    cause: cell.runtime.cause,
                    last_run: cell.runtime.last_run,
                });
            }
            // An imported notebook's outputs were made by some other kernel.
            self.new_kernel(&mut st);
        }
        self.deliver().await;
    }

    // ---- the document -----------------------------------------------------------------------

    /// Applies a server-side change to the CRDT and sends it to every Yjs peer.
    fn mutate<T>(
        &self,
        st: &mut State,
        change: impl FnOnce(&mut Notebook) -> Result<T, crate::document::DocumentError>,
    ) -> Result<T, Refusal> {
        let (out, update) = st.edits.change(change)?;
        if let Some(update) = update {
            // Sent to everyone, the requester included: its Yjs copy has not seen this edit.
            st.log.relay(0, &YMessage::Update(update));
        }
        self.after_edit(st);
        Ok(out)
    }

    /// After any change to the CRDT: keep one cell, announce a changed cell list, bring the
    /// graph up to date, save.
    fn after_edit(&self, st: &mut State) {
        if let Some(update) = st.edits.keep_one_cell() {
            st.log.relay(0, &YMessage::Update(update));
        }
        // One pass over the document serves the cell list and the graph.
        let sources = st.edits.nb.sources();
        if let Some(cells) = st.edits.cell_list(&sources) {
            st.log.emit(ServerEvent::Cells { cells });
        }
        self.regraph(st, &sources);
        self.touched(st);
    }

    /// Re-analyses the cells whose source changed, announces a changed graph, and lets the
    /// reactor decide what edits and deletions mean.
    fn regraph(&self, st: &mut State, sources: &[(String, CellKind, String)]) {
        let rule = st.edits.nb.graph_rule;
        let Some(changed) = st.deps.update(sources, rule) else {
            return;
        };
        if changed.changed {
            let cells = st.deps.graph.cells().to_vec();
            st.log.emit(ServerEvent::Graph { cells });
        }
        for (cell, source) in &changed.edited {
            self.react(st, Event::Edited { cell, source });
        }
        if !changed.reparented.is_empty() {
            self.react(
                st,
                Event::Reparented {
                    cells: &changed.reparented,
                },
            );
        }
        if !changed.deleted.is_empty() {
            self.react(
                st,
                Event::Deleted {
                    cells: &changed.deleted,
                    names: &changed.names,
                    dependents: &changed.dependents,
                },
            );
        }
    }

    /// Marks the cells whose results are not in the kernel running now (after a restart, or
    /// when the document came back on a new kernel); nothing before the kernel is up.
    fn new_kernel(&self, st: &mut State) {
        if st.mirror.kernel_session.is_empty() {
            return;
        }
        let session = st.mirror.kernel_session.clone();
        if self.react(st, Event::NewKernel { session: &session }) {
            self.touched(st);
        }
    }

    fn touched(&self, st: &mut State) {
        if st.document.is_some() {
            st.dirty = true;
            self.saver.changed();
        }
    }

    // ---- the reactor and the kernel -------------------------------------------------------

    /// Asks the reactor about `event` and carries out its decisions (returns whether there
    /// were any): states are set and announced now; runs and name removals join the outbox.
    fn react(&self, st: &mut State, event: Event<'_>) -> bool {
        let document = reactor::Document {
            graph: &st.deps.graph,
            cells: st.edits.nb.runtimes(),
            mode: reactivity_of(&st.edits.nb),
        };
        let decisions = st.reactor.decide(&document, event);
        let decided = !decisions.is_empty();
        for decision in decisions {
            match decision {
                Decision::SetState { cell, state, cause } => {
                    set_cell_state(st, &cell, state, cause);
                }
                Decision::Run { cell, .. } => match st
                    .edits
                    .source(&cell)
                    .map(|(kind, source)| kernel_code(kind, source))
                {
                    Ok(Some(code)) => st.outbox.push_back(Outgoing {
                        command: Command::Execute {
                            then: self.save_after(st, &cell),
                            code,
                            cell_id: Some(cell.clone()),
                            request_id: None,
                            // A failure holds back its dependents only (the reactor sees to
                            // that), not the queue.
                            stop_on_error: false,
                            by: if st.plan_by.is_empty() {
                                "graph".to_owned()
                            } else {
                                format!("{} (graph)", st.plan_by)
                            },
                            options: ExecOptions::default(),
                        },
                        answer: Answer::Reactor(cell),
                    }),
                    // The graph holds only code and SQL cells, so this does not happen; should
                    // it, the run must not wait for a cell that will never finish.
                    _ => {
                        tracing::warn!(%cell, "the reactor chose a cell that does not run");
                        self.react(st, Event::Refused { cell: &cell });
                    }
                },
                Decision::Forget { names } => {
                    let Some(code) = st.deps.language().forget_code(&names) else {
                        continue;
                    };
                    st.outbox.push_back(Outgoing {
                        command: Command::Execute {
                            code,
                            cell_id: None,
                            request_id: None,
                            stop_on_error: false,
                            by: "graph (deleted cell)".into(),
                            then: None,
                            options: ExecOptions {
                                silent: true,
                                store_history: false,
                                ..ExecOptions::default()
                            },
                        },
                        answer: Answer::Nobody,
                    });
                }
            }
        }
        if !st.run_waiters.is_empty() && !st.reactor.running() {
            for request_id in std::mem::take(&mut st.run_waiters) {
                st.log.emit(ServerEvent::RunFinished { request_id });
            }
        }
        decided
    }

    /// The checkpoint of what `cell` defines, saved after its run (when checkpoints are kept).
    fn save_after(&self, st: &State, cell: &str) -> Option<Quiet> {
        let checkpoints = self.checkpoints.as_ref()?;
        let document = st.document.as_deref()?;
        let defs = &st.deps.graph.get(cell)?.defs;
        checkpoints.after_cell(document, cell, defs)
    }

    /// Delivers the outbox, then waits for the session's answer to the caller's command.
    async fn answer(&self, answer: oneshot::Receiver<Result<(), Refusal>>) -> Result<(), Refusal> {
        self.deliver().await;
        // The outbox was delivered, so the answer was sent, unless the hub is going away.
        answer.await.unwrap_or(Err(Refusal::Kernel(
            crate::kernel::SessionRefusal::ShuttingDown,
        )))
    }

    /// Sends the outbox to the session, in order. Whoever calls it delivers every command
    /// queued so far, its own included; the others wait their turn and find the outbox empty.
    async fn deliver(&self) {
        let _turn = self.delivery.lock().await;
        loop {
            let next = {
                let mut st = self.lock();
                if st.resuming {
                    return;
                }
                st.outbox.pop_front()
            };
            let Some(next) = next else {
                return;
            };
            let result = self.session.send(next.command).await.map_err(Refusal::from);
            match next.answer {
                Answer::Caller(reply) => {
                    // The caller may be gone (its connection closed): nothing to tell.
                    let _ = reply.send(result);
                }
                Answer::Reactor(cell) => {
                    if let Err(refusal) = result {
                        tracing::info!(%refusal, %cell, "a reactive execution was refused; the run ends");
                        let mut st = self.lock();
                        self.react(&mut st, Event::Refused { cell: &cell });
                    }
                }
                Answer::Nobody => {
                    if let Err(refusal) = result {
                        tracing::info!(%refusal, "the graph's kernel command was refused");
                    }
                }
            }
        }
    }

    /// Applies the kernel session's events to the document until the session ends (its last
    /// events, such as the executions a shutdown aborted, included).
    pub async fn follow_kernel(&self, mut events: mpsc::UnboundedReceiver<ServerEvent>) {
        while let Some(event) = events.recv().await {
            if self.on_kernel_event(event) {
                self.deliver().await;
            }
        }
    }

    /// Records one kernel event, announces it and what it implies, and lets the reactor decide
    /// what a finished run means. Returns whether there are commands to deliver.
    fn on_kernel_event(&self, event: ServerEvent) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let previous_kernel = st.mirror.kernel_session.clone();
        let applied = st.mirror.apply(&mut st.edits.nb, &event, now_ms);
        if applied.new_kernel.is_some()
            && !previous_kernel.is_empty()
            && let (Some(checkpoints), Some(document)) = (&self.checkpoints, &st.document)
        {
            // A restart: the new kernel starts empty, and so does the checkpoint.
            checkpoints.reset(document);
        }
        if let Some((cell, code)) = &applied.queued {
            self.react(st, Event::Queued { cell, code });
        }
        st.log.emit(event);
        for e in applied.follow {
            st.log.emit(e);
        }
        if applied.new_kernel.is_some() {
            self.new_kernel(st);
        }
        if let Some((cell, status, by)) = &applied.finished {
            // A person's run that finishes starts the graph's: its runs are theirs.
            if !st.reactor.in_flight(cell) {
                st.plan_by.clone_from(by);
            }
            self.react(
                st,
                Event::Finished {
                    cell,
                    status: *status,
                },
            );
        }
        if applied.changed {
            self.touched(st);
        }
        !st.outbox.is_empty()
    }

    // ---- persistence ----------------------------------------------------------------------

    /// Saves edits at most `save_debounce` after they happen, until `shutdown`; then saves
    /// what is left.
    pub async fn run_saver(&self, shutdown: CancellationToken) {
        self.saver
            .run(
                shutdown,
                || self.take_changes(),
                || self.lock().dirty = true,
            )
            .await;
    }

    /// Saves now if anything changed (at shutdown).
    pub async fn save_now(&self) {
        self.saver
            .save(|| self.take_changes(), || self.lock().dirty = true)
            .await;
    }

    /// The document to write, if it changed since the last write (it is then clean).
    fn take_changes(&self) -> Option<Pending> {
        let mut st = self.lock();
        let document = st.document.clone().filter(|_| st.dirty)?;
        st.dirty = false;
        Some((document, persist::encode(&st.edits.nb)))
    }
}

/// What the reactor reads of the state.
/// How long a side question may wait for the kernel (sorting a large table for a page takes a
/// moment; a completion far less).
const ASSIST_DEADLINE: Duration = Duration::from_secs(10);

/// What the kernel runs for a cell of `kind`: a code cell's source, or the Python a SQL cell
/// becomes; `None` for cells that do not run.
fn kernel_code(kind: CellKind, source: String) -> Option<String> {
    match kind {
        CellKind::Code => Some(source),
        CellKind::Sql => Some(crate::sql::kernel_code(&source)),
        CellKind::Markdown | CellKind::Raw => None,
    }
}

fn document_of(st: &State) -> reactor::Document<'_> {
    reactor::Document {
        graph: &st.deps.graph,
        cells: st.edits.nb.runtimes(),
        mode: reactivity_of(&st.edits.nb),
    }
}

/// The outputs a welcome snapshot carries at most, in bytes of JSON; the largest are deferred
/// beyond it (`fetch_outputs`), so a document with megabytes of outputs opens as fast as a
/// small one.
const SNAPSHOT_OUTPUT_BUDGET: u64 = 256 * 1024;
/// A cell's outputs smaller than this always travel in the snapshot.
const SMALL_OUTPUTS: u64 = 4 * 1024;
/// Cells in one `fetch_outputs`.
const MAX_FETCH_CELLS: usize = 64;

/// The cells whose outputs a snapshot leaves out: the largest, until the rest fit in `budget`
/// bytes (sizes estimated without serialising, under the lock).
fn large_outputs(
    runtimes: &HashMap<String, crate::protocol::CellRuntime>,
    budget: u64,
) -> HashMap<String, crate::protocol::DeferredOutputs> {
    let mut sizes: Vec<(&String, u64, usize)> = runtimes
        .iter()
        .map(|(id, r)| {
            let bytes = r
                .outputs
                .iter()
                .map(|o| crate::output::output_size(o) as u64)
                .sum();
            (id, bytes, r.outputs.len())
        })
        .collect();
    let mut total: u64 = sizes.iter().map(|(_, b, _)| b).sum();
    let mut deferred = HashMap::new();
    if total <= budget {
        return deferred;
    }
    sizes.sort_by_key(|(_, bytes, _)| std::cmp::Reverse(*bytes));
    for (id, bytes, count) in sizes {
        if total <= budget || bytes < SMALL_OUTPUTS {
            break;
        }
        deferred.insert(
            id.clone(),
            crate::protocol::DeferredOutputs {
                count: u32::try_from(count).unwrap_or(u32::MAX),
                bytes,
            },
        );
        total -= bytes;
    }
    deferred
}

fn reactivity_of(nb: &Notebook) -> Reactivity {
    if nb.lazy {
        Reactivity::Lazy
    } else {
        Reactivity::Autorun
    }
}

/// Queues a connection's command; the receiver gets the session's answer once delivered.
fn ask(st: &mut State, command: Command) -> oneshot::Receiver<Result<(), Refusal>> {
    let (tx, rx) = oneshot::channel();
    st.outbox.push_back(Outgoing {
        command,
        answer: Answer::Caller(tx),
    });
    rx
}

/// Sets a cell's state and cause and announces them, if they changed.
fn set_cell_state(st: &mut State, cell: &str, state: CellState, cause: Option<StateCause>) {
    let Ok(r) = st.edits.nb.runtime_mut(cell) else {
        return;
    };
    if r.state == state && r.cause == cause {
        return;
    }
    r.state = state;
    r.cause.clone_from(&cause);
    let execution_count = r.execution_count;
    st.log.emit(ServerEvent::CellState {
        cell_id: cell.to_owned(),
        state,
        execution_count,
        cause,
        last_run: None,
    });
}

/// Relays the withdrawal of awareness states to everyone.
fn relay_awareness(st: &State, gone: &[AwarenessEntry]) {
    if !gone.is_empty() {
        st.log
            .relay(0, &YMessage::Awareness(yproto::encode_awareness(gone)));
    }
}
