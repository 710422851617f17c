use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::yproto::{self, AwarenessEntry, YMessage};
use crate::document::persist::{self, DocumentStore};
use crate::document::{CellKind, CellState, DocumentError, Notebook};
use crate::graph::{CellAnalysis, Graph, analyse};
use crate::kernel::{Command, EventSink, Refusal};
use crate::protocol::{
    CellHeader, ErrorCode, ExecutionStatus, ExecutionSummary, KernelDescription, KernelState,
    Limits, Output, PROTOCOL_VERSION, PendingInput, PresenceInfo, Reactivity, ServerEvent,
    ServerFrame, Snapshot,
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

/// One frame for every connection: serialised once, the bytes shared.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sequence number of a JSON event; 0 for Yjs binary frames, which are idempotent.
    pub seq: u64,
    /// The connection whose message caused it (0: the server); it is not echoed back.
    pub origin: u64,
    pub message: Message,
}

/// Who a connection is, from its token.
#[derive(Debug, Clone)]
pub struct Who {
    pub user: String,
    pub name: String,
    pub role: session_token::Role,
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

/// Longest awareness state (JSON) a client may publish.
const MAX_AWARENESS_STATE: usize = 8 * 1024;
/// Awareness client ids one connection may own (a browser tab uses one).
const MAX_AWARENESS_IDS: usize = 4;
/// Longest cursor (JSON) in a presence message.
const MAX_CURSOR_BYTES: usize = 1024;
/// Executions whose cells are remembered, so late output still lands on the right cell.
const RECENT_EXECUTIONS: usize = 64;

const COLORS: [&str; 12] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
    "#469990", "#800000", "#808000", "#000075",
];

fn color_of(user: &str) -> &'static str {
    let h = user.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    COLORS[h as usize % COLORS.len()]
}

struct Awareness {
    clock: u64,
    state: String,
    owner: u64,
    renewed: Instant,
}

struct State {
    seq: u64,
    nb: Notebook,
    headers: Vec<CellHeader>,
    kernel_state: KernelState,
    executions: Vec<ExecutionSummary>,
    exec_cells: HashMap<String, String>,
    exec_order: VecDeque<String>,
    clear_pending: HashSet<String>,
    input: Option<PendingInput>,
    replay: VecDeque<Frame>,
    replay_bytes: usize,
    presence: BTreeMap<u64, PresenceInfo>,
    awareness: HashMap<u64, Awareness>,
    /// The document id once loaded (nothing is saved before that).
    document: Option<String>,
    /// An upper bound of the CRDT's encoded size: its size when loaded plus every update since.
    crdt_bytes: usize,
    /// Each code cell's analysis, with the source it was made from.
    analyses: HashMap<String, (String, CellAnalysis)>,
    graph: Graph,
    /// The source each cell last started running with.
    last_run: HashMap<String, String>,
    /// Cells the graph will run, in order, one at a time (so that a failure can hold back
    /// exactly what depends on it), and the one queued now.
    plan: VecDeque<String>,
    in_flight: Option<String>,
    dirty: bool,
}

