//! The `watchman.v1.Jobs` gRPC service: a thin adapter over [`crate::jobs::Jobs`].

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use watchman_proto::v1 as pb;

use crate::jobs::cron::Missed;
use crate::jobs::model::{
    Attempt, AuditEntry, NotebookMode, NotebookSpec, Receipt, Run, RunEvent, RunState, Webhook,
};
use crate::jobs::schedules::{Schedule, ScheduleAction};
use crate::jobs::{JobError, Jobs, Submission};

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        match &e {
            JobError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            JobError::NotFound(_) => Status::not_found(e.to_string()),
            JobError::Quota(_) => Status::resource_exhausted(e.to_string()),
            JobError::Conflict(_) => Status::failed_precondition(e.to_string()),
            JobError::InFlight(_) => Status::aborted(e.to_string()),
            JobError::ShuttingDown => Status::unavailable(e.to_string()),
            JobError::Store(error) => {
                tracing::error!(%error, "jobs store failed");
                Status::unavailable("the jobs store is unavailable; retry")
            }
        }
    }
}

fn state(s: RunState) -> pb::RunState {
    match s {
        RunState::Queued => pb::RunState::Queued,
        RunState::Running => pb::RunState::Running,
        RunState::Retrying => pb::RunState::Retrying,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::TimedOut => pb::RunState::TimedOut,
        RunState::Cancelled => pb::RunState::Cancelled,
        RunState::Errored => pb::RunState::Errored,
    }
}

fn attempt(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        number: a.number,
        pod: a.pod.clone(),
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms.unwrap_or(0),
        outcome: a.outcome.map(|o| o.label().to_owned()).unwrap_or_default(),
        detail: a.detail.clone(),
        retry_at_ms: a.retry_at_ms.unwrap_or(0),
    }
}

fn receipt(r: &Receipt) -> pb::Receipt {
    pb::Receipt {
        payload: r.payload.clone(),
        signature: r.signature.clone(),
        key_id: r.key_id.clone(),
    }
}

fn mode_message(m: NotebookMode) -> pb::NotebookMode {
    match m {
        NotebookMode::All => pb::NotebookMode::All,
        NotebookMode::Stale => pb::NotebookMode::Stale,
    }
}

fn mode_of(m: i32) -> Result<NotebookMode, JobError> {
    match pb::NotebookMode::try_from(m) {
        Ok(pb::NotebookMode::Unspecified | pb::NotebookMode::All) => Ok(NotebookMode::All),
        Ok(pb::NotebookMode::Stale) => Ok(NotebookMode::Stale),
        Err(_) => Err(JobError::InvalidArgument(format!("unknown mode {m}"))),
    }
}

fn missed_message(m: Missed) -> pb::MissedRuns {
    match m {
        Missed::Latest => pb::MissedRuns::Latest,
        Missed::All => pb::MissedRuns::All,
        Missed::Skip => pb::MissedRuns::Skip,
    }
}

fn missed_of(m: i32) -> Result<Missed, JobError> {
    match pb::MissedRuns::try_from(m) {
        Ok(pb::MissedRuns::Unspecified | pb::MissedRuns::Latest) => Ok(Missed::Latest),
        Ok(pb::MissedRuns::All) => Ok(Missed::All),
        Ok(pb::MissedRuns::Skip) => Ok(Missed::Skip),
        Err(_) => Err(JobError::InvalidArgument(format!("unknown missed {m}"))),
    }
}

fn webhook_message(w: &Webhook) -> pb::Webhook {
    pb::Webhook {
        url: w.url.clone(),
        secret: w.secret.clone(),
        on_success: w.on_success,
        on_failure: w.on_failure,
    }
}

fn webhook_of(w: pb::Webhook) -> Webhook {
    Webhook {
        url: w.url,
        secret: w.secret,
        on_success: w.on_success,
        on_failure: w.on_failure,
    }
}

