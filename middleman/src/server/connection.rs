//! One WebSocket connection: welcome, then the session's broadcast frames out and the client's
//! commands in, with a bounded backlog, a write timeout and a ping timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use session_token::Claims;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::kernel::Command;
use crate::protocol::{
    ClientMessage, ErrorCode, Limits, PROTOCOL_VERSION, ServerEvent, ServerFrame,
};

/// Close codes (see docs/protocol.md).
pub(crate) mod close {
    pub(crate) const GOING_AWAY: u16 = 1001;
    pub(crate) const TOO_BIG: u16 = 1009;
    pub(crate) const PING_TIMEOUT: u16 = 4000;
    pub(crate) const TOO_SLOW: u16 = 4008;
}

/// A client that cannot take a frame within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    socket: WebSocket,
    state: Arc<AppState>,
    claims: Claims,
    last_heard: Instant,
}

pub(crate) async fn serve(socket: WebSocket, state: Arc<AppState>, claims: Claims) {
    metrics::gauge!("middleman_ws_connections").increment(1.0);
    tracing::info!("connected");
    let mut conn = Conn {
        socket,
        state,
        claims,
        last_heard: Instant::now(),
    };
    let reason = conn.run().await;
    metrics::gauge!("middleman_ws_connections").decrement(1.0);
    tracing::info!(reason, "disconnected");
}

impl Conn {
    async fn run(&mut self) -> &'static str {
        let (mut frames, snapshot) = self.state.session.subscribe();
        let state = self.state.clone();
        let args = &state.args;
        let welcome = ServerEvent::Welcome {
            protocol: PROTOCOL_VERSION,
            document: self.claims.doc.clone(),
            user: self.claims.sub.clone(),
            role: self.claims.role.to_string(),
            kernel: snapshot.kernel.clone(),
            kernel_state: snapshot.kernel_state,
            executions: snapshot.executions.clone(),
            limits: Limits {
                max_client_message_bytes: args.max_client_message_bytes as u64,
                max_output_bytes: args.max_output_bytes,
                execution_timeout_ms: u64::try_from(args.execution_timeout.as_millis())
                    .unwrap_or(u64::MAX),
            },
            last_seq: snapshot.last_seq,
        };
        if self.reply(welcome).await.is_err() {
            return "write failed";
        }
        let mut seen = snapshot.last_seq;
        let ping_every = args.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let shutdown = state.shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = self.reply(ServerEvent::Shutdown { reason: "middleman is shutting down".into() }).await;
                    self.close(close::GOING_AWAY, "shutting down").await;
                    return "shutdown";
                }
                frame = frames.recv() => match frame {
                    Ok(frame) if frame.seq <= seen => {}
                    Ok(frame) => {
                        seen = frame.seq;
                        if self.send(Message::Text(frame.json)).await.is_err() {
                            return "write failed";
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        metrics::counter!("middleman_slow_clients_dropped_total").increment(1);
                        tracing::warn!(missed, "client fell too far behind; disconnecting");
                        self.close(close::TOO_SLOW, "too slow: reconnect to resynchronise").await;
                        return "too slow";
                    }
                    Err(RecvError::Closed) => return "session closed",
                },
                incoming = self.socket.recv() => match incoming {
                    None => return "closed by client",
                    Some(Err(error)) => {
                        if is_too_big(&error) {
                            let limit = self.state.args.max_client_message_bytes;
                            let _ = self.reply(error_event(ErrorCode::TooLarge, format!("message exceeds {limit} bytes"))).await;
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
            Message::Text(t) => t,
            Message::Binary(_) => {
                return self
                    .reply(error_event(
                        ErrorCode::BadMessage,
                        "binary frames are not used; send JSON text".into(),
                    ))
                    .await;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };
        metrics::counter!("middleman_ws_messages_received_total").increment(1);
        self.state.activity.touch();
        let parsed: ClientMessage = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(error) => {
                return self
                    .reply(error_event(
                        ErrorCode::BadMessage,
                        format!("unreadable message: {error}"),
                    ))
                    .await;
            }
        };
        let by = if self.claims.name.is_empty() {
            self.claims.sub.clone()
        } else {
            self.claims.name.clone()
        };
        let command = match parsed {
            ClientMessage::Ping { nonce } => return self.reply(ServerEvent::Pong { nonce }).await,
            _ if !self.claims.role.can_edit() => {
                return self
                    .reply(error_event(
                        ErrorCode::Forbidden,
                        "viewers cannot run code, answer prompts, interrupt or restart".into(),
                    ))
                    .await;
            }
            ClientMessage::Execute {
                code,
                request_id,
                stop_on_error,
            } => Command::Execute {
                code,
                request_id,
                stop_on_error,
                by,
            },
            ClientMessage::InputReply {
                execution_id,
                value,
            } => Command::InputReply {
                execution_id,
                value,
                by,
            },
            ClientMessage::Interrupt => Command::Interrupt { by },
            ClientMessage::Restart => Command::Restart { by },
        };
        match self.state.session.send(command).await {
            Ok(()) => Ok(()),
            Err((code, message)) => self.reply(error_event(code, message)).await,
        }
    }

    async fn reply(&mut self, event: ServerEvent) -> Result<(), ()> {
        let json = ServerFrame { seq: None, event }.to_json();
        self.send(Message::Text(Utf8Bytes::from(json))).await
    }

    async fn send(&mut self, message: Message) -> Result<(), ()> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(()),
            Err(_) => {
                metrics::counter!("middleman_slow_clients_dropped_total").increment(1);
                tracing::warn!(
                    "client did not read for {} s; disconnecting",
                    WRITE_TIMEOUT.as_secs()
                );
                Err(())
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            self.socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

fn error_event(code: ErrorCode, message: String) -> ServerEvent {
    ServerEvent::Error { code, message }
}

/// Whether a receive error is tungstenite's capacity error (message or frame over the limit).
/// axum wraps it opaquely, so its text is the only handle on it.
fn is_too_big(error: &axum::Error) -> bool {
    let text = error.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("too big")
}
