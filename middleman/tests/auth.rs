//! Who may connect and what they may send: tokens, origins, roles, malformed and oversized input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use doc_protocol::{ClientMessage, ErrorCode, ExecutionStatus, ServerEvent};
use futures_util::{SinkExt as _, StreamExt as _};
use session_token::{Role, SigningKey};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

async fn refused_status(server: &TestServer, token: &str) -> u16 {
    match Client::connect(server.addr, token).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_foreign_tokens_are_refused() {
    let server = TestServer::start(&[]).await;
    assert_eq!(refused_status(&server, "not-a-token").await, 401);
    let forged = SigningKey::generate()
        .mint(&session_token::Claims::new(
            "x",
            "eve",
            "Eve",
            &server.document,
            "pod-1",
            Role::Editor,
            60,
        ))
        .unwrap();
    assert_eq!(refused_status(&server, &forged).await, 401);
    // Expired well beyond the 30 s leeway.
    let mut claims = session_token::Claims::new(
        "t",
        "ada",
        "Ada",
        &server.document,
        "pod-1",
        Role::Editor,
        0,
    );
    claims.exp -= 120;
    let expired = server.key.mint(&claims).unwrap();
    assert_eq!(refused_status(&server, &expired).await, 401);
    let other_doc = server.token_for("ada", Role::Editor, "another-document", 60);
    assert_eq!(refused_status(&server, &other_doc).await, 403);
    // Missing token: a clear JSON body.
    match Client::connect(server.addr, "").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("token_missing"), "{body}");
        }
        other => panic!("connected without a token: {:?}", other.map(|_| ())),
    }
    // The server is unharmed.
    let mut c = server.client("ada", Role::Editor).await;
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused() {
    let server = TestServer::start(&[]).await;
    let token = server.token("ada", Role::Editor);
    let connect = |origin: &'static str| {
        let mut request = format!("ws://{}/ws?token={token}", server.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    match connect("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("foreign origin accepted: {:?}", other.map(|_| ())),
    }
    let same: &'static str = Box::leak(format!("http://{}", server.addr).into_boxed_str());
    assert!(connect(same).await.is_ok(), "same origin accepted");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_but_cannot_act() {
    let server = TestServer::start(&[]).await;
    let mut editor = server.client("ada", Role::Editor).await;
    let mut viewer = server.client("vic", Role::Viewer).await;
    assert!(matches!(&viewer.welcome, ServerEvent::Welcome { role, .. } if role == "viewer"));
    for m in [
        ClientMessage::Execute {
            code: "1".into(),
            request_id: None,
            stop_on_error: true,
        },
        ClientMessage::Interrupt,
        ClientMessage::Restart,
        ClientMessage::InputReply {
            execution_id: "x".into(),
            value: "v".into(),
        },
    ] {
        viewer.send(&m).await;
        let e = viewer
            .until(|e| matches!(e, ServerEvent::Error { .. }))
            .await;
        assert!(
            matches!(
                e.last(),
                Some(ServerEvent::Error {
                    code: ErrorCode::Forbidden,
                    ..
                })
            ),
            "{m:?}"
        );
    }
    // The viewer sees the editor's execution live.
    let id = editor.submit("print('shared')").await;
    let seen = viewer.collect(&id).await;
    assert_eq!(seen.stdout(), "shared\n");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_oversized_messages() {
    let server = TestServer::start(&["--max-client-message-bytes", "4096"]).await;
    let mut c = server.client("ada", Role::Editor).await;
    for bad in [
        "{not json",
        r#"{"type":"format_disk"}"#,
        r#"{"type":"execute"}"#,
        "[]",
    ] {
        c.send_raw(bad).await;
        let e = c.until(|e| matches!(e, ServerEvent::Error { .. })).await;
        assert!(
            matches!(
                e.last(),
                Some(ServerEvent::Error {
                    code: ErrorCode::BadMessage,
                    ..
                })
            ),
            "{bad}"
        );
    }
    c.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let e = c.until(|e| matches!(e, ServerEvent::Error { .. })).await;
    assert!(matches!(
        e.last(),
        Some(ServerEvent::Error {
            code: ErrorCode::BadMessage,
            ..
        })
    ));
    // Still usable after all that.
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    // Oversized: closed with 1009.
    let big = format!(r#"{{"type":"execute","code":"{}"}}"#, "x".repeat(10_000));
    c.send_raw(&big).await;
    let mut code = None;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, c.ws.next()).await {
        match msg {
            Ok(Message::Close(Some(frame))) => {
                code = Some(u16::from(frame.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1009));
    // Other clients are unaffected.
    let mut other = server.client("bob", Role::Editor).await;
    assert_eq!(other.run("2+2").await.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_page() {
    let server = TestServer::start(&[]).await;
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    let (status, body) = http_get(server.addr, "/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"ready\":true"), "{body}");
    let mut c = server.client("ada", Role::Editor).await;
    c.run("1+1").await;
    let (status, metrics) = http_get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "middleman_executions_total",
        "middleman_ws_connections",
        "middleman_execution_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let (status, page) = http_get(server.addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/assets/app.js?v="), "{page}");
    assert!(!page.contains("__CSP_NONCE__"), "the nonce is filled in");
    let (status, script) = http_get(server.addr, "/assets/app.js").await;
    assert_eq!(status, 200);
    assert!(script.len() > 100_000, "the bundled client is served");
    assert_eq!(http_get(server.addr, "/output-frame.html").await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pod_binds_to_its_first_document() {
    let server = TestServer::start_with(false, &[]).await;
    let (_, status) = http_get(server.addr, "/status").await;
    assert!(!status.contains("document"), "{status}");
    let mut c = Client::connect(
        server.addr,
        &server.token_for("ada", Role::Editor, "doc-a", 60),
    )
    .await
    .unwrap();
    assert_eq!(c.run("1+1").await.status, Some(ExecutionStatus::Ok));
    let other = server.token_for("eve", Role::Editor, "doc-b", 60);
    assert_eq!(refused_status(&server, &other).await, 403);
    let again = server.token_for("bob", Role::Viewer, "doc-a", 60);
    assert_eq!(refused_status(&server, &again).await, 101);
    // Which document a pod holds is told only to someone with a token for it.
    let (_, status) = http_get(server.addr, "/status").await;
    assert!(!status.contains("doc-a"), "{status}");
    let bearer = format!("Bearer {again}");
    let (_, status) = http_request(server.addr, "/status", &[("Authorization", &bearer)]).await;
    assert!(status.contains("\"document\":\"doc-a\""), "{status}");
    let (_, status) = http_request(
        server.addr,
        "/status",
        &[("Authorization", &format!("Bearer {other}"))],
    )
    .await;
    assert!(!status.contains("doc-"), "{status}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_requests_are_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start(&["--http-header-timeout", "1s"]).await;
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .expect("the connection was never closed")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    };
    let silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(closed(silent).await, "");
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /ws?token=x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    assert_eq!(closed(half).await, "");
    // Everyone else is still served.
    assert_eq!(http_get(server.addr, "/healthz").await.0, 200);
    server.stop().await;
}
