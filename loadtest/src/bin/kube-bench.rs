//! Watchman's Kubernetes backend at cluster scale, against the local control plane (run it
//! through `scripts/with-kube-cluster.sh`; `make bench-kube` does): simulated spot nodes
//! (kwok), pools totalling thousands of warm pods, two Watchman replicas (release binaries,
//! as Watchman's service account with the deploy/ Role) sharing a real Redis.
//!
//! Measures the time for the pools to fill from empty, then for each concurrency level a burst
//! of Allocates for new documents (spread over both replicas): throughput, p50/p99 latency,
//! failures, and how long the pools take to refill; and each replica's memory, and the CPU each
//! part of the control plane used while the pools filled and refilled. Where a load's tail came
//! from: how long Allocate took inside each replica (bucket bounds from its own histogram), and
//! the load's slowest 50 ms windows by when their calls started (one stall, or a steady queue).
//!
//! With `--hold-control-plane`, the control plane's processes are stopped (SIGSTOP) for each
//! burst and continued (SIGCONT) as soon as it ends: Allocate never calls the API server, so
//! the burst then runs with the refill it starts unable to take any CPU, which isolates the
//! refill's effect on Allocate (the refill happens after the burst).
//!
//! What the API says to retry (`UNAVAILABLE`) is retried a few times and counted; a load that
//! still fails, or pools that do not refill, are reported and the run goes on to the next load.
//! Such a run exits non-zero at the end, and Watchman's logs are written beside the control
//! plane's (`$NBP_KUBE_RUN/logs`), which `with-kube-cluster.sh` keeps when the run fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use loadtest::{
    API_TOKEN, WatchmanClient as Client, cpu_secs, peak_rss_mib, rss_mib, watchman_client,
};
use testkit::kube::WatchmanProcess;
use watchman_proto::v1 as pb;

#[derive(Parser, Debug)]
struct Args {
    /// Simulated spot nodes.
    #[arg(long, default_value_t = 50)]
    nodes: u32,
    /// Warm pods over both plans (60% `free`, 40% `pro`).
    #[arg(long, default_value_t = 5000)]
    warm: u32,
    /// Allocates per burst.
    #[arg(long, default_value_t = 4000)]
    allocations: usize,
    /// Concurrency of each burst.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    concurrency: Vec<usize>,
    /// Open-loop bursts: Allocates sent at this rate (per second) whatever the answers, up to
    /// 256 in flight; latency counts from when each was due (no coordinated omission).
    #[arg(long, value_delimiter = ',', default_value = "2000,4000")]
    rate: Vec<f64>,
    /// Watchman's --pod-create-rate.
    #[arg(long, default_value_t = 250.0)]
    create_rate: f64,
    /// Pins every thread of the control plane's processes to these CPUs (e.g. `1`), and
    /// Watchman, Redis and this driver to `--own-cpus` (e.g. `0`): the refill then cannot take
    /// Allocate's core, as on a cluster whose control plane runs on other machines.
    #[arg(long)]
    control_plane_cpus: Option<String>,
    /// CPUs for Watchman, Redis and this driver when `--control-plane-cpus` is given.
    #[arg(long, requires = "control_plane_cpus", default_value = "0")]
    own_cpus: String,
    /// Stops the control plane (SIGSTOP) during each burst, continues it (SIGCONT) after: the
    /// burst runs with no refill competing for the cores.
    #[arg(long)]
    hold_control_plane: bool,
    /// The watchman binary.
    #[arg(long, default_value = "target/release/watchman")]
    watchman_bin: String,
}

/// (current, peak) RSS of `pid`, MiB.
fn memory(pid: u32) -> (f64, f64) {
    (
        rss_mib(pid).unwrap_or(0.0),
        peak_rss_mib(pid).unwrap_or(0.0),
    )
}

/// Calls `call` until it returns something other than `UNAVAILABLE` (what Watchman asks its
/// callers to retry), at most `RETRIES` more times with a growing pause; the answer and how many
/// retries it took.
async fn retrying<T, F, Fut>(mut call: F) -> (Result<T, tonic::Status>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    const RETRIES: u32 = 5;
    let mut retries = 0;
    loop {
        match call().await {
            Err(s) if s.code() == tonic::Code::Unavailable && retries < RETRIES => {
                tokio::time::sleep(Duration::from_millis(20 << retries)).await;
                retries += 1;
            }
            other => return (other, retries),
        }
    }
}

