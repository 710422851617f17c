//! One kernel channel's two halves over our ZeroMQ peer ([`super::zmtp`]): opening it (an ipc
//! socket, a TCP port, or a connection the jail's bridge hands over), signing what is sent,
//! and verifying and decoding what arrives: on shell and IOPub read by the session actor
//! itself ([`Inbox`]), on stdin and control by a reader task each.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use jupyter_protocol::connection_info::Transport;
use jupyter_protocol::{ConnectionInfo, JupyterMessage};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument as _;

use super::KernelError;
use super::sockets::{Channel, KernelEvent, Tagged};
use super::wire::RawMessage;
use super::zmtp::{self, Kind, Receiver, Stream};

/// Where a kernel's channels are, as Middleman reaches them.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) info: ConnectionInfo,
    /// The ipc sockets are the jail's bridge, which hands over a TCP connection to the kernel's
    /// port for each connection made (a TCP-only kernel in its own network namespace).
    pub(crate) handed: bool,
}

impl Endpoints {
    /// Connects to `port`'s channel, retrying while the kernel (or its jail) is not listening
    /// yet; the caller bounds the wait.
    pub(super) async fn open(
        &self,
        port: u16,
        kind: Kind,
        identity: Option<&[u8]>,
        channel: &'static str,
    ) -> Result<(Receiver, Sender), KernelError> {
        let mut pause = Duration::from_millis(1);
        loop {
            match self.try_open(port, kind, identity).await {
                Ok((receiver, sender)) => return Ok((receiver, Sender { channel, sender })),
                Err(error @ zmtp::ZmtpError::Incompatible(_))
                | Err(error @ zmtp::ZmtpError::Handshake(_)) => {
                    return Err(KernelError::Socket {
                        channel,
                        reason: error.to_string(),
                    });
                }
                Err(error) => {
                    tracing::trace!(%error, channel, "kernel channel not open yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    async fn try_open(
        &self,
        port: u16,
        kind: Kind,
        identity: Option<&[u8]>,
    ) -> Result<(Receiver, zmtp::Sender), zmtp::ZmtpError> {
        let info = &self.info;
        let stream = match info.transport {
            Transport::IPC => {
                let path = PathBuf::from(format!("{}-{port}", info.ip));
                if self.handed {
                    Stream::handed(&path).await?
                } else {
                    Stream::unix(&path).await?
                }
            }
            Transport::TCP => Stream::tcp(&info.ip, port).await?,
        };
        zmtp::handshake(stream, kind, identity).await
    }
}

/// A channel's sending half, signing what it sends.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(super) channel: &'static str,
    pub(super) sender: zmtp::Sender,
}

impl Sender {
    pub(super) async fn send_frames(&mut self, frames: &[Bytes]) -> Result<(), KernelError> {
        self.sender
            .send(frames)
            .await
            .map_err(|e| KernelError::Socket {
                channel: self.channel,
                reason: e.to_string(),
            })
    }
}

/// The kernel's session as we sign for it.
#[derive(Clone)]
pub(super) struct Signer {
    pub(super) session: String,
    pub(super) mac: Option<ring::hmac::Key>,
}

/// A channel the session actor sends typed messages on.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(super) sender: Sender,
    pub(super) signer: Signer,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Signs `message` as our session's and writes it to the kernel.
    pub(crate) async fn send(&mut self, message: JupyterMessage) -> Result<(), KernelError> {
        let frames =
            super::wire::encode(message, &self.signer.session, &self.signer.mac).map_err(|e| {
                KernelError::Socket {
                    channel: self.sender.channel,
                    reason: e.to_string(),
                }
            })?;
        self.sender.send_frames(&frames).await
    }
}

/// A receiving half with what checks its messages.
pub(super) struct Inbound {
    pub(super) receiver: Receiver,
    pub(super) mac: Option<ring::hmac::Key>,
    /// IOPub's sending half, which sends nothing after subscribing but must stay open: a
    /// dropped half shuts the connection's sending side, and the kernel's end then closes it.
    pub(super) _subscribed: Option<Sender>,
}

impl Inbound {
    /// Reads one message; `Ok(None)` for one that was received but could not be verified.
    pub(super) async fn read_raw(&mut self) -> Result<Option<RawMessage>, KernelError> {
        let frames = self
            .receiver
            .recv()
            .await
            .map_err(|e| KernelError::Socket {
                channel: "handshake",
                reason: e.to_string(),
            })?;
        Ok(super::wire::split_and_verify(frames, &self.mac).ok())
    }

    /// Reads one message; `Ok(None)` for one that could not be verified or decoded.
    pub(super) async fn read_one(&mut self) -> Result<Option<JupyterMessage>, KernelError> {
        Ok(self
            .read_raw()
            .await?
            .and_then(|raw| super::wire::decode(raw).ok()))
    }
}

/// Shell and IOPub, for the session actor to read in its own loop.
pub(super) struct Inbox {
    /// `None` once the channel closed.
    pub(super) shell: Option<Inbound>,
    pub(super) iopub: Option<Inbound>,
    pub(super) max_iopub_bytes: usize,
}

impl Inbox {
    /// The next message on shell or IOPub (pending for ever once both closed: the kernel's
    /// exit or heartbeat reports the loss). Cancel-safe.
    pub(super) async fn next(&mut self) -> KernelEvent {
        let inbox = self;
        loop {
            let (channel, received) = tokio::select! {
                m = recv(inbox.shell.as_mut()) => (Channel::Shell, m),
                m = recv(inbox.iopub.as_mut()) => (Channel::IoPub, m),
            };
            let (slot, max_bytes) = match channel {
                Channel::IoPub => (&mut inbox.iopub, inbox.max_iopub_bytes),
                _ => (&mut inbox.shell, usize::MAX),
            };
            match received {
                Ok(frames) => {
                    let Some(conn) = slot.as_ref() else { continue };
                    if let Some(event) = take(frames, &conn.mac, channel, max_bytes) {
                        return event;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, channel = channel.as_str(), "kernel channel closed");
                    *slot = None;
                }
            }
        }
    }
}

/// Receives on `conn`, or never when it is closed.
async fn recv(conn: Option<&mut Inbound>) -> Result<Vec<Bytes>, zmtp::ZmtpError> {
    match conn {
        Some(conn) => conn.receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Verifies and decodes one message from `channel`. A message whose content is larger than
/// `max_bytes` is not decoded whole: only its headers and a prefix of a stream's text are
/// kept, so a flooding kernel costs one copy of its bytes, not three. `None` for a message
/// dropped (unverifiable or undecodable: counted and logged).
fn take(
    frames: Vec<Bytes>,
    mac: &Option<ring::hmac::Key>,
    channel: Channel,
    max_bytes: usize,
) -> Option<KernelEvent> {
    let dropped = |what: &str, error: &dyn std::fmt::Display| {
        metrics::counter!("middleman_kernel_messages_dropped_total", "channel" => channel.as_str())
            .increment(1);
        tracing::warn!(%error, channel = channel.as_str(), "dropped {what} kernel message");
    };
    let raw = match super::wire::split_and_verify(frames, mac) {
        Ok(raw) => raw,
        Err(error) => {
            dropped("an unverifiable", &error);
            return None;
        }
    };
    if raw.jparts.get(3).is_some_and(|c| c.len() > max_bytes) {
        return match super::wire::decode_oversized(&raw, max_bytes) {
            Ok(o) => Some(KernelEvent::Oversized(o)),
            Err(error) => {
                tracing::warn!(%error, "dropped an oversized kernel message");
                None
            }
        };
    }
    match super::wire::decode(raw) {
        Ok(msg) => Some(KernelEvent::Message(channel, Box::new(msg))),
        Err(error) => {
            dropped("an undecodable", &error);
            None
        }
    }
}

/// Reads stdin or control until it fails, forwarding what arrives to the session actor.
pub(super) fn spawn_reader(
    conn: Inbound,
    channel: Channel,
    generation: u64,
    events: mpsc::Sender<Tagged>,
) -> AbortHandle {
    tokio::spawn(
        async move {
            let mut conn = conn;
            loop {
                let frames = match conn.receiver.recv().await {
                    Ok(frames) => frames,
                    Err(error) => {
                        tracing::debug!(%error, "kernel channel closed");
                        return;
                    }
                };
                if let Some(event) = take(frames, &conn.mac, channel, usize::MAX)
                    && events.send(Tagged { generation, event }).await.is_err()
                {
                    return;
                }
            }
        }
        .instrument(tracing::debug_span!(
            "kernel_reader",
            channel = channel.as_str(),
            generation
        )),
    )
    .abort_handle()
}
