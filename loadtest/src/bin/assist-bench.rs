//! Completion latency (docs/benchmarks.md, issue 21's benchmark), with the kernel idle and while
//! another cell runs, side by side in one run:
//!
//! - Middleman, which asks completions on a kernel subshell (ipykernel 7), so they do not wait
//!   for the running cell;
//! - a stock Jupyter Server's kernel WebSocket (the anchor), where a `complete_request` goes to
//!   the kernel's one shell and waits behind the cell.
//!
//! The question is `df.al|` with `df` a DataFrame that has a column `alpha`. Prints Markdown.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use doc_protocol::{AssistAnswer, ClientMessage, ServerEvent};
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::{JupyterServer, Keys, Middleman, Ws, jupyter_msg, next_frame, tempdir};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// Completions measured per target and state.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Unmeasured completions first, on each target (the kernel's completer warms up).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Completions measured on the anchor while a cell runs (each waits for its cell).
    #[arg(long, default_value_t = 10)]
    anchor_busy_samples: usize,
    /// How long the anchor's running cell sleeps; the question comes 0.2 s into it.
    #[arg(long, default_value_t = 1.0)]
    anchor_cell_secs: f64,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
}

const SETUP: &str = "import pandas as pd\ndf = pd.DataFrame({'alpha': [1, 2], 'beta': [3, 4]})";
const CODE: &str = "df.al";
/// Middleman allows a connection 10 questions a second (after a burst of 20).
const PACE: Duration = Duration::from_millis(110);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let venv = PathBuf::from(
        std::env::var("NBP_TOOLS_ENV").context("NBP_TOOLS_ENV not set: source scripts/env.sh")?,
    );
    let scratch = tempdir("assist-bench")?;
    let ours = middleman(&args, &scratch).await.context("middleman")?;
    let anchor = jupyter_server(&args, &venv, &scratch)
        .await
        .context("jupyter server")?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("Completion of `{CODE}` (p50 / p99 ms), one run:\n");
    println!("| target | kernel idle | while a cell runs |");
    println!("|---|---|---|");
    for (name, (idle, busy)) in [
        ("Middleman (subshell)", &ours),
        ("Jupyter Server WebSocket (anchor)", &anchor),
    ] {
        println!(
            "| {name} | {:.2} / {:.2} (n={}) | {:.2} / {:.2} (n={}) |",
            pct(idle, 0.5),
            pct(idle, 0.99),
            idle.len(),
            pct(busy, 0.5),
            pct(busy, 0.99),
            busy.len()
        );
    }
    println!(
        "\nWhile a cell runs: anchor p50 / Middleman p50 = {:.0}",
        pct(&anchor.1, 0.5) / pct(&ours.1, 0.5)
    );
    Ok(())
}

fn pct(samples: &[Duration], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

async fn send(ws: &mut Ws, m: &ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(serde_json::to_string(m)?)).await?;
    Ok(())
}

/// Queues `code`; returns its execution id.
async fn execute(ws: &mut Ws, code: &str) -> anyhow::Result<String> {
    send(
        ws,
        &ClientMessage::Execute {
            code: code.into(),
            request_id: Some("x".into()),
            stop_on_error: true,
        },
    )
    .await?;
    loop {
        if let ServerEvent::ExecutionQueued {
            execution,
            request_id: Some(r),
        } = next_frame(ws).await?.event
            && r == "x"
        {
            return Ok(execution.id);
        }
    }
}

async fn finished(ws: &mut Ws, id: &str) -> anyhow::Result<()> {
    loop {
        if let ServerEvent::ExecutionFinished { execution_id, .. } = next_frame(ws).await?.event
            && execution_id == id
        {
            return Ok(());
        }
    }
}

/// One completion through Middleman: its latency.
async fn complete(ws: &mut Ws, n: usize) -> anyhow::Result<Duration> {
    let request_id = format!("c{n}");
    let start = Instant::now();
    send(
        ws,
        &ClientMessage::Complete {
            request_id: request_id.clone(),
            cell_id: None,
            code: CODE.into(),
            cursor: 5,
        },
    )
    .await?;
    loop {
        if let ServerEvent::Assist {
            request_id: r,
            answer,
        } = next_frame(ws).await?.event
            && r == request_id
        {
            let took = start.elapsed();
            match answer {
                AssistAnswer::Complete { matches, .. }
                    if matches.iter().any(|m| m.text.contains("alpha")) =>
                {
                    return Ok(took);
                }
                other => bail!("unexpected answer: {other:?}"),
            }
        }
    }
}

