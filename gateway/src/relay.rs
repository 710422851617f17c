//! The WebSocket relay: one client, one upstream connection to the pod's Middleman, bytes
//! passed on as they come. Frames are forwarded verbatim (the client's stay masked) and only
//! their headers are read ([`crate::frames`]): nothing is assembled or queued here, a read is
//! written to the other side before the next read from that side, so a slow reader slows its
//! own upstream (and Middleman's bounded queue resynchronises or drops it), and an idle
//! connection holds no buffer ([`crate::conn`]). A client that accepts nothing for
//! `--send-timeout` is cut off (part of a frame may be out, so no close frame can follow; it
//! sees 1006 and reconnects with `since`); one that sends nothing,
//! pongs included, for `--idle-timeout` is closed (4000). Pings either way pass through and are
//! answered by the other end; the gateway's own pings to the client go out between frames.
//!
//! How a relay ends decides what the client is told: the pod's own close passes through, but
//! when the pod goes away the resolver is asked why, and a pod whose allocation ended closes
//! its clients with 4410 and the reason; a draining gateway closes with 1012, and the client
//! reconnects through another replica and resumes by sequence number. The gateway's own close
//! frames go out only between frames: a connection cut mid-frame just ends.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, READ_BYTES};
use crate::frames::{self, Close, Fed, Frames, Origin};
use crate::resolve::{Resolver, Route};

