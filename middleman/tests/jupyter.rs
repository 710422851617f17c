//! Stock Jupyter clients on `/jupyter/channels`: a peer made of jupyter_client's `Session` and
//! jupyter_server's own WebSocket serializers (scripts/python/jupyter_peer.py) drives a real
//! ipykernel through Middleman, in both wire forms. Its runs land in the shared document, where
//! a web client sees them with who ran them; bad frames, oversized ones, bad tokens and viewers
//! are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use middleman::jupyter::wire::{self, Channel, Framing, Outgoing, WireMessage};
use middleman::protocol::{Output, ServerEvent};
use session_token::Role;

/// Runs a scenario of the peer against `server` with `token`; its JSON line on success.
async fn peer(server: &TestServer, token: &str, scenario: &str) -> serde_json::Value {
    peer_with(server, token, scenario, &[]).await
}

async fn peer_with(
    server: &TestServer,
    token: &str,
    scenario: &str,
    extra: &[&str],
) -> serde_json::Value {
    let url = format!("ws://{}/jupyter/channels", server.addr);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/python/jupyter_peer.py"
    );
    let out = tokio::process::Command::new(venv_python())
        .args([script, &url, token, scenario])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario {scenario} failed (its reason is in the peer's stderr above)\n{stdout}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jupyter_client_runs_everything_and_its_runs_land_in_the_document() {
    let server = TestServer::start(&[]).await;
    let mut web = server.client("grace", Role::Editor).await;
    let token = server.token("ada", Role::Editor);
    let done = peer(&server, &token, "full").await;
    let count = done["count"].as_u64().unwrap();

    // The web client, connected all along, saw the Jupyter client arrive and its cells run.
    let events = web
        .until(|e| {
            matches!(e, ServerEvent::CellState { cell_id, last_run: Some(_), .. } if cell_id == "cell-b")
        })
        .await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ServerEvent::Presence(p) if p.name == "ada name (Jupyter)")),
        "the Jupyter client is present under its token's name"
    );
    let fresh = server.client("grace", Role::Editor).await;
    let cells = fresh.snapshot().cells.clone();
    let a = cells
        .iter()
        .find(|c| c.id == "cell-a")
        .expect("cell-a is in the document");
    assert!(
        a.source.contains("print('out')"),
        "its source: {}",
        a.source
    );
    assert_eq!(a.runtime.execution_count, Some(count));
    let run = a.runtime.last_run.as_ref().expect("a last run");
    assert_eq!(run.by, "ada name (Jupyter)");
    assert!(
        a.runtime
            .outputs
            .iter()
            .any(|o| matches!(o, Output::ExecuteResult { data, .. } if data["text/plain"] == "42")),
        "its outputs: {:?}",
        a.runtime.outputs
    );
    assert!(
        cells.iter().any(|c| c.id == "cell-b"),
        "the failing cell too"
    );
    // A silent run stays out of the document; a run without a cell id gets a cell of its own.
    assert!(!cells.iter().any(|c| c.source.contains("silent_value")));
    assert!(cells.iter().any(|c| c.source.contains("input('name? ')")));
    drop((fresh, web));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_form_works_and_viewers_and_bad_frames_are_refused() {
    let server = TestServer::start(&["--max-client-message-bytes", "16384"]).await;
    let editor = server.token("ada", Role::Editor);
    peer(&server, &editor, "legacy").await;
    peer(&server, &editor, "comms").await;
    peer(&server, &editor, "reconnect").await;
    peer(&server, &server.token("vic", Role::Viewer), "viewer").await;
    peer_with(&server, &editor, "malformed", &["20000"]).await;

    // Tokens: none, forged, expired, for another document: refused at the handshake.
    let forged = {
        let other = session_token::SigningKey::generate();
        let claims = session_token::Claims::new(
            "test",
            "eve",
            "Eve",
            &server.document,
            "pod-1",
            Role::Editor,
            3600,
        );
        other.mint(&claims).unwrap()
    };
    let expired = {
        let mut claims = session_token::Claims::new(
            "test",
            "ada",
            "Ada",
            &server.document,
            "pod-1",
            Role::Editor,
            0,
        );
        claims.exp -= 120; // beyond the leeway
        server.key.mint(&claims).unwrap()
    };
    let elsewhere = server.token_for("ada", Role::Editor, "another-doc", 3600);
    for (what, token) in [
        ("none", None),
        ("forged", Some(forged)),
        ("expired", Some(expired)),
        ("another document", Some(elsewhere)),
    ] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!("ws://{}/jupyter/channels?session_id=s1", server.addr);
        let mut request = url.into_client_request().unwrap();
        if let Some(t) = token {
            request
                .headers_mut()
                .insert("Authorization", format!("token {t}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let status = r.status().as_u16();
                assert!(status == 401 || status == 403, "{what}: {status}");
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // The server is still whole: a web client runs code.
    let mut web = server.client("grace", Role::Editor).await;
    let run = web.run("1+1").await;
    assert_eq!(run.status, Some(middleman::protocol::ExecutionStatus::Ok));
    drop(web);
    server.stop().await;
}

/// A v1 frame of a client request, made with the server's own codec.
fn v1_request(
    channel: Channel,
    msg_type: &str,
    content: serde_json::Value,
    parent: Option<&WireMessage>,
) -> Vec<u8> {
    let header = serde_json::json!({
        "msg_id": uuid::Uuid::new_v4().simple().to_string(), "msg_type": msg_type,
        "session": "s", "username": "ada", "version": "5.3", "date": "2026-12-04T00:00:00.000Z",
    });
    let message = WireMessage {
        channel,
        header: header.as_object().unwrap().clone(),
        parent_header: parent.map(|p| p.header.clone()).unwrap_or_default(),
        metadata: Default::default(),
        content: match content {
            serde_json::Value::Object(map) => map,
            _ => panic!("content is an object"),
        },
        buffers: Vec::new(),
    };
    match wire::encode(Framing::V1, &message) {
        Outgoing::Binary(b) => b,
        Outgoing::Text(_) => unreachable!(),
    }
}

/// Decodes a server frame (v1): channel, header, parent, content.
fn v1_decode(frame: &[u8]) -> (String, serde_json::Value, serde_json::Value) {
    let word = |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().unwrap()) as usize;
    let n = word(0);
    let offsets: Vec<usize> = (1..=n).map(word).collect();
    let part = |i: usize| &frame[offsets[i]..offsets[i + 1]];
    let json = |i: usize| serde_json::from_slice::<serde_json::Value>(part(i)).unwrap();
    (
        String::from_utf8(part(0).to_vec()).unwrap(),
        json(1),
        json(4),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jupyter_clients_prompt_is_answered_by_it_alone() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(&[]).await;
    let mut web = server.client("grace", Role::Editor).await;
    let token = server.token("ada", Role::Editor);
    let url = format!(
        "ws://{}/jupyter/channels?session_id=s1&token={token}",
        server.addr
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", wire::SUBPROTOCOL.parse().unwrap());
    let (mut ada, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let code =
        serde_json::json!({ "code": "secret = input('pw? ')\nlen(secret)", "allow_stdin": true });
    ada.send(Message::binary(v1_request(
        Channel::Shell,
        "execute_request",
        code,
        None,
    )))
    .await
    .unwrap();
    // Grace sees the prompt, and may not answer it.
    let events = web
        .until(|e| matches!(e, ServerEvent::InputRequest { .. }))
        .await;
    let Some(ServerEvent::InputRequest { execution_id, .. }) = events.last().cloned() else {
        unreachable!()
    };
    web.send(&middleman::protocol::ClientMessage::InputReply {
        execution_id: execution_id.clone(),
        value: "guess".into(),
    })
    .await;
    let refused = web.until(|e| matches!(e, ServerEvent::Error { .. })).await;
    assert!(
        matches!(refused.last(), Some(ServerEvent::Error { code: middleman::protocol::ErrorCode::Forbidden, message, .. }) if message.contains("only they can answer")),
        "{refused:?}"
    );
    // Ada answers from her client.
    let prompt = loop {
        let Some(Ok(Message::Binary(frame))) = ada.next().await else {
            panic!("closed")
        };
        let (channel, header, _) = v1_decode(&frame);
        if channel == "stdin" {
            let message = WireMessage {
                channel: Channel::Stdin,
                header: header.as_object().unwrap().clone(),
                parent_header: Default::default(),
                metadata: Default::default(),
                content: Default::default(),
                buffers: Vec::new(),
            };
            break message;
        }
    };
    let answer = serde_json::json!({ "value": "hunter2" });
    ada.send(Message::binary(v1_request(
        Channel::Stdin,
        "input_reply",
        answer,
        Some(&prompt),
    )))
    .await
    .unwrap();
    loop {
        let Some(Ok(Message::Binary(frame))) = ada.next().await else {
            panic!("closed")
        };
        let (_, header, content) = v1_decode(&frame);
        if header["msg_type"] == "execute_result" {
            assert_eq!(content["data"]["text/plain"], "7");
            break;
        }
    }
    drop(web);
    server.stop().await;
}