/// `parameters_json`: empty, or a JSON object.
fn parameters_of(json: &str) -> Result<serde_json::Map<String, serde_json::Value>, JobError> {
    if json.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(JobError::InvalidArgument(
            "parameters_json must be a JSON object".into(),
        )),
    }
}

fn schedule_message(s: &Schedule) -> pb::Schedule {
    pb::Schedule {
        id: s.id.clone(),
        user_id: s.user_id.clone(),
        plan: s.plan.clone(),
        document: s.document.clone(),
        cron: s.cron.clone(),
        time_zone: s.time_zone.clone(),
        mode: mode_message(s.mode) as i32,
        parameters_json: serde_json::Value::Object(s.parameters.clone()).to_string(),
        missed: missed_message(s.missed) as i32,
        catch_up_ms: s.catch_up_ms,
        paused: s.paused,
        webhook: s.webhook.as_ref().map(webhook_message),
        next_due_ms: s.next_due_ms,
        created_at_ms: s.created_at_ms,
        timeout_ms: s.timeout_ms,
    }
}

fn schedule_of(s: pb::Schedule) -> Result<Schedule, JobError> {
    Ok(Schedule {
        id: String::new(),
        user_id: s.user_id,
        plan: s.plan,
        document: s.document,
        cron: s.cron,
        time_zone: s.time_zone,
        mode: mode_of(s.mode)?,
        parameters: parameters_of(&s.parameters_json)?,
        missed: missed_of(s.missed)?,
        catch_up_ms: s.catch_up_ms,
        paused: s.paused,
        webhook: s.webhook.map(webhook_of),
        timeout_ms: s.timeout_ms,
        created_at_ms: 0,
        next_due_ms: 0,
    })
}

/// A run as the gRPC API shows it.
pub fn run_message(r: &Run) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        user_id: r.user_id.clone(),
        plan: r.plan.clone(),
        kernel: r.kernel.clone(),
        state: state(r.state) as i32,
        code: r.code.clone(),
        code_sha256: r.code_sha256.clone(),
        timeout_ms: r.timeout_ms,
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
        attempts: r.attempts.iter().map(attempt).collect(),
        outputs_json: serde_json::to_string(&r.outputs).unwrap_or_else(|_| "[]".into()),
        outputs_truncated: r.outputs_truncated,
        queued_at_ms: r.queued_at_ms,
        started_at_ms: r.started_at_ms.unwrap_or(0),
        finished_at_ms: r.finished_at_ms.unwrap_or(0),
        pod: r.pod.clone(),
        exit_reason: r.exit_reason.clone(),
        cpu_seconds: r.cpu_seconds,
        receipt: r.receipt.as_ref().map(receipt),
        expires_at_ms: r.expires_at_ms,
        is_notebook: r.notebook.is_some(),
        document: r
            .notebook
            .as_ref()
            .map(|n| n.document.clone())
            .unwrap_or_default(),
        mode: r
            .notebook
            .as_ref()
            .map_or(pb::NotebookMode::Unspecified, |n| mode_message(n.mode)) as i32,
        parameters_json: r
            .notebook
            .as_ref()
            .map(|n| serde_json::Value::Object(n.parameters.clone()).to_string())
            .unwrap_or_default(),
        result_notebook_json: r
            .result_notebook
            .as_ref()
            .map(serde_json::Value::to_string)
            .unwrap_or_default(),
        webhook: r.webhook.as_ref().map(webhook_message),
        schedule_id: r
            .fired_by
            .as_ref()
            .map(|f| f.schedule_id.clone())
            .unwrap_or_default(),
        due_at_ms: r.fired_by.as_ref().map_or(0, |f| f.due_at_ms),
    }
}

fn audit_message(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        at_ms: e.at_ms,
        event: e.event,
        user_id: e.user_id,
        run_id: e.run_id,
        plan: e.plan,
        pod: e.pod,
        code_sha256: e.code_sha256,
        detail: e.detail,
    }
}

