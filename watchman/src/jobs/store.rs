//! Where runs, idempotency keys, quota usage and the audit trail live: beside the pods, in
//! memory for a single replica or in Redis for several.
//!
//! Redis keys (under Watchman's prefix): `jobs:run:{id}` the run's JSON (expires with its
//! result); `jobs:user:{user}` sorted set of the user's run ids by submission time (the newest 10,000);
//! `jobs:idem:{len(user)}:{user}:{key}` the run an idempotency key made; `jobs:active:{plan}:{user}` sorted
//! set of unfinished runs by when they are given up for lost (so a replica that died mid-run
//! cannot hold a user's quota for ever); `jobs:day:{plan}:{user}:{day}` hash of the day's
//! `runs` and `cpu_ms`; `jobs:audit:{user}` stream of audit entries; `jobs:cancel:{id}` a cancel
//! asked of a run another replica drives. Schedules: `schedule_store.rs`.
//!
//! One file, over 500 lines: each operation's memory and Redis forms sit side by side, so that
//! they cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{AsyncCommands as _, Script};

use super::decide::{Usage, quota_refusal};
use super::model::{AuditEntry, Run};
use crate::model::now_ms;
use crate::plan::JobsPolicy;
use crate::store::{RedisStore, Store, StoreError};

/// The key of an idempotency key: the user's length first, so that no user id and key can
/// spell another user's (ids may hold `:`).
fn idem_key(r: &RedisStore, user: &str, key: &str) -> String {
    format!("{}jobs:idem:{}:{user}:{key}", r.prefix(), user.len())
}

/// The JSON value at `key`, parsed.
pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
    r: &RedisStore,
    what: &'static str,
    key: String,
) -> Result<Option<T>, StoreError> {
    let json: Option<String> = r
        .retrying(what, || {
            let mut c = r.connection();
            let key = key.clone();
            async move { c.get(key).await }
        })
        .await?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
            key,
            reason: e.to_string(),
        })
    })
    .transpose()
}

/// An idempotency key's value: `<run id>@<claimed at ms>` (a bare run id from before).
fn held_by(value: &str) -> (String, u64) {
    match value.split_once('@') {
        Some((id, at)) => (id.to_owned(), at.parse().unwrap_or(0)),
        None => (value.to_owned(), 0),
    }
}

