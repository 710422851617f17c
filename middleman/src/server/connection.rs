//! One WebSocket connection: the opening (welcome, missed events or a snapshot, the Yjs sync),
//! then the hub's frames out and the client's messages in, with a bounded backlog, a write
//! timeout and a ping timeout. JSON text frames carry the protocol; binary frames carry Yjs.
//! Every message goes to the hub, the one way into the document and the kernel.
//!
//! A Yjs-only connection (`/yjs/{document}`, for stock providers such as y-websocket's
//! `WebsocketProvider`) is the same seat with the JSON frames left out both ways: it syncs the
//! CRDT and awareness, and refusals (a viewer's edit) are dropped silently, as y-protocols has no
//! way to say them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt as _, StreamExt as _};
use session_token::Claims;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::AppState;
use crate::collab::assist::{self, Ask, RateLimit};
use crate::collab::{EditRequest, Hub, Joined, Refusal, Who};
use crate::protocol::{AssistAnswer, AssistRefusal, ClientMessage, ServerEvent, ServerFrame};

/// Close codes (see docs/protocol.md).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const PING_TIMEOUT: u16 = 4000;
    pub(crate) const TOO_SLOW: u16 = 4008;
}

/// A client that cannot take a frame within this long is dropped.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames one write carries at most (those already waiting when the first arrives).
const MAX_BATCH: usize = 64;

/// How long frames that report progress may wait for the frame that ends it (or for more
/// progress) before they are written anyway. The timer's resolution makes it 1-2 ms.
const HOLD: Duration = Duration::from_millis(1);

/// A client resynchronised this many times within [`RESYNC_WINDOW`] is dropped instead.
const MAX_RESYNCS: usize = 3;
const RESYNC_WINDOW: Duration = Duration::from_secs(60);

/// Side questions one connection may have waiting for the kernel at once.
const MAX_QUESTIONS_IN_FLIGHT: usize = 8;
/// Side questions one connection may ask: a burst of this many, then this many a second.
const QUESTION_BURST: u32 = 20;
const QUESTIONS_PER_SECOND: u32 = 10;

/// A seat in the document: leaving is guaranteed, even when the upgrade never completes.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Arc<Hub>,
    client: u64,
}

impl Membership {
    pub(crate) fn new(hub: Arc<Hub>, client: u64) -> Self {
        Self { hub, client }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(self.client);
    }
}

struct Conn {
    socket: WebSocket,
    state: Arc<AppState>,
    claims: Claims,
    who: Who,
    client: u64,
    last_heard: Instant,
    resyncs: Vec<Instant>,
    /// Only y-protocols frames (binary) cross this connection.
    yjs_only: bool,
    /// Side questions waiting for the kernel; each ends as one `assist` reply.
    answers: FuturesUnordered<BoxFuture<'static, (String, AssistAnswer)>>,
    questions: RateLimit,
}

pub(crate) async fn serve(
    socket: WebSocket,
    state: Arc<AppState>,
    claims: Claims,
    who: Who,
    joined: Joined,
    membership: Membership,
    yjs_only: bool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    metrics::gauge!("middleman_ws_connections").increment(1.0);
    state.activity.connections.fetch_add(1, Relaxed);
    state.activity.touch();
    tracing::info!("connected");
    let mut conn = Conn {
        socket,
        state: state.clone(),
        claims,
        who,
        client: joined.client,
        last_heard: Instant::now(),
        resyncs: Vec::new(),
        yjs_only,
        answers: FuturesUnordered::new(),
        questions: RateLimit::new(QUESTION_BURST, QUESTIONS_PER_SECOND, Instant::now()),
    };
    let reason = conn.run(joined).await;
    drop(membership);
    state.activity.connections.fetch_sub(1, Relaxed);
    state.activity.touch();
    metrics::gauge!("middleman_ws_connections").decrement(1.0);
    metrics::counter!("middleman_ws_disconnects_total", "reason" => reason).increment(1);
    tracing::info!(reason, "disconnected");
}

