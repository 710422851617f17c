//! One attempt of a notebook run, on its pod: an uploaded `.ipynb` is imported into the
//! attempt's fresh document, or the user's own document is run where it lives (its outputs
//! written there, live for anyone watching). Parameters are injected as papermill does
//! ([`super::params`]); then the document's graph runs every cell (or the stale ones), and
//! Middleman's `run_finished` says when it is over. The executed notebook is the result.

use std::collections::HashMap;
use std::time::Duration;

use doc_protocol::{
    CellKind, CellState, ClientMessage, ErrorCode, ExecutionStatus, ServerEvent, ServerFrame,
    StateCause,
};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::model::{NotebookMode, NotebookSpec, Outcome, Run, RunEvent};
use super::outputs::Outputs;
use super::params;
use super::runner::{self, Ws};
use crate::service::{Granted, Watchman};

/// How long one HTTP request to the pod may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest executed notebook taken back from a pod (a larger one stays in its document, and
/// the run says `outputs_truncated`).
const MAX_NOTEBOOK_BACK: usize = 32 << 20;

/// How a notebook attempt ended, with its executed notebook when it got that far.
pub(super) struct NotebookEnded {
    pub outcome: Outcome,
    pub detail: String,
    pub outputs: Outputs,
    pub notebook: Option<Value>,
}

impl NotebookEnded {
    /// Ended before the run's outputs began.
    fn early(outcome: Outcome, detail: impl Into<String>) -> Self {
        Self::cut(outcome, detail, Outputs::default())
    }

    /// Ended without the executed notebook, with the outputs streamed so far.
    fn cut(outcome: Outcome, detail: impl Into<String>, outputs: Outputs) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            outputs,
            notebook: None,
        }
    }
}

/// What runs the notebook: the pod, and where its events go.
pub(super) struct OnPod<'a> {
    pub watchman: &'a Watchman,
    pub granted: &'a Granted,
    pub http: &'a reqwest::Client,
    pub events: &'a broadcast::Sender<RunEvent>,
    pub cancel: &'a CancellationToken,
    pub output_cap: u64,
    /// This attempt's request id: `run_finished` names it (several runs may share a document).
    pub request_id: String,
}

fn base(granted: &Granted) -> String {
    granted.allocation.endpoint.trim_end_matches('/').to_owned()
}

/// A refusal by the pod: the notebook's fault (4xx) or the pod's.
fn refused(status: reqwest::StatusCode, body: &str) -> (Outcome, String) {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(300).collect());
    let outcome = if status.is_client_error() {
        Outcome::UserError
    } else {
        Outcome::PodLost
    };
    (
        outcome,
        format!("the pod refused the notebook ({status}): {message}"),
    )
}

/// Replaces the attempt's document with `notebook`.
async fn import(on: &OnPod<'_>, notebook: &Value) -> Result<(), (Outcome, String)> {
    let url = format!(
        "{}/api/notebook?token={}",
        base(on.granted),
        on.granted.token
    );
    let sent = on
        .http
        .put(url)
        .timeout(HTTP_TIMEOUT)
        .header("content-type", "application/json")
        .body(notebook.to_string())
        .send()
        .await
        .map_err(|e| {
            (
                Outcome::PodLost,
                format!("could not import the notebook: {e}"),
            )
        })?;
    let status = sent.status();
    if status.is_success() {
        return Ok(());
    }
    let body = sent.text().await.unwrap_or_default();
    Err(refused(status, &body))
}

