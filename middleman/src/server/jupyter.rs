//! One Jupyter kernel WebSocket (`/jupyter/channels`): a stock Jupyter client as a collaborator
//! of the document. Its requests go to the hub (executions into the document's queue and cells,
//! side questions to the kernel, stdin answers, interrupt and restart); the document's events
//! come back translated (`crate::jupyter::translate`). Each request is answered to this
//! connection, between IOPub `busy` and `idle` parented to it; everyone's executions show on
//! its IOPub. Limits are the document protocol's: message size, write timeout, pings, a client
//! that falls behind is dropped (4008) and reconnects.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use session_token::Claims;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::connection::{Membership, close, close_with, is_too_big, send_within};
use crate::collab::assist::RateLimit;
use crate::collab::{CellRun, Subscribed, Who};
use crate::jupyter::requests::{self, Execute};
use crate::jupyter::translate::{Origin, Translator};
use crate::jupyter::wire::{self, Channel, Framing, Incoming, Outgoing, WireMessage};
use crate::kernel::ExecOptions;

/// Close code for a frame that is not a Jupyter message (RFC 6455: inconsistent data).
const UNREADABLE: u16 = 1007;
/// How long a `kernel_info_request` waits for a kernel that is starting.
const KERNEL_INFO_WAIT: Duration = Duration::from_secs(30);
/// Comm messages (widgets) a connection may send: a burst, then a steady rate (a dragged
/// slider sends tens a second).
const COMM_BURST: u32 = 200;
const COMMS_PER_SECOND: u32 = 100;
/// Comm requests remembered per connection, to parent the kernel's answers.
const COMMS_REMEMBERED: usize = 256;
/// Side questions in flight and their rate, as on the document protocol.
const MAX_QUESTIONS_IN_FLIGHT: usize = 8;
const QUESTION_BURST: u32 = 20;
const QUESTIONS_PER_SECOND: u32 = 10;

/// Largest request header kept: it is the parent of everything the request causes, copied into
/// each of its messages.
const MAX_HEADER_BYTES: usize = 4096;

/// A request answered later: the request, then the reply's type and content.
type Answer = (WireMessage, String, Value);

struct Conn {
    socket: WebSocket,
    state: Arc<AppState>,
    claims: Claims,
    who: Who,
    client: u64,
    framing: Framing,
    translator: Translator,
    next_request: u64,
    last_heard: Instant,
    answers: FuturesUnordered<BoxFuture<'static, Answer>>,
    questions: RateLimit,
    comm_rate: RateLimit,
    /// This connection's comm requests (`msg_id`, header), the last [`COMMS_REMEMBERED`].
    comm_requests: std::collections::VecDeque<(String, serde_json::Map<String, Value>)>,
}

/// A Jupyter client admitted to the document.
pub(crate) struct Seat {
    pub(crate) claims: Claims,
    pub(crate) who: Who,
    pub(crate) subscribed: Subscribed,
    pub(crate) membership: Membership,
    pub(crate) framing: Framing,
    /// The user and the client's `session_id` (empty: none given); see jupyter_parking.rs.
    pub(crate) session_id: String,
}

