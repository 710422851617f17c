//! The document's events as Jupyter messages, for one Jupyter connection. Every connection has
//! its own translator: its own requests are answered to it (the `execute_reply`, the stdin
//! prompt), and everyone's executions, web users' included, show on its IOPub with a parent that
//! names who ran them. Headers carry the kernel session of the kernel running now, so clients
//! that drop messages of an old session (JupyterLab) keep what is current.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::wire::{Channel, WireMessage};
use crate::protocol::{ExecutionStatus, KernelState, Output, ServerEvent, StreamName};

/// Executions a connection follows at once (queued and running); beyond it, the oldest are
/// forgotten (their outputs then go out with a synthetic parent). The queue is smaller.
const MAX_TRACKED: usize = 4096;

/// The execution request of this connection that a run came from.
#[derive(Debug)]
pub struct Origin {
    /// The request's header: the parent of everything the run causes.
    pub header: Map<String, Value>,
    pub silent: bool,
    pub allow_stdin: bool,
    /// The kernel's `execute_reply` content, when it replied.
    pub reply: Option<oneshot::Receiver<Value>>,
}

/// One execution the connection has seen queued.
#[derive(Debug)]
struct Run {
    origin: Option<Origin>,
    by: String,
    code: String,
    started: bool,
    count: Option<u64>,
    /// The last error output, for a reply the kernel did not give.
    error: Option<(String, String, Vec<String>)>,
}

/// Translates hub events for one connection (see the module docs).
#[derive(Debug)]
pub struct Translator {
    session: String,
    version: String,
    /// Requests sent to the hub, by request id, until their `execution_queued` arrives.
    requested: HashMap<String, Origin>,
    runs: HashMap<String, Run>,
    /// Execution ids in the order they were queued (to bound `runs`).
    order: std::collections::VecDeque<String>,
    /// The execution whose prompt this connection was shown and has not answered, and the
    /// prompt (shown again to a client that reconnects).
    prompt: Option<String>,
    prompt_message: Option<WireMessage>,
}

impl Translator {
    /// `session` is the kernel session running now; `version` the kernel's protocol version.
    pub fn new(session: String, version: String) -> Self {
        Self {
            session,
            version,
            requested: HashMap::new(),
            runs: HashMap::new(),
            order: std::collections::VecDeque::new(),
            prompt: None,
            prompt_message: None,
        }
    }

    /// The kernel session named in every header.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Expects the run asked with `request_id` (sent to the hub next).
    pub fn expect(&mut self, request_id: String, origin: Origin) {
        self.requested.insert(request_id, origin);
    }

    /// The hub refused the request: nothing will come of it.
    pub fn refused(&mut self, request_id: &str) {
        self.requested.remove(request_id);
    }

    /// The execution an `input_reply` answers: the one whose prompt this connection was shown
    /// (the kernel asks one prompt at a time; clients parent the answer to the prompt).
    pub fn prompted(&self) -> Option<&str> {
        self.prompt.as_deref()
    }

    /// The prompt this connection's client has not answered yet.
    pub fn pending_prompt(&self) -> Option<&WireMessage> {
        self.prompt.as_ref().and(self.prompt_message.as_ref())
    }

    /// A header for a new message.
    pub fn header(&self, msg_type: &str) -> Map<String, Value> {
        let mut header = Map::new();
        header.insert(
            "msg_id".into(),
            uuid::Uuid::new_v4().simple().to_string().into(),
        );
        header.insert("msg_type".into(), msg_type.into());
        header.insert("session".into(), self.session.clone().into());
        header.insert("username".into(), "kernel".into());
        header.insert(
            "date".into(),
            chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
                .into(),
        );
        header.insert("version".into(), self.version.clone().into());
        header
    }

