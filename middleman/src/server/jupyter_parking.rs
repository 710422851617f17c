//! A Jupyter client's session outlives its WebSocket for a while. Clients reconnect with the
//! same `session_id` (JupyterLab after a network blip, after a restart, on a tab's wake-up):
//! when a connection of a session goes away, its translator (its requests, its pending prompt,
//! the kernel session) and its place in the event stream are parked, and what the document
//! says meanwhile is translated into a bounded backlog. The next connection of that session
//! takes them over: the replies to requests sent before the gap arrive, a pending `input()`
//! prompt is shown again, and nothing said during the gap is lost. A parked session ends after
//! [`PARK_FOR`], when its backlog overflows, when it falls behind the event ring, or at shutdown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::collab::Frame;
use crate::jupyter::translate::Translator;
use crate::jupyter::wire::WireMessage;
use crate::kernel::CommReceiver;

/// How long a session waits for its client to come back.
pub(crate) const PARK_FOR: Duration = Duration::from_secs(60);
/// Messages kept for a parked session; more, and it is given up.
const MAX_MISSED: usize = 2048;
/// Sessions parked at once in one Middleman.
const MAX_PARKED: usize = 256;

/// What a reconnecting client's connection takes over.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) translator: Translator,
    pub(crate) frames: tokio::sync::broadcast::Receiver<Frame>,
    pub(crate) comms: CommReceiver,
    /// What the client was told while it was away, in order.
    pub(crate) missed: Vec<WireMessage>,
}

type Taker = oneshot::Sender<Parked>;

/// The parked sessions of one Middleman, by `session_id`.
#[derive(Debug, Default)]
pub(crate) struct Parking {
    slots: Mutex<HashMap<String, mpsc::Sender<Taker>>>,
}

impl Parking {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Taker>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks `parked` under `session_id` until it is resumed or given up.
    pub(crate) fn park(
        self: &std::sync::Arc<Self>,
        session_id: String,
        mut parked: Parked,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) {
        let (tx, mut rx) = mpsc::channel::<Taker>(1);
        {
            let mut slots = self.lock();
            if slots.len() >= MAX_PARKED && !slots.contains_key(&session_id) {
                metrics::counter!("middleman_jupyter_sessions_parked_total", "outcome" => "refused").increment(1);
                return;
            }
            slots.insert(session_id.clone(), tx.clone());
        }
        let parking = self.clone();
        tracker.spawn(async move {
            let deadline = tokio::time::sleep(PARK_FOR);
            tokio::pin!(deadline);
            let outcome = loop {
                tokio::select! {
                    () = &mut deadline => break "expired",
                    () = shutdown.cancelled() => break "shutdown",
                    Some(taker) = rx.recv() => {
                        let _ = taker.send(parked);
                        metrics::counter!("middleman_jupyter_sessions_parked_total", "outcome" => "resumed").increment(1);
                        return;
                    }
                    frame = parked.frames.recv() => match frame {
                        Ok(frame) => {
                            if let Some(event) = frame.event {
                                parked.translator.on_event(&event, &mut parked.missed);
                                if parked.missed.len() > MAX_MISSED {
                                    break "overflow";
                                }
                            }
                        }
                        Err(RecvError::Lagged(_)) => break "lagged",
                        Err(RecvError::Closed) => break "shutdown",
                    },
                    // Widgets' live state is not kept for an absent client.
                    comm = parked.comms.recv() => if let Err(RecvError::Closed) = comm {
                        break "shutdown";
                    },
                }
            };
            metrics::counter!("middleman_jupyter_sessions_parked_total", "outcome" => outcome)
                .increment(1);
            let mut slots = parking.lock();
            if slots.get(&session_id).is_some_and(|s| s.same_channel(&tx)) {
                slots.remove(&session_id);
            }
        });
    }

    /// Takes the parked session `session_id` over, if it is still parked.
    pub(crate) async fn resume(&self, session_id: &str) -> Option<Parked> {
        let slot = self.lock().remove(session_id)?;
        let (taker, taken) = oneshot::channel();
        slot.send(taker).await.ok()?;
        taken.await.ok()
    }
}