async fn middleman(
    args: &Args,
    scratch: &std::path::Path,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = scratch.join("mm");
    let keys = Keys::generate(&dir.join("keys"))?;
    let docs = dir.join("docs").display().to_string();
    let mm = Middleman::start_with(
        &args.middleman_bin,
        &dir,
        &keys,
        "local",
        &["--document-store", &docs],
    )
    .await?;
    mm.wait_ready().await?;
    let mut ws = mm.connect(&mm.token("ada").await?).await?;
    let setup = execute(&mut ws, SETUP).await?;
    finished(&mut ws, &setup).await?;
    for n in 0..args.warmup {
        complete(&mut ws, usize::MAX - n).await?;
        tokio::time::sleep(PACE).await;
    }
    let mut idle = Vec::with_capacity(args.samples);
    for n in 0..args.samples {
        idle.push(complete(&mut ws, n).await?);
        tokio::time::sleep(PACE).await;
    }
    execute(&mut ws, "import time\ntime.sleep(3600)").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut busy = Vec::with_capacity(args.samples);
    for n in 0..args.samples {
        busy.push(complete(&mut ws, args.samples + n).await?);
        tokio::time::sleep(PACE).await;
    }
    send(&mut ws, &ClientMessage::Interrupt).await?;
    drop(ws);
    mm.stop().await;
    Ok((idle, busy))
}

/// Sends a shell message to the anchor; returns its id.
async fn shell(
    ws: &mut Ws,
    session: &str,
    msg_type: &str,
    content: serde_json::Value,
) -> anyhow::Result<String> {
    let (id, text) = jupyter_msg(session, msg_type, &content);
    ws.send(Message::text(text)).await?;
    Ok(id)
}

/// Waits for a message of `msg_type` answering `parent` ("idle": its idle status); others are
/// passed over.
async fn answer(ws: &mut Ws, parent: &str, msg_type: &str) -> anyhow::Result<serde_json::Value> {
    loop {
        let Some(m) = ws.next().await else {
            bail!("closed")
        };
        if let Message::Text(t) = m? {
            let v: serde_json::Value = serde_json::from_str(&t)?;
            if v["parent_header"]["msg_id"] != parent {
                continue;
            }
            let idle = v["msg_type"] == "status" && v["content"]["execution_state"] == "idle";
            if v["msg_type"] == msg_type || (msg_type == "idle" && idle) {
                return Ok(v);
            }
        }
    }
}

async fn anchor_complete(ws: &mut Ws, session: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let id = shell(
        ws,
        session,
        "complete_request",
        serde_json::json!({"code": CODE, "cursor_pos": 5}),
    )
    .await?;
    let reply = answer(ws, &id, "complete_reply").await?;
    let took = start.elapsed();
    if !reply["content"]["matches"].to_string().contains("alpha") {
        bail!("unexpected completion: {reply}");
    }
    Ok(took)
}

async fn jupyter_server(
    args: &Args,
    venv: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let server = JupyterServer::start(venv, scratch).await?;
    let mut ws = server.connect().await?;
    let session = uuid::Uuid::new_v4().to_string();
    let run = |code: &str| serde_json::json!({"code": code, "silent": false, "store_history": true, "user_expressions": {}, "allow_stdin": false, "stop_on_error": true});
    let setup = shell(&mut ws, &session, "execute_request", run(SETUP)).await?;
    answer(&mut ws, &setup, "idle").await?;
    for _ in 0..args.warmup {
        anchor_complete(&mut ws, &session).await?;
    }
    let mut idle = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        idle.push(anchor_complete(&mut ws, &session).await?);
        tokio::time::sleep(PACE).await;
    }
    let mut busy = Vec::with_capacity(args.anchor_busy_samples);
    for _ in 0..args.anchor_busy_samples {
        let cell = shell(
            &mut ws,
            &session,
            "execute_request",
            run(&format!(
                "import time\ntime.sleep({})",
                args.anchor_cell_secs
            )),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Its reply comes once the cell is done (the cell's own messages are passed over).
        let _ = cell;
        busy.push(anchor_complete(&mut ws, &session).await?);
    }
    drop(ws);
    server.stop().await;
    Ok((idle, busy))
}