impl Conn {
    /// Sends the opening of a join or resync; returns the receiver and the last `seq` it covers.
    async fn open(
        &mut self,
        joined: Joined,
    ) -> Result<(tokio::sync::broadcast::Receiver<crate::collab::Frame>, u64), ()> {
        for message in joined.opening {
            self.send(message).await?;
        }
        Ok((joined.frames, joined.last_seq))
    }

    async fn run(&mut self, joined: Joined) -> &'static str {
        let Ok((mut frames, mut seen)) = self.open(joined).await else {
            return "write failed";
        };
        let state = self.state.clone();
        let ping_every = state.args.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let shutdown = state.shutdown.clone();
        // Frames fed but not written yet, and until when they may wait.
        let mut held: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = self.reply(ServerEvent::Shutdown { reason: "middleman is shutting down".into() }).await;
                    self.close(close::GOING_AWAY, "shutting down").await;
                    return "shutdown";
                }
                frame = frames.recv() => {
                    // This frame and every one already behind it go out in one write: an
                    // execution's events come in bursts (queued, started, the queue, the
                    // kernel's status), and a write is a system call and a wake-up of the
                    // client (and of a gateway between).
                    //
                    // Frames that only report an execution's progress (queued, started, its
                    // count, the kernel's status, an output) may wait up to HOLD for the frame
                    // that ends it: while the kernel works, each write would wake the client,
                    // and a gateway, for news that a person cannot see arrive 2 ms apart, and
                    // on a pod of two cores those wake-ups take the kernel's time (a JS
                    // `1+1` ends 3-4% sooner). Anything else is written at once, with them.
                    let mut next = frame;
                    let mut fed = 0_usize;
                    let mut urgent = false;
                    loop {
                        match next {
                            Ok(frame) => {
                                let waits = frame.event.as_deref().is_some_and(can_wait);
                                if let Some(message) = admit(frame, self.client, &mut seen) {
                                    if self.feed(message).await.is_err() {
                                        return "write failed";
                                    }
                                    fed += 1;
                                    urgent |= !waits;
                                }
                            }
                            Err(RecvError::Lagged(missed)) => {
                                if (fed > 0 || held.is_some()) && self.flush().await.is_err() {
                                    return "write failed";
                                }
                                held = None;
                                fed = 0;
                                match self.resync(missed).await {
                                    Ok((rx, last)) => {
                                        frames = rx;
                                        seen = last;
                                    }
                                    Err(reason) => return reason,
                                }
                                break;
                            }
                            Err(RecvError::Closed) => return "session closed",
                        }
                        if fed >= MAX_BATCH {
                            break;
                        }
                        next = match frames.try_recv() {
                            Ok(frame) => Ok(frame),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                            Err(TryRecvError::Closed) => Err(RecvError::Closed),
                        };
                    }
                    if fed > 0 {
                        if urgent || fed >= MAX_BATCH {
                            if self.flush().await.is_err() {
                                return "write failed";
                            }
                            held = None;
                        } else if held.is_none() {
                            held = Some(tokio::time::Instant::now() + HOLD);
                        }
                    }
                }
                () = sleep_until_held(held) => {
                    held = None;
                    if self.flush().await.is_err() {
                        return "write failed";
                    }
                }
                incoming = self.socket.recv() => match incoming {
                    None => return "closed by client",
                    Some(Err(error)) => {
                        if is_too_big(&error) {
                            let limit = self.state.args.max_client_message_bytes;
                            let _ = self.refuse(&Refusal::MessageTooLarge { limit }).await;
                            self.close(close::TOO_BIG, "message too large").await;
                            return "message too large";
                        }
                        tracing::debug!(%error, "websocket error");
                        return "websocket error";
                    }
                    Some(Ok(message)) => {
                        self.last_heard = Instant::now();
                        if self.on_message(message).await.is_err() {
                            return "write failed";
                        }
                    }
                },
                Some((request_id, answer)) = self.answers.next(), if !self.answers.is_empty() => {
                    if self.reply(ServerEvent::Assist { request_id, answer }).await.is_err() {
                        return "write failed";
                    }
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > ping_every * 3 {
                        self.close(close::PING_TIMEOUT, "no pong").await;
                        return "ping timeout";
                    }
                    if self.send(Message::Ping(Default::default())).await.is_err() {
                        return "write failed";
                    }
                }
            }
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), ()> {
        let text = match message {
            Message::Text(_) if self.yjs_only => return Ok(()),
            Message::Text(t) => t,
            Message::Binary(bytes) => {
                metrics::counter!("middleman_ws_messages_received_total", "kind" => "yjs")
                    .increment(1);
                self.state.activity.touch();
                return match self.state.hub.on_yjs(self.client, &self.who, &bytes).await {
                    Ok(replies) => {
                        for r in replies {
                            self.send(r).await?;
                        }
                        Ok(())
                    }
                    Err(refusal) => self.refuse(&refusal).await,
                };
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };
        metrics::counter!("middleman_ws_messages_received_total", "kind" => "json").increment(1);
        self.state.activity.touch();
        let parsed: ClientMessage = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(error) => return self.refuse(&Refusal::Unreadable(error)).await,
        };
        let parsed = match Ask::from_message(parsed) {
            Ok((request_id, ask)) => return self.ask(request_id, ask).await,
            Err(other) => other,
        };
        if let ClientMessage::FetchOutputs { cell_ids } = &parsed {
            return match self.state.hub.outputs(cell_ids) {
                Ok(replies) => {
                    for reply in replies {
                        self.reply(reply).await?;
                    }
                    Ok(())
                }
                Err(refusal) => self.refuse(&refusal).await,
            };
        }
        match self.dispatch(parsed).await {
            Ok(Some(reply)) => self.reply(reply).await,
            Ok(None) => Ok(()),
            Err(refusal) => self.refuse(&refusal).await,
        }
    }

    /// Hands a client message to the hub. Returns the reply for this connection, if any.
    async fn dispatch(&mut self, message: ClientMessage) -> Result<Option<ServerEvent>, Refusal> {
        let hub = &self.state.hub;
        let by = self.who.name.clone();
        match message {
            ClientMessage::Ping { nonce } => return Ok(Some(ServerEvent::Pong { nonce })),
            // Everyone, viewers included, shows where they are.
            ClientMessage::Presence { cell_id, cursor } => {
                hub.presence(self.client, cell_id, cursor)?;
                return Ok(None);
            }
            // Answered in `on_message` (several replies; side questions, later).
            ClientMessage::FetchOutputs { .. }
            | ClientMessage::Complete { .. }
            | ClientMessage::Inspect { .. }
            | ClientMessage::TablePage { .. } => return Ok(None),
            _ if !self.claims.role.can_edit() => return Err(Refusal::ViewerAction),
            ClientMessage::InsertCell {
                index,
                cell_type,
                source,
                request_id,
            } => {
                return hub
                    .edit(EditRequest::Insert {
                        index,
                        kind: cell_type,
                        source,
                        request_id,
                    })
                    .await;
            }
            ClientMessage::DeleteCell { cell_id } => {
                hub.edit(EditRequest::Delete { cell_id }).await?;
            }
            ClientMessage::MoveCell { cell_id, index } => {
                hub.edit(EditRequest::Move { cell_id, index }).await?;
            }
            ClientMessage::SetCellType { cell_id, cell_type } => {
                hub.edit(EditRequest::SetKind {
                    cell_id,
                    kind: cell_type,
                })
                .await?;
            }
            ClientMessage::SetSource { cell_id, source } => {
                hub.edit(EditRequest::SetSource { cell_id, source }).await?;
            }
            ClientMessage::ClearOutputs { cell_id } => {
                hub.edit(EditRequest::ClearOutputs { cell_id }).await?;
            }
            ClientMessage::SetCellDisabled { cell_id, disabled } => {
                hub.set_disabled(&cell_id, disabled)?;
            }
            ClientMessage::SetReactivity { mode } => hub.set_reactivity(mode),
            ClientMessage::SetGraphRule { rule } => hub.set_graph_rule(rule).await,
            ClientMessage::RunStale { request_id } => hub.run_stale(by, request_id).await?,
            ClientMessage::RunAll { request_id } => hub.run_all(by, request_id).await?,
            ClientMessage::ExecuteCell {
                cell_id,
                request_id,
                stop_on_error,
            } => {
                hub.execute_cell(cell_id, request_id, stop_on_error, by)
                    .await?;
            }
            ClientMessage::Execute {
                code,
                request_id,
                stop_on_error,
            } => {
                let options = crate::kernel::ExecOptions::default();
                hub.execute(code, request_id, stop_on_error, by, options)
                    .await?;
            }
            ClientMessage::InputReply {
                execution_id,
                value,
            } => hub.input_reply(execution_id, value, by).await?,
            ClientMessage::Interrupt => hub.interrupt(by).await?,
            ClientMessage::Restart => hub.restart(by).await?,
        }
        Ok(None)
    }

    /// Sends a side question on its way; its answer comes back through `answers`. Refused at
    /// once: a viewer's completion, a connection asking too often or with too many waiting.
    async fn ask(&mut self, request_id: String, ask: Ask) -> Result<(), ()> {
        let kind = ask.label();
        let refusal = if !ask.viewer_may_ask() && !self.claims.role.can_edit() {
            Some(assist::refused(
                AssistRefusal::Forbidden,
                "viewers may page tables, not ask the kernel",
            ))
        } else if self.answers.len() >= MAX_QUESTIONS_IN_FLIGHT
            || !self.questions.allow(Instant::now())
        {
            Some(assist::refused(
                AssistRefusal::RateLimited,
                "too many questions at once; the next one will be answered",
            ))
        } else {
            None
        };
        if let Some(answer) = refusal {
            metrics::counter!("middleman_assist_requests_total", "kind" => kind, "outcome" => outcome(&answer)).increment(1);
            return self.reply(ServerEvent::Assist { request_id, answer }).await;
        }
        let hub = self.state.hub.clone();
        self.answers.push(Box::pin(async move {
            let started = Instant::now();
            let answer = hub.assist(&ask).await;
            metrics::histogram!("middleman_assist_seconds", "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("middleman_assist_requests_total", "kind" => kind, "outcome" => outcome(&answer)).increment(1);
            (request_id, answer)
        }));
        Ok(())
    }

    /// Tells this connection why its message was refused.
    async fn refuse(&mut self, refusal: &Refusal) -> Result<(), ()> {
        if self.yjs_only {
            tracing::debug!(%refusal, "refused on a Yjs-only connection");
            return Ok(());
        }
        self.reply(ServerEvent::Error {
            code: refusal.code(),
            message: refusal.to_string(),
            cell_id: refusal.cell().map(str::to_owned),
        })
        .await
    }

    async fn reply(&mut self, event: ServerEvent) -> Result<(), ()> {
        let json = ServerFrame { seq: None, event }.to_json();
        self.send(Message::Text(Utf8Bytes::from(json))).await
    }

    async fn send(&mut self, message: Message) -> Result<(), ()> {
        if self.yjs_only && matches!(message, Message::Text(_)) {
            return Ok(());
        }
        send_within(&mut self.socket, message).await
    }

    /// Queues `message` for the next [`Conn::flush`] (written earlier only when the queue is
    /// over the socket's write buffer).
    async fn feed(&mut self, message: Message) -> Result<(), ()> {
        if self.yjs_only && matches!(message, Message::Text(_)) {
            return Ok(());
        }
        within(self.socket.feed(message)).await
    }

    async fn flush(&mut self) -> Result<(), ()> {
        within(self.socket.flush()).await
    }

    /// The client missed `missed` frames: it gets the opening of a join again, unless it keeps
    /// falling behind (then the reason it is dropped).
    async fn resync(
        &mut self,
        missed: u64,
    ) -> Result<(tokio::sync::broadcast::Receiver<crate::collab::Frame>, u64), &'static str> {
        let now = Instant::now();
        self.resyncs
            .retain(|t| now.duration_since(*t) < RESYNC_WINDOW);
        if self.resyncs.len() >= MAX_RESYNCS {
            metrics::counter!("middleman_slow_clients_total", "action" => "dropped").increment(1);
            tracing::warn!(missed, "client keeps falling behind; disconnecting");
            self.close(close::TOO_SLOW, "too slow: reconnect to resynchronise")
                .await;
            return Err("too slow");
        }
        self.resyncs.push(now);
        metrics::counter!("middleman_slow_clients_total", "action" => "resynced").increment(1);
        let joined = self
            .state
            .hub
            .resync(self.client, &self.who, &self.claims.doc);
        self.open(joined).await.map_err(|()| "write failed")
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        close_with(&mut self.socket, code, reason).await;
    }
}

