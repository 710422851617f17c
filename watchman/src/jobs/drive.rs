//! A run from its queue to its end: its plan's slot, attempts on fresh pods, retries after
//! their backoff, and the finish (receipt, quota, audit, metrics).

use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use super::decide::{Next, after_attempt, charge_cpu_ms};
use super::model::{Attempt, AuditEntry, Outcome, Run, RunEvent, RunState};
use super::{Jobs, Live, POLL, outputs, receipt, runner};
use crate::model::now_ms;
use crate::plan::Plan;

impl Jobs {
    /// How a run that was not on a pod ends when it is stopped: cancelled by its user, or
    /// errored because this replica is stopping.
    fn stopped(&self, when: &str) -> (RunState, String) {
        if self.inner.shutdown.is_cancelled() {
            (
                RunState::Errored,
                format!("Watchman stopped {when}; submit again"),
            )
        } else {
            (RunState::Cancelled, format!("cancelled {when}"))
        }
    }

    /// Saves the run and tells live watchers.
    async fn save(&self, run: &Run, live: &Live) {
        if let Err(error) = self.inner.store.put(run).await {
            tracing::error!(%error, "run not saved");
        }
        let event = if run.state.is_final() {
            RunEvent::Finished(Box::new(run.clone().redacted()))
        } else {
            RunEvent::State(Box::new(run.clone().redacted()))
        };
        let _ = live.events.send(event);
    }

