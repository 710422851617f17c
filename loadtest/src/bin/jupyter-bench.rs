//! Our Jupyter Server API against stock Jupyter Server, as a Jupyter client sees them, in one run
//! (docs/benchmarks.md, "Jupyter Server API"; the plan is docs/plans/jupyter-server-api.md §5).
//!
//! Ours: Watchman in this process (local backend: every pod a real Middleman with its ipykernel;
//! the memory store, or Redis with `--store redis`) behind a `gateway` process with
//! `--jupyter-api`, reached with a Jupyter API token from `POST /v1/jupyter-tokens`, as the
//! product backend mints it. The anchor: stock jupyter_server 2.21.1 from the tools'
//! environment, starting local ipykernels of the same kernelspec.
//!
//! 1. **Kernel start as JupyterLab sees it**: from `POST {base}api/kernels {"name"}` to the
//!    `execute_result` of `1+1` on the kernel's channels WebSocket, in between the WebSocket
//!    handshake (`v1.kernel.websocket.jupyter.org`) and `kernel_info_request` → reply, as
//!    @jupyterlab/services does. Each kernel is closed and deleted after its sample, outside the
//!    clock (ours releases the pod; stock shuts its kernel down). The two servers take turns,
//!    the first alternating by round. Before every sample the warm pool is full and no pod is
//!    starting; our samples also begin just after a reconcile pass, so none runs during them
//!    (the refill a start triggers boots after it, not beside it on this 2-core machine; with
//!    `--unaligned` it may).
//! 2. **Execute round trips** on an open kernel WebSocket: `execute_request` `1+1` (a JupyterLab
//!    cell's request: `metadata.cellId`, the same cell each time) until the client has the
//!    `execute_reply`, the IOPub `idle` and the result (checked to be `2`), taking turns.
//! 3. With `--parts open` (a diagnosis, ours only): where our WebSocket open goes, per fresh
//!    kernel: `Routes.ResolveKernel` alone, and the open to the `kernel_info` reply through the
//!    gateway and direct to the pod, each being the pod's first connection in turn.
//!
//! Prints Markdown tables with ratios; the goals are stated, not asserted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use loadtest::{API_TOKEN, Gateway, JupyterServer, WatchmanClient, Ws, http, tempdir};
use middleman::jupyter::wire::{self, Channel, Framing, Outgoing, WireMessage};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use watchman_proto::v1 as pb;

#[derive(Parser, Debug)]
struct Args {
    /// Which parts to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "start,exec")]
    parts: Vec<Part>,
    /// Kernel starts per server.
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Measured round trips per server.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Unmeasured round trips per server first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Warm pods of the plan (`warm = { min = max = N }`): a start takes one, the pool refills
    /// between samples.
    #[arg(long, default_value_t = 2)]
    pool: u32,
    /// Watchman's reconcile interval. Our starts begin just after a pass, so they have this
    /// long before the next one (which starts the refill pod).
    #[arg(long, default_value = "1s")]
    reconcile_interval: String,
    /// Start our samples at any point of the reconcile interval (a refill pod may then boot
    /// beside the sample, on the same cores).
    #[arg(long)]
    unaligned: bool,
    /// Quiet time before each start sample, once the pool is full and nothing starts.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// The kernel WebSocket's wire form, for both servers.
    #[arg(long, value_enum, default_value = "v1")]
    wire: Wire,
    /// Watchman's store.
    #[arg(long, value_enum, default_value = "memory")]
    store: Store,
    /// The kernelspec both servers run (our plan's kernel; stock's kernel name).
    #[arg(long, default_value = "python3")]
    kernel: String,
    /// The middleman binary (Watchman's local pods).
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
    /// The gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    gateway_bin: PathBuf,
    /// More flags for Watchman (e.g. `--watchman-arg=--checkpoint-store=none`).
    #[arg(long = "watchman-arg", allow_hyphen_values = true)]
    watchman_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Start,
    Exec,
    /// Where our WebSocket open goes (not in the default): per fresh kernel, Watchman's
    /// `ResolveKernel` alone, the open (to the `kernel_info` reply) through the gateway and
    /// direct to the pod with the session token it resolved, each path first in turn.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Wire {
    /// `v1.kernel.websocket.jupyter.org` (what JupyterLab 4 offers and both servers select).
    V1,
    /// No subprotocol: JSON text frames.
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    Memory,
    /// A `redis-server` started by the bench.
    Redis,
}

