//! Runs without a browser (docs/jobs.md): one-shot executions and notebook runs on the warm
//! pools, queued per plan, retried only when the infrastructure lost them, bounded by per-user
//! quotas, audited, finished with a signed receipt and told to a webhook; and schedules that
//! fire notebook runs on a cron expression.
//!
//! - [`model`]: what a run is; [`decide`]: the pure decisions (retry or finish, backoff, quota,
//!   charge); [`outputs`]: outputs as Middleman's events build them; [`receipt`]: signing and
//!   verifying; [`store`]: where runs live; [`runner`]: one attempt on a pod (`notebook`: a
//!   notebook's attempt, [`params`]: its parameters); `drive`: a run from its queue to its end;
//!   [`webhook`]: telling its end.
//! - [`schedules`] (stored by `schedule_store`), with [`cron`]: due times and missed runs.
//! - [`Jobs`]: the handle the gRPC ([`crate::grpc_jobs`]) and HTTP ([`http`]) boundaries hold.

pub mod cron;
pub mod decide;
mod drive;
pub mod http;
pub mod model;
mod notebook;
pub mod outputs;
pub mod params;
pub mod receipt;
pub mod runner;
mod schedule_store;
pub mod schedules;
pub mod store;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use session_token::SigningKey;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use self::model::{
    AuditEntry, Fired, NotebookMode, NotebookSpec, Run, RunEvent, RunState, Webhook, sha256_hex,
};
use self::store::JobStore;
use crate::model::now_ms;
use crate::plan::Plan;
use crate::retention::Retention;
use crate::service::Watchman;
use crate::store::StoreError;

/// The largest stdin a run may carry.
pub const MAX_STDIN_BYTES: usize = 64 * 1024;
/// After this long, an idempotency key whose run was never stored is taken over.
const ORPHANED_CLAIM_MS: u64 = 30_000;
/// How often a watcher reads a run it is not running itself, and a runner checks for a cancel
/// asked of another replica.
const POLL: Duration = Duration::from_millis(500);

/// Why a jobs request failed; mapped to gRPC codes and HTTP statuses at the boundaries.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown, expired, or another user's run (the three are not told apart).
    #[error("no run {0:?} for this user")]
    NotFound(String),
    #[error("{0}")]
    Quota(String),
    /// An idempotency key reused for a different request.
    #[error("{0}")]
    Conflict(String),
    /// An idempotency key whose first submission is not stored yet.
    #[error("{0}")]
    InFlight(String),
    #[error("Watchman is shutting down; submit again")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a caller submits.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub user_id: String,
    pub plan: String,
    pub kernel: String,
    pub code: String,
    pub stdin: String,
    /// 0: the plan's execution timeout.
    pub timeout_ms: u64,
    pub idempotency_key: String,
    /// A notebook run: its document, or (empty document) `code` is an uploaded `.ipynb`.
    pub notebook: Option<NotebookSpec>,
    pub webhook: Option<Webhook>,
    /// Set by the scheduler only.
    pub fired_by: Option<Fired>,
}

/// A run being driven by this replica.
#[derive(Debug)]
struct Live {
    events: broadcast::Sender<RunEvent>,
    cancel: CancellationToken,
}

/// Cheap-to-clone handle on the jobs service.
#[derive(Debug, Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    watchman: Watchman,
    retention: Arc<Retention>,
    store: JobStore,
    key: SigningKey,
    slots: BTreeMap<String, Arc<Semaphore>>,
    /// Per plan: whose turn it is to take a pod (FIFO).
    pod_gates: BTreeMap<String, Arc<tokio::sync::Mutex<()>>>,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Notebook runs' requests to pods, and webhooks.
    http: reqwest::Client,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

fn err_invalid(s: impl Into<String>) -> JobError {
    JobError::InvalidArgument(s.into())
}

/// Checks a run's time limit against the plan's; returns the plan's (the default).
fn check_timeout(plan: &Plan, timeout_ms: u64) -> Result<u64, JobError> {
    let plan_limit = u64::try_from(plan.limits.execution_timeout.as_millis()).unwrap_or(u64::MAX);
    if timeout_ms > plan_limit {
        return Err(err_invalid(format!(
            "timeout_ms {timeout_ms} is above plan {:?}'s limit of {plan_limit} ms",
            plan.name
        )));
    }
    Ok(plan_limit)
}

/// Checks parameters' names, and that they come with every cell to run.
fn check_parameters(
    mode: NotebookMode,
    parameters: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), JobError> {
    params::check_names(parameters).map_err(|e| err_invalid(e.to_string()))?;
    if mode == NotebookMode::Stale && !parameters.is_empty() {
        return Err(err_invalid(
            "parameters need every cell to run (mode all), not only the stale ones",
        ));
    }
    Ok(())
}

