//! One-shot runs (docs/jobs.md) on the local backend: Watchman in this process with a warm pool
//! of real Middleman + ipykernel pods.
//!
//! - latency: a one-line execution submitted with warm pods waiting (`SubmitExecution`, then
//!   `WatchRun` to `finished`), one at a time, p50 and p99 of submit to result;
//! - throughput: `--burst` runs submitted at once, the time until every one finished. Every run
//!   takes a fresh pod, so this measures how fast the host starts pods;
//! - notebook runs: a 20-cell notebook with parameters (`SubmitNotebookRun`, an uploaded
//!   `.ipynb`) against papermill running the same notebook with the same parameters and the same
//!   ipykernel (`scripts/python/papermill_bench.py`, its import paid once), alternating.
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
    /// Runs submitted at once for the throughput (0: none).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Warm pods of the plan.
    #[arg(long, default_value_t = 8)]
    warm: u32,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
    /// Notebook runs measured on each side (0: none).
    #[arg(long, default_value_t = 20)]
    notebook_samples: usize,
    /// Cells of the bench notebook, the parameters cell included.
    #[arg(long, default_value_t = 20)]
    notebook_cells: usize,
    /// The Python with papermill (scripts/bootstrap-bench.sh installs it).
    #[arg(long, env = "NBP_PAPERMILL_PYTHON")]
    papermill_python: Option<PathBuf>,
}

/// The bench notebook: a parameters cell and `n_cells - 1` small cells that use the parameters.
fn bench_notebook(n_cells: usize) -> serde_json::Value {
    let mut cells = vec![serde_json::json!({
        "id": "params", "cell_type": "code", "metadata": {"tags": ["parameters"]},
        "source": "n = 10\nlabel = 'default'", "outputs": [], "execution_count": null,
    })];
    for i in 1..n_cells {
        let source = match i % 4 {
            0 => format!("x{i} = sum(range(n * {i}))\nx{i}"),
            1 => format!("print(label, {i}, n)"),
            2 => format!("d{i} = {{k: k * k for k in range(n)}}\nlen(d{i})"),
            _ => format!("s{i} = ', '.join(str(k) for k in range({i}))\ns{i}[:20]"),
        };
        cells.push(serde_json::json!({
            "id": format!("c{i}"), "cell_type": "code", "metadata": {},
            "source": source, "outputs": [], "execution_count": null,
        }));
    }
    serde_json::json!({
        "nbformat": 4, "nbformat_minor": 5, "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    })
}

/// Milliseconds at percentile `p` of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
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
        "100ms",
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
    let mut latencies: Vec<f64> = latencies
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| pct(&latencies, p);
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

    if args.burst > 0 {
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
    }

    if args.notebook_samples > 0 {
        notebook_runs(&args, &mut j, &mut c, &dir).await?;
    }

    let watchman = w.watchman.clone();
    let _ = w.stop().await;
    watchman.delete_all_pods().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Our notebook runs and papermill's, alternating; prints their table.
async fn notebook_runs(
    args: &Args,
    j: &mut Jobs,
    c: &mut loadtest::WatchmanClient,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let python = args
        .papermill_python
        .clone()
        .or_else(|| {
            std::env::var_os("NBP_CACHE")
                .map(|c| PathBuf::from(c).join("papermill-venv/bin/python"))
        })
        .context("no papermill: run scripts/bootstrap-bench.sh or give --papermill-python")?;
    let notebook = bench_notebook(args.notebook_cells);
    let path = dir.join("bench.ipynb");
    std::fs::write(&path, notebook.to_string())?;
    let parameters = serde_json::json!({"n": 100, "label": "bench"});
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..args.notebook_samples + 1 {
        wait_warm(c, args.warm).await?;
        let start = Instant::now();
        let run = j
            .submit_notebook_run(pb::SubmitNotebookRunRequest {
                user_id: "bench".into(),
                plan: "bench".into(),
                notebook_json: notebook.to_string(),
                parameters_json: parameters.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let run = follow(j, run).await?;
        let took = start.elapsed().as_secs_f64() * 1000.0;
        if run.state != pb::RunState::Succeeded as i32 {
            bail!(
                "notebook run {} ended {:?}: {}",
                run.id,
                run.state,
                run.exit_reason
            );
        }
        let done: serde_json::Value = serde_json::from_str(&run.result_notebook_json)?;
        let printed = done["cells"][2]["outputs"][0]["text"]
            .as_str()
            .unwrap_or("");
        if printed != "bench 1 100\n" {
            bail!("the parameters did not reach the notebook: {printed:?}");
        }
        let out = std::process::Command::new(&python)
            .arg("scripts/python/papermill_bench.py")
            .arg(&path)
            .arg("1")
            .arg(parameters.to_string())
            .output()
            .context("papermill")?;
        if !out.status.success() {
            bail!("papermill: {}", String::from_utf8_lossy(&out.stderr));
        }
        let pm: Vec<f64> = serde_json::from_slice(&out.stdout)?;
        // The first of each warms caches.
        if i > 0 {
            ours.push(took);
            theirs.extend(pm);
        }
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    println!();
    println!(
        "| {}-cell notebook with parameters | runs | p50 ms | p90 ms | max ms |",
        args.notebook_cells
    );
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("`SubmitNotebookRun` → `finished`, warm pods", &ours),
        ("papermill `execute_notebook` (kernel per run)", &theirs),
    ] {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 1.0)
        );
    }
    println!();
    println!(
        "papermill / ours at p50: {:.1}x",
        pct(&theirs, 0.5) / pct(&ours, 0.5)
    );
    Ok(())
}

/// Follows a submitted run to its end.
async fn follow(j: &mut Jobs, run: pb::Run) -> anyhow::Result<pb::Run> {
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
    Ok(j.get_run(pb::RunRef {
        user_id: "bench".into(),
        run_id: run.id,
    })
    .await?
    .into_inner())
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
    follow(j, run).await
}

async fn wait_warm(c: &mut loadtest::WatchmanClient, warm: u32) -> anyhow::Result<()> {
    let (within, every) = (Duration::from_secs(180), Duration::from_millis(20));
    loadtest::wait_pool(c, within, every, |p| p.warm >= warm).await
}
