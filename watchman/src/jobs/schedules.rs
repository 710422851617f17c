//! Schedules (docs/jobs.md#schedules): a user's document run on a cron expression in a time
//! zone, by the reconciler's leader. Each due time fires exactly once, also across a failover:
//! the run it fires carries the idempotency key `~schedule:<id>:<due ms>` (callers' keys cannot
//! hold `~`), so a leader that
//! fires a due time another already fired (it crashed before advancing the schedule, or both
//! acted during a handover) gets the first run back instead of a second. The new leader fires
//! what the old one missed, as the schedule's missed-run policy says (`cron::to_fire`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::cron::{self, Cron, Missed};
use super::model::{AuditEntry, Fired, NotebookMode, NotebookSpec, Webhook};
use super::{JobError, Jobs, Submission, check_parameters, check_timeout, err_invalid, webhook};
use crate::model::now_ms;
use crate::service::ReconcilerStatus;

/// How often the leader looks for due schedules at least (it also wakes at the next one).
const TICK: Duration = Duration::from_millis(250);
/// Schedules a user may have.
pub const MAX_PER_USER: usize = 100;
/// The catch-up window when none is given, and the longest.
const DEFAULT_CATCH_UP_MS: u64 = 3_600_000;
const MAX_CATCH_UP_MS: u64 = 7 * 86_400_000;
/// Missed due times kept per schedule and pass, the newest (older ones are skipped).
const MAX_DUES: usize = 1000;
/// Due times walked per schedule and pass before only the on-time ones are looked at.
const MAX_STEPS: usize = 100_000;

/// A schedule, as stored and shown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(default)]
    pub id: String,
    pub user_id: String,
    pub plan: String,
    pub document: String,
    pub cron: String,
    /// IANA name; empty: UTC.
    #[serde(default)]
    pub time_zone: String,
    #[serde(default)]
    pub mode: NotebookMode,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub missed: Missed,
    /// How late a missed due time may still be fired (0: an hour).
    #[serde(default)]
    pub catch_up_ms: u64,
    #[serde(default)]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
    /// Each run's time limit (0: the plan's execution timeout).
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub created_at_ms: u64,
    /// The next due time not yet fired (0 while paused); kept in the due set, shown here.
    #[serde(default)]
    pub next_due_ms: u64,
}

impl Schedule {
    fn redacted(mut self) -> Self {
        Webhook::redact(&mut self.webhook);
        self
    }

    fn parsed(&self) -> Result<(Cron, jiff::tz::TimeZone), String> {
        let cron = Cron::parse(&self.cron).map_err(|e| format!("cron: {e}"))?;
        let tz = cron::zone(&self.time_zone).map_err(|e| format!("time_zone: {e}"))?;
        Ok((cron, tz))
    }

    fn audit(&self, event: &str, detail: impl Into<String>) -> AuditEntry {
        AuditEntry {
            at_ms: now_ms(),
            event: event.to_owned(),
            user_id: self.user_id.clone(),
            run_id: String::new(),
            plan: self.plan.clone(),
            pod: String::new(),
            code_sha256: String::new(),
            detail: format!("schedule {}: {}", self.id, detail.into()),
        }
    }
}

/// What a caller does to one of its schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    Get,
    Pause,
    Resume,
    Delete,
}

/// The first due time after `after_ms`, as a Unix millisecond.
fn next_due(cron: &Cron, tz: &jiff::tz::TimeZone, after_ms: u64) -> Option<u64> {
    let after = jiff::Timestamp::from_millisecond(i64::try_from(after_ms).ok()?).ok()?;
    let next = cron.next_after(after, tz)?;
    u64::try_from(next.as_millisecond()).ok()
}

impl Jobs {
    /// Validates and stores a new schedule; it first fires at its next due time.
    pub async fn create_schedule(&self, mut s: Schedule) -> Result<Schedule, JobError> {
        crate::service::valid_id("user_id", &s.user_id).map_err(|e| err_invalid(e.to_string()))?;
        let plan = self.plan(&s.plan)?.clone();
        crate::service::valid_id("document", &s.document)
            .map_err(|e| err_invalid(e.to_string()))?;
        let (cron, tz) = s.parsed().map_err(err_invalid)?;
        check_parameters(s.mode, &s.parameters)?;
        check_timeout(&plan, s.timeout_ms)?;
        if s.catch_up_ms > MAX_CATCH_UP_MS {
            return Err(err_invalid(format!(
                "catch_up_ms is at most {MAX_CATCH_UP_MS} (7 days)"
            )));
        }
        if s.catch_up_ms == 0 {
            s.catch_up_ms = DEFAULT_CATCH_UP_MS;
        }
        if let Some(w) = &s.webhook {
            webhook::check(w).map_err(err_invalid)?;
        }
        if self.inner.store.schedule_ids(&s.user_id).await?.len() >= MAX_PER_USER {
            return Err(JobError::Quota(format!(
                "a user has at most {MAX_PER_USER} schedules"
            )));
        }
        let now = now_ms();
        let next = next_due(&cron, &tz, now)
            .ok_or_else(|| err_invalid(format!("cron {:?} is never due", s.cron)))?;
        s.id = format!("s{}", uuid::Uuid::new_v4().simple());
        s.created_at_ms = now;
        s.next_due_ms = 0;
        self.inner.store.put_schedule(&s, true).await?;
        if !s.paused {
            self.inner.store.set_due(&s.id, Some(next), false).await?;
            s.next_due_ms = next;
        }
        self.audit(s.audit("schedule_created", format!("{} in {}", s.cron, tz_name(&s))))
            .await;
        Ok(s.redacted())
    }

