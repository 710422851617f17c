//! Execute round trips of `1+1` (send, wait for the reply and idle) three ways, side by side in
//! one run, each against its own fresh python3 ipykernel:
//! Middleman's WebSocket, direct ZeroMQ (the floor), and a stock Jupyter Server's kernel
//! WebSocket (the anchor). Prints a Markdown table with ratios.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use doc_protocol::{ClientMessage, ServerEvent};
use futures_util::{SinkExt as _, StreamExt as _};
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, ExecutionState, JupyterMessage, JupyterMessageContent,
    KernelInfoRequest,
};
use loadtest::{JupyterServer, Middleman, Ws, jupyter_msg, next_frame, rss_mib, tempdir};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// Measured round trips per target.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Unmeasured round trips first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
}

const STEP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let venv = PathBuf::from(
        std::env::var("NBP_TOOLS_ENV")
            .context("NBP_TOOLS_ENV not set: run through `make bench`")?,
    );
    let scratch = tempdir("exec-bench")?;
    let mut results = Vec::new();
    results.push(
        bench_middleman(&args, &scratch)
            .await
            .context("middleman")?,
    );
    results.push(bench_zmq(&args, &scratch).await.context("direct zmq")?);
    results.push(
        bench_jupyter_server(&args, &venv, &scratch)
            .await
            .context("jupyter server")?,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    report(&args, &results);
    Ok(())
}

struct Result_ {
    name: &'static str,
    samples: Vec<Duration>,
    total: Duration,
    rss_mib: Option<f64>,
}

async fn measure<S>(
    args: &Args,
    state: &mut S,
    mut once: impl AsyncFnMut(&mut S) -> anyhow::Result<()>,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    for _ in 0..args.warmup {
        tokio::time::timeout(STEP, once(state))
            .await
            .context("warm-up round trip timed out")??;
    }
    let mut samples = Vec::with_capacity(args.iterations);
    let start = Instant::now();
    for _ in 0..args.iterations {
        let t = Instant::now();
        tokio::time::timeout(STEP, once(state))
            .await
            .context("round trip timed out")??;
        samples.push(t.elapsed());
    }
    Ok((samples, start.elapsed()))
}

// ---- Middleman ------------------------------------------------------------------------------

async fn bench_middleman(args: &Args, scratch: &std::path::Path) -> anyhow::Result<Result_> {
    let mm = Middleman::start(&args.middleman_bin, scratch, &[]).await?;
    let pid = mm.pid;
    let mut ws = mm.connect(&mm.token("bench").await?).await?;
    // Wait for the welcome and a ready kernel.
    let mut ready = false;
    while !ready {
        let frame = next_frame(&mut ws).await?;
        ready = match &frame.event {
            ServerEvent::Welcome {
                snapshot: Some(s), ..
            } => s.kernel_state == doc_protocol::KernelState::Idle,
            ServerEvent::KernelStatus { state, .. } => *state == doc_protocol::KernelState::Idle,
            _ => false,
        };
    }
    let mut n = 0u64;
    let (samples, total) = measure(args, &mut ws, async |ws: &mut Ws| {
        n += 1;
        let rid = n.to_string();
        {
            let msg = ClientMessage::Execute {
                code: "1+1".into(),
                request_id: Some(rid.clone()),
                stop_on_error: true,
            };
            ws.send(Message::text(serde_json::to_string(&msg)?)).await?;
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
                        return Ok(());
                    }
                    ServerEvent::Error { message, .. } => bail!("refused: {message}"),
                    _ => {}
                }
            }
        }
    })
    .await?;
    let rss = rss_mib(pid);
    mm.stop().await;
    Ok(Result_ {
        name: "Middleman WebSocket",
        samples,
        total,
        rss_mib: rss,
    })
}

// ---- Direct ZeroMQ --------------------------------------------------------------------------

