use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, RedisResult, RetryMethod, Script};

use super::{Claim, StateCounts, StoreError};
use crate::model::{Allocation, EndReason, Ended, Pod};

/// Shared store for several replicas. Keys (all under the prefix):
/// `pod:{id}` pod JSON; `pods` set of ids; `warm:{plan}` set of warm ids; `counts:{plan}` hash
/// of pods by state (kept by the scripts that change states, so counting never scans);
/// `counted` marks that the counts were built; `doc:{document}` allocation JSON;
/// `ended:{allocation}` and `ended-pod:{pod}` end record (1 h); `lease` reconciler holder;
/// `demand:{plan}` sorted set of waiting callers by deadline; `checkpoints:{plan}` sorted set
/// of documents with a checkpoint by when it was saved, `checkpoint-plan` hash of their plans;
/// `deleted:{document}` when it was deleted (1 h).
///
/// Every change of a pod's state is one script, which moves the pod between counts in the same
/// step. Scripts touch keys they compute from the prefix, so the store needs a single Redis (or
/// one hash slot), not a cluster.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    retry_for: Duration,
}

/// How long Watchman waits for Redis (`--redis-timeout`, `--redis-retry-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOptions {
    /// How long one command may take before it counts as failed.
    pub timeout: Duration,
    /// How long a call that is safe to repeat is retried after a timeout or a lost connection
    /// (with a pause doubling from 20 ms); zero: never.
    pub retry_for: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(3),
        }
    }
}

/// Whether a failed command may be sent again: the connection failed or timed out, or Redis
/// said to try again (busy with a script, loading); not a refused or malformed command.
fn transient(e: &redis::RedisError) -> bool {
    e.is_timeout()
        || matches!(
            e.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        )
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Moves a pod of `plan` from one state's count to another's (`KEYS`-free: scripts compute
/// their keys from the prefix, `ARGV[1]` in every script below).
const MOVE: &str = r"
local function move(plan, from, to)
  local k = ARGV[1] .. 'counts:' .. plan
  if from then redis.call('HINCRBY', k, from, -1) end
  if to then redis.call('HINCRBY', k, to, 1) end
end
";

const ADD: &str = r"
local pkey = ARGV[1] .. 'pod:' .. ARGV[2]
local old = redis.call('GET', pkey)
if old then
  local o = cjson.decode(old)
  move(o.plan, o.state, nil)
  redis.call('SREM', ARGV[1] .. 'warm:' .. o.plan, ARGV[2])
end
local p = cjson.decode(ARGV[3])
redis.call('SET', pkey, ARGV[3])
redis.call('SADD', ARGV[1] .. 'pods', ARGV[2])
if p.state == 'warm' then redis.call('SADD', ARGV[1] .. 'warm:' .. p.plan, ARGV[2]) end
move(p.plan, nil, p.state)
";

const REMOVE: &str = r"
local pkey = ARGV[1] .. 'pod:' .. ARGV[2]
local raw = redis.call('GET', pkey)
if raw then
  local p = cjson.decode(raw)
  move(p.plan, p.state, nil)
  redis.call('SREM', ARGV[1] .. 'warm:' .. p.plan, ARGV[2])
end
redis.call('DEL', pkey)
redis.call('SREM', ARGV[1] .. 'pods', ARGV[2])
";

/// Builds the counts from the pods once (a store written before counts were kept). Atomic, so
/// it runs while nothing else does; it reads every pod, which is why it runs only when the
/// `counted` mark is missing.
const RECOUNT: &str = r"
if redis.call('EXISTS', ARGV[1] .. 'counted') == 1 then return 0 end
local seen = {}
for _, id in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'pods')) do
  local raw = redis.call('GET', ARGV[1] .. 'pod:' .. id)
  if raw then
    local p = cjson.decode(raw)
    if not seen[p.plan] then
      redis.call('DEL', ARGV[1] .. 'counts:' .. p.plan)
      seen[p.plan] = true
    end
    move(p.plan, nil, p.state)
  end
end
redis.call('SET', ARGV[1] .. 'counted', '1')
return 1
";

const READY: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local p = cjson.decode(raw)
if p.state ~= 'starting' then return 0 end
p.state = 'warm'
p.ready_ms = tonumber(ARGV[2])
if ARGV[4] ~= '' then p.endpoint = ARGV[4] end
redis.call('SET', KEYS[1], cjson.encode(p))
redis.call('SADD', KEYS[2], ARGV[3])
move(p.plan, 'starting', 'warm')
return 1
";