/// The document hub (see the module docs).
pub struct Hub {
    state: Mutex<State>,
    /// Executions the graph decides on go to the kernel session through this.
    reactor: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Command>>,
    frames: broadcast::Sender<Frame>,
    settings: HubSettings,
    store: Option<DocumentStore>,
    load: tokio::sync::Mutex<()>,
    save: Notify,
    clients: AtomicUsize,
    next_client: AtomicU64,
    session: String,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("session", &self.session)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn headers_of(nb: &Notebook) -> Vec<CellHeader> {
    nb.headers()
        .into_iter()
        .map(|(id, cell_type)| CellHeader { id, cell_type })
        .collect()
}

fn doc_refusal(e: &DocumentError) -> Refusal {
    let code = match e {
        DocumentError::NoSuchCell(_) => ErrorCode::NoSuchCell,
        DocumentError::BadUpdate(_) | DocumentError::BadNotebook(_) => ErrorCode::BadMessage,
        DocumentError::LastCell | DocumentError::OutOfRange { .. } => ErrorCode::InvalidEdit,
    };
    (code, e.to_string())
}

impl Hub {
    /// A hub for one document, saved to `store` (when given).
    pub fn new(settings: HubSettings, store: Option<DocumentStore>) -> Self {
        let (frames, _) = broadcast::channel(settings.client_queue.max(16));
        let nb = Notebook::new();
        Self {
            state: Mutex::new(State {
                seq: 0,
                headers: headers_of(&nb),
                nb,
                kernel_state: KernelState::Starting,
                executions: Vec::new(),
                exec_cells: HashMap::new(),
                exec_order: VecDeque::new(),
                clear_pending: HashSet::new(),
                input: None,
                replay: VecDeque::new(),
                replay_bytes: 0,
                presence: BTreeMap::new(),
                awareness: HashMap::new(),
                document: None,
                crdt_bytes: 0,
                analyses: HashMap::new(),
                graph: Graph::default(),
                last_run: HashMap::new(),
                plan: VecDeque::new(),
                in_flight: None,
                dirty: false,
            }),
            reactor: std::sync::OnceLock::new(),
            frames,
            settings,
            store,
            load: tokio::sync::Mutex::new(()),
            save: Notify::new(),
            clients: AtomicUsize::new(0),
            next_client: AtomicU64::new(1),
            session: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to serve (every mutation is a single step), so keep going rather than poison everyone.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This run's id (sequence numbers are comparable only within it).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Loads `document` from the store the first time it is asked for. Until this succeeds no
    /// one joins, so an unreachable store can never lead to an empty document overwriting the
    /// saved one.
    pub async fn ensure_loaded(&self, document: &str) -> Result<(), Refusal> {
        if self.lock().document.is_some() {
            return Ok(());
        }
        let _guard = self.load.lock().await;
        if self.lock().document.is_some() {
            return Ok(());
        }
        let loaded = match &self.store {
            Some(store) => store.load(document).await.map_err(|error| {
                tracing::error!(%error, document, "cannot load the document");
                metrics::counter!("middleman_document_load_errors_total").increment(1);
                (
                    ErrorCode::Unavailable,
                    "the document store is unavailable; try again shortly".to_owned(),
                )
            })?,
            None => None,
        };
        let mut st = self.lock();
        if let Some(mut nb) = loaded {
            nb.settle();
            tracing::info!(document, cells = nb.len(), "document restored");
            st.headers = headers_of(&nb);
            st.nb = nb;
        }
        st.crdt_bytes = st.nb.encode_state().len();
        st.document = Some(document.to_owned());
        self.regraph(&mut st);
        Ok(())
    }

    /// Connections currently joined.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    // ---- sequenced events -----------------------------------------------------------------

    fn emit(&self, st: &mut State, event: ServerEvent) {
        st.seq += 1;
        let json = Utf8Bytes::from(
            ServerFrame {
                seq: Some(st.seq),
                event,
            }
            .to_json(),
        );
        metrics::counter!("middleman_ws_frames_broadcast_total").increment(1);
        let frame = Frame {
            seq: st.seq,
            origin: 0,
            message: Message::Text(json.clone()),
        };
        st.replay_bytes += json.len();
        st.replay.push_back(frame.clone());
        while st.replay.len() > self.settings.replay_frames
            || (st.replay_bytes > self.settings.replay_bytes && st.replay.len() > 1)
        {
            if let Some(old) = st.replay.pop_front()
                && let Message::Text(t) = &old.message
            {
                st.replay_bytes -= t.len();
            }
        }
        // No subscribers is fine: nobody is connected.
        let _ = self.frames.send(frame);
    }

    fn emit_binary(&self, origin: u64, message: &YMessage) {
        let _ = self.frames.send(Frame {
            seq: 0,
            origin,
            message: Message::Binary(Bytes::from(message.encode())),
        });
    }

    fn touched(&self, st: &mut State) {
        if st.document.is_some() {
            st.dirty = true;
            self.save.notify_one();
        }
    }

    /// After any change to the CRDT: keep one cell, announce a changed cell list, save.
    fn after_edit(&self, st: &mut State) {
        if st.nb.is_empty() {
            let _ = self.mutate(st, |nb| nb.insert_cell(0, CellKind::Code, "").map(|_| ()));
            return;
        }
        // One pass over the document serves the cell list and the graph.
        let sources = st.nb.sources();
        let headers: Vec<CellHeader> = sources
            .iter()
            .map(|(id, kind, _)| CellHeader {
                id: id.clone(),
                cell_type: *kind,
            })
            .collect();
        if headers != st.headers {
            st.headers = headers.clone();
            self.emit(st, ServerEvent::Cells { cells: headers });
        }
        self.regraph_from(st, &sources);
        self.touched(st);
    }

    /// Applies a server-side change to the CRDT and sends it to every Yjs peer.
    fn mutate<T>(
        &self,
        st: &mut State,
        change: impl FnOnce(&mut Notebook) -> Result<T, DocumentError>,
    ) -> Result<T, DocumentError> {
        let before = st.nb.state_vector();
        let out = change(&mut st.nb)?;
        let update = st.nb.encode_diff(&before)?;
        st.crdt_bytes += update.len();
        // An empty update encodes as two zero bytes.
        if update.len() > 2 {
            // Sent to everyone, the requester included: its Yjs copy has not seen this edit.
            self.emit_binary(0, &YMessage::Update(update));
        }
        self.after_edit(st);
        Ok(out)
    }

    // ---- connections ----------------------------------------------------------------------

    /// Admits a connection (or refuses: the document is full). `resume` is the session and
    /// last `seq` a reconnecting client saw.
    pub fn join(
        &self,
        who: &Who,
        kernel: &KernelDescription,
        document: &str,
        resume: Option<(&str, u64)>,
    ) -> Result<Joined, Refusal> {
        let max = self.settings.max_clients;
        if self
            .clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err((
                ErrorCode::Unavailable,
                format!("the document already has {max} collaborators"),
            ));
        }
        let client = self.next_client.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("middleman_collaborators").set(self.clients() as f64);
        let mut st = self.lock();
        let info = PresenceInfo {
            client,
            user: who.user.clone(),
            name: who.name.clone(),
            role: who.role.to_string(),
            color: color_of(&who.user).to_owned(),
            cell_id: None,
            cursor: None,
        };
        st.presence.insert(client, info.clone());
        self.emit(&mut st, ServerEvent::Presence(info));
        Ok(self.opening(&mut st, client, who, kernel, document, resume))
    }

    /// A fresh snapshot for a connection that fell behind.
    pub fn resync(
        &self,
        client: u64,
        who: &Who,
        kernel: &KernelDescription,
        document: &str,
    ) -> Joined {
        let mut st = self.lock();
        self.opening(&mut st, client, who, kernel, document, None)
    }

    fn opening(
        &self,
        st: &mut State,
        client: u64,
        who: &Who,
        kernel: &KernelDescription,
        document: &str,
        resume: Option<(&str, u64)>,
    ) -> Joined {
        let frames = self.frames.subscribe();
        let resumable = resume.filter(|(session, since)| {
            *session == self.session
                && *since <= st.seq
                && (*since == st.seq || st.replay.front().is_some_and(|f| f.seq <= since + 1))
        });
        let snapshot = if resumable.is_some() {
            None
        } else {
            Some(Box::new(Snapshot {
                kernel_state: st.kernel_state,
                executions: st.executions.clone(),
                cells: st.nb.cells(),
                presence: st.presence.values().cloned().collect(),
                input: st.input.clone(),
                graph: st.graph.cells().to_vec(),
                reactivity: reactivity_of(&st.nb),
            }))
        };
        let welcome = ServerEvent::Welcome {
            protocol: PROTOCOL_VERSION,
            session: self.session.clone(),
            client,
            document: document.to_owned(),
            user: who.user.clone(),
            name: who.name.clone(),
            role: who.role.to_string(),
            kernel: kernel.clone(),
            limits: self.settings.limits.clone(),
            last_seq: st.seq,
            resumed_from: resumable.map(|(_, since)| since),
            snapshot,
        };
        let mut opening = vec![Message::Text(Utf8Bytes::from(
            ServerFrame {
                seq: None,
                event: welcome,
            }
            .to_json(),
        ))];
        if let Some((_, since)) = resumable {
            metrics::counter!("middleman_resumes_total").increment(1);
            opening.extend(
                st.replay
                    .iter()
                    .filter(|f| f.seq > since)
                    .map(|f| f.message.clone()),
            );
        } else {
            // A Yjs peer with nothing gets everything; one with state asks for the rest.
            opening.push(yjs(&YMessage::SyncStep2(st.nb.encode_state())));
        }
        opening.push(yjs(&YMessage::SyncStep1(st.nb.state_vector())));
        if !st.awareness.is_empty() {
            opening.push(yjs(&YMessage::Awareness(awareness_of(st.awareness.iter()))));
        }
        Joined {
            client,
            frames,
            opening,
            last_seq: st.seq,
        }
    }

    /// A connection left: its presence and awareness go with it.
    pub fn leave(&self, client: u64) {
        self.clients.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("middleman_collaborators").set(self.clients() as f64);
        let mut st = self.lock();
        if st.presence.remove(&client).is_some() {
            self.emit(&mut st, ServerEvent::PresenceLeft { client });
        }
        let gone: Vec<u64> = st
            .awareness
            .iter()
            .filter(|(_, a)| a.owner == client)
            .map(|(id, _)| *id)
            .collect();
        self.remove_awareness(&mut st, &gone);
    }

    fn remove_awareness(&self, st: &mut State, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let entries: Vec<AwarenessEntry> = ids
            .iter()
            .filter_map(|id| {
                st.awareness.remove(id).map(|a| AwarenessEntry {
                    client: *id,
                    clock: a.clock + 1,
                    state: "null".into(),
                })
            })
            .collect();
        self.emit_binary(0, &YMessage::Awareness(yproto::encode_awareness(&entries)));
    }

    /// Removes awareness states their clients stopped renewing.
    pub fn expire_awareness(&self) {
        let timeout = self.settings.awareness_timeout;
        let mut st = self.lock();
        let stale: Vec<u64> = st
            .awareness
            .iter()
            .filter(|(_, a)| a.renewed.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        self.remove_awareness(&mut st, &stale);
    }

    // ---- client messages ------------------------------------------------------------------

    /// A Yjs binary frame from a connection. Returns the frames to send back to it alone.
    pub fn on_yjs(&self, client: u64, who: &Who, bytes: &[u8]) -> Result<Vec<Message>, Refusal> {
        let message = YMessage::decode(bytes)
            .map_err(|e| (ErrorCode::BadMessage, format!("bad Yjs message: {e}")))?;
        let mut st = self.lock();
        match message {
            YMessage::SyncStep1(sv) => {
                let diff = st.nb.encode_diff(&sv).map_err(|e| doc_refusal(&e))?;
                Ok(vec![yjs(&YMessage::SyncStep2(diff))])
            }
            YMessage::SyncStep2(update) | YMessage::Update(update) => {
                if !who.role.can_edit() {
                    return Err((ErrorCode::Forbidden, "viewers cannot edit".into()));
                }
                let max = self.settings.max_document_bytes;
                if st.crdt_bytes + update.len() > max {
                    return Err((
                        ErrorCode::TooLarge,
                        format!("the document would exceed its limit of {max} bytes"),
                    ));
                }
                st.nb.apply_update(&update).map_err(|e| doc_refusal(&e))?;
                st.crdt_bytes += update.len();
                metrics::counter!("middleman_document_updates_total").increment(1);
                self.emit_binary(client, &YMessage::Update(update));
                self.after_edit(&mut st);
                Ok(Vec::new())
            }
            YMessage::Awareness(update) => {
                let entries = yproto::decode_awareness(&update)
                    .map_err(|e| (ErrorCode::BadMessage, format!("bad awareness update: {e}")))?;
                let accepted = self.accept_awareness(&mut st, client, who, entries)?;
                if !accepted.is_empty() {
                    self.emit_binary(
                        client,
                        &YMessage::Awareness(yproto::encode_awareness(&accepted)),
                    );
                }
                Ok(Vec::new())
            }
            YMessage::QueryAwareness => Ok(vec![yjs(&YMessage::Awareness(awareness_of(
                st.awareness.iter(),
            )))]),
        }
    }

    fn accept_awareness(
        &self,
        st: &mut State,
        client: u64,
        who: &Who,
        entries: Vec<AwarenessEntry>,
    ) -> Result<Vec<AwarenessEntry>, Refusal> {
        let mut accepted = Vec::new();
        for mut e in entries {
            if e.state.len() > MAX_AWARENESS_STATE {
                return Err((
                    ErrorCode::TooLarge,
                    format!("awareness states are limited to {MAX_AWARENESS_STATE} bytes"),
                ));
            }
            match st.awareness.get(&e.client) {
                // Nobody speaks for another connection's Yjs client.
                Some(a) if a.owner != client => continue,
                Some(a) if e.clock < a.clock => continue,
                None if st.awareness.values().filter(|a| a.owner == client).count()
                    >= MAX_AWARENESS_IDS =>
                {
                    continue;
                }
                _ => {}
            }
            if e.state == "null" {
                st.awareness.remove(&e.client);
                accepted.push(e);
                continue;
            }
            // The name and colour others see come from the token, not from the client.
            let mut state: Value = serde_json::from_str(&e.state).map_err(|_| {
                (
                    ErrorCode::BadMessage,
                    "awareness state is not JSON".to_owned(),
                )
            })?;
            if let Value::Object(map) = &mut state {
                let user = map
                    .entry("user")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Value::Object(u) = user {
                    u.insert("name".into(), Value::String(who.name.clone()));
                    u.insert("color".into(), Value::String(color_of(&who.user).into()));
                    u.insert("id".into(), Value::String(who.user.clone()));
                } else {
                    *user = serde_json::json!({
                        "name": who.name, "color": color_of(&who.user), "id": who.user
                    });
                }
            }
            e.state = state.to_string();
            st.awareness.insert(
                e.client,
                Awareness {
                    clock: e.clock,
                    state: e.state.clone(),
                    owner: client,
                    renewed: Instant::now(),
                },
            );
            accepted.push(e);
        }
        Ok(accepted)
    }

    /// A cell operation from an editor (the connection checked the role). Returns the reply
    /// for the sender, if any.
    pub fn edit(&self, client: u64, message: EditRequest) -> Result<Option<ServerEvent>, Refusal> {
        let mut st = self.lock();
        let st = &mut *st;
        let adds = match &message {
            EditRequest::Insert { source, .. } | EditRequest::SetSource { source, .. } => {
                source.len()
            }
            _ => 0,
        };
        let max = self.settings.max_document_bytes;
        if st.crdt_bytes + adds > max {
            return Err((
                ErrorCode::TooLarge,
                format!("the document would exceed its limit of {max} bytes"),
            ));
        }
        match message {
            EditRequest::Insert {
                index,
                kind,
                source,
                request_id,
            } => {
                let cell_id = self
                    .mutate(st, |nb| nb.insert_cell(index, kind, &source))
                    .map_err(|e| doc_refusal(&e))?;
                Ok(Some(ServerEvent::CellCreated {
                    cell_id,
                    request_id,
                }))
            }
            EditRequest::Delete { cell_id } => {
                self.mutate(st, |nb| nb.delete_cell(&cell_id))
                    .map_err(|e| doc_refusal(&e))?;
                Ok(None)
            }
            EditRequest::Move { cell_id, index } => {
                self.mutate(st, |nb| nb.move_cell(&cell_id, index))
                    .map_err(|e| doc_refusal(&e))?;
                Ok(None)
            }
            EditRequest::SetKind { cell_id, kind } => {
                let was_code = st
                    .nb
                    .source(&cell_id)
                    .map_err(|e| doc_refusal(&e))?
                    .0
                    .eq(&CellKind::Code);
                self.mutate(st, |nb| nb.set_kind(&cell_id, kind))
                    .map_err(|e| doc_refusal(&e))?;
                if was_code && kind != CellKind::Code {
                    self.emit(st, ServerEvent::OutputsCleared { cell_id });
                }
                Ok(None)
            }
            EditRequest::SetSource { cell_id, source } => {
                self.mutate(st, |nb| nb.set_source(&cell_id, &source))
                    .map_err(|e| doc_refusal(&e))?;
                Ok(None)
            }
            EditRequest::ClearOutputs { cell_id } => {
                let ids: Vec<String> = match cell_id {
                    Some(id) => {
                        st.nb.runtime_mut(&id).map_err(|e| doc_refusal(&e))?;
                        vec![id]
                    }
                    None => st.headers.iter().map(|h| h.id.clone()).collect(),
                };
                for id in ids {
                    if st.nb.clear_outputs(&id).is_ok() {
                        self.emit(st, ServerEvent::OutputsCleared { cell_id: id });
                    }
                }
                self.touched(st);
                Ok(None)
            }
            EditRequest::Presence { cell_id, cursor } => {
                if cursor
                    .as_ref()
                    .is_some_and(|c| c.to_string().len() > MAX_CURSOR_BYTES)
                {
                    return Err((
                        ErrorCode::TooLarge,
                        format!("cursors are limited to {MAX_CURSOR_BYTES} bytes of JSON"),
                    ));
                }
                let Some(mut info) = st.presence.get(&client).cloned() else {
                    return Ok(None);
                };
                info.cell_id = cell_id;
                info.cursor = cursor;
                st.presence.insert(client, info.clone());
                self.emit(st, ServerEvent::Presence(info));
                Ok(None)
            }
        }
    }

    /// The source of a code cell, to run it.
    pub fn code_of(&self, cell_id: &str) -> Result<String, Refusal> {
        let st = self.lock();
        let (kind, source) = st.nb.source(cell_id).map_err(|e| doc_refusal(&e))?;
        if kind != CellKind::Code {
            return Err((
                ErrorCode::InvalidEdit,
                format!("cell {cell_id} is {}, not code", kind.as_str()),
            ));
        }
        if let Some(reason) = not_runnable(&st, cell_id) {
            return Err((ErrorCode::InvalidEdit, reason));
        }
        Ok(source)
    }

    /// Connects the graph to the kernel session: executions it decides on are sent here.
    pub fn set_reactor(&self, reactor: tokio::sync::mpsc::UnboundedSender<Command>) {
        let _ = self.reactor.set(reactor);
    }

    /// Adds cells to the graph's plan (in the order given) and starts the next one.
    fn run_reactively(&self, st: &mut State, cells: Vec<String>, after: &str) {
        for cell in cells {
            if st.in_flight.as_deref() != Some(cell.as_str()) && !st.plan.contains(&cell) {
                st.plan.push_back(cell);
            }
        }
        self.dispatch(st, after);
    }

    /// Queues the next runnable cell of the plan, unless one is already queued.
    fn dispatch(&self, st: &mut State, after: &str) {
        let Some(reactor) = self.reactor.get() else {
            return;
        };
        while st.in_flight.is_none() {
            let Some(cell) = st.plan.pop_front() else {
                return;
            };
            let upstream_failed = st.graph.ancestors(&cell).iter().any(|a| {
                st.nb
                    .runtimes()
                    .get(a)
                    .is_some_and(|r| matches!(r.state, CellState::Error | CellState::Blocked))
            });
            if upstream_failed || not_runnable(st, &cell).is_some() {
                self.set_cell_state(st, &cell, CellState::Blocked);
                continue;
            }
            let Ok((CellKind::Code, code)) = st.nb.source(&cell) else {
                continue;
            };
            st.in_flight = Some(cell.clone());
            let _ = reactor.send(Command::Execute {
                code,
                cell_id: Some(cell),
                request_id: None,
                // A failure holds back its dependents only (see `after_run`), not the queue.
                stop_on_error: false,
                by: format!("graph (after {after})"),
            });
        }
    }

    fn set_cell_state(&self, st: &mut State, cell: &str, state: CellState) {
        let Ok(r) = st.nb.runtime_mut(cell) else {
            return;
        };
        if r.state == state {
            return;
        }
        r.state = state;
        let execution_count = r.execution_count;
        self.emit(
            st,
            ServerEvent::CellState {
                cell_id: cell.to_owned(),
                state,
                execution_count,
            },
        );
    }

    /// Re-analyses the cells whose source changed, rebuilds the graph, announces it, marks
    /// edited cells and their dependents stale, and removes deleted cells' names from the kernel.
    fn regraph(&self, st: &mut State) {
        let sources = st.nb.sources();
        self.regraph_from(st, &sources);
    }

    fn regraph_from(&self, st: &mut State, sources: &[(String, CellKind, String)]) {
        let mut changed = Vec::new();
        let mut present = HashSet::new();
        for (id, kind, source) in sources {
            if *kind != CellKind::Code {
                continue;
            }
            present.insert(id.clone());
            if st.analyses.get(id).is_none_or(|(s, _)| s != source) {
                st.analyses
                    .insert(id.clone(), (source.clone(), analyse(source)));
                changed.push(id.clone());
            }
        }
        let removed: Vec<(String, Vec<String>)> = st
            .analyses
            .iter()
            .filter(|(id, _)| !present.contains(*id))
            .map(|(id, (_, a))| (id.clone(), a.defs.iter().cloned().collect()))
            .collect();
        let mut orphans = Vec::new();
        for (id, _) in &removed {
            st.analyses.remove(id);
            st.last_run.remove(id);
            orphans.extend(st.graph.descendants(id));
        }
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        let order: Vec<(&str, &CellAnalysis)> = sources
            .iter()
            .filter_map(|(id, _, _)| st.analyses.get(id).map(|(_, a)| (id.as_str(), a)))
            .collect();
        let edited: HashSet<&str> = changed.iter().map(String::as_str).collect();
        let (graph, graph_changed) = Graph::rebuild(std::mem::take(&mut st.graph), &order, |id| {
            edited.contains(id)
        });
        st.graph = graph;
        if graph_changed {
            self.emit(
                st,
                ServerEvent::Graph {
                    cells: st.graph.cells().to_vec(),
                },
            );
        }
        // An edited cell that ran before, and whatever depends on it, is stale.
        for id in changed {
            let ran = st.last_run.get(&id);
            let source = st.analyses.get(&id).map(|(s, _)| s);
            if ran.is_none() || ran == source {
                continue;
            }
            let mut cells = vec![id.clone()];
            cells.extend(st.graph.descendants(&id));
            for c in cells {
                let state = st.nb.runtime_mut(&c).map(|r| r.state).ok();
                if matches!(
                    state,
                    Some(CellState::Idle | CellState::Error | CellState::Blocked)
                ) {
                    self.set_cell_state(st, &c, CellState::Stale);
                }
            }
        }
        // A deleted cell's names leave the kernel; its dependents re-run (and fail) or go stale.
        let names: Vec<String> = removed
            .into_iter()
            .flat_map(|(_, defs)| defs)
            .filter(|n| !st.analyses.values().any(|(_, a)| a.defs.contains(n)))
            .collect();
        if !names.is_empty()
            && let Some(reactor) = self.reactor.get()
        {
            let list = names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = reactor.send(Command::Execute {
                code: format!("for _n in [{list}]:\n    globals().pop(_n, None)\ndel _n"),
                cell_id: None,
                request_id: None,
                stop_on_error: false,
                by: "graph (deleted cell)".into(),
            });
        }
        if names.is_empty() {
            // Every name it defined is still defined elsewhere: nothing depends on it alone.
            orphans.clear();
        }
        orphans.retain(|c| present.contains(c));
        orphans.dedup();
        if !orphans.is_empty() {
            if st.nb.lazy {
                for c in orphans {
                    self.set_cell_state(st, &c, CellState::Stale);
                }
            } else {
                self.run_reactively(st, orphans, "a deleted cell");
            }
        }
    }

    /// What a finished execution of `cell` means for the cells that depend on it.
    fn after_run(&self, st: &mut State, cell: &str, status: ExecutionStatus) {
        let reactive = st.in_flight.as_deref() == Some(cell);
        if reactive {
            st.in_flight = None;
        }
        match status {
            ExecutionStatus::Ok => {
                // A plan already holds the descendants of the run that started it.
                if reactive {
                    self.dispatch(st, cell);
                    return;
                }
                let (runnable, blocked): (Vec<String>, Vec<String>) = st
                    .graph
                    .descendants(cell)
                    .into_iter()
                    .partition(|d| not_runnable(st, d).is_none());
                for d in blocked {
                    self.set_cell_state(st, &d, CellState::Blocked);
                }
                if st.nb.lazy {
                    for d in runnable {
                        self.set_cell_state(st, &d, CellState::Stale);
                    }
                } else {
                    self.run_reactively(st, runnable, cell);
                }
            }
            ExecutionStatus::Aborted => {
                let upstream_failed = st.graph.ancestors(cell).iter().any(|a| {
                    st.nb
                        .runtimes()
                        .get(a)
                        .is_some_and(|r| matches!(r.state, CellState::Error | CellState::Blocked))
                });
                let state = if upstream_failed {
                    CellState::Blocked
                } else {
                    CellState::Stale
                };
                self.set_cell_state(st, cell, state);
                if reactive {
                    // Interrupted (or the kernel restarted): the rest of the plan is cancelled.
                    let cancelled: Vec<String> = st.plan.drain(..).collect();
                    for c in cancelled {
                        self.set_cell_state(st, &c, CellState::Stale);
                    }
                }
            }
            _ => {
                let descendants = st.graph.descendants(cell);
                st.plan.retain(|c| !descendants.contains(c));
                for d in descendants {
                    let state = st.nb.runtime_mut(&d).map(|r| r.state).ok();
                    if !matches!(state, Some(CellState::Queued | CellState::Running)) {
                        self.set_cell_state(st, &d, CellState::Blocked);
                    }
                }
                self.dispatch(st, cell);
            }
        }
    }

    /// Runs every stale cell in dependency order (requested by `by`).
    pub fn run_stale(&self) -> Result<(), Refusal> {
        let mut st = self.lock();
        let stale: HashSet<String> = st
            .nb
            .runtimes()
            .iter()
            .filter(|(_, r)| r.state == CellState::Stale)
            .map(|(id, _)| id.clone())
            .collect();
        let order: Vec<String> = st
            .graph
            .order_of(&stale)
            .into_iter()
            .filter(|c| not_runnable(&st, c).is_none())
            .collect();
        self.run_reactively(&mut st, order, "run stale");
        Ok(())
    }

    /// Sets the document's reactivity mode.
    pub fn set_reactivity(&self, mode: Reactivity) {
        let mut st = self.lock();
        let lazy = mode == Reactivity::Lazy;
        if st.nb.lazy != lazy {
            st.nb.lazy = lazy;
            self.emit(&mut st, ServerEvent::Reactivity { mode });
            self.touched(&mut st);
        }
    }

    /// Disables or enables a cell.
    pub fn set_disabled(&self, cell_id: &str, disabled: bool) -> Result<(), Refusal> {
        let mut st = self.lock();
        let r = st.nb.runtime_mut(cell_id).map_err(|e| doc_refusal(&e))?;
        if r.disabled != disabled {
            r.disabled = disabled;
            self.emit(
                &mut st,
                ServerEvent::CellDisabled {
                    cell_id: cell_id.to_owned(),
                    disabled,
                },
            );
            self.touched(&mut st);
        }
        Ok(())
    }

    /// The document as `.ipynb` JSON.
    pub fn export(&self, kernel: &KernelDescription) -> Value {
        crate::document::ipynb::export(&self.lock().nb, kernel)
    }

    /// Replaces the document with an imported notebook; collaborators see the change live.
    pub fn import(&self, imported: &Notebook) {
        let mut st = self.lock();
        let _ = self.mutate(&mut st, |nb| {
            nb.replace_all(imported);
            Ok(())
        });
        let cells = st.nb.cells();
        for cell in cells {
            self.emit(
                &mut st,
                ServerEvent::CellState {
                    cell_id: cell.id,
                    state: cell.runtime.state,
                    execution_count: cell.runtime.execution_count,
                },
            );
        }
    }

    // ---- persistence ----------------------------------------------------------------------

    /// Saves edits at most `save_debounce` after they happen, until `shutdown`; then saves
    /// what is left.
    pub async fn run_saver(&self, shutdown: CancellationToken) {
        let Some(store) = &self.store else { return };
        let debounce = self.settings.save_debounce;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.save.notified() => {}
            }
            // Gather a burst of edits into one write.
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(debounce) => {}
            }
            if !self.save_once(store).await {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                self.save.notify_one();
            }
        }
        self.save_once(store).await;
    }

