//! The gateway in front of real parts: Watchman with the local backend and Redis, real Middleman
//! and ipykernel pods, and the `gateway` binary (several replicas where it matters), driven by
//! WebSocket and HTTP clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gateway::*;
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use middleman::protocol::{ClientMessage, ServerEvent, ServerFrame};
use tokio_tungstenite::tungstenite::Message;
use watchman_proto::v1 as pb;

fn error_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["error"].as_str().unwrap_or_default().to_owned()
}

/// Watchman with Redis and `warm` pods, Routes open to the gateway's token.
async fn watchman_with_routes(d: &Deployment, redis: &testkit::RedisServer) -> watchman::Running {
    let token = d.dir.0.join("watchman-route-token");
    std::fs::write(&token, ROUTE_TOKEN).unwrap();
    d.replica(
        &redis.url(),
        &["--route-token-file", token.to_str().unwrap()],
    )
    .await
}

/// A token signed with the deployment's key, for any pod and expiry.
fn mint(d: &Deployment, pod: &str, ttl_secs: i64) -> String {
    let key =
        session_token::SigningKey::from_pem(&std::fs::read_to_string(&d.key).unwrap()).unwrap();
    let mut claims = session_token::Claims::new(
        "watchman",
        "ada",
        "Ada",
        "doc-x",
        pod,
        session_token::Role::Editor,
        60,
    );
    claims.exp = (session_token::now_secs() as i64 + ttl_secs) as u64;
    key.mint(&claims).unwrap()
}

