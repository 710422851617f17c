//! What the gateway costs, in one run (docs/benchmarks.md, "Gateway"):
//!
//! 1. `1+1` round trips against one Middleman and kernel three ways, interleaved round by round:
//!    direct to Middleman's `/ws`, through the gateway (`/pods/<pod>/ws`), and through
//!    configurable-http-proxy (JupyterHub's proxy, the anchor).
//! 2. 20 and 100 collaborators in one document, direct and through the gateway: one of them
//!    moves its cursor (presence updates fanned out to everyone: delivery latency and rate),
//!    then runs a cell that prints 20,000 lines (every client must get every line).
//! 3. Memory per idle WebSocket: 10,000 through one gateway to a set of Middlemen.
//!
//! Prints Markdown tables with the goals (stated, not asserted).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use doc_protocol::{ClientMessage, KernelState, ServerEvent};
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::{
    Chp, Gateway, Keys, Middleman, Ws, connect, cpu_secs, next_frame, raise_nofile, rss_mib,
    sample_peak_rss, tempdir,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The configurable-http-proxy version `scripts/bootstrap-bench.sh` installs.
const CHP_VERSION: &str = "5.3.0";

#[derive(Parser, Debug)]
struct Args {
    /// Which parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "exec,collab,idle"
    )]
    parts: Vec<Part>,
    /// Which paths to measure (CHP is measured in the execute round trip only).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,gateway,chp"
    )]
    targets: Vec<Target>,
    /// Measured round trips per target.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Unmeasured round trips per target first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Collaborator counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "20,100")]
    clients: Vec<usize>,
    /// Presence updates (cursor moves) the driving collaborator sends.
    #[arg(long, default_value_t = 1000)]
    edits: usize,
    /// Presence updates per second.
    #[arg(long, default_value_t = 200.0)]
    edit_rate: f64,
    /// Lines the flooding cell prints (`for i in range(N): print(i, flush=True)`).
    #[arg(long, default_value_t = 20_000)]
    lines: usize,
    /// A collaboration phase not finished by then is reported as not finished.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Idle WebSockets to hold open through the gateway (fewer if the open-files limit cannot
    /// hold two descriptors per connection in the gateway).
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Idle connections per Middleman (one document each; a document's default cap is 256).
    #[arg(long, default_value_t = 250)]
    idle_per_middleman: usize,
    /// Which WebSockets the idle connections open, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ws,yjs")]
    idle_endpoints: Vec<Endpoint>,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    gateway_bin: PathBuf,
    /// configurable-http-proxy (default: the one scripts/bootstrap-bench.sh installs).
    #[arg(long)]
    chp_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Exec,
    Collab,
    Idle,
}

/// Middleman's WebSocket endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Endpoint {
    /// `/ws`: the document protocol (JSON and Yjs), as the web client uses it.
    Ws,
    /// `/yjs/<doc>`: Yjs frames only, as stock Yjs providers use it.
    Yjs,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Ws => "ws",
            Endpoint::Yjs => "yjs/bench",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum Target {
    Direct,
    Gateway,
    Chp,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct to Middleman",
            Target::Gateway => "through the gateway",
            Target::Chp => "through configurable-http-proxy",
        }
    }
}

/// A step that should take milliseconds.
const STEP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nofile = raise_nofile().context("raising the open-files limit")?;
    let chp_bin = match &args.chp_bin {
        Some(p) => p.clone(),
        None => PathBuf::from(
            std::env::var("NBP_CACHE").context("NBP_CACHE not set: run through `make bench`")?,
        )
        .join(format!(
            "chp/{CHP_VERSION}/node_modules/.bin/configurable-http-proxy"
        )),
    };
    let scratch = tempdir("gateway-bench")?;
    let keys = Keys::generate(&scratch.join("keys"))?;
    let has = |t| args.targets.contains(&t);
    if has(Target::Gateway) && !args.gateway_bin.exists() {
        bail!(
            "{} missing: cargo build --release -p gateway (or --targets direct,chp)",
            args.gateway_bin.display()
        );
    }
    println!("# Gateway benchmark\n");
    println!(
        "Open-files limit raised to {nofile} (children inherit it); {} cores.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let bins = Bins {
        middleman: &args.middleman_bin,
        gateway: &args.gateway_bin,
        chp: &chp_bin,
    };
    if args.parts.contains(&Part::Exec) {
        let r = exec_part(&args, &bins, &scratch, &keys)
            .await
            .context("execute round trips")?;
        report_exec(&args, &r);
    }
    if args.parts.contains(&Part::Collab) {
        let mut runs = Vec::new();
        for (k, &n) in args.clients.iter().enumerate() {
            // Alternate which path goes first, so a drift of the machine hits both.
            let mut order: Vec<Target> = [Target::Direct, Target::Gateway]
                .into_iter()
                .filter(|t| has(*t))
                .collect();
            if k % 2 == 1 {
                order.reverse();
            }
            for t in order {
                runs.push(
                    collab_run(&args, &bins, &scratch, &keys, n, t)
                        .await
                        .with_context(|| format!("{n} collaborators {}", t.name()))?,
                );
            }
        }
        report_collab(&args, &runs);
    }
    if args.parts.contains(&Part::Idle) {
        let r = idle_part(&args, &bins, &scratch, &keys, nofile)
            .await
            .context("idle connections")?;
        report_idle(&r);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

struct Bins<'a> {
    middleman: &'a Path,
    gateway: &'a Path,
    chp: &'a Path,
}

