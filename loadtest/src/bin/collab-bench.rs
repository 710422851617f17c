//! Many collaborators in one document while one cell floods output: how long until every client
//! has every line, and what it costs the server. Middleman (document WebSocket, `execute_cell`)
//! against a stock Jupyter Server (N kernel WebSockets on one kernel), side by side in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use doc_protocol::{ClientMessage, ServerEvent};
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::{
    JupyterServer, Middleman, Ws, cpu_secs, jupyter_msg, next_frame, numbered_lines,
    sample_peak_rss, tempdir,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
struct Args {
    /// Collaborator counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "20,100")]
    clients: Vec<usize>,
    /// Lines the cell prints (`for i in range(N): print(i, flush=True)`).
    #[arg(long, default_value_t = 20_000)]
    lines: usize,
    /// A run that has not delivered everything by then is reported as not finished.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
}

/// What one client saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Lines 0..N received in order, each exactly once.
    complete: bool,
    lines: usize,
    at: Duration,
}

#[derive(Debug)]
struct Outcome {
    system: &'static str,
    clients: usize,
    /// Per client; `None`: it had not finished when the run timed out.
    seen: Vec<Option<Seen>>,
    peak_rss_mib: f64,
    cpu_secs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let venv = PathBuf::from(
        std::env::var("NBP_TOOLS_ENV")
            .context("NBP_TOOLS_ENV not set: run through `make bench`")?,
    );
    let mut outcomes = Vec::new();
    for &n in &args.clients {
        let scratch = tempdir("collab-bench")?;
        outcomes.push(
            middleman_run(&args, &scratch, n)
                .await
                .context("middleman")?,
        );
        outcomes.push(
            jupyter_run(&args, &venv, &scratch, n)
                .await
                .context("jupyter server")?,
        );
        let _ = std::fs::remove_dir_all(&scratch);
    }
    report(&args, &outcomes);
    Ok(())
}

fn code(lines: usize) -> String {
    format!("for i in range({lines}): print(i, flush=True)")
}

async fn middleman_run(
    args: &Args,
    scratch: &std::path::Path,
    n: usize,
) -> anyhow::Result<Outcome> {
    let mm = Middleman::start(&args.middleman_bin, scratch, &[]).await?;
    let mut clients = Vec::with_capacity(n);
    let mut cell = None;
    for i in 0..n {
        let mut ws = mm.connect(&mm.token(&format!("user{i}")).await?).await?;
        // The welcome; wait for an idle kernel before starting the clock.
        let welcome = next_frame(&mut ws).await?;
        if let ServerEvent::Welcome {
            snapshot: Some(s), ..
        } = &welcome.event
        {
            cell.get_or_insert_with(|| s.cells[0].id.clone());
        }
        clients.push(ws);
    }
    let cell = cell.context("no cell in the welcome")?;
    wait_idle(&mm).await?;
    let start = Instant::now();
    let cpu0 = cpu_secs(mm.pid).unwrap_or(0.0);
    let stop = CancellationToken::new();
    let peak = sample_peak_rss(mm.pid, stop.clone());
    let driver = &mut clients[0];
    send(
        driver,
        &ClientMessage::SetSource {
            cell_id: cell.clone(),
            source: code(args.lines),
        },
    )
    .await?;
    send(
        driver,
        &ClientMessage::ExecuteCell {
            cell_id: cell.clone(),
            request_id: None,
            stop_on_error: true,
        },
    )
    .await?;
    let lines = args.lines;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(middleman_reader(ws, cell.clone(), lines, start)))
        .collect();
    let seen = collect(readers, Duration::from_secs(args.timeout_secs)).await;
    let cpu = cpu_secs(mm.pid).unwrap_or(0.0) - cpu0;
    stop.cancel();
    let peak = peak.await.unwrap_or(0.0);
    mm.stop().await;
    Ok(Outcome {
        system: "Middleman",
        clients: n,
        seen,
        peak_rss_mib: peak,
        cpu_secs: cpu,
    })
}

async fn wait_idle(mm: &Middleman) -> anyhow::Result<()> {
    let port: u16 = mm.addr.rsplit(':').next().unwrap_or("0").parse()?;
    for _ in 0..1200 {
        if let Ok((200, _)) = loadtest::http(port, "GET", "/readyz", "", "").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("kernel not ready")
}

async fn send(ws: &mut Ws, m: &ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(serde_json::to_string(m)?)).await?;
    Ok(())
}

async fn middleman_reader(
    mut ws: Ws,
    cell: String,
    lines: usize,
    start: Instant,
) -> anyhow::Result<Seen> {
    let run = loadtest::read_cell_run(&mut ws, &cell, start).await?;
    let (complete, count) = numbered_lines(&run.text, lines);
    Ok(Seen {
        complete,
        lines: count,
        at: run.at,
    })
}