    /// A message with `parent` as its parent header.
    pub fn message(
        &self,
        channel: Channel,
        msg_type: &str,
        parent: Map<String, Value>,
        content: Value,
    ) -> WireMessage {
        WireMessage {
            channel,
            header: self.header(msg_type),
            parent_header: parent,
            metadata: Map::new(),
            content: match content {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            buffers: Vec::new(),
        }
    }

    /// An IOPub status parented to `parent`.
    pub fn status(&self, parent: Map<String, Value>, state: &str) -> WireMessage {
        self.message(
            Channel::Iopub,
            "status",
            parent,
            json!({ "execution_state": state }),
        )
    }

    /// The messages that `event` means to this connection, appended to `out`.
    pub fn on_event(&mut self, event: &ServerEvent, out: &mut Vec<WireMessage>) {
        match event {
            ServerEvent::ExecutionQueued {
                execution,
                request_id,
            } => {
                let origin = request_id
                    .as_deref()
                    .and_then(|id| self.requested.remove(id));
                self.track(
                    execution.id.clone(),
                    Run {
                        origin,
                        by: execution.by.clone(),
                        code: execution.code.clone(),
                        started: false,
                        count: None,
                        error: None,
                    },
                );
            }
            ServerEvent::ExecutionStarted { execution_id } => {
                if let Some(run) = self.runs.get_mut(execution_id) {
                    run.started = true;
                }
                out.push(self.status(self.parent(execution_id), "busy"));
            }
            ServerEvent::ExecutionInput {
                execution_id,
                execution_count,
            } => {
                let Some(run) = self.runs.get_mut(execution_id) else {
                    return;
                };
                run.count = Some(*execution_count);
                if run.origin.as_ref().is_some_and(|o| o.silent) {
                    return;
                }
                let content = json!({ "code": run.code, "execution_count": execution_count });
                out.push(self.message(
                    Channel::Iopub,
                    "execute_input",
                    self.parent(execution_id),
                    content,
                ));
            }
            ServerEvent::Output {
                execution_id,
                output,
            } => {
                let count = self.runs.get(execution_id).and_then(|r| r.count);
                if let Output::Error {
                    ename,
                    evalue,
                    traceback,
                } = output
                    && let Some(run) = self.runs.get_mut(execution_id)
                {
                    run.error = Some((ename.clone(), evalue.clone(), traceback.clone()));
                }
                if let Some((msg_type, content)) = output_message(output, count) {
                    out.push(self.message(
                        Channel::Iopub,
                        msg_type,
                        self.parent(execution_id),
                        content,
                    ));
                }
            }
            ServerEvent::UpdateDisplay {
                execution_id,
                display_id,
                data,
                metadata,
            } => out.push(self.message(
                Channel::Iopub,
                "update_display_data",
                self.parent(execution_id),
                json!({ "data": data, "metadata": metadata, "transient": { "display_id": display_id } }),
            )),
            ServerEvent::ClearOutput { execution_id, wait } => out.push(self.message(
                Channel::Iopub,
                "clear_output",
                self.parent(execution_id),
                json!({ "wait": wait }),
            )),
            ServerEvent::OutputTruncated {
                execution_id,
                limit_bytes,
            } => out.push(self.message(
                Channel::Iopub,
                "stream",
                self.parent(execution_id),
                json!({
                    "name": "stderr",
                    "text": format!("\n[output over {limit_bytes} bytes was dropped]\n"),
                }),
            )),
            ServerEvent::InputRequest {
                execution_id,
                prompt,
                password,
            } => {
                if let Some(origin) = self.runs.get(execution_id).and_then(|r| r.origin.as_ref())
                    && origin.allow_stdin
                {
                    let message = self.message(
                        Channel::Stdin,
                        "input_request",
                        origin.header.clone(),
                        json!({ "prompt": prompt, "password": password }),
                    );
                    self.prompt = Some(execution_id.clone());
                    self.prompt_message = Some(message.clone());
                    out.push(message);
                }
            }
            ServerEvent::InputResolved { execution_id, .. } => {
                self.prompt.take_if(|p| p == execution_id);
            }
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                execution_count,
                reason,
                ..
            } => self.finished(execution_id, *status, *execution_count, reason, out),
            ServerEvent::KernelStatus {
                state,
                kernel_session,
                ..
            } => {
                if let Some(session) = kernel_session {
                    self.session.clone_from(session);
                }
                let state = match state {
                    KernelState::Starting => "starting",
                    KernelState::Restarting => "restarting",
                    KernelState::Dead => "dead",
                    // A new kernel is ready: said once, with its session.
                    KernelState::Idle if kernel_session.is_some() => "idle",
                    KernelState::Idle | KernelState::Busy => return,
                };
                out.push(self.status(Map::new(), state));
            }
            _ => {}
        }
    }