/// Flags that keep the gateway's connection limits out of the way of one load generator on one
/// address.
fn gateway_limits(n: usize) -> Vec<String> {
    let n = (n + 1000).to_string();
    [
        "--max-connections-per-user",
        "--max-connections-per-address",
        "--max-connections",
    ]
    .into_iter()
    .flat_map(|f| [f.to_owned(), n.clone()])
    .collect()
}

async fn start_gateway(
    bins: &Bins<'_>,
    keys: &Keys,
    routes: &[(String, String)],
    max: usize,
) -> anyhow::Result<Gateway> {
    let extra = gateway_limits(max);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    Gateway::start(
        bins.gateway,
        "127.0.0.1:0",
        &keys.public_pem(),
        routes,
        &extra,
    )
    .await
}

/// `count` gateway replicas sharing one port (`--reuse-port`; the kernel spreads connections
/// over them).
async fn start_replicas(
    bins: &Bins<'_>,
    keys: &Keys,
    routes: &[(String, String)],
    max: usize,
    count: usize,
) -> anyhow::Result<Vec<Gateway>> {
    let listen = format!("127.0.0.1:{}", loadtest::free_port()?);
    let mut extra = gateway_limits(max);
    extra.push("--reuse-port".into());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut replicas = Vec::with_capacity(count);
    for _ in 0..count {
        replicas
            .push(Gateway::start(bins.gateway, &listen, &keys.public_pem(), routes, &extra).await?);
    }
    Ok(replicas)
}

/// The document WebSocket of `mm` by path `t`.
fn url(
    t: Target,
    mm: &Middleman,
    token: &str,
    gateway: Option<&Gateway>,
    chp: Option<&Chp>,
) -> anyhow::Result<String> {
    endpoint_url(t, mm, Endpoint::Ws, token, gateway, chp)
}

/// Middleman's WebSocket `endpoint` of `mm` by path `t`.
fn endpoint_url(
    t: Target,
    mm: &Middleman,
    endpoint: Endpoint,
    token: &str,
    gateway: Option<&Gateway>,
    chp: Option<&Chp>,
) -> anyhow::Result<String> {
    let path = endpoint.path();
    Ok(match t {
        Target::Direct => format!("ws://{}/{path}?token={token}", mm.addr),
        Target::Gateway => gateway.context("no gateway")?.url(&mm.pod, path, token),
        Target::Chp => chp.context("no proxy")?.url(&mm.pod, path, token),
    })
}

// ---- 1. Execute round trips -------------------------------------------------------------------

struct ExecResult {
    targets: Vec<(Target, Vec<Duration>)>,
    middleman_rss: Option<f64>,
    gateway_rss: Option<f64>,
    chp_rss: Option<f64>,
    elapsed: Duration,
}

