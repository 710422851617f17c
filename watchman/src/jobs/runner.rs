//! One attempt of a run: a fresh pod of the plan, the code sent to its Middleman as any
//! collaborator's `execute` would be, outputs and `input()` answered from the run's stdin, the
//! time limit and cancellation enforced from outside the pod, and how it ended classified.
//! The caller deletes the attempt's document (and so its pod) whatever happened.

use std::time::{Duration, Instant};

use doc_protocol::{ClientMessage, ErrorCode, ExecutionStatus, ServerEvent, ServerFrame};
use futures_util::{SinkExt as _, StreamExt as _};
use session_token::Role;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::model::{Outcome, Run, RunEvent};
use super::outputs::Outputs;
use crate::service::{AllocationRequest, ServiceError, Watchman};

/// How long an attempt waits for a pod when the warm buffer is empty.
pub const POD_WAIT: Duration = Duration::from_secs(60);
/// After the time limit, how long the kernel gets to stop before the attempt is ended anyway.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long connecting to a fresh pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_ID: &str = "run";
/// How long a message to the pod may take to go out (a pod that stops reading is lost).
pub(super) const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message taken from a pod: its output cap per execution is at most a few MiB,
/// and a pod is not trusted to keep to it.
const MAX_POD_MESSAGE: usize = 16 << 20;

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_POD_MESSAGE))
        .max_frame_size(Some(MAX_POD_MESSAGE))
}

/// Sends `m` within [`SEND_TIMEOUT`], or says why not.
pub(super) async fn send(ws: &mut Ws, m: &ClientMessage) -> Result<(), String> {
    let text = serde_json::to_string(m).map_err(|e| e.to_string())?;
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the pod closed the connection: {e}")),
        Err(_) => Err(format!(
            "the pod read nothing for {} s",
            SEND_TIMEOUT.as_secs()
        )),
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub struct Ended {
    pub outcome: Outcome,
    pub detail: String,
    pub pod: String,
    /// The attempt's own document (deleted by the caller; not a user's document).
    pub document: Option<String>,
    pub outputs: Outputs,
    /// A notebook run's executed notebook.
    pub notebook: Option<serde_json::Value>,
    /// How long the pod was held.
    pub held: Duration,
}

impl Ended {
    fn early(outcome: Outcome, detail: String) -> Self {
        Self {
            outcome,
            detail,
            pod: String::new(),
            document: None,
            outputs: Outputs::default(),
            notebook: None,
            held: Duration::ZERO,
        }
    }
}

/// What an attempt works with, besides its run.
#[derive(Debug)]
pub struct Attempting<'a> {
    pub watchman: &'a Watchman,
    /// Where live outputs go.
    pub events: &'a broadcast::Sender<RunEvent>,
    pub cancel: &'a CancellationToken,
    /// The plan's turn to take a pod.
    pub pod_gate: &'a tokio::sync::Mutex<()>,
    /// Outputs are kept up to this many bytes.
    pub output_cap: u64,
    /// For a notebook run's requests to its pod.
    pub http: &'a reqwest::Client,
}

