//! One attempt of a run: a fresh pod of the plan, the code sent to its Middleman as any
//! collaborator's `execute` would be, outputs and `input()` answered from the run's stdin, the
//! time limit and cancellation enforced from outside the pod, and how it ended classified.
//! The caller deletes the attempt's document (and so its pod) whatever happened.

use std::time::{Duration, Instant};

use doc_protocol::{ClientMessage, ExecutionStatus, ServerEvent, ServerFrame};
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
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long connecting to a fresh pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_ID: &str = "run";

/// How an attempt ended.
#[derive(Debug)]
pub struct Ended {
    pub outcome: Outcome,
    pub detail: String,
    pub pod: String,
    /// The attempt's document (deleted by the caller).
    pub document: Option<String>,
    pub outputs: Outputs,
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
            held: Duration::ZERO,
        }
    }
}

/// Runs attempt `number` of `run`. `pod_gate` is the plan's turn to take a pod; `on_pod` is
/// told the pod once one is bound.
pub async fn attempt(
    watchman: &Watchman,
    run: &Run,
    number: u32,
    events: &broadcast::Sender<RunEvent>,
    cancel: &CancellationToken,
    pod_gate: &tokio::sync::Mutex<()>,
    on_pod: impl AsyncFnOnce(&str),
) -> Ended {
    let document = format!("run-{}-{number}", run.id);
    let request = AllocationRequest {
        document: &document,
        plan: &run.plan,
        kernel: "",
        user: &run.user_id,
        user_name: &run.user_id,
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
            return Ended::early(Outcome::Cancelled, "cancelled before a pod was bound".into());
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
        Err(e) => return Ended::early(Outcome::StoreError, e.to_string()),
    };
    let held_from = Instant::now();
    let pod = granted.allocation.pod.clone();
    on_pod(&pod).await;
    let (outcome, detail, outputs) = execute(watchman, run, &granted, events, cancel).await;
    Ended {
        outcome,
        detail,
        pod,
        document: Some(document),
        outputs,
        held: held_from.elapsed(),
    }
}

async fn execute(
    watchman: &Watchman,
    run: &Run,
    granted: &crate::service::Granted,
    events: &broadcast::Sender<RunEvent>,
    cancel: &CancellationToken,
) -> (Outcome, String, Outputs) {
    let mut outputs = Outputs::default();
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
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await;
    let mut ws = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            return (
                Outcome::PodLost,
                format!("could not connect to the pod: {e}"),
                outputs,
            );
        }
        Err(_) => {
            return (
                Outcome::PodLost,
                "the pod did not answer within 15 s".into(),
                outputs,
            );
        }
    };
    let send = |m: &ClientMessage| Message::text(serde_json::to_string(m).unwrap_or_default());
    let execute = ClientMessage::Execute {
        code: run.code.clone(),
        request_id: Some(REQUEST_ID.into()),
        stop_on_error: true,
    };
    if let Err(e) = ws.send(send(&execute)).await {
        return (
            Outcome::PodLost,
            format!("the pod closed the connection: {e}"),
            outputs,
        );
    }
    let mut stdin = run.stdin.lines();
    let limit = Duration::from_millis(run.timeout_ms);
    let mut deadline = tokio::time::Instant::now() + limit;
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
                let _ = ws.send(send(&ClientMessage::Interrupt)).await;
                continue;
            }
            () = cancel.cancelled() => {
                let _ = ws.send(send(&ClientMessage::Interrupt)).await;
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
                let value = outputs.push(&output);
                let _ = events.send(RunEvent::Output(value));
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
                let _ = ws.send(send(&reply)).await;
            }
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                reason,
                ..
            } if mine(&execution_id) => {
                let reason = reason.unwrap_or_default();
                let _ = ws.close(None).await;
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
                // The execute itself was refused (too large for the pod, for one).
                let _ = ws.close(None).await;
                return (
                    Outcome::UserError,
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
async fn lost(watchman: &Watchman, granted: &crate::service::Granted) -> String {
    match watchman.ended(&granted.allocation.id).await {
        Ok(Some(ended)) => format!("the pod ended: {} {}", ended.reason.label(), ended.detail)
            .trim_end()
            .to_owned(),
        _ => "the connection to the pod was lost".into(),
    }
}