async fn exec_part(
    args: &Args,
    bins: &Bins<'_>,
    scratch: &Path,
    keys: &Keys,
) -> anyhow::Result<ExecResult> {
    let mm = Middleman::start_with(bins.middleman, scratch, keys, "exec", &[]).await?;
    mm.wait_ready().await?;
    let upstream = format!("http://{}", mm.addr);
    let gateway = if args.targets.contains(&Target::Gateway) {
        let routes = [(mm.pod.clone(), upstream.clone())];
        Some(start_gateway(bins, keys, &routes, 16).await?)
    } else {
        None
    };
    let chp = if args.targets.contains(&Target::Chp) {
        let chp = Chp::start(bins.chp).await?;
        chp.add_route(&format!("/pods/{}", mm.pod), &upstream)
            .await?;
        Some(chp)
    } else {
        None
    };
    // One connection per path, all in the same document: every execution's events reach all of
    // them, so each path carries the same traffic whichever is being measured.
    let mut conns = Vec::new();
    for &t in &args.targets {
        let token = mm.token(&format!("exec-{t:?}")).await?;
        let mut ws = connect(&url(t, &mm, &token, gateway.as_ref(), chp.as_ref())?)
            .await
            .with_context(|| format!("connecting {}", t.name()))?;
        loop {
            if let ServerEvent::Welcome { snapshot, .. } = next_frame(&mut ws).await?.event {
                let idle = snapshot.is_some_and(|s| s.kernel_state == KernelState::Idle);
                if !idle {
                    bail!("kernel not idle at welcome");
                }
                break;
            }
        }
        conns.push((t, ws));
    }
    let k = conns.len();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(args.iterations); k];
    let mut n = 0u64;
    let start = Instant::now();
    for round in 0..args.warmup + args.iterations {
        // Rotate who goes first each round (ABC, BCA, CAB, ...).
        for j in 0..k {
            let i = (round + j) % k;
            n += 1;
            let t0 = Instant::now();
            let id = tokio::time::timeout(STEP, round_trip(&mut conns[i].1, n))
                .await
                .context("round trip timed out")??;
            let took = t0.elapsed();
            if round >= args.warmup {
                samples[i].push(took);
            }
            // Outside the clock: the other paths read the same execution's events.
            for (o, (_, ws)) in conns.iter_mut().enumerate() {
                if o != i {
                    tokio::time::timeout(STEP, drain_until_finished(ws, &id))
                        .await
                        .context("draining timed out")??;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    let result = ExecResult {
        targets: conns.iter().map(|(t, _)| *t).zip(samples).collect(),
        middleman_rss: rss_mib(mm.pid),
        gateway_rss: gateway.as_ref().and_then(|g| rss_mib(g.pid)),
        chp_rss: chp.as_ref().and_then(|c| rss_mib(c.pid)),
        elapsed,
    };
    drop(conns);
    if let Some(g) = gateway {
        g.stop().await;
    }
    if let Some(c) = chp {
        c.stop().await;
    }
    mm.stop().await;
    Ok(result)
}

/// Sends `1+1` and waits for its `execution_finished`; returns the execution's id.
async fn round_trip(ws: &mut Ws, n: u64) -> anyhow::Result<String> {
    let rid = n.to_string();
    send(
        ws,
        &ClientMessage::Execute {
            code: "1+1".into(),
            request_id: Some(rid.clone()),
            stop_on_error: true,
        },
    )
    .await?;
    let mut id = None;
    loop {
        match next_frame(ws).await?.event {
            ServerEvent::ExecutionQueued {
                execution,
                request_id: Some(r),
            } if r == rid => id = Some(execution.id),
            ServerEvent::ExecutionFinished { execution_id, .. }
                if Some(&execution_id) == id.as_ref() =>
            {
                return Ok(execution_id);
            }
            ServerEvent::Error { message, .. } => bail!("refused: {message}"),
            _ => {}
        }
    }
}

async fn drain_until_finished(ws: &mut Ws, id: &str) -> anyhow::Result<()> {
    loop {
        if let ServerEvent::ExecutionFinished { execution_id, .. } = next_frame(ws).await?.event
            && execution_id == id
        {
            return Ok(());
        }
    }
}

async fn send(ws: &mut Ws, m: &ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(serde_json::to_string(m)?)).await?;
    Ok(())
}

// ---- 2. Collaborators -------------------------------------------------------------------------

struct CollabRun {
    clients: usize,
    target: Target,
    /// Presence updates at the set rate.
    paced: PresenceStats,
    /// Presence updates sent back to back.
    burst: PresenceStats,
    /// Per client, when it had the cell's every line (`None`: incomplete or late).
    flood: Vec<Option<Duration>>,
    gateway_cpu: Option<f64>,
    gateway_peak_rss: Option<f64>,
    middleman_cpu: f64,
}

async fn collab_run(
    args: &Args,
    bins: &Bins<'_>,
    scratch: &Path,
    keys: &Keys,
    n: usize,
    t: Target,
) -> anyhow::Result<CollabRun> {
    let pod = format!("collab-{n}-{t:?}").to_lowercase();
    let mm = Middleman::start_with(bins.middleman, scratch, keys, &pod, &[]).await?;
    mm.wait_ready().await?;
    let gateway = if t == Target::Gateway {
        let routes = [(mm.pod.clone(), format!("http://{}", mm.addr))];
        Some(start_gateway(bins, keys, &routes, n).await?)
    } else {
        None
    };
    let mut clients = Vec::with_capacity(n);
    let mut cell = None;
    let mut driver_id = 0;
    for i in 0..n {
        let token = mm.token(&format!("user{i}")).await?;
        let mut ws = connect(&url(t, &mm, &token, gateway.as_ref(), None)?).await?;
        loop {
            if let ServerEvent::Welcome {
                client, snapshot, ..
            } = next_frame(&mut ws).await?.event
            {
                if i == 0 {
                    driver_id = client;
                    cell = snapshot.and_then(|s| s.cells.first().map(|c| c.id.clone()));
                }
                break;
            }
        }
        clients.push(ws);
    }
    let cell = cell.context("no cell in the welcome")?;
    // Everyone reads past the others' joins before the clock starts.
    for ws in &mut clients {
        barrier(ws).await?;
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let gw_pid = gateway.as_ref().map(|g| g.pid);
    let gw_cpu0 = gw_pid.and_then(cpu_secs);
    let mm_cpu0 = cpu_secs(mm.pid).unwrap_or(0.0);
    let stop = CancellationToken::new();
    let gw_peak = gw_pid.map(|pid| sample_peak_rss(pid, stop.clone()));

    // Presence: the driver moves its cursor `edits` times, paced, then as fast as it can; the
    // others time each move from its send (stamped in the cursor) to its arrival.
    let (clients, paced) = presence_phase(
        clients,
        driver_id,
        &cell,
        (0, args.edits),
        Some(args.edit_rate),
        timeout,
    )
    .await
    .context("paced presence updates")?;
    let (mut clients, burst) = presence_phase(
        clients,
        driver_id,
        &cell,
        (args.edits, args.edits),
        None,
        timeout,
    )
    .await
    .context("a burst of presence updates")?;

    // The flood: one cell prints `lines` lines; every client must get every one.
    let code = format!("for i in range({}): print(i, flush=True)", args.lines);
    send(
        &mut clients[0],
        &ClientMessage::SetSource {
            cell_id: cell.clone(),
            source: code,
        },
    )
    .await?;
    let start = Instant::now();
    send(
        &mut clients[0],
        &ClientMessage::ExecuteCell {
            cell_id: cell.clone(),
            request_id: None,
            stop_on_error: true,
        },
    )
    .await?;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| {
            tokio::spawn(tokio::time::timeout(
                timeout,
                flood_reader(ws, cell.clone(), args.lines, start),
            ))
        })
        .collect();
    let mut flood = Vec::new();
    for r in readers {
        flood.push(match r.await {
            Ok(Ok(Ok(at))) => at,
            Ok(Ok(Err(e))) => {
                eprintln!("client failed: {e:#}");
                None
            }
            _ => None,
        });
    }
    let gateway_cpu = gw_pid.and_then(cpu_secs).zip(gw_cpu0).map(|(a, b)| a - b);
    let middleman_cpu = cpu_secs(mm.pid).unwrap_or(0.0) - mm_cpu0;
    stop.cancel();
    let gateway_peak_rss = match gw_peak {
        Some(h) => h.await.ok(),
        None => None,
    };
    if let Some(g) = gateway {
        g.stop().await;
    }
    mm.stop().await;
    Ok(CollabRun {
        clients: n,
        target: t,
        paced,
        burst,
        flood,
        gateway_cpu,
        gateway_peak_rss,
        middleman_cpu,
    })
}

/// Pings and reads until the pong: whatever was sent to `ws` before has been read.
async fn barrier(ws: &mut Ws) -> anyhow::Result<()> {
    send(ws, &ClientMessage::Ping { nonce: Some(7) }).await?;
    while !matches!(next_frame(ws).await?.event, ServerEvent::Pong { .. }) {}
    Ok(())
}

/// Nanoseconds since `epoch`, as stamped in a cursor.
fn stamp(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The stamp and number of a presence update from `driver`, if `event` is one.
fn moved(event: &ServerEvent, driver: u64) -> Option<(u64, u64)> {
    let ServerEvent::Presence(p) = event else {
        return None;
    };
    let c = p.cursor.as_ref().filter(|_| p.client == driver)?;
    Some((c["n"].as_u64()?, c["t"].as_u64()?))
}

/// What the collaborators saw of one phase of presence updates.
#[derive(Debug, Default)]
struct PresenceStats {
    /// Send to receipt, every update at every collaborator but the sender.
    latencies: Vec<Duration>,
    /// Updates that reached a collaborator only inside a resynchronisation snapshot.
    missed: usize,
    /// From the first update sent to the last one received anywhere.
    span: Duration,
}

/// The driver (`clients[0]`, connection `driver`) sends updates numbered `first..first + count`,
/// `rate` a second or back to back; returns the connections and what the others saw.
async fn presence_phase(
    mut clients: Vec<Ws>,
    driver: u64,
    cell: &str,
    (first, count): (usize, usize),
    rate: Option<f64>,
    timeout: Duration,
) -> anyhow::Result<(Vec<Ws>, PresenceStats)> {
    let epoch = Instant::now();
    let mut ws = clients.remove(0);
    let range = (first as u64, (first + count).saturating_sub(1) as u64);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(presence_reader(ws, driver, range, epoch)))
        .collect();
    let driving = drive_presence(&mut ws, cell, driver, range, rate, epoch);
    let (driven, readers) = tokio::join!(
        tokio::time::timeout(timeout, driving),
        tokio::time::timeout(timeout, futures_util::future::join_all(readers))
    );
    driven.context("not all sent in time")??;
    let readers = readers.context("not all delivered in time")?;
    let mut stats = PresenceStats::default();
    let mut clients = vec![ws];
    for r in readers {
        let r = r??;
        stats.latencies.extend(r.latencies);
        stats.missed += r.missed;
        stats.span = stats.span.max(r.last_at);
        clients.push(r.ws);
    }
    Ok((clients, stats))
}

/// Sends presence updates `first..=last`, `rate` a second or back to back, reading (and
/// dropping) what comes back meanwhile; returns once its own last update has come back.
async fn drive_presence(
    ws: &mut Ws,
    cell: &str,
    me: u64,
    (first, last): (u64, u64),
    rate: Option<f64>,
    epoch: Instant,
) -> anyhow::Result<()> {
    let mut tick = rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r)));
    let mut next = first;
    loop {
        let pace = async {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
        };
        tokio::select! {
            () = pace, if next <= last => {
                let cursor = serde_json::json!({ "n": next, "t": stamp(epoch) });
                send(ws, &ClientMessage::Presence { cell_id: Some(cell.to_owned()), cursor: Some(cursor) }).await?;
                next += 1;
            }
            frame = next_frame(ws) => {
                let event = frame?.event;
                if moved(&event, me).is_some_and(|(n, _)| n == last) {
                    return Ok(());
                }
                if let ServerEvent::Welcome { snapshot: Some(s), .. } = &event
                    && s.presence.iter().any(|p| p.client == me && p.cursor.as_ref().is_some_and(|c| c["n"] == last))
                {
                    return Ok(());
                }
            }
        }
    }
}

