//! The document model with real parts: outputs a real kernel produced, exported as `.ipynb` and
//! checked by Python's own `nbformat` validator, re-imported, and persisted to a file and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use doc_protocol::KernelDescription;
use middleman::document::persist::DocumentStore;
use middleman::document::{CellKind, Notebook, ipynb};
use session_token::Role;

const RICH: &str = r#"
import sys
from IPython.display import display, HTML, JSON, Markdown
print('out'); print('err', file=sys.stderr)
display(HTML('<b>b</b>'), display_id='d1')
display(JSON({'k': [1, 2]}))
display(Markdown('*m*'))
42
"#;

async fn notebook_with_real_outputs() -> Notebook {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let rich = c.run(RICH).await;
    let failing = c.run("1/0").await;
    server.stop().await;

    let mut nb = Notebook::new();
    let first = nb.cells()[0].id.clone();
    nb.set_source(&first, RICH).unwrap();
    let r = nb.runtime_mut(&first).unwrap();
    r.outputs = rich.outputs.clone();
    r.execution_count = rich.execution_count;
    let second = nb.insert_cell(1, CellKind::Code, "1/0").unwrap();
    let r = nb.runtime_mut(&second).unwrap();
    r.outputs = failing.outputs.clone();
    r.execution_count = failing.execution_count;
    nb.insert_cell(
        2,
        CellKind::Markdown,
        "# Notes\n\nSome *text* with unicode: é ✓",
    )
    .unwrap();
    nb.insert_cell(3, CellKind::Raw, "raw text").unwrap();
    assert!(
        nb.cells()[0].runtime.outputs.len() >= 5,
        "{:?}",
        nb.cells()[0].runtime.outputs
    );
    nb
}