pub(crate) async fn serve(socket: WebSocket, state: Arc<AppState>, seat: Seat) {
    let Seat {
        claims,
        who,
        subscribed,
        membership,
        framing,
        session_id,
    } = seat;
    use std::sync::atomic::Ordering::Relaxed;
    metrics::gauge!("middleman_jupyter_connections").increment(1.0);
    state.activity.connections.fetch_add(1, Relaxed);
    state.activity.touch();
    tracing::info!(?framing, "jupyter client connected");
    let version = state
        .hub
        .kernel()
        .kernel_info
        .as_deref()
        .and_then(|info| info.get("protocol_version")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "5.3".to_owned());
    let mut conn = Conn {
        socket,
        state: state.clone(),
        claims,
        who,
        client: subscribed.client,
        framing,
        translator: Translator::new(subscribed.kernel_session, version),
        next_request: 0,
        last_heard: Instant::now(),
        answers: FuturesUnordered::new(),
        questions: RateLimit::new(QUESTION_BURST, QUESTIONS_PER_SECOND, Instant::now()),
        comm_rate: RateLimit::new(COMM_BURST, COMMS_PER_SECOND, Instant::now()),
        comm_requests: std::collections::VecDeque::new(),
    };
    // A client coming back takes its parked session over (jupyter_parking.rs).
    let resumed = if session_id.is_empty() {
        None
    } else {
        state.jupyter_parking.resume(&session_id).await
    };
    let (mut frames, mut comms, missed) = match resumed {
        Some(parked) => {
            tracing::info!(missed = parked.missed.len(), "jupyter session resumed");
            conn.translator = parked.translator;
            let mut missed = parked.missed;
            if let Some(prompt) = conn.translator.pending_prompt()
                && !missed.iter().any(|m| m.msg_id() == prompt.msg_id())
            {
                missed.push(prompt.clone());
            }
            (parked.frames, parked.comms, missed)
        }
        None => (subscribed.frames, state.hub.comms(), Vec::new()),
    };
    let reason = conn.run(&mut frames, &mut comms, missed).await;
    drop(membership);
    // A client that went away may come back: its session waits for it.
    if !session_id.is_empty()
        && matches!(
            reason,
            "closed by client" | "websocket error" | "ping timeout" | "write failed"
        )
    {
        let parked = super::jupyter_parking::Parked {
            translator: conn.translator,
            frames,
            comms,
            missed: Vec::new(),
        };
        state
            .jupyter_parking
            .park(session_id, parked, &state.tracker, state.shutdown.clone());
    }
    state.activity.connections.fetch_sub(1, Relaxed);
    state.activity.touch();
    metrics::gauge!("middleman_jupyter_connections").decrement(1.0);
    metrics::counter!("middleman_ws_disconnects_total", "reason" => reason).increment(1);
    tracing::info!(reason, "jupyter client disconnected");
}