    /// Saves now if anything changed (at shutdown).
    pub async fn save_now(&self) {
        if let Some(store) = &self.store {
            self.save_once(store).await;
        }
    }

    /// Writes the document if it changed. Returns false when the write failed (it stays dirty).
    async fn save_once(&self, store: &DocumentStore) -> bool {
        let (document, bytes) = {
            let mut st = self.lock();
            let Some(document) = st.document.clone().filter(|_| st.dirty) else {
                return true;
            };
            st.dirty = false;
            (document, persist::encode(&st.nb))
        };
        let started = Instant::now();
        match store.save_bytes(&document, bytes).await {
            Ok(()) => {
                metrics::histogram!("middleman_document_save_seconds")
                    .record(started.elapsed().as_secs_f64());
                true
            }
            Err(error) => {
                tracing::warn!(%error, "saving the document failed; retrying");
                metrics::counter!("middleman_document_save_errors_total").increment(1);
                self.lock().dirty = true;
                false
            }
        }
    }
}

/// A cell operation (the JSON messages that change the document).
#[derive(Debug)]
pub enum EditRequest {
    Insert {
        index: u32,
        kind: CellKind,
        source: String,
        request_id: Option<String>,
    },
    Delete {
        cell_id: String,
    },
    Move {
        cell_id: String,
        index: u32,
    },
    SetKind {
        cell_id: String,
        kind: CellKind,
    },
    SetSource {
        cell_id: String,
        source: String,
    },
    ClearOutputs {
        cell_id: Option<String>,
    },
    Presence {
        cell_id: Option<String>,
        cursor: Option<Value>,
    },
}

