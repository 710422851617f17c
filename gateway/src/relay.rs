//! The WebSocket relay: one client, one upstream connection to the pod's Middleman, frames
//! passed on one at a time. Nothing is queued here: a frame is read from one side only once
//! the previous one was accepted by the other, so a slow reader slows its own upstream (and
//! Middleman's bounded queue resynchronises or drops it) and the gateway's memory per
//! connection stays a few kilobytes. A client that accepts nothing for `--send-timeout` is
//! closed (4008); one that sends nothing, pongs included, for `--idle-timeout` too (4000).
//!
//! How a relay ends decides what the client is told: the pod's own close passes through, but
//! when the pod goes away the resolver is asked why, and a pod whose allocation ended closes
//! its clients with 4410 and the reason; a draining gateway closes with 1012, and the client
//! reconnects through another replica and resumes by sequence number.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::resolve::{Resolver, Route};

/// Close codes the gateway sends (docs/gateway.md).
pub mod close {
    pub const TOO_LARGE: u16 = 1009;
    pub const RESTARTING: u16 = 1012;
    pub const BAD_GATEWAY: u16 = 1014;
    pub const IDLE: u16 = 4000;
    pub const TOO_SLOW: u16 = 4008;
    pub const POD_ENDED: u16 = 4410;
}

/// The tunables of every relay.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    pub max_frame_bytes: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

impl RelaySettings {
    /// Both sides' WebSocket settings: a small read buffer and the frame cap. A big frame grows
    /// the library's buffers and they stay grown (docs/benchmarks.md, "Gateway": about 36 KiB
    /// per idle `/ws` connection after Middleman's welcome).
    pub fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_write_buffer_size(self.max_frame_bytes.saturating_mul(2).max(1 << 20))
            .max_message_size(Some(self.max_frame_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
    }
}

/// How a relay ended: the `outcome` label of `gateway_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    ClientClosed,
    PodClosed,
    PodEnded,
    Drained,
    IdleTimeout,
    SlowClient,
    TooLarge,
    UpstreamFailed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::ClientClosed,
        Outcome::PodClosed,
        Outcome::PodEnded,
        Outcome::Drained,
        Outcome::IdleTimeout,
        Outcome::SlowClient,
        Outcome::TooLarge,
        Outcome::UpstreamFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::ClientClosed => "client_closed",
            Outcome::PodClosed => "pod_closed",
            Outcome::PodEnded => "pod_ended",
            Outcome::Drained => "drained",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::SlowClient => "slow_client",
            Outcome::TooLarge => "too_large",
            Outcome::UpstreamFailed => "upstream_failed",
        }
    }
}

fn frame(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes; cut on a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].to_owned().into(),
    }))
}

/// What the upstream side did, for the ending.
enum UpstreamEnd {
    /// Middleman closed with this frame.
    Closed(Option<CloseFrame>),
    /// The connection failed or vanished without a close.
    Failed,
}