/// A step that should take milliseconds (stock's kernel start takes about one second).
const STEP: Duration = Duration::from_secs(60);
/// Our plan's name: the kernelspec name a Jupyter client starts.
const PLAN: &str = "bench";
/// The bearer token of the gateway's `Routes` calls.
const ROUTE_TOKEN: &str = "bench-route-token-0123456789";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let venv = PathBuf::from(
        std::env::var("NBP_TOOLS_ENV").context("NBP_TOOLS_ENV not set: source scripts/env.sh")?,
    );
    let middleman_bin = std::fs::canonicalize(&args.middleman_bin).with_context(|| {
        format!(
            "{}: cargo build --release -p middleman",
            args.middleman_bin.display()
        )
    })?;
    let gateway_bin = std::fs::canonicalize(&args.gateway_bin).with_context(|| {
        format!(
            "{}: cargo build --release -p gateway",
            args.gateway_bin.display()
        )
    })?;
    let scratch = tempdir("jupyter-bench")?;
    let redis = (args.store == Store::Redis).then(testkit::RedisServer::start);
    let store = redis
        .as_ref()
        .map_or_else(|| "memory".to_owned(), |r| r.url());

    // Ours: Watchman, the gateway in front of it, a Jupyter API token.
    let (w, mut c) = start_watchman(&args, &scratch, &middleman_bin, &store).await?;
    let wm = w.watchman.clone();
    let result = run(&args, &scratch, &gateway_bin, &venv, &w, &mut c).await;
    // Whatever happened, no pod outlives the bench.
    w.stop().await;
    wm.delete_all_pods().await?;
    drop(redis);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Everything after Watchman is up: the gateway, the anchor, the parts.
async fn run(
    args: &Args,
    scratch: &Path,
    gateway_bin: &Path,
    venv: &Path,
    w: &watchman::Running,
    c: &mut WatchmanClient,
) -> anyhow::Result<()> {
    let framing = match args.wire {
        Wire::V1 => Framing::V1,
        Wire::Legacy => Framing::Legacy,
    };
    let mut passes = w.reconciler.clone();
    // Written by start_watchman (the public key by local_watchman).
    let route_token = scratch.join("watchman/route-token");
    let public_key = scratch.join("watchman/keys/public.pem");
    let gateway = Gateway::start(
        gateway_bin,
        "127.0.0.1:0",
        &public_key,
        &[],
        &[
            "--watchman",
            &format!("http://{}", w.grpc_addr),
            "--watchman-token-file",
            &route_token.display().to_string(),
            "--jupyter-api",
            &format!("http://{}", w.http_addr),
        ],
    )
    .await?;
    let token = jupyter_token(w.http_addr, "ada").await?;
    let ours = Server {
        name: "ours (gateway → Watchman, warm pod)",
        port: port_of(&gateway.addr)?,
        prefix: "/jupyter/",
        token,
        kernel: PLAN.into(),
    };
    // The anchor.
    let stock_server = JupyterServer::start_kernel(venv, scratch, &args.kernel).await?;
    let stock = Server {
        name: "stock jupyter_server 2.21.1",
        port: stock_server.port,
        prefix: "/",
        token: stock_server.token.clone(),
        kernel: args.kernel.clone(),
    };
    wait_pool(c, args.pool, true).await?;

    println!("# Jupyter Server API benchmark\n");
    println!(
        "Load average at the start: {}; {} cores; Watchman store {:?}, warm pool {}, reconcile interval {}{}; wire {:?}; kernel {}.\n",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.store,
        args.pool,
        args.reconcile_interval,
        if args.unaligned {
            ", samples not aligned to passes"
        } else {
            ""
        },
        args.wire,
        args.kernel,
    );
    let servers = [&ours, &stock];
    let mut env = Env {
        args,
        framing,
        c,
        passes: &mut passes,
    };
    let result = async {
        if args.parts.contains(&Part::Start) {
            let starts = start_part(&mut env, servers)
                .await
                .context("kernel starts")?;
            report_starts(args, servers, &starts);
        }
        if args.parts.contains(&Part::Exec) {
            let trips = exec_part(&mut env, servers).await.context("round trips")?;
            report_trips(args, servers, &trips);
        }
        if args.parts.contains(&Part::Open) {
            let opens = open_part(&mut env, &ours, w.grpc_addr)
                .await
                .context("opens")?;
            report_opens(args, &opens);
        }
        anyhow::Ok(())
    }
    .await;
    println!("Load average at the end: {}", load_average());
    gateway.stop().await;
    stock_server.stop().await;
    result
}