fn reactivity_of(nb: &Notebook) -> Reactivity {
    if nb.lazy {
        Reactivity::Lazy
    } else {
        Reactivity::Autorun
    }
}

/// Why a code cell may not run now, if it may not.
fn not_runnable(st: &State, cell: &str) -> Option<String> {
    let disabled = |c: &str| st.nb.runtimes().get(c).is_some_and(|r| r.disabled);
    if disabled(cell) {
        return Some(format!("cell {cell} is disabled"));
    }
    if let Some(error) = st.graph.get(cell).and_then(|g| g.error.as_ref()) {
        return Some(match error {
            crate::graph::GraphError::Syntax { message } => format!("cell {cell}: {message}"),
            crate::graph::GraphError::MultipleDefinitions { names, .. } => format!(
                "cell {cell} defines {} that another cell also defines",
                names.join(", ")
            ),
            crate::graph::GraphError::Cycle { .. } => {
                format!("cell {cell} is part of a dependency cycle")
            }
        });
    }
    if let Some(d) = st.graph.ancestors(cell).into_iter().find(|a| disabled(a)) {
        return Some(format!("cell {cell} depends on disabled cell {d}"));
    }
    None
}

fn yjs(message: &YMessage) -> Message {
    Message::Binary(Bytes::from(message.encode()))
}