/// The service.
#[derive(Debug, Clone)]
pub struct JobsApi {
    jobs: Jobs,
}

impl JobsApi {
    pub fn new(jobs: Jobs) -> Self {
        Self { jobs }
    }

    async fn on_schedule(
        &self,
        request: Request<pb::ScheduleRef>,
        action: ScheduleAction,
    ) -> Result<Response<pb::Schedule>, Status> {
        let r = request.into_inner();
        let s = self
            .jobs
            .on_schedule(&r.user_id, &r.schedule_id, action)
            .await?;
        Ok(Response::new(schedule_message(&s)))
    }
}

type RunEvents = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::jobs_server::Jobs for JobsApi {
    async fn submit_execution(
        &self,
        request: Request<pb::SubmitExecutionRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let r = request.into_inner();
        let run = self
            .jobs
            .submit(Submission {
                user_id: r.user_id,
                plan: r.plan,
                kernel: r.kernel,
                code: r.code,
                stdin: r.stdin,
                timeout_ms: r.timeout_ms,
                idempotency_key: r.idempotency_key,
                ..Submission::default()
            })
            .await?;
        Ok(Response::new(run_message(&run)))
    }

    async fn submit_notebook_run(
        &self,
        request: Request<pb::SubmitNotebookRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let r = request.into_inner();
        let run = self
            .jobs
            .submit(Submission {
                user_id: r.user_id,
                plan: r.plan,
                code: r.notebook_json,
                stdin: r.stdin,
                timeout_ms: r.timeout_ms,
                idempotency_key: r.idempotency_key,
                notebook: Some(NotebookSpec {
                    document: r.document,
                    mode: mode_of(r.mode)?,
                    parameters: parameters_of(&r.parameters_json)?,
                }),
                webhook: r.webhook.map(webhook_of),
                ..Submission::default()
            })
            .await?;
        Ok(Response::new(run_message(&run)))
    }

    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let Some(s) = request.into_inner().schedule else {
            return Err(Status::invalid_argument("schedule is required"));
        };
        let created = self.jobs.create_schedule(schedule_of(s)?).await?;
        Ok(Response::new(schedule_message(&created)))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.on_schedule(request, ScheduleAction::Get).await
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let all = self
            .jobs
            .list_schedules(&request.into_inner().user_id)
            .await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: all.iter().map(schedule_message).collect(),
        }))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.on_schedule(request, ScheduleAction::Pause).await
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.on_schedule(request, ScheduleAction::Resume).await
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.on_schedule(request, ScheduleAction::Delete).await
    }

    async fn get_run(&self, request: Request<pb::RunRef>) -> Result<Response<pb::Run>, Status> {
        let r = request.into_inner();
        let run = self.jobs.get(&r.user_id, &r.run_id).await?;
        Ok(Response::new(run_message(&run)))
    }

    type WatchRunStream = RunEvents;

    async fn watch_run(
        &self,
        request: Request<pb::RunRef>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let r = request.into_inner();
        let rx = self.jobs.watch(&r.user_id, &r.run_id).await?;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let event = rx.recv().await?;
            let event = match event {
                RunEvent::State(run) => pb::run_event::Event::State(run_message(&run)),
                RunEvent::Output(o) => pb::run_event::Event::OutputJson(o.to_string()),
                RunEvent::Finished(run) => pb::run_event::Event::Finished(run_message(&run)),
            };
            Some((Ok(pb::RunEvent { event: Some(event) }), rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_run(&self, request: Request<pb::RunRef>) -> Result<Response<pb::Run>, Status> {
        let r = request.into_inner();
        let run = self.jobs.cancel(&r.user_id, &r.run_id).await?;
        Ok(Response::new(run_message(&run)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 50 } else { r.limit as usize };
        let runs = self.jobs.list(&r.user_id, limit).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(run_message).collect(),
        }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let entries = self.jobs.audit_of(&r.user_id, limit).await?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: entries.into_iter().map(audit_message).collect(),
        }))
    }
}