    async fn own_schedule(&self, user: &str, id: &str) -> Result<Schedule, JobError> {
        match self.inner.store.get_schedule(id).await? {
            Some(mut s) if s.user_id == user => {
                s.next_due_ms = self.inner.store.due_of(id).await?.unwrap_or(0);
                Ok(s)
            }
            _ => Err(JobError::NotFound(id.chars().take(64).collect())),
        }
    }

    /// The user's schedule.
    async fn get_schedule(&self, user: &str, id: &str) -> Result<Schedule, JobError> {
        Ok(self.own_schedule(user, id).await?.redacted())
    }

    /// The user's schedules, oldest first.
    pub async fn list_schedules(&self, user: &str) -> Result<Vec<Schedule>, JobError> {
        crate::service::valid_id("user_id", user).map_err(|e| err_invalid(e.to_string()))?;
        let mut all = Vec::new();
        for id in self.inner.store.schedule_ids(user).await? {
            if let Ok(s) = self.get_schedule(user, &id).await {
                all.push(s);
            }
        }
        Ok(all)
    }

    /// Does `action` to the user's schedule `id`, and returns it (as it was, once deleted).
    pub async fn on_schedule(
        &self,
        user: &str,
        id: &str,
        action: ScheduleAction,
    ) -> Result<Schedule, JobError> {
        match action {
            ScheduleAction::Get => self.get_schedule(user, id).await,
            ScheduleAction::Pause => self.pause_schedule(user, id).await,
            ScheduleAction::Resume => self.resume_schedule(user, id).await,
            ScheduleAction::Delete => self.delete_schedule(user, id).await,
        }
    }

    /// Writes a changed schedule, unless it was deleted meanwhile (then `NotFound`).
    async fn update(&self, s: &Schedule) -> Result<(), JobError> {
        if self.inner.store.put_schedule(s, false).await? {
            Ok(())
        } else {
            Err(JobError::NotFound(s.id.clone()))
        }
    }

    /// Stops firing; due times while paused are never caught up.
    async fn pause_schedule(&self, user: &str, id: &str) -> Result<Schedule, JobError> {
        let mut s = self.own_schedule(user, id).await?;
        self.inner.store.set_due(id, None, false).await?;
        s.paused = true;
        s.next_due_ms = 0;
        self.update(&s).await?;
        self.audit(s.audit("schedule_paused", "")).await;
        Ok(s.redacted())
    }

    /// Fires again from the next due time after now.
    async fn resume_schedule(&self, user: &str, id: &str) -> Result<Schedule, JobError> {
        let mut s = self.own_schedule(user, id).await?;
        let (cron, tz) = s.parsed().map_err(err_invalid)?;
        let next = next_due(&cron, &tz, now_ms())
            .ok_or_else(|| err_invalid(format!("cron {:?} is never due", s.cron)))?;
        s.paused = false;
        s.next_due_ms = 0;
        self.update(&s).await?;
        self.inner.store.set_due(id, Some(next), false).await?;
        s.next_due_ms = next;
        self.audit(s.audit("schedule_resumed", "")).await;
        Ok(s.redacted())
    }

    /// Removes the schedule; its runs are kept.
    async fn delete_schedule(&self, user: &str, id: &str) -> Result<Schedule, JobError> {
        let s = self.own_schedule(user, id).await?;
        self.inner.store.delete_schedule(&s).await?;
        self.audit(s.audit("schedule_deleted", "")).await;
        Ok(s.redacted())
    }