struct PresenceSeen {
    ws: Ws,
    latencies: Vec<Duration>,
    missed: usize,
    last_at: Duration,
}

async fn presence_reader(
    mut ws: Ws,
    driver: u64,
    (first, last): (u64, u64),
    epoch: Instant,
) -> anyhow::Result<PresenceSeen> {
    let mut latencies = Vec::new();
    let mut next = first;
    let mut missed = 0;
    loop {
        let event = next_frame(&mut ws).await?.event;
        let now = stamp(epoch);
        let (n, t) = match &event {
            // Fell behind: the snapshot holds the driver's latest cursor; what came between
            // was never delivered as an event.
            ServerEvent::Welcome {
                snapshot: Some(s), ..
            } => match s
                .presence
                .iter()
                .find(|p| p.client == driver)
                .and_then(|p| p.cursor.as_ref())
                .and_then(|c| Some((c["n"].as_u64()?, c["t"].as_u64()?)))
            {
                Some(nt) => nt,
                None => continue,
            },
            e => match moved(e, driver) {
                Some(nt) => nt,
                None => continue,
            },
        };
        if n >= next {
            missed += (n - next) as usize;
            next = n + 1;
            latencies.push(Duration::from_nanos(now.saturating_sub(t)));
        }
        if n == last {
            return Ok(PresenceSeen {
                ws,
                latencies,
                missed,
                last_at: Duration::from_nanos(now),
            });
        }
    }
}