/// Warm and allocated pods over all pools; `retried` counts the ListPools calls retried.
async fn warm_total(c: &Client, retried: &mut u32) -> anyhow::Result<(u32, u32)> {
    let (answer, retries) = retrying(|| {
        let mut c = c.clone();
        async move { c.list_pools(pb::ListPoolsRequest {}).await }
    })
    .await;
    *retried += retries;
    let pools = answer?.into_inner().pools;
    Ok((
        pools.iter().map(|p| p.warm).sum(),
        pools.iter().map(|p| p.allocated).sum(),
    ))
}

/// Waits until the pools hold `warm` warm pods; the time it took, or what was there when
/// `limit` passed.
async fn wait_warm(
    c: &Client,
    warm: u32,
    limit: Duration,
    retried: &mut u32,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = 0;
    let mut failed = None;
    loop {
        match warm_total(c, retried).await {
            Ok((w, _)) if w >= warm => return Ok(started.elapsed()),
            Ok((w, _)) => {
                if w / 500 != last / 500 {
                    eprintln!("  {w} warm after {:.0?}", started.elapsed());
                }
                last = w;
            }
            // Still failing after its retries: said, and asked again until the limit.
            Err(e) => {
                eprintln!("  ListPools failed: {e:#}");
                failed = Some(e);
            }
        }
        if started.elapsed() >= limit {
            let why = failed.map_or_else(String::new, |e| format!("; last ListPools error: {e:#}"));
            return Err(format!("only {last} of {warm} warm after {limit:?}{why}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// CPU used by each part of the system (the control plane's components from their pid files,
/// Redis, the Watchman replicas), to say what a fill was limited by.
struct CpuMeter {
    parts: Vec<(String, u32)>,
}

impl CpuMeter {
    fn new(extra: &[(&str, u32)]) -> Self {
        let mut parts = Vec::new();
        if let Ok(run) = std::env::var("NBP_KUBE_RUN") {
            for c in [
                "kube-apiserver",
                "etcd",
                "kube-scheduler",
                "kube-controller-manager",
                "kwok",
            ] {
                let pid = std::fs::read_to_string(format!("{run}/pids/{c}.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok());
                if let Some(pid) = pid {
                    parts.push((c.to_owned(), pid));
                }
            }
        }
        parts.extend(extra.iter().map(|(n, p)| ((*n).to_owned(), *p)));
        Self { parts }
    }

    /// Pins every thread of the control plane's processes to `control_plane`, and the others
    /// (and this process) to `own` (`taskset -a`; threads started later inherit it).
    fn pin(&self, control_plane: &str, own: &str) -> anyhow::Result<()> {
        let own_pids = self
            .parts
            .iter()
            .filter(|(n, _)| n == "redis" || n.starts_with("watchman"))
            .map(|(_, p)| *p)
            .chain([std::process::id()]);
        let cp_pids = self.control_plane().into_iter();
        for (pid, cpus) in cp_pids
            .map(|p| (p, control_plane))
            .chain(own_pids.map(|p| (p, own)))
        {
            let ok = std::process::Command::new("taskset")
                .args(["-a", "-cp", cpus, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()?
                .success();
            anyhow::ensure!(ok, "taskset -a -cp {cpus} {pid} failed");
        }
        Ok(())
    }

    /// The control plane's processes (not Watchman's, not Redis).
    fn control_plane(&self) -> Vec<u32> {
        self.parts
            .iter()
            .filter(|(n, _)| n != "redis" && !n.starts_with("watchman"))
            .map(|(_, p)| *p)
            .collect()
    }

    fn sample(&self) -> (Instant, Vec<f64>) {
        (
            Instant::now(),
            self.parts
                .iter()
                .map(|(_, pid)| cpu_secs(*pid).unwrap_or(0.0))
                .collect(),
        )
    }

    /// Cores each part used on average since `before`, busiest first.
    fn since(&self, before: &(Instant, Vec<f64>)) -> String {
        let (now, after) = self.sample();
        let secs = now.duration_since(before.0).as_secs_f64().max(1e-3);
        let mut used: Vec<(&str, f64)> = self
            .parts
            .iter()
            .zip(after.iter().zip(&before.1))
            .map(|((name, _), (a, b))| (name.as_str(), (a - b) / secs))
            .collect();
        used.sort_by(|a, b| b.1.total_cmp(&a.1));
        used.iter()
            .map(|(n, c)| format!("{n} {c:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Processes stopped (SIGSTOP) until this is dropped (SIGCONT), whatever happens between.
struct Held(Vec<u32>);

impl Held {
    fn new(pids: Vec<u32>) -> anyhow::Result<Self> {
        anyhow::ensure!(!pids.is_empty(), "no control plane processes to hold");
        signal("STOP", &pids)?;
        Ok(Self(pids))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = signal("CONT", &self.0) {
            eprintln!("could not continue the control plane ({:?}): {e}", self.0);
        }
    }
}

fn signal(name: &str, pids: &[u32]) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -{name} {pids:?} failed");
    Ok(())
}

struct Burst {
    ok: usize,
    failed: usize,
    /// Allocates that succeeded after being retried.
    retried: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// Where the tail came from: the slowest windows of the load, by when their calls started.
    stalls: String,
}

impl Burst {
    /// Sorts the outcomes of one load into latencies and failures (the first few are shown).
    fn of(
        outcomes: impl IntoIterator<Item = Outcome>,
        elapsed: Duration,
        steal: &[(Duration, u64)],
    ) -> Self {
        let mut latencies = Vec::new();
        let mut timed = Vec::new();
        let mut failed = 0;
        let mut retried = 0;
        for outcome in outcomes {
            match outcome {
                Ok((start, l, retries)) => {
                    latencies.push(l);
                    timed.push((start, l));
                    retried += usize::from(retries > 0);
                }
                Err(e) => {
                    failed += 1;
                    if failed < 3 {
                        eprintln!("  allocate failed: {e}");
                    }
                }
            }
        }
        latencies.sort();
        Self {
            ok: latencies.len(),
            failed,
            retried,
            elapsed,
            latencies,
            stalls: format!(
                "{} ms stolen by the host in all; slowest windows: {}",
                stolen_ms(steal, Duration::ZERO, elapsed),
                stalls(&timed, steal)
            ),
        }
    }
}

/// The three 50 ms windows (by when calls started, from the load's start) whose slowest call was
/// slowest, each with how many of its calls took over 10 ms and the CPU time the hypervisor
/// took from this machine's CPUs from the window's start to its slowest call's end (`steal` in
/// `/proc/stat`): one stall and a steady queue read differently here though their p99s may
/// match, and a stall that coincides with steal was the host's, not the code's.
fn stalls(timed: &[(Duration, Duration)], steal: &[(Duration, u64)]) -> String {
    const WINDOW_MS: u128 = 50;
    let mut windows: std::collections::BTreeMap<u128, (Duration, usize, usize)> =
        std::collections::BTreeMap::new();
    for (start, l) in timed {
        let w = windows.entry(start.as_millis() / WINDOW_MS).or_default();
        w.0 = w.0.max(*l);
        w.1 += 1;
        w.2 += usize::from(*l > Duration::from_millis(10));
    }
    let mut worst: Vec<_> = windows.into_iter().collect();
    worst.sort_by_key(|w| std::cmp::Reverse(w.1.0));
    worst
        .iter()
        .take(3)
        .map(|(w, (max, n, slow))| {
            let from = Duration::from_millis((w * WINDOW_MS) as u64);
            let to = from + Duration::from_millis(WINDOW_MS as u64) + *max;
            format!(
                "+{} ms: max {:.1} ms, {slow}/{n} over 10 ms, {} ms stolen",
                w * WINDOW_MS,
                max.as_secs_f64() * 1000.0,
                stolen_ms(steal, from, to)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The hypervisor's steal over all CPUs, sampled every 5 ms from when it is started: (time
/// since the start, cumulative steal in `/proc/stat`'s ticks).
struct StealSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Duration, u64)>>,
}

fn steal_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            line.split_whitespace().nth(8)?.parse().ok()
        })
        .unwrap_or(0)
}

impl StealSampler {
    fn start(from: Instant) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.push((from.elapsed(), steal_ticks()));
                std::thread::sleep(Duration::from_millis(5));
            }
            samples.push((from.elapsed(), steal_ticks()));
            samples
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Steal between `from` and `to`, in milliseconds (a tick is 10 ms: `USER_HZ` is 100).
fn stolen_ms(steal: &[(Duration, u64)], from: Duration, to: Duration) -> u64 {
    let at = |t: Duration| {
        steal
            .iter()
            .rev()
            .find(|(when, _)| *when <= t)
            .or(steal.first())
            .map_or(0, |(_, ticks)| *ticks)
    };
    at(to).saturating_sub(at(from)) * 10
}

/// When the call started (from the load's start), its latency and retries, or why it failed.
type Outcome = Result<(Duration, Duration, u32), String>;

/// Sends Allocate number `i` of the load `tag`, retrying what Watchman says to retry.
async fn allocate(c: &Client, tag: &str, i: usize) -> Result<u32, String> {
    let (answer, retries) = retrying(|| {
        let mut c = c.clone();
        let req = request(tag, i);
        async move { c.allocate(req).await }
    })
    .await;
    answer
        .map(|_| retries)
        .map_err(|s| format!("{:?}: {} (after {retries} retries)", s.code(), s.message()))
}

/// Allocate number `i` of a load tagged `tag`: a new document, 60% plan free, 40% pro.
fn request(tag: &str, i: usize) -> pb::AllocateRequest {
    pb::AllocateRequest {
        document_id: format!("{tag}-{i}"),
        plan: if i % 5 < 3 { "free" } else { "pro" }.into(),
        user_id: "u".into(),
        wait_ms: 2000,
        ..Default::default()
    }
}

/// Closed loop: `concurrency` callers, each sending its next Allocate when the last returns.
async fn burst(
    clients: &[Client],
    concurrency: usize,
    total: usize,
    tag: &str,
) -> anyhow::Result<Burst> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let steal = StealSampler::start(started);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let c = clients[worker % clients.len()].clone();
        let next = next.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                let r = allocate(&c, &tag, i).await;
                outcomes.push(r.map(|retries| (t - started, t.elapsed(), retries)));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::with_capacity(total);
    for t in tasks {
        outcomes.extend(t.await?);
    }
    let elapsed = started.elapsed();
    Ok(Burst::of(outcomes, elapsed, &steal.finish()))
}

/// Open loop: Allocates sent at `rate` per second whatever the answers (up to 256 in flight),
/// latency counted from when each was due.
async fn open_loop(
    clients: &[Client],
    rate: f64,
    total: usize,
    tag: &str,
) -> anyhow::Result<Burst> {
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let started = tokio::time::Instant::now();
    let steal = StealSampler::start(started.into_std());
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let permit = gate.clone().acquire_owned().await?;
        let c = clients[i % clients.len()].clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let r = allocate(&c, &tag, i).await;
            drop(permit);
            r.map(|retries| (due - started, due.elapsed(), retries))
        }));
    }
    let mut outcomes = Vec::with_capacity(total);
    for t in tasks {
        outcomes.push(t.await?);
    }
    let elapsed = started.elapsed();
    Ok(Burst::of(outcomes, elapsed, &steal.finish()))
}

/// The sum of every series of the metric `name` in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        // An empty sum is -0.0, printed "-0".
        + 0.0
}

/// A replica's metrics page, or why there is none.
async fn metrics_page(r: &WatchmanProcess) -> Result<String, String> {
    let port = r.http_addr().await.port();
    match loadtest::http(port, "GET", "/metrics", "", "").await {
        Ok((200, page)) => Ok(page),
        other => Err(format!("no metrics: {other:?}")),
    }
}

/// What a replica's own metrics say of the run: its reconcile passes and its store's retries
/// and failures.
async fn replica_report(r: &WatchmanProcess) -> String {
    let page = match metrics_page(r).await {
        Ok(page) => page,
        Err(e) => return e,
    };
    let passes = metric_sum(&page, "watchman_reconcile_duration_seconds_count");
    let secs = metric_sum(&page, "watchman_reconcile_duration_seconds_sum");
    format!(
        "{passes:.0} reconcile passes (mean {:.1} ms), {:.0} store retries, {:.0} store errors",
        if passes > 0.0 {
            secs / passes * 1000.0
        } else {
            0.0
        },
        metric_sum(&page, "watchman_store_retries_total"),
        metric_sum(&page, "watchman_store_errors_total"),
    )
}

/// Allocate's histogram in a replica (every plan and launch summed): cumulative counts by
/// bucket bound (seconds).
async fn served_buckets(r: &WatchmanProcess) -> Vec<(f64, f64)> {
    let Ok(page) = metrics_page(r).await else {
        return Vec::new();
    };
    let mut by_bound: Vec<(f64, f64)> = Vec::new();
    for line in page
        .lines()
        .filter(|l| l.starts_with("watchman_allocation_duration_seconds_bucket{"))
    {
        let bound = line
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|le| le.parse::<f64>().unwrap_or(f64::INFINITY));
        let count = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
        if let (Some(bound), Some(count)) = (bound, count) {
            match by_bound.iter_mut().find(|(b, _)| *b == bound) {
                Some(entry) => entry.1 += count,
                None => by_bound.push((bound, count)),
            }
        }
    }
    by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_bound
}

/// The bucket bounds under which half and 99% of the Allocates between two snapshots of
/// [`served_buckets`] were served: what the call cost once it reached Watchman's handler.
fn served_quantiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> String {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, n)| *n);
            (*bound, n - was)
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, n)| *n);
    if total <= 0.0 {
        return "none served".into();
    }
    let under = |q: f64| {
        delta
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::INFINITY, |(b, _)| *b * 1000.0)
    };
    format!(
        "{total:.0}, p50 ≤ {} ms, p99 ≤ {} ms",
        under(0.5),
        under(0.99)
    )
}

