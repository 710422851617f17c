//! The `gateway` binary as a test fixture, and a raw HTTP/1.1 client: the gateway and Jupyter
//! tests drive the public edge through them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

use super::middleman_bin;

pub const ROUTE_TOKEN: &str = "test-route-token-0123456789";

pub fn gateway_bin() -> PathBuf {
    let bin = middleman_bin().with_file_name("gateway");
    assert!(
        bin.exists(),
        "{} missing: run `make test` (or `cargo build -p gateway`) first",
        bin.display()
    );
    bin
}

/// A gateway process; killed when dropped.
pub struct Gateway {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Gateway {
    /// Starts a gateway routing through `watchman` (its gRPC address), with `extra` flags.
    pub async fn start(dir: &Path, key: &Path, watchman: SocketAddr, extra: &[&str]) -> Self {
        let public = dir.join("public.pem");
        let signing =
            session_token::SigningKey::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
        std::fs::write(&public, signing.verifying_key().to_pem().unwrap()).unwrap();
        let token = dir.join("route-token");
        std::fs::write(&token, ROUTE_TOKEN).unwrap();
        let mut command = tokio::process::Command::new(gateway_bin());
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--public-key")
            .arg(&public)
            .arg("--watchman")
            .arg(format!("http://{watchman}"))
            .arg("--watchman-token-file")
            .arg(&token)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("GATEWAY_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (addr, metrics) = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                    let metrics = line
                        .split("metrics_addr=")
                        .nth(1)
                        .unwrap()
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    return (addr, metrics);
                }
            }
            panic!("the gateway exited before listening");
        })
        .await
        .expect("the gateway did not start");
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            addr,
            metrics,
        }
    }

    /// The value of a metric line that starts with `prefix` (summed over matching lines).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let (_, _, body) = http(self.metrics, "GET", "/metrics", &[], b"").await;
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn ws(&self, pod: &str, token: &str) -> String {
        format!("ws://{}/pods/{pod}/ws?token={token}", self.addr)
    }
}

/// One HTTP/1.1 request: status, headers (lower-case names), body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = out[split + 4..].to_vec();
    // Chunked answers: good enough to read JSON error bodies and small files.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 2 + size + 2..];
    }
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