/// Runs attempt `number` of `run`; `on_pod` is told the pod once one is bound.
pub async fn attempt(
    with: &Attempting<'_>,
    run: &Run,
    number: u32,
    on_pod: impl AsyncFnOnce(&str),
) -> Ended {
    let Attempting {
        watchman,
        events,
        cancel,
        pod_gate,
        output_cap,
        http,
    } = *with;
    // A run on a user's document uses the document's pod; any other, a fresh pod of its own.
    let (document, own) = match run.notebook.as_ref().filter(|n| !n.document.is_empty()) {
        Some(n) => (n.document.clone(), false),
        None => (format!("run-{}-{number}", run.id), true),
    };
    // What collaborators of a document see the run's executions as.
    let by = format!("run {}", run.id);
    let request = AllocationRequest {
        document: &document,
        plan: &run.plan,
        kernel: "",
        user: &run.user_id,
        user_name: if run.notebook.is_some() {
            &by
        } else {
            &run.user_id
        },
        role: Role::Editor,
        wait: Some(POD_WAIT),
    };
    // The plan's runs take pods one at a time, in order: a run that waits for a cold pod is
    // served before the runs behind it, not raced by them.
    let granted = tokio::select! {
        g = async {
            let _turn = pod_gate.lock().await;
            watchman.allocate(&request).await
        } => g,
        () = cancel.cancelled() => {
            // The allocation may have bound a pod just before it was dropped: the caller deletes
            // the document either way.
            let mut ended = Ended::early(Outcome::Cancelled, "cancelled before a pod was bound".into());
            ended.document = own.then_some(document);
            return ended;
        }
    };
    let granted = match granted {
        Ok(g) => g,
        Err(ServiceError::Exhausted { .. }) => {
            return Ended::early(
                Outcome::NoPod,
                format!(
                    "no pod of plan {} within {} s",
                    run.plan,
                    POD_WAIT.as_secs()
                ),
            );
        }
        // The request itself cannot be served (a document of another plan, say): the user's.
        Err(
            e @ (ServiceError::InvalidArgument(_)
            | ServiceError::UnknownPlan { .. }
            | ServiceError::FailedPrecondition(_)),
        ) => return Ended::early(Outcome::UserError, e.to_string()),
        Err(e) => return Ended::early(Outcome::StoreError, e.to_string()),
    };
    let held_from = Instant::now();
    let pod = granted.allocation.pod.clone();
    on_pod(&pod).await;
    let (outcome, detail, outputs, notebook) = match &run.notebook {
        Some(spec) => {
            let on = super::notebook::OnPod {
                watchman,
                granted: &granted,
                http,
                events,
                cancel,
                output_cap,
                request_id: document_request_id(run, number),
            };
            let e = super::notebook::run(&on, run, spec).await;
            (e.outcome, e.detail, e.outputs, e.notebook)
        }
        None => {
            let (outcome, detail, outputs) =
                execute(watchman, run, &granted, events, cancel, output_cap).await;
            (outcome, detail, outputs, None)
        }
    };
    Ended {
        outcome,
        detail,
        pod,
        document: own.then_some(document),
        outputs,
        notebook,
        held: held_from.elapsed(),
    }
}

/// A notebook attempt's `run_all` request id: its own, as the `run_finished` that names it is
/// seen by everyone on the document.
fn document_request_id(run: &Run, number: u32) -> String {
    format!("{}-{number}", run.id)
}