    /// Queues, attempts and retries `run` until it finishes.
    pub(super) async fn drive(&self, mut run: Run, plan: &Plan, live: &Live) {
        let watcher = self.watch_for_cancel(&run.id, &live.cancel);
        let (Some(slots), Some(gate)) = (
            self.inner.slots.get(&plan.name).cloned(),
            self.inner.pod_gates.get(&plan.name).cloned(),
        ) else {
            return;
        };
        let permit = tokio::select! {
            p = slots.acquire_owned() => p.ok(),
            () = live.cancel.cancelled() => None,
        };
        let mut cpu_ms = 0;
        let mut last_outputs = None;
        let final_state = 'attempts: {
            if permit.is_none() {
                break 'attempts self.stopped("while queued");
            }
            let mut number = 0;
            loop {
                number += 1;
                let started = now_ms();
                run.state = RunState::Running;
                run.started_at_ms.get_or_insert(started);
                run.attempts.push(Attempt {
                    number,
                    pod: String::new(),
                    started_at_ms: started,
                    finished_at_ms: None,
                    outcome: None,
                    detail: String::new(),
                    retry_at_ms: None,
                });
                self.save(&run, live).await;
                let renewed = self
                    .inner
                    .store
                    .keep_active(
                        &run,
                        super::decide::lost_after(
                            Duration::from_millis(run.timeout_ms),
                            &plan.jobs,
                        ),
                    )
                    .await;
                if let Err(error) = renewed {
                    tracing::warn!(%error, "the run's quota entry was not renewed");
                }
                let asked = run.clone();
                let with = runner::Attempting {
                    watchman: &self.inner.watchman,
                    events: &live.events,
                    cancel: &live.cancel,
                    pod_gate: &gate,
                    output_cap: plan.limits.max_output_bytes,
                    http: &self.inner.http,
                };
                let ended = runner::attempt(&with, &asked, number, async |pod: &str| {
                    run.pod = pod.to_owned();
                    if let Some(a) = run.attempts.last_mut() {
                        a.pod = pod.to_owned();
                    }
                    self.save(&run, live).await;
                    self.audit(AuditEntry::of(&run, "started", format!("attempt {number}")))
                        .await;
                })
                .await;
                if let Some(doc) = &ended.document
                    && let Err(error) = self
                        .inner
                        .retention
                        .delete_document(&self.inner.watchman, doc)
                        .await
                {
                    tracing::warn!(%error, document = %doc, "the attempt's document was not deleted");
                }
                cpu_ms += charge_cpu_ms(
                    u64::try_from(ended.held.as_millis()).unwrap_or(u64::MAX),
                    plan.cpus(),
                );
                metrics::counter!("watchman_run_attempts_total", "plan" => plan.name.clone(), "outcome" => ended.outcome.label()).increment(1);
                let shutting_down = self.inner.shutdown.is_cancelled();
                let cancelled = live.cancel.is_cancelled() && !shutting_down;
                run.cancel_requested = cancelled;
                let next = after_attempt(
                    ended.outcome,
                    number,
                    &plan.jobs,
                    cancelled,
                    rand::thread_rng().r#gen::<f64>(),
                );
                if let Some(a) = run.attempts.last_mut() {
                    a.finished_at_ms = Some(now_ms());
                    a.outcome = Some(ended.outcome);
                    a.detail.clone_from(&ended.detail);
                }
                run.outputs_truncated = ended.outputs.truncated;
                // A notebook run's result is its notebook; its outputs were streamed.
                if run.notebook.is_some() {
                    run.result_notebook = ended.notebook;
                } else {
                    last_outputs = Some(ended.outputs);
                }
                match next {
                    // The attempt was stopped because this replica is stopping, not by its user.
                    _ if shutting_down && ended.outcome == Outcome::Cancelled => {
                        break 'attempts (
                            RunState::Errored,
                            format!("Watchman stopped during attempt {number}; submit again"),
                        );
                    }
                    Next::Finish(state) => break 'attempts (state, ended.detail),
                    Next::Retry(_) if shutting_down => {
                        break 'attempts (
                            RunState::Errored,
                            format!("Watchman stopped during attempt {number}; submit again"),
                        );
                    }
                    Next::Retry(pause) => {
                        let at = now_ms() + u64::try_from(pause.as_millis()).unwrap_or(0);
                        if let Some(a) = run.attempts.last_mut() {
                            a.retry_at_ms = Some(at);
                        }
                        run.state = RunState::Retrying;
                        metrics::counter!("watchman_run_retries_total", "plan" => plan.name.clone()).increment(1);
                        self.save(&run, live).await;
                        self.audit(AuditEntry::of(
                            &run,
                            "retry",
                            format!(
                                "attempt {number}: {}: {}",
                                ended.outcome.label(),
                                ended.detail
                            ),
                        ))
                        .await;
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = live.cancel.cancelled() => {
                                break 'attempts self.stopped("while waiting to retry");
                            }
                        }
                    }
                }
            }
        };
        drop(permit);
        watcher.cancel();
        let (state, reason) = final_state;
        let now = now_ms();
        run.state = state;
        run.exit_reason = reason;
        run.finished_at_ms = Some(now);
        run.outputs = last_outputs
            .map(outputs::Outputs::into_vec)
            .unwrap_or_default();
        run.cpu_seconds = cpu_ms as f64 / 1000.0;
        run.expires_at_ms =
            now + u64::try_from(plan.jobs.result_ttl.as_millis()).unwrap_or(u64::MAX / 2);
        run.receipt = Some(receipt::sign(&run, plan, &self.inner.key));
        self.save(&run, live).await;
        if let Err(error) = self.inner.store.release(&run, cpu_ms).await {
            tracing::error!(%error, "the run's quota was not released (it frees itself later)");
        }
        metrics::counter!("watchman_runs_finished_total", "plan" => plan.name.clone(), "state" => state.label()).increment(1);
        if let Some(started) = run.started_at_ms {
            metrics::histogram!("watchman_run_seconds", "plan" => plan.name.clone())
                .record(now.saturating_sub(started) as f64 / 1000.0);
        }
        self.audit(AuditEntry::of(
            &run,
            "finished",
            format!(
                "{} after {} attempt(s) {}",
                state.label(),
                run.attempts.len(),
                run.exit_reason
            )
            .trim_end()
            .to_owned(),
        ))
        .await;
        if let Some(hook) = &run.webhook {
            self.notify(hook, &run);
        }
    }

    /// Cancels `token` once a cancel of `run` is recorded in the store (asked of any replica).
    fn watch_for_cancel(&self, run: &str, token: &CancellationToken) -> CancellationToken {
        let stop = CancellationToken::new();
        let (jobs, run, token, s) = (self.clone(), run.to_owned(), token.clone(), stop.clone());
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = s.cancelled() => return,
                    () = token.cancelled() => return,
                }
                if let Ok(true) = jobs.inner.store.cancel_asked(&run).await {
                    token.cancel();
                    return;
                }
            }
        });
        stop
    }
}
