//! Watchman Allocate latency with the Redis store while the local pool is warm, at concurrency 1
//! and 16, and the time from Allocate to the first executed `1+1` of a new document.
//!
//! Watchman runs in this process (its pods are real Middleman + ipykernel processes); a real
//! `redis-server` is started on a free port. Every new-document Allocate consumes a warm pod, so
//! samples come in rounds of the pool size, with a refill between rounds.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use watchman_proto::v1 as pb;

#[derive(Parser, Debug)]
struct Args {
    /// Warm pods per round.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Rounds per concurrency level.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Repeated Allocates of existing documents per concurrency level.
    #[arg(long, default_value_t = 2000)]
    existing: u32,
    /// New documents timed from Allocate to their first result.
    #[arg(long, default_value_t = 10)]
    first_results: u32,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: String,
}

use loadtest::{API_TOKEN as TOKEN, WatchmanClient as Client};

fn req(doc: &str) -> pb::AllocateRequest {
    pb::AllocateRequest {
        document_id: doc.into(),
        plan: "bench".into(),
        user_id: "u".into(),
        wait_ms: 100,
        ..Default::default()
    }
}

async fn wait_warm(c: &mut Client, n: u32) -> anyhow::Result<()> {
    let (within, every) = (Duration::from_secs(600), Duration::from_millis(200));
    loadtest::wait_pool(c, within, every, |p| p.warm >= n).await
}

async fn run_concurrent(
    c: &Client,
    docs: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let results = futures_util::stream::iter(docs.into_iter().map(|d| {
        let mut c = c.clone();
        async move {
            let t = Instant::now();
            c.allocate(req(&d)).await.map(|_| t.elapsed())
        }
    }))
    .buffer_unordered(concurrency)
    .collect::<Vec<_>>()
    .await;
    results
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from))
        .collect()
}

fn summary(name: &str, mut s: Vec<Duration>, wall: Option<Duration>) {
    s.sort();
    let p = |q: f64| {
        s.get(((s.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let rate = wall.map_or("".into(), |w| {
        format!("{:.0}", s.len() as f64 / w.as_secs_f64())
    });
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {rate} |",
        s.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

async fn first_result(a: &pb::Allocation) -> anyhow::Result<()> {
    use doc_protocol::{ClientMessage, ServerEvent, ServerFrame};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("{}?token={}", a.websocket_url, a.token);
    let start = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    let connected = start.elapsed();
    let m = ClientMessage::Execute {
        code: "1+1".into(),
        request_id: None,
        stop_on_error: true,
    };
    ws.send(Message::text(serde_json::to_string(&m)?)).await?;
    loop {
        let Some(msg) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await? else {
            anyhow::bail!("closed")
        };
        if let Message::Text(t) = msg? {
            let f: ServerFrame = serde_json::from_str(&t)?;
            if matches!(f.event, ServerEvent::ExecutionFinished { .. }) {
                eprintln!(
                    "first result: websocket connect {connected:?}, then execute {:?}",
                    start.elapsed() - connected
                );
                return Ok(());
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use clap::Parser as _;
    let args = Args::parse();
    let redis = testkit::RedisServer::start();
    let dir =
        std::env::temp_dir().join(format!("allocate-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let plans = dir.join("plans.toml");
    std::fs::write(
        &plans,
        format!(
            "[plans.bench]\nwarm = {{ ratio = 0.0, min = {0}, max = {0} }}\n",
            args.pool
        ),
    )?;
    let key = dir.join("key.pem");
    std::fs::write(&key, session_token::SigningKey::generate().to_pem()?)?;
    let pool_id = format!("bench-{}", std::process::id());
    let wargs = watchman::Args::try_parse_from([
        "watchman",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--plans",
        &plans.display().to_string(),
        "--signing-key",
        &key.display().to_string(),
        "--api-token",
        TOKEN,
        "--store",
        &redis.url(),
        "--redis-prefix",
        "bench:",
        "--middleman-bin",
        &args.middleman_bin,
        "--local-root",
        &dir.join("pods").display().to_string(),
        "--pool-id",
        &pool_id,
        "--reconcile-interval",
        "100ms",
        "--max-concurrent-starts",
        "4",
    ])?;
    let w = watchman::start(wargs).await.context("starting watchman")?;
    let mut c = loadtest::watchman_client(w.grpc_addr).await?;

    println!(
        "Watchman Allocate, Redis store, local backend, warm pool of {} (pods are real Middleman + ipykernel):\n",
        args.pool
    );
    println!("| case | samples | p50 ms | p99 ms | max ms | allocations/s |");
    println!("|---|---|---|---|---|---|");
    let mut n = 0u32;
    let mut first = Vec::new();
    for concurrency in [1usize, 16] {
        let mut samples = Vec::new();
        let mut wall = Duration::ZERO;
        for _ in 0..args.rounds {
            wait_warm(&mut c, args.pool).await?;
            let docs: Vec<String> = (0..args.pool)
                .map(|_| {
                    n += 1;
                    format!("doc-{n}")
                })
                .collect();
            let t = Instant::now();
            samples.extend(run_concurrent(&c, docs.clone(), concurrency).await?);
            wall += t.elapsed();
            for d in docs {
                c.release(pb::ReleaseRequest { document_id: d }).await?;
            }
        }
        summary(
            &format!("new document, warm pod, concurrency {concurrency}"),
            samples,
            Some(wall),
        );
    }
    // Allocate -> first result of a new document, each with the pool full and quiet (no pod
    // starting next to it on this 2-core machine).
    for _ in 0..args.first_results {
        wait_warm(&mut c, args.pool).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        n += 1;
        let t = Instant::now();
        let a = c.allocate(req(&format!("doc-{n}"))).await?.into_inner();
        first_result(&a).await?;
        first.push(t.elapsed());
        c.release(pb::ReleaseRequest {
            document_id: a.document_id,
        })
        .await?;
    }
    // Existing documents: the idempotent path (one Lua call plus a token).
    wait_warm(&mut c, 2).await?;
    c.allocate(req("existing-doc")).await?;
    for concurrency in [1usize, 16] {
        let docs = vec!["existing-doc".to_owned(); args.existing as usize];
        let t = Instant::now();
        let s = run_concurrent(&c, docs, concurrency).await?;
        summary(
            &format!("existing document, concurrency {concurrency}"),
            s,
            Some(t.elapsed()),
        );
    }
    summary("Allocate to first `1+1` result, new document", first, None);

    let wm = w.watchman.clone();
    w.stop().await;
    wm.delete_all_pods().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