/// When this client had every line of the cell's run, in order, once (`None`: it did not).
async fn flood_reader(
    mut ws: Ws,
    cell: String,
    lines: usize,
    start: Instant,
) -> anyhow::Result<Option<Duration>> {
    let run = loadtest::read_cell_run(&mut ws, &cell, start).await?;
    if run.resynced {
        bail!("fell behind and was resynchronised");
    }
    let (complete, _) = loadtest::numbered_lines(&run.text, lines);
    Ok(complete.then_some(run.at))
}

// ---- 3. Idle connections ----------------------------------------------------------------------

struct IdleResult {
    endpoint: Endpoint,
    proxy: Target,
    connections: usize,
    /// Proxy processes holding them (gateway replicas sharing a port).
    processes: usize,
    middlemen: usize,
    per_middleman: usize,
    proxy_before: f64,
    proxy_after: f64,
    middlemen_before: f64,
    middlemen_after: f64,
    open_secs: f64,
    closed_early: usize,
    nofile: u64,
}

/// Middlemen for the idle connections, `per` connections each at most.
async fn idle_fleet(
    bins: &Bins<'_>,
    scratch: &Path,
    keys: &Keys,
    count: usize,
    per: usize,
) -> anyhow::Result<Vec<Middleman>> {
    let max_clients = (per + 16).to_string();
    let mut middlemen = Vec::with_capacity(count);
    // A few at a time: each brings up a kernel.
    for chunk in (0..count).collect::<Vec<_>>().chunks(4) {
        let started = futures_util::future::try_join_all(chunk.iter().map(|i| {
            let pod = format!("idle-{i}");
            let max_clients = max_clients.clone();
            async move {
                Middleman::start_with(
                    bins.middleman,
                    scratch,
                    keys,
                    &pod,
                    &["--max-clients", &max_clients],
                )
                .await
            }
        }))
        .await?;
        middlemen.extend(started);
    }
    for mm in &middlemen {
        mm.wait_ready().await?;
    }
    Ok(middlemen)
}