    /// The end of a run: its reply to the connection that asked, then idle for everyone.
    fn finished(
        &mut self,
        execution_id: &str,
        status: ExecutionStatus,
        count: Option<u64>,
        reason: &Option<String>,
        out: &mut Vec<WireMessage>,
    ) {
        let parent = self.parent(execution_id);
        self.prompt.take_if(|p| p == execution_id);
        let Some(mut run) = self.runs.remove(execution_id) else {
            out.push(self.status(parent, "idle"));
            return;
        };
        self.order.retain(|id| id != execution_id);
        if !run.started {
            // Aborted in the queue: a client still sees its request handled.
            out.push(self.status(parent.clone(), "busy"));
        }
        if let Some(mut origin) = run.origin.take() {
            let raw = origin.reply.as_mut().and_then(|rx| rx.try_recv().ok());
            let count = count.or(run.count);
            let content = match raw {
                Some(content) if status != ExecutionStatus::Aborted => content,
                _ => {
                    let (content, error) = synthesized_reply(status, count, run.error, reason);
                    if let Some(error) = error {
                        out.push(self.message(Channel::Iopub, "error", parent.clone(), error));
                    }
                    content
                }
            };
            out.push(self.message(Channel::Shell, "execute_reply", parent.clone(), content));
        }
        out.push(self.status(parent, "idle"));
    }