impl Conn {
    async fn run(
        &mut self,
        frames: &mut tokio::sync::broadcast::Receiver<crate::collab::Frame>,
        comms: &mut crate::kernel::CommReceiver,
        missed: Vec<WireMessage>,
    ) -> &'static str {
        for message in missed {
            if self.send(&message).await.is_err() {
                return "write failed";
            }
        }
        let state = self.state.clone();
        let ping_every = state.args.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.close(close::GOING_AWAY, "shutting down").await;
                    return "shutdown";
                }
                frame = frames.recv() => match frame {
                    Ok(frame) => {
                        let Some(event) = frame.event else { continue };
                        let mut out = Vec::new();
                        self.translator.on_event(&event, &mut out);
                        for message in out {
                            if self.send(&message).await.is_err() {
                                return "write failed";
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        metrics::counter!("middleman_slow_clients_total", "action" => "dropped").increment(1);
                        tracing::warn!(missed, "jupyter client fell behind; disconnecting");
                        self.close(close::TOO_SLOW, "too slow: reconnect").await;
                        return "too slow";
                    }
                    Err(RecvError::Closed) => return "session closed",
                },
                comm = comms.recv() => match comm {
                    Ok(event) => {
                        if let Some(message) = self.comm_message(&event)
                            && self.send(&message).await.is_err()
                        {
                            return "write failed";
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        // Widgets' live state, not the document: lost, not resynchronised.
                        metrics::counter!("middleman_comm_messages_dropped_total").increment(missed);
                    }
                    Err(RecvError::Closed) => return "session closed",
                },
                incoming = self.socket.recv() => match incoming {
                    None => return "closed by client",
                    Some(Err(error)) => {
                        if is_too_big(&error) {
                            self.close(close::TOO_BIG, "message too large").await;
                            return "message too large";
                        }
                        tracing::debug!(%error, "websocket error");
                        return "websocket error";
                    }
                    Some(Ok(message)) => {
                        self.last_heard = Instant::now();
                        match self.on_frame(message).await {
                            Ok(()) => {}
                            Err(Ended(reason)) => return reason,
                        }
                    }
                },
                Some((request, msg_type, content)) = self.answers.next(), if !self.answers.is_empty() => {
                    if self.wrapped(&request, &msg_type, content).await.is_err() {
                        return "write failed";
                    }
                }
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > ping_every * 3 {
                        self.close(close::PING_TIMEOUT, "no pong").await;
                        return "ping timeout";
                    }
                    if self.socket_send(Message::Ping(Default::default())).await.is_err() {
                        return "write failed";
                    }
                }
            }
        }
    }

    async fn on_frame(&mut self, message: Message) -> Result<(), Ended> {
        let decoded = match &message {
            Message::Text(text) => wire::decode(self.framing, Incoming::Text(text.as_str())),
            Message::Binary(bytes) => wire::decode(self.framing, Incoming::Binary(bytes)),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };
        self.state.activity.touch();
        let request = match decoded {
            Ok(request) if header_bytes(&request) > MAX_HEADER_BYTES => {
                counted("unknown", "unreadable", "refused");
                self.close(UNREADABLE, "header over 4 KiB").await;
                return Err(Ended("header too large"));
            }
            Ok(request) => request,
            Err(error) => {
                counted("unknown", "unreadable", "refused");
                tracing::info!(%error, "unreadable jupyter frame");
                self.close(UNREADABLE, "not a Jupyter message").await;
                return Err(Ended("unreadable frame"));
            }
        };
        self.on_request(request)
            .await
            .map_err(|()| Ended("write failed"))
    }

    async fn on_request(&mut self, request: WireMessage) -> Result<(), ()> {
        let msg_type = request.msg_type().to_owned();
        let channel = request.channel;
        match (channel, msg_type.as_str()) {
            (Channel::Shell | Channel::Control, "kernel_info_request")
                if self.answers.len() >= MAX_QUESTIONS_IN_FLIGHT =>
            {
                // Asked again and again while the kernel starts: answered now, not queued.
                counted(channel.as_str(), &msg_type, "refused");
                let content = self.state.hub.kernel().kernel_info.as_deref().map_or_else(
                    || error_content("KernelNotReady", "the kernel is starting"),
                    requests::kernel_info,
                );
                self.wrapped(&request, "kernel_info_reply", content).await
            }
            (Channel::Shell | Channel::Control, "kernel_info_request") => {
                counted(channel.as_str(), &msg_type, "answered");
                let mut watch = self.state.hub.session_watch();
                self.answers.push(Box::pin(async move {
                    let wait = watch.wait_for(|s| s.kernel_info.is_some());
                    let info = match tokio::time::timeout(KERNEL_INFO_WAIT, wait).await {
                        Ok(Ok(snapshot)) => snapshot.kernel_info.clone(),
                        _ => None,
                    };
                    let content = info.as_deref().map_or_else(
                        || json!({ "status": "error", "ename": "KernelNotReady", "evalue": "the kernel is not running", "traceback": [] }),
                        requests::kernel_info,
                    );
                    (request, "kernel_info_reply".to_owned(), content)
                }));
                Ok(())
            }
            (Channel::Shell, "execute_request") => self.execute(request).await,
            (Channel::Shell, "comm_open" | "comm_msg" | "comm_close") => {
                self.forward_comm(request).await;
                Ok(())
            }
            (Channel::Shell, other) if requests::side_question(other).is_some() => {
                self.side_question(request).await
            }
            (Channel::Stdin, "input_reply") => {
                let value = request
                    .content
                    .get("value")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let outcome = match self.translator.prompted().map(str::to_owned) {
                    Some(execution) => {
                        let by = self.who.name.clone();
                        match self.state.hub.input_reply(execution, value, by).await {
                            Ok(()) => "answered",
                            Err(_) => "refused",
                        }
                    }
                    None => "unknown",
                };
                counted("stdin", &msg_type, outcome);
                Ok(())
            }
            (Channel::Control, "interrupt_request") => {
                let content = if self.claims.role.can_edit() {
                    match self.state.hub.interrupt(self.who.name.clone()).await {
                        Ok(()) => json!({ "status": "ok" }),
                        Err(refusal) => error_content("NbplatRefused", &refusal.to_string()),
                    }
                } else {
                    error_content("NbplatRefused", "viewers may not interrupt")
                };
                counted("control", &msg_type, "answered");
                self.wrapped(&request, "interrupt_reply", content).await
            }
            (Channel::Control, "shutdown_request") => {
                let restart = request
                    .content
                    .get("restart")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let content = if !self.claims.role.can_edit() {
                    error_content("NbplatRefused", "viewers may not restart the kernel")
                } else if restart {
                    match self.state.hub.restart(self.who.name.clone()).await {
                        Ok(()) => json!({ "status": "ok", "restart": true }),
                        Err(refusal) => error_content("NbplatRefused", &refusal.to_string()),
                    }
                } else {
                    error_content(
                        "NbplatRefused",
                        "the kernel ends when its document is released (DELETE /api/kernels/<id>)",
                    )
                };
                counted("control", &msg_type, "answered");
                self.wrapped(&request, "shutdown_reply", content).await
            }
            _ => {
                // Comms, the debugger, subshells and unknown types: dropped, as ipykernel drops
                // what it does not know.
                counted(channel.as_str(), &msg_type, "dropped");
                tracing::debug!(%msg_type, "jupyter message dropped");
                Ok(())
            }
        }
    }

    /// An `execute_request`: into the document's queue, in its cell (or outside the document
    /// when silent or outside the history). Refused at once: a viewer, a full queue, a dead
    /// kernel.
    async fn execute(&mut self, request: WireMessage) -> Result<(), ()> {
        let parsed = match Execute::parse(&request.content, &request.metadata, request.msg_id()) {
            Ok(parsed) => parsed,
            Err(why) => return self.refuse_execution(&request, why).await,
        };
        if !self.claims.role.can_edit() {
            return self
                .refuse_execution(&request, "viewers may not run code")
                .await;
        }
        self.next_request += 1;
        let request_id = format!("j{}:{}", self.client, self.next_request);
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        self.translator.expect(
            request_id.clone(),
            Origin {
                header: request.header.clone(),
                silent: parsed.silent,
                allow_stdin: parsed.allow_stdin,
                reply: Some(reply_rx),
            },
        );
        let options = ExecOptions {
            silent: parsed.silent,
            store_history: parsed.store_history,
            allow_stdin: parsed.allow_stdin,
            user_expressions: parsed.user_expressions,
            own_prompts: true,
            reply: Some(reply_tx),
        };
        let by = self.who.name.clone();
        let hub = &self.state.hub;
        let queued = match parsed.cell_id {
            Some(cell_id) => {
                let run = CellRun {
                    cell_id,
                    request_id: Some(request_id.clone()),
                    stop_on_error: parsed.stop_on_error,
                    by,
                    options,
                };
                hub.execute_source(run, &parsed.code).await
            }
            None => {
                hub.execute(
                    parsed.code,
                    Some(request_id.clone()),
                    parsed.stop_on_error,
                    by,
                    options,
                )
                .await
            }
        };
        match queued {
            Ok(()) => {
                counted("shell", "execute_request", "queued");
                Ok(())
            }
            Err(refusal) => {
                self.translator.refused(&request_id);
                self.refuse_execution(&request, &refusal.to_string()).await
            }
        }
    }

    /// A comm message from an editor, to the kernel as it is (buffers included).
    async fn forward_comm(&mut self, request: WireMessage) {
        let msg_type = match request.msg_type() {
            "comm_open" => "comm_open",
            "comm_msg" => "comm_msg",
            _ => "comm_close",
        };
        if !self.claims.role.can_edit() || !self.comm_rate.allow(Instant::now()) {
            counted("shell", msg_type, "refused");
            return;
        }
        let forward = crate::kernel::Forward {
            msg_type,
            msg_id: request.msg_id().to_owned(),
            content: Value::Object(request.content),
            metadata: Value::Object(request.metadata),
            buffers: request.buffers,
        };
        if self.comm_requests.len() >= COMMS_REMEMBERED {
            self.comm_requests.pop_front();
        }
        self.comm_requests
            .push_back((forward.msg_id.clone(), request.header));
        let outcome = match self.state.hub.forward(forward).await {
            Ok(()) => "answered",
            Err(_) => "refused",
        };
        counted("shell", msg_type, outcome);
    }

    /// A kernel comm message as this connection sees it: parented to its own request or
    /// execution when it is one, to a header naming the execution otherwise. The status of
    /// another connection's comm request is not this connection's business.
    fn comm_message(&self, event: &crate::kernel::CommEvent) -> Option<WireMessage> {
        use crate::kernel::CommParent;
        let mine = |msg_id: &str| {
            self.comm_requests
                .iter()
                .find(|(id, _)| id == msg_id)
                .map(|(_, header)| header.clone())
        };
        let parent = match &event.parent {
            CommParent::Execution(id) => self.translator.parent(id),
            CommParent::Request(msg_id) => match mine(msg_id) {
                Some(header) => header,
                None if event.msg_type == "status" => return None,
                None => serde_json::Map::from_iter([
                    ("msg_id".to_owned(), Value::from(msg_id.as_str())),
                    ("msg_type".to_owned(), Value::from("comm_msg")),
                ]),
            },
            CommParent::None if event.msg_type == "status" => return None,
            CommParent::None => serde_json::Map::new(),
        };
        let mut message = self.translator.message(
            Channel::Iopub,
            &event.msg_type,
            parent,
            event.content.clone(),
        );
        if let Value::Object(metadata) = &event.metadata {
            message.metadata = metadata.clone();
        }
        message.buffers = event.buffers.clone();
        Some(message)
    }

    async fn refuse_execution(&mut self, request: &WireMessage, why: &str) -> Result<(), ()> {
        counted("shell", "execute_request", "refused");
        self.wrapped(request, "execute_reply", requests::refused_reply(why))
            .await
    }

    /// A completion, inspection, history... asked of the kernel as it is; an empty answer
    /// when it cannot be asked now.
    async fn side_question(&mut self, request: WireMessage) -> Result<(), ()> {
        let msg_type = request.msg_type().to_owned();
        let Some(question) = requests::side_question(&msg_type) else {
            return Ok(());
        };
        let reply_type = requests::reply_type(&msg_type);
        let allowed = self.claims.role.can_edit()
            && self.answers.len() < MAX_QUESTIONS_IN_FLIGHT
            && self.questions.allow(Instant::now());
        if !allowed {
            counted("shell", &msg_type, "refused");
            let content = requests::empty_answer(&msg_type, &request.content);
            return self.wrapped(&request, &reply_type, content).await;
        }
        let hub = self.state.hub.clone();
        self.answers.push(Box::pin(async move {
            let asked = Value::Object(request.content.clone());
            let content = match hub.ask_raw(question, asked).await {
                Ok(content) => {
                    counted("shell", &msg_type, "answered");
                    content
                }
                Err(why) => {
                    tracing::debug!(%why, %msg_type, "side question not answered");
                    counted("shell", &msg_type, "refused");
                    requests::empty_answer(&msg_type, &request.content)
                }
            };
            (request, reply_type, content)
        }));
        Ok(())
    }

    /// Sends `content` as the reply to `request` on its channel, between IOPub busy and idle
    /// parented to it (a client's request completes when both have come).
    async fn wrapped(
        &mut self,
        request: &WireMessage,
        msg_type: &str,
        content: Value,
    ) -> Result<(), ()> {
        let parent = request.header.clone();
        let busy = self.translator.status(parent.clone(), "busy");
        let reply = self
            .translator
            .message(request.channel, msg_type, parent.clone(), content);
        let idle = self.translator.status(parent, "idle");
        for message in [busy, reply, idle] {
            self.send(&message).await?;
        }
        Ok(())
    }

    async fn send(&mut self, message: &WireMessage) -> Result<(), ()> {
        let frame = match wire::encode(self.framing, message) {
            Outgoing::Text(text) => Message::Text(Utf8Bytes::from(text)),
            Outgoing::Binary(bytes) => Message::Binary(bytes.into()),
        };
        self.socket_send(frame).await
    }

    async fn socket_send(&mut self, message: Message) -> Result<(), ()> {
        send_within(&mut self.socket, message).await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        close_with(&mut self.socket, code, reason).await;
    }
}

