//! Collaborative documents with a real kernel: cells run by id, many Yjs peers typing into one
//! cell, reconnects, roles, shared prompts, slow clients. One file: each test is one
//! collaboration scenario over the same helpers (`common/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::ypeer::YPeer;
use common::{Client, TestServer};
use doc_protocol::{
    CellKind, CellState, ClientMessage, ErrorCode, ExecutionStatus, Output, ServerEvent,
};
use session_token::Role;

fn stdout_of(outputs: &[Output]) -> String {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Stream { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn is_error(e: &ServerEvent, want: ErrorCode) -> bool {
    matches!(e, ServerEvent::Error { code, .. } if *code == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_run_by_id_and_everyone_sees_the_same_document() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut bob = server.client("bob", Role::Editor).await;
    let cell = ada.first_cell();

    ada.set_source(&cell, "print('hello')\n6 * 7").await;
    let id = ada.submit_cell(&cell).await;
    let run = ada.collect(&id).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{run:?}");

    // Bob watched it happen: queued, running, output, idle with a count.
    let seen = bob
        .until(|e| {
            matches!(e, ServerEvent::CellState { state: CellState::Idle, execution_count: Some(_), cell_id, .. } if *cell_id == cell)
        })
        .await;
    let states: Vec<CellState> = seen
        .iter()
        .filter_map(|e| match e {
            ServerEvent::CellState { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![CellState::Queued, CellState::Running, CellState::Idle]
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, ServerEvent::Output { execution_id, .. } if *execution_id == id))
    );

    // Someone arriving later gets the same cell, outputs and all, and sees who is here.
    let carol = server.client("carol", Role::Viewer).await;
    let snap = carol.snapshot();
    let c = &snap.cells[0];
    assert_eq!(c.source, "print('hello')\n6 * 7");
    assert_eq!(c.runtime.state, CellState::Idle);
    assert_eq!(c.runtime.execution_count, run.execution_count);
    assert_eq!(stdout_of(&c.runtime.outputs), "hello\n");
    assert!(c.runtime.outputs.iter().any(
        |o| matches!(o, Output::ExecuteResult { data, .. } if data.get("text/plain") == Some(&"42".into()))
    ));
    let mut names: Vec<&str> = snap.presence.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["ada name", "bob name", "carol name"]);
    assert!(snap.presence.iter().all(|p| p.color.starts_with('#')));

    // Structure: insert, move, change type, delete; a document keeps one cell.
    let second = ada.insert_cell(1, "x = 1").await;
    let third = ada.insert_cell(2, "# notes").await;
    ada.send(&ClientMessage::MoveCell {
        cell_id: third.clone(),
        index: 0,
    })
    .await;
    ada.send(&ClientMessage::SetCellType {
        cell_id: third.clone(),
        cell_type: CellKind::Markdown,
    })
    .await;
    ada.roundtrip().await;
    let order = bob
        .until(|e| matches!(e, ServerEvent::Cells { cells } if cells.len() == 3 && cells[0].cell_type == CellKind::Markdown))
        .await;
    let Some(ServerEvent::Cells { cells }) = order.last() else {
        unreachable!()
    };
    let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec![third.as_str(), cell.as_str(), second.as_str()]);

    // A markdown cell does not run; unknown cells are named in the error.
    ada.send(&ClientMessage::ExecuteCell {
        cell_id: third.clone(),
        request_id: None,
        stop_on_error: true,
    })
    .await;
    ada.until(|e| is_error(e, ErrorCode::InvalidEdit)).await;
    ada.send(&ClientMessage::DeleteCell {
        cell_id: "nope".into(),
    })
    .await;
    ada.until(|e| is_error(e, ErrorCode::NoSuchCell)).await;
    for id in [&third, &cell] {
        ada.send(&ClientMessage::DeleteCell {
            cell_id: id.to_string(),
        })
        .await;
    }
    ada.send(&ClientMessage::DeleteCell {
        cell_id: second.clone(),
    })
    .await;
    ada.until(|e| is_error(e, ErrorCode::InvalidEdit)).await;

    // Clearing outputs reaches everyone.
    let id = ada.submit_cell(&second).await;
    ada.collect(&id).await;
    ada.send(&ClientMessage::ClearOutputs { cell_id: None })
        .await;
    bob.until(|e| matches!(e, ServerEvent::OutputsCleared { cell_id } if *cell_id == second))
        .await;
    server.stop().await;
}

/// `n` Yjs peers type into the same cell at once, none waiting for the others.
async fn concurrent_typing(n: usize) {
    const KEYS: usize = 40;
    let server = TestServer::start(&[]).await;
    let mut peers = Vec::new();
    for i in 0..n {
        let mut client = server.client(&format!("u{i}"), Role::Editor).await;
        let cell = client.first_cell();
        let mut peer = YPeer::new();
        peer.sync_until(&mut client, |p| p.source(&cell).is_some())
            .await;
        peers.push((client, peer, cell));
    }
    let cell = peers[0].2.clone();
    let letters: Vec<char> = (0..n).map(|i| (b'a' + i as u8) as char).collect();
    for round in 0..KEYS {
        for (i, (client, peer, _)) in peers.iter_mut().enumerate() {
            let len = peer.source(&cell).unwrap().len();
            let at = (round * 7 + i * 13) % (len + 1);
            peer.type_at(client, &cell, at as u32, &letters[i].to_string())
                .await;
            if round % 10 == 9 {
                // Take in what others typed so far, without waiting for more.
                peer.absorb(client).await;
            }
        }
    }
    let total = n * KEYS;
    let mut texts = Vec::new();
    for (client, peer, _) in &mut peers {
        peer.sync_until(client, |p| p.source(&cell).unwrap().len() == total)
            .await;
        texts.push(peer.source(&cell).unwrap());
    }
    assert!(
        texts.windows(2).all(|w| w[0] == w[1]),
        "diverged: {texts:?}"
    );
    for l in &letters {
        assert_eq!(
            texts[0].chars().filter(|c| c == l).count(),
            KEYS,
            "characters typed by {l} were lost: {}",
            texts[0]
        );
    }
    // The server's copy is the same text.
    let late = server.client("late", Role::Viewer).await;
    assert_eq!(late.snapshot().cells[0].source, texts[0]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_editors_typing_in_one_cell_keep_every_character() {
    concurrent_typing(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_editors_typing_in_one_cell_keep_every_character() {
    concurrent_typing(10).await;
}

fn resume_query(token: &str, welcome: &ServerEvent, since: u64) -> String {
    let ServerEvent::Welcome { session, .. } = welcome else {
        panic!("not a welcome")
    };
    format!("token={token}&session={session}&since={since}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_gets_exactly_what_it_missed() {
    let server = TestServer::start(&[]).await;
    let token = server.token("ada", Role::Editor);
    let mut ada = Client::connect(server.addr, &token).await.unwrap();
    let cell = ada.first_cell();
    ada.set_source(
        &cell,
        "import time\nfor i in range(8):\n    print(i, flush=True)\n    time.sleep(0.25)",
    )
    .await;
    // Someone else stays connected throughout, to tell when ada has missed something.
    let mut watcher = server.client("watcher", Role::Viewer).await;
    let id = ada.submit_cell(&cell).await;
    // Read up to the first line, then drop the connection mid-run.
    let before = ada
        .until(|e| matches!(e, ServerEvent::Output { execution_id, .. } if *execution_id == id))
        .await;
    let since = ada.last_seq;
    let welcome = ada.welcome.clone();
    drop(ada);
    // Wait until the run has printed something ada did not see, so the gap is never empty.
    loop {
        let frame = watcher.next().await;
        if frame.seq.is_some_and(|seq| seq > since)
            && matches!(&frame.event, ServerEvent::Output { execution_id, .. } if *execution_id == id)
        {
            break;
        }
    }

    let mut back = Client::connect_query(server.addr, &resume_query(&token, &welcome, since))
        .await
        .unwrap();
    let ServerEvent::Welcome {
        resumed_from,
        snapshot,
        ..
    } = &back.welcome
    else {
        unreachable!()
    };
    assert_eq!(*resumed_from, Some(since));
    assert!(snapshot.is_none());
    let rest = back.collect(&id).await;
    let mut lines = stdout_of(
        &before
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Output { output, .. } => Some(output.clone()),
                _ => None,
            })
            .collect::<Vec<_>>(),
    );
    lines.push_str(&rest.stdout());
    let expected: String = (0..8).map(|i| format!("{i}\n")).collect();
    assert_eq!(lines, expected, "every line exactly once across the gap");

    // A session it does not know (Middleman restarted) or a gap past the buffer: a snapshot.
    let stale = format!("token={token}&session=gone&since=3");
    let fresh = Client::connect_query(server.addr, &stale).await.unwrap();
    assert_eq!(
        stdout_of(&fresh.snapshot().cells[0].runtime.outputs),
        expected
    );

    // An execution that finishes while nobody is connected keeps all its outputs.
    back.set_source(
        &cell,
        "import time\nfor i in range(4):\n    print('again', i, flush=True)\n    time.sleep(0.2)",
    )
    .await;
    back.submit_cell(&cell).await;
    drop(back);
    drop(fresh);
    let expected: String = (0..4).map(|i| format!("again {i}\n")).collect();
    loop {
        let c = server.client("later", Role::Viewer).await;
        let cell = &c.snapshot().cells[0];
        if cell.runtime.state == CellState::Idle {
            assert_eq!(stdout_of(&cell.runtime.outputs), expected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_live_but_cannot_edit_run_or_answer() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut vic = server.client("vic", Role::Viewer).await;
    let cell = ada.first_cell();
    ada.set_source(&cell, "answer = input('name? ')").await;

    for m in [
        ClientMessage::InsertCell {
            index: 0,
            cell_type: CellKind::Code,
            source: "boom".into(),
            request_id: None,
        },
        ClientMessage::SetSource {
            cell_id: cell.clone(),
            source: "boom".into(),
        },
        ClientMessage::ExecuteCell {
            cell_id: cell.clone(),
            request_id: None,
            stop_on_error: true,
        },
        ClientMessage::DeleteCell {
            cell_id: cell.clone(),
        },
        ClientMessage::ClearOutputs { cell_id: None },
    ] {
        vic.send(&m).await;
        vic.until(|e| is_error(e, ErrorCode::Forbidden)).await;
    }
    // Edits through Yjs are refused too, and change nothing.
    let mut peer = YPeer::new();
    peer.sync_until(&mut vic, |p| {
        p.source(&cell).as_deref() == Some("answer = input('name? ')")
    })
    .await;
    peer.type_at(&mut vic, &cell, 0, "evil ").await;
    vic.until(|e| is_error(e, ErrorCode::Forbidden)).await;

    // The viewer sees the prompt but cannot answer it; where it is shows to others.
    let id = ada.submit_cell(&cell).await;
    vic.until(
        |e| matches!(e, ServerEvent::InputRequest { execution_id, .. } if *execution_id == id),
    )
    .await;
    vic.send(&ClientMessage::InputReply {
        execution_id: id.clone(),
        value: "vic".into(),
    })
    .await;
    vic.until(|e| is_error(e, ErrorCode::Forbidden)).await;
    vic.send(&ClientMessage::Presence {
        cell_id: Some(cell.clone()),
        cursor: Some(serde_json::json!({"line": 1})),
    })
    .await;
    ada.until(|e| matches!(e, ServerEvent::Presence(p) if p.name == "vic name" && p.cell_id.as_deref() == Some(cell.as_str())))
        .await;
    ada.send(&ClientMessage::InputReply {
        execution_id: id.clone(),
        value: "ada".into(),
    })
    .await;
    assert_eq!(ada.collect(&id).await.status, Some(ExecutionStatus::Ok));
    let late = server.client("late", Role::Viewer).await;
    assert_eq!(late.snapshot().cells[0].source, "answer = input('name? ')");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_prompt_is_answered_by_a_second_editor() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut bob = server.client("bob", Role::Editor).await;
    let cell = ada.first_cell();
    ada.set_source(&cell, "name = input('who? ')\nprint('hi', name)")
        .await;
    let id = ada.submit_cell(&cell).await;
    bob.until(|e| matches!(e, ServerEvent::InputRequest { prompt, .. } if prompt == "who? "))
        .await;
    // Whoever arrives while it is pending sees the prompt in the snapshot.
    let carol = server.client("carol", Role::Editor).await;
    let pending = carol.snapshot().input.clone().expect("pending prompt");
    assert_eq!(
        (pending.execution_id.as_str(), pending.prompt.as_str()),
        (id.as_str(), "who? ")
    );

    bob.send(&ClientMessage::InputReply {
        execution_id: id.clone(),
        value: "bob".into(),
    })
    .await;
    let events = ada
        .until(|e| matches!(e, ServerEvent::InputResolved { .. }))
        .await;
    assert!(matches!(
        events.last(),
        Some(ServerEvent::InputResolved { by: Some(by), .. }) if by == "bob name"
    ));
    // The first answer won; a late one is told so.
    ada.send(&ClientMessage::InputReply {
        execution_id: id.clone(),
        value: "ada".into(),
    })
    .await;
    // The refusal and the run's end race (the kernel goes on at once): wait for both.
    let mut run = common::Run {
        id: id.clone(),
        ..Default::default()
    };
    let mut refused = false;
    while !refused || run.status.is_none() {
        let event = ada.next().await.event;
        refused |= is_error(&event, ErrorCode::NoPendingInput);
        run.absorb(event);
    }
    assert_eq!(run.status, Some(ExecutionStatus::Ok));
    assert!(run.stdout().contains("hi bob"), "{run:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_resynchronised_and_never_delays_others() {
    // A tiny per-connection queue and big outputs: the slow reader must fall behind.
    let server =
        TestServer::start(&["--client-queue", "16", "--max-output-bytes", "67108864"]).await;
    const RUNS: u64 = 6;
    let mut fast = server.client("fast", Role::Editor).await;
    let slow = server.client("slow", Role::Viewer).await;
    let cell = fast.first_cell();
    let code = "import time\nfor i in range(5):\n    print(str(i) * 1_000_000, flush=True)\n    time.sleep(0.25)";
    fast.set_source(&cell, code).await;

    // The slow client reads one message every 300 ms, and keeps its view of the cell.
    let reader = tokio::spawn(async move {
        let mut slow = slow;
        let mut outputs: Vec<Output> = slow.snapshot().cells[0].runtime.outputs.clone();
        let mut resyncs = 0;
        // A resync's snapshot may defer the cell's megabytes of output: they are fetched, as
        // the protocol says, unless newer output supersedes them first.
        let mut fetching = false;
        let mut finished = None;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Some(event) = slow.pump().await else {
                continue;
            };
            match event {
                ServerEvent::Welcome {
                    snapshot: Some(s), ..
                } => {
                    resyncs += 1;
                    let c = &s.cells[0];
                    outputs = c.runtime.outputs.clone();
                    fetching = c.deferred.is_some();
                    if fetching {
                        slow.send(&ClientMessage::FetchOutputs {
                            cell_ids: vec![c.id.clone()],
                        })
                        .await;
                    }
                    let count = c.runtime.execution_count;
                    if c.runtime.state == CellState::Idle && count >= Some(RUNS) {
                        finished = Some(count);
                    }
                }
                ServerEvent::CellOutputs {
                    outputs: fetched, ..
                } if fetching => {
                    outputs = fetched;
                    fetching = false;
                }
                ServerEvent::OutputsCleared { .. } => {
                    outputs.clear();
                    fetching = false;
                }
                ServerEvent::Output { output, .. } => outputs.push(output),
                ServerEvent::CellState {
                    state: CellState::Idle,
                    execution_count: Some(n),
                    ..
                } if n >= RUNS => finished = Some(Some(n)),
                _ => {}
            }
            if let Some(count) = finished
                && !fetching
            {
                return (outputs, count, resyncs);
            }
        }
    });
    let mut last = None;
    for _ in 0..RUNS {
        let id = fast.submit_cell(&cell).await;
        let run = fast.collect(&id).await;
        assert_eq!(run.status, Some(ExecutionStatus::Ok));
        last = Some(run);
    }
    let last = last.unwrap();
    let (outputs, count, resyncs) = tokio::time::timeout(Duration::from_secs(240), reader)
        .await
        .expect("the slow client never caught up")
        .unwrap();
    assert!(resyncs >= 1, "the slow client never fell behind");
    assert_eq!(count, last.execution_count);
    assert_eq!(
        stdout_of(&outputs),
        last.stdout(),
        "after resynchronising, the slow client shows the same cell"
    );
    server.stop().await;
}

/// Reads until an awareness update about `client_id` arrives; returns its state.
async fn awareness_of(c: &mut Client, client_id: u64) -> String {
    use middleman::collab::yproto::{YMessage, decode_awareness};
    loop {
        for bytes in std::mem::take(&mut c.yjs) {
            if let Ok(YMessage::Awareness(u)) = YMessage::decode(&bytes) {
                for e in decode_awareness(&u).unwrap() {
                    if e.client == client_id {
                        return e.state;
                    }
                }
            }
        }
        c.pump().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_are_relayed_under_the_token_identity_and_vanish_on_leave() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut bob = server.client("bob", Role::Editor).await;
    let (ada_peer, bob_peer) = (YPeer::new(), YPeer::new());
    let (ada_id, bob_id) = (
        ada_peer.doc.client_id().get(),
        bob_peer.doc.client_id().get(),
    );
    bob_peer
        .announce(
            &mut bob,
            1,
            r#"{"user":{"name":"bob"},"cursor":{"anchor":3}}"#,
        )
        .await;
    // Ada claims to be someone else: the name others see is the token's.
    ada_peer
        .announce(
            &mut ada,
            1,
            r##"{"user":{"name":"Mallory","color":"#000000"},"cursor":{"anchor":1,"head":4}}"##,
        )
        .await;
    let state: serde_json::Value =
        serde_json::from_str(&awareness_of(&mut bob, ada_id).await).unwrap();
    assert_eq!(state["user"]["name"], "ada name");
    assert_ne!(state["user"]["color"], "#000000");
    assert_eq!(state["cursor"]["head"], 4);
    // Nor can she speak for Bob's Yjs client (once Bob's own state is in: before that, the id
    // is nobody's yet).
    let bobs: serde_json::Value =
        serde_json::from_str(&awareness_of(&mut ada, bob_id).await).unwrap();
    assert_eq!(bobs["cursor"]["anchor"], 3);
    let mut spoof = YPeer::new();
    spoof.doc = yrs::Doc::with_client_id(bob_id);
    spoof.announce(&mut ada, 9, r#"{"cursor":null}"#).await;
    ada.roundtrip().await;
    let mut carol = server.client("carol", Role::Viewer).await;
    let bobs: serde_json::Value =
        serde_json::from_str(&awareness_of(&mut carol, bob_id).await).unwrap();
    assert_eq!(bobs["cursor"]["anchor"], 3, "spoofed update ignored");

    let ServerEvent::Welcome {
        client: ada_client, ..
    } = ada.welcome
    else {
        unreachable!()
    };
    drop(ada);
    // Presence goes first, then the cursor.
    bob.until(|e| matches!(e, ServerEvent::PresenceLeft { client } if *client == ada_client))
        .await;
    assert_eq!(awareness_of(&mut bob, ada_id).await, "null");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_cannot_grow_past_its_limit() {
    let server = TestServer::start(&["--max-document-bytes", "4096"]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let cell = ada.first_cell();
    ada.set_source(&cell, "x = 1").await;
    ada.send(&ClientMessage::SetSource {
        cell_id: cell.clone(),
        source: "y".repeat(5000),
    })
    .await;
    ada.until(|e| is_error(e, ErrorCode::TooLarge)).await;
    let mut peer = YPeer::new();
    peer.sync_until(&mut ada, |p| p.source(&cell).as_deref() == Some("x = 1"))
        .await;
    peer.type_at(&mut ada, &cell, 0, &"z".repeat(5000)).await;
    ada.until(|e| is_error(e, ErrorCode::TooLarge)).await;
    // Refused edits change nothing, and the connection goes on.
    let late = server.client("late", Role::Viewer).await;
    assert_eq!(late.snapshot().cells[0].source, "x = 1");
    let id = ada.submit_cell(&cell).await;
    assert_eq!(ada.collect(&id).await.status, Some(ExecutionStatus::Ok));
    server.stop().await;
}

/// Runs the stock y-websocket provider script against `/yjs/{document}`; its JSON report.
fn y_websocket_peer(
    server: &TestServer,
    document: &str,
    token: &str,
    cell: &str,
    text: &str,
    tries: u32,
) -> (bool, String) {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/node/y-websocket-peer.mjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .args([
            &format!("ws://{}/yjs", server.addr),
            document,
            token,
            cell,
            text,
            &tries.to_string(),
        ])
        .env(
            "NODE_PATH",
            std::env::var("NODE_PATH")
                .expect("NODE_PATH: run `make test`, which installs y-websocket"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A stock `WebsocketProvider` (y-websocket, in Node) binds to the document through the
/// Yjs-only endpoint, authenticated by its token: its edit reaches a JSON client and the
/// export; a viewer's provider syncs but its edit goes nowhere; another room is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_y_websocket_provider_edits_cells() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let cell = ada.first_cell();
    ada.set_source(&cell, "x = 1").await;
    let editor = server.token("yws", Role::Editor);
    let (ok, report) =
        y_websocket_peer(&server, &server.document, &editor, &cell, "\nprint(x)", 100);
    assert!(ok, "{report}");
    assert!(report.contains(r#""after":"x = 1\nprint(x)""#), "{report}");
    // The export and the JSON client's runs have it.
    let bearer = format!("Bearer {}", server.token("ada", Role::Editor));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) =
            common::http_request(server.addr, "/api/notebook", &[("Authorization", &bearer)]).await;
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if json["cells"][0]["source"] == "x = 1\nprint(x)" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "export: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = ada.submit_cell(&cell).await;
    assert_eq!(stdout_of(&ada.collect(&id).await.outputs), "1\n");

    // A viewer's provider syncs, but what it types is not taken.
    let viewer = server.token("vic", Role::Viewer);
    let (ok, report) = y_websocket_peer(&server, &server.document, &viewer, &cell, "\nhacked()", 5);
    assert!(!ok, "{report}");
    assert!(report.contains(r#""after":"x = 1\nprint(x)""#), "{report}");

    // The room must be the token's document.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/yjs/another-document?token={editor}",
        server.addr
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("wrong_document"), "{body}");
        }
        other => panic!("another room was not refused: {other:?}"),
    }
    server.stop().await;
}
