//! Watchman's logic, independent of gRPC: allocation (one atomic store step, waiting for a cold
//! pod up to the caller's deadline) and the reconciler that keeps every plan at its target.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use session_token::{Claims, Role, SigningKey};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Health};
use crate::model::{Allocation, EndReason, Ended, LaunchKind, Pod, PodState, now_ms};
use crate::plan::Plan;
use crate::store::{Claim, Store, StoreError};

/// Why a request failed; mapped to gRPC codes at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such plan.
    #[error("unknown plan {plan:?} (plans: {known})")]
    UnknownPlan { plan: String, known: String },
    /// No pod became available before the deadline.
    #[error(
        "no pod of plan {plan:?} became available within {waited_ms} ms (warm {warm}, starting {starting}); retry later or with a longer wait"
    )]
    Exhausted {
        plan: String,
        waited_ms: u64,
        warm: u32,
        starting: u32,
    },
    /// The document has no live allocation.
    #[error("document {0:?} has no live allocation")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(#[from] session_token::TokenError),
}

/// Tunables of the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Identifies this replica in the lease.
    pub instance: String,
    pub default_wait: Duration,
    pub max_wait: Duration,
    pub token_ttl: Duration,
    pub lease_ttl: Duration,
    pub reconcile_interval: Duration,
    pub pod_startup_timeout: Duration,
    /// Plans whose pods are not started because this host cannot give their sandbox level,
    /// with why; Allocate for them fails with that reason.
    pub refused_plans: BTreeMap<String, String>,
    pub max_concurrent_starts: usize,
    /// Pods created per second at most (a token bucket with `max_concurrent_starts` of burst).
    pub pod_create_rate: f64,
    /// How often an allocated pod's activity and lifetime are checked.
    pub activity_interval: Duration,
}

/// What a caller asks of [`Watchman::allocate`].
#[derive(Debug, Clone, Copy)]
pub struct AllocationRequest<'a> {
    pub document: &'a str,
    pub plan: &'a str,
    /// Empty, or the plan's kernel.
    pub kernel: &'a str,
    pub user: &'a str,
    /// Shown to collaborators; the user id when empty.
    pub user_name: &'a str,
    pub role: Role,
    /// How long to wait for a pod when the buffer is empty; `None`: the default.
    pub wait: Option<Duration>,
}

/// A granted allocation with the caller's token.
#[derive(Debug, Clone)]
pub struct Granted {
    pub allocation: Allocation,
    pub launch: LaunchKind,
    pub token: String,
    pub token_expires: u64,
}

/// Counts of one plan's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub warm: u32,
    pub starting: u32,
    pub allocated: u32,
    pub ending: u32,
    pub target: u32,
}

/// Cheap-to-clone handle on Watchman's state.
#[derive(Debug, Clone)]
pub struct Watchman {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    plans: BTreeMap<String, Plan>,
    store: Store,
    backend: Backend,
    key: SigningKey,
    settings: Settings,
    /// Pod creations allowed now (refilled at `pod_create_rate`), and when it was refilled.
    create_budget: std::sync::Mutex<(f64, Instant)>,
    /// When the lease was last confirmed held (by the store or the API server). A pass acts
    /// only while this is younger than two thirds of the lease time, so a leader that stalled
    /// (paused, starved, cut off) does nothing once another replica may have taken over.
    lease_confirmed: std::sync::Mutex<Option<Instant>>,
    /// When each allocated pod's activity was last checked.
    activity_checked: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

fn valid_id(what: &str, s: &str) -> Result<(), ServiceError> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "{what} must be 1-200 characters of letters, digits and - _ . : @ (got {:?})",
            s.chars().take(40).collect::<String>()
        )))
    }
}

