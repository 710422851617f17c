//! Execute round trips of `1+1` three ways, side by side in one run, each against its own fresh
//! kernel of one kernelspec (`--kernel`: python3's ipykernel or Deno's): Middleman's WebSocket,
//! the kernel's own sockets directly (the floor: ZeroMQ over ipc, or over TCP for a kernel that
//! speaks only TCP, as Deno's does), and a stock Jupyter Server's kernel WebSocket (the anchor).
//! A round trip ends when the client has the reply (Middleman: the execution's end), the idle
//! status and the result, and checks that the result is `2`. Middleman and the floor take
//! turns round by round (who goes first alternates), so the machine's drift weighs on both
//! alike; Jupyter Server, some forty times slower, runs after them.
//! Prints a Markdown table with ratios.
//!
//! With `--starts N`, measures warm pod starts instead, N of each way, interleaved: a Middleman
//! process from spawn to its `/readyz` answering 200 (its kernel started and answered
//! `kernel_info`), with the kernel's sandbox as the bench's user gets it (namespaces as root)
//! and with `--kernel-namespaces off`, and the kernel alone (spawned directly, to its first
//! `kernel_info_reply`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use doc_protocol::{ClientMessage, Output, ServerEvent};
use futures_util::{SinkExt as _, StreamExt as _};
use jupyter_protocol::connection_info::Transport;
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, ExecutionState, JupyterKernelspec, JupyterMessage,
    JupyterMessageContent, KernelInfoRequest, MediaType,
};
use jupyter_zmq_client::{ClientIoPubConnection, ClientShellConnection};
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
    /// The kernelspec every target runs (found on `JUPYTER_PATH`): `python3` or `deno`.
    #[arg(long, default_value = "python3")]
    kernel: String,
    /// More flags for the Middleman of the round trips (e.g. `--middleman-arg=--kernel-namespaces=off`).
    #[arg(long = "middleman-arg", allow_hyphen_values = true)]
    middleman_args: Vec<String>,
    /// Leave out stock Jupyter Server (the anchor): Middleman against the floor only.
    #[arg(long)]
    skip_anchor: bool,
    /// Instead of round trips, measure this many warm pod starts of each way.
    #[arg(long, default_value_t = 0)]
    starts: usize,
}

const STEP: Duration = Duration::from_secs(30);