/// What the parts share.
struct Env<'a> {
    args: &'a Args,
    framing: Framing,
    c: &'a mut WatchmanClient,
    passes: &'a mut tokio::sync::watch::Receiver<watchman::service::ReconcilerStatus>,
}

impl Env<'_> {
    /// Waits until the pool is full and quiet, then `settle_ms`; for our samples (unless
    /// unaligned), then until a reconcile pass has just ended.
    async fn quiet(&mut self, ours: bool) -> anyhow::Result<()> {
        wait_pool(self.c, self.args.pool, true).await?;
        tokio::time::sleep(Duration::from_millis(self.args.settle_ms)).await;
        if ours && !self.args.unaligned {
            let before = self.passes.borrow_and_update().passes;
            while self.passes.borrow_and_update().passes == before {
                tokio::time::timeout(STEP, self.passes.changed())
                    .await
                    .context("no reconcile pass")??;
            }
        }
        Ok(())
    }

    fn passes(&self) -> u64 {
        self.passes.borrow().passes
    }
}

// ---- Our side ----------------------------------------------------------------------------------

async fn start_watchman(
    args: &Args,
    scratch: &Path,
    middleman_bin: &Path,
    store: &str,
) -> anyhow::Result<(watchman::Running, WatchmanClient)> {
    let dir = scratch.join("watchman");
    std::fs::create_dir_all(&dir)?;
    let route_token = dir.join("route-token");
    std::fs::write(&route_token, ROUTE_TOKEN)?;
    let prefix = format!("jupyter-bench-{}:", uuid::Uuid::new_v4().simple());
    let mut extra = vec![
        "--route-token-file".to_owned(),
        route_token.display().to_string(),
        "--store".into(),
        store.into(),
        "--redis-prefix".into(),
        prefix,
    ];
    extra.extend(args.watchman_args.iter().cloned());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    loadtest::local_watchman(
        &dir,
        &format!(
            "[plans.{PLAN}]\nkernel = \"{}\"\nwarm = {{ ratio = 0.0, min = {1}, max = {1} }}\n",
            args.kernel, args.pool
        ),
        middleman_bin,
        &args.reconcile_interval,
        &extra,
    )
    .await
    .context("starting watchman")
}

/// Waits until plan [`PLAN`] has `n` warm pods and none starting, and (`idle`) none
/// allocated either.
async fn wait_pool(c: &mut WatchmanClient, n: u32, idle: bool) -> anyhow::Result<()> {
    let (within, every) = (Duration::from_secs(300), Duration::from_millis(50));
    loadtest::wait_pool(c, within, every, |p| {
        p.plan == PLAN && p.warm >= n && p.starting == 0 && (!idle || p.allocated == 0)
    })
    .await
}