const CLAIM: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then return {'existing', existing} end
while true do
  local id = redis.call('SPOP', KEYS[2])
  if not id then return {'empty'} end
  local pkey = ARGV[1] .. 'pod:' .. id
  local raw = redis.call('GET', pkey)
  if raw then
    local p = cjson.decode(raw)
    if p.state == 'warm' then
      local a = cjson.decode(ARGV[2])
      a.pod = id
      a.endpoint = p.endpoint
      p.state = 'allocated'
      move(p.plan, 'warm', 'allocated')
      p.document = a.document
      p.allocation = a.id
      local aj = cjson.encode(a)
      redis.call('SET', pkey, cjson.encode(p))
      redis.call('SET', KEYS[1], aj)
      return {'claimed', aj}
    end
  end
end
";

const END: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local p = cjson.decode(raw)
local was = p.state
p.state = 'ending'
redis.call('SET', KEYS[1], cjson.encode(p))
if was ~= 'ending' then move(p.plan, was, 'ending') end
redis.call('SREM', ARGV[1] .. 'warm:' .. p.plan, ARGV[5])
if was ~= 'allocated' or type(p.document) ~= 'string' then return false end
local dkey = ARGV[1] .. 'doc:' .. p.document
local cur = redis.call('GET', dkey)
if cur then
  local a = cjson.decode(cur)
  if a.pod == ARGV[5] then redis.call('DEL', dkey) end
end
local e = {allocation = p.allocation, document = p.document, pod = ARGV[5], reason = ARGV[2], detail = ARGV[3], at_ms = tonumber(ARGV[4])}
local ej = cjson.encode(e)
redis.call('SET', ARGV[1] .. 'ended:' .. p.allocation, ej, 'EX', 3600)
redis.call('SET', ARGV[1] .. 'ended-pod:' .. ARGV[5], ej, 'EX', 3600)
return ej
";

const RETIRE: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local p = cjson.decode(raw)
if p.state ~= 'warm' and p.state ~= 'starting' then return 0 end
move(p.plan, p.state, 'ending')
p.state = 'ending'
redis.call('SET', KEYS[1], cjson.encode(p))
redis.call('SREM', ARGV[1] .. 'warm:' .. p.plan, ARGV[2])
return 1
";

const LEASE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

fn decode<T: serde::de::DeserializeOwned>(key: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    // These types serialise infallibly (string keys, no floats).
    serde_json::to_string(v).unwrap_or_default()
}