fn awareness_of<'a>(states: impl Iterator<Item = (&'a u64, &'a Awareness)>) -> Vec<u8> {
    let entries: Vec<AwarenessEntry> = states
        .map(|(id, a)| AwarenessEntry {
            client: *id,
            clock: a.clock,
            state: a.state.clone(),
        })
        .collect();
    yproto::encode_awareness(&entries)
}

// ---- kernel events --------------------------------------------------------------------------

impl EventSink for Hub {
    fn publish(&self, event: ServerEvent) {
        let mut st = self.lock();
        let (follow, changed) = apply_kernel_event(&mut st, &event);
        let finished = match &event {
            ServerEvent::ExecutionQueued { execution, .. } => {
                if let Some(cell) = &execution.cell_id {
                    st.last_run.insert(cell.clone(), execution.code.clone());
                }
                None
            }
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                ..
            } => st
                .exec_cells
                .get(execution_id)
                .cloned()
                .map(|cell| (cell, *status)),
            _ => None,
        };
        self.emit(&mut st, event);
        let changed = changed || !follow.is_empty();
        for e in follow {
            self.emit(&mut st, e);
        }
        if let Some((cell, status)) = finished {
            self.after_run(&mut st, &cell, status);
        }
        if changed {
            self.touched(&mut st);
        }
    }
}