/// If the key is held by run ARGV[1] (`<id>@<ms>`, or a bare id): deletes it (ARGV[2] empty) or
/// sets it to ARGV[2] for ARGV[3] ms. Returns 1 when it did.
const SWAP_KEY: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if v ~= ARGV[1] and string.sub(v, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. '@' then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
";

/// Runs kept in a user's index (older ones are trimmed).
const USER_INDEX_KEEP: i64 = 10_000;

/// Audit entries kept per user (older ones are trimmed).
const AUDIT_KEEP: usize = 10_000;

/// Runs, keys, usage and audit.
#[derive(Debug, Clone)]
pub enum JobStore {
    Memory(Arc<Mutex<Memory>>),
    Redis(RedisStore),
}

#[derive(Debug, Default)]
pub struct Memory {
    runs: HashMap<String, Run>,
    by_user: HashMap<String, BTreeMap<(u64, String), ()>>,
    idempotency: HashMap<(String, String), (String, u64)>,
    /// (plan, user) → run → given up at (ms).
    active: HashMap<(String, String), HashMap<String, u64>>,
    /// (plan, user, day) → (runs, cpu ms).
    days: HashMap<(String, String, u64), (u32, u64)>,
    audit: HashMap<String, Vec<AuditEntry>>,
    cancels: std::collections::HashSet<String>,
    /// Schedules by id, and the next due time of each active one (`schedule_store.rs`).
    pub(super) schedules: HashMap<String, super::schedules::Schedule>,
    pub(super) due: HashMap<String, u64>,
}

/// Admission: atomically, the user's usage of the plan and, when the quota admits it, one more
/// active run and one more run today.
const ADMIT: &str = r"
local a = ARGV[1] .. 'jobs:active:' .. ARGV[2] .. ':' .. ARGV[3]
local d = ARGV[1] .. 'jobs:day:' .. ARGV[2] .. ':' .. ARGV[3] .. ':' .. ARGV[4]
redis.call('ZREMRANGEBYSCORE', a, '-inf', ARGV[5])
local active = redis.call('ZCARD', a)
local runs = tonumber(redis.call('HGET', d, 'runs') or '0')
local cpu = tonumber(redis.call('HGET', d, 'cpu_ms') or '0')
local ma, mr, mc = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if (ma > 0 and active >= ma) or (mr > 0 and runs >= mr) or (mc > 0 and cpu >= mc) then
  return {0, active, runs, cpu}
end
redis.call('ZADD', a, ARGV[7], ARGV[6])
redis.call('PEXPIRE', a, 172800000)
redis.call('HINCRBY', d, 'runs', 1)
redis.call('PEXPIRE', d, 172800000)
return {1, active, runs, cpu}
";

impl JobStore {
    /// Beside `store`'s pods.
    pub fn beside(store: &Store) -> Self {
        match store {
            Store::Memory(_) => Self::Memory(Arc::default()),
            Store::Redis(r) => Self::Redis(r.clone()),
        }
    }

    pub(super) fn mem(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits `run` under `policy`'s quota for its user, or says why not. `lost_after` is when
    /// the run is given up for lost if nobody finishes it.
    pub async fn admit(
        &self,
        run: &Run,
        policy: &JobsPolicy,
        lost_after: Duration,
    ) -> Result<Result<(), String>, StoreError> {
        let now = now_ms();
        let day = super::decide::day(now);
        let lost_at = now + u64::try_from(lost_after.as_millis()).unwrap_or(u64::MAX / 2);
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                let who = (run.plan.clone(), run.user_id.clone());
                let active = m.active.entry(who.clone()).or_default();
                active.retain(|_, at| *at > now);
                let active_n = u32::try_from(active.len()).unwrap_or(u32::MAX);
                let (runs, cpu) = m
                    .days
                    .get(&(who.0.clone(), who.1.clone(), day))
                    .copied()
                    .unwrap_or_default();
                let usage = Usage {
                    active: active_n,
                    runs_today: runs,
                    cpu_ms_today: cpu,
                };
                if let Some(why) = quota_refusal(&usage, policy) {
                    return Ok(Err(why));
                }
                m.active
                    .entry(who.clone())
                    .or_default()
                    .insert(run.id.clone(), lost_at);
                m.days.entry((who.0, who.1, day)).or_default().0 += 1;
                Ok(Ok(()))
            }
            Self::Redis(r) => {
                let script = Script::new(ADMIT);
                let mut c = r.connection();
                let (admitted, active, runs, cpu): (i64, u32, u32, u64) = r
                    .once(
                        "jobs_admit",
                        script
                            .arg(r.prefix())
                            .arg(&run.plan)
                            .arg(&run.user_id)
                            .arg(day)
                            .arg(now)
                            .arg(&run.id)
                            .arg(lost_at)
                            .arg(policy.user_concurrent_runs)
                            .arg(policy.user_runs_per_day)
                            .arg(policy.user_cpu_seconds_per_day.saturating_mul(1000))
                            .invoke_async(&mut c),
                    )
                    .await?;
                if admitted == 1 {
                    return Ok(Ok(()));
                }
                let usage = Usage {
                    active,
                    runs_today: runs,
                    cpu_ms_today: cpu,
                };
                Ok(Err(
                    quota_refusal(&usage, policy).unwrap_or_else(|| "quota: refused".to_owned())
                ))
            }
        }
    }

    /// The run no longer counts as active; `cpu_ms` is charged to today.
    pub async fn release(&self, run: &Run, cpu_ms: u64) -> Result<(), StoreError> {
        let day = super::decide::day(now_ms());
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                if let Some(a) = m.active.get_mut(&(run.plan.clone(), run.user_id.clone())) {
                    a.remove(&run.id);
                }
                m.days
                    .entry((run.plan.clone(), run.user_id.clone(), day))
                    .or_default()
                    .1 += cpu_ms;
                Ok(())
            }
            Self::Redis(r) => {
                let p = r.prefix();
                let active = format!("{p}jobs:active:{}:{}", run.plan, run.user_id);
                let days = format!("{p}jobs:day:{}:{}:{day}", run.plan, run.user_id);
                let mut c = r.connection();
                r.once(
                    "jobs_release",
                    redis::pipe()
                        .atomic()
                        .zrem(&active, &run.id)
                        .ignore()
                        .hincr(&days, "cpu_ms", cpu_ms)
                        .ignore()
                        .pexpire(&days, 172_800_000)
                        .ignore()
                        .query_async::<()>(&mut c),
                )
                .await
            }
        }
    }

    /// Claims idempotency key `key` of `user` for `run_id` for `ttl`; or, when it is held,
    /// returns the run that holds it and when it claimed the key.
    pub async fn claim_key(
        &self,
        user: &str,
        key: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Option<(String, u64)>, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        let now = now_ms();
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                let slot = (user.to_owned(), key.to_owned());
                if let Some((held, until)) = m.idempotency.get(&slot)
                    && *until > now
                {
                    return Ok(Some(held_by(held)));
                }
                m.idempotency
                    .insert(slot, (format!("{run_id}@{now}"), now + ttl_ms));
                Ok(None)
            }
            Self::Redis(r) => {
                let k = idem_key(r, user, key);
                let mut c = r.connection();
                let set: Option<String> = r
                    .once(
                        "jobs_idempotency",
                        redis::cmd("SET")
                            .arg(&k)
                            .arg(format!("{run_id}@{now}"))
                            .arg("NX")
                            .arg("PX")
                            .arg(ttl_ms.max(1))
                            .query_async(&mut c),
                    )
                    .await?;
                if set.is_some() {
                    return Ok(None);
                }
                let held: Option<String> = r
                    .retrying("jobs_idempotency_get", || {
                        let mut c = r.connection();
                        let k = k.clone();
                        async move { c.get(k).await }
                    })
                    .await?;
                Ok(held.as_deref().map(held_by))
            }
        }
    }

    /// Frees `key` if `run_id` still holds it (its run was refused).
    pub async fn drop_key(&self, user: &str, key: &str, run_id: &str) -> Result<(), StoreError> {
        self.swap_key(user, key, run_id, None, Duration::ZERO)
            .await
            .map(|_| ())
    }

    /// Gives `key` to `new_run` if `old_run` still holds it (a claim whose run was never stored:
    /// its replica died in between). Returns whether it did.
    pub async fn take_over_key(
        &self,
        user: &str,
        key: &str,
        old_run: &str,
        new_run: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.swap_key(user, key, old_run, Some(new_run), ttl).await
    }

    /// If `run_id` holds `key`: frees it (`to` None) or gives it to `to`.
    async fn swap_key(
        &self,
        user: &str,
        key: &str,
        run_id: &str,
        to: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX / 2)
            .max(1);
        let value = to.map(|t| format!("{t}@{now}"));
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                let slot = (user.to_owned(), key.to_owned());
                let holds = m
                    .idempotency
                    .get(&slot)
                    .is_some_and(|(held, _)| held_by(held).0 == run_id);
                if !holds {
                    return Ok(false);
                }
                match value {
                    Some(v) => m.idempotency.insert(slot, (v, now + ttl_ms)),
                    None => m.idempotency.remove(&slot),
                };
                Ok(true)
            }
            Self::Redis(r) => {
                let script = Script::new(SWAP_KEY);
                let k = idem_key(r, user, key);
                let value = value.unwrap_or_default();
                r.retrying("jobs_idempotency_swap", || {
                    let mut c = r.connection();
                    let script = script.clone();
                    let k = k.clone();
                    let value = value.clone();
                    async move {
                        script
                            .key(k)
                            .arg(run_id)
                            .arg(value)
                            .arg(ttl_ms)
                            .invoke_async::<i64>(&mut c)
                            .await
                    }
                })
                .await
                .map(|swapped| swapped == 1)
            }
        }
    }

    /// Renews when an unfinished run stops counting as active (at each attempt's start).
    pub async fn keep_active(&self, run: &Run, lost_after: Duration) -> Result<(), StoreError> {
        let lost_at = now_ms() + u64::try_from(lost_after.as_millis()).unwrap_or(u64::MAX / 2);
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                if let Some(at) = m
                    .active
                    .get_mut(&(run.plan.clone(), run.user_id.clone()))
                    .and_then(|a| a.get_mut(&run.id))
                {
                    *at = lost_at;
                }
                Ok(())
            }
            Self::Redis(r) => {
                let active = format!("{}jobs:active:{}:{}", r.prefix(), run.plan, run.user_id);
                r.retrying("jobs_keep_active", || {
                    let mut c = r.connection();
                    let active = active.clone();
                    async move {
                        redis::cmd("ZADD")
                            .arg(active)
                            .arg("XX")
                            .arg(lost_at)
                            .arg(&run.id)
                            .query_async::<i64>(&mut c)
                            .await
                    }
                })
                .await
                .map(|_| ())
            }
        }
    }

    /// Writes the run (new or changed). A finished run expires at its `expires_at_ms`.
    pub async fn put(&self, run: &Run) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                m.by_user
                    .entry(run.user_id.clone())
                    .or_default()
                    .insert((run.queued_at_ms, run.id.clone()), ());
                m.runs.insert(run.id.clone(), run.clone());
                Ok(())
            }
            Self::Redis(r) => {
                let json = serde_json::to_string(run).map_err(|e| StoreError::Corrupt {
                    key: run.id.clone(),
                    reason: e.to_string(),
                })?;
                let p = r.prefix();
                let key = format!("{p}jobs:run:{}", run.id);
                let user = format!("{p}jobs:user:{}", run.user_id);
                let mut pipe = redis::pipe();
                pipe.atomic();
                if run.expires_at_ms > 0 {
                    let ttl = run.expires_at_ms.saturating_sub(now_ms()).max(1);
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(&json)
                        .arg("PX")
                        .arg(ttl)
                        .ignore();
                } else {
                    pipe.set(&key, &json).ignore();
                }
                pipe.zadd(&user, &run.id, run.queued_at_ms).ignore();
                // A user's index keeps the newest runs only (their runs expire anyway).
                pipe.cmd("ZREMRANGEBYRANK")
                    .arg(&user)
                    .arg(0)
                    .arg(-(USER_INDEX_KEEP + 1))
                    .ignore();
                r.retrying("jobs_put", || {
                    let mut c = r.connection();
                    let pipe = pipe.clone();
                    async move { pipe.query_async::<()>(&mut c).await }
                })
                .await
            }
        }
    }

    /// One run (`None` once it expired).
    pub async fn get(&self, id: &str) -> Result<Option<Run>, StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                let now = now_ms();
                let expired = m
                    .runs
                    .get(id)
                    .is_some_and(|r| r.expires_at_ms > 0 && r.expires_at_ms <= now);
                if expired {
                    m.runs.remove(id);
                }
                Ok(m.runs.get(id).cloned())
            }
            Self::Redis(r) => get_json(r, "jobs_get", format!("{}jobs:run:{id}", r.prefix())).await,
        }
    }

    /// The user's runs, newest first, at most `limit`; expired ones are dropped from the index.
    pub async fn list(&self, user: &str, limit: usize) -> Result<Vec<Run>, StoreError> {
        let ids: Vec<String> = match self {
            Self::Memory(m) => {
                let m = Self::mem(m);
                m.by_user
                    .get(user)
                    .map(|ids| ids.keys().rev().map(|(_, id)| id.clone()).collect())
                    .unwrap_or_default()
            }
            Self::Redis(r) => {
                let key = format!("{}jobs:user:{user}", r.prefix());
                r.retrying("jobs_list", || {
                    let mut c = r.connection();
                    let key = key.clone();
                    // Some ids may have expired: a margin past the limit.
                    let last = isize::try_from(limit + 100).unwrap_or(isize::MAX);
                    async move { c.zrevrange(key, 0, last).await }
                })
                .await?
            }
        };
        let mut runs = Vec::new();
        for id in ids {
            if runs.len() >= limit {
                break;
            }
            match self.get(&id).await? {
                Some(run) => runs.push(run),
                None => self.unindex(user, &id).await?,
            }
        }
        Ok(runs)
    }

    async fn unindex(&self, user: &str, id: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                if let Some(ids) = m.by_user.get_mut(user) {
                    ids.retain(|(_, i), _| i != id);
                }
                Ok(())
            }
            Self::Redis(r) => {
                let key = format!("{}jobs:user:{user}", r.prefix());
                r.retrying("jobs_unindex", || {
                    let mut c = r.connection();
                    let key = key.clone();
                    async move { c.zrem(key, id).await }
                })
                .await
            }
        }
    }

    /// Records that the run was asked to stop (the replica driving it polls for this).
    pub async fn ask_cancel(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                Self::mem(m).cancels.insert(id.to_owned());
                Ok(())
            }
            Self::Redis(r) => {
                let key = format!("{}jobs:cancel:{id}", r.prefix());
                r.retrying("jobs_cancel", || {
                    let mut c = r.connection();
                    let key = key.clone();
                    async move { c.set_ex(key, 1, 86_400).await }
                })
                .await
            }
        }
    }

    /// Whether the run was asked to stop.
    pub async fn cancel_asked(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Self::Memory(m) => Ok(Self::mem(m).cancels.contains(id)),
            Self::Redis(r) => {
                let key = format!("{}jobs:cancel:{id}", r.prefix());
                r.retrying("jobs_cancel_get", || {
                    let mut c = r.connection();
                    let key = key.clone();
                    async move { c.exists(key).await }
                })
                .await
            }
        }
    }

    /// Appends to the user's audit trail.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                let trail = m.audit.entry(entry.user_id.clone()).or_default();
                trail.push(entry.clone());
                if trail.len() > AUDIT_KEEP {
                    let extra = trail.len() - AUDIT_KEEP;
                    trail.drain(..extra);
                }
                Ok(())
            }
            Self::Redis(r) => {
                let key = format!("{}jobs:audit:{}", r.prefix(), entry.user_id);
                let json = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                let mut c = r.connection();
                r.once(
                    "jobs_audit",
                    redis::cmd("XADD")
                        .arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(AUDIT_KEEP)
                        .arg("*")
                        .arg("entry")
                        .arg(json)
                        .query_async::<String>(&mut c),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// The user's audit trail, newest first.
    pub async fn audit_of(&self, user: &str, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Self::Memory(m) => {
                let m = Self::mem(m);
                Ok(m.audit
                    .get(user)
                    .map(|t| t.iter().rev().take(limit).cloned().collect())
                    .unwrap_or_default())
            }
            Self::Redis(r) => {
                let key = format!("{}jobs:audit:{user}", r.prefix());
                let entries: Vec<(String, Vec<(String, String)>)> = r
                    .retrying("jobs_audit_read", || {
                        let mut c = r.connection();
                        let key = key.clone();
                        async move {
                            redis::cmd("XREVRANGE")
                                .arg(key)
                                .arg("+")
                                .arg("-")
                                .arg("COUNT")
                                .arg(limit)
                                .query_async(&mut c)
                                .await
                        }
                    })
                    .await?;
                Ok(entries
                    .into_iter()
                    .filter_map(|(_, fields)| {
                        fields
                            .into_iter()
                            .find(|(k, _)| k == "entry")
                            .and_then(|(_, v)| serde_json::from_str(&v).ok())
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn an_idempotency_key_is_claimed_once_taken_over_only_from_its_holder_and_dropped() {
        let store = JobStore::Memory(Arc::default());
        let ttl = Duration::from_secs(60);
        assert!(
            store
                .claim_key("ada", "k", "ra", ttl)
                .await
                .unwrap()
                .is_none()
        );
        let (held, at) = store
            .claim_key("ada", "k", "rb", ttl)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held, "ra");
        assert!(at > 0);
        // Another user's key of the same name is another key.
        assert!(
            store
                .claim_key("bob", "k", "rc", ttl)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            !store
                .take_over_key("ada", "k", "rx", "rb", ttl)
                .await
                .unwrap()
        );
        assert!(
            store
                .take_over_key("ada", "k", "ra", "rb", ttl)
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .claim_key("ada", "k", "rd", ttl)
                .await
                .unwrap()
                .unwrap()
                .0,
            "rb"
        );
        store.drop_key("ada", "k", "ra").await.unwrap();
        assert!(
            store
                .claim_key("ada", "k", "rd", ttl)
                .await
                .unwrap()
                .is_some()
        );
        store.drop_key("ada", "k", "rb").await.unwrap();
        assert!(
            store
                .claim_key("ada", "k", "rd", ttl)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(held_by("r1@5"), ("r1".into(), 5));
        assert_eq!(held_by("r1"), ("r1".into(), 0));
    }
}
