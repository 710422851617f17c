//! The client side of the five Jupyter channels over `ipc://`, with one reader task per
//! receiving channel feeding the session actor.

use std::time::Duration;

use jupyter_protocol::{ConnectionInfo, JupyterMessage, JupyterMessageContent, KernelInfoRequest};
use jupyter_zmq_client::{Connection, DealerSendConnection};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument as _;
use zeromq::{Socket as _, SocketRecv, SocketSend as _};

use super::KernelError;

/// Which channel a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Shell,
    IoPub,
    Stdin,
    Control,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::IoPub => "iopub",
            Channel::Stdin => "stdin",
            Channel::Control => "control",
        }
    }
}

/// Something the kernel side reports to the session actor.
#[derive(Debug)]
pub(crate) enum KernelEvent {
    /// A message on one of the channels.
    Message(Channel, Box<JupyterMessage>),
    /// An IOPub message too large to decode whole.
    Oversized(super::wire::Oversized),
    /// Three heartbeats in a row went unanswered.
    HeartbeatLost,
    /// The kernel process ended (as the agent reported it).
    Exited(kernel_sandbox::KernelExit),
    /// The startup handshake finished.
    Started(Result<Box<KernelSockets>, StartupError>),
}

/// Why a kernel's startup handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartupError {
    /// A channel could not be connected or used.
    #[error(transparent)]
    Connect(#[from] KernelError),
    /// No `kernel_info_reply` came in time.
    #[error("the kernel did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// A [`KernelEvent`] of one kernel generation; events of older generations are ignored.
#[derive(Debug)]
pub(crate) struct Tagged {
    pub(crate) generation: u64,
    pub(crate) event: KernelEvent,
}

/// The sending halves of a connected kernel; dropping it stops every reader task.
pub(crate) struct KernelSockets {
    pub(crate) shell: DealerSendConnection,
    pub(crate) control: DealerSendConnection,
    pub(crate) stdin: DealerSendConnection,
    pub(crate) kernel_info: Option<jupyter_protocol::KernelInfoReply>,
    /// The kernel subshell side questions go to (ipykernel 7): they are answered while a cell
    /// runs. `None` when the kernel has no subshells.
    pub(crate) subshell: Option<String>,
    tasks: Vec<AbortHandle>,
    connection: ConnectionInfo,
}

impl std::fmt::Debug for KernelSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSockets")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Drop for KernelSockets {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn socket_err(channel: &'static str) -> impl Fn(jupyter_zmq_client::RuntimeError) -> KernelError {
    move |e| KernelError::Socket {
        channel,
        reason: e.to_string(),
    }
}