/// Records a kernel event in the document. Returns the cell events it implies (sent after it)
/// and whether the saved document changed.
fn apply_kernel_event(st: &mut State, event: &ServerEvent) -> (Vec<ServerEvent>, bool) {
    let cell_of = |st: &State, execution_id: &str| st.exec_cells.get(execution_id).cloned();
    let mut follow = Vec::new();
    let mut changed = false;
    match event {
        ServerEvent::KernelStatus { state, .. } => st.kernel_state = *state,
        ServerEvent::Queue { executions } => st.executions = executions.clone(),
        ServerEvent::ExecutionQueued { execution, .. } => {
            if let Some(cell) = &execution.cell_id {
                st.exec_cells.insert(execution.id.clone(), cell.clone());
                st.exec_order.push_back(execution.id.clone());
                while st.exec_order.len() > RECENT_EXECUTIONS {
                    if let Some(old) = st.exec_order.pop_front() {
                        st.exec_cells.remove(&old);
                    }
                }
                set_state(st, cell, CellState::Queued, None, &mut follow);
            }
        }
        ServerEvent::ExecutionStarted { execution_id } => {
            if let Some(cell) = cell_of(st, execution_id)
                && st.nb.clear_outputs(&cell).is_ok()
            {
                st.clear_pending.remove(&cell);
                follow.push(ServerEvent::OutputsCleared {
                    cell_id: cell.clone(),
                });
                set_state(st, &cell, CellState::Running, None, &mut follow);
            }
        }
        ServerEvent::Output {
            execution_id,
            output,
        } => {
            if let Some(cell) = cell_of(st, execution_id) {
                let pending_clear = st.clear_pending.remove(&cell);
                if let Ok(r) = st.nb.runtime_mut(&cell) {
                    if pending_clear {
                        r.outputs.clear();
                    }
                    push_output(&mut r.outputs, output.clone());
                    changed = true;
                }
            }
        }
        ServerEvent::UpdateDisplay {
            display_id,
            data,
            metadata,
            ..
        } => {
            let mut hit = false;
            for r in st.nb.runtimes_mut() {
                for o in &mut r.outputs {
                    if let Output::DisplayData {
                        data: d,
                        metadata: m,
                        display_id: Some(id),
                    } = o
                        && id == display_id
                    {
                        *d = data.clone();
                        *m = metadata.clone();
                        hit = true;
                    }
                }
            }
            if hit {
                changed = true;
            }
        }
        ServerEvent::ClearOutput { execution_id, wait } => {
            if let Some(cell) = cell_of(st, execution_id) {
                if *wait {
                    st.clear_pending.insert(cell);
                } else if let Ok(r) = st.nb.runtime_mut(&cell) {
                    r.outputs.clear();
                    changed = true;
                }
            }
        }
        ServerEvent::OutputTruncated { execution_id, .. } => {
            if let Some(cell) = cell_of(st, execution_id)
                && let Ok(r) = st.nb.runtime_mut(&cell)
            {
                r.truncated = true;
                changed = true;
            }
        }
        ServerEvent::InputRequest {
            execution_id,
            prompt,
            password,
        } => {
            st.input = Some(PendingInput {
                execution_id: execution_id.clone(),
                prompt: prompt.clone(),
                password: *password,
            });
        }
        ServerEvent::InputResolved { execution_id, .. }
            if st
                .input
                .as_ref()
                .is_some_and(|i| i.execution_id == *execution_id) =>
        {
            st.input = None;
        }
        ServerEvent::ExecutionFinished {
            execution_id,
            status,
            execution_count,
            ..
        } => {
            if st
                .input
                .as_ref()
                .is_some_and(|i| i.execution_id == *execution_id)
            {
                st.input = None;
            }
            if let Some(cell) = cell_of(st, execution_id) {
                let state = match status {
                    ExecutionStatus::Ok => CellState::Idle,
                    ExecutionStatus::Aborted => CellState::Idle,
                    _ => CellState::Error,
                };
                set_state(st, &cell, state, *execution_count, &mut follow);
            }
        }
        _ => {}
    }
    (follow, changed)
}

fn set_state(
    st: &mut State,
    cell: &str,
    state: CellState,
    execution_count: Option<u64>,
    follow: &mut Vec<ServerEvent>,
) {
    let Ok(r) = st.nb.runtime_mut(cell) else {
        return;
    };
    r.state = state;
    if execution_count.is_some() {
        r.execution_count = execution_count;
    }
    follow.push(ServerEvent::CellState {
        cell_id: cell.to_owned(),
        state,
        execution_count: r.execution_count,
    });
}

/// Appends an output, merging a stream chunk into the previous output of the same stream (as
/// nbformat stores them).
fn push_output(outputs: &mut Vec<Output>, output: Output) {
    if let Output::Stream { name, text } = &output
        && let Some(Output::Stream {
            name: last_name,
            text: last_text,
        }) = outputs.last_mut()
        && last_name == name
    {
        last_text.push_str(text);
        return;
    }
    outputs.push(output);
}
