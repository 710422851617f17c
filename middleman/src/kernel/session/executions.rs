//! The execution queue: sending the next execution to the kernel, stopping the running one
//! (interrupt or time limit), and ending it with its outputs flushed and its status resolved
//! (status.rs), aborting what waited behind it when it must.

use std::time::Instant;

use jupyter_protocol::{ExecuteRequest, InterruptRequest, JupyterMessage, ReplyStatus};
use nix::sys::signal::Signal;

use super::lifecycle::Restart;
use super::status::{self, StopCause, status_label};
use super::{Actor, Pending, Phase, Running};
use crate::output::OutputBuffer;
use crate::protocol::{ExecutionStatus, InputOutcome, KernelState, ServerEvent};

/// The request metadata key that carries a checkpoint save after the cell (`start_next`); the
/// kernel helper's post_run_cell hook reads it (nbplat_checkpoint.py).
const SAVE_KEY: &str = "nbplat_checkpoint";

/// Answers the save carried by an execution: the kernel queued it if the cell succeeded (its
/// report comes later; the answer is the save's content). A cell that failed saves nothing:
/// the asker sees its channel close, as when the kernel goes away.
pub(super) fn answer_save(
    (answer, content): (super::AnswerSender, serde_json::Value),
    status: &jupyter_protocol::ReplyStatus,
) {
    if matches!(status, jupyter_protocol::ReplyStatus::Ok) {
        let _ = answer.send(content);
    }
}

/// Output buffers kept for executions that finished, so late output (a background thread
/// printing after the cell ended) still lands on the right execution, within its cap.
const RECENT_OUTPUTS: usize = 32;

impl Actor {
    /// Starts the next queued execution, if the kernel is free, and tells the clients.
    pub(super) async fn start_next(&mut self) {
        if let Some(execution_id) = self.send_next().await {
            self.announce_started(execution_id);
        }
    }

    /// Tells the clients that `execution_id` started (its request is with the kernel).
    pub(super) fn announce_started(&mut self, execution_id: String) {
        self.emit(ServerEvent::ExecutionStarted { execution_id });
        self.publish_queue();
        self.set_state(KernelState::Busy, None);
    }