/// Connects every channel and performs the startup handshake: `kernel_info_request` is sent
/// (and re-sent) until the reply arrives on shell *and* some message has arrived on IOPub, which
/// proves our subscription is live (the late-subscriber problem: a PUB socket drops what it
/// publishes before the subscription reaches it).
pub(crate) async fn connect(
    info: &ConnectionInfo,
    generation: u64,
    events: mpsc::Sender<Tagged>,
    max_message_bytes: usize,
) -> Result<Box<KernelSockets>, KernelError> {
    let session = uuid::Uuid::new_v4().to_string();
    let identity =
        jupyter_zmq_client::peer_identity_for_session(&session).map_err(socket_err("shell"))?;
    let mut iopub = jupyter_zmq_client::create_client_iopub_connection(info, "", &session)
        .await
        .map_err(socket_err("iopub"))?;
    let mut shell = jupyter_zmq_client::create_client_shell_connection_with_identity(
        info,
        &session,
        identity.clone(),
    )
    .await
    .map_err(socket_err("shell"))?;
    let stdin =
        jupyter_zmq_client::create_client_stdin_connection_with_identity(info, &session, identity)
            .await
            .map_err(socket_err("stdin"))?;
    let mut control = jupyter_zmq_client::create_client_control_connection(info, &session)
        .await
        .map_err(socket_err("control"))?;

    let mut kernel_info = None;
    let mut has_subshells = false;
    let mut iopub_live = false;
    while kernel_info.is_none() || !iopub_live {
        let request: JupyterMessage = KernelInfoRequest {}.into();
        let request_id = request.header.msg_id.clone();
        shell.send(request).await.map_err(socket_err("shell"))?;
        let round = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(round);
        loop {
            tokio::select! {
                () = &mut round => break,
                m = read_raw(&mut shell.socket, &shell.mac), if kernel_info.is_none() => {
                    let Some(raw) = m? else { continue };
                    let features = lists_subshells(&raw);
                    if let Ok(msg) = super::wire::decode(raw)
                        && msg.parent_header.as_ref().is_some_and(|h| h.msg_id == request_id)
                        && let JupyterMessageContent::KernelInfoReply(reply) = msg.content
                    {
                        kernel_info = Some(*reply);
                        has_subshells = features;
                    }
                }
                m = read_one(&mut iopub.socket, &iopub.mac), if !iopub_live => {
                    if m?.is_some() {
                        iopub_live = true;
                    }
                }
            }
            if kernel_info.is_some() && iopub_live {
                break;
            }
        }
    }

    // Warm-up: a pre-booted kernel should already have paid for its first execution (IPython's
    // first run_cell costs about twice a later one). Not silent (a silent run warms up less), but
    // outside the history, so no execution count is used; its outputs belong to no execution and
    // are ignored. Best effort, bounded.
    let mut warm = jupyter_protocol::ExecuteRequest::new("None".into());
    warm.silent = false;
    warm.store_history = false;
    warm.allow_stdin = false;
    let warm: JupyterMessage = warm.into();
    let warm_id = warm.header.msg_id.clone();
    shell.send(warm).await.map_err(socket_err("shell"))?;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read_one(&mut shell.socket, &shell.mac).await {
                Ok(Some(m))
                    if m.parent_header
                        .as_ref()
                        .is_some_and(|h| h.msg_id == warm_id) =>
                {
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;

    // Only a kernel that lists subshells is asked for one: one that does not know the request
    // never answers it (Deno's), and waiting for that cost a second of every start.
    let subshell = if has_subshells {
        create_subshell(&mut control, &session).await
    } else {
        None
    };
    tracing::debug!(subshell = ?subshell, "kernel subshell");

    let (shell_tx, shell_rx) = shell.split();
    let (stdin_tx, stdin_rx) = stdin.split();
    let (control_tx, control_rx) = control.split();
    let tasks = vec![
        spawn_reader(
            iopub,
            Channel::IoPub,
            generation,
            events.clone(),
            max_message_bytes,
        ),
        spawn_reader(
            shell_rx,
            Channel::Shell,
            generation,
            events.clone(),
            usize::MAX,
        ),
        spawn_reader(
            stdin_rx,
            Channel::Stdin,
            generation,
            events.clone(),
            usize::MAX,
        ),
        spawn_reader(control_rx, Channel::Control, generation, events, usize::MAX),
    ];
    Ok(Box::new(KernelSockets {
        shell: shell_tx,
        control: control_tx,
        stdin: stdin_tx,
        kernel_info,
        subshell,
        tasks,
        connection: info.clone(),
    }))
}

/// How long a kernel that lists subshells may take to answer `create_subshell_request`.
const SUBSHELL_WAIT: Duration = Duration::from_secs(1);

/// Asks the kernel for a subshell (JEP 91, ipykernel 7): a second thread answering shell
/// requests beside the one running cells. `None` if the kernel has none to give.
async fn create_subshell(
    control: &mut Connection<zeromq::DealerSocket>,
    session: &str,
) -> Option<String> {
    let (request_id, request) = super::wire::encode_request(
        "create_subshell_request",
        &serde_json::json!({}),
        session,
        None,
        &control.mac,
    )
    .ok()?;
    control.socket.send(request).await.ok()?;
    tokio::time::timeout(SUBSHELL_WAIT, async {
        loop {
            let msg = read_one(&mut control.socket, &control.mac).await.ok()?;
            let Some(msg) = msg.filter(|m| {
                m.parent_header
                    .as_ref()
                    .is_some_and(|h| h.msg_id == request_id)
            }) else {
                continue;
            };
            let JupyterMessageContent::UnknownMessage(reply) = msg.content else {
                return None;
            };
            return reply
                .content
                .get("subshell_id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
        }
    })
    .await
    .ok()
    .flatten()
}

impl KernelSockets {
    /// Sends a side question (completion, inspection, the helper's `nbplat_request`) on the
    /// shell channel, to the subshell when there is one. Returns its `msg_id`.
    pub(crate) async fn ask(
        &mut self,
        msg_type: &str,
        content: &serde_json::Value,
    ) -> Result<String, KernelError> {
        let subshell = self.subshell.clone();
        self.ask_on(msg_type, content, subshell.as_deref()).await
    }

    /// Sends a request on the main shell (in order with executions); returns its `msg_id`.
    pub(crate) async fn ask_main(
        &mut self,
        msg_type: &str,
        content: &serde_json::Value,
    ) -> Result<String, KernelError> {
        self.ask_on(msg_type, content, None).await
    }

    /// Passes a Jupyter client's message (a comm message, with its buffers) to the kernel's
    /// main shell.
    pub(crate) async fn forward(
        &mut self,
        outgoing: &super::wire::Outgoing<'_>,
    ) -> Result<(), KernelError> {
        let failed = |reason: String| KernelError::Socket {
            channel: "shell",
            reason,
        };
        let (_, message) =
            super::wire::encode_message(outgoing, &self.shell.session_id, None, &self.shell.mac)
                .map_err(|e| failed(e.to_string()))?;
        self.shell
            .socket
            .send(message)
            .await
            .map_err(|e| failed(e.to_string()))
    }

    async fn ask_on(
        &mut self,
        msg_type: &str,
        content: &serde_json::Value,
        subshell: Option<&str>,
    ) -> Result<String, KernelError> {
        let failed = |reason: String| KernelError::Socket {
            channel: "shell",
            reason,
        };
        let (id, message) = super::wire::encode_request(
            msg_type,
            content,
            &self.shell.session_id,
            subshell,
            &self.shell.mac,
        )
        .map_err(|e| failed(e.to_string()))?;
        self.shell
            .socket
            .send(message)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(id)
    }
}

impl KernelSockets {
    /// Starts the heartbeat monitor: a ping every `interval`; three unanswered in a row report
    /// [`KernelEvent::HeartbeatLost`].
    pub(crate) fn start_heartbeat(
        &mut self,
        interval: Duration,
        generation: u64,
        events: mpsc::Sender<Tagged>,
    ) {
        let info = self.connection.clone();
        let task = tokio::spawn(
            async move {
                let mut misses = 0u32;
                let mut socket: Option<zeromq::ReqSocket> = None;
                loop {
                    tokio::time::sleep(interval).await;
                    let beat = async {
                        let s = match socket.as_mut() {
                            Some(s) => s,
                            None => {
                                let mut s = zeromq::ReqSocket::new();
                                s.connect(&info.hb_url()).await.map_err(|e| e.to_string())?;
                                socket.insert(s)
                            }
                        };
                        s.send(zeromq::ZmqMessage::from(b"ping".to_vec())).await.map_err(|e| e.to_string())?;
                        s.recv().await.map_err(|e| e.to_string())?;
                        Ok::<(), String>(())
                    };
                    match tokio::time::timeout(interval, beat).await {
                        Ok(Ok(())) => misses = 0,
                        outcome => {
                            // A REQ socket that missed its reply cannot send again: start over.
                            socket = None;
                            misses += 1;
                            tracing::warn!(misses, error = ?outcome.err().map(|_| "timeout"), "kernel heartbeat missed");
                            if misses >= 3 {
                                let _ = events.send(Tagged { generation, event: KernelEvent::HeartbeatLost }).await;
                                return;
                            }
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("heartbeat", generation)),
        );
        self.tasks.push(task.abort_handle());
    }
}

/// Reads one message; `Ok(None)` for a message that was received but could not be decoded.
async fn read_one<S: SocketRecv>(
    socket: &mut S,
    mac: &Option<ring::hmac::Key>,
) -> Result<Option<JupyterMessage>, KernelError> {
    Ok(read_raw(socket, mac)
        .await?
        .and_then(|raw| super::wire::decode(raw).ok()))
}

/// Like [`read_one`], but undecoded: the handshake reads a field the typed reply drops.
async fn read_raw<S: SocketRecv>(
    socket: &mut S,
    mac: &Option<ring::hmac::Key>,
) -> Result<Option<jupyter_zmq_client::RawMessage>, KernelError> {
    let multipart = socket.recv().await.map_err(|e| KernelError::Socket {
        channel: "handshake",
        reason: e.to_string(),
    })?;
    Ok(super::wire::split_and_verify(multipart, mac).ok())
}

/// Whether a `kernel_info_reply` lists `kernel subshells` among its `supported_features`
/// (JEP 91; ipykernel 7 does, Deno's kernel lists none).
fn lists_subshells(raw: &jupyter_zmq_client::RawMessage) -> bool {
    raw.jparts
        .get(3)
        .and_then(|content| serde_json::from_slice::<serde_json::Value>(content).ok())
        .and_then(|content| {
            content
                .get("supported_features")?
                .as_array()
                .map(|features| features.iter().any(|f| f == "kernel subshells"))
        })
        .unwrap_or(false)
}

/// Reads `conn` until it fails, forwarding decoded messages. A message whose content is larger
/// than `max_bytes` is not decoded whole: only its headers and a prefix of a stream's text are
/// kept, so a flooding kernel costs one copy of its bytes, not three.
fn spawn_reader<S: SocketRecv + Send + 'static>(
    mut conn: Connection<S>,
    channel: Channel,
    generation: u64,
    events: mpsc::Sender<Tagged>,
    max_bytes: usize,
) -> AbortHandle {
    tokio::spawn(
        async move {
            loop {
                let multipart = match conn.socket.recv().await {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::debug!(%error, "kernel channel closed");
                        return;
                    }
                };
                let raw = match super::wire::split_and_verify(multipart, &conn.mac) {
                    Ok(raw) => raw,
                    Err(error) => {
                        metrics::counter!("middleman_kernel_messages_dropped_total", "channel" => channel.as_str())
                            .increment(1);
                        tracing::warn!(%error, "dropped an unverifiable kernel message");
                        continue;
                    }
                };
                if raw.jparts.get(3).is_some_and(|c| c.len() > max_bytes) {
                    match super::wire::decode_oversized(&raw, max_bytes) {
                        Ok(o) => {
                            if events.send(Tagged { generation, event: KernelEvent::Oversized(o) }).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => tracing::warn!(%error, "dropped an oversized kernel message"),
                    }
                    continue;
                }
                match super::wire::decode(raw).map_err(|e| e.to_string()) {
                    Ok(msg) => {
                        let event = KernelEvent::Message(channel, Box::new(msg));
                        if events.send(Tagged { generation, event }).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        metrics::counter!("middleman_kernel_messages_dropped_total", "channel" => channel.as_str())
                            .increment(1);
                        tracing::warn!(%error, "dropped an undecodable kernel message");
                    }
                }
            }
        }
        .instrument(tracing::debug_span!("kernel_reader", channel = channel.as_str(), generation)),
    )
    .abort_handle()
}
