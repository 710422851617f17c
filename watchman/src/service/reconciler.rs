//! The reconciler: each interval, if this replica holds the lease ([`Election`]), one pass
//! that gathers a [`Snapshot`] (the store's pods, probed through the backend; the demand; the
//! creation budget), asks the pool ([`pool::decide`]) what to do, and does it. Every step that
//! changes something first checks that the lease is still fresh, so a leader that stalled
//! does nothing once it wakes.
//!
//! The reconciler is owned by its task (nothing else calls it), so its state needs no lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::election::Election;
use super::{ServiceError, Settings, end_allocation};
use crate::backend::Backend;
use crate::model::{DiscardReason, Pod, PodState, now_ms};
use crate::plan::Plan;
use crate::pool::{self, CreateBudget, Limits, Observed, PodAction, Snapshot, Usage};
use crate::store::Store;

/// How often a leader's pass also collects garbage (adopts or deletes pods the store does not
/// know); the first pass as leader always does.
const GC_INTERVAL: Duration = Duration::from_secs(30);

/// What the reconciler has done, for whoever waits on it (tests use it as a barrier: "two
/// whole passes later, the pool is still as it should be").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcilerStatus {
    /// This replica holds the lease.
    pub leading: bool,
    /// Passes that ran to their end without error since start.
    pub passes: u64,
}

/// Keeps every plan at its target; see the module documentation.
#[derive(Debug)]
pub struct Reconciler {
    plans: Arc<BTreeMap<String, Plan>>,
    store: Store,
    backend: Backend,
    election: Election,
    interval: Duration,
    lease_ttl: Duration,
    activity_interval: Duration,
    limits: Limits,
    budget: CreateBudget,
    /// When each allocated pod's activity was last checked.
    activity_checked: HashMap<String, Instant>,
    status: watch::Sender<ReconcilerStatus>,
}

impl Reconciler {
    pub fn new(
        plans: Arc<BTreeMap<String, Plan>>,
        store: Store,
        backend: Backend,
        election: Election,
        settings: &Settings,
    ) -> Self {
        let limits = Limits {
            startup_timeout: settings.pod_startup_timeout,
            max_in_flight: settings.max_concurrent_starts,
            in_flight: backend.in_flight(),
        };
        Self {
            plans,
            store,
            backend,
            election,
            interval: settings.reconcile_interval,
            lease_ttl: settings.lease_ttl,
            activity_interval: settings.activity_interval,
            limits,
            budget: CreateBudget::new(
                settings.pod_create_rate,
                settings.max_concurrent_starts,
                settings.reconcile_interval,
                Instant::now(),
            ),
            activity_checked: HashMap::new(),
            status: watch::Sender::new(ReconcilerStatus::default()),
        }
    }