/// Relays frames until one side ends, the client misbehaves, or the gateway drains.
pub async fn run<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    settings: RelaySettings,
    drain: CancellationToken,
    resolver: Resolver,
    pod: String,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let to_pod = metrics::counter!("gateway_bytes_total", "direction" => "to_pod");
    let to_client = metrics::counter!("gateway_bytes_total", "direction" => "to_client");

    let ended = loop {
        tokio::select! {
            biased;
            () = drain.cancelled() => {
                let _ = tokio::time::timeout(
                    settings.send_timeout,
                    c_tx.send(frame(close::RESTARTING, "gateway restarting; reconnect")),
                )
                .await;
                let _ = tokio::time::timeout(
                    settings.send_timeout,
                    u_tx.send(frame(1001, "client moved to another gateway")),
                )
                .await;
                return Outcome::Drained;
            }
            message = c_rx.next() => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        to_pod.increment(m.len() as u64);
                        match tokio::time::timeout(settings.send_timeout, u_tx.send(m)).await {
                            Ok(Ok(())) => {}
                            // The pod stopped reading: it is stuck or gone.
                            _ => break UpstreamEnd::Failed,
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let _ = tokio::time::timeout(settings.send_timeout, u_tx.send(Message::Close(f))).await;
                        // Completes the closing handshake: the library queued the client's
                        // close echoed back (RFC 6455 5.5.1); this sends it.
                        let _ = tokio::time::timeout(settings.send_timeout, c_tx.close()).await;
                        return Outcome::ClientClosed;
                    }
                    // Pongs are answers to ours; pings are answered by the library.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                        let _ = c_tx.send(frame(close::TOO_LARGE, "message too large")).await;
                        let _ = u_tx.send(frame(1001, "client closed")).await;
                        return Outcome::TooLarge;
                    }
                    Some(Err(_)) | None => {
                        let _ = tokio::time::timeout(settings.send_timeout, u_tx.send(frame(1001, "client went away"))).await;
                        return Outcome::ClientClosed;
                    }
                }
            }
            message = u_rx.next() => {
                match message {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                        let len = m.len() as u64;
                        match tokio::time::timeout(settings.send_timeout, c_tx.send(m)).await {
                            Ok(Ok(())) => to_client.increment(len),
                            Ok(Err(_)) => {
                                let _ = u_tx.send(frame(1001, "client went away")).await;
                                return Outcome::ClientClosed;
                            }
                            Err(_) => {
                                // Not accepting for this long: close without waiting on it.
                                let _ = tokio::time::timeout(
                                    Duration::from_millis(100),
                                    c_tx.send(frame(close::TOO_SLOW, "too slow; reconnect")),
                                )
                                .await;
                                let _ = u_tx.send(frame(1001, "client too slow")).await;
                                return Outcome::SlowClient;
                            }
                        }
                    }
                    Some(Ok(Message::Close(f))) => break UpstreamEnd::Closed(f),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(_)) | None => break UpstreamEnd::Failed,
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        c_tx.send(frame(close::IDLE, "no answer to pings")),
                    )
                    .await;
                    let _ = u_tx.send(frame(1001, "client went away")).await;
                    return Outcome::IdleTimeout;
                }
                match tokio::time::timeout(settings.send_timeout, c_tx.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        let _ = u_tx.send(frame(1001, "client went away")).await;
                        return Outcome::ClientClosed;
                    }
                    Err(_) => {
                        let _ = u_tx.send(frame(1001, "client too slow")).await;
                        return Outcome::SlowClient;
                    }
                }
            }
        }
    };

    // The pod's side ended. A close that is not "going away" is the pod's word: pass it on.
    // Otherwise ask why: an allocation that ended says so.
    let going_away = match &ended {
        UpstreamEnd::Closed(Some(f)) => {
            matches!(u16::from(f.code), 1001 | 1006 | 1011 | 1012 | 1013 | 1014)
        }
        UpstreamEnd::Closed(None) | UpstreamEnd::Failed => true,
    };
    let (message, outcome) = if going_away {
        resolver.invalidate(&pod);
        match ended_reason(&resolver, &pod).await {
            Some(reason) => (
                frame(close::POD_ENDED, &format!("pod ended: {reason}")),
                Outcome::PodEnded,
            ),
            None => match ended {
                UpstreamEnd::Closed(Some(f)) => (Message::Close(Some(f)), Outcome::PodClosed),
                _ => (
                    frame(close::BAD_GATEWAY, "the document's server went away"),
                    Outcome::UpstreamFailed,
                ),
            },
        }
    } else {
        let UpstreamEnd::Closed(f) = ended else {
            return Outcome::UpstreamFailed;
        };
        (Message::Close(f), Outcome::PodClosed)
    };
    if outcome == Outcome::UpstreamFailed {
        metrics::counter!("gateway_upstream_errors_total", "kind" => "closed").increment(1);
    }
    let _ = tokio::time::timeout(settings.send_timeout, c_tx.send(message)).await;
    outcome
}

/// Why the pod's allocation ended, when it did. The pod's Middleman closes its connections as
/// soon as it is told to stop, which can be a moment before Watchman's record of the end is
/// visible to this replica: look twice.
async fn ended_reason(resolver: &Resolver, pod: &str) -> Option<String> {
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            resolver.invalidate(pod);
        }
        match resolver.resolve(pod).await {
            Ok(Route::Ended { reason, .. }) => return Some(reason),
            Ok(Route::Unknown) => return Some("pod_lost".to_owned()),
            Ok(Route::Live { .. }) | Err(_) => {}
        }
    }
    None
}
