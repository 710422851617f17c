//! The relay byte for byte: a gateway process (plain and TLS) in front of a WebSocket server
//! written here that echoes what it gets and reports closes, with clients that speak the
//! protocol (tokio-tungstenite) and one that writes frames by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use session_token::{Claims, Role, SigningKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A WebSocket server that echoes text and binary messages, closes with code N when sent
/// `close:N`, and reports every close it receives.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Option<u16>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closes, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let closes = closes.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t.starts_with("close:") => {
                            let code: u16 = t["close:".len()..].parse().unwrap();
                            let frame = CloseFrame {
                                code: CloseCode::from(code),
                                reason: "asked to".into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                        }
                        m @ (Message::Text(_) | Message::Binary(_)) => {
                            let _ = ws.send(m).await;
                        }
                        Message::Close(f) => {
                            let _ = closes.send(f.map(|f| u16::from(f.code)));
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, received)
}

struct Gateway {
    addr: SocketAddr,
    token: String,
    /// For TLS: the certificate clients trust.
    cert: Option<std::path::PathBuf>,
    _dir: testkit::TempDir,
    _child: tokio::process::Child,
}

impl Gateway {
    async fn start(upstream: SocketAddr, tls: bool, extra: &[&str]) -> Self {
        let dir = testkit::TempDir::new("gw-relay");
        let signing = SigningKey::generate();
        let public = dir.0.join("public.pem");
        std::fs::write(&public, signing.verifying_key().to_pem().unwrap()).unwrap();
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--public-key",
        ]
        .map(String::from)
        .to_vec();
        args.push(public.display().to_string());
        args.extend(["--route".to_owned(), format!("p1=http://{upstream}")]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let cert = tls.then(|| {
            let (cert, key) = common::self_signed(&dir.0);
            args.extend(["--tls-cert".to_owned(), cert.display().to_string()]);
            args.extend(["--tls-key".to_owned(), key.display().to_string()]);
            cert
        });
        let gateway = std::path::Path::new(env!("CARGO_BIN_EXE_gateway"));
        let (child, addr) = common::spawn(gateway, &args).await;
        let token = signing
            .mint(&Claims::new(
                "test",
                "u1",
                "U",
                "doc-1",
                "p1",
                Role::Editor,
                3600,
            ))
            .unwrap();
        Self {
            addr,
            token,
            cert,
            _dir: dir,
            _child: child,
        }
    }

    /// A client connection to the pod's `/ws`, over TLS when the gateway speaks it.
    async fn connect(&self) -> Ws {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let stream: Box<dyn Stream> = match &self.cert {
            None => Box::new(tcp),
            Some(cert) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_file(cert).unwrap())
                    .unwrap();
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = ServerName::try_from("127.0.0.1").unwrap();
                Box::new(connector.connect(name, tcp).await.unwrap())
            }
        };
        let url = format!("ws://{}/pods/p1/ws?token={}", self.addr, self.token);
        tokio_tungstenite::client_async(url, stream)
            .await
            .unwrap()
            .0
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

async fn next(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => continue,
            Ok(Some(Ok(m))) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(u16::from(f.code)),
        _ => None,
    }
}

#[tokio::test]
async fn messages_pings_and_closes_pass_through_unchanged_plain_and_over_tls() {
    let (upstream, mut closes) = echo_server().await;
    for tls in [false, true] {
        let g = Gateway::start(upstream, tls, &[]).await;
        let mut ws = g.connect().await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("hello"), "tls: {tls}");
        // Bigger than any buffer on the way: streamed through in pieces, whole at the end.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(big), "tls: {tls}");
        // A ping is answered by the pod, through the gateway.
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Pong(b"are you there".to_vec().into())
        );
        // The pod's own close code reaches the client as it was.
        ws.send(Message::text("close:4321")).await.unwrap();
        assert_eq!(close_code(&next(&mut ws).await), Some(4321), "tls: {tls}");

        // A client's close reaches the pod, and is answered.
        let mut ws = g.connect().await;
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        assert_eq!(close_code(&next(&mut ws).await), Some(1000));
        let seen = tokio::time::timeout(Duration::from_secs(10), closes.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, Some(1000), "tls: {tls}");
    }
}

/// Opens `/ws` by hand and returns the raw connection after the 101.
async fn raw_connect(g: &Gateway) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let request = format!(
        "GET /pods/p1/ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        g.token, g.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Reads one unmasked close frame: its code.
async fn raw_close(tcp: &mut tokio::net::TcpStream) -> u16 {
    let mut head = [0; 2];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 0x88, "not a close frame: {head:?}");
    let mut payload = vec![0; usize::from(head[1])];
    tcp.read_exact(&mut payload).await.unwrap();
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn frames_the_protocol_forbids_or_over_the_cap_are_refused_at_the_edge() {
    let (upstream, mut closes) = echo_server().await;
    let g = Gateway::start(upstream, false, &["--max-frame-bytes", "1000"]).await;

    // Over the cap: 1009, and the pod is told the client left.
    let mut ws = g.connect().await;
    ws.send(Message::text("x".repeat(2000))).await.unwrap();
    assert_eq!(close_code(&next(&mut ws).await), Some(1009));
    let seen = tokio::time::timeout(Duration::from_secs(10), closes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, Some(1001));

    // Over the cap in fragments of 600 bytes each: the second fragment is refused.
    let mut tcp = raw_connect(&g).await;
    let key = [9, 8, 7, 6];
    for first in [0x01u8, 0x80] {
        let mut frame = vec![first, 0x80 | 126, 0x02, 0x58];
        frame.extend_from_slice(&key);
        frame.extend((0..600).map(|i| b'a' ^ key[i % 4]));
        if tcp.write_all(&frame).await.is_err() {
            break;
        }
    }
    assert_eq!(raw_close(&mut tcp).await, 1009);

    // An unmasked frame from a client: 1002, before it reaches the pod.
    let mut tcp = raw_connect(&g).await;
    tcp.write_all(&[0x81, 0x01, b'x']).await.unwrap();
    assert_eq!(raw_close(&mut tcp).await, 1002);

    // A frame split over many writes still passes whole.
    let mut tcp = raw_connect(&g).await;
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&key);
    frame.extend(b"split".iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    for byte in frame {
        tcp.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut echoed = [0; 7];
    tcp.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"\x81\x05split");
}