impl Watchman {
    pub fn new(
        plans: BTreeMap<String, Plan>,
        store: Store,
        backend: Backend,
        key: SigningKey,
        settings: Settings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                plans,
                store,
                backend,
                key,
                settings,
                create_budget: std::sync::Mutex::new((0.0, Instant::now())),
                lease_confirmed: std::sync::Mutex::new(None),
                activity_checked: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    pub fn plans(&self) -> &BTreeMap<String, Plan> {
        &self.inner.plans
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn plan(&self, name: &str) -> Result<&Plan, ServiceError> {
        if let Some(why) = self.inner.settings.refused_plans.get(name) {
            return Err(ServiceError::FailedPrecondition(format!(
                "plan {name:?} cannot run here: {why}"
            )));
        }
        self.inner
            .plans
            .get(name)
            .ok_or_else(|| ServiceError::UnknownPlan {
                plan: name.to_owned(),
                known: self
                    .inner
                    .plans
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn mint(
        &self,
        a: &Allocation,
        user: &str,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, u64), ServiceError> {
        let claims = Claims::new(
            "watchman",
            user,
            name,
            &a.document,
            &a.pod,
            role,
            ttl.as_secs().max(1),
        );
        let exp = claims.exp;
        Ok((self.inner.key.mint(&claims)?, exp))
    }

    /// Binds a pod to the document (or returns its live one) and mints a token for the user.
    #[tracing::instrument(skip_all, fields(document = request.document, plan = request.plan))]
    pub async fn allocate(&self, request: &AllocationRequest<'_>) -> Result<Granted, ServiceError> {
        let started = Instant::now();
        let result = self.allocate_inner(request).await;
        let (launch, outcome) = match &result {
            Ok(g) => (g.launch.label(), "ok"),
            Err(ServiceError::Exhausted { .. }) => ("cold", "exhausted"),
            Err(_) => ("none", "error"),
        };
        // Unknown plan names would make the label set unbounded.
        let plan_label = if self.inner.plans.contains_key(request.plan) {
            request.plan.to_owned()
        } else {
            "unknown".into()
        };
        metrics::counter!("watchman_allocations_total", "plan" => plan_label.clone(), "launch" => launch, "result" => outcome).increment(1);
        if result.is_ok() {
            metrics::histogram!("watchman_allocation_duration_seconds", "plan" => plan_label, "launch" => launch)
                .record(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn allocate_inner(
        &self,
        request: &AllocationRequest<'_>,
    ) -> Result<Granted, ServiceError> {
        let AllocationRequest {
            document,
            plan: plan_name,
            kernel,
            user,
            user_name,
            role,
            wait,
        } = *request;
        valid_id("document_id", document)?;
        valid_id("user_id", user)?;
        let plan = self.plan(plan_name)?;
        if !kernel.is_empty() && kernel != plan.kernel {
            return Err(ServiceError::InvalidArgument(format!(
                "plan {plan_name:?} runs kernel {:?}, not {kernel:?}",
                plan.kernel
            )));
        }
        let s = &self.inner.settings;
        let wait = wait.unwrap_or(s.default_wait).min(s.max_wait);
        let deadline = Instant::now() + wait;
        let now = now_ms();
        let template = Allocation {
            id: uuid::Uuid::new_v4().to_string(),
            document: document.to_owned(),
            plan: plan_name.to_owned(),
            pod: String::new(),
            endpoint: String::new(),
            user: user.to_owned(),
            created_ms: now,
            expires_ms: now + u64::try_from(plan.max_lifetime.as_millis()).unwrap_or(u64::MAX),
        };
        let waiter = uuid::Uuid::new_v4().to_string();
        let mut waited = false;
        let mut pause = Duration::from_millis(5);
        loop {
            let (allocation, launch) = match self.inner.store.claim(&template).await? {
                Claim::Existing(a) if a.plan != plan_name => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "document {document:?} already has a pod of plan {:?}; release it first",
                        a.plan
                    )));
                }
                Claim::Existing(a) => (a, LaunchKind::Existing),
                Claim::Claimed(a) => (
                    a,
                    if waited {
                        LaunchKind::Cold
                    } else {
                        LaunchKind::Warm
                    },
                ),
                Claim::Empty => {
                    if Instant::now() >= deadline {
                        let counts = self
                            .pool_counts()
                            .await?
                            .remove(plan_name)
                            .unwrap_or_default();
                        return Err(ServiceError::Exhausted {
                            plan: plan_name.to_owned(),
                            waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            warm: counts.warm,
                            starting: counts.starting,
                        });
                    }
                    // Tell the reconciler (whichever replica leads) that someone is waiting.
                    let until = now_ms()
                        + u64::try_from(
                            deadline
                                .saturating_duration_since(Instant::now())
                                .as_millis(),
                        )
                        .unwrap_or(0);
                    self.inner
                        .store
                        .note_demand(plan_name, &waiter, until)
                        .await?;
                    waited = true;
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                    continue;
                }
            };
            let (token, token_expires) = self.mint(
                &allocation,
                user,
                if user_name.is_empty() {
                    user
                } else {
                    user_name
                },
                role,
                s.token_ttl,
            )?;
            tracing::info!(document, pod = %allocation.pod, launch = launch.label(), "allocated");
            return Ok(Granted {
                allocation,
                launch,
                token,
                token_expires,
            });
        }
    }

    /// Ends the document's allocation; its pod is deleted by the reconciler.
    pub async fn release(&self, document: &str) -> Result<bool, ServiceError> {
        valid_id("document_id", document)?;
        let Some(a) = self.inner.store.allocation(document).await? else {
            return Ok(false);
        };
        let ended = self
            .end(
                &a.pod,
                &a.plan,
                EndReason::Released,
                "released by the caller",
            )
            .await?;
        Ok(ended.is_some())
    }

    async fn end(
        &self,
        pod: &str,
        plan: &str,
        reason: EndReason,
        detail: &str,
    ) -> Result<Option<Ended>, ServiceError> {
        let ended = self.inner.store.end_pod(pod, reason, detail).await?;
        if ended.is_some() {
            metrics::counter!("watchman_pods_ended_total", "plan" => plan.to_owned(), "reason" => reason.label()).increment(1);
            tracing::info!(pod, reason = reason.label(), detail, "allocation ended");
        }
        Ok(ended)
    }

    /// The document's live allocation.
    pub async fn get(&self, document: &str) -> Result<Allocation, ServiceError> {
        valid_id("document_id", document)?;
        self.inner
            .store
            .allocation(document)
            .await?
            .ok_or_else(|| ServiceError::NotFound(document.to_owned()))
    }

    /// How allocation `id` ended, if it did.
    pub async fn ended(&self, id: &str) -> Result<Option<Ended>, ServiceError> {
        Ok(self.inner.store.ended(id).await?)
    }

    /// A token for another collaborator of an allocated document.
    pub async fn mint_for(
        &self,
        document: &str,
        user: &str,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<(Allocation, String, u64), ServiceError> {
        valid_id("user_id", user)?;
        let a = self.get(document).await?;
        let ttl = ttl
            .unwrap_or(self.inner.settings.token_ttl)
            .min(Duration::from_secs(24 * 3600));
        let (token, exp) = self.mint(
            &a,
            user,
            if name.is_empty() { user } else { name },
            role,
            ttl,
        )?;
        Ok((a, token, exp))
    }

    /// Pod counts and targets per plan.
    pub async fn pool_counts(&self) -> Result<BTreeMap<String, PoolCounts>, ServiceError> {
        let pods = self.inner.store.pods().await?;
        Ok(self.counts_of(&pods))
    }

    fn counts_of(&self, pods: &[Pod]) -> BTreeMap<String, PoolCounts> {
        let mut out: BTreeMap<String, PoolCounts> = self
            .inner
            .plans
            .keys()
            .map(|k| (k.clone(), PoolCounts::default()))
            .collect();
        for p in pods {
            if let Some(c) = out.get_mut(&p.plan) {
                match p.state {
                    PodState::Warm => c.warm += 1,
                    PodState::Starting => c.starting += 1,
                    PodState::Allocated => c.allocated += 1,
                    PodState::Ending => c.ending += 1,
                }
            }
        }
        for (name, c) in &mut out {
            if let Some(plan) = self.inner.plans.get(name) {
                c.target = plan.target_warm(c.allocated);
            }
        }
        out
    }

    /// Runs the reconciler until `shutdown`: each interval, if this replica holds the lease,
    /// one pass of [`Self::reconcile_once`].
    pub async fn run_reconciler(&self, shutdown: CancellationToken) {
        let s = &self.inner.settings;
        let mut tick = tokio::time::interval(s.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = false;
        let mut last_gc = Instant::now() - Duration::from_secs(3600);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            // A replica whose view of the pods cannot be trusted yet (Kubernetes: the pod
            // watch has not listed them, or is failing) does not take the lease.
            let lease = if self.inner.backend.ready() {
                self.try_lease().await
            } else {
                Ok(false)
            };
            match lease {
                Ok(true) => {
                    if !leading {
                        tracing::info!(instance = %s.instance, "took the reconciler lease");
                    }
                    leading = true;
                }
                Ok(false) => {
                    leading = false;
                }
                Err(error) => {
                    tracing::warn!(%error, "lease check failed");
                    leading = false;
                }
            }
            metrics::gauge!("watchman_leader").set(if leading { 1.0 } else { 0.0 });
            if !leading {
                continue;
            }
            if shutdown.is_cancelled() {
                break;
            }
            let started = Instant::now();
            let gc = last_gc.elapsed() > Duration::from_secs(30);
            if gc {
                last_gc = Instant::now();
            }
            // A pass must not outlive the lease it started under (another replica may take
            // over); with the Kubernetes backend it does no slow I/O, so it is cut off at two
            // thirds of the lease time and the next pass starts afresh.
            let pass = self.reconcile_once(gc);
            let result = match self.inner.backend.pass_limit(s.lease_ttl) {
                Some(limit) => tokio::time::timeout(limit, pass).await.unwrap_or_else(|_| {
                    metrics::counter!("watchman_reconcile_timeouts_total").increment(1);
                    tracing::warn!(?limit, "reconcile pass cut off");
                    Ok(())
                }),
                None => pass.await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "reconcile pass failed");
            }
            metrics::histogram!("watchman_reconcile_duration_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        if leading {
            self.inner.backend.release_lease(&s.instance).await;
        }
    }

    /// The backend's lease (Kubernetes) or else the store's.
    async fn try_lease(&self) -> Result<bool, String> {
        let s = &self.inner.settings;
        let asked = Instant::now();
        let result = match self.inner.backend.try_lease(&s.instance, s.lease_ttl).await {
            Some(r) => r,
            None => {
                let ttl = u64::try_from(s.lease_ttl.as_millis()).unwrap_or(u64::MAX);
                self.inner
                    .store
                    .try_lease(&s.instance, ttl)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let confirmed = match result {
            Ok(true) => Some(self.inner.backend.lease_confirmed().unwrap_or(asked)),
            _ => None,
        };
        *self
            .inner
            .lease_confirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = confirmed;
        result
    }

    /// Whether this replica may still act on the lease it holds (see `lease_confirmed`).
    fn lease_fresh(&self) -> bool {
        let limit = self.inner.settings.lease_ttl * 2 / 3;
        self.inner
            .lease_confirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < limit)
    }

    /// One reconciliation pass: probe pods, end lost, idle and expired allocations, delete ended
    /// pods, and start or remove pods so every plan meets its warm target. Run by the lease
    /// holder: every step that changes something first checks that the lease is still fresh.
    pub async fn reconcile_once(&self, collect_garbage: bool) -> Result<(), ServiceError> {
        let inner = &self.inner;
        let mut pods = inner.store.pods().await?;
        if !self.lease_fresh() {
            return Ok(());
        }
        if collect_garbage {
            for pod in inner.backend.collect_garbage(&pods, &inner.plans).await {
                inner.store.add_pod(&pod).await?;
                metrics::counter!("watchman_pods_adopted_total", "plan" => pod.plan.clone())
                    .increment(1);
                pods.push(pod);
            }
        }
        inner.backend.mirror(&pods).await;
        let now = now_ms();
        let startup_ms =
            u64::try_from(inner.settings.pod_startup_timeout.as_millis()).unwrap_or(u64::MAX);
        let checks = pods.iter().map(|pod| async move {
            if !self.lease_fresh() {
                return Ok(());
            }
            let plan = inner.plans.get(&pod.plan);
            match pod.state {
                PodState::Starting => match inner.backend.health(pod).await {
                    Health::Ready => {
                        let endpoint = inner.backend.endpoint(pod).unwrap_or_default();
                        if inner.store.pod_ready(&pod.id, now_ms(), &endpoint).await? {
                            metrics::histogram!("watchman_pod_startup_duration_seconds", "plan" => pod.plan.clone())
                                .record(now_ms().saturating_sub(pod.created_ms) as f64 / 1000.0);
                        }
                    }
                    Health::Lost(why) | Health::Preempted(why) => self.discard(pod, "failed_start", &why).await?,
                    Health::NotReady if now.saturating_sub(pod.created_ms) > startup_ms => {
                        self.discard(pod, "failed_start", "did not become ready in time").await?;
                    }
                    Health::NotReady => {}
                },
                PodState::Warm => {
                    match inner.backend.health(pod).await {
                        Health::Lost(why) => return self.discard(pod, "pod_lost", &why).await,
                        Health::Preempted(why) => return self.discard(pod, "preempted", &why).await,
                        Health::Ready | Health::NotReady => {}
                    }
                    if plan.is_none() {
                        self.discard(pod, "plan_removed", "its plan no longer exists").await?;
                    }
                }
                PodState::Allocated => {
                    match inner.backend.health(pod).await {
                        Health::Lost(why) => {
                            self.end(&pod.id, &pod.plan, EndReason::PodLost, &why).await?;
                            return Ok(());
                        }
                        Health::Preempted(why) => {
                            self.end(&pod.id, &pod.plan, EndReason::Preempted, &why).await?;
                            return Ok(());
                        }
                        Health::Ready | Health::NotReady => {}
                    }
                    if let Some(plan) = plan && self.activity_due(&pod.id) {
                        let expired = match &pod.document {
                            Some(d) => inner.store.allocation(d).await?.is_some_and(|a| a.expires_ms <= now),
                            None => false,
                        };
                        if expired {
                            self.end(&pod.id, &pod.plan, EndReason::Lifetime, "reached the plan's maximum lifetime").await?;
                        } else if let Some(act) = inner.backend.activity(pod).await {
                            let idle_for = (now / 1000).saturating_sub(act.last_activity);
                            if act.connections == 0 && act.kernel_state != "busy" && idle_for >= plan.idle_timeout.as_secs() {
                                self.end(&pod.id, &pod.plan, EndReason::Idle, &format!("no activity for {idle_for} s")).await?;
                            }
                        }
                    }
                }
                PodState::Ending => {
                    inner.backend.delete(pod).await;
                    inner.store.remove_pod(&pod.id).await?;
                }
            }
            Ok::<(), ServiceError>(())
        });
        for result in join_all(checks).await {
            result?;
        }
        {
            let live: std::collections::HashSet<&str> = pods
                .iter()
                .filter(|p| p.state == PodState::Allocated)
                .map(|p| p.id.as_str())
                .collect();
            let mut checked = inner
                .activity_checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            checked.retain(|id, _| live.contains(id.as_str()));
        }

        // Converge every plan to its target. The counts are those read at the start of this
        // pass: pods allocated, ended or discarded since only make them show more warm and
        // fewer allocated pods than there are, so a pass may start too few (the next one
        // catches up) but never too many. Removing surplus pods reads afresh.
        let counts = self.counts_of(&pods);
        let mut starts = Vec::new();
        for (name, c) in &counts {
            let demand = inner.store.demand(name).await?;
            let target = c.target + demand;
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
            let have = c.warm + c.starting;
            if have < target {
                for _ in 0..(target - have) {
                    starts.push(name.clone());
                }
            } else if c.warm > 0 && have > target && self.lease_fresh() {
                let pods = inner.store.pods().await?;
                let fresh = self.counts_of(&pods).remove(name).unwrap_or_default();
                let have = fresh.warm + fresh.starting;
                let target = fresh.target + demand;
                let surplus = have.saturating_sub(target).min(fresh.warm) as usize;
                for pod in pods
                    .iter()
                    .filter(|p| p.plan == *name && p.state == PodState::Warm)
                    .take(surplus)
                {
                    self.discard(pod, "surplus", "above the warm target")
                        .await?;
                }
            }
        }
        let limit = inner.settings.max_concurrent_starts.max(1);
        let allowed = self.take_create_budget(starts.len());
        if allowed < starts.len() {
            // Rotate so that every plan gets its share when the budget is short.
            let n = starts.len();
            let mut fair = Vec::with_capacity(allowed);
            let mut by_plan: BTreeMap<&str, usize> = BTreeMap::new();
            for plan in &starts {
                *by_plan.entry(plan.as_str()).or_default() += 1;
            }
            'outer: for _ in 0..n {
                for (plan, left) in &mut by_plan {
                    if fair.len() == allowed {
                        break 'outer;
                    }
                    if *left > 0 {
                        *left -= 1;
                        fair.push((*plan).to_owned());
                    }
                }
            }
            starts = fair;
        }
        for chunk in starts.chunks(limit) {
            if !self.lease_fresh() {
                break;
            }
            for r in join_all(chunk.iter().map(|plan| self.start_pod(plan))).await {
                r?;
            }
        }
        Ok(())
    }

    /// Takes up to `wanted` pod creations from the rate budget.
    fn take_create_budget(&self, wanted: usize) -> usize {
        let s = &self.inner.settings;
        let burst = s.max_concurrent_starts.max(1) as f64;
        let mut budget = self
            .inner
            .create_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = &mut *budget;
        *tokens = (*tokens + at.elapsed().as_secs_f64() * s.pod_create_rate)
            .min(burst.max(s.pod_create_rate * s.reconcile_interval.as_secs_f64()));
        *at = Instant::now();
        let take = (wanted as f64).min(tokens.floor()).max(0.0);
        *tokens -= take;
        take as usize
    }

    /// Whether an allocated pod's activity and lifetime are due for a check (and notes it).
    fn activity_due(&self, pod: &str) -> bool {
        let mut checked = self
            .inner
            .activity_checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match checked.get(pod) {
            Some(at) if at.elapsed() < self.inner.settings.activity_interval => false,
            _ => {
                checked.insert(pod.to_owned(), Instant::now());
                true
            }
        }
    }

    async fn start_pod(&self, plan_name: &str) -> Result<(), ServiceError> {
        let Some(plan) = self.inner.plans.get(plan_name) else {
            return Ok(());
        };
        let id = format!(
            "{plan_name}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        match self.inner.backend.create(&id, plan).await {
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
                self.inner.store.add_pod(&pod).await?;
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
        reason: &'static str,
        detail: &str,
    ) -> Result<(), ServiceError> {
        if matches!(reason, "surplus" | "plan_removed") {
            // A healthy pod: taken only if no Allocate claimed it since it was read.
            if !self.inner.store.retire(&pod.id).await? {
                return Ok(());
            }
        } else {
            // A dead pod: if it was claimed meanwhile, that allocation ends, with the reason.
            let end = if reason == "preempted" {
                EndReason::Preempted
            } else {
                EndReason::PodLost
            };
            self.inner.store.end_pod(&pod.id, end, detail).await?;
        }
        tracing::info!(pod = %pod.id, reason, detail, "removing pod");
        metrics::counter!("watchman_pods_ended_total", "plan" => pod.plan.clone(), "reason" => reason).increment(1);
        self.inner.backend.delete(pod).await;
        self.inner.store.remove_pod(&pod.id).await?;
        Ok(())
    }

    /// Deletes every pod this replica knows of (used by tests and `--delete-pods-on-exit`).
    pub async fn delete_all_pods(&self) -> Result<(), ServiceError> {
        let pods = self.inner.store.pods().await?;
        join_all(pods.iter().map(|p| async move {
            self.inner.backend.delete(p).await;
            let _ = self.inner.store.remove_pod(&p.id).await;
        }))
        .await;
        Ok(())
    }
}

/// Creates every counter that only moves on rare events at zero, so that dashboards and
/// `increase()` in alerts see the first event.
pub fn register_metrics(plans: &[String]) {
    use crate::model::EndReason;
    let reasons = [
        EndReason::Released,
        EndReason::Idle,
        EndReason::Lifetime,
        EndReason::PodLost,
        EndReason::Preempted,
    ]
    .map(EndReason::label);
    for op in ["create", "delete", "patch"] {
        metrics::counter!("watchman_kube_api_errors_total", "op" => op).increment(0);
    }
    metrics::counter!("watchman_kube_watch_errors_total").increment(0);
    metrics::counter!("watchman_pods_collected_total").increment(0);
    metrics::counter!("watchman_reconcile_timeouts_total").increment(0);
    for plan in plans {
        metrics::counter!("watchman_pods_adopted_total", "plan" => plan.clone()).increment(0);
        metrics::counter!("watchman_pod_start_failures_total", "plan" => plan.clone()).increment(0);
        for reason in reasons
            .iter()
            .chain(&["failed_start", "surplus", "plan_removed"])
        {
            metrics::counter!("watchman_pods_ended_total", "plan" => plan.clone(), "reason" => *reason)
                .increment(0);
        }
    }
}
