//! Test fixtures: a real Middleman on 127.0.0.1:0 with a real ipykernel, and a WebSocket client
//! speaking the protocol types.
//!
//! One file over 500 lines: every test crate includes it as its one `common` module.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod ypeer;

use std::time::Duration;

use doc_protocol::{ClientMessage, ExecutionStatus, Output, ServerEvent, ServerFrame};
use futures_util::{SinkExt as _, StreamExt as _};
use middleman::config::ServeArgs;
use session_token::{Claims, Role, SigningKey};
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(60);

pub use testkit::TempDir;

/// The tools' Python (nbformat, IPython; `make test` prepares it), never the kernel's.
pub fn venv_python() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("NBP_TOOLS_ENV").expect("NBP_TOOLS_ENV: run `make test`"),
    )
    .join("bin/python")
}

/// Fails clearly when the Python kernel environment is missing.
pub fn require_kernel() {
    let found = std::env::var_os("JUPYTER_PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("kernels/python3/kernel.json").exists()))
        .unwrap_or(false);
    assert!(
        found,
        "no python3 kernelspec on JUPYTER_PATH: run the tests with `make test` (it sets up the pinned Python environment)"
    );
}

pub struct TestServer {
    pub running: Option<middleman::Running>,
    pub addr: std::net::SocketAddr,
    pub key: SigningKey,
    pub dir: TempDir,
    pub document: String,
}

impl TestServer {
    /// Starts a Middleman with `extra` flags and waits until its kernel is ready.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(true, extra).await
    }

    /// `bound = false` starts a warm pod that binds to the first document it is asked for.
    pub async fn start_with(bound: bool, extra: &[&str]) -> Self {
        require_kernel();
        let dir = TempDir::new("srv");
        let key = SigningKey::generate();
        let public = dir.0.join("public.pem");
        std::fs::write(&public, key.verifying_key().to_pem().unwrap()).unwrap();
        let document = format!("doc-{}", uuid::Uuid::new_v4().simple());
        // Deep on purpose: a unix socket's path is limited to 107 bytes, and pods' directories
        // can be deeper than that (Middleman reaches the kernel's sockets by a short path).
        let runtime_root = dir.0.join(format!("run-{}", "deep".repeat(16)));
        let mut args: Vec<String> = if bound {
            vec!["--document".into(), document.clone()]
        } else {
            Vec::new()
        };
        args.extend::<Vec<String>>(vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--pod".into(),
            "pod-1".into(),
            "--public-key".into(),
            public.display().to_string(),
            "--runtime-root".into(),
            runtime_root.display().to_string(),
            "--document-store".into(),
            dir.0.join("docs").display().to_string(),
            "--kernel-agent-bin".into(),
            env!("CARGO_BIN_EXE_middleman").into(),
        ]);
        // Python's kernel unless the test names another.
        if !extra.contains(&"--kernel") {
            args.extend(["--kernel".to_owned(), "python3".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let serve = ServeArgs::from_args(args).unwrap();
        let running = middleman::start(serve).await.unwrap();
        let addr = running.addr();
        let server = Self {
            running: Some(running),
            addr,
            key,
            dir,
            document,
        };
        server.wait_ready().await;
        server
    }

    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if http_get(self.addr, "/readyz").await.0 == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kernel not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn token(&self, user: &str, role: Role) -> String {
        self.token_for(user, role, &self.document, 3600)
    }

    pub fn token_for(&self, user: &str, role: Role, doc: &str, ttl: u64) -> String {
        let claims = Claims::new(
            "test",
            user,
            &format!("{user} name"),
            doc,
            "pod-1",
            role,
            ttl,
        );
        self.key.mint(&claims).unwrap()
    }

    pub async fn client(&self, user: &str, role: Role) -> Client {
        Client::connect(self.addr, &self.token(user, role))
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// A minimal HTTP GET returning (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, path, &[]).await
}

pub async fn http_request(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    http_send(addr, "GET", path, headers, b"").await
}

/// A minimal HTTP/1.1 request with a body, returning (status, body).
pub async fn http_send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, String::new());
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// What one execution produced.
#[derive(Debug, Default)]
pub struct Run {
    pub id: String,
    pub outputs: Vec<Output>,
    pub status: Option<ExecutionStatus>,
    pub reason: Option<String>,
    pub execution_count: Option<u64>,
    pub truncated: bool,
    pub events: Vec<ServerEvent>,
}

impl Run {
    /// Takes in one event: this execution's outputs, truncation and end are recorded, and
    /// every event is kept. `true` once the execution finished.
    pub fn absorb(&mut self, e: ServerEvent) -> bool {
        let id = self.id.as_str();
        let mut finished = false;
        match &e {
            ServerEvent::Output {
                execution_id,
                output,
            } if execution_id == id => self.outputs.push(output.clone()),
            ServerEvent::OutputTruncated { execution_id, .. } if execution_id == id => {
                self.truncated = true
            }
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                reason,
                execution_count,
                ..
            } if execution_id == id => {
                self.status = Some(*status);
                self.reason = reason.clone();
                self.execution_count = *execution_count;
                finished = true;
            }
            _ => {}
        }
        self.events.push(e);
        finished
    }

    pub fn stdout(&self) -> String {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Stream { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub welcome: ServerEvent,
    /// Yjs binary frames received and not yet consumed.
    pub yjs: Vec<Vec<u8>>,
    /// The highest `seq` received.
    pub last_seq: u64,
    next_request: u64,
    /// Frames read past while waiting for an `execution_queued` acknowledgement (an earlier
    /// execution's output can come before it); [`Client::next`] hands them out first.
    backlog: std::collections::VecDeque<ServerFrame>,
}

impl Client {
    pub async fn connect(
        addr: std::net::SocketAddr,
        token: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        Self::connect_query(addr, &format!("token={token}")).await
    }

    /// Connects with a raw query string (`token=..&session=..&since=..`).
    pub async fn connect_query(
        addr: std::net::SocketAddr,
        query: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
        let mut c = Self {
            ws,
            welcome: ServerEvent::Pong { nonce: None },
            yjs: Vec::new(),
            last_seq: 0,
            next_request: 0,
            backlog: Default::default(),
        };
        c.welcome = c.next().await.event;
        assert!(
            matches!(c.welcome, ServerEvent::Welcome { .. }),
            "first frame is welcome: {:?}",
            c.welcome
        );
        Ok(c)
    }

    pub async fn send(&mut self, m: &ClientMessage) {
        self.ws
            .send(Message::text(serde_json::to_string(m).unwrap()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// The next protocol frame (panics on close or after [`WAIT`]).
    pub async fn next(&mut self) -> ServerFrame {
        match self.backlog.pop_front() {
            Some(frame) => frame,
            None => self.read_frame().await,
        }
    }

    /// Reads the next JSON frame from the socket (Yjs frames go to `self.yjs`).
    async fn read_frame(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("websocket error");
            match msg {
                Message::Text(t) => {
                    let frame: ServerFrame = serde_json::from_str(&t).unwrap();
                    if let Some(seq) = frame.seq {
                        self.last_seq = self.last_seq.max(seq);
                    }
                    if let ServerEvent::Welcome { last_seq, .. } = &frame.event {
                        self.last_seq = *last_seq;
                    }
                    return frame;
                }
                Message::Binary(b) => self.yjs.push(b.to_vec()),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// Reads one message of any kind: true if it was a Yjs frame (now in `self.yjs`).
    pub async fn pump(&mut self) -> Option<ServerEvent> {
        if let Some(frame) = self.backlog.pop_front() {
            return Some(frame.event);
        }
        let msg = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("connection ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => Some(serde_json::from_str::<ServerFrame>(&t).unwrap().event),
            Message::Binary(b) => {
                self.yjs.push(b.to_vec());
                None
            }
            Message::Close(c) => panic!("connection closed: {c:?}"),
            _ => None,
        }
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    /// The snapshot of the welcome (panics when the connection resumed instead).
    pub fn snapshot(&self) -> &doc_protocol::Snapshot {
        match &self.welcome {
            ServerEvent::Welcome {
                snapshot: Some(s), ..
            } => s,
            other => panic!("no snapshot in {other:?}"),
        }
    }

    /// The id of the document's first cell.
    pub fn first_cell(&self) -> String {
        self.snapshot().cells[0].id.clone()
    }

    /// Queues cell `cell_id` and returns the execution id.
    pub async fn submit_cell(&mut self, cell_id: &str) -> String {
        self.queue(|rid| ClientMessage::ExecuteCell {
            cell_id: cell_id.into(),
            request_id: Some(rid),
            stop_on_error: true,
        })
        .await
    }

    /// Sends the execute message `make` builds with a fresh request id; returns the execution
    /// id from `execution_queued` (panics if refused).
    async fn queue(&mut self, make: impl FnOnce(String) -> ClientMessage) -> String {
        self.next_request += 1;
        let rid = format!("r{}", self.next_request);
        self.send(&make(rid.clone())).await;
        // Read from the wire only: what was read past (an earlier execution's output, say) is
        // kept for the caller's next read rather than lost.
        let mut skipped = Vec::new();
        let id = loop {
            let frame = self.read_frame().await;
            match &frame.event {
                ServerEvent::ExecutionQueued {
                    request_id: Some(r),
                    execution,
                    ..
                } if *r == rid => break execution.id.clone(),
                ServerEvent::Error { .. } => panic!("execution refused: {:?}", frame.event),
                _ => skipped.push(frame),
            }
        };
        self.backlog.extend(skipped);
        id
    }

    /// Sets a cell's source through the JSON protocol and waits until it is applied (the next
    /// ping's pong comes after it).
    pub async fn set_source(&mut self, cell_id: &str, source: &str) {
        self.send(&ClientMessage::SetSource {
            cell_id: cell_id.into(),
            source: source.into(),
        })
        .await;
        self.roundtrip().await;
    }

    /// Inserts a cell and returns its id.
    pub async fn insert_cell(&mut self, index: u32, source: &str) -> String {
        self.send(&ClientMessage::InsertCell {
            index,
            cell_type: doc_protocol::CellKind::Code,
            source: source.into(),
            request_id: Some("ins".into()),
        })
        .await;
        let events = self
            .until(|e| {
                matches!(
                    e,
                    ServerEvent::CellCreated { .. } | ServerEvent::Error { .. }
                )
            })
            .await;
        match events.last() {
            Some(ServerEvent::CellCreated { cell_id, .. }) => cell_id.clone(),
            other => panic!("insert refused: {other:?}"),
        }
    }

    /// Waits until everything sent before has been handled (replies come in order).
    pub async fn roundtrip(&mut self) -> Vec<ServerEvent> {
        self.send(&ClientMessage::Ping { nonce: Some(4242) }).await;
        self.until(|e| matches!(e, ServerEvent::Pong { nonce: Some(4242) }))
            .await
    }

    /// Reads until `pred` matches, returning every event seen (including the match).
    pub async fn until(&mut self, mut pred: impl FnMut(&ServerEvent) -> bool) -> Vec<ServerEvent> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await.event;
            let done = pred(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Queues `code` and returns its execution id.
    pub async fn submit(&mut self, code: &str) -> String {
        self.queue(|rid| ClientMessage::Execute {
            code: code.into(),
            request_id: Some(rid),
            stop_on_error: true,
        })
        .await
    }

    /// Collects the events of execution `id` until it finishes.
    pub async fn collect(&mut self, id: &str) -> Run {
        let mut run = Run {
            id: id.to_owned(),
            ..Default::default()
        };
        while !run.absorb(self.next().await.event) {}
        run
    }

    /// Restarts the kernel and waits until the new one is idle. (Waits for `restarting` first:
    /// an `idle` left over from an earlier execution must not count.)
    pub async fn restart(&mut self) {
        use doc_protocol::KernelState;
        self.send(&ClientMessage::Restart).await;
        self.until(|e| {
            matches!(
                e,
                ServerEvent::KernelStatus {
                    state: KernelState::Restarting,
                    ..
                }
            )
        })
        .await;
        self.until(|e| {
            matches!(
                e,
                ServerEvent::KernelStatus {
                    state: KernelState::Idle,
                    ..
                }
            )
        })
        .await;
    }

    pub async fn run(&mut self, code: &str) -> Run {
        let id = self.submit(code).await;
        self.collect(&id).await
    }
}