/// Checks a notebook run's request: a document, or an uploaded `.ipynb` (`code`) that takes its
/// parameters.
fn check_notebook(spec: &NotebookSpec, code: &str, plan: &Plan) -> Result<(), JobError> {
    check_parameters(spec.mode, &spec.parameters)?;
    if !spec.document.is_empty() {
        crate::service::valid_id("document", &spec.document)
            .map_err(|e| err_invalid(e.to_string()))?;
        if !code.is_empty() {
            return Err(err_invalid(
                "give a document or an uploaded notebook, not both",
            ));
        }
        return Ok(());
    }
    if spec.mode == NotebookMode::Stale {
        return Err(err_invalid(
            "mode stale needs a document: an uploaded notebook has no stale cells",
        ));
    }
    if code.is_empty() {
        return Err(err_invalid("a notebook run needs a document or a notebook"));
    }
    if code.len() as u64 > plan.jobs.max_notebook_bytes {
        return Err(err_invalid(format!(
            "the notebook is {} bytes; plan {:?} takes at most {}",
            code.len(),
            plan.name,
            plan.jobs.max_notebook_bytes
        )));
    }
    let mut notebook: serde_json::Value = serde_json::from_str(code)
        .map_err(|e| err_invalid(format!("the notebook is not JSON: {e}")))?;
    if !notebook
        .get("cells")
        .is_some_and(serde_json::Value::is_array)
    {
        return Err(err_invalid(
            "the notebook has no \"cells\" list (nbformat 4)",
        ));
    }
    params::inject(&mut notebook, &spec.parameters).map_err(|e| err_invalid(e.to_string()))
}

impl Jobs {
    pub fn new(
        watchman: Watchman,
        retention: Arc<Retention>,
        key: SigningKey,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let slots = watchman
            .plans()
            .values()
            .map(|p| {
                let n = usize::try_from(p.jobs.concurrency).unwrap_or(1);
                (p.name.clone(), Arc::new(Semaphore::new(n)))
            })
            .collect();
        let pod_gates = watchman
            .plans()
            .keys()
            .map(|p| (p.clone(), Arc::default()))
            .collect();
        let store = JobStore::beside(watchman.store());
        Self {
            inner: Arc::new(Inner {
                watchman,
                retention,
                store,
                key,
                slots,
                pod_gates,
                live: Mutex::default(),
                http: reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default(),
                tracker,
                shutdown,
            }),
        }
    }

    /// Declares the jobs' counters at zero (once the recorder is installed), so that rates and
    /// alerts have series from the start.
    pub fn register_metrics(&self) {
        for plan in self.inner.watchman.plans().keys() {
            for state in ["succeeded", "failed", "timed_out", "cancelled", "errored"] {
                metrics::counter!("watchman_runs_finished_total", "plan" => plan.clone(), "state" => state)
                    .increment(0);
            }
            metrics::counter!("watchman_run_retries_total", "plan" => plan.clone()).increment(0);
            metrics::counter!("watchman_run_refusals_total", "plan" => plan.clone()).increment(0);
            metrics::counter!("watchman_schedule_fires_total", "plan" => plan.clone()).increment(0);
        }
        for outcome in ["delivered", "retried", "failed"] {
            metrics::counter!("watchman_webhooks_total", "outcome" => outcome).increment(0);
        }
    }