    /// Fires due schedules while this replica leads the reconciler, until shutdown.
    pub async fn run_scheduler(self, status: watch::Receiver<ReconcilerStatus>) {
        let shutdown = self.inner.shutdown.clone();
        let mut pause = TICK;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = TICK;
            // The reconciler is gone (it stopped): so is the leadership.
            if status.has_changed().is_err() {
                return;
            }
            if !status.borrow().leading {
                continue;
            }
            if let Err(error) = self.fire_due().await {
                tracing::warn!(%error, "schedules not fired this pass");
            }
            // Wake at the next due time if it comes before the next tick (fired within
            // milliseconds, not a tick, late).
            if let Ok(first) = self.inner.store.due_before(u64::MAX, 1).await
                && let Some((_, at)) = first.first()
            {
                pause = Duration::from_millis(at.saturating_sub(now_ms())).min(TICK);
            }
        }
    }

    /// One pass: every schedule due now fires what it should and moves to its next due time.
    async fn fire_due(&self) -> Result<(), JobError> {
        let now = now_ms();
        for (id, due) in self.inner.store.due_before(now, 100).await? {
            if self.inner.shutdown.is_cancelled() {
                break;
            }
            let s = match self.inner.store.get_schedule(&id).await? {
                Some(s) if !s.paused => s,
                // Deleted or paused meanwhile.
                _ => {
                    self.inner.store.set_due(&id, None, false).await?;
                    continue;
                }
            };
            let Ok((cron, tz)) = s.parsed() else {
                tracing::error!(schedule = %id, "a stored schedule does not parse; deactivated");
                self.inner.store.set_due(&id, None, false).await?;
                continue;
            };
            let (dues, skipped_old) = due_times(&cron, &tz, due, now, s.catch_up_ms);
            let fire = cron::to_fire(&dues, now, s.missed, s.catch_up_ms);
            if skipped_old || fire.len() < dues.len() {
                self.audit(s.audit(
                    "schedule_missed",
                    format!("due times from {due} not fired on time were skipped"),
                ))
                .await;
            }
            let mut fired_all = true;
            for d in fire {
                fired_all &= self.fire(&s, d).await;
            }
            // A due time that could not be submitted for a passing reason is tried again at
            // the next pass (its key makes that safe): the schedule stays where it is.
            if fired_all {
                let next = next_due(&cron, &tz, now);
                self.inner.store.set_due(&id, next, true).await?;
            }
        }
        Ok(())
    }

    /// Submits the run of due time `due` (a second submission of it returns the first run).
    /// Returns false when it should be tried again (the store failed, or the first submission
    /// of this due time is still being stored).
    async fn fire(&self, s: &Schedule, due: u64) -> bool {
        let submitted = self
            .submit(Submission {
                user_id: s.user_id.clone(),
                plan: s.plan.clone(),
                timeout_ms: s.timeout_ms,
                idempotency_key: format!("~schedule:{}:{due}", s.id),
                notebook: Some(NotebookSpec {
                    document: s.document.clone(),
                    mode: s.mode,
                    parameters: s.parameters.clone(),
                }),
                webhook: s.webhook.clone(),
                fired_by: Some(Fired {
                    schedule_id: s.id.clone(),
                    due_at_ms: due,
                }),
                ..Submission::default()
            })
            .await;
        match submitted {
            Ok(run) => {
                tracing::info!(schedule = %s.id, due, run = %run.id, "schedule fired");
                metrics::counter!("watchman_schedule_fires_total", "plan" => s.plan.clone())
                    .increment(1);
                true
            }
            Err(error @ (JobError::Store(_) | JobError::InFlight(_) | JobError::ShuttingDown)) => {
                tracing::warn!(schedule = %s.id, due, %error, "schedule not fired yet; trying again");
                false
            }
            Err(error) => {
                tracing::warn!(schedule = %s.id, due, %error, "schedule could not fire");
                self.audit(s.audit("schedule_failed", format!("due {due}: {error}")))
                    .await;
                true
            }
        }
    }
}

/// The due times from `due` to `now` that may still fire: those within the catch-up window
/// (and always the last minute's), the newest [`MAX_DUES`] of them. Also says whether older
/// ones were left out.
fn due_times(
    cron: &Cron,
    tz: &jiff::tz::TimeZone,
    due: u64,
    now: u64,
    catch_up_ms: u64,
) -> (Vec<u64>, bool) {
    let window = catch_up_ms.max(cron::ON_TIME_MS);
    let mut at = due;
    let mut skipped = false;
    if now.saturating_sub(at) > window {
        skipped = true;
        at = next_due(cron, tz, now - window - 1).unwrap_or(u64::MAX);
    }
    let mut dues = std::collections::VecDeque::new();
    let mut steps = 0;
    while at <= now {
        steps += 1;
        // A cron due every second over a week's window: only what is on time is looked at.
        if steps > MAX_STEPS {
            skipped = true;
            dues.clear();
            at = next_due(cron, tz, now.saturating_sub(cron::ON_TIME_MS + 1)).unwrap_or(u64::MAX);
            steps = 0;
            continue;
        }
        dues.push_back(at);
        if dues.len() > MAX_DUES {
            dues.pop_front();
            skipped = true;
        }
        at = next_due(cron, tz, at).unwrap_or(u64::MAX);
    }
    (dues.into(), skipped)
}

fn tz_name(s: &Schedule) -> &str {
    if s.time_zone.is_empty() {
        "UTC"
    } else {
        &s.time_zone
    }
}
