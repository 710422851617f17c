use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, Script};

use super::{Claim, StoreError};
use crate::model::{Allocation, EndReason, Ended, Pod, PodState};

/// Shared store for several replicas. Keys (all under the prefix):
/// `pod:{id}` pod JSON; `pods` set of ids; `warm:{plan}` set of warm ids; `doc:{document}`
/// allocation JSON; `ended:{allocation}` and `ended-pod:{pod}` end record (1 h); `lease`
/// reconciler holder;
/// `demand:{plan}` sorted set of waiting callers by deadline.
///
/// Scripts touch keys they compute from the prefix, so the store needs a single Redis (or one
/// hash slot), not a cluster.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const READY: &str = r"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local p = cjson.decode(raw)
if p.state ~= 'starting' then return 0 end
p.state = 'warm'
p.ready_ms = tonumber(ARGV[1])
if ARGV[3] ~= '' then p.endpoint = ARGV[3] end
redis.call('SET', KEYS[1], cjson.encode(p))
redis.call('SADD', KEYS[2], ARGV[2])
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

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); every key starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo as _;
        let info = url.into_connection_info()?;
        // Every claim is one small request and one small reply: without TCP_NODELAY, Nagle's
        // algorithm meets delayed ACKs and each can wait ~40 ms.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp))?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(super) async fn add_pod(&self, pod: &Pod) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.key(&format!("pod:{}", pod.id)), encode(pod))
            .sadd(self.key("pods"), &pod.id);
        if pod.state == PodState::Warm {
            pipe.sadd(self.key(&format!("warm:{}", pod.plan)), &pod.id);
        }
        pipe.query_async::<()>(&mut c).await?;
        Ok(())
    }

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
        let done: i64 = Script::new(READY)
            .key(self.key(&format!("pod:{id}")))
            .key(self.key(&format!("warm:{}", pod.plan)))
            .arg(at_ms)
            .arg(id)
            .arg(endpoint)
            .invoke_async(&mut c)
            .await?;
        Ok(done == 1)
    }

    pub(super) async fn pod(&self, id: &str) -> Result<Option<Pod>, StoreError> {
        let key = self.key(&format!("pod:{id}"));
        let raw: Option<String> = self.conn.clone().get(&key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    pub(super) async fn claim(&self, template: &Allocation) -> Result<Claim, StoreError> {
        let mut c = self.conn.clone();
        let reply: Vec<String> = Script::new(CLAIM)
            .key(self.key(&format!("doc:{}", template.document)))
            .key(self.key(&format!("warm:{}", template.plan)))
            .arg(&self.prefix)
            .arg(encode(template))
            .invoke_async(&mut c)
            .await?;
        let key = self.key(&format!("doc:{}", template.document));
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
        let raw: Option<String> = self.conn.clone().get(&key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    pub(super) async fn end_pod(
        &self,
        pod: &str,
        reason: EndReason,
        detail: &str,
    ) -> Result<Option<Ended>, StoreError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = Script::new(END)
            .key(self.key(&format!("pod:{pod}")))
            .arg(&self.prefix)
            .arg(reason.label())
            .arg(detail)
            .arg(crate::model::now_ms())
            .arg(pod)
            .invoke_async(&mut c)
            .await?;
        raw.map(|r| decode("ended", &r)).transpose()
    }

    pub(super) async fn retire(&self, pod: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let done: i64 = Script::new(RETIRE)
            .key(self.key(&format!("pod:{pod}")))
            .arg(&self.prefix)
            .arg(pod)
            .invoke_async(&mut c)
            .await?;
        Ok(done == 1)
    }

    pub(super) async fn ended(&self, allocation: &str) -> Result<Option<Ended>, StoreError> {
        let key = self.key(&format!("ended:{allocation}"));
        let raw: Option<String> = self.conn.clone().get(&key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    pub(super) async fn ended_pod(&self, pod: &str) -> Result<Option<Ended>, StoreError> {
        let key = self.key(&format!("ended-pod:{pod}"));
        let raw: Option<String> = self.conn.clone().get(&key).await?;
        raw.map(|r| decode(&key, &r)).transpose()
    }

    pub(super) async fn remove_pod(&self, id: &str) -> Result<(), StoreError> {
        let plan = self.pod(id).await?.map(|p| p.plan);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.key(&format!("pod:{id}")))
            .srem(self.key("pods"), id);
        if let Some(plan) = plan {
            pipe.srem(self.key(&format!("warm:{plan}")), id);
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(())
    }

    pub(super) async fn pods(&self) -> Result<Vec<Pod>, StoreError> {
        let mut c = self.conn.clone();
        // SSCAN rather than SMEMBERS, for the same reason as the batched MGET below. SSCAN may
        // return an id twice; the set removes repeats.
        let mut ids = std::collections::BTreeSet::new();
        let mut cursor = 0_u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.key("pods"))
                .arg(cursor)
                .arg("COUNT")
                .arg(512)
                .query_async(&mut c)
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
            let raws: Vec<Option<String>> =
                redis::cmd("MGET").arg(batch).query_async(&mut c).await?;
            for (raw, key) in raws.into_iter().zip(batch) {
                if let Some(r) = raw {
                    pods.push(decode(key, &r)?);
                }
            }
        }
        Ok(pods)
    }

    pub(super) async fn try_lease(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let got: i64 = Script::new(LEASE)
            .key(self.key("lease"))
            .arg(holder)
            .arg(ttl_ms)
            .invoke_async(&mut c)
            .await?;
        Ok(got == 1)
    }

    pub(super) async fn note_demand(
        &self,
        plan: &str,
        waiter: &str,
        until_ms: u64,
    ) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let key = self.key(&format!("demand:{plan}"));
        redis::pipe()
            .zadd(&key, waiter, until_ms)
            .pexpire(&key, 600_000)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    pub(super) async fn demand(&self, plan: &str) -> Result<u32, StoreError> {
        let mut c = self.conn.clone();
        let key = self.key(&format!("demand:{plan}"));
        let now = crate::model::now_ms();
        let (_, n): (i64, u32) = redis::pipe()
            .zrembyscore(&key, "-inf", now)
            .zcard(&key)
            .query_async(&mut c)
            .await?;
        Ok(n)
    }
}