    /// Sends the next queued execution to the kernel, if the kernel is free, and makes it the
    /// current one; returns its id. Nothing is told to clients yet ([`Actor::announce_started`]).
    pub(super) async fn send_next(&mut self) -> Option<String> {
        if self.current.is_some() || self.state == KernelState::Dead {
            return None;
        }
        let Phase::Ready { sockets, .. } = &mut self.phase else {
            return None;
        };
        let mut pending = self.queue.pop_front()?;
        let mut request = ExecuteRequest::new(pending.code.clone());
        request.allow_stdin = pending.options.allow_stdin;
        request.silent = pending.options.silent;
        request.store_history = pending.options.store_history;
        request.user_expressions = Some(std::mem::take(&mut pending.options.user_expressions))
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.into_iter()
                    .filter_map(|(name, v)| Some((name, v.as_str()?.to_owned())))
                    .collect()
            });
        // We keep our own queue and send one request at a time, so the kernel never aborts on
        // our behalf.
        request.stop_on_error = false;
        // A checkpoint save after the cell rides on it in the request's metadata: the kernel
        // queues it when the cell succeeded, before its reply, with no request (and no round)
        // of its own.
        let mut then = pending.then.take();
        let mut save = None;
        let mut message: JupyterMessage = request.into();
        if let Some(quiet) = then.take_if(|q| q.question.msg_type == "nbplat_request") {
            message.metadata = serde_json::json!({ SAVE_KEY: quiet.question.content });
            save = Some((quiet.answer, quiet.question.content));
        }
        let msg_id = message.header.msg_id.clone();
        if let Err(error) = sockets.shell.send(message).await {
            tracing::error!(%error, "could not send execute_request");
            self.queue.push_front(pending);
            Box::pin(self.restart(Restart::Lost {
                cause: "socket",
                reason: format!("the kernel connection failed: {error}"),
            }))
            .await;
            return None;
        }
        if let Some(quiet) = then {
            self.send_quiet(quiet).await;
        }
        let now = Instant::now();
        self.remember_output(
            msg_id.clone(),
            OutputBuffer::new(
                pending.id.clone(),
                self.settings.max_output_bytes,
                self.settings.stream_flush_interval,
            ),
        );
        let execution_id = pending.id.clone();
        // Deno's kernel may publish the result after its idle status: wait for one only where
        // the cell may show a value (not after `const x = ...` or `console.log(...)`).
        let awaits_late_result = self.settings.spec.results_after_idle()
            && crate::graph::javascript::may_show_a_value(&pending.code);
        self.current = Some(Running {
            awaits_late_result,
            pending,
            msg_id,
            started: now,
            deadline: now + self.settings.execution_timeout,
            reply: None,
            reply_at: None,
            idle: false,
            settle_until: None,
            stopping: None,
            input: None,
            save,
        });
        Some(execution_id)
    }

    pub(super) fn remember_output(&mut self, msg_id: String, buffer: OutputBuffer) {
        self.outputs.insert(msg_id.clone(), buffer);
        self.output_order.push_back(msg_id);
        while self.output_order.len() > RECENT_OUTPUTS {
            if let Some(old) = self.output_order.pop_front() {
                self.outputs.remove(&old);
            }
        }
    }

    /// Interrupts the running execution; escalation to a kill happens in [`Self::on_timer`].
    pub(super) async fn begin_stop(&mut self, cause: StopCause) {
        let grace = self.settings.interrupt_grace;
        let by_message = self.settings.spec.interrupt_by_message();
        let Some(running) = self.current.as_mut() else {
            return;
        };
        if running.stopping.is_some() {
            return;
        }
        running.stopping = Some((cause, Instant::now() + grace));
        let cancelled = running.input.take().map(|_| running.pending.id.clone());
        match &mut self.phase {
            Phase::Ready { sockets, .. } if by_message => {
                if let Err(error) = sockets.control.send(InterruptRequest {}.into()).await {
                    tracing::warn!(%error, "could not send interrupt_request");
                }
            }
            Phase::Ready { .. } | Phase::Starting { .. } => {
                self.launcher.signal(self.generation, Signal::SIGINT)
            }
            Phase::Down => {}
        }
        if let Some(execution_id) = cancelled {
            self.emit(ServerEvent::InputResolved {
                execution_id,
                outcome: InputOutcome::Cancelled,
                by: None,
            });
        }
    }

    pub(super) fn abort_queue(&mut self, reason: &str) {
        let aborted: Vec<Pending> = self.queue.drain(..).collect();
        for p in aborted {
            metrics::counter!("middleman_executions_total", "status" => "aborted").increment(1);
            self.emit(ServerEvent::ExecutionFinished {
                execution_id: p.id,
                status: ExecutionStatus::Aborted,
                execution_count: None,
                duration_ms: 0,
                reason: Some(reason.to_owned()),
            });
        }
        self.publish_queue();
    }

    /// Ends the running execution with `status` (overridden by an interrupt or timeout in
    /// progress), flushing its output first.
    pub(super) fn finish_current(&mut self, status: ExecutionStatus, reason: Option<String>) {
        let Some(running) = self.current.take() else {
            return;
        };
        let mut events = Vec::new();
        if let Some(buffer) = self.outputs.get_mut(&running.msg_id) {
            buffer.flush(Instant::now(), &mut events);
            metrics::counter!("middleman_output_bytes_total").increment(buffer.used());
        }
        for e in events {
            self.emit(e);
        }
        if running.input.is_some() {
            self.emit(ServerEvent::InputResolved {
                execution_id: running.pending.id.clone(),
                outcome: InputOutcome::Cancelled,
                by: None,
            });
        }
        let (status, reason) = status::resolve(
            running.stopping.map(|(cause, _)| cause),
            status,
            reason,
            self.settings.execution_timeout,
        );
        let elapsed = running.started.elapsed();
        metrics::counter!("middleman_executions_total", "status" => status_label(status))
            .increment(1);
        metrics::histogram!("middleman_execution_duration_seconds").record(elapsed.as_secs_f64());
        self.emit(ServerEvent::ExecutionFinished {
            execution_id: running.pending.id.clone(),
            status,
            execution_count: running.reply.map(|(_, c)| c),
            duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            reason,
        });
        if status::stops_the_queue(status, running.pending.stop_on_error) {
            self.abort_queue(&format!(
                "an earlier execution ended: {}",
                status_label(status)
            ));
        }
        self.publish_queue();
    }

    pub(super) async fn maybe_finish(&mut self) {
        let Some(running) = self.current.as_mut() else {
            return;
        };
        let (Some((status, _)), true) = (&running.reply, running.idle) else {
            return;
        };
        if running.awaits_late_result && *status == ReplyStatus::Ok {
            let now = Instant::now();
            let until = *running
                .settle_until
                .get_or_insert(now + super::LATE_RESULT_GRACE);
            if until > now {
                return;
            }
        }
        let status = status::from_reply(status);
        self.finish_current(status, None);
        if self.queue.is_empty() && matches!(self.phase, Phase::Ready { .. }) {
            self.set_state(KernelState::Idle, None);
        }
        self.start_next().await;
    }
}