    /// The parent header of what an execution causes: its request's header when this
    /// connection asked for it, else one that names the execution and who ran it.
    pub fn parent(&self, execution_id: &str) -> Map<String, Value> {
        let run = self.runs.get(execution_id);
        if let Some(origin) = run.and_then(|r| r.origin.as_ref()) {
            return origin.header.clone();
        }
        let by = run.map_or("", |r| r.by.as_str());
        match json!({
            "msg_id": execution_id,
            "msg_type": "execute_request",
            "session": "nbplat",
            "username": by,
            "version": self.version,
        }) {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn track(&mut self, execution_id: String, run: Run) {
        if self.order.len() >= MAX_TRACKED
            && let Some(old) = self.order.pop_front()
        {
            self.runs.remove(&old);
        }
        self.order.push_back(execution_id.clone());
        self.runs.insert(execution_id, run);
    }
}

/// An output as a Jupyter IOPub message type and content (`execute_result` always has a count).
fn output_message(output: &Output, count: Option<u64>) -> Option<(&'static str, Value)> {
    Some(match output {
        Output::Stream { name, text } => (
            "stream",
            json!({
                "name": match name { StreamName::Stdout => "stdout", StreamName::Stderr => "stderr" },
                "text": text,
            }),
        ),
        Output::DisplayData {
            data,
            metadata,
            display_id,
        } => {
            let mut content = json!({ "data": data, "metadata": metadata });
            if let Some(id) = display_id {
                content["transient"] = json!({ "display_id": id });
            }
            ("display_data", content)
        }
        Output::ExecuteResult {
            execution_count,
            data,
            metadata,
        } => (
            "execute_result",
            json!({
                "execution_count": execution_count.or(count).unwrap_or(0),
                "data": data,
                "metadata": metadata,
            }),
        ),
        Output::Error {
            ename,
            evalue,
            traceback,
        } => (
            "error",
            json!({ "ename": ename, "evalue": evalue, "traceback": traceback }),
        ),
        Output::Unknown { .. } => return None,
    })
}

/// The `execute_reply` for a run the kernel did not answer itself (aborted, timed out, its
/// kernel died), and the IOPub error to show first when it failed for a reason of ours.
fn synthesized_reply(
    status: ExecutionStatus,
    count: Option<u64>,
    error: Option<(String, String, Vec<String>)>,
    reason: &Option<String>,
) -> (Value, Option<Value>) {
    let count = count.unwrap_or(0);
    let failure = |ename: &str| {
        let evalue = reason.clone().unwrap_or_else(|| ename.to_owned());
        let error = json!({ "ename": ename, "evalue": evalue, "traceback": [format!("{ename}: {evalue}")] });
        let mut reply = error.clone();
        reply["status"] = "error".into();
        reply["execution_count"] = count.into();
        (reply, Some(error))
    };
    match status {
        ExecutionStatus::Ok => (
            json!({ "status": "ok", "execution_count": count, "user_expressions": {}, "payload": [] }),
            None,
        ),
        ExecutionStatus::Aborted => (json!({ "status": "aborted" }), None),
        ExecutionStatus::Error | ExecutionStatus::Interrupted => match error {
            Some((ename, evalue, traceback)) => (
                json!({
                    "status": "error", "execution_count": count,
                    "ename": ename, "evalue": evalue, "traceback": traceback,
                }),
                None,
            ),
            None if status == ExecutionStatus::Interrupted => failure("KeyboardInterrupt"),
            None => failure("Error"),
        },
        ExecutionStatus::TimedOut => failure("TimeoutError"),
        ExecutionStatus::KernelDied => failure("DeadKernelError"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ExecutionSummary;

    fn queued(id: &str, request_id: Option<&str>) -> ServerEvent {
        ServerEvent::ExecutionQueued {
            execution: ExecutionSummary {
                id: id.into(),
                cell_id: None,
                by: "Ada".into(),
                code: "1+1".into(),
                running: false,
            },
            request_id: request_id.map(str::to_owned),
        }
    }

    fn request_header(msg_id: &str) -> Map<String, Value> {
        match json!({ "msg_id": msg_id, "msg_type": "execute_request", "session": "s",
                      "username": "u", "version": "5.3" })
        {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn types(out: &[WireMessage]) -> Vec<(Channel, String)> {
        out.iter()
            .map(|m| (m.channel, m.msg_type().to_owned()))
            .collect()
    }

    fn run(t: &mut Translator, events: Vec<ServerEvent>) -> Vec<WireMessage> {
        let mut out = Vec::new();
        for e in events {
            t.on_event(&e, &mut out);
        }
        out
    }

    #[test]
    fn an_own_run_is_answered_with_the_kernels_reply_between_busy_and_idle() {
        let mut t = Translator::new("k1".into(), "5.3".into());
        let (tx, rx) = oneshot::channel();
        t.expect(
            "r1".into(),
            Origin {
                header: request_header("m1"),
                silent: false,
                allow_stdin: true,
                reply: Some(rx),
            },
        );
        tx.send(
            json!({ "status": "ok", "execution_count": 3, "payload": [], "user_expressions": {} }),
        )
        .unwrap();
        let out = run(
            &mut t,
            vec![
                queued("x1", Some("r1")),
                ServerEvent::ExecutionStarted {
                    execution_id: "x1".into(),
                },
                ServerEvent::ExecutionInput {
                    execution_id: "x1".into(),
                    execution_count: 3,
                },
                ServerEvent::Output {
                    execution_id: "x1".into(),
                    output: Output::ExecuteResult {
                        execution_count: None,
                        data: Map::from_iter([("text/plain".into(), json!("2"))]),
                        metadata: Map::new(),
                    },
                },
                ServerEvent::ExecutionFinished {
                    execution_id: "x1".into(),
                    status: ExecutionStatus::Ok,
                    execution_count: Some(3),
                    duration_ms: 1,
                    reason: None,
                },
            ],
        );
        assert_eq!(
            types(&out),
            [
                (Channel::Iopub, "status".into()),
                (Channel::Iopub, "execute_input".into()),
                (Channel::Iopub, "execute_result".into()),
                (Channel::Shell, "execute_reply".into()),
                (Channel::Iopub, "status".into()),
            ]
        );
        assert!(out.iter().all(|m| m.parent_header["msg_id"] == "m1"));
        assert!(out.iter().all(|m| m.header["session"] == "k1"));
        assert_eq!(
            out[2].content["execution_count"], 3,
            "the count from execute_input"
        );
        assert_eq!(out[3].content["execution_count"], 3);
        assert_eq!(out[4].content["execution_state"], "idle");
    }

    #[test]
    fn others_runs_show_with_a_parent_naming_them_and_no_reply() {
        let mut t = Translator::new("k1".into(), "5.3".into());
        let out = run(
            &mut t,
            vec![
                queued("x2", None),
                ServerEvent::ExecutionStarted {
                    execution_id: "x2".into(),
                },
                ServerEvent::InputRequest {
                    execution_id: "x2".into(),
                    prompt: "? ".into(),
                    password: false,
                },
                ServerEvent::ExecutionFinished {
                    execution_id: "x2".into(),
                    status: ExecutionStatus::Ok,
                    execution_count: Some(1),
                    duration_ms: 1,
                    reason: None,
                },
            ],
        );
        assert_eq!(
            types(&out),
            [
                (Channel::Iopub, "status".into()),
                (Channel::Iopub, "status".into())
            ],
            "no prompt and no reply for someone else's run"
        );
        assert_eq!(out[0].parent_header["msg_id"], "x2");
        assert_eq!(out[0].parent_header["username"], "Ada");
    }

    #[test]
    fn a_run_that_timed_out_gets_an_error_and_an_error_reply() {
        let mut t = Translator::new("k1".into(), "5.3".into());
        let (_tx, rx) = oneshot::channel::<Value>();
        t.expect(
            "r1".into(),
            Origin {
                header: request_header("m1"),
                silent: false,
                allow_stdin: true,
                reply: Some(rx),
            },
        );
        let out = run(
            &mut t,
            vec![
                queued("x1", Some("r1")),
                ServerEvent::ExecutionStarted {
                    execution_id: "x1".into(),
                },
                ServerEvent::ExecutionFinished {
                    execution_id: "x1".into(),
                    status: ExecutionStatus::TimedOut,
                    execution_count: None,
                    duration_ms: 1,
                    reason: Some("over 10 s".into()),
                },
            ],
        );
        assert_eq!(out[1].msg_type(), "error");
        assert_eq!(out[2].content["status"], "error");
        assert_eq!(out[2].content["ename"], "TimeoutError");
        assert_eq!(out[2].content["evalue"], "over 10 s");
    }

    #[test]
    fn an_aborted_run_is_busy_aborted_idle_and_a_new_kernel_renames_the_session() {
        let mut t = Translator::new("k1".into(), "5.3".into());
        t.expect(
            "r1".into(),
            Origin {
                header: request_header("m1"),
                silent: false,
                allow_stdin: true,
                reply: None,
            },
        );
        let out = run(
            &mut t,
            vec![
                queued("x1", Some("r1")),
                ServerEvent::ExecutionFinished {
                    execution_id: "x1".into(),
                    status: ExecutionStatus::Aborted,
                    execution_count: None,
                    duration_ms: 0,
                    reason: None,
                },
                ServerEvent::KernelStatus {
                    state: KernelState::Idle,
                    reason: None,
                    kernel_session: Some("k2".into()),
                },
            ],
        );
        assert_eq!(out[0].content["execution_state"], "busy");
        assert_eq!(
            out[1].content,
            Map::from_iter([("status".into(), json!("aborted"))])
        );
        assert_eq!(out[2].content["execution_state"], "idle");
        assert_eq!(out[3].header["session"], "k2");
        assert_eq!(t.prompted(), None);
    }
}