/// The scripts, each hashed once (Redis runs them by hash, loading one on first use).
struct Scripts {
    add: Script,
    remove: Script,
    recount: Script,
    ready: Script,
    claim: Script,
    end: Script,
    retire: Script,
    lease: Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| {
    let with_move = |body: &str| Script::new(&format!("{MOVE}{body}"));
    Scripts {
        add: with_move(ADD),
        remove: with_move(REMOVE),
        recount: with_move(RECOUNT),
        ready: with_move(READY),
        claim: with_move(CLAIM),
        end: with_move(END),
        retire: with_move(RETIRE),
        lease: Script::new(LEASE),
    }
});

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) with the default options; every key starts
    /// with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, prefix, RedisOptions::default()).await
    }

    /// Connects with `options`, and builds the pods' counts if this store has none yet.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo as _;
        let info = url.into_connection_info()?;
        // Every claim is one small request and one small reply: without TCP_NODELAY, Nagle's
        // algorithm meets delayed ACKs and each can wait ~40 ms.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp))?;
        // The client's own default gives a command 500 ms, which a Redis or a Watchman sharing
        // saturated cores can exceed while nothing is wrong (issue 23's UNAVAILABLE).
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(options.timeout))
            .set_connection_timeout(Some(options.timeout));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        let store = Self {
            conn,
            prefix: prefix.to_owned(),
            retry_for: options.retry_for,
        };
        store
            .retrying("recount", || {
                let mut c = store.conn.clone();
                let prefix = &store.prefix;
                async move {
                    SCRIPTS
                        .recount
                        .arg(prefix)
                        .invoke_async::<i64>(&mut c)
                        .await
                }
            })
            .await?;
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The connection, for other records kept beside the pods (the jobs' runs).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The key prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs `call` until it succeeds, fails for good, or `retry_for` has passed: only for
    /// calls that are safe to repeat (reads, and writes whose repetition changes nothing).
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        what: &'static str,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(20);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && Instant::now() + pause < deadline => {
                    metrics::counter!("watchman_store_retries_total", "call" => what).increment(1);
                    tracing::warn!(call = what, error = %e, "store call failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(e) => {
                    metrics::counter!("watchman_store_errors_total", "call" => what).increment(1);
                    return Err(e.into());
                }
            }
        }
    }

    /// A call that must not be repeated blindly (its second run could answer differently):
    /// failures are counted and returned.
    pub(crate) async fn once<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        call.await.map_err(|e| {
            metrics::counter!("watchman_store_errors_total", "call" => what).increment(1);
            e.into()
        })
    }

    async fn get(&self, what: &'static str, key: &str) -> Result<Option<String>, StoreError> {
        self.retrying(what, || {
            let mut c = self.conn.clone();
            async move { c.get(key).await }
        })
        .await
    }

    /// Adding a pod again replaces it (and its place in the counts): safe to repeat.
    pub(super) async fn add_pod(&self, pod: &Pod) -> Result<(), StoreError> {
        let json = encode(pod);
        self.retrying("add_pod", || {
            let mut c = self.conn.clone();
            let json = &json;
            async move {
                SCRIPTS
                    .add
                    .arg(&self.prefix)
                    .arg(&pod.id)
                    .arg(json)
                    .invoke_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    /// Not repeated: a second run after a lost answer would say the pod is no longer starting.
    pub(super) async fn pod_ready(
        &self,
        id: &str,
        at_ms: u64,
        endpoint: &str,
    ) -> Result<bool, StoreError> {
        let Some(pod) = self.pod(id).await? else {
            return Ok(false);
        };
        let mut c = self.conn.clone();
        let done: i64 = self
            .once(
                "pod_ready",
                SCRIPTS
                    .ready
                    .key(self.key(&format!("pod:{id}")))
                    .key(self.key(&format!("warm:{}", pod.plan)))
                    .arg(&self.prefix)
                    .arg(at_ms)
                    .arg(id)
                    .arg(endpoint)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(done == 1)
    }

    pub(super) async fn pod(&self, id: &str) -> Result<Option<Pod>, StoreError> {
        let key = self.key(&format!("pod:{id}"));
        let raw = self.get("pod", &key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    /// Safe to repeat: the document's key is checked first, so a claim whose answer was lost
    /// finds its own allocation the second time.
    pub(super) async fn claim(&self, template: &Allocation) -> Result<Claim, StoreError> {
        let key = self.key(&format!("doc:{}", template.document));
        let json = encode(template);
        let reply: Vec<String> = self
            .retrying("claim", || {
                let mut c = self.conn.clone();
                let (key, json) = (&key, &json);
                async move {
                    SCRIPTS
                        .claim
                        .key(key)
                        .key(self.key(&format!("warm:{}", template.plan)))
                        .arg(&self.prefix)
                        .arg(json)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        match reply.as_slice() {
            [kind, json] if kind == "existing" => Ok(Claim::Existing(decode(&key, json)?)),
            [kind, json] if kind == "claimed" => Ok(Claim::Claimed(decode(&key, json)?)),
            _ => Ok(Claim::Empty),
        }
    }

    pub(super) async fn allocation(
        &self,
        document: &str,
    ) -> Result<Option<Allocation>, StoreError> {
        let key = self.key(&format!("doc:{document}"));
        let raw = self.get("allocation", &key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    /// Not repeated: a second run would find the pod ending and return no end record.
    pub(super) async fn end_pod(
        &self,
        pod: &str,
        reason: EndReason,
        detail: &str,
    ) -> Result<Option<Ended>, StoreError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = self
            .once(
                "end_pod",
                SCRIPTS
                    .end
                    .key(self.key(&format!("pod:{pod}")))
                    .arg(&self.prefix)
                    .arg(reason.label())
                    .arg(detail)
                    .arg(crate::model::now_ms())
                    .arg(pod)
                    .invoke_async(&mut c),
            )
            .await?;
        raw.map(|r| decode("ended", &r)).transpose()
    }

    /// Not repeated: a second run would find the pod ending and say it was claimed.
    pub(super) async fn retire(&self, pod: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let done: i64 = self
            .once(
                "retire",
                SCRIPTS
                    .retire
                    .key(self.key(&format!("pod:{pod}")))
                    .arg(&self.prefix)
                    .arg(pod)
                    .invoke_async(&mut c),
            )
            .await?;
        Ok(done == 1)
    }

    pub(super) async fn ended(&self, allocation: &str) -> Result<Option<Ended>, StoreError> {
        let key = self.key(&format!("ended:{allocation}"));
        let raw = self.get("ended", &key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    pub(super) async fn ended_pod(&self, pod: &str) -> Result<Option<Ended>, StoreError> {
        let key = self.key(&format!("ended-pod:{pod}"));
        let raw = self.get("ended_pod", &key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    pub(super) async fn remove_pod(&self, id: &str) -> Result<(), StoreError> {
        self.retrying("remove_pod", || {
            let mut c = self.conn.clone();
            async move {
                SCRIPTS
                    .remove
                    .arg(&self.prefix)
                    .arg(id)
                    .invoke_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    /// Pods by state for each of `plans`: one small read per plan, however many pods exist.
    pub(super) async fn counts(
        &self,
        plans: &[&str],
    ) -> Result<BTreeMap<String, StateCounts>, StoreError> {
        // HMGET's fields in order: warm, starting, allocated, ending.
        type Row = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = self
            .retrying("counts", || {
                let mut c = self.conn.clone();
                let mut pipe = redis::pipe();
                for plan in plans {
                    pipe.cmd("HMGET")
                        .arg(self.key(&format!("counts:{plan}")))
                        .arg(&["warm", "starting", "allocated", "ending"][..]);
                }
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        // A count below zero would mean a bug in a script; it is shown as zero.
        let n = |v: Option<i64>| u32::try_from(v.unwrap_or(0).max(0)).unwrap_or(u32::MAX);
        Ok(plans
            .iter()
            .zip(rows)
            .map(|(plan, (warm, starting, allocated, ending))| {
                (
                    (*plan).to_owned(),
                    StateCounts {
                        warm: n(warm),
                        starting: n(starting),
                        allocated: n(allocated),
                        ending: n(ending),
                    },
                )
            })
            .collect())
    }

    /// Whether Redis answers (readiness).
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.once("ping", async {
            redis::cmd("PING")
                .query_async::<()>(&mut self.conn.clone())
                .await
        })
        .await
    }

    pub(super) async fn pods(&self) -> Result<Vec<Pod>, StoreError> {
        // SSCAN rather than SMEMBERS, for the same reason as the batched MGET below. SSCAN may
        // return an id twice; the set removes repeats.
        let mut ids = std::collections::BTreeSet::new();
        let mut cursor = 0_u64;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .retrying("pods", || {
                    let mut c = self.conn.clone();
                    async move {
                        redis::cmd("SSCAN")
                            .arg(self.key("pods"))
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(512)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            ids.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("pod:{id}")))
            .collect();
        // In batches: Redis runs one command at a time, and one MGET of thousands of records
        // would hold every Allocate behind it for milliseconds.
        let mut pods = Vec::with_capacity(keys.len());
        for batch in keys.chunks(256) {
            let raws: Vec<Option<String>> = self
                .retrying("pods", || {
                    let mut c = self.conn.clone();
                    async move { redis::cmd("MGET").arg(batch).query_async(&mut c).await }
                })
                .await?;
            for (raw, key) in raws.into_iter().zip(batch) {
                if let Some(r) = raw {
                    pods.push(decode(key, &r)?);
                }
            }
        }
        Ok(pods)
    }

    /// Safe to repeat: the same holder renews its own lease.
    pub(super) async fn try_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let got: i64 = self
            .retrying("try_lease", || {
                let mut c = self.conn.clone();
                async move {
                    SCRIPTS
                        .lease
                        .key(self.key("lease"))
                        .arg(holder)
                        .arg(ttl_ms)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(got == 1)
    }

    pub(super) async fn note_demand(
        &self,
        plan: &str,
        waiter: &str,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        let key = self.key(&format!("demand:{plan}"));
        self.retrying("note_demand", || {
            let mut c = self.conn.clone();
            let key = &key;
            async move {
                redis::pipe()
                    .zadd(key, waiter, until_ms)
                    .pexpire(key, 600_000)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    pub(super) async fn demand(&self, plan: &str) -> Result<u32, StoreError> {
        let key = self.key(&format!("demand:{plan}"));
        let (_, n): (i64, u32) = self
            .retrying("demand", || {
                let mut c = self.conn.clone();
                let key = &key;
                let now = crate::model::now_ms();
                async move {
                    redis::pipe()
                        .zrembyscore(key, "-inf", now)
                        .zcard(key)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(n)
    }

    pub(super) async fn note_checkpoint(
        &self,
        document: &str,
        plan: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let plans = self.key("checkpoint-plan");
        let before: Option<String> = self
            .retrying("note_checkpoint", || {
                let mut c = self.conn.clone();
                let plans = &plans;
                async move { c.hget(plans, document).await }
            })
            .await?;
        let key = self.key(&format!("checkpoints:{plan}"));
        let old = before
            .filter(|p| p != plan)
            .map(|p| self.key(&format!("checkpoints:{p}")));
        self.retrying("note_checkpoint", || {
            let mut c = self.conn.clone();
            let (plans, key, old) = (&plans, &key, &old);
            async move {
                let mut pipe = redis::pipe();
                pipe.atomic();
                if let Some(old) = old {
                    pipe.zrem(old, document);
                }
                pipe.zadd(key, document, at_ms)
                    .hset(plans, document, plan)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    pub(super) async fn has_checkpoint(&self, document: &str) -> Result<bool, StoreError> {
        let plans = self.key("checkpoint-plan");
        self.retrying("has_checkpoint", || {
            let mut c = self.conn.clone();
            let plans = &plans;
            async move { c.hexists(plans, document).await }
        })
        .await
    }

    pub(super) async fn checkpoints_before(
        &self,
        plan: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let key = self.key(&format!("checkpoints:{plan}"));
        self.retrying("checkpoints_before", || {
            let mut c = self.conn.clone();
            let key = &key;
            async move {
                c.zrangebyscore_limit(key, "-inf", format!("({before_ms}"), 0, limit as isize)
                    .await
            }
        })
        .await
    }

    pub(super) async fn forget_checkpoint(&self, document: &str) -> Result<(), StoreError> {
        let plans = self.key("checkpoint-plan");
        let plan: Option<String> = self
            .retrying("forget_checkpoint", || {
                let mut c = self.conn.clone();
                let plans = &plans;
                async move { c.hget(plans, document).await }
            })
            .await?;
        let key = plan.map(|p| self.key(&format!("checkpoints:{p}")));
        self.retrying("forget_checkpoint", || {
            let mut c = self.conn.clone();
            let (plans, key) = (&plans, &key);
            async move {
                let mut pipe = redis::pipe();
                pipe.atomic();
                if let Some(key) = key {
                    pipe.zrem(key, document);
                }
                pipe.hdel(plans, document).query_async::<()>(&mut c).await
            }
        })
        .await
    }

    pub(super) async fn note_deleted(
        &self,
        document: &str,
        at_secs: u64,
    ) -> Result<(), StoreError> {
        let key = self.key(&format!("deleted:{document}"));
        self.retrying("note_deleted", || {
            let mut c = self.conn.clone();
            let key = &key;
            async move {
                c.pset_ex::<_, _, ()>(key, at_secs, super::DELETED_FOR_MS)
                    .await
            }
        })
        .await
    }

    /// Records live in one hash per (kind, scope); a small script keeps the bound atomic.
    pub(super) async fn put_record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
        json: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        const PUT: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1";
        let key = self.key(&format!("records:{kind}:{scope}"));
        let script = redis::Script::new(PUT);
        let stored: i64 = self
            .retrying("put_record", || {
                let mut c = self.conn.clone();
                let (key, script) = (&key, &script);
                async move {
                    script
                        .key(key)
                        .arg(id)
                        .arg(json)
                        .arg(max)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(stored == 1)
    }

    pub(super) async fn record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let key = self.key(&format!("records:{kind}:{scope}"));
        self.retrying("record", || {
            let mut c = self.conn.clone();
            let key = &key;
            async move { c.hget(key, id).await }
        })
        .await
    }

    pub(super) async fn records(
        &self,
        kind: &str,
        scope: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let key = self.key(&format!("records:{kind}:{scope}"));
        let all: std::collections::BTreeMap<String, String> = self
            .retrying("records", || {
                let mut c = self.conn.clone();
                let key = &key;
                async move { c.hgetall(key).await }
            })
            .await?;
        Ok(all.into_iter().collect())
    }

    pub(super) async fn delete_record(
        &self,
        kind: &str,
        scope: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        let key = self.key(&format!("records:{kind}:{scope}"));
        let removed: i64 = self
            .retrying("delete_record", || {
                let mut c = self.conn.clone();
                let key = &key;
                async move { c.hdel(key, id).await }
            })
            .await?;
        Ok(removed > 0)
    }

    pub(super) async fn deleted_at(&self, document: &str) -> Result<Option<u64>, StoreError> {
        let key = self.key(&format!("deleted:{document}"));
        self.retrying("deleted_at", || {
            let mut c = self.conn.clone();
            let key = &key;
            async move { c.get(key).await }
        })
        .await
    }
}
