//! The event log: every event of a document gets the next sequence number, is serialised once,
//! kept in a bounded replay buffer and sent on one broadcast ring that every connection reads. A
//! reconnecting client is given exactly the events after the last one it saw, while the buffer
//! still holds them.

use std::collections::VecDeque;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use tokio::sync::broadcast;

use super::yproto::YMessage;
use crate::protocol::{ServerEvent, ServerFrame};

/// One frame for every connection: serialised once, the bytes shared.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sequence number of a JSON event; 0 for Yjs binary frames, which are idempotent.
    pub seq: u64,
    /// The connection whose message caused it (0: the server); it is not echoed back.
    pub origin: u64,
    pub message: Message,
    /// The event itself, on the live copy of a JSON frame (not in the replay buffer), for
    /// connections that speak another protocol (Jupyter's) and translate it.
    pub event: Option<std::sync::Arc<ServerEvent>>,
}

/// The sequenced events of one Middleman run (see the module docs).
#[derive(Debug)]
pub(super) struct EventLog {
    /// This run's id: sequence numbers are comparable only within it.
    session: String,
    seq: u64,
    replay: VecDeque<Frame>,
    replay_bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    frames: broadcast::Sender<Frame>,
}

impl EventLog {
    /// A log keeping at most `max_frames` events and `max_bytes` of them for replay, with room
    /// for `client_queue` frames per connection on the ring.
    pub(super) fn new(client_queue: usize, max_frames: usize, max_bytes: usize) -> Self {
        let (frames, _) = broadcast::channel(client_queue.max(16));
        Self {
            session: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            seq: 0,
            replay: VecDeque::new(),
            replay_bytes: 0,
            max_frames,
            max_bytes,
            frames,
        }
    }

    pub(super) fn session(&self) -> &str {
        &self.session
    }

    /// The last sequence number given.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Gives `event` the next sequence number, keeps it for replay and sends it to everyone.
    pub(super) fn emit(&mut self, event: ServerEvent) {
        self.seq += 1;
        let framed = ServerFrame {
            seq: Some(self.seq),
            event,
        };
        let json = Utf8Bytes::from(framed.to_json());
        metrics::counter!("middleman_ws_frames_broadcast_total").increment(1);
        let frame = Frame {
            seq: self.seq,
            origin: 0,
            message: Message::Text(json.clone()),
            event: None,
        };
        self.replay_bytes += json.len();
        self.replay.push_back(frame.clone());
        while self.replay.len() > self.max_frames
            || (self.replay_bytes > self.max_bytes && self.replay.len() > 1)
        {
            if let Some(old) = self.replay.pop_front()
                && let Message::Text(t) = &old.message
            {
                self.replay_bytes -= t.len();
            }
        }
        // No subscribers is fine: nobody is connected.
        let _ = self.frames.send(Frame {
            event: Some(std::sync::Arc::new(framed.event)),
            ..frame
        });
    }

    /// Relays a Yjs frame to every connection but `origin` (0: to everyone). Yjs frames are not
    /// sequenced: a resumed client re-syncs its `Y.Doc` instead.
    pub(super) fn relay(&self, origin: u64, message: &YMessage) {
        let _ = self.frames.send(Frame {
            seq: 0,
            origin,
            message: Message::Binary(Bytes::from(message.encode())),
            event: None,
        });
    }

    /// A receiver of every frame from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.frames.subscribe()
    }

    /// The frames a client that saw `since` of run `session` missed, or `None` when they cannot
    /// be given (another run, or the buffer no longer reaches back that far): it needs a
    /// snapshot.
    pub(super) fn missed(&self, session: &str, since: u64) -> Option<Vec<Message>> {
        let resumable = session == self.session
            && since <= self.seq
            && (since == self.seq || self.replay.front().is_some_and(|f| f.seq <= since + 1));
        resumable.then(|| {
            self.replay
                .iter()
                .filter(|f| f.seq > since)
                .map(|f| f.message.clone())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(n: u64) -> ServerEvent {
        ServerEvent::Pong { nonce: Some(n) }
    }

    #[test]
    fn resume_gives_exactly_the_missed_events_while_the_buffer_holds_them() {
        let mut log = EventLog::new(16, 3, usize::MAX);
        let session = log.session().to_owned();
        for n in 1..=5 {
            log.emit(pong(n));
        }
        assert_eq!(log.seq(), 5);
        assert_eq!(log.missed(&session, 5).map(|m| m.len()), Some(0));
        assert_eq!(log.missed(&session, 2).map(|m| m.len()), Some(3));
        // Event 2 left the buffer (three frames kept): a client that saw only 1 needs a snapshot.
        assert!(log.missed(&session, 1).is_none());
        assert!(log.missed("another run", 5).is_none());
        assert!(log.missed(&session, 6).is_none(), "from the future");
    }

    #[test]
    fn the_byte_budget_keeps_at_least_the_last_event() {
        let mut log = EventLog::new(16, 100, 1);
        let session = log.session().to_owned();
        log.emit(pong(1));
        log.emit(pong(2));
        assert_eq!(log.missed(&session, 1).map(|m| m.len()), Some(1));
        assert!(log.missed(&session, 0).is_none());
    }
}