async fn bench_zmq(args: &Args, scratch: &std::path::Path) -> anyhow::Result<Result_> {
    let spec_dir = std::env::var("JUPYTER_PATH").context("JUPYTER_PATH")?;
    let spec: jupyter_protocol::JupyterKernelspec = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(spec_dir).join("kernels/python3/kernel.json"))?,
    )?;
    let dir = scratch.join("zmq");
    std::fs::create_dir_all(&dir)?;
    let info = ConnectionInfo {
        transport: jupyter_protocol::connection_info::Transport::IPC,
        ip: dir.join("k").display().to_string(),
        shell_port: 1,
        iopub_port: 2,
        stdin_port: 3,
        control_port: 4,
        hb_port: 5,
        key: uuid::Uuid::new_v4().simple().to_string(),
        signature_scheme: "hmac-sha256".into(),
        kernel_name: Some("python3".into()),
    };
    let file = dir.join("kernel.json");
    std::fs::write(&file, serde_json::to_vec(&info)?)?;
    let argv: Vec<String> = spec
        .argv
        .iter()
        .map(|a| a.replace("{connection_file}", &file.display().to_string()))
        .collect();
    let (program, rest) = argv.split_first().context("empty argv")?;
    let mut kernel = tokio::process::Command::new(program)
        .args(rest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let session = uuid::Uuid::new_v4().to_string();
    let identity = jupyter_zmq_client::peer_identity_for_session(&session)?;
    let mut iopub = jupyter_zmq_client::create_client_iopub_connection(&info, "", &session).await?;
    let mut shell =
        jupyter_zmq_client::create_client_shell_connection_with_identity(&info, &session, identity)
            .await?;
    // Handshake: kernel_info until the reply and some IOPub message have arrived.
    let mut replied = false;
    let mut live = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(replied && live) {
        if Instant::now() > deadline {
            bail!("kernel did not answer");
        }
        shell.send(KernelInfoRequest {}.into()).await?;
        let round = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(round);
        loop {
            tokio::select! {
                () = &mut round => break,
                m = shell.read(), if !replied => { if matches!(m?.content, JupyterMessageContent::KernelInfoReply(_)) { replied = true; } }
                m = iopub.read(), if !live => { m?; live = true; }
            }
            if replied && live {
                break;
            }
        }
    }
    let mut conns = (shell, iopub);
    let (samples, total) = measure(args, &mut conns, async |conns: &mut (_, _)| {
        {
            let (shell, iopub): &mut (jupyter_zmq_client::ClientShellConnection, jupyter_zmq_client::ClientIoPubConnection) = conns;
            let request: JupyterMessage = ExecuteRequest::new("1+1".into()).into();
            let id = request.header.msg_id.clone();
            shell.send(request).await?;
            let (mut reply, mut idle) = (false, false);
            while !(reply && idle) {
                tokio::select! {
                    m = shell.read(), if !reply => {
                        let m = m?;
                        reply = matches!(m.content, JupyterMessageContent::ExecuteReply(_)) && m.parent_header.is_some_and(|h| h.msg_id == id);
                    }
                    m = iopub.read(), if !idle => {
                        let m = m?;
                        idle = matches!(&m.content, JupyterMessageContent::Status(s) if s.execution_state == ExecutionState::Idle)
                            && m.parent_header.is_some_and(|h| h.msg_id == id);
                    }
                }
            }
            Ok(())
        }
    })
    .await?;
    kernel.start_kill()?;
    let _ = kernel.wait().await;
    Ok(Result_ {
        name: "Direct ZeroMQ (floor)",
        samples,
        total,
        rss_mib: None,
    })
}

// ---- Jupyter Server -------------------------------------------------------------------------

async fn bench_jupyter_server(
    args: &Args,
    venv: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<Result_> {
    let server = JupyterServer::start(venv, scratch).await?;
    let pid = server.pid;
    let mut ws = server.connect().await?;
    let session = uuid::Uuid::new_v4().to_string();
    let msg =
        |msg_type: &str, content: serde_json::Value| jupyter_msg(&session, msg_type, &content);
    let (samples, total) = measure(args, &mut ws, async |ws: &mut Ws| {
        let (id, text) = msg("execute_request", serde_json::json!({"code": "1+1", "silent": false, "store_history": true, "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}));
        {
            ws.send(Message::text(text)).await?;
            let (mut reply, mut idle) = (false, false);
            while !(reply && idle) {
                let Some(m) = ws.next().await else { bail!("closed") };
                if let Message::Text(t) = m? {
                    let v: serde_json::Value = serde_json::from_str(&t)?;
                    if v["parent_header"]["msg_id"] != id.as_str() {
                        continue;
                    }
                    reply |= v["msg_type"] == "execute_reply";
                    idle |= v["msg_type"] == "status" && v["content"]["execution_state"] == "idle";
                }
            }
            Ok(())
        }
    })
    .await?;
    let rss = rss_mib(pid);
    server.stop().await;
    Ok(Result_ {
        name: "Jupyter Server WebSocket (anchor)",
        samples,
        total,
        rss_mib: rss,
    })
}

// ---- Report ---------------------------------------------------------------------------------

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn report(args: &Args, results: &[Result_]) {
    println!(
        "Execute round trip of `1+1`, {} iterations after {} warm-up, one run:\n",
        args.iterations, args.warmup
    );
    println!("| target | p50 ms | p90 ms | p99 ms | mean ms | round trips/s | server RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for r in results {
        let mut s = r.samples.clone();
        s.sort();
        let mean =
            s.iter().map(Duration::as_secs_f64).sum::<f64>() / s.len().max(1) as f64 * 1000.0;
        let tput = s.len() as f64 / r.total.as_secs_f64();
        let rss = r.rss_mib.map_or("n/a".to_owned(), |m| format!("{m:.1}"));
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {mean:.3} | {tput:.0} | {rss} |",
            r.name,
            pct(&s, 0.5),
            pct(&s, 0.9),
            pct(&s, 0.99)
        );
        p50s.push(pct(&s, 0.5));
    }
    if let ([mm, zmq, js], [r_mm, _, r_js]) = (&p50s[..], results) {
        println!(
            "\nRatios: Middleman p50 / direct ZeroMQ p50 = {:.2}; Jupyter Server p50 / Middleman p50 = {:.2}",
            mm / zmq,
            js / mm
        );
        if let (Some(a), Some(b)) = (r_mm.rss_mib, r_js.rss_mib) {
            println!("Middleman RSS / Jupyter Server RSS = {:.2}", a / b);
        }
    }
}