async fn collect(
    readers: Vec<tokio::task::JoinHandle<anyhow::Result<Seen>>>,
    timeout: Duration,
) -> Vec<Option<Seen>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::with_capacity(readers.len());
    for r in readers {
        let abort = r.abort_handle();
        match tokio::time::timeout_at(deadline, r).await {
            Ok(Ok(Ok(s))) => seen.push(Some(s)),
            Ok(Ok(Err(e))) => {
                eprintln!("client failed: {e:#}");
                seen.push(None);
            }
            _ => {
                abort.abort();
                seen.push(None);
            }
        }
    }
    seen
}

// ---- Jupyter Server -------------------------------------------------------------------------

async fn jupyter_run(
    args: &Args,
    venv: &std::path::Path,
    scratch: &std::path::Path,
    n: usize,
) -> anyhow::Result<Outcome> {
    let server = JupyterServer::start(venv, scratch).await?;
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(server.connect().await?);
    }
    // Let every connection's IOPub subscription settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let session = uuid::Uuid::new_v4().to_string();
    let (id, text) = jupyter_msg(
        &session,
        "execute_request",
        &serde_json::json!({"code": code(args.lines), "silent": false, "store_history": true,
            "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}),
    );
    let id = Arc::new(id);
    let start = Instant::now();
    let cpu0 = cpu_secs(server.pid).unwrap_or(0.0);
    let stop = CancellationToken::new();
    let peak = sample_peak_rss(server.pid, stop.clone());
    clients[0].send(Message::text(text)).await?;
    let lines = args.lines;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(jupyter_reader(ws, id.clone(), lines, start)))
        .collect();
    let seen = collect(readers, Duration::from_secs(args.timeout_secs)).await;
    let cpu = cpu_secs(server.pid).unwrap_or(0.0) - cpu0;
    stop.cancel();
    let peak = peak.await.unwrap_or(0.0);
    server.stop().await;
    Ok(Outcome {
        system: "Jupyter Server",
        clients: n,
        seen,
        peak_rss_mib: peak,
        cpu_secs: cpu,
    })
}

async fn jupyter_reader(
    mut ws: Ws,
    id: Arc<String>,
    lines: usize,
    start: Instant,
) -> anyhow::Result<Seen> {
    let mut text = String::new();
    loop {
        let Some(m) = ws.next().await else {
            anyhow::bail!("closed")
        };
        let Message::Text(t) = m? else { continue };
        let v: serde_json::Value = serde_json::from_str(&t)?;
        if v["parent_header"]["msg_id"] != id.as_str() {
            continue;
        }
        match v["msg_type"].as_str() {
            Some("stream") if v["content"]["name"] == "stdout" => {
                text.push_str(v["content"]["text"].as_str().unwrap_or(""));
            }
            Some("status") if v["content"]["execution_state"] == "idle" => {
                // Rate-limit notices are not lines the cell printed.
                let printed: String = text
                    .lines()
                    .filter(|l| l.parse::<usize>().is_ok())
                    .map(|l| format!("{l}\n"))
                    .collect();
                let (complete, count) = numbered_lines(&printed, lines);
                return Ok(Seen {
                    complete,
                    lines: count,
                    at: start.elapsed(),
                });
            }
            _ => {}
        }
    }
}

// ---- Report ---------------------------------------------------------------------------------

fn report(args: &Args, outcomes: &[Outcome]) {
    println!(
        "{} lines printed by one cell (`{}`), every client must receive all of them; one run:\n",
        args.lines,
        code(args.lines)
    );
    println!(
        "| clients | server | clients with every line | fewest lines at a client | time until every client has every line | slowest client done | peak RSS MiB | server CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        let finished: Vec<Seen> = o.seen.iter().flatten().copied().collect();
        let complete = finished.iter().filter(|s| s.complete).count();
        let fewest = if finished.len() < o.seen.len() {
            "n/a (unfinished)".to_owned()
        } else {
            finished
                .iter()
                .map(|s| s.lines)
                .min()
                .unwrap_or(0)
                .to_string()
        };
        let slowest = finished.iter().map(|s| s.at).max();
        let all = if complete == o.seen.len() {
            slowest.map_or("n/a".into(), |d| format!("{:.2} s", d.as_secs_f64()))
        } else {
            "never".into()
        };
        let slowest = if finished.len() == o.seen.len() {
            slowest.map_or("n/a".into(), |d| format!("{:.2} s", d.as_secs_f64()))
        } else {
            format!("not within {} s", args.timeout_secs)
        };
        println!(
            "| {} | {} | {complete}/{} | {fewest} | {all} | {slowest} | {:.1} | {:.2} |",
            o.clients,
            o.system,
            o.seen.len(),
            o.peak_rss_mib,
            o.cpu_secs
        );
    }
}