/// Idle connections direct (the Middlemen's share alone), then through the gateway, then
/// through configurable-http-proxy for comparison, to the same Middlemen.
async fn idle_part(
    args: &Args,
    bins: &Bins<'_>,
    scratch: &Path,
    keys: &Keys,
    nofile: u64,
) -> anyhow::Result<Vec<IdleResult>> {
    // A proxy holds two descriptors per relayed connection (client and upstream); keep some for
    // its listeners, runtime and logs. Gateway replicas share the load past that;
    // configurable-http-proxy is one process, so it gets what fits.
    let fits = usize::try_from(nofile)
        .unwrap_or(usize::MAX)
        .saturating_sub(200)
        / 2;
    let total = args.idle_connections;
    let per = args.idle_per_middleman.max(1);
    let count = total.div_ceil(per);
    let started = Instant::now();
    let middlemen = idle_fleet(bins, scratch, keys, count, per).await?;
    eprintln!(
        "idle: {count} Middlemen ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let routes: Vec<(String, String)> = middlemen
        .iter()
        .map(|m| (m.pod.clone(), format!("http://{}", m.addr)))
        .collect();
    let mut results = Vec::new();
    let paths = args.idle_endpoints.iter().flat_map(|e| {
        [Target::Direct, Target::Gateway, Target::Chp]
            .into_iter()
            .filter(|t| args.targets.contains(t))
            .map(move |t| (*e, t))
    });
    for (endpoint, t) in paths {
        let (n, gateways, chp) = match t {
            Target::Direct => (total, Vec::new(), None),
            Target::Gateway => {
                let replicas = total.div_ceil(fits.max(1));
                let gateways = start_replicas(bins, keys, &routes, total, replicas).await?;
                (total, gateways, None)
            }
            Target::Chp => {
                let chp = Chp::start(bins.chp).await?;
                for (pod, upstream) in &routes {
                    chp.add_route(&format!("/pods/{pod}"), upstream).await?;
                }
                (total.min(fits), Vec::new(), Some(chp))
            }
        };
        let pids: Vec<u32> = gateways
            .iter()
            .map(|g| g.pid)
            .chain(chp.as_ref().map(|c| c.pid))
            .collect();
        let mut urls = Vec::with_capacity(n);
        for i in 0..n {
            let mm = &middlemen[i % count];
            let token = mm.token(&format!("idle{i}")).await?;
            urls.push(endpoint_url(
                t,
                mm,
                endpoint,
                &token,
                gateways.first(),
                chp.as_ref(),
            )?);
        }
        let r = hold_idle(&pids, &middlemen, urls)
            .await
            .with_context(|| format!("idle connections {}", t.name()))?;
        results.push(IdleResult {
            endpoint,
            proxy: t,
            connections: n,
            processes: pids.len(),
            middlemen: count,
            per_middleman: per,
            proxy_before: r.0,
            proxy_after: r.1,
            middlemen_before: r.2,
            middlemen_after: r.3,
            open_secs: r.4,
            closed_early: r.5,
            nofile,
        });
        for g in gateways {
            g.stop().await;
        }
        if let Some(c) = chp {
            c.stop().await;
        }
        // Let the Middlemen see everyone leave before the next path's turn.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for mm in middlemen {
        mm.stop().await;
    }
    Ok(results)
}

/// Opens every one of `urls`, reads (and drops) what arrives until nothing has for two seconds,
/// then reads the RSS of the proxy processes `pids` and of the Middlemen (each summed); closes
/// them all. Returns (proxy RSS before, after, Middlemen RSS before, after, seconds to open,
/// closed early).
async fn hold_idle(
    pids: &[u32],
    middlemen: &[Middleman],
    urls: Vec<String>,
) -> anyhow::Result<(f64, f64, f64, f64, f64, usize)> {
    let mm_rss = || middlemen.iter().filter_map(|m| rss_mib(m.pid)).sum::<f64>();
    let proxy_rss =
        || -> anyhow::Result<f64> { pids.iter().map(|p| rss_mib(*p).context("proxy RSS")).sum() };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let proxy_before = proxy_rss()?;
    let middlemen_before = mm_rss();
    let frames = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let total = urls.len();
    let opened = Instant::now();
    let mut opening = futures_util::stream::iter(urls)
        .map(|u| async move { connect(&u).await })
        .buffer_unordered(32);
    let mut tasks = Vec::with_capacity(total);
    while let Some(ws) = opening.next().await {
        let mut ws = ws.context("opening an idle connection")?;
        let (frames, closed, stop) = (frames.clone(), closed.clone(), stop.clone());
        // Read (and drop) whatever comes: the welcome, others joining, pings.
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    m = ws.next() => match m {
                        // Pings do not count: Middleman sends them every 20 s for ever.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(_)) => { frames.fetch_add(1, Ordering::Relaxed); }
                        _ => { closed.fetch_add(1, Ordering::Relaxed); return; }
                    },
                }
            }
        }));
        if tasks.len() % 2000 == 0 {
            eprintln!("idle: {} connections open", tasks.len());
        }
    }
    let open_secs = opened.elapsed().as_secs_f64();
    // Settle: until nothing has arrived for two seconds (the joins' presence has been fanned out).
    let mut seen = frames.load(Ordering::Relaxed);
    let settle = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = frames.load(Ordering::Relaxed);
        if now == seen || settle.elapsed() > Duration::from_secs(120) {
            break;
        }
        seen = now;
    }
    let proxy_after = proxy_rss()?;
    let middlemen_after = mm_rss();
    let closed_early = closed.load(Ordering::Relaxed);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok((
        proxy_before,
        proxy_after,
        middlemen_before,
        middlemen_after,
        open_secs,
        closed_early,
    ))
}