/// `redis-cli` against the benchmark's Redis: its output, or why not.
fn redis_cli(url: &str, args: &[&str]) -> String {
    match std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("redis-cli: {e}"),
    }
}

/// The commands Redis took over 2 ms for since the last call (its slow log, which the
/// benchmark sets to 2 ms), e.g. `EVALSHA 4.1 ms`; then clears it.
fn redis_slow(url: &str) -> String {
    let raw = redis_cli(url, &["--no-raw", "SLOWLOG", "GET", "32"]);
    let _ = redis_cli(url, &["SLOWLOG", "RESET"]);
    // `--no-raw` prints each entry as numbered lines: id, time, microseconds, then the
    // command's words; keep the duration and the command's name.
    let mut out = Vec::new();
    let mut lines = raw.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if let Some(micros) = line
            .strip_prefix("3) (integer) ")
            .and_then(|m| m.parse::<f64>().ok())
        {
            let command = lines
                .next()
                .and_then(|l| l.split('"').nth(1))
                .unwrap_or("?")
                .to_owned();
            out.push(format!("{command} {:.1} ms", micros / 1000.0));
        }
    }
    if out.is_empty() {
        "none over 2 ms".into()
    } else {
        out.join(", ")
    }
}

fn pct(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        std::path::Path::new(&args.watchman_bin).exists(),
        "{} missing: cargo build --release -p watchman",
        args.watchman_bin
    );
    let k = testkit::kube::KubeEnv::new("bench", 0).await;
    eprintln!("creating {} simulated spot nodes", args.nodes);
    let node_started = Instant::now();
    let size = testkit::kube::NodeSize {
        pods: 500,
        ..testkit::kube::NodeSize::default()
    };
    k.create_nodes(args.nodes, &format!("{}-n", k.tag), &size)
        .await;
    eprintln!("  ready in {:.1?}", node_started.elapsed());
    let redis = testkit::RedisServer::start();
    let _ = redis_cli(
        &redis.url(),
        &["CONFIG", "SET", "slowlog-log-slower-than", "2000"],
    );
    let free = args.warm * 3 / 5;
    let pro = args.warm - free;
    let plans = k.write_plans(&format!("{}\n{}", k.plan("free", free), k.plan("pro", pro)));

    // Beside the control plane's logs, which with-kube-cluster.sh keeps when the run fails.
    let logs = std::env::var("NBP_KUBE_RUN")
        .map(|run| std::path::PathBuf::from(run).join("logs"))
        .unwrap_or_else(|_| k.dir.0.clone());
    let spawn = |instance: &str| {
        let mut a = k.args(&plans, &redis.url(), instance, API_TOKEN);
        a.extend(
            [
                "--pod-create-rate",
                &args.create_rate.to_string(),
                "--max-concurrent-starts",
                "64",
                "--reconcile-interval",
                "250ms",
                "--activity-interval",
                "60s",
                "--lease-ttl",
                "5s",
            ]
            .map(str::to_owned),
        );
        // Warnings only, but the line with the gRPC address (per-Allocate logs would
        // measure the log file).
        WatchmanProcess::spawn(
            std::path::Path::new(&args.watchman_bin),
            &a,
            logs.join(format!("watchman-{instance}.log")),
            "warn,watchman=info,watchman::service=warn,watchman::grpc=warn",
        )
    };
    let replicas = [spawn("replica-a"), spawn("replica-b")];
    let mut clients = Vec::new();
    for r in &replicas {
        let addr = r.grpc_addr().await;
        // Several HTTP/2 connections per replica, as a product backend's pool would have.
        for _ in 0..4 {
            clients.push(watchman_client(addr).await?);
        }
    }
    let probe = clients[0].clone();
    let cpu = CpuMeter::new(&[
        ("redis", redis.pid()),
        ("watchman-a", replicas[0].pid()),
        ("watchman-b", replicas[1].pid()),
    ]);
    if let Some(cpus) = &args.control_plane_cpus {
        cpu.pin(cpus, &args.own_cpus)?;
        eprintln!(
            "control plane pinned to CPUs {cpus}; Watchman, Redis and the driver to {}",
            args.own_cpus
        );
    }
    let mut problems = Vec::new();
    let mut list_retries = 0;

    eprintln!(
        "filling {} warm pods ({free} free, {pro} pro) at up to {}/s",
        args.warm, args.create_rate
    );
    let before = cpu.sample();
    let fill = wait_warm(
        &probe,
        args.warm,
        Duration::from_secs(1800),
        &mut list_retries,
    )
    .await;
    let fill_cpu = cpu.since(&before);
    let mem_full: Vec<(f64, f64)> = replicas.iter().map(|r| memory(r.pid())).collect();
    eprintln!("  fill: {fill:.1?}; cores used: {fill_cpu}; memory {mem_full:?}");
    let fill = match fill {
        Ok(d) => d,
        Err(e) => anyhow::bail!("the pools never filled: {e}; logs in {}", logs.display()),
    };

    let mut rows = Vec::new();
    let loads = args
        .concurrency
        .iter()
        .map(|c| (format!("concurrency {c}"), Some(*c), 0.0))
        .chain(
            args.rate
                .iter()
                .map(|r| (format!("{r:.0}/s offered"), None, *r)),
        );
    for (label, concurrency, rate) in loads {
        let tag = label.replace([' ', '/'], "-");
        let label = if args.hold_control_plane {
            format!("{label}, control plane held")
        } else {
            label
        };
        eprintln!("{} Allocates, {label}", args.allocations);
        let before = cpu.sample();
        let _ = redis_slow(&redis.url());
        let mut served_before = Vec::new();
        for r in &replicas {
            served_before.push(served_buckets(r).await);
        }
        let held = if args.hold_control_plane {
            Some(Held::new(cpu.control_plane())?)
        } else {
            None
        };
        let b = match concurrency {
            Some(c) => burst(&clients, c, args.allocations, &tag).await,
            None => open_loop(&clients, rate, args.allocations, &tag).await,
        };
        drop(held);
        let b = b?;
        let mut served = Vec::new();
        for (r, before) in replicas.iter().zip(&served_before) {
            served.push(served_quantiles(before, &served_buckets(r).await));
        }
        let served = format!(
            "{}; Redis commands over 2 ms: {}",
            served.join(" / "),
            redis_slow(&redis.url())
        );
        let refill = wait_warm(
            &probe,
            args.warm,
            Duration::from_secs(900),
            &mut list_retries,
        )
        .await;
        let used = cpu.since(&before);
        let throughput = b.ok as f64 / b.elapsed.as_secs_f64();
        eprintln!(
            "  {} ok ({} retried), {} failed in {:.2?}: {throughput:.0}/s, p50 {:.2} ms, p99 {:.2} ms; refill {refill:.1?}; cores used: {used}",
            b.ok,
            b.retried,
            b.failed,
            b.elapsed,
            pct(&b.latencies, 0.5),
            pct(&b.latencies, 0.99)
        );
        if b.failed > 0 {
            problems.push(format!("{label}: {} Allocates failed", b.failed));
        }
        if let Err(e) = &refill {
            problems.push(format!("{label}: pools not refilled: {e}"));
        }
        eprintln!("  served in (replica a / b): {served}; {}", b.stalls);
        rows.push((label, b, refill, used, served));
    }
    let (_, allocated) = warm_total(&probe, &mut list_retries)
        .await
        .unwrap_or_default();
    let mem_end: Vec<(f64, f64)> = replicas.iter().map(|r| memory(r.pid())).collect();

    println!(
        "\n{} simulated nodes; pools of {} warm pods ({free} free + {pro} pro); two replicas, Redis.\n",
        args.nodes, args.warm
    );
    println!(
        "Fill from empty: {:.1} s ({:.0} pods/s; --pod-create-rate {}). Cores used meanwhile: {fill_cpu}\n",
        fill.as_secs_f64(),
        f64::from(args.warm) / fill.as_secs_f64(),
        args.create_rate
    );
    println!(
        "| load | Allocates | retried | failed | throughput | p50 | p99 | max | pools refilled in |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (c, b, refill, _, _) in &rows {
        println!(
            "| {c} | {} | {} | {} | {:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            b.ok,
            b.retried,
            b.failed,
            b.ok as f64 / b.elapsed.as_secs_f64(),
            pct(&b.latencies, 0.5),
            pct(&b.latencies, 0.99),
            pct(&b.latencies, 1.0),
            refill
                .as_ref()
                .map_or_else(|e| e.clone(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
    }
    println!("\nCores used during each load and its refill:");
    for (c, _, _, used, _) in &rows {
        println!("- {c}: {used}");
    }
    println!(
        "\nWhere the time went: Allocates served by each replica and \
         the bucket bounds of their p50 and p99 inside it (its own histogram), and the slowest 50 ms windows of each load:"
    );
    for (c, b, _, _, served) in &rows {
        println!("- {c}: served in {served}; {}", b.stalls);
    }
    println!(
        "\nWatchman memory (RSS, MiB) with {} warm pods: {}; at the end ({} warm + {allocated} allocated pods): {} (peaks {})",
        args.warm,
        mem_full
            .iter()
            .map(|m| format!("{:.1}", m.0))
            .collect::<Vec<_>>()
            .join(" / "),
        args.warm,
        mem_end
            .iter()
            .map(|m| format!("{:.1}", m.0))
            .collect::<Vec<_>>()
            .join(" / "),
        mem_end
            .iter()
            .map(|m| format!("{:.1}", m.1))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    println!("\nListPools calls retried (UNAVAILABLE): {list_retries}");
    for (name, r) in ["a", "b"].iter().zip(&replicas) {
        println!("Replica {name}: {}", replica_report(r).await);
    }
    if !problems.is_empty() {
        println!("\nWhat went wrong (Watchman's logs: {}):", logs.display());
        for p in &problems {
            println!("- {p}");
        }
    }
    drop(replicas);
    k.cleanup().await;
    anyhow::ensure!(
        problems.is_empty(),
        "{} problems (above); logs kept in {}",
        problems.len(),
        logs.display()
    );
    Ok(())
}