/// Close codes the gateway sends (docs/gateway.md).
pub mod close {
    pub const TOO_LARGE: u16 = 1009;
    pub const RESTARTING: u16 = 1012;
    pub const BAD_GATEWAY: u16 = 1014;
    pub const IDLE: u16 = 4000;
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

/// One side of the relay: its stream, and where the frames read from it stand (the gateway may
/// write its own frame to the other side only between them).
struct Side {
    conn: Conn,
    frames: Frames,
}

/// What woke the relay.
enum Event {
    Drain,
    Client(std::io::Result<()>),
    Pod(std::io::Result<()>),
    Ping,
}

/// What a read from one side gave.
enum Read {
    Bytes(Vec<u8>),
    Nothing,
    Ended,
}

fn read(conn: &mut Conn, ready: std::io::Result<()>) -> Read {
    let mut input = Vec::with_capacity(READ_BYTES);
    match ready.and_then(|()| conn.try_read(&mut input)) {
        Ok(0) => Read::Ended,
        Ok(_) => Read::Bytes(input),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::Nothing,
        Err(_) => Read::Ended,
    }
}

/// How the pod's side ended.
enum UpstreamEnd {
    /// Middleman closed with this frame.
    Closed(Close),
    /// The connection failed or vanished without a close.
    Failed,
}

/// A mask for the gateway's own frames to the pod (a client's frames are masked).
fn mask() -> Option<[u8; 4]> {
    Some(rand::random())
}

/// Relays until one side ends, the client misbehaves, or the gateway drains. `client_first`
/// and `pod_first` are bytes already read past each side's handshake.
pub async fn run(
    client: (Conn, Bytes),
    upstream: (Conn, Bytes),
    settings: RelaySettings,
    drain: CancellationToken,
    resolver: Resolver,
    pod: String,
) -> Outcome {
    let (client, client_first) = client;
    let (upstream, pod_first) = upstream;
    let mut c = Side {
        conn: client,
        frames: Frames::new(Origin::Client, settings.max_frame_bytes as u64),
    };
    let mut u = Side {
        conn: upstream,
        frames: Frames::new(Origin::Pod, u64::MAX),
    };
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let to_pod = metrics::counter!("gateway_bytes_total", "direction" => "to_pod");
    let to_client = metrics::counter!("gateway_bytes_total", "direction" => "to_client");
    let send = settings.send_timeout;

    // The gateway's own frame to the client, when the pod's frames allow it (`between`).
    async fn tell_client(c: &mut Side, between: bool, frame: Vec<u8>, within: Duration) {
        if between {
            let _ = tokio::time::timeout(within, c.conn.write_all(&frame)).await;
        }
        let _ = tokio::time::timeout(within, c.conn.shutdown()).await;
    }
    // The gateway's own close to the pod, when the client's frames allow it (`between`).
    async fn tell_pod(u: &mut Side, between: bool, reason: &str, within: Duration) {
        if between {
            let frame = frames::close_frame(1001, reason, mask());
            let _ = tokio::time::timeout(within, u.conn.write_all(&frame)).await;
        }
        let _ = tokio::time::timeout(within, u.conn.shutdown()).await;
    }

    // Copied out and dropped at once: the bytes share HTTP's read buffer (8 KiB or more), which
    // they would otherwise keep for the connection's life.
    let mut pending_client = (!client_first.is_empty()).then(|| client_first.to_vec());
    let mut pending_pod = (!pod_first.is_empty()).then(|| pod_first.to_vec());
    drop((client_first, pod_first));
    let ended = loop {
        let event = if pending_pod.is_some() {
            Event::Pod(Ok(()))
        } else if pending_client.is_some() {
            Event::Client(Ok(()))
        } else {
            // Unbiased: a client that floods must not starve the pod's direction.
            tokio::select! {
                () = drain.cancelled() => Event::Drain,
                r = c.conn.ready() => Event::Client(r),
                r = u.conn.ready() => Event::Pod(r),
                _ = ping.tick() => Event::Ping,
            }
        };
        match event {
            Event::Drain => {
                tell_client(
                    &mut c,
                    u.frames.at_boundary(),
                    frames::close_frame(close::RESTARTING, "gateway restarting; reconnect", None),
                    send,
                )
                .await;
                tell_pod(
                    &mut u,
                    c.frames.at_boundary(),
                    "client moved to another gateway",
                    send,
                )
                .await;
                return Outcome::Drained;
            }
            Event::Client(ready) => {
                let input = match pending_client.take() {
                    Some(bytes) => bytes,
                    None => match read(&mut c.conn, ready) {
                        Read::Bytes(b) => b,
                        Read::Nothing => continue,
                        Read::Ended => {
                            tell_pod(&mut u, c.frames.at_boundary(), "client went away", send)
                                .await;
                            return Outcome::ClientClosed;
                        }
                    },
                };
                last_heard = Instant::now();
                let mut out = Vec::with_capacity(input.len());
                let fed = c.frames.feed(&input, &mut out);
                if !out.is_empty() {
                    to_pod.increment(out.len() as u64);
                    match tokio::time::timeout(send, u.conn.write_all(&out)).await {
                        Ok(Ok(())) => {}
                        // The pod stopped reading: it is stuck or gone.
                        _ => break UpstreamEnd::Failed,
                    }
                }
                match fed {
                    Ok(Fed::More) => {}
                    Ok(Fed::Closed(close)) => {
                        // Passed on as sent; the client's close is answered with its code.
                        let _ = tokio::time::timeout(send, u.conn.write_all(&close.raw)).await;
                        let answer = match close.code {
                            Some(code) => frames::close_frame(code, "", None),
                            None => frames::close_frame(1000, "", None),
                        };
                        tell_client(&mut c, u.frames.at_boundary(), answer, send).await;
                        return Outcome::ClientClosed;
                    }
                    Err(violation) => {
                        tell_client(
                            &mut c,
                            u.frames.at_boundary(),
                            frames::close_frame(violation.code, violation.reason, None),
                            send,
                        )
                        .await;
                        tell_pod(&mut u, c.frames.at_boundary(), "client closed", send).await;
                        return if violation.code == close::TOO_LARGE {
                            Outcome::TooLarge
                        } else {
                            Outcome::ClientClosed
                        };
                    }
                }
            }
            Event::Pod(ready) => {
                let input = match pending_pod.take() {
                    Some(bytes) => bytes,
                    None => match read(&mut u.conn, ready) {
                        Read::Bytes(b) => b,
                        Read::Nothing => continue,
                        Read::Ended => break UpstreamEnd::Failed,
                    },
                };
                let mut out = Vec::with_capacity(input.len());
                let fed = u.frames.feed(&input, &mut out);
                if !out.is_empty() {
                    match tokio::time::timeout(send, c.conn.write_all(&out)).await {
                        Ok(Ok(())) => to_client.increment(out.len() as u64),
                        Ok(Err(_)) => {
                            tell_pod(&mut u, c.frames.at_boundary(), "client went away", send)
                                .await;
                            return Outcome::ClientClosed;
                        }
                        Err(_) => {
                            // Not accepting for this long: part of a frame may be out, so the
                            // client is cut off rather than told.
                            tell_pod(&mut u, c.frames.at_boundary(), "client too slow", send).await;
                            return Outcome::SlowClient;
                        }
                    }
                }
                match fed {
                    Ok(Fed::More) => {}
                    Ok(Fed::Closed(close)) => break UpstreamEnd::Closed(close),
                    Err(_) => break UpstreamEnd::Failed,
                }
            }
            Event::Ping => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    tell_client(
                        &mut c,
                        u.frames.at_boundary(),
                        frames::close_frame(close::IDLE, "no answer to pings", None),
                        Duration::from_millis(100),
                    )
                    .await;
                    tell_pod(&mut u, c.frames.at_boundary(), "client went away", send).await;
                    return Outcome::IdleTimeout;
                }
                // Between the pod's frames only; a frame in flight means the next tick.
                if !u.frames.at_boundary() {
                    continue;
                }
                match tokio::time::timeout(send, c.conn.write_all(&frames::ping_frame())).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        tell_pod(&mut u, c.frames.at_boundary(), "client went away", send).await;
                        return Outcome::ClientClosed;
                    }
                    Err(_) => {
                        tell_pod(&mut u, c.frames.at_boundary(), "client too slow", send).await;
                        return Outcome::SlowClient;
                    }
                }
            }
        }
    };

    // The pod's side ended. A close that is not "going away" is the pod's word: pass it on.
    // Otherwise ask why: an allocation that ended says so.
    let going_away = match &ended {
        UpstreamEnd::Closed(Close {
            code: Some(code), ..
        }) => {
            matches!(code, 1001 | 1006 | 1011 | 1012 | 1013 | 1014)
        }
        UpstreamEnd::Closed(_) | UpstreamEnd::Failed => true,
    };
    let (message, outcome) = if going_away {
        resolver.invalidate(&pod);
        match ended_reason(&resolver, &pod).await {
            Some(reason) => (
                frames::close_frame(close::POD_ENDED, &format!("pod ended: {reason}"), None),
                Outcome::PodEnded,
            ),
            None => match ended {
                UpstreamEnd::Closed(close) => (close.raw, Outcome::PodClosed),
                UpstreamEnd::Failed => (
                    frames::close_frame(
                        close::BAD_GATEWAY,
                        "the document's server went away",
                        None,
                    ),
                    Outcome::UpstreamFailed,
                ),
            },
        }
    } else {
        let UpstreamEnd::Closed(close) = ended else {
            return Outcome::UpstreamFailed;
        };
        (close.raw, Outcome::PodClosed)
    };
    if outcome == Outcome::UpstreamFailed {
        metrics::counter!("gateway_upstream_errors_total", "kind" => "closed").increment(1);
    }
    tell_client(&mut c, u.frames.at_boundary(), message, send).await;
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