/// A Jupyter API token for `user` (no document: each kernel start is a new document), from
/// `POST /v1/jupyter-tokens` with the API token, as the product backend gets it.
async fn jupyter_token(watchman_http: SocketAddr, user: &str) -> anyhow::Result<String> {
    let body = json!({"user_id": user, "user_name": "Ada", "document_id": "", "role": "editor"})
        .to_string();
    let (status, answer) = loadtest::http_with(
        watchman_http.port(),
        "POST",
        "/v1/jupyter-tokens",
        &format!("Bearer {API_TOKEN}"),
        &body,
    )
    .await?;
    if status != 200 {
        bail!("POST /v1/jupyter-tokens answered {status}: {answer}");
    }
    let v: Value = serde_json::from_str(&answer)?;
    Ok(v["token"].as_str().context("no token")?.to_owned())
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn port_of(addr: &str) -> anyhow::Result<u16> {
    Ok(addr.rsplit(':').next().unwrap_or_default().parse()?)
}

// ---- Both servers: REST and the kernel WebSocket -------------------------------------------

/// A Jupyter server as a client sees it: `http://127.0.0.1:{port}{prefix}` is its base URL.
#[derive(Debug)]
struct Server {
    name: &'static str,
    port: u16,
    prefix: &'static str,
    token: String,
    /// The kernelspec name to start.
    kernel: String,
}

impl Server {
    /// `POST {base}api/kernels`: the new kernel's id.
    async fn start_kernel(&self) -> anyhow::Result<String> {
        let path = format!("{}api/kernels", self.prefix);
        let body = json!({ "name": self.kernel }).to_string();
        let (status, answer) = http(self.port, "POST", &path, &self.token, &body).await?;
        if status != 201 {
            bail!("{}: POST {path} answered {status}: {answer}", self.name);
        }
        let v: Value = serde_json::from_str(&answer)?;
        Ok(v["id"].as_str().context("no kernel id")?.to_owned())
    }

    /// `DELETE {base}api/kernels/<id>`.
    async fn delete_kernel(&self, id: &str) -> anyhow::Result<()> {
        let path = format!("{}api/kernels/{id}", self.prefix);
        let (status, answer) = http(self.port, "DELETE", &path, &self.token, "").await?;
        if status != 204 {
            bail!("{}: DELETE {path} answered {status}: {answer}", self.name);
        }
        Ok(())
    }

    fn channels(&self, id: &str, session: &str) -> String {
        format!(
            "ws://127.0.0.1:{}{}api/kernels/{id}/channels?session_id={session}&token={}",
            self.port, self.prefix, self.token
        )
    }
}

/// A kernel message as the bench reads it.
#[derive(Debug)]
struct Msg {
    channel: String,
    msg_type: String,
    /// `parent_header.msg_id`.
    parent: String,
    content: Value,
}

/// A client's kernel WebSocket, as @jupyterlab/services holds it.
struct Conn {
    ws: Ws,
    framing: Framing,
    session: String,
    /// The notebook cell this client runs (`metadata.cellId`).
    cell: String,
}

impl Conn {
    /// Opens `{base}api/kernels/<id>/channels`, offering the v1 subprotocol for
    /// [`Framing::V1`] (and requiring it).
    async fn open(server: &Server, id: &str, framing: Framing) -> anyhow::Result<Self> {
        let session = uuid::Uuid::new_v4().to_string();
        Self::open_url(&server.channels(id, &session), server.name, framing).await
    }

    /// Opens a kernel WebSocket at `url` (`what` names it in errors).
    async fn open_url(url: &str, what: &str, framing: Framing) -> anyhow::Result<Self> {
        let session = url
            .split("session_id=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .unwrap_or_default()
            .to_owned();
        let mut request = url.into_client_request()?;
        if framing == Framing::V1 {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static(wire::SUBPROTOCOL),
            );
        }
        let (ws, response) = tokio::time::timeout(
            STEP,
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await
        .context("WebSocket handshake timed out")?
        .with_context(|| format!("{what}: kernel WebSocket"))?;
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if framing == Framing::V1 && selected != Some(wire::SUBPROTOCOL) {
            bail!("{what} selected {selected:?}, not {}", wire::SUBPROTOCOL);
        }
        Ok(Self {
            ws,
            framing,
            session,
            cell: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Sends a request; returns its `msg_id`.
    async fn send(
        &mut self,
        channel: Channel,
        msg_type: &str,
        content: Value,
        metadata: Value,
    ) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let header = json!({
            "msg_id": id, "msg_type": msg_type, "session": self.session, "username": "ada",
            "version": "5.3", "date": "2026-12-04T00:00:00.000Z",
        });
        let m = WireMessage {
            channel,
            header: object(header),
            parent_header: Map::new(),
            metadata: object(metadata),
            content: object(content),
            buffers: Vec::new(),
        };
        let frame = match wire::encode(self.framing, &m) {
            Outgoing::Binary(b) => Message::binary(b),
            Outgoing::Text(t) => Message::text(t),
        };
        self.ws.send(frame).await?;
        Ok(id)
    }

    /// The next kernel message (pings and pongs skipped).
    async fn recv(&mut self) -> anyhow::Result<Msg> {
        loop {
            let m = tokio::time::timeout(STEP, self.ws.next())
                .await
                .context("no message")?
                .context("connection ended")??;
            match m {
                Message::Binary(b) if self.framing == Framing::V1 => return decode_v1(&b),
                Message::Text(t) if self.framing == Framing::Legacy => {
                    return decode_legacy(&t);
                }
                Message::Close(c) => bail!("closed: {c:?}"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                other => bail!("unexpected frame for {:?}: {other:?}", self.framing),
            }
        }
    }

    /// `kernel_info_request` on shell until its reply, as @jupyterlab/services does on connect.
    async fn kernel_info(&mut self) -> anyhow::Result<()> {
        let id = self
            .send(Channel::Shell, "kernel_info_request", json!({}), json!({}))
            .await?;
        loop {
            let m = self.recv().await?;
            if m.parent == id && m.msg_type == "kernel_info_reply" {
                if m.content["status"] != "ok" {
                    bail!("kernel_info_reply: {}", m.content);
                }
                return Ok(());
            }
        }
    }

    /// Runs `1+1` in this client's cell: (when the `execute_result` came, when the client had
    /// the reply, the idle status and the result). The result must be `2`.
    async fn execute(&mut self) -> anyhow::Result<(Instant, Instant)> {
        let content = json!({
            "code": "1+1", "silent": false, "store_history": true, "user_expressions": {},
            "allow_stdin": true, "stop_on_error": true,
        });
        let metadata = json!({"cellId": self.cell, "deletedCells": [], "recordTiming": false});
        let id = self
            .send(Channel::Shell, "execute_request", content, metadata)
            .await?;
        let (mut reply, mut idle, mut result) = (false, false, None);
        while !(reply && idle && result.is_some()) {
            let m = self.recv().await?;
            if m.parent != id {
                continue;
            }
            match (m.channel.as_str(), m.msg_type.as_str()) {
                ("shell", "execute_reply") => {
                    if m.content["status"] != "ok" {
                        bail!("execute_reply: {}", m.content);
                    }
                    reply = true;
                }
                ("iopub", "status") => idle |= m.content["execution_state"] == "idle",
                ("iopub", "execute_result") => {
                    let plain = &m.content["data"]["text/plain"];
                    if plain != "2" {
                        bail!("`1+1` gave {plain}");
                    }
                    result = Some(Instant::now());
                }
                ("iopub", "error") => bail!("error: {}", m.content),
                _ => {}
            }
        }
        Ok((result.unwrap_or_else(Instant::now), Instant::now()))
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A server's v1 frame: a u64 LE count N, N u64 LE offsets from the frame's start (the last
/// may be the frame's end), then the channel name, header, parent header, metadata, content
/// and buffers. (`wire::decode` reads a client's frames, so it refuses iopub.)
fn decode_v1(frame: &[u8]) -> anyhow::Result<Msg> {
    let word = |i: usize| -> anyhow::Result<usize> {
        let bytes = frame.get(i * 8..i * 8 + 8).context("frame too short")?;
        Ok(usize::try_from(u64::from_le_bytes(bytes.try_into()?))?)
    };
    let count = word(0)?;
    if !(5..=70).contains(&count) {
        bail!("{count} offsets");
    }
    let offsets = (1..=count).map(word).collect::<anyhow::Result<Vec<_>>>()?;
    let part = |i: usize| -> anyhow::Result<&[u8]> {
        let start = offsets[i];
        let end = offsets.get(i + 1).copied().unwrap_or(frame.len());
        frame.get(start..end).context("bad offsets")
    };
    let header: Value = serde_json::from_slice(part(1)?)?;
    let parent: Value = serde_json::from_slice(part(2)?)?;
    Ok(Msg {
        channel: String::from_utf8(part(0)?.to_vec())?,
        msg_type: header["msg_type"].as_str().unwrap_or_default().to_owned(),
        parent: parent["msg_id"].as_str().unwrap_or_default().to_owned(),
        content: serde_json::from_slice(part(4)?)?,
    })
}

/// A legacy text frame: one JSON object with `channel` and the four parts.
fn decode_legacy(text: &str) -> anyhow::Result<Msg> {
    let mut v: Value = serde_json::from_str(text)?;
    Ok(Msg {
        channel: v["channel"].as_str().unwrap_or("shell").to_owned(),
        msg_type: v["header"]["msg_type"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        parent: v["parent_header"]["msg_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        content: v["content"].take(),
    })
}

// ---- Part 1: kernel starts -----------------------------------------------------------------

/// One start, each time from `POST api/kernels`.
#[derive(Debug, Clone, Copy)]
struct Start {
    /// The POST answered 201.
    post: Duration,
    /// The WebSocket handshake completed.
    open: Duration,
    /// The `kernel_info_reply` came.
    info: Duration,
    /// The `execute_result` of `1+1` came (the start as a user sees it).
    result: Duration,
    /// The client had the reply, the idle status and the result.
    done: Duration,
    /// A reconcile pass ended during the sample (ours only).
    pass_during: bool,
}

/// `args.starts` rounds; each starts one kernel on each server, the first alternating.
async fn start_part(env: &mut Env<'_>, servers: [&Server; 2]) -> anyhow::Result<[Vec<Start>; 2]> {
    let mut out: [Vec<Start>; 2] = Default::default();
    for round in 0..env.args.starts {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let server = servers[i];
            env.quiet(i == 0).await?;
            let before = env.passes();
            let (mut s, id, conn) = start_once(server, env.framing)
                .await
                .with_context(|| format!("{}, start {round}", server.name))?;
            s.pass_during = i == 0 && env.passes() != before;
            conn.close().await;
            server.delete_kernel(&id).await?;
            out[i].push(s);
        }
    }
    Ok(out)
}

/// POST, WebSocket, `kernel_info`, `1+1`: the sample, the kernel's id and its open connection.
async fn start_once(server: &Server, framing: Framing) -> anyhow::Result<(Start, String, Conn)> {
    let t0 = Instant::now();
    let id = server.start_kernel().await?;
    let post = t0.elapsed();
    let mut conn = Conn::open(server, &id, framing).await?;
    let open = t0.elapsed();
    conn.kernel_info().await?;
    let info = t0.elapsed();
    let (result, done) = conn.execute().await?;
    Ok((
        Start {
            post,
            open,
            info,
            result: result - t0,
            done: done - t0,
            pass_during: false,
        },
        id,
        conn,
    ))
}

// ---- Part 2: round trips -------------------------------------------------------------------

/// Starts a kernel on each server, then `warmup` + `iterations` round trips on each, taking
/// turns, the first alternating; returns the measured ones, with when each ended.
async fn exec_part(
    env: &mut Env<'_>,
    servers: [&Server; 2],
) -> anyhow::Result<[Vec<(Instant, Duration)>; 2]> {
    env.quiet(true).await?;
    let (_, ours_id, ours) = start_once(servers[0], env.framing).await?;
    let (_, stock_id, stock) = start_once(servers[1], env.framing).await?;
    let mut conns = [ours, stock];
    // The refill of the pod ours took boots now, not during the round trips.
    wait_refilled(env).await?;
    let mut out: [Vec<(Instant, Duration)>; 2] = Default::default();
    for round in 0..env.args.warmup + env.args.iterations {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let t = Instant::now();
            let (_, done) = tokio::time::timeout(STEP, conns[i].execute())
                .await
                .context("round trip timed out")?
                .with_context(|| format!("{}, round trip {round}", servers[i].name))?;
            if round >= env.args.warmup {
                out[i].push((done, done - t));
            }
        }
    }
    let [ours, stock] = conns;
    ours.close().await;
    stock.close().await;
    servers[0].delete_kernel(&ours_id).await?;
    servers[1].delete_kernel(&stock_id).await?;
    Ok(out)
}

/// Waits until the pool has its warm pods again (one is allocated) and nothing starts, then
/// the settle time.
async fn wait_refilled(env: &mut Env<'_>) -> anyhow::Result<()> {
    wait_pool(env.c, env.args.pool, false).await?;
    tokio::time::sleep(Duration::from_millis(env.args.settle_ms)).await;
    Ok(())
}

// ---- Diagnosis: our WebSocket open, step by step ---------------------------------------------

/// One fresh kernel's opens, each to its `kernel_info` reply.
#[derive(Debug, Clone, Copy)]
struct Opens {
    /// `Routes.ResolveKernel` from the bench (the gateway's call, over its own connection).
    resolve: Duration,
    /// Through the gateway: `/jupyter/api/kernels/<id>/channels`.
    gateway: Duration,
    /// Direct to the pod's `/jupyter/channels` with the resolved session token.
    direct: Duration,
    /// Whether the gateway's open came first (the pod's first Jupyter connection).
    gateway_first: bool,
}

async fn open_part(
    env: &mut Env<'_>,
    ours: &Server,
    grpc: SocketAddr,
) -> anyhow::Result<Vec<Opens>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut routes = pb::routes_client::RoutesClient::with_interceptor(channel, loadtest::Bearer);
    let mut out = Vec::new();
    for i in 0..env.args.starts {
        env.quiet(true).await?;
        let id = ours.start_kernel().await?;
        let t = Instant::now();
        let r = routes
            .resolve_kernel(pb::ResolveKernelRequest {
                kernel_id: id.clone(),
                jupyter_token: ours.token.clone(),
            })
            .await?
            .into_inner();
        let resolve = t.elapsed();
        let direct_url = format!(
            "{}/jupyter/channels?session_id={}&token={}",
            r.endpoint.replacen("http://", "ws://", 1),
            uuid::Uuid::new_v4(),
            r.session_token
        );
        let gateway_first = i % 2 == 0;
        let (mut gateway, mut direct) = (Duration::ZERO, Duration::ZERO);
        for gw in [gateway_first, !gateway_first] {
            let t = Instant::now();
            let mut conn = if gw {
                Conn::open(ours, &id, env.framing).await?
            } else {
                Conn::open_url(&direct_url, "the pod", env.framing).await?
            };
            conn.kernel_info().await?;
            *(if gw { &mut gateway } else { &mut direct }) = t.elapsed();
            conn.close().await;
        }
        ours.delete_kernel(&id).await?;
        out.push(Opens {
            resolve,
            gateway,
            direct,
            gateway_first,
        });
    }
    Ok(out)
}

fn report_opens(args: &Args, opens: &[Opens]) {
    println!(
        "## Our kernel WebSocket open, step by step ({} fresh kernels; open to the `kernel_info` reply)\n",
        args.starts
    );
    println!("| step | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: Vec<f64>| {
        let s = sorted(v.into_iter());
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            pct(&s, 0.5),
            pct(&s, 0.9),
            pct(&s, 1.0)
        );
    };
    // `first`: the pod's first connection; `gw`: through the gateway.
    let pick = |first: bool, gw: bool| -> Vec<f64> {
        opens
            .iter()
            .filter(|o| o.gateway_first == (first == gw))
            .map(|o| ms(if gw { o.gateway } else { o.direct }))
            .collect()
    };
    row(
        "`Routes.ResolveKernel` alone (bench → Watchman gRPC)",
        opens.iter().map(|o| ms(o.resolve)).collect(),
    );
    row(
        "through the gateway, the pod's first connection",
        pick(true, true),
    );
    row(
        "direct to the pod, the pod's first connection",
        pick(true, false),
    );
    row("through the gateway, a later connection", pick(false, true));
    row("direct to the pod, a later connection", pick(false, false));
    println!();
}

// ---- Report --------------------------------------------------------------------------------

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p` quantile of sorted samples, ms (nearest rank).
fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut s: Vec<f64> = v.collect();
    s.sort_by(f64::total_cmp);
    s
}

fn report_starts(args: &Args, servers: [&Server; 2], starts: &[Vec<Start>; 2]) {
    println!(
        "## Kernel start: `POST api/kernels` to the `execute_result` of `1+1` ({} per server, interleaved)\n",
        args.starts
    );
    println!("| server | p50 ms | p90 ms | max ms | min ms | to reply + idle p50 ms |");
    println!("|---|---|---|---|---|---|");
    let mut p = Vec::new();
    for (server, s) in servers.iter().zip(starts) {
        let result = sorted(s.iter().map(|x| ms(x.result)));
        let done = sorted(s.iter().map(|x| ms(x.done)));
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            server.name,
            pct(&result, 0.5),
            pct(&result, 0.9),
            pct(&result, 1.0),
            pct(&result, 0.0),
            pct(&done, 0.5),
        );
        p.push((pct(&result, 0.5), pct(&result, 0.9), pct(&result, 1.0)));
    }
    if let [(o50, o90, omax), (s50, s90, smax)] = p[..] {
        println!(
            "\nStock / ours: p50 {:.1}x, p90 {:.1}x, max {:.1}x. Goal: ours under 50 ms with a warm pool: p50 {o50:.1} ms, p90 {o90:.1} ms, max {omax:.1} ms ({}).",
            s50 / o50,
            s90 / o90,
            smax / omax,
            if omax < 50.0 {
                "met at every sample"
            } else if o90 < 50.0 {
                "met at p90, not at max"
            } else if o50 < 50.0 {
                "met at p50 only"
            } else {
                "not met"
            }
        );
    }
    println!("\nWhere the time goes (p50 of each step, ms):\n");
    println!("| server | POST answered | WebSocket open | kernel_info reply | execute → result |");
    println!("|---|---|---|---|---|");
    for (server, s) in servers.iter().zip(starts) {
        let step = |f: fn(&Start) -> f64| pct(&sorted(s.iter().map(f)), 0.5);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            server.name,
            step(|x| ms(x.post)),
            step(|x| ms(x.open) - ms(x.post)),
            step(|x| ms(x.info) - ms(x.open)),
            step(|x| ms(x.result) - ms(x.info)),
        );
    }
    println!("\nEvery sample of ours, ms (POST / open / kernel_info / result):");
    for (i, x) in starts[0].iter().enumerate() {
        println!(
            "  {i:>3}: {:.2} / {:.2} / {:.2} / {:.2}{}",
            ms(x.post),
            ms(x.open),
            ms(x.info),
            ms(x.result),
            if x.pass_during {
                "  (a reconcile pass ended during it)"
            } else {
                ""
            }
        );
    }
    let stock: Vec<String> = sorted(starts[1].iter().map(|x| ms(x.result)))
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect();
    println!(
        "Stock's starts, sorted, ms: {}\nStock's mean: {:.1} ms",
        stock.join(", "),
        starts[1].iter().map(|x| ms(x.result)).sum::<f64>() / starts[1].len().max(1) as f64
    );
    println!();
}

fn report_trips(args: &Args, servers: [&Server; 2], trips: &[Vec<(Instant, Duration)>; 2]) {
    println!(
        "## Execute round trip of `1+1` on an open kernel WebSocket ({} per server after {} warm-up, interleaved)\n",
        args.iterations, args.warmup
    );
    println!("| server | p50 ms | p90 ms | p99 ms | p99.9 ms | mean ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    let qs = [0.5, 0.9, 0.99, 0.999];
    let mut rows = Vec::new();
    for (server, t) in servers.iter().zip(trips) {
        let s = sorted(t.iter().map(|(_, d)| ms(*d)));
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        let q: Vec<f64> = qs.iter().map(|&p| pct(&s, p)).collect();
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {mean:.3} | {:.3} |",
            server.name,
            q[0],
            q[1],
            q[2],
            q[3],
            pct(&s, 1.0)
        );
        rows.push((q, mean));
    }
    if let [(ours, om), (stock, sm)] = &rows[..] {
        let r: Vec<String> = ours
            .iter()
            .zip(stock)
            .map(|(o, s)| format!("{:.1}", s / o))
            .collect();
        println!(
            "\nStock / ours: p50 {}x, p90 {}x, p99 {}x, p99.9 {}x, mean {:.1}x. Goal: at least 4x faster at p50 ({}).\n",
            r[0],
            r[1],
            r[2],
            r[3],
            sm / om,
            if stock[0] / ours[0] >= 4.0 {
                "met"
            } else {
                "not met"
            }
        );
    }
    // The slow ones: how many, and how far apart (a periodic cause shows as a steady gap).
    for ((server, t), (q, _)) in servers.iter().zip(trips).zip(&rows) {
        let slow: Vec<Instant> = t
            .iter()
            .filter(|(_, d)| ms(*d) > 2.0 * q[0])
            .map(|(at, _)| *at)
            .collect();
        let gaps = sorted(slow.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()));
        println!(
            "{}: {} round trips over twice its p50; seconds between them: p10 {:.2}, p50 {:.2}, p90 {:.2}",
            server.name,
            slow.len(),
            pct(&gaps, 0.1),
            pct(&gaps, 0.5),
            pct(&gaps, 0.9),
        );
    }
    println!();
}