/// The document as an `.ipynb`; `None` when it is larger than Watchman keeps (its outputs
/// stay in the document).
async fn export(on: &OnPod<'_>) -> Result<Option<Value>, (Outcome, String)> {
    let url = format!(
        "{}/api/notebook?token={}",
        base(on.granted),
        on.granted.token
    );
    let lost = |e: String| {
        (
            Outcome::PodLost,
            format!("could not read the notebook: {e}"),
        )
    };
    let mut response = on
        .http
        .get(url)
        .timeout(HTTP_TIMEOUT)
        .send()
        .await
        .map_err(|e| lost(e.without_url().to_string()))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| lost(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_NOTEBOOK_BACK {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(refused(status, &String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| lost(e.to_string()))
}

/// Puts the parameters into the live document: the cell an earlier run injected gets the new
/// source, or a new cell goes right after the parameters cell. Without parameters, a cell an
/// earlier run injected is removed, so that the defaults hold (as a papermill run without
/// parameters would have them).
async fn inject_live(
    on: &OnPod<'_>,
    ws: &mut Ws,
    parameters: &serde_json::Map<String, Value>,
) -> Result<(), (Outcome, String)> {
    let notebook = export(on).await?.ok_or_else(|| {
        (
            Outcome::UserError,
            format!("the document is larger than {MAX_NOTEBOOK_BACK} bytes"),
        )
    })?;
    let id_at = |i: usize| {
        notebook
            .pointer(&format!("/cells/{i}/id"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if parameters.is_empty() {
        let earlier = notebook
            .get("cells")
            .and_then(Value::as_array)
            .and_then(|cells| cells.iter().position(params::is_injected));
        return match earlier {
            Some(i) => runner::send(ws, &ClientMessage::DeleteCell { cell_id: id_at(i) })
                .await
                .map_err(|why| (Outcome::PodLost, why)),
            None => Ok(()),
        };
    }
    let (at, injected) = params::locate(&notebook, parameters)
        .map_err(|e| (Outcome::UserError, format!("the document: {e}")))?;
    let source = params::injected_source(parameters);
    let message = match injected {
        Some(i) => ClientMessage::SetSource {
            cell_id: id_at(i),
            source,
        },
        None => ClientMessage::InsertCell {
            index: u32::try_from(at + 1).unwrap_or(u32::MAX),
            cell_type: CellKind::Code,
            source,
            request_id: None,
        },
    };
    runner::send(ws, &message)
        .await
        .map_err(|why| (Outcome::PodLost, why))
}

/// Runs the notebook of `run` on the pod.
pub(super) async fn run(on: &OnPod<'_>, run: &Run, spec: &NotebookSpec) -> NotebookEnded {
    if spec.document.is_empty() {
        let mut notebook: Value = match serde_json::from_str(&run.code) {
            Ok(v) => v,
            Err(e) => return NotebookEnded::early(Outcome::UserError, format!("not JSON: {e}")),
        };
        if let Err(e) = params::inject(&mut notebook, &spec.parameters) {
            return NotebookEnded::early(Outcome::UserError, e.to_string());
        }
        if let Err((outcome, why)) = import(on, &notebook).await {
            return NotebookEnded::early(outcome, why);
        }
    }
    let mut ws = match runner::connect(on.granted).await {
        Ok(ws) => ws,
        Err(why) => return NotebookEnded::early(Outcome::PodLost, why),
    };
    if !spec.document.is_empty()
        && spec.mode == NotebookMode::All
        && let Err((outcome, why)) = inject_live(on, &mut ws, &spec.parameters).await
    {
        return NotebookEnded::early(outcome, why);
    }
    let ended = follow(on, run, spec, &mut ws).await;
    let _ = tokio::time::timeout(runner::SEND_TIMEOUT, ws.close(None)).await;
    ended
}

/// Asks for the run and follows it to `run_finished`.
async fn follow(on: &OnPod<'_>, run: &Run, spec: &NotebookSpec, ws: &mut Ws) -> NotebookEnded {
    let mut outputs = Outputs::capped(on.output_cap);
    let request_id = Some(on.request_id.clone());
    let ask = match spec.mode {
        NotebookMode::All => ClientMessage::RunAll { request_id },
        NotebookMode::Stale => ClientMessage::RunStale { request_id },
    };
    if let Err(why) = runner::send(ws, &ask).await {
        return NotebookEnded::early(Outcome::PodLost, why);
    }
    let limit = Duration::from_millis(run.timeout_ms);
    let mut deadline = tokio::time::Instant::now() + limit;
    let mut timed_out = false;
    // This run's executions, and the cell each runs.
    let mut mine: HashMap<String, Option<String>> = HashMap::new();
    let mut errors: HashMap<String, String> = HashMap::new();
    // The first execution that did not succeed: its status, cell and why.
    let mut failed: Option<(ExecutionStatus, String)> = None;
    let mut ran = 0_usize;
    let mut stdin = run.stdin.lines();
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            () = tokio::time::sleep_until(deadline) => {
                if timed_out {
                    return NotebookEnded::cut(Outcome::TimedOut, format!("ran past its {} ms limit and did not stop", run.timeout_ms), outputs);
                }
                timed_out = true;
                deadline += runner::STOP_GRACE;
                if let Err(why) = runner::send(ws, &ClientMessage::Interrupt).await {
                    return NotebookEnded::cut(Outcome::TimedOut, format!("ran past its {} ms limit; {why}", run.timeout_ms), outputs);
                }
                continue;
            }
            () = on.cancel.cancelled() => {
                let _ = runner::send(ws, &ClientMessage::Interrupt).await;
                return NotebookEnded::cut(Outcome::Cancelled, "cancelled while running", outputs);
            }
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                let why = runner::lost(on.watchman, on.granted).await;
                return NotebookEnded::cut(Outcome::PodLost, why, outputs);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let why = runner::lost(on.watchman, on.granted).await;
                return NotebookEnded::cut(Outcome::PodLost, format!("{why} ({e})"), outputs);
            }
        };
        let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
            continue;
        };
        match frame.event {
            // The graph's executions of cells, whoever the merged plan names: the run waits for
            // that plan to end, so its cells are the run's.
            ServerEvent::ExecutionQueued { execution, .. }
                if execution.cell_id.is_some() && execution.by.ends_with("(graph)") =>
            {
                mine.insert(execution.id, execution.cell_id);
            }
            // A cell that may not run (a syntax error, a name defined twice, a cycle) fails the
            // run as a raising cell would; cells blocked by a disabled one do not.
            ServerEvent::CellState {
                cell_id,
                state: CellState::Blocked,
                cause: Some(StateCause::Invalid { message }),
                ..
            } if failed.is_none() => {
                failed = Some((
                    ExecutionStatus::Error,
                    format!("cell {cell_id} may not run: {message}"),
                ));
            }
            ServerEvent::Output {
                execution_id,
                output,
            } if mine.contains_key(&execution_id) => {
                if let Some(value) = outputs.push(&output) {
                    if value.get("output_type").and_then(Value::as_str) == Some("error") {
                        let name = |k: &str| value.get(k).and_then(Value::as_str).unwrap_or("");
                        errors.insert(
                            execution_id,
                            format!("{}: {}", name("ename"), name("evalue")),
                        );
                    }
                    let _ = on.events.send(RunEvent::Output(value));
                }
            }
            ServerEvent::InputRequest { execution_id, .. } if mine.contains_key(&execution_id) => {
                let reply = ClientMessage::InputReply {
                    execution_id,
                    value: stdin.next().unwrap_or_default().to_owned(),
                };
                if let Err(why) = runner::send(ws, &reply).await {
                    return NotebookEnded::cut(Outcome::PodLost, why, outputs);
                }
            }
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                reason,
                ..
            } => {
                let Some(cell) = mine.get(&execution_id) else {
                    continue;
                };
                ran += 1;
                if status != ExecutionStatus::Ok && failed.is_none() {
                    let why = errors
                        .get(&execution_id)
                        .cloned()
                        .or(reason)
                        .unwrap_or_else(|| format!("{status:?}"));
                    let cell = cell.as_deref().unwrap_or("?");
                    failed = Some((status, format!("cell {cell}: {why}")));
                }
            }
            ServerEvent::RunFinished { request_id } if request_id == on.request_id => break,
            ServerEvent::Error { code, message, .. } => {
                let outcome = match code {
                    ErrorCode::InvalidEdit
                    | ErrorCode::NoSuchCell
                    | ErrorCode::Forbidden
                    | ErrorCode::BadMessage
                    | ErrorCode::TooLarge => Outcome::UserError,
                    ErrorCode::KernelDead => Outcome::KernelDied,
                    _ => Outcome::PodLost,
                };
                return NotebookEnded::cut(
                    outcome,
                    format!("refused by the pod ({code:?}): {message}"),
                    outputs,
                );
            }
            _ => {}
        }
    }
    // The stream's cap spoke for the stream only: the notebook is the result.
    outputs.truncated = false;
    let notebook = match export(on).await {
        Ok(Some(nb)) => Some(nb),
        Ok(None) => {
            outputs.truncated = true;
            None
        }
        // The cells ran, in the user's document: running them again to get the notebook back
        // would repeat what they did. The outputs are in the document.
        Err((_, why)) if !spec.document.is_empty() => {
            tracing::warn!(%why, "the run's notebook was not taken back");
            outputs.truncated = true;
            None
        }
        Err((outcome, why)) => {
            return NotebookEnded::cut(outcome, why, outputs);
        }
    };
    let (outcome, detail) = match failed {
        _ if timed_out => (
            Outcome::TimedOut,
            format!("ran past its {} ms limit", run.timeout_ms),
        ),
        None => (Outcome::Succeeded, format!("{ran} cell(s) ran")),
        Some((ExecutionStatus::KernelDied, why)) => {
            (Outcome::KernelDied, format!("the kernel died: {why}"))
        }
        Some((ExecutionStatus::TimedOut, why)) => (
            Outcome::TimedOut,
            format!("a cell ran past the plan's limit: {why}"),
        ),
        Some((_, why)) => (Outcome::UserError, why),
    };
    NotebookEnded {
        outcome,
        detail,
        outputs,
        notebook,
    }
}
