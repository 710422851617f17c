//! The proxies put in front of Middleman by gateway-bench: our gateway, and JupyterHub's
//! configurable-http-proxy (the anchor), each a child process on free loopback ports.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::AsyncBufReadExt as _;

use crate::{http, listening_addr};

/// A free loopback port (bound and released: another process could take it first, which on a
/// benchmark machine it does not).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `gateway` child process with static routes (no Watchman).
#[derive(Debug)]
pub struct Gateway {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
    /// Its metrics port (`/metrics`).
    pub metrics_addr: String,
}

impl Gateway {
    /// Starts `bin` listening on `listen` (`127.0.0.1:0`: a free port; replicas share one with
    /// `--reuse-port` in `extra`), with `--route POD=URL` for each of `routes` and `extra` flags;
    /// waits until it logs `listening on http://ADDR` (the metrics port is chosen here).
    pub async fn start(
        bin: &Path,
        listen: &str,
        public_key: &Path,
        routes: &[(String, String)],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--listen", listen, "--metrics-listen", &metrics_addr])
            .arg("--public-key")
            .arg(public_key);
        for (pod, url) in routes {
            cmd.arg("--route").arg(format!("{pod}={url}"));
        }
        let mut child = cmd
            .args(extra)
            .env("RUST_LOG", "warn,gateway=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("no pid")?;
        // It may log to either stream; read both for as long as it runs.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        forward_lines(child.stdout.take().context("no stdout")?, tx.clone());
        forward_lines(child.stderr.take().context("no stderr")?, tx.clone());
        drop(tx);
        let mut seen = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = rx.recv().await {
                match listening_addr(&line) {
                    Some(addr) if addr != metrics_addr => return Some(addr),
                    _ => seen.push(line),
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let _ = child.start_kill();
            bail!("gateway did not start; it said:\n{}", seen.join("\n"));
        };
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Ok(Self {
            child,
            pid,
            addr,
            metrics_addr,
        })
    }

    /// The document WebSocket of `pod` through the gateway.
    pub fn ws_url(&self, pod: &str, token: &str) -> String {
        self.url(pod, "ws", token)
    }

    /// The WebSocket at `path` (`ws`, `yjs/<doc>`) of `pod` through the gateway.
    pub fn url(&self, pod: &str, path: &str, token: &str) -> String {
        format!("ws://{}/pods/{pod}/{path}?token={token}", self.addr)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Sends each line of `from` to `to` until it ends (and drains it after `to` is gone).
fn forward_lines<R>(from: R, to: tokio::sync::mpsc::UnboundedSender<String>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = to.send(line);
        }
    });
}

/// configurable-http-proxy (JupyterHub's proxy, Node.js), routes added through its REST API
/// as JupyterHub adds them.
#[derive(Debug)]
pub struct Chp {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub port: u16,
    api_port: u16,
    api_token: String,
}

impl Chp {
    /// Starts `bin` on free loopback ports (`--no-x-forward`, `--no-include-prefix`: a route
    /// `/pods/<pod>` forwards `/pods/<pod>/ws` as `/ws`); waits until its API answers.
    pub async fn start(bin: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let api_port = free_port()?;
        let api_token = uuid::Uuid::new_v4().simple().to_string();
        let child = tokio::process::Command::new(bin)
            .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
            .args(["--api-ip", "127.0.0.1", "--api-port", &api_port.to_string()])
            .args([
                "--no-x-forward",
                "--no-include-prefix",
                "--log-level",
                "warn",
            ])
            .env("CONFIGPROXY_AUTH_TOKEN", &api_token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("no pid")?;
        let chp = Self {
            child,
            pid,
            port,
            api_port,
            api_token,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http(api_port, "GET", "/api/routes", &chp.api_token, "").await {
                return Ok(chp);
            }
            if Instant::now() > deadline {
                bail!("configurable-http-proxy did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Routes `prefix` (e.g. `/pods/bench`) to `target` (`http://127.0.0.1:PORT`).
    pub async fn add_route(&self, prefix: &str, target: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({ "target": target }).to_string();
        let (status, answer) = http(
            self.api_port,
            "POST",
            &format!("/api/routes{prefix}"),
            &self.api_token,
            &body,
        )
        .await?;
        if status != 201 {
            bail!("adding route {prefix}: {status} {answer}");
        }
        Ok(())
    }

    /// The document WebSocket of `pod` through the proxy (route `/pods/<pod>`).
    pub fn ws_url(&self, pod: &str, token: &str) -> String {
        self.url(pod, "ws", token)
    }

    /// The WebSocket at `path` (`ws`, `yjs/<doc>`) of `pod` through the proxy.
    pub fn url(&self, pod: &str, path: &str, token: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/pods/{pod}/{path}?token={token}",
            self.port
        )
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