/// Connects to the pod's Middleman as the run's collaborator.
pub(super) async fn connect(granted: &crate::service::Granted) -> Result<Ws, String> {
    let url = format!(
        "{}/ws?token={}",
        granted
            .allocation
            .endpoint
            .trim_end_matches('/')
            .replacen("http", "ws", 1),
        granted.token
    );
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true),
    )
    .await;
    match connected {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("could not connect to the pod: {e}")),
        Err(_) => Err(format!(
            "the pod did not answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

async fn execute(
    watchman: &Watchman,
    run: &Run,
    granted: &crate::service::Granted,
    events: &broadcast::Sender<RunEvent>,
    cancel: &CancellationToken,
    output_cap: u64,
) -> (Outcome, String, Outputs) {
    let mut outputs = Outputs::capped(output_cap);
    let mut ws = match connect(granted).await {
        Ok(ws) => ws,
        Err(why) => return (Outcome::PodLost, why, outputs),
    };
    let limit = Duration::from_millis(run.timeout_ms);
    let mut deadline = tokio::time::Instant::now() + limit;
    let execute = ClientMessage::Execute {
        code: run.code.clone(),
        request_id: Some(REQUEST_ID.into()),
        stop_on_error: true,
    };
    if let Err(why) = send(&mut ws, &execute).await {
        return (Outcome::PodLost, why, outputs);
    }
    let mut stdin = run.stdin.lines();
    let mut timed_out = false;
    let mut execution: Option<String> = None;
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            () = tokio::time::sleep_until(deadline) => {
                if timed_out {
                    return (Outcome::TimedOut, format!("ran past its {} ms limit and did not stop", run.timeout_ms), outputs);
                }
                timed_out = true;
                deadline += STOP_GRACE;
                if let Err(why) = send(&mut ws, &ClientMessage::Interrupt).await {
                    return (Outcome::TimedOut, format!("ran past its {} ms limit; {why}", run.timeout_ms), outputs);
                }
                continue;
            }
            () = cancel.cancelled() => {
                // The pod is deleted next; the interrupt only stops the code sooner.
                let _ = send(&mut ws, &ClientMessage::Interrupt).await;
                return (Outcome::Cancelled, "cancelled while running".into(), outputs);
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                return (Outcome::PodLost, lost(watchman, granted).await, outputs);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let why = lost(watchman, granted).await;
                return (Outcome::PodLost, format!("{why} ({e})"), outputs);
            }
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
            continue;
        };
        let mine = |id: &str| execution.as_deref() == Some(id);
        match frame.event {
            ServerEvent::ExecutionQueued {
                execution: e,
                request_id,
            } if request_id.as_deref() == Some(REQUEST_ID) => execution = Some(e.id),
            ServerEvent::Output {
                execution_id,
                output,
            } if mine(&execution_id) => {
                if let Some(value) = outputs.push(&output) {
                    let _ = events.send(RunEvent::Output(value));
                }
            }
            ServerEvent::UpdateDisplay {
                execution_id,
                display_id,
                data,
                metadata,
            } if mine(&execution_id) => outputs.update_display(&display_id, &data, &metadata),
            ServerEvent::ClearOutput { execution_id, wait } if mine(&execution_id) => {
                outputs.clear(wait);
            }
            ServerEvent::OutputTruncated { execution_id, .. } if mine(&execution_id) => {
                outputs.truncated = true;
            }
            ServerEvent::InputRequest { execution_id, .. } if mine(&execution_id) => {
                let reply = ClientMessage::InputReply {
                    execution_id,
                    value: stdin.next().unwrap_or_default().to_owned(),
                };
                if let Err(why) = send(&mut ws, &reply).await {
                    return (Outcome::PodLost, why, outputs);
                }
            }
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                reason,
                ..
            } if mine(&execution_id) => {
                let reason = reason.unwrap_or_default();
                let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(None)).await;
                return match status {
                    ExecutionStatus::Ok => (Outcome::Succeeded, String::new(), outputs),
                    _ if timed_out => (
                        Outcome::TimedOut,
                        format!("ran past its {} ms limit", run.timeout_ms),
                        outputs,
                    ),
                    ExecutionStatus::TimedOut => (
                        Outcome::TimedOut,
                        format!("ran past the plan's limit: {reason}"),
                        outputs,
                    ),
                    ExecutionStatus::KernelDied => (
                        Outcome::KernelDied,
                        format!("the kernel died: {reason}"),
                        outputs,
                    ),
                    ExecutionStatus::Error => (Outcome::UserError, error_name(&outputs), outputs),
                    other => (Outcome::UserError, format!("{other:?}: {reason}"), outputs),
                };
            }
            ServerEvent::Error { code, message, .. } if execution.is_none() => {
                // The execute itself was refused: by the code's size (the user's), or because
                // the pod could not take it (the infrastructure's).
                let _ = tokio::time::timeout(SEND_TIMEOUT, ws.close(None)).await;
                let outcome = match code {
                    ErrorCode::TooLarge | ErrorCode::BadMessage => Outcome::UserError,
                    _ => Outcome::PodLost,
                };
                return (
                    outcome,
                    format!("refused by the pod ({code:?}): {message}"),
                    outputs,
                );
            }
            _ => {}
        }
    }
}

/// What the `error` output says, `ename: evalue`.
fn error_name(outputs: &Outputs) -> String {
    outputs
        .error_summary()
        .unwrap_or_else(|| "the code raised".into())
}

/// Why the connection to the pod was lost, as far as Watchman knows.
pub(super) async fn lost(watchman: &Watchman, granted: &crate::service::Granted) -> String {
    match watchman.ended(&granted.allocation.id).await {
        Ok(Some(ended)) => format!("the pod ended: {} {}", ended.reason.label(), ended.detail)
            .trim_end()
            .to_owned(),
        _ => "the connection to the pod was lost".into(),
    }
}