// ---- Report -----------------------------------------------------------------------------------

/// The `p` quantile of sorted samples, ms (nearest rank).
fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn mean_ms(s: &[Duration]) -> f64 {
    s.iter().map(Duration::as_secs_f64).sum::<f64>() / s.len().max(1) as f64 * 1000.0
}

const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn report_exec(args: &Args, r: &ExecResult) {
    println!(
        "## Execute round trip of `1+1`\n\nOne Middleman and kernel; {} round trips per path after {} warm-up, the paths taking turns round by round ({:.1} s in all).\n",
        args.iterations,
        args.warmup,
        r.elapsed.as_secs_f64()
    );
    println!(
        "| path | p50 ms | p90 ms | p99 ms | p99.9 ms | mean ms | round trips/s (1/mean) | proxy RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut stats = std::collections::HashMap::new();
    for (t, s) in &r.targets {
        let mut s = s.clone();
        s.sort();
        let q: Vec<f64> = QUANTILES.iter().map(|(p, _)| pct(&s, *p)).collect();
        let mean = mean_ms(&s);
        let rss = match t {
            Target::Direct => None,
            Target::Gateway => r.gateway_rss,
            Target::Chp => r.chp_rss,
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {mean:.3} | {:.0} | {} |",
            t.name(),
            q[0],
            q[1],
            q[2],
            q[3],
            1000.0 / mean,
            rss.map_or("n/a".into(), |m| format!("{m:.1}"))
        );
        let mut all = q;
        all.push(mean);
        stats.insert(*t, all);
    }
    println!(
        "\nMiddleman RSS: {}.\n",
        r.middleman_rss
            .map_or("n/a".into(), |m| format!("{m:.1} MiB"))
    );
    let (Some(d), Some(g)) = (stats.get(&Target::Direct), stats.get(&Target::Gateway)) else {
        return;
    };
    println!("| goal | result |\n|---|---|");
    let added = g[0] - d[0];
    println!(
        "| gateway adds at most 0.1 ms at p50 | **{added:+.3} ms** ({:.3} vs {:.3}; {}) |",
        g[0],
        d[0],
        met(added <= 0.1)
    );
    let p99 = (g[2] / d[2] - 1.0) * 100.0;
    println!(
        "| gateway adds at most 5% at p99 | **{p99:+.1}%** ({:.3} vs {:.3} ms; {}) |",
        g[2],
        d[2],
        met(p99 <= 5.0)
    );
    if let Some(c) = stats.get(&Target::Chp) {
        let names = ["p50", "p90", "p99", "p99.9", "mean"];
        let ratios: Vec<String> = names
            .iter()
            .zip(c.iter().zip(g))
            .map(|(n, (c, g))| format!("{n} {:.2}x", c / g))
            .collect();
        let all = c.iter().zip(g).all(|(c, g)| c > g);
        println!(
            "| faster than configurable-http-proxy at every percentile (CHP / gateway) | **{}** ({}) |",
            ratios.join(", "),
            met(all)
        );
        let added: Vec<String> = names
            .iter()
            .zip(c.iter().zip(d))
            .map(|(n, (c, d))| format!("{n} {:+.3}", c - d))
            .collect();
        println!(
            "| (context) configurable-http-proxy's added ms vs direct | {} |",
            added.join(", ")
        );
        let gadded: Vec<String> = names
            .iter()
            .zip(g.iter().zip(d))
            .map(|(n, (g, d))| format!("{n} {:+.3}", g - d))
            .collect();
        println!(
            "| (context) the gateway's added ms vs direct | {} |",
            gadded.join(", ")
        );
    }
    println!();
}

fn report_collab(args: &Args, runs: &[CollabRun]) {
    println!(
        "## Collaborators\n\nPresence: one collaborator moves its cursor {} times at {}/s (paced), then {} times back to back (burst); every other one times each move from its send to its arrival (the send time travels in the cursor). Deliveries/s: updates received by all the others, from the first sent to the last received.\n",
        args.edits, args.edit_rate, args.edits
    );
    println!(
        "| clients | path | paced p50 ms | paced p99 ms | paced max ms | burst deliveries/s | burst p50 ms | burst p99 ms | missed (resynchronised) | gateway CPU s | gateway peak RSS MiB | Middleman CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let mut paced = r.paced.latencies.clone();
        paced.sort();
        let mut burst = r.burst.latencies.clone();
        burst.sort();
        let rate = burst.len() as f64 / r.burst.span.as_secs_f64().max(1e-9);
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {rate:.0} | {:.3} | {:.3} | {} | {} | {} | {:.2} |",
            r.clients,
            r.target.name(),
            pct(&paced, 0.5),
            pct(&paced, 0.99),
            pct(&paced, 1.0),
            pct(&burst, 0.5),
            pct(&burst, 0.99),
            r.paced.missed + r.burst.missed,
            r.gateway_cpu.map_or("n/a".into(), |c| format!("{c:.2}")),
            r.gateway_peak_rss
                .map_or("n/a".into(), |m| format!("{m:.1}")),
            r.middleman_cpu
        );
    }
    println!(
        "\nThen the driver runs `for i in range({}): print(i, flush=True)`; each client is done when it has every line, in order, once (CPU and RSS above cover both phases).\n",
        args.lines
    );
    println!(
        "| clients | path | clients with every line | p50 client done s | every client done s | lines delivered/s |"
    );
    println!("|---|---|---|---|---|---|");
    for r in runs {
        let mut done: Vec<Duration> = r.flood.iter().flatten().copied().collect();
        done.sort();
        let all = (done.len() == r.flood.len())
            .then(|| done.last().copied())
            .flatten();
        println!(
            "| {} | {} | {}/{} | {:.2} | {} | {} |",
            r.clients,
            r.target.name(),
            done.len(),
            r.flood.len(),
            pct(&done, 0.5) / 1000.0,
            all.map_or("never".into(), |d| format!("{:.2}", d.as_secs_f64())),
            all.map_or("n/a".into(), |d| format!(
                "{:.0}",
                (args.lines * r.clients) as f64 / d.as_secs_f64()
            )),
        );
    }
    println!();
}

