//! The `watchman.v1.Jobs` gRPC service: a thin adapter over [`crate::jobs::Jobs`].

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use watchman_proto::v1 as pb;

use crate::jobs::model::{Attempt, AuditEntry, Receipt, Run, RunEvent, RunState};
use crate::jobs::{JobError, Jobs, Submission};

impl From<JobError> for Status {
    fn from(e: JobError) -> Self {
        match &e {
            JobError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            JobError::NotFound(_) => Status::not_found(e.to_string()),
            JobError::Quota(_) => Status::resource_exhausted(e.to_string()),
            JobError::Conflict(_) => Status::failed_precondition(e.to_string()),
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
            })
            .await?;
        Ok(Response::new(run_message(&run)))
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