/// What `1+1` evaluates to, as `text/plain`, in both kernels.
const EXPECTED: &str = "2";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let venv = PathBuf::from(
        std::env::var("NBP_TOOLS_ENV")
            .context("NBP_TOOLS_ENV not set: run through `make bench`")?,
    );
    let spec = Kernelspec::find(&args.kernel)?;
    let scratch = tempdir("exec-bench")?;
    if args.starts > 0 {
        let starts = bench_starts(&args, &spec, &scratch).await;
        let _ = std::fs::remove_dir_all(&scratch);
        return report_starts(&args, &spec, &starts?);
    }
    let mut results = bench_middleman_and_floor(&args, &spec, &scratch).await?;
    if !args.skip_anchor {
        results.push(
            bench_jupyter_server(&args, &venv, &scratch)
                .await
                .context("jupyter server")?,
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    report(&args, &results);
    Ok(())
}

struct Result_ {
    name: String,
    samples: Vec<Duration>,
    /// The time the samples took (for round trips a second).
    total: Duration,
    rss_mib: Option<f64>,
}

impl Result_ {
    /// Samples taken in turns with another target: their total is their sum.
    fn of(name: String, samples: Vec<Duration>, rss_mib: Option<f64>) -> Self {
        let total = samples.iter().sum();
        Self {
            name,
            samples,
            total,
            rss_mib,
        }
    }
}

/// Times `once` (one round trip, returning the `text/plain` result it saw) `iterations` times
/// after `warmup` unmeasured ones.
async fn measure<S>(
    args: &Args,
    state: &mut S,
    mut once: impl AsyncFnMut(&mut S) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let mut samples = Vec::with_capacity(args.iterations);
    let mut start = Instant::now();
    for i in 0..args.warmup + args.iterations {
        if i == args.warmup {
            start = Instant::now();
        }
        let took = timed(once(state)).await?;
        if i >= args.warmup {
            samples.push(took);
        }
    }
    Ok((samples, start.elapsed()))
}

/// One round trip, timed and checked.
async fn timed(
    round_trip: impl Future<Output = anyhow::Result<Option<String>>>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let result = tokio::time::timeout(STEP, round_trip)
        .await
        .context("round trip timed out")??;
    let took = t.elapsed();
    if result.as_deref() != Some(EXPECTED) {
        bail!("`1+1` gave {result:?}, not {EXPECTED:?}");
    }
    Ok(took)
}

/// A kernelspec from `JUPYTER_PATH`, as Middleman and Jupyter Server find it.
struct Kernelspec {
    name: String,
    spec: JupyterKernelspec,
}

impl Kernelspec {
    fn find(name: &str) -> anyhow::Result<Self> {
        let path = std::env::var_os("JUPYTER_PATH")
            .context("JUPYTER_PATH not set: source scripts/env.sh")?;
        let file = std::env::split_paths(&path)
            .map(|dir| dir.join("kernels").join(name).join("kernel.json"))
            .find(|f| f.is_file())
            .with_context(|| format!("no kernelspec {name} on JUPYTER_PATH"))?;
        Ok(Self {
            name: name.to_owned(),
            spec: serde_json::from_str(&std::fs::read_to_string(&file)?)?,
        })
    }

    /// Whether the kernel speaks TCP only (the project's kernelspec says so, as for Deno's).
    fn tcp_only(&self) -> bool {
        self.spec
            .metadata
            .as_ref()
            .and_then(|m| m.get("nbplat"))
            .and_then(|n| n.get("transport"))
            .and_then(|t| t.as_str())
            == Some("tcp")
    }
}

// ---- Middleman ------------------------------------------------------------------------------

/// Middleman and the floor, each with its own kernel of `spec`, taking turns round by round
/// (who goes first alternates), so the machine's drift weighs on both alike.
async fn bench_middleman_and_floor(
    args: &Args,
    spec: &Kernelspec,
    scratch: &Path,
) -> anyhow::Result<Vec<Result_>> {
    let mut targets = vec![
        Target::Middleman(
            MiddlemanTarget::start(args, scratch)
                .await
                .context("middleman")?,
        ),
        Target::Direct(
            DirectKernel::start(spec, &scratch.join("zmq"))
                .await
                .context("direct zmq")?,
            if spec.tcp_only() {
                "Direct ZeroMQ over TCP (floor)"
            } else {
                "Direct ZeroMQ over ipc (floor)"
            },
        ),
    ];
    let n = targets.len();
    let mut samples = vec![Vec::with_capacity(args.iterations); n];
    for i in 0..args.warmup + args.iterations {
        for turn in 0..n {
            let k = (i + turn) % n;
            let took = timed(targets[k].once()).await.context(k)?;
            if i >= args.warmup {
                samples[k].push(took);
            }
        }
    }
    let mut results = Vec::new();
    for (target, samples) in targets.into_iter().zip(samples) {
        match target {
            Target::Middleman(mm) => {
                let rss = rss_mib(mm.mm.pid);
                mm.mm.stop().await;
                results.push(Result_::of("Middleman WebSocket".into(), samples, rss));
            }
            Target::Direct(kernel, name) => {
                kernel.stop().await;
                results.push(Result_::of(name.into(), samples, None));
            }
        }
    }
    Ok(results)
}

/// What takes turns in the round trips (a direct client with its row's name).
enum Target {
    Middleman(MiddlemanTarget),
    Direct(DirectKernel, &'static str),
}

impl Target {
    async fn once(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Self::Middleman(mm) => mm.once().await,
            Self::Direct(kernel, _) => kernel.execute().await,
        }
    }
}

/// A Middleman with its kernel and a client's WebSocket, ready to run `1+1`.
struct MiddlemanTarget {
    mm: Middleman,
    ws: Ws,
    sent: u64,
}

impl MiddlemanTarget {
    async fn start(args: &Args, scratch: &Path) -> anyhow::Result<Self> {
        let mut extra = vec!["--kernel", args.kernel.as_str()];
        extra.extend(args.middleman_args.iter().map(String::as_str));
        let mm = Middleman::start(&args.middleman_bin, scratch, &extra).await?;
        let mut ws = mm.connect(&mm.token("bench").await?).await?;
        // Wait for the welcome and a ready kernel.
        let mut ready = false;
        while !ready {
            let frame = next_frame(&mut ws).await?;
            ready = match &frame.event {
                ServerEvent::Welcome {
                    snapshot: Some(s), ..
                } => s.kernel_state == doc_protocol::KernelState::Idle,
                ServerEvent::KernelStatus { state, .. } => {
                    *state == doc_protocol::KernelState::Idle
                }
                _ => false,
            };
        }
        print_layers(&mm).await;
        Ok(Self { mm, ws, sent: 0 })
    }

    /// One round trip: the execution's end and its result.
    async fn once(&mut self) -> anyhow::Result<Option<String>> {
        self.sent += 1;
        let rid = self.sent.to_string();
        let msg = ClientMessage::Execute {
            code: "1+1".into(),
            request_id: Some(rid.clone()),
            stop_on_error: true,
        };
        let ws = &mut self.ws;
        ws.send(Message::text(serde_json::to_string(&msg)?)).await?;
        let (mut id, mut finished, mut result) = (None, false, None);
        while !(finished && result.is_some()) {
            match next_frame(ws).await?.event {
                ServerEvent::ExecutionQueued {
                    execution,
                    request_id: Some(r),
                } if r == rid => id = Some(execution.id),
                ServerEvent::Output {
                    execution_id,
                    output: Output::ExecuteResult { data, .. },
                } if Some(&execution_id) == id.as_ref() => {
                    result = data
                        .get("text/plain")
                        .and_then(|t| t.as_str())
                        .map(str::to_owned);
                }
                ServerEvent::ExecutionFinished { execution_id, .. }
                    if Some(&execution_id) == id.as_ref() =>
                {
                    finished = true;
                }
                ServerEvent::Error { message, .. } => bail!("refused: {message}"),
                _ => {}
            }
        }
        Ok(result)
    }
}

/// Prints which layers of the kernel's sandbox hold, as Middleman reports them.
async fn print_layers(mm: &Middleman) {
    match mm.sandbox_layers().await {
        Ok((held, not)) => println!(
            "Middleman's kernel sandbox: holds [{}]; not enforced [{}]",
            held.join(", "),
            not.join(", ")
        ),
        Err(error) => println!("Middleman's kernel sandbox: unknown ({error})"),
    }
}

// ---- Direct ZeroMQ --------------------------------------------------------------------------

/// A kernel started directly from its kernelspec (no sandbox), with a client's shell and IOPub
/// connections.
struct DirectKernel {
    child: tokio::process::Child,
    shell: ClientShellConnection,
    iopub: ClientIoPubConnection,
    /// From spawning the kernel to its first `kernel_info_reply`.
    answered: Duration,
}

impl DirectKernel {
    /// Starts `spec`'s kernel in `dir`, over ipc, or over loopback TCP when it speaks only TCP;
    /// returns once it has answered `kernel_info` and IOPub delivers.
    async fn start(spec: &Kernelspec, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = uuid::Uuid::new_v4().simple().to_string();
        let info = if spec.tcp_only() {
            // Five distinct free ports: held together while they are chosen.
            let held = (0..5)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()?;
            let ports = held
                .iter()
                .map(|l| Ok(l.local_addr()?.port()))
                .collect::<std::io::Result<Vec<u16>>>()?;
            let [shell_port, iopub_port, stdin_port, control_port, hb_port] = ports[..] else {
                bail!("five ports");
            };
            ConnectionInfo {
                transport: Transport::TCP,
                ip: "127.0.0.1".into(),
                shell_port,
                iopub_port,
                stdin_port,
                control_port,
                hb_port,
                key,
                signature_scheme: "hmac-sha256".into(),
                kernel_name: Some(spec.name.clone()),
            }
        } else {
            ConnectionInfo {
                transport: Transport::IPC,
                ip: dir.join("k").display().to_string(),
                shell_port: 1,
                iopub_port: 2,
                stdin_port: 3,
                control_port: 4,
                hb_port: 5,
                key,
                signature_scheme: "hmac-sha256".into(),
                kernel_name: Some(spec.name.clone()),
            }
        };
        let file = dir.join("kernel.json");
        std::fs::write(&file, serde_json::to_vec(&info)?)?;
        let argv: Vec<String> = spec
            .spec
            .argv
            .iter()
            .map(|a| a.replace("{connection_file}", &file.display().to_string()))
            .collect();
        let (program, rest) = argv.split_first().context("empty argv")?;
        let spawned = Instant::now();
        let child = tokio::process::Command::new(program)
            .args(rest)
            .envs(spec.spec.env.iter().flatten())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        // The client's connect retries with a backoff that grows to seconds; waiting here for
        // the kernel to listen keeps the start time from being rounded up to a retry.
        for port in [info.shell_port, info.iopub_port] {
            listening(&info, port).await?;
        }
        let session = uuid::Uuid::new_v4().to_string();
        let identity = jupyter_zmq_client::peer_identity_for_session(&session)?;
        let mut iopub =
            jupyter_zmq_client::create_client_iopub_connection(&info, "", &session).await?;
        let mut shell = jupyter_zmq_client::create_client_shell_connection_with_identity(
            &info, &session, identity,
        )
        .await?;
        // Handshake: kernel_info until the reply and some IOPub message have arrived.
        let mut answered = None;
        let mut live = false;
        let deadline = spawned + Duration::from_secs(120);
        while !(answered.is_some() && live) {
            if Instant::now() > deadline {
                bail!("kernel did not answer");
            }
            shell.send(KernelInfoRequest {}.into()).await?;
            let round = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(round);
            loop {
                tokio::select! {
                    () = &mut round => break,
                    m = shell.read(), if answered.is_none() => {
                        if matches!(m?.content, JupyterMessageContent::KernelInfoReply(_)) {
                            answered = Some(spawned.elapsed());
                        }
                    }
                    m = iopub.read(), if !live => { m?; live = true; }
                }
                if answered.is_some() && live {
                    break;
                }
            }
        }
        Ok(Self {
            child,
            shell,
            iopub,
            answered: answered.unwrap_or_default(),
        })
    }

    /// One `1+1`: waits for its reply on shell, and its idle status and result on IOPub (in
    /// either order: Deno's kernel sometimes publishes the result after `idle`); returns the
    /// result's `text/plain`.
    async fn execute(&mut self) -> anyhow::Result<Option<String>> {
        let request: JupyterMessage = ExecuteRequest::new("1+1".into()).into();
        let id = request.header.msg_id.clone();
        self.shell.send(request).await?;
        let (mut reply, mut idle, mut result) = (false, false, None);
        while !(reply && idle && result.is_some()) {
            tokio::select! {
                m = self.shell.read(), if !reply => {
                    let m = m?;
                    reply = matches!(m.content, JupyterMessageContent::ExecuteReply(_))
                        && m.parent_header.is_some_and(|h| h.msg_id == id);
                }
                m = self.iopub.read(), if !(idle && result.is_some()) => {
                    let m = m?;
                    if m.parent_header.as_ref().is_none_or(|h| h.msg_id != id) {
                        continue;
                    }
                    match &m.content {
                        JupyterMessageContent::Status(s) => idle |= s.execution_state == ExecutionState::Idle,
                        JupyterMessageContent::ExecuteResult(r) => {
                            result = r.data.content.iter().find_map(|d| match d {
                                MediaType::Plain(t) => Some(t.clone()),
                                _ => None,
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(result)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Waits until the kernel listens on `port` of `info` (a unix socket path for ipc, a loopback
/// port for TCP), asking every 2 ms.
async fn listening(info: &ConnectionInfo, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = match info.transport {
            Transport::IPC => tokio::net::UnixStream::connect(format!("{}-{port}", info.ip))
                .await
                .is_ok(),
            Transport::TCP => tokio::net::TcpStream::connect((info.ip.as_str(), port))
                .await
                .is_ok(),
        };
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("kernel never listened on {port}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---- Jupyter Server -------------------------------------------------------------------------

async fn bench_jupyter_server(args: &Args, venv: &Path, scratch: &Path) -> anyhow::Result<Result_> {
    let server = JupyterServer::start_kernel(venv, scratch, &args.kernel).await?;
    let pid = server.pid;
    let mut ws = server.connect().await?;
    let session = uuid::Uuid::new_v4().to_string();
    let msg =
        |msg_type: &str, content: serde_json::Value| jupyter_msg(&session, msg_type, &content);
    let (samples, total) = measure(args, &mut ws, async |ws: &mut Ws| {
        let (id, text) = msg("execute_request", serde_json::json!({"code": "1+1", "silent": false, "store_history": true, "user_expressions": {}, "allow_stdin": false, "stop_on_error": true}));
        ws.send(Message::text(text)).await?;
        let (mut reply, mut idle, mut result) = (false, false, None);
        while !(reply && idle && result.is_some()) {
            let Some(m) = ws.next().await else { bail!("closed") };
            if let Message::Text(t) = m? {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                if v["parent_header"]["msg_id"] != id.as_str() {
                    continue;
                }
                reply |= v["msg_type"] == "execute_reply";
                idle |= v["msg_type"] == "status" && v["content"]["execution_state"] == "idle";
                if v["msg_type"] == "execute_result" {
                    result = v["content"]["data"]["text/plain"].as_str().map(str::to_owned);
                }
            }
        }
        Ok(result)
    })
    .await?;
    let rss = rss_mib(pid);
    server.stop().await;
    Ok(Result_ {
        name: "Jupyter Server WebSocket (anchor)".into(),
        samples,
        total,
        rss_mib: rss,
    })
}

// ---- Warm pod starts ------------------------------------------------------------------------

/// The ways a pod's kernel is started, in the order each round runs them.
const WAYS: [&str; 3] = [
    "Middleman, kernel in its sandbox (default)",
    "Middleman, `--kernel-namespaces off`",
    "kernel alone, spawned directly (floor)",
];

/// Start times of each of [`WAYS`]: to ready, and (for Middleman) to listening.
struct Starts {
    ready: [Vec<Duration>; 3],
    listening: [Vec<Duration>; 3],
}

/// `args.starts` rounds, each starting one of every way in turn, one at a time, each stopped
/// before the next starts.
async fn bench_starts(args: &Args, spec: &Kernelspec, scratch: &Path) -> anyhow::Result<Starts> {
    let mut starts = Starts {
        ready: Default::default(),
        listening: Default::default(),
    };
    for round in 0..args.starts {
        for (way, name) in WAYS.iter().enumerate() {
            let dir = scratch.join(format!("start-{round}-{way}"));
            let mut extra = vec!["--kernel", args.kernel.as_str()];
            if way == 1 {
                extra.extend(["--kernel-namespaces", "off"]);
            }
            if way < 2 {
                let mm = Middleman::start(&args.middleman_bin, &dir, &extra)
                    .await
                    .with_context(|| format!("{name}, start {round}"))?;
                let ready = mm.ready_after(Duration::from_millis(2)).await?;
                if round == 0 {
                    print!("{name}: ");
                    print_layers(&mm).await;
                }
                starts.ready[way].push(ready);
                starts.listening[way].push(mm.listening);
                mm.terminate().await;
            } else {
                let kernel = DirectKernel::start(spec, &dir).await?;
                starts.ready[way].push(kernel.answered);
                kernel.stop().await;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(starts)
}

fn report_starts(args: &Args, spec: &Kernelspec, starts: &Starts) -> anyhow::Result<()> {
    println!(
        "\nWarm pod start of a {} kernel ({}), {} starts of each way, interleaved:\n",
        spec.name, spec.spec.display_name, args.starts
    );
    println!("| way | p50 ms | p90 ms | min ms | max ms | listening p50 ms |");
    println!("|---|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for (way, name) in WAYS.iter().enumerate() {
        let mut s = starts.ready[way].clone();
        s.sort();
        let mut l = starts.listening[way].clone();
        l.sort();
        let listening = if l.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.1}", pct(&l, 0.5))
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {listening} |",
            pct(&s, 0.5),
            pct(&s, 0.9),
            pct(&s, 0.0),
            pct(&s, 1.0),
        );
        p50s.push(pct(&s, 0.5));
    }
    if let [jail, open, alone] = p50s[..] {
        println!(
            "\nAt p50: the sandbox adds {:.1} ms over `--kernel-namespaces off`; Middleman without namespaces adds {:.1} ms over the kernel alone",
            jail - open,
            open - alone
        );
    }
    Ok(())
}

// ---- Report ---------------------------------------------------------------------------------

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

fn report(args: &Args, results: &[Result_]) {
    println!(
        "Execute round trip of `1+1` on a {} kernel, {} iterations after {} warm-up, one run:\n",
        args.kernel, args.iterations, args.warmup
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
    // Middleman first, the floor second, Jupyter Server (when measured) last.
    let (Some(mm), Some(zmq)) = (p50s.first(), p50s.get(1)) else {
        return;
    };
    println!(
        "\nRatios: Middleman p50 / direct ZeroMQ p50 = {:.3}",
        mm / zmq
    );
    if let (Some(js), Some(r_mm), Some(r_js)) = (p50s.get(2), results.first(), results.get(2)) {
        println!("Jupyter Server p50 / Middleman p50 = {:.2}", js / mm);
        if let (Some(a), Some(b)) = (r_mm.rss_mib, r_js.rss_mib) {
            println!("Middleman RSS / Jupyter Server RSS = {:.2}", a / b);
        }
    }
}
