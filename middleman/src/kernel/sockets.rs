//! A connected kernel: its five Jupyter channels ([`super::channels`]) opened, the startup
//! handshake, a subshell for side questions, the heartbeat, and what the session actor sends
//! and reads through them.

use std::time::Duration;

use bytes::Bytes;
use jupyter_protocol::{JupyterMessage, JupyterMessageContent, KernelInfoRequest};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument as _;

use super::KernelError;
use super::channels::{Endpoints, Inbound, Inbox, Outbound, Sender, Signer, spawn_reader};
use super::wire::RawMessage;
use super::zmtp::{Kind, Receiver};

/// Which channel a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Shell,
    IoPub,
    Stdin,
    Control,
}

impl Channel {
    pub(super) fn as_str(self) -> &'static str {
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
    pub(crate) shell: Outbound,
    pub(crate) control: Outbound,
    pub(crate) stdin: Outbound,
    pub(crate) kernel_info: Option<jupyter_protocol::KernelInfoReply>,
    /// The kernel subshell side questions go to (ipykernel 7): they are answered while a cell
    /// runs. `None` when the kernel has no subshells.
    pub(crate) subshell: Option<String>,
    /// Shell and IOPub, read by the session actor itself (one wake-up per message, not two).
    inbox: Inbox,
    tasks: Vec<AbortHandle>,
    endpoints: Endpoints,
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

/// Connects every channel and performs the startup handshake: `kernel_info_request` is sent
/// (and re-sent) until the reply arrives on shell *and* some message has arrived on IOPub, which
/// proves our subscription is live (the late-subscriber problem: a PUB socket drops what it
/// publishes before the subscription reaches it).
pub(crate) async fn connect(
    endpoints: &Endpoints,
    generation: u64,
    events: mpsc::Sender<Tagged>,
    max_message_bytes: usize,
) -> Result<Box<KernelSockets>, KernelError> {
    let info = &endpoints.info;
    let signer = Signer {
        session: uuid::Uuid::new_v4().to_string(),
        mac: (!info.key.is_empty())
            .then(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, info.key.as_bytes())),
    };
    // Shell and stdin share an identity: the kernel sends `input_request` to the stdin socket
    // of the shell request's sender.
    let identity = signer.session.as_bytes();
    let inbound = |receiver, subscribed| Inbound {
        receiver,
        mac: signer.mac.clone(),
        _subscribed: subscribed,
    };
    let outbound = |sender| Outbound {
        sender,
        signer: signer.clone(),
    };
    let (iopub, subscribed) = endpoints
        .open(info.iopub_port, Kind::Sub, None, "iopub")
        .await?;
    let (shell_rx, shell) = endpoints
        .open(info.shell_port, Kind::Dealer, Some(identity), "shell")
        .await?;
    let (stdin_rx, stdin) = endpoints
        .open(info.stdin_port, Kind::Dealer, Some(identity), "stdin")
        .await?;
    let (control_rx, control) = endpoints
        .open(info.control_port, Kind::Dealer, None, "control")
        .await?;
    let mut iopub = inbound(iopub, Some(subscribed));
    let (mut shell_rx, mut control_rx) = (inbound(shell_rx, None), inbound(control_rx, None));
    let (mut shell, mut control) = (outbound(shell), outbound(control));

    let mut kernel_info = None;
    let mut has_subshells = false;
    let mut iopub_live = false;
    while kernel_info.is_none() || !iopub_live {
        let request: JupyterMessage = KernelInfoRequest {}.into();
        let request_id = request.header.msg_id.clone();
        shell.send(request).await?;
        let round = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(round);
        loop {
            tokio::select! {
                () = &mut round => break,
                m = shell_rx.read_raw(), if kernel_info.is_none() => {
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
                m = iopub.read_one(), if !iopub_live => {
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
    shell.send(warm).await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match shell_rx.read_one().await {
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
        create_subshell(&mut control, &mut control_rx).await
    } else {
        None
    };
    tracing::debug!(subshell = ?subshell, "kernel subshell");

    let tasks = vec![
        spawn_reader(
            inbound(stdin_rx, None),
            Channel::Stdin,
            generation,
            events.clone(),
        ),
        spawn_reader(control_rx, Channel::Control, generation, events),
    ];
    Ok(Box::new(KernelSockets {
        shell,
        control,
        stdin: outbound(stdin),
        kernel_info,
        subshell,
        inbox: Inbox {
            shell: Some(shell_rx),
            iopub: Some(iopub),
            max_iopub_bytes: max_message_bytes,
        },
        tasks,
        endpoints: endpoints.clone(),
    }))
}

/// How long a kernel that lists subshells may take to answer `create_subshell_request`.
const SUBSHELL_WAIT: Duration = Duration::from_secs(1);

/// Asks the kernel for a subshell (JEP 91, ipykernel 7): a second thread answering shell
/// requests beside the one running cells. `None` if the kernel has none to give.
async fn create_subshell(control: &mut Outbound, replies: &mut Inbound) -> Option<String> {
    let (request_id, request) = super::wire::encode_request(
        "create_subshell_request",
        &serde_json::json!({}),
        &control.signer.session,
        None,
        &control.signer.mac,
    )
    .ok()?;
    control.sender.send_frames(&request).await.ok()?;
    tokio::time::timeout(SUBSHELL_WAIT, async {
        loop {
            let msg = replies.read_one().await.ok()?;
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
    /// The next message on shell or IOPub; see [`Inbox::next`].
    pub(crate) async fn next_event(&mut self) -> KernelEvent {
        self.inbox.next().await
    }

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
        let signer = &self.shell.signer;
        let (_, message) =
            super::wire::encode_message(outgoing, &signer.session, None, &signer.mac).map_err(
                |e| KernelError::Socket {
                    channel: "shell",
                    reason: e.to_string(),
                },
            )?;
        self.shell.sender.send_frames(&message).await
    }

    async fn ask_on(
        &mut self,
        msg_type: &str,
        content: &serde_json::Value,
        subshell: Option<&str>,
    ) -> Result<String, KernelError> {
        let signer = &self.shell.signer;
        let (id, message) =
            super::wire::encode_request(msg_type, content, &signer.session, subshell, &signer.mac)
                .map_err(|e| KernelError::Socket {
                    channel: "shell",
                    reason: e.to_string(),
                })?;
        self.shell.sender.send_frames(&message).await?;
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
        let endpoints = self.endpoints.clone();
        let task = tokio::spawn(
            async move {
                let mut misses = 0u32;
                let mut socket: Option<(Receiver, Sender)> = None;
                loop {
                    tokio::time::sleep(interval).await;
                    let beat = async {
                        let (receiver, sender) = match socket.as_mut() {
                            Some(s) => s,
                            None => socket.insert(
                                endpoints.open(endpoints.info.hb_port, Kind::Req, None, "heartbeat").await?,
                            ),
                        };
                        sender.send_frames(&[Bytes::from_static(b"ping")]).await?;
                        receiver.recv().await.map_err(|e| KernelError::Socket {
                            channel: "heartbeat",
                            reason: e.to_string(),
                        })?;
                        Ok::<(), KernelError>(())
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

/// Whether a `kernel_info_reply` lists `kernel subshells` among its `supported_features`
/// (JEP 91; ipykernel 7 does, Deno's kernel lists none).
fn lists_subshells(raw: &RawMessage) -> bool {
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
