//! Where schedules live, beside the runs: in memory, or in Redis as `jobs:schedule:{id}` (the
//! schedule's JSON), `jobs:schedules:{len(user)}:{user}` (sorted set of the user's schedule ids
//! by creation) and `jobs:schedules:due` (sorted set of active schedule ids by their next due
//! time, which the leader reads and advances).

use redis::AsyncCommands as _;

use super::schedules::Schedule;
use super::store::{JobStore, get_json};
use crate::store::{RedisStore, StoreError};

fn user_key(r: &RedisStore, user: &str) -> String {
    format!("{}jobs:schedules:{}:{user}", r.prefix(), user.len())
}

fn due_key(r: &RedisStore) -> String {
    format!("{}jobs:schedules:due", r.prefix())
}

fn schedule_key(r: &RedisStore, id: &str) -> String {
    format!("{}jobs:schedule:{id}", r.prefix())
}

impl JobStore {
    /// Writes a schedule: a new one (`create`), or a change to one that still exists (returns
    /// false, writing nothing, when it was deleted meanwhile).
    pub async fn put_schedule(&self, s: &Schedule, create: bool) -> Result<bool, StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                if !create && !m.schedules.contains_key(&s.id) {
                    return Ok(false);
                }
                m.schedules.insert(s.id.clone(), s.clone());
                Ok(true)
            }
            Self::Redis(r) => {
                let json = serde_json::to_string(s).map_err(|e| StoreError::Corrupt {
                    key: s.id.clone(),
                    reason: e.to_string(),
                })?;
                let key = schedule_key(r, &s.id);
                let user = user_key(r, &s.user_id);
                r.retrying("jobs_schedule_put", || {
                    let mut c = r.connection();
                    let (key, user, json) = (key.clone(), user.clone(), json.clone());
                    async move {
                        if create {
                            let mut pipe = redis::pipe();
                            pipe.atomic()
                                .set(&key, &json)
                                .ignore()
                                .zadd(&user, &s.id, s.created_at_ms)
                                .ignore();
                            pipe.query_async::<()>(&mut c).await.map(|()| true)
                        } else {
                            redis::cmd("SET")
                                .arg(&key)
                                .arg(&json)
                                .arg("XX")
                                .query_async::<Option<String>>(&mut c)
                                .await
                                .map(|set| set.is_some())
                        }
                    }
                })
                .await
            }
        }
    }

    /// One schedule.
    pub async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        match self {
            Self::Memory(m) => Ok(Self::mem(m).schedules.get(id).cloned()),
            Self::Redis(r) => get_json(r, "jobs_schedule_get", schedule_key(r, id)).await,
        }
    }

    /// The user's schedule ids, oldest first.
    pub async fn schedule_ids(&self, user: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Memory(m) => {
                let m = Self::mem(m);
                let mut mine: Vec<&Schedule> =
                    m.schedules.values().filter(|s| s.user_id == user).collect();
                mine.sort_by_key(|s| (s.created_at_ms, s.id.clone()));
                Ok(mine.into_iter().map(|s| s.id.clone()).collect())
            }
            Self::Redis(r) => {
                let key = user_key(r, user);
                r.retrying("jobs_schedule_list", || {
                    let mut c = r.connection();
                    let key = key.clone();
                    async move { c.zrange(key, 0, -1).await }
                })
                .await
            }
        }
    }

    /// Removes a schedule and its due time.
    pub async fn delete_schedule(&self, s: &Schedule) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                m.schedules.remove(&s.id);
                m.due.remove(&s.id);
                Ok(())
            }
            Self::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .del(schedule_key(r, &s.id))
                    .ignore()
                    .zrem(user_key(r, &s.user_id), &s.id)
                    .ignore()
                    .zrem(due_key(r), &s.id)
                    .ignore();
                r.retrying("jobs_schedule_delete", || {
                    let mut c = r.connection();
                    let pipe = pipe.clone();
                    async move { pipe.query_async::<()>(&mut c).await }
                })
                .await
            }
        }
    }

    /// Sets when the schedule is next due (`advance`: only if it is still active, so that a
    /// leader does not revive a schedule paused or deleted meanwhile); `None` deactivates it.
    pub async fn set_due(
        &self,
        id: &str,
        due: Option<u64>,
        advance: bool,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(m) => {
                let mut m = Self::mem(m);
                match due {
                    Some(at) if !advance || m.due.contains_key(id) => {
                        m.due.insert(id.to_owned(), at);
                    }
                    Some(_) => {}
                    None => {
                        m.due.remove(id);
                    }
                }
                Ok(())
            }
            Self::Redis(r) => {
                let key = due_key(r);
                r.retrying("jobs_schedule_due", || {
                    let mut c = r.connection();
                    let key = key.clone();
                    async move {
                        match due {
                            Some(at) => {
                                let mut cmd = redis::cmd("ZADD");
                                cmd.arg(&key);
                                if advance {
                                    cmd.arg("XX");
                                }
                                cmd.arg(at)
                                    .arg(id)
                                    .query_async::<i64>(&mut c)
                                    .await
                                    .map(|_| ())
                            }
                            None => c.zrem::<_, _, i64>(&key, id).await.map(|_| ()),
                        }
                    }
                })
                .await
            }
        }
    }

    /// When the schedule is next due, if it is active.
    pub async fn due_of(&self, id: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Self::Memory(m) => Ok(Self::mem(m).due.get(id).copied()),
            Self::Redis(r) => {
                let key = due_key(r);
                let score: Option<f64> = r
                    .retrying("jobs_schedule_due_get", || {
                        let mut c = r.connection();
                        let key = key.clone();
                        async move { c.zscore(key, id).await }
                    })
                    .await?;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(score.map(|s| s as u64))
            }
        }
    }

    /// Active schedules due at or before `now` (at most `limit`), with their due times.
    pub async fn due_before(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        match self {
            Self::Memory(m) => {
                let m = Self::mem(m);
                let mut due: Vec<(String, u64)> = m
                    .due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, at)| (id.clone(), *at))
                    .collect();
                due.sort_by_key(|(id, at)| (*at, id.clone()));
                due.truncate(limit);
                Ok(due)
            }
            Self::Redis(r) => {
                let key = due_key(r);
                let limit = isize::try_from(limit).unwrap_or(100);
                let found: Vec<(String, f64)> = r
                    .retrying("jobs_schedule_due_list", || {
                        let mut c = r.connection();
                        let key = key.clone();
                        async move {
                            c.zrangebyscore_limit_withscores(key, "-inf", now, 0, limit)
                                .await
                        }
                    })
                    .await?;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(found.into_iter().map(|(id, at)| (id, at as u64)).collect())
            }
        }
    }
}
