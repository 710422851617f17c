//! One-shot runs (docs/jobs.md) on the local backend: Watchman in this process with a warm pool
//! of real Middleman + ipykernel pods.
//!
//! - latency: a one-line execution submitted with warm pods waiting (`SubmitExecution`, then
//!   `WatchRun` to `finished`), one at a time, p50 and p99 of submit to result;
//! - throughput: `--burst` runs submitted at once, the time until every one finished. Every run
//!   takes a fresh pod, so this measures how fast the host starts pods.
//!
//! Prints Markdown tables.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use watchman_proto::v1 as pb;

#[derive(Parser, Debug)]
struct Args {
    /// Runs measured one at a time.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Runs submitted at once for the throughput.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Warm pods of the plan.
    #[arg(long, default_value_t = 8)]
    warm: u32,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
}

type Jobs = pb::jobs_client::JobsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, loadtest::Bearer>,
>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = loadtest::tempdir("jobs-bench")?;
    let (w, mut c) = loadtest::local_watchman(
        &dir,
        &format!(
            "[plans.bench]\nwarm = {{ ratio = 0.0, min = {w}, max = {w} }}\n[plans.bench.jobs]\nconcurrency = {w}\nuser_concurrent_runs = 0\nuser_runs_per_day = 0\n",
            w = args.warm
        ),
        &args.middleman_bin,
        &["--checkpoint-store", "none", "--delete-pods-on-exit"],
    )
    .await?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", w.grpc_addr))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut j: Jobs = pb::jobs_client::JobsClient::with_interceptor(channel, loadtest::Bearer);

    let mut latencies = Vec::with_capacity(args.samples);
    for i in 0..args.samples + 5 {
        wait_warm(&mut c, args.warm).await?;
        let start = Instant::now();
        let run = one(&mut j, &format!("print({i})")).await?;
        let took = start.elapsed();
        if run.state != pb::RunState::Succeeded as i32 {
            bail!("run {} ended {:?}: {}", run.id, run.state, run.exit_reason);
        }
        if i >= 5 {
            latencies.push(took);
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    println!("| one-line run, warm pods | runs | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| submit → `finished` (`WatchRun`) | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        latencies.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );

    wait_warm(&mut c, args.warm).await?;
    let start = Instant::now();
    let runs = futures_util::future::join_all((0..args.burst).map(|i| {
        let mut j = j.clone();
        async move { one(&mut j, &format!("print({i})")).await }
    }))
    .await;
    let took = start.elapsed();
    let ok = runs
        .iter()
        .filter(|r| matches!(r, Ok(r) if r.state == pb::RunState::Succeeded as i32))
        .count();
    println!();
    println!("| burst | runs | succeeded | seconds | runs/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} at once, {} warm pods | {} | {ok} | {:.1} | {:.2} |",
        args.burst,
        args.warm,
        args.burst,
        took.as_secs_f64(),
        ok as f64 / took.as_secs_f64()
    );
    let watchman = w.watchman.clone();
    let _ = w.stop().await;
    watchman.delete_all_pods().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Submits `code` and follows the run to its end.
async fn one(j: &mut Jobs, code: &str) -> anyhow::Result<pb::Run> {
    let run = j
        .submit_execution(pb::SubmitExecutionRequest {
            user_id: "bench".into(),
            plan: "bench".into(),
            code: code.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut events = j
        .watch_run(pb::RunRef {
            user_id: "bench".into(),
            run_id: run.id.clone(),
        })
        .await?
        .into_inner();
    while let Some(e) = events.message().await? {
        if let Some(pb::run_event::Event::Finished(run)) = e.event {
            return Ok(run);
        }
    }
    let run = j
        .get_run(pb::RunRef {
            user_id: "bench".into(),
            run_id: run.id,
        })
        .await?
        .into_inner();
    Ok(run)
}

async fn wait_warm(c: &mut loadtest::WatchmanClient, warm: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let pools = c.list_pools(pb::ListPoolsRequest {}).await?.into_inner();
        if pools.pools.iter().any(|p| p.warm >= warm) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow::anyhow!("no warm pods after 180 s")).context("wait_warm");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
