//! The document model with real parts: outputs a real kernel produced, exported as `.ipynb` and
//! checked by Python's own `nbformat` validator, re-imported, and persisted to a file and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use middleman::document::persist::DocumentStore;
use middleman::document::{CellKind, Notebook, ipynb};
use middleman::protocol::KernelDescription;
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
    let python =
        std::path::PathBuf::from(std::env::var("NBP_VENV").expect("NBP_VENV: run `make test`"))
            .join("bin/python");
    let out = std::process::Command::new(python)
        .args(["-c", "import sys, nbformat; nb = nbformat.read(sys.argv[1], as_version=4); nbformat.validate(nb); print(nb.nbformat, nb.nbformat_minor, len(nb.cells))"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nbformat rejected the export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4 5 4");

    let back = ipynb::import(&exported).unwrap();
    let strip = |nb: &Notebook| {
        nb.cells()
            .into_iter()
            .map(|mut c| {
                // nbformat keeps display ids out of the file.
                for o in &mut c.runtime.outputs {
                    if let middleman::protocol::Output::DisplayData { display_id, .. } = o {
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
        DocumentStore::File(dir.0.join("docs")),
        DocumentStore::redis(&redis.url(), "test:").await.unwrap(),
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