fn report_idle(results: &[IdleResult]) {
    let Some(r) = results.first() else { return };
    println!(
        "## Idle connections\n\nIdle document WebSockets to {} Middlemen (at most {} each; each has a kernel), every endpoint and path in turn to the same Middlemen: `/ws` (the document protocol, as the web client; each join is announced to the document's other collaborators and the welcome lists them all) and `/yjs/bench` (Yjs frames only, a small opening). A proxy holds two descriptors per connection and the open-files limit is {}, so the gateway runs as replicas sharing one port (`--reuse-port`) when one cannot hold them all, and their RSS is summed; configurable-http-proxy is one process and gets what fits. Measured once nothing has arrived for two seconds (every join's presence fanned out). The Middlemen's added memory is theirs only in the first row: what they free afterwards is reused by the next rows.\n",
        r.middlemen, r.per_middleman, r.nofile
    );
    println!(
        "| endpoint | path | connections | proxy processes | opened in s | closed early | proxy RSS before MiB | after MiB | per 10,000 connections MiB | per connection KiB | Middlemen's added MiB (context) | Middlemen per connection KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let per = |r: &IdleResult, before: f64, after: f64| {
        let n = r.connections.max(1) as f64;
        (
            (after - before) / n * 10_000.0,
            (after - before) * 1024.0 / n,
        )
    };
    for r in results {
        let (p10k, pkib) = per(r, r.proxy_before, r.proxy_after);
        let (_, mkib) = per(r, r.middlemen_before, r.middlemen_after);
        let proxy = if r.proxy == Target::Direct {
            "n/a | n/a | n/a | n/a".to_owned()
        } else {
            format!(
                "{:.1} | {:.1} | {p10k:.1} | {pkib:.1}",
                r.proxy_before, r.proxy_after
            )
        };
        println!(
            "| `/{}` | {} | {} | {} | {:.1} | {} | {proxy} | {:.1} | {mkib:.1} |",
            r.endpoint.path(),
            r.proxy.name(),
            r.connections,
            r.processes,
            r.open_secs,
            r.closed_early,
            r.middlemen_after - r.middlemen_before,
        );
    }
    println!("\n| goal | result |\n|---|---|");
    for e in [Endpoint::Ws, Endpoint::Yjs] {
        let find = |t| results.iter().find(|r| r.proxy == t && r.endpoint == e);
        let Some(g) = find(Target::Gateway) else {
            continue;
        };
        let (g10k, gkib) = per(g, g.proxy_before, g.proxy_after);
        println!(
            "| gateway under 100 MiB per 10,000 idle connections (`/{}`) | **{g10k:.1} MiB** ({gkib:.1} KiB a connection; {}) |",
            e.path(),
            met(g10k < 100.0)
        );
        if let Some(c) = find(Target::Chp) {
            let (c10k, _) = per(c, c.proxy_before, c.proxy_after);
            println!(
                "| (context) configurable-http-proxy / gateway, memory per connection (`/{}`) | {:.1}x |",
                e.path(),
                c10k / g10k
            );
        }
    }
    println!();
}