    fn plan(&self, name: &str) -> Result<&Plan, JobError> {
        self.inner.watchman.plans().get(name).ok_or_else(|| {
            err_invalid(format!(
                "unknown plan {name:?} (plans: {})",
                self.inner
                    .watchman
                    .plans()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn audit(&self, entry: AuditEntry) {
        tracing::info!(target: "audit", event = %entry.event, user = %entry.user_id, run = %entry.run_id, plan = %entry.plan, pod = %entry.pod, code_sha256 = %entry.code_sha256, detail = %entry.detail, "audit");
        if let Err(error) = self.inner.store.audit(&entry).await {
            tracing::error!(%error, event = %entry.event, run = %entry.run_id, "audit entry not stored");
        }
    }

    /// Validates and queues a run; an idempotency key already used by the user returns its run.
    pub async fn submit(&self, s: Submission) -> Result<Run, JobError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        crate::service::valid_id("user_id", &s.user_id).map_err(|e| err_invalid(e.to_string()))?;
        let plan = self.plan(&s.plan)?.clone();
        if !s.kernel.is_empty() && s.kernel != plan.kernel {
            return Err(err_invalid(format!(
                "plan {:?} runs kernel {:?}, not {:?}",
                plan.name,
                plan.kernel,
                s.kernel.chars().take(64).collect::<String>()
            )));
        }
        match &s.notebook {
            Some(spec) => check_notebook(spec, &s.code, &plan)?,
            None => {
                if s.code.trim().is_empty() {
                    return Err(err_invalid("code is empty"));
                }
                if s.code.len() as u64 > plan.jobs.max_code_bytes {
                    return Err(err_invalid(format!(
                        "code is {} bytes; plan {:?} takes at most {}",
                        s.code.len(),
                        plan.name,
                        plan.jobs.max_code_bytes
                    )));
                }
            }
        }
        if let Some(w) = &s.webhook {
            webhook::check(w).map_err(err_invalid)?;
        }
        if s.stdin.len() > MAX_STDIN_BYTES {
            return Err(err_invalid(format!(
                "stdin is {} bytes; at most {MAX_STDIN_BYTES}",
                s.stdin.len()
            )));
        }
        let plan_limit = check_timeout(&plan, s.timeout_ms)?;
        let key = (!s.idempotency_key.is_empty()).then_some(s.idempotency_key.as_str());
        // The scheduler's keys (`~schedule:...`) cannot be spelled by a caller.
        if let Some(k) = key
            && s.fired_by.is_none()
        {
            crate::service::valid_id("idempotency_key", k)
                .map_err(|e| err_invalid(e.to_string()))?;
        }
        let now = now_ms();
        let hashed = model::input_text(&s.code, s.notebook.as_ref());
        let run = Run {
            id: format!("r{}", uuid::Uuid::new_v4().simple()),
            user_id: s.user_id.clone(),
            plan: plan.name.clone(),
            kernel: plan.kernel.clone(),
            state: RunState::Queued,
            code_sha256: sha256_hex(hashed.as_bytes()),
            code: s.code,
            stdin: s.stdin,
            timeout_ms: if s.timeout_ms == 0 {
                plan_limit
            } else {
                s.timeout_ms
            },
            idempotency_key: key.map(str::to_owned),
            attempts: Vec::new(),
            outputs: Vec::new(),
            outputs_truncated: false,
            queued_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            pod: String::new(),
            exit_reason: String::new(),
            cpu_seconds: 0.0,
            receipt: None,
            expires_at_ms: 0,
            cancel_requested: false,
            notebook: s.notebook,
            result_notebook: None,
            webhook: s.webhook,
            fired_by: s.fired_by,
        };
        // The key first: a replay is answered before the quota is asked, so it never counts.
        if let Some(k) = key
            && let Some((first, claimed_at)) = self
                .inner
                .store
                .claim_key(&run.user_id, k, &run.id, plan.jobs.result_ttl)
                .await?
        {
            match self.replay(&run, k, &first).await {
                // A claim whose run was never stored (its replica died in between) is taken
                // over once it is old enough that no replica is still storing it.
                Err(JobError::InFlight(_))
                    if now_ms().saturating_sub(claimed_at) > ORPHANED_CLAIM_MS
                        && self
                            .inner
                            .store
                            .take_over_key(&run.user_id, k, &first, &run.id, plan.jobs.result_ttl)
                            .await? => {}
                other => return other,
            }
        }
        let forget_key = async || {
            if let Some(k) = key
                && let Err(error) = self.inner.store.drop_key(&run.user_id, k, &run.id).await
            {
                tracing::warn!(%error, "an idempotency key of a refused run was not dropped");
            }
        };
        let lost_after = decide::lost_after(Duration::from_millis(run.timeout_ms), &plan.jobs);
        match self.inner.store.admit(&run, &plan.jobs, lost_after).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                forget_key().await;
                metrics::counter!("watchman_run_refusals_total", "plan" => plan.name.clone())
                    .increment(1);
                self.audit(AuditEntry::of(&run, "quota_refused", why.clone()))
                    .await;
                return Err(JobError::Quota(why));
            }
            Err(e) => {
                forget_key().await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.inner.store.put(&run).await {
            let _ = self.inner.store.release(&run, 0).await;
            forget_key().await;
            return Err(e.into());
        }
        self.audit(AuditEntry::of(
            &run,
            "submitted",
            format!("timeout_ms={}", run.timeout_ms),
        ))
        .await;
        self.start(run.clone(), plan);
        Ok(run.redacted())
    }

    /// The run `first` that idempotency key `key` made, if the same user made it with the same
    /// request as `asked`.
    async fn replay(&self, asked: &Run, key: &str, first: &str) -> Result<Run, JobError> {
        let Some(run) = self.inner.store.get(first).await? else {
            return Err(JobError::InFlight(format!(
                "idempotency key {key:?} is being used by a submission still in flight; retry"
            )));
        };
        let same = run.user_id == asked.user_id
            && run.plan == asked.plan
            && run.code_sha256 == asked.code_sha256
            && run.stdin == asked.stdin
            && run.timeout_ms == asked.timeout_ms
            && run.notebook == asked.notebook;
        if !same {
            return Err(JobError::Conflict(format!(
                "idempotency key {key:?} was used for a different request"
            )));
        }
        self.audit(AuditEntry::of(&run, "replayed", key)).await;
        Ok(run.redacted())
    }

    fn start(&self, run: Run, plan: Plan) {
        let (events, _) = broadcast::channel(256);
        let live = Arc::new(Live {
            events,
            cancel: self.inner.shutdown.child_token(),
        });
        self.live().insert(run.id.clone(), live.clone());
        let jobs = self.clone();
        let span = tracing::info_span!("run", run = %run.id, plan = %run.plan, user = %run.user_id);
        self.inner.tracker.spawn(
            async move {
                let id = run.id.clone();
                jobs.drive(run, &plan, &live).await;
                jobs.live().remove(&id);
            }
            .instrument(span),
        );
    }

    /// The user's run.
    pub async fn get(&self, user: &str, id: &str) -> Result<Run, JobError> {
        let run = self.inner.store.get(id).await?;
        match run {
            Some(r) if r.user_id == user => Ok(r.redacted()),
            _ => Err(JobError::NotFound(id.chars().take(64).collect())),
        }
    }

    /// Asks the run to stop; returns it once it finished (or after 5 s, still stopping).
    pub async fn cancel(&self, user: &str, id: &str) -> Result<Run, JobError> {
        let run = self.get(user, id).await?;
        if run.state.is_final() {
            return Ok(run);
        }
        self.audit(AuditEntry::of(&run, "cancel", "")).await;
        let live = self.live().get(id).cloned();
        match live {
            Some(live) => live.cancel.cancel(),
            // Driven by another replica: it sees the request within a poll.
            None => self.inner.store.ask_cancel(&run.id).await?,
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            let now = self.get(user, id).await?;
            if now.state.is_final() {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.get(user, id).await
    }

    /// The user's runs, newest first, without notebooks (`GetRun` has them).
    pub async fn list(&self, user: &str, limit: usize) -> Result<Vec<Run>, JobError> {
        crate::service::valid_id("user_id", user).map_err(|e| err_invalid(e.to_string()))?;
        let runs = self.inner.store.list(user, limit.clamp(1, 500)).await?;
        Ok(runs.into_iter().map(|r| r.redacted().summary()).collect())
    }

    /// The user's audit trail, newest first.
    pub async fn audit_of(&self, user: &str, limit: usize) -> Result<Vec<AuditEntry>, JobError> {
        crate::service::valid_id("user_id", user).map_err(|e| err_invalid(e.to_string()))?;
        Ok(self
            .inner
            .store
            .audit_of(user, limit.clamp(1, 1000))
            .await?)
    }

    /// The run now, then its outputs and state changes, then its final form.
    pub async fn watch(&self, user: &str, id: &str) -> Result<mpsc::Receiver<RunEvent>, JobError> {
        let run = self.get(user, id).await?;
        let (tx, rx) = mpsc::channel(256);
        let mut live = self.live().get(id).map(|l| l.events.subscribe());
        let jobs = self.clone();
        let (user, id) = (user.to_owned(), id.to_owned());
        self.inner.tracker.spawn(async move {
            let mut seen = (run.state, run.attempts.len());
            if run.state.is_final() {
                let _ = tx.send(RunEvent::Finished(Box::new(run))).await;
                return;
            }
            if tx.send(RunEvent::State(Box::new(run))).await.is_err() {
                return;
            }
            loop {
                let event = tokio::select! {
                    e = async { match live.as_mut() { Some(l) => Some(l.recv().await), None => std::future::pending().await } } => match e {
                        Some(Ok(e)) => e,
                        // A watcher that fell behind misses some outputs, not the rest.
                        Some(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                        _ => { live = None; continue; }
                    },
                    // Read from the store only for a run another replica drives: this one's are told.
                    () = tokio::time::sleep(POLL), if live.is_none() => match jobs.get(&user, &id).await {
                        Ok(r) if r.state.is_final() => RunEvent::Finished(Box::new(r)),
                        Ok(r) if (r.state, r.attempts.len()) != seen => RunEvent::State(Box::new(r)),
                        Ok(_) => continue,
                        Err(_) => return,
                    },
                    () = jobs.inner.shutdown.cancelled() => return,
                    () = tx.closed() => return,
                };
                if let RunEvent::State(r) = &event {
                    seen = (r.state, r.attempts.len());
                }
                let last = matches!(event, RunEvent::Finished(_));
                if tx.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