    /// Follows what the reconciler does.
    pub fn status(&self) -> watch::Receiver<ReconcilerStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown`: each interval, if this replica holds the lease, one pass.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        let mut last_gc: Option<Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            // A replica whose view of the pods cannot be trusted yet (Kubernetes: the pod
            // watch has not listed them, or is failing) does not take the lease.
            let lease = if self.backend.ready() {
                self.election.campaign().await
            } else {
                Ok(false)
            };
            match lease {
                Ok(true) => {
                    if !leading {
                        tracing::info!(instance = %self.election.holder(), "took the reconciler lease");
                    }
                    leading = true;
                }
                Ok(false) => leading = false,
                Err(error) => {
                    tracing::warn!(%error, "lease check failed");
                    leading = false;
                }
            }
            metrics::gauge!("watchman_leader").set(if leading { 1.0 } else { 0.0 });
            self.status.send_if_modified(|s| {
                let changed = s.leading != leading;
                s.leading = leading;
                changed
            });
            if !leading {
                continue;
            }
            if shutdown.is_cancelled() {
                break;
            }
            let started = Instant::now();
            let gc = last_gc.is_none_or(|at| at.elapsed() > GC_INTERVAL);
            if gc {
                last_gc = Some(Instant::now());
            }
            // A pass must not outlive the lease it started under (another replica may take
            // over); with the Kubernetes backend it does no slow I/O, so it is cut off at two
            // thirds of the lease time and the next pass starts afresh.
            let limit = self.backend.pass_limit(self.lease_ttl);
            let pass = self.reconcile_once(gc);
            let outcome = match limit {
                Some(limit) => tokio::time::timeout(limit, pass).await.ok(),
                None => Some(pass.await),
            };
            match outcome {
                Some(Ok(())) => self.status.send_modify(|s| s.passes += 1),
                Some(Err(error)) => tracing::warn!(%error, "reconcile pass failed"),
                None => {
                    metrics::counter!("watchman_reconcile_timeouts_total").increment(1);
                    tracing::warn!(?limit, "reconcile pass cut off");
                }
            }
            metrics::histogram!("watchman_reconcile_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if leading {
            self.election.resign().await;
        }
    }

    /// One pass: gather, decide, act.
    #[tracing::instrument(level = "debug", skip_all, fields(gc = collect_garbage))]
    pub async fn reconcile_once(&mut self, collect_garbage: bool) -> Result<(), ServiceError> {
        // With Kubernetes, the pass's API work is bounded by time: creations stop starting once
        // half its time limit is used, label updates at three quarters; what is left follows in
        // the next pass. Issue 23: with a busy API server, 256 label patches per pass came
        // first and took longer than the limit, so passes were cut off before creating
        // anything, and pods whose creation was cut off were known only once adopted.
        let pass_started = Instant::now();
        let limit = self.backend.pass_limit(self.lease_ttl);
        let create_until = limit.map(|l| pass_started + l / 2);
        let mirror_until = limit.map(|l| pass_started + l * 3 / 4);
        let mut pods = self.store.pods().await?;
        if !self.election.fresh() {
            return Ok(());
        }
        if collect_garbage {
            for pod in self.backend.collect_garbage(&pods, &self.plans).await {
                self.store.add_pod(&pod).await?;
                metrics::counter!("watchman_pods_adopted_total", "plan" => pod.plan.clone())
                    .increment(1);
                pods.push(pod);
            }
        }

        let due = self.activity_due(&pods);
        let observed = join_all(pods.into_iter().map(|pod| self.observe(pod, &due))).await;
        let observed = observed.into_iter().collect::<Result<Vec<_>, _>>()?;
        let mut demand = BTreeMap::new();
        for name in self.plans.keys() {
            demand.insert(name.clone(), self.store.demand(name).await?);
        }
        let decision = pool::decide(&Snapshot {
            now_ms: now_ms(),
            plans: &self.plans,
            pods: &observed,
            demand: &demand,
            creations: self.budget.available(Instant::now()),
            limits: self.limits,
        });
        for (name, c) in &decision.counts {
            for (state, n) in [
                ("warm", c.warm),
                ("starting", c.starting),
                ("allocated", c.allocated),
                ("ending", c.ending),
            ] {
                metrics::gauge!("watchman_pool_pods", "plan" => name.clone(), "state" => state)
                    .set(f64::from(n));
            }
            metrics::gauge!("watchman_pool_target", "plan" => name.clone())
                .set(f64::from(c.target));
        }

        for result in join_all(decision.pods.iter().map(|a| self.apply(a))).await {
            result?;
        }
        for plan in &decision.retire_surplus {
            if !self.election.fresh() {
                break;
            }
            let fresh = self.store.pods().await?;
            let waiting = demand.get(plan).copied().unwrap_or(0);
            for pod in pool::surplus(plan, &self.plans, &fresh, waiting) {
                self.discard(pod, DiscardReason::Surplus, "above the warm target")
                    .await?;
            }
        }
        // Up to `max_in_flight` creations at a time, the next starting as soon as one returns
        // (not in rounds that each wait for their slowest call), until the time is up.
        let max = self.limits.max_in_flight.max(1);
        let mut plans = decision.starts.iter();
        let mut creations = futures_util::stream::FuturesUnordered::new();
        let mut started = 0;
        let mut failed = None;
        loop {
            while failed.is_none()
                && creations.len() < max
                && self.election.fresh()
                && create_until.is_none_or(|t| Instant::now() < t)
            {
                let Some(plan) = plans.next() else { break };
                creations.push(self.start_pod(plan));
                started += 1;
            }
            match creations.next().await {
                Some(Ok(())) => {}
                // The first error ends the starting, not the calls already made: they finish
                // and are recorded.
                Some(Err(error)) => {
                    failed.get_or_insert(error);
                }
                None => break,
            }
        }
        drop(creations);
        // Spent as used: what a pass does not start stays for the next.
        self.budget.spend(started);
        if let Some(error) = failed {
            return Err(error);
        }
        // Last: labels and annotations are for people and selectors, not for this pass.
        let pods: Vec<&Pod> = observed.iter().map(|o| &o.pod).collect();
        self.backend.mirror(&pods, mirror_until).await;
        Ok(())
    }

    /// The allocated pods whose use is due for a check (`--activity-interval`), noted as
    /// checked now. Pacing the probes is the reconciler's business, not the pool's: the pool
    /// judges whatever use it is given.
    fn activity_due(&mut self, pods: &[Pod]) -> HashSet<String> {
        let allocated: HashSet<&str> = pods
            .iter()
            .filter(|p| p.state == PodState::Allocated)
            .map(|p| p.id.as_str())
            .collect();
        self.activity_checked
            .retain(|id, _| allocated.contains(id.as_str()));
        let mut due = HashSet::new();
        for p in pods {
            if p.state != PodState::Allocated || !self.plans.contains_key(&p.plan) {
                continue;
            }
            let checked = self.activity_checked.get(&p.id);
            if checked.is_none_or(|at| at.elapsed() >= self.activity_interval) {
                self.activity_checked.insert(p.id.clone(), Instant::now());
                due.insert(p.id.clone());
            }
        }
        due
    }

    /// Probes one pod: its health (not for ending pods, which are only deleted), a ready
    /// starting pod's address, and an allocated live pod's use when due.
    async fn observe(&self, pod: Pod, due: &HashSet<String>) -> Result<Observed, ServiceError> {
        let health = match pod.state {
            PodState::Ending => None,
            _ => Some(self.backend.health(&pod).await),
        };
        let alive = health.as_ref().is_some_and(crate::model::Health::alive);
        let endpoint = match (&pod.state, &health) {
            (PodState::Starting, Some(crate::model::Health::Ready)) => self.backend.endpoint(&pod),
            _ => None,
        };
        let usage = if alive && due.contains(&pod.id) {
            let expires_ms = match &pod.document {
                Some(d) => self.store.allocation(d).await?.map(|a| a.expires_ms),
                None => None,
            };
            // An expired allocation ends whatever its activity: Middleman is not asked.
            let expired = expires_ms.is_some_and(|at| at <= now_ms());
            let activity = if expired {
                None
            } else {
                self.backend.activity(&pod).await
            };
            Some(Usage {
                expires_ms,
                activity,
            })
        } else {
            None
        };
        Ok(Observed {
            pod,
            health,
            endpoint,
            usage,
        })
    }

    async fn apply(&self, action: &PodAction) -> Result<(), ServiceError> {
        if !self.election.fresh() {
            return Ok(());
        }
        match action {
            PodAction::MarkReady { pod, endpoint } => {
                if self.store.pod_ready(&pod.id, now_ms(), endpoint).await? {
                    metrics::histogram!("watchman_pod_startup_duration_seconds", "plan" => pod.plan.clone())
                        .record(now_ms().saturating_sub(pod.created_ms) as f64 / 1000.0);
                }
            }
            PodAction::Discard {
                pod,
                reason,
                detail,
            } => self.discard(pod, *reason, detail).await?,
            PodAction::End {
                pod,
                reason,
                detail,
            } => {
                end_allocation(&self.store, &pod.id, &pod.plan, *reason, detail).await?;
            }
            PodAction::Delete { pod } => {
                self.backend.delete(pod).await;
                self.store.remove_pod(&pod.id).await?;
            }
        }
        Ok(())
    }

    async fn start_pod(&self, plan_name: &str) -> Result<(), ServiceError> {
        let Some(plan) = self.plans.get(plan_name) else {
            return Ok(());
        };
        let id = format!(
            "{plan_name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        match self.backend.create(&id, plan).await {
            Ok(started) => {
                let pod = Pod {
                    id,
                    plan: plan_name.to_owned(),
                    state: PodState::Starting,
                    endpoint: started.endpoint,
                    handle: started.handle,
                    created_ms: now_ms(),
                    ready_ms: None,
                    document: None,
                    allocation: None,
                };
                self.store.add_pod(&pod).await?;
                metrics::counter!("watchman_pods_started_total", "plan" => plan_name.to_owned())
                    .increment(1);
            }
            Err(error) => {
                metrics::counter!("watchman_pod_start_failures_total", "plan" => plan_name.to_owned()).increment(1);
                tracing::warn!(%error, "pod start failed");
            }
        }
        Ok(())
    }

    /// Removes a pod that was never allocated (or whose allocation already ended).
    async fn discard(
        &self,
        pod: &Pod,
        reason: DiscardReason,
        detail: &str,
    ) -> Result<(), ServiceError> {
        if reason.healthy() {
            // A healthy pod: taken only if no Allocate claimed it since it was read.
            if !self.store.retire(&pod.id).await? {
                return Ok(());
            }
        } else {
            // A dead pod: if it was claimed meanwhile, that allocation ends, with the reason.
            self.store
                .end_pod(&pod.id, reason.end_reason(), detail)
                .await?;
        }
        tracing::info!(pod = %pod.id, reason = reason.label(), detail, "removing pod");
        metrics::counter!("watchman_pods_ended_total", "plan" => pod.plan.clone(), "reason" => reason.label()).increment(1);
        self.backend.delete(pod).await;
        self.store.remove_pod(&pod.id).await?;
        Ok(())
    }
}