fn kernel() -> KernelDescription {
    KernelDescription {
        name: "python3".into(),
        display_name: "Python 3".into(),
        language: "python".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_notebooks_pass_nbformat_and_reimport_identically() {
    let nb = notebook_with_real_outputs().await;
    let exported = ipynb::export(&nb, &kernel());
    let dir = TempDir::new("ipynb");
    let path = dir.0.join("doc.ipynb");
    std::fs::write(&path, serde_json::to_vec_pretty(&exported).unwrap()).unwrap();
    // The official validator, from the pinned environment.
    assert_eq!(nbformat_validate(&path), "4 5 4");

    let back = ipynb::import(&exported, &kernel()).unwrap().notebook;
    let strip = |nb: &Notebook| {
        nb.cells()
            .into_iter()
            .map(|mut c| {
                // nbformat keeps display ids out of the file.
                for o in &mut c.runtime.outputs {
                    if let doc_protocol::Output::DisplayData { display_id, .. } = o {
                        *display_id = None;
                    }
                }
                c
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&back), strip(&nb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_persist_to_a_file_and_to_redis() {
    let nb = notebook_with_real_outputs().await;
    let dir = TempDir::new("persist");
    let redis = testkit::RedisServer::start();
    let stores = [
        DocumentStore::open(&dir.0.join("docs").display().to_string(), "", None)
            .await
            .unwrap(),
        DocumentStore::open(&redis.url(), "test:", None)
            .await
            .unwrap(),
    ];
    for store in stores {
        assert!(store.load("doc/../../etc").await.unwrap().is_none());
        store.save("doc-1", &nb).await.unwrap();
        let back = store.load("doc-1").await.unwrap().unwrap();
        assert_eq!(back.cells(), nb.cells(), "{store:?}");
        // The restored CRDT keeps merging with clients that had the old state.
        let mut client = Notebook::restore(&nb.encode_state(), Default::default()).unwrap();
        let sv = client.state_vector();
        let id = client.cells()[2].id.clone();
        client.set_source(&id, "edited by a client").unwrap();
        let mut back = back;
        back.apply_update(&client.encode_diff(&sv).unwrap())
            .unwrap();
        assert_eq!(back.cell(&id).unwrap().source, "edited by a client");
    }
}

#[tokio::test]
async fn a_real_yjs_client_edits_cells_in_place() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut nb = Notebook::new();
    let id = nb.cells()[0].id.clone();
    nb.set_source(&id, "x = 1").unwrap();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/node/yjs-peer.cjs");
    let mut child = std::process::Command::new("node")
        .arg(script)
        .args([id.as_str(), "\nprint(x)", "fromyjs1"])
        .env(
            "NODE_PATH",
            std::env::var("NODE_PATH").expect("NODE_PATH: run `make test`, which installs yjs"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b64.encode(nb.encode_state()).as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // Meanwhile the server side edited too: both survive.
    let other = nb.insert_cell(0, CellKind::Code, "import os").unwrap();
    nb.apply_update(&b64.decode(&out.stdout).unwrap()).unwrap();
    let cells = nb.cells();
    let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec![other.as_str(), id.as_str(), "fromyjs1"]);
    assert_eq!(cells[1].source, "x = 1\nprint(x)");
    assert_eq!(cells[2].kind, CellKind::Markdown);
    assert_eq!(cells[2].source, "from yjs");
}

/// Validates a notebook file with the official `nbformat` package; returns "major minor cells".
fn nbformat_validate(path: &std::path::Path) -> String {
    let python = venv_python();
    let out = std::process::Command::new(python)
        .args(["-c", "import sys, nbformat; nb = nbformat.read(sys.argv[1], as_version=4); nbformat.validate(nb); print(nb.nbformat, nb.nbformat_minor, len(nb.cells))"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nbformat rejected the export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fills a live document through the protocol: a rich cell, a failing one, markdown.
async fn fill(c: &mut Client) {
    use doc_protocol::ClientMessage;
    let first = c.first_cell();
    c.set_source(&first, RICH).await;
    let second = c.insert_cell(1, "1/0").await;
    let notes = c.insert_cell(2, "# Notes\n\nunicode: é ✓ 😀").await;
    c.send(&ClientMessage::SetCellType {
        cell_id: notes,
        cell_type: CellKind::Markdown,
    })
    .await;
    for cell in [&first, &second] {
        let id = c.submit_cell(cell).await;
        c.collect(&id).await;
    }
    c.roundtrip().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notebooks_export_and_import_over_http_with_the_websocket_auth() {
    let a = TestServer::start(&[]).await;
    let mut ada = a.client("ada", Role::Editor).await;
    fill(&mut ada).await;
    let token = a.token("ada", Role::Editor);
    let bearer = format!("Bearer {token}");

    let (status, _) = http_get(a.addr, "/api/notebook").await;
    assert_eq!(status, 401, "no token");
    let foreign = a.token_for("ada", Role::Editor, "another-doc", 3600);
    let (status, _) = http_get(a.addr, &format!("/api/notebook?token={foreign}")).await;
    assert_eq!(status, 403, "token for another document");
    let (status, body) = http_request(a.addr, "/api/notebook", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let dir = TempDir::new("http-ipynb");
    let path = dir.0.join("doc.ipynb");
    std::fs::write(&path, &body).unwrap();
    assert_eq!(nbformat_validate(&path), "4 5 3");
    let exported: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(exported["cells"][0]["execution_count"], 1);
    assert_eq!(
        exported["cells"][1]["outputs"][0]["ename"],
        "ZeroDivisionError"
    );

    // Into a second document, with a collaborator already there.
    let b = TestServer::start(&[]).await;
    let mut bob = b.client("bob", Role::Editor).await;
    let viewer = format!("Bearer {}", b.token("vic", Role::Viewer));
    let (status, _) = http_send(
        b.addr,
        "PUT",
        "/api/notebook",
        &[("Authorization", &viewer)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "viewers cannot import");
    let editor = format!("Bearer {}", b.token("bob", Role::Editor));
    let (status, _) = http_send(
        b.addr,
        "PUT",
        "/api/notebook",
        &[("Authorization", &editor)],
        b"{\"nbformat\": 3}",
    )
    .await;
    assert_eq!(status, 400, "not nbformat 4");
    let (status, reply) = http_send(
        b.addr,
        "PUT",
        "/api/notebook",
        &[
            ("Authorization", &editor),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    bob.until(|e| matches!(e, doc_protocol::ServerEvent::Cells { cells } if cells.len() == 3))
        .await;
    let (_, again) = http_request(b.addr, "/api/notebook", &[("Authorization", &editor)]).await;
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        again["cells"], exported["cells"],
        "re-imports to the same document"
    );
    a.stop().await;
    b.stop().await;
}

/// Runs the real `middleman` binary (so that it can be SIGKILLed like a lost pod).
struct Process {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Process {
    fn start(server: &TestServer, store: &str, prefix: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_middleman"))
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .args(["--document", &server.document, "--pod", "pod-1"])
            .arg("--public-key")
            .arg(server.dir.0.join("public.pem"))
            .arg("--runtime-root")
            .arg(server.dir.0.join("proc-run"))
            .args(["--document-store", store, "--document-key-prefix", prefix])
            .args(["--save-interval", "200ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self { child, addr }
    }

    async fn wait_ready(&self) {
        for _ in 0..1200 {
            if http_get(self.addr, "/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("middleman did not become ready");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_middleman_restores_its_document_from_redis() {
    use middleman::document::persist;
    // The in-process server only provides keys, a document id and a scratch directory.
    let keys = TestServer::start(&[]).await;
    let redis = testkit::RedisServer::start();
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let token = keys.token("ada", Role::Editor);

    let first = Process::start(&keys, &redis.url(), &prefix);
    first.wait_ready().await;
    let mut ada = Client::connect(first.addr, &token).await.unwrap();
    fill(&mut ada).await;
    let before = Client::connect(first.addr, &token).await.unwrap();
    let cells = before.snapshot().cells.clone();
    assert_eq!(cells.len(), 3);

    // Wait until the debounced save has everything (as a lost pod's last second is the only
    // thing at risk), then kill it without warning.
    let key = format!("{prefix}notebook:{}", keys.document);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    loop {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(b) = bytes
            && persist::decode(&b).unwrap().cells() == cells
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(ada);
    drop(before);
    drop(first);

    let second = Process::start(&keys, &redis.url(), &prefix);
    second.wait_ready().await;
    let mut back = Client::connect(second.addr, &token).await.unwrap();
    // Restored as it was, except that what the cells show is not in the new kernel: the cells
    // that ran say so (at once, or when the kernel is up).
    let expected: Vec<_> = cells
        .iter()
        .cloned()
        .map(|mut c| {
            if c.runtime.last_run.is_some() {
                c.runtime.state = doc_protocol::CellState::Stale;
                c.runtime.cause = Some(doc_protocol::StateCause::NotInKernel);
            }
            c
        })
        .collect();
    let mut restored = back.snapshot().cells.clone();
    let marked = |cells: &[doc_protocol::CellView]| {
        cells
            .iter()
            .filter(|c| c.runtime.cause == Some(doc_protocol::StateCause::NotInKernel))
            .count()
    };
    while marked(&restored) < 2 {
        if let doc_protocol::ServerEvent::CellState {
            cell_id,
            state,
            cause,
            ..
        } = back.next().await.event
            && let Some(c) = restored.iter_mut().find(|c| c.id == cell_id)
        {
            c.runtime.state = state;
            c.runtime.cause = cause;
        }
    }
    assert_eq!(restored, expected, "restored as it was");
    drop(second);
    keys.stop().await;
}

/// Over HTTP: what the document does not model comes back on export, the import says what it
/// changed, and every refusal (the size limit included) is the JSON error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_keep_what_they_do_not_model_and_refuse_in_json() {
    let server = TestServer::start(&["--max-import-bytes", "4096"]).await;
    let editor = format!("Bearer {}", server.token("ada", Role::Editor));
    let original = serde_json::json!({
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python", "version": "3.11.4"},
            "papermill": {"parameters": {"alpha": 0.6}}
        },
        "cells": [
            {"id": "params", "cell_type": "code", "metadata": {"tags": ["parameters"]},
             "execution_count": null, "source": "alpha = 0.5",
             "outputs": [{"output_type": "execute_result", "execution_count": null, "metadata": {},
                          "data": {"text/plain": "0.5"}}]},
            {"id": "pic", "cell_type": "markdown", "metadata": {},
             "attachments": {"dot.png": {"image/png": "iVBORw0KGgo="}}, "source": "![dot](attachment:dot.png)"},
            {"id": "later", "cell_type": "whiteboard", "metadata": {}, "source": "a sketch"}
        ]
    });
    let (status, reply) = http_send(
        server.addr,
        "PUT",
        "/api/notebook",
        &[("Authorization", &editor)],
        original.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["cells"], 3);
    assert!(
        reply["changes"][0]
            .as_str()
            .is_some_and(|c| c.contains("\"whiteboard\"")),
        "{reply}"
    );
    let (status, body) =
        http_request(server.addr, "/api/notebook", &[("Authorization", &editor)]).await;
    assert_eq!(status, 200);
    let exported: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(exported, original);

    // Too large: a JSON error that names the limit.
    let big = vec![b' '; 5000];
    let (status, reply) = http_send(
        server.addr,
        "PUT",
        "/api/notebook",
        &[("Authorization", &editor)],
        &big,
    )
    .await;
    assert_eq!(status, 413, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["error"], "too_large");
    assert!(
        reply["message"].as_str().unwrap().contains("4096"),
        "{reply}"
    );
    // Malformed: JSON errors in plain words.
    let (status, reply) = http_send(
        server.addr,
        "PUT",
        "/api/notebook",
        &[("Authorization", &editor)],
        br#"{"nbformat": 4, "cells": [{"source": "x"}]}"#,
    )
    .await;
    assert_eq!(status, 400);
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["error"], "bad_notebook");
    assert_eq!(
        reply["message"],
        "not an nbformat 4 notebook: cell 0 has no cell_type"
    );
    server.stop().await;
}

/// A document with megabytes of outputs: the welcome carries its structure and small outputs,
/// and the large ones come when asked for, whole; what ran since the snapshot wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_are_deferred_from_the_welcome_and_fetched_on_demand() {
    use doc_protocol::{ClientMessage, Output, ServerEvent};
    let server = TestServer::start(&[]).await;
    let editor = format!("Bearer {}", server.token("ada", Role::Editor));
    let big = "x".repeat(500 * 1024);
    let cells: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            serde_json::json!({"id": format!("c{i}"), "cell_type": "code", "metadata": {},
                "execution_count": i + 1, "source": format!("print({i})"),
                "outputs": [{"output_type": "stream", "name": "stdout",
                             "text": if i % 2 == 0 { big.clone() } else { format!("{i}\n") }}]})
        })
        .collect();
    let notebook =
        serde_json::json!({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells});
    let body = notebook.to_string();
    assert!(body.len() > 10_000_000);
    let (status, reply) = http_send(
        server.addr,
        "PUT",
        "/api/notebook",
        &[("Authorization", &editor)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    let mut c = server.client("bob", Role::Viewer).await;
    let welcome_bytes = serde_json::to_vec(&c.welcome).unwrap().len();
    assert!(
        welcome_bytes < 512 * 1024,
        "welcome of {welcome_bytes} bytes"
    );
    let cells = c.snapshot().cells.clone();
    assert_eq!(cells.len(), 40);
    let deferred: Vec<String> = cells
        .iter()
        .filter(|c| c.deferred.is_some())
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(deferred.len(), 20, "the twenty large ones");
    assert!(
        cells
            .iter()
            .filter(|c| c.deferred.is_none())
            .all(|c| c.runtime.outputs.len() == 1)
    );
    assert!(
        cells[0]
            .deferred
            .is_some_and(|d| d.count == 1 && d.bytes >= 500 * 1024)
    );

    // Fetched, a few at a time (viewers too), whole.
    c.send(&ClientMessage::FetchOutputs {
        cell_ids: deferred[..8].to_vec(),
    })
    .await;
    let mut got = Vec::new();
    while got.len() < 8 {
        if let ServerEvent::CellOutputs { cell_id, outputs } = c.next().await.event {
            assert!(matches!(&outputs[..], [Output::Stream { text, .. }] if *text == big));
            got.push(cell_id);
        }
    }
    assert_eq!(got, deferred[..8]);
    // Too many at once, or an unknown cell: refused, the connection kept.
    c.send(&ClientMessage::FetchOutputs {
        cell_ids: vec!["c0".into(); 65],
    })
    .await;
    c.until(|e| {
        matches!(
            e,
            ServerEvent::Error {
                code: doc_protocol::ErrorCode::TooLarge,
                ..
            }
        )
    })
    .await;
    c.send(&ClientMessage::FetchOutputs {
        cell_ids: vec!["nope".into()],
    })
    .await;
    c.until(|e| {
        matches!(
            e,
            ServerEvent::Error {
                code: doc_protocol::ErrorCode::NoSuchCell,
                ..
            }
        )
    })
    .await;
    server.stop().await;
}