async fn next_frame(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("nothing for 60 s")?
        {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

#[tokio::test]
async fn tokens_are_checked_at_the_edge_and_pods_serve_only_data() {
    let redis = testkit::RedisServer::start();
    let d = Deployment::new("gw-edge", 1, "1h");
    let w = watchman_with_routes(&d, &redis).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-edge", 0))
        .await
        .unwrap()
        .into_inner();
    let g = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &[]).await;
    let api = format!("/pods/{}/api/notebook", a.pod);

    // Refused at the edge, each with its reason.
    let forged = session_token::SigningKey::generate()
        .mint(&session_token::Claims::new(
            "watchman",
            "ada",
            "Ada",
            "doc-edge",
            &a.pod,
            session_token::Role::Editor,
            60,
        ))
        .unwrap();
    let expired = mint(&d, &a.pod, -600);
    let other_pod = mint(&d, "someone-elses-pod", 60);
    for (token, status, error) in [
        ("", 401, "token_missing"),
        (forged.as_str(), 401, "token_invalid"),
        ("not.a.token", 401, "token_invalid"),
        (expired.as_str(), 401, "token_expired"),
        (other_pod.as_str(), 403, "wrong_pod"),
    ] {
        let auth = format!("Bearer {token}");
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("Authorization", auth.as_str())]
        };
        let (s, _, body) = http(g.addr, "GET", &api, &headers, b"").await;
        assert_eq!((s, error_of(&body).as_str()), (status, error), "{token}");
        let upgrade = tokio_tungstenite::connect_async(g.ws(&a.pod, token)).await;
        match upgrade {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), status)
            }
            other => panic!("{token}: expected a refusal, got {other:?}"),
        }
    }
    // A page of another origin.
    let good = a.token.clone();
    let (s, _, body) = http(
        g.addr,
        "GET",
        &api,
        &[
            ("Authorization", &format!("Bearer {good}")),
            ("Origin", "https://evil.example"),
        ],
        b"",
    )
    .await;
    assert_eq!((s, error_of(&body).as_str()), (403, "origin_not_allowed"));
    // Nothing reached Watchman or the pod: no lookup was made, the pod refused nothing.
    assert_eq!(g.metric("gateway_resolve_total").await, 0.0);
    assert!(
        g.metric("gateway_refusals_total{reason=\"token_invalid\"}")
            .await
            >= 4.0
    );
    let pod_http: SocketAddr = a
        .websocket_url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .unwrap();
    let (_, _, pod_metrics) = http(pod_http, "GET", "/metrics", &[], b"").await;
    let pod_metrics = String::from_utf8_lossy(&pod_metrics);
    assert!(
        !pod_metrics.contains("middleman_ws_refused_total{"),
        "the pod saw refused connections: {pod_metrics}"
    );

    // The right token reaches the document, over the WebSocket and the data endpoints.
    let mut via = a.clone();
    via.websocket_url = format!("ws://{}/pods/{}/ws", g.addr, a.pod);
    assert_eq!(run_code(&via, "6 * 7").await, "42");
    // The token in the Authorization header, as non-browser clients send it: passed on to the
    // pod, which verifies it again.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            via.websocket_url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    match next_frame(&mut ws).await.map(|f| f.event) {
        Some(ServerEvent::Welcome { document, .. }) => assert_eq!(document, "doc-edge"),
        other => panic!("expected the welcome, got {other:?}"),
    }
    drop(ws);
    let (s, h, body) = http(g.addr, "GET", &format!("{api}?token={good}"), &[], b"").await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let nb: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(nb["nbformat"], 4);
    assert!(
        header(&h, "content-security-policy")
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(header(&h, "x-content-type-options"), Some("nosniff"));

    // What the kernel writes is served as bytes to download, never as a page.
    assert_eq!(
        run_code(
            &via,
            "open('evil.html','w').write('<script>alert(document.cookie)</script>')"
        )
        .await,
        "39"
    );
    let (s, h, body) = http(
        g.addr,
        "GET",
        &format!(
            "/pods/{}/api/files/content?path=evil.html&token={good}",
            a.pod
        ),
        &[],
        b"",
    )
    .await;
    assert_eq!(s, 200);
    assert!(body.starts_with(b"<script>"));
    assert_eq!(header(&h, "content-type"), Some("application/octet-stream"));
    assert!(
        header(&h, "content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    assert!(header(&h, "set-cookie").is_none());

    // The page and its assets come from the gateway itself.
    let (s, h, body) = http(g.addr, "GET", &format!("/pods/{}/", a.pod), &[], b"").await;
    assert_eq!(s, 200);
    assert!(header(&h, "content-type").unwrap().starts_with("text/html"));
    assert!(
        header(&h, "content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(String::from_utf8_lossy(&body).contains("/assets/app.js"));
    let (s, _, _) = http(g.addr, "GET", "/assets/app.css", &[], b"").await;
    assert_eq!(s, 200);
    // Middleman's own page, metrics and status are not reachable through the gateway.
    for path in ["metrics", "status", "healthz", "api/../metrics"] {
        let (s, _, _) = http(
            g.addr,
            "GET",
            &format!("/pods/{}/{path}?token={good}", a.pod),
            &[],
            b"",
        )
        .await;
        assert_eq!(s, 404, "{path}");
    }

    // A pod Watchman does not know.
    let nope = mint(&d, "no-such-pod", 60);
    let (s, _, body) = http(
        g.addr,
        "GET",
        &format!("/pods/no-such-pod/api/notebook?token={nope}"),
        &[],
        b"",
    )
    .await;
    assert_eq!((s, error_of(&body).as_str()), (404, "unknown_pod"));
    teardown(w).await;
}

#[tokio::test]
async fn a_pod_that_ends_closes_its_clients_with_the_reason() {
    let redis = testkit::RedisServer::start();
    let d = Deployment::new("gw-end", 1, "1h");
    let w = watchman_with_routes(&d, &redis).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-end", 0))
        .await
        .unwrap()
        .into_inner();
    let g = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &[]).await;
    let mut ws = connect(&g.ws(&a.pod, &a.token)).await;
    assert!(matches!(
        next_frame(&mut ws).await.unwrap().event,
        ServerEvent::Welcome { .. }
    ));
    c.release(pb::ReleaseRequest {
        document_id: "doc-end".into(),
    })
    .await
    .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the client was not closed");
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 4410, "{close:?}");
    assert!(close.reason.contains("released"), "{close:?}");
    // And whoever comes later is told why.
    let (s, _, body) = http(
        g.addr,
        "GET",
        &format!("/pods/{}/api/notebook?token={}", a.pod, a.token),
        &[],
        b"",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((s, v["error"].as_str()), (410, Some("pod_ended")), "{v}");
    assert_eq!(v["reason"], "released");
    assert!(
        g.metric("gateway_connections_total{outcome=\"pod_ended\"}")
            .await
            >= 1.0
    );
    teardown(w).await;
}

/// One collaborator that keeps working across reconnections: it runs cells, and checks that
/// every event reaches it exactly once, in order, whichever gateway replica carries it.
struct Worker {
    url: String,
    ws: Ws,
    session: String,
    last_seq: u64,
    finished: usize,
    reconnections: usize,
    runs: usize,
    /// Makes this worker's request ids unique.
    session_tag: String,
}

impl Worker {
    async fn join(url: String) -> Self {
        let mut ws = connect(&url).await;
        let f = next_frame(&mut ws).await.unwrap();
        let ServerEvent::Welcome {
            session, last_seq, ..
        } = f.event
        else {
            panic!("expected a welcome")
        };
        Self {
            url,
            ws,
            session,
            last_seq,
            finished: 0,
            reconnections: 0,
            runs: 0,
            session_tag: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Reconnects (through whichever replica answers) and resumes from the last `seq` seen.
    async fn resume(&mut self) {
        let url = format!(
            "{}&session={}&since={}",
            self.url, self.session, self.last_seq
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_tungstenite::connect_async(&url).await {
                Ok((mut ws, _)) => {
                    let f = next_frame(&mut ws).await.unwrap();
                    let ServerEvent::Welcome { resumed_from, .. } = f.event else {
                        panic!("expected a welcome")
                    };
                    assert_eq!(
                        resumed_from,
                        Some(self.last_seq),
                        "not resumed: events lost"
                    );
                    self.ws = ws;
                    self.reconnections += 1;
                    return;
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("could not reconnect: {e}"),
            }
        }
    }

    /// Runs `code` and waits for it to finish, resuming whenever the connection drops. A
    /// request the dying connection swallowed (never queued) is sent again.
    async fn run(&mut self, code: &str) {
        self.runs += 1;
        let request = format!("{}-{}", self.session_tag, self.runs);
        let msg = serde_json::to_string(&ClientMessage::Execute {
            code: code.into(),
            request_id: Some(request.clone()),
            stop_on_error: true,
        })
        .unwrap();
        let mut mine: Option<String> = None;
        let mut sent = false;
        loop {
            if !sent {
                if self.ws.send(Message::text(msg.clone())).await.is_err() {
                    self.resume().await;
                    continue;
                }
                sent = true;
            }
            let frame = match mine {
                Some(_) => next_frame(&mut self.ws).await,
                // Not queued yet: after a reconnection it may never be.
                None => {
                    match tokio::time::timeout(Duration::from_secs(3), next_frame(&mut self.ws))
                        .await
                    {
                        Ok(f) => f,
                        Err(_) => {
                            sent = false;
                            continue;
                        }
                    }
                }
            };
            let Some(f) = frame else {
                self.resume().await;
                sent = mine.is_some();
                continue;
            };
            if let Some(seq) = f.seq {
                assert_eq!(seq, self.last_seq + 1, "an event was lost or repeated");
                self.last_seq = seq;
            }
            match f.event {
                ServerEvent::ExecutionQueued {
                    execution,
                    request_id: Some(r),
                } if r == request => mine = Some(execution.id),
                ServerEvent::ExecutionFinished { execution_id, .. }
                    if mine.as_deref() == Some(execution_id.as_str()) =>
                {
                    self.finished += 1;
                    return;
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn clients_move_to_another_replica_and_lose_nothing() {
    let redis = testkit::RedisServer::start();
    let d = Deployment::new("gw-replicas", 1, "1h");
    let w = watchman_with_routes(&d, &redis).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-replicas", 0))
        .await
        .unwrap()
        .into_inner();
    // Two replicas on one port, as behind a load balancer: the kernel spreads connections.
    let first = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &["--reuse-port"]).await;
    let port = first.addr.to_string();
    let listen = ["--reuse-port", "--listen", port.as_str()];
    let second = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &listen).await;
    let url = first.ws(&a.pod, &a.token);
    let mut workers = Vec::new();
    for _ in 0..6 {
        workers.push(Worker::join(url.clone()).await);
    }
    for (i, wk) in workers.iter_mut().enumerate() {
        wk.run(&format!("x{i} = {i}")).await;
    }

    // A replica dies (no drain at all): its clients reconnect through the other and resume.
    let mut first = first;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    for (i, wk) in workers.iter_mut().enumerate() {
        wk.run(&format!("y{i} = x{i} + 1")).await;
    }

    // A replica drains (SIGTERM): its clients are told (1012), move to a third, and resume.
    let third = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &listen).await;
    let pid = nix::unistd::Pid::from_raw(second.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut second = second;
    let drained = tokio::time::timeout(Duration::from_secs(30), second.child.wait())
        .await
        .expect("the drain took more than 30 s")
        .unwrap();
    assert!(drained.success(), "{drained:?}");
    for (i, wk) in workers.iter_mut().enumerate() {
        wk.run(&format!("z{i} = y{i} + 1")).await;
    }
    assert!(
        workers.iter().all(|w| w.reconnections >= 1),
        "every client moved at least once: {:?}",
        workers.iter().map(|w| w.reconnections).collect::<Vec<_>>()
    );
    // Every cell ran, once: the kernel has every name.
    let mut via = a.clone();
    via.websocket_url = format!("ws://{}/pods/{}/ws", third.addr, a.pod);
    assert_eq!(
        run_code(&via, "sum(globals()[f'z{i}'] for i in range(6))").await,
        "27"
    );
    assert!(third.metric("gateway_connections_active").await >= 6.0);
    teardown(w).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_the_others_are_served() {
    let redis = testkit::RedisServer::start();
    let d = Deployment::new("gw-slow", 1, "1h");
    let w = watchman_with_routes(&d, &redis).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-slow", 0))
        .await
        .unwrap()
        .into_inner();
    let g = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &["--send-timeout", "2s"]).await;
    // A client with a tiny receive window that never reads after its handshake.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(g.addr).await.unwrap();
    let (stalled, _) = tokio_tungstenite::client_async(g.ws(&a.pod, &a.token), tcp)
        .await
        .unwrap();
    // A reader that keeps up, and floods the document with output.
    let mut reader = Worker::join(g.ws(&a.pod, &a.token)).await;
    let baseline = g
        .metric("gateway_connections_total{outcome=\"slow_client\"}")
        .await;
    for _ in 0..3 {
        reader.run("for i in range(400): print('x' * 10000)").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while g
        .metric("gateway_connections_total{outcome=\"slow_client\"}")
        .await
        <= baseline
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reader was never disturbed, and is still served.
    reader.run("1 + 1").await;
    assert_eq!(reader.reconnections, 0);
    drop(stalled);
    teardown(w).await;
}

#[tokio::test]
async fn a_token_for_one_pod_opens_no_other() {
    // Two documents, two pods, one gateway: each token opens only its own pod.
    let redis = testkit::RedisServer::start();
    let d = Deployment::new("gw-two", 2, "1h");
    let w = watchman_with_routes(&d, &redis).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let one = c
        .allocate(allocate_req("doc-one", 0))
        .await
        .unwrap()
        .into_inner();
    let two = c
        .allocate(allocate_req("doc-two", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(one.pod, two.pod);
    let g = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &[]).await;
    match tokio_tungstenite::connect_async(g.ws(&two.pod, &one.token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("one's token opened two's pod: {other:?}"),
    }
    let mut via = two.clone();
    via.websocket_url = format!("ws://{}/pods/{}/ws", g.addr, two.pod);
    assert_eq!(run_code(&via, "'two'").await, "'two'");
    // A client that closes gets the closing handshake answered (RFC 6455 5.5.1).
    let mut ws = connect(&g.ws(&two.pod, &two.token)).await;
    next_frame(&mut ws).await.unwrap();
    ws.close(None).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(_)) = m {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(echoed, "no close frame came back");
    teardown(w).await;
}
