//! Watchman's Kubernetes backend at cluster scale, against the local control plane (run it
//! through `scripts/with-kube-cluster.sh`; `make bench-kube` does): simulated spot nodes
//! (kwok), pools totalling thousands of warm pods, two Watchman replicas (release binaries,
//! as Watchman's service account with the deploy/ Role) sharing a real Redis.
//!
//! Measures the time for the pools to fill from empty, then for each concurrency level a burst
//! of Allocates for new documents (spread over both replicas): throughput, p50/p99 latency,
//! failures, and how long the pools take to refill; and each replica's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use loadtest::{API_TOKEN, WatchmanClient as Client, peak_rss_mib, rss_mib, watchman_client};
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

async fn warm_total(c: &mut Client) -> anyhow::Result<(u32, u32)> {
    let pools = c
        .list_pools(pb::ListPoolsRequest {})
        .await?
        .into_inner()
        .pools;
    Ok((
        pools.iter().map(|p| p.warm).sum(),
        pools.iter().map(|p| p.allocated).sum(),
    ))
}

/// Waits until the pools hold `warm` warm pods; the time it took.
async fn wait_warm(c: &mut Client, warm: u32, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = 0;
    loop {
        let (w, _) = warm_total(c).await?;
        if w >= warm {
            return Ok(started.elapsed());
        }
        if w / 500 != last / 500 {
            eprintln!("  {w} warm after {:.0?}", started.elapsed());
        }
        last = w;
        anyhow::ensure!(
            started.elapsed() < limit,
            "only {w} of {warm} warm after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Burst {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Burst {
    /// Sorts the outcomes of one load into latencies and failures (the first few are shown).
    fn of(outcomes: impl IntoIterator<Item = Result<Duration, String>>, elapsed: Duration) -> Self {
        let mut latencies = Vec::new();
        let mut failed = 0;
        for outcome in outcomes {
            match outcome {
                Ok(l) => latencies.push(l),
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
            elapsed,
            latencies,
        }
    }
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
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut c = clients[worker % clients.len()].clone();
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
                let r = c.allocate(request(&tag, i)).await;
                outcomes.push(r.map(|_| t.elapsed()).map_err(|s| s.to_string()));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::with_capacity(total);
    for t in tasks {
        outcomes.extend(t.await?);
    }
    Ok(Burst::of(outcomes, started.elapsed()))
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
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let permit = gate.clone().acquire_owned().await?;
        let mut c = clients[i % clients.len()].clone();
        let req = request(tag, i);
        tasks.push(tokio::spawn(async move {
            let r = c.allocate(req).await;
            drop(permit);
            r.map(|_| due.elapsed()).map_err(|s| s.to_string())
        }));
    }
    let mut outcomes = Vec::with_capacity(total);
    for t in tasks {
        outcomes.push(t.await?);
    }
    Ok(Burst::of(outcomes, started.elapsed()))
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
    let free = args.warm * 3 / 5;
    let pro = args.warm - free;
    let plans = k.write_plans(&format!("{}\n{}", k.plan("free", free), k.plan("pro", pro)));

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
            k.dir.0.join(format!("{instance}.log")),
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
    let mut probe = clients[0].clone();

    eprintln!(
        "filling {} warm pods ({free} free, {pro} pro) at up to {}/s",
        args.warm, args.create_rate
    );
    let fill = wait_warm(&mut probe, args.warm, Duration::from_secs(1800)).await?;
    let mem_full: Vec<(f64, f64)> = replicas.iter().map(|r| memory(r.pid())).collect();
    eprintln!("  filled in {fill:.1?}; memory {mem_full:?}");

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
        eprintln!("{} Allocates, {label}", args.allocations);
        let tag = label.replace([' ', '/'], "-");
        let b = match concurrency {
            Some(c) => burst(&clients, c, args.allocations, &tag).await?,
            None => open_loop(&clients, rate, args.allocations, &tag).await?,
        };
        let refill = wait_warm(&mut probe, args.warm, Duration::from_secs(1800)).await?;
        let throughput = b.ok as f64 / b.elapsed.as_secs_f64();
        eprintln!(
            "  {} ok, {} failed in {:.2?}: {throughput:.0}/s, p50 {:.2} ms, p99 {:.2} ms; refilled in {refill:.1?}",
            b.ok,
            b.failed,
            b.elapsed,
            pct(&b.latencies, 0.5),
            pct(&b.latencies, 0.99)
        );
        rows.push((label, b, refill));
    }
    let (_, allocated) = warm_total(&mut probe).await?;
    let mem_end: Vec<(f64, f64)> = replicas.iter().map(|r| memory(r.pid())).collect();

    println!(
        "\n{} simulated nodes; pools of {} warm pods ({free} free + {pro} pro); two replicas, Redis.\n",
        args.nodes, args.warm
    );
    println!(
        "Fill from empty: {:.1} s ({:.0} pods/s; --pod-create-rate {})\n",
        fill.as_secs_f64(),
        f64::from(args.warm) / fill.as_secs_f64(),
        args.create_rate
    );
    println!("| load | Allocates | failed | throughput | p50 | p99 | max | pools refilled in |");
    println!("|---|---|---|---|---|---|---|---|");
    for (c, b, refill) in &rows {
        println!(
            "| {c} | {} | {} | {:.0}/s | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} s |",
            b.ok,
            b.failed,
            b.ok as f64 / b.elapsed.as_secs_f64(),
            pct(&b.latencies, 0.5),
            pct(&b.latencies, 0.99),
            pct(&b.latencies, 1.0),
            refill.as_secs_f64()
        );
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
    drop(replicas);
    k.cleanup().await;
    Ok(())
}
