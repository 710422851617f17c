//! Allocation: one atomic store step that returns the document's live pod or binds a warm one,
//! a wait for a cold pod up to the caller's deadline when the buffer is empty (recorded in the
//! store as demand, so whichever replica reconciles starts one), and the session tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use session_token::{Claims, Role, SigningKey};

use super::{ServiceError, Settings, end_allocation};
use crate::model::{Allocation, EndReason, Ended, LaunchKind, now_ms};
use crate::plan::Plan;
use crate::pool::PoolCounts;
use crate::store::{Claim, Store};

/// What a caller asks of [`Allocator::allocate`].
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

/// Binds documents to pods and mints their tokens. Any replica allocates; none needs the lease.
#[derive(Debug, Clone)]
pub struct Allocator {
    plans: Arc<BTreeMap<String, Plan>>,
    store: Store,
    key: SigningKey,
    default_wait: Duration,
    max_wait: Duration,
    token_ttl: Duration,
    /// Plans refused at start (their sandbox level cannot be met here), with why.
    refused: Arc<BTreeMap<String, String>>,
}

pub(crate) fn valid_id(what: &str, s: &str) -> Result<(), ServiceError> {
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

impl Allocator {
    pub fn new(
        plans: Arc<BTreeMap<String, Plan>>,
        store: Store,
        key: SigningKey,
        settings: &Settings,
    ) -> Self {
        Self {
            plans,
            store,
            key,
            default_wait: settings.default_wait,
            max_wait: settings.max_wait,
            token_ttl: settings.token_ttl,
            refused: Arc::new(settings.refused_plans.clone()),
        }
    }

    /// Whether pods of plan `name` can run here (it exists and its sandbox level is met).
    pub fn can_run(&self, name: &str) -> bool {
        self.plan(name).is_ok()
    }

    fn plan(&self, name: &str) -> Result<&Plan, ServiceError> {
        if let Some(why) = self.refused.get(name) {
            return Err(ServiceError::FailedPrecondition(format!(
                "plan {name:?} cannot run here: {why}"
            )));
        }
        self.plans
            .get(name)
            .ok_or_else(|| ServiceError::UnknownPlan {
                plan: name.to_owned(),
                known: self.plans.keys().cloned().collect::<Vec<_>>().join(", "),
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
        Ok((self.key.mint(&claims)?, exp))
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
        let plan_label = if self.plans.contains_key(request.plan) {
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
        let wait = wait.unwrap_or(self.default_wait).min(self.max_wait);
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
            let (allocation, launch) = match self.store.claim(&template).await? {
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
                    self.store.note_demand(plan_name, &waiter, until).await?;
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
                self.token_ttl,
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
        self.end(document, EndReason::Released, "released by the caller")
            .await
    }

    /// Ends the document's live allocation, if it has one; true when it did.
    pub async fn end(
        &self,
        document: &str,
        reason: EndReason,
        detail: &str,
    ) -> Result<bool, ServiceError> {
        valid_id("document_id", document)?;
        let Some(a) = self.store.allocation(document).await? else {
            return Ok(false);
        };
        let ended = end_allocation(&self.store, &a.pod, &a.plan, reason, detail).await?;
        Ok(ended.is_some())
    }

    /// The document's live allocation.
    pub async fn get(&self, document: &str) -> Result<Allocation, ServiceError> {
        valid_id("document_id", document)?;
        self.store
            .allocation(document)
            .await?
            .ok_or_else(|| ServiceError::NotFound(document.to_owned()))
    }

    /// How allocation `id` ended, if it did.
    pub async fn ended(&self, id: &str) -> Result<Option<Ended>, ServiceError> {
        Ok(self.store.ended(id).await?)
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
            .unwrap_or(self.token_ttl)
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

    /// Pod counts and targets per plan, from the store's counts (never a scan of the pods).
    pub async fn pool_counts(&self) -> Result<BTreeMap<String, PoolCounts>, ServiceError> {
        let names: Vec<&str> = self.plans.keys().map(String::as_str).collect();
        let counts = self.store.counts(&names).await?;
        Ok(self
            .plans
            .iter()
            .map(|(name, plan)| {
                let c = counts.get(name).copied().unwrap_or_default();
                (name.clone(), PoolCounts::of(plan, c))
            })
            .collect())
    }
}