/// Whether `event` only reports progress that may wait for the frame after it ([`HOLD`]).
fn can_wait(event: &ServerEvent) -> bool {
    matches!(
        event,
        ServerEvent::ExecutionQueued { .. }
            | ServerEvent::Queue { .. }
            | ServerEvent::ExecutionStarted { .. }
            | ServerEvent::ExecutionInput { .. }
            | ServerEvent::KernelStatus { .. }
            | ServerEvent::Output { .. }
    )
}

/// Resolves when held frames are due; never when none are held.
async fn sleep_until_held(held: Option<tokio::time::Instant>) {
    match held {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The message of `frame` for the connection `client` that has seen up to `seen` (moved on), or
/// `None` when it is the client's own echo or already seen.
fn admit(frame: crate::collab::Frame, client: u64, seen: &mut u64) -> Option<Message> {
    if frame.seq == 0 {
        return (frame.origin != client).then_some(frame.message);
    }
    if frame.seq <= *seen {
        return None;
    }
    *seen = frame.seq;
    Some(frame.message)
}

/// Sends `message`, or gives the client up when it does not read within [`WRITE_TIMEOUT`].
pub(super) async fn send_within(socket: &mut WebSocket, message: Message) -> Result<(), ()> {
    within(socket.send(message)).await
}

/// Runs a write, or gives the client up when it does not read within [`WRITE_TIMEOUT`].
async fn within(write: impl Future<Output = Result<(), axum::Error>>) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            metrics::counter!("middleman_slow_clients_total", "action" => "dropped").increment(1);
            tracing::warn!(
                "client did not read for {} s; disconnecting",
                WRITE_TIMEOUT.as_secs()
            );
            Err(())
        }
    }
}

/// Closes with `code` and `reason`, waiting at most a second.
pub(super) async fn close_with(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

/// An answer's outcome, as a metric label.
fn outcome(answer: &AssistAnswer) -> &'static str {
    match answer {
        AssistAnswer::Refused { reason, .. } => match reason {
            AssistRefusal::Busy => "busy",
            AssistRefusal::RateLimited => "rate_limited",
            AssistRefusal::NoKernel => "no_kernel",
            AssistRefusal::Timeout => "timeout",
            AssistRefusal::Gone => "gone",
            AssistRefusal::Failed => "failed",
            AssistRefusal::Forbidden => "forbidden",
        },
        _ => "answered",
    }
}

/// Whether a receive error is tungstenite's capacity error (message or frame over the limit).
/// axum wraps it opaquely, so its text is the only handle on it.
pub(super) fn is_too_big(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}