/// Why a connection ended.
struct Ended(&'static str);

/// The size of a request's header as JSON.
fn header_bytes(request: &WireMessage) -> usize {
    serde_json::to_vec(&request.header).map_or(usize::MAX, |v| v.len())
}

fn error_content(ename: &str, evalue: &str) -> Value {
    json!({ "status": "error", "ename": ename, "evalue": evalue, "traceback": [] })
}

/// Counts a client message by channel, type (known types only, so the label stays bounded)
/// and outcome.
fn counted(channel: &str, msg_type: &str, outcome: &'static str) {
    const KNOWN: [&str; 14] = [
        "kernel_info_request",
        "execute_request",
        "complete_request",
        "inspect_request",
        "is_complete_request",
        "history_request",
        "comm_info_request",
        "input_reply",
        "interrupt_request",
        "shutdown_request",
        "comm_msg",
        "comm_open",
        "comm_close",
        "unreadable",
    ];
    let msg_type = KNOWN
        .iter()
        .find(|known| **known == msg_type)
        .copied()
        .unwrap_or("other");
    let channel = match channel {
        "shell" => "shell",
        "control" => "control",
        "stdin" => "stdin",
        _ => "unknown",
    };
    metrics::counter!("middleman_jupyter_messages_total", "channel" => channel, "msg_type" => msg_type, "outcome" => outcome).increment(1);
}
