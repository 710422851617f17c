//! Real public notebooks (scripts/fetch-corpus.sh: the notebooks shipped with jupytext,
//! nbformat, nbconvert and papermill, some 150 in 30 languages) through import and export,
//! compared field by field with nbformat's own reader and validator
//! (tests/support/compare_notebooks.py); and every code cell of the Python ones analysed as
//! IPython would run it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use doc_protocol::KernelDescription;
use middleman::document::ipynb;
use middleman::graph::{Graph, GraphError, GraphRule};
use serde_json::Value;

fn corpus() -> Vec<PathBuf> {
    let root = PathBuf::from(
        std::env::var("NBP_CORPUS").expect("NBP_CORPUS: run the tests with `make test`"),
    );
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "ipynb") {
                found.push(path);
            }
        }
    }
    found.sort();
    assert!(
        found.len() >= 100,
        "only {} notebooks under {}: run scripts/fetch-corpus.sh",
        found.len(),
        root.display()
    );
    found
}

fn python_kernel() -> KernelDescription {
    KernelDescription {
        name: "python3".into(),
        display_name: "Python 3".into(),
        language: "python".into(),
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).unwrap()).ok()
}

#[test]
fn every_notebook_of_the_corpus_comes_back_whole() {
    let dir = TempDir::new("corpus");
    let mut manifest = Vec::new();
    let mut refused = Vec::new();
    for (i, path) in corpus().iter().enumerate() {
        let Some(json) = read_json(path) else {
            continue;
        };
        let major = json.get("nbformat").and_then(Value::as_u64);
        match ipynb::import(&json, &python_kernel()) {
            Ok(imported) => {
                assert_eq!(major, Some(4), "{} imported", path.display());
                let exported = ipynb::export(&imported.notebook, &python_kernel());
                let out = dir.0.join(format!("{i}.ipynb"));
                std::fs::write(&out, serde_json::to_vec_pretty(&exported).unwrap()).unwrap();
                manifest.push(serde_json::json!({
                    "original": path, "exported": out, "changes": imported.changes,
                }));
            }
            Err(error) => {
                // Only notebooks of another major version are refused, and they are told why.
                assert_ne!(major, Some(4), "{} refused: {error}", path.display());
                assert!(error.to_string().contains("nbformat must be 4"), "{error}");
                refused.push(path.clone());
            }
        }
    }
    assert!(manifest.len() >= 100, "only {} imported", manifest.len());
    let manifest_path = dir.0.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let python = venv_python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/compare_notebooks.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&manifest_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the comparison failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compared"], manifest.len());
    assert!(
        report["valid"].as_u64().unwrap() >= 80,
        "fewer valid notebooks than expected: {report}"
    );
    assert_eq!(
        report["invalid_exports"],
        serde_json::json!([]),
        "valid notebooks exported invalid"
    );
    assert_eq!(
        report["differences"],
        serde_json::json!([]),
        "fields changed on the round trip"
    );
    eprintln!(
        "corpus: {} notebooks imported and exported whole ({} valid), {} of another nbformat refused",
        manifest.len(),
        report["valid"],
        refused.len()
    );
}

/// Whether a notebook's kernel runs Python (its kernelspec or language_info says so).
fn is_python(json: &Value) -> bool {
    let meta = &json["metadata"];
    let language = meta["kernelspec"]["language"]
        .as_str()
        .or_else(|| meta["language_info"]["name"].as_str())
        .unwrap_or("");
    language.eq_ignore_ascii_case("python")
        || meta["kernelspec"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("python"))
}

#[test]
fn every_python_cell_of_the_corpus_is_understood_as_ipython_runs_it() {
    let mut cells = 0;
    let mut refused = Vec::new();
    let (mut blocked_strict, mut blocked_positional) = (0, 0);
    for path in corpus() {
        let Some(json) = read_json(&path) else {
            continue;
        };
        if json["nbformat"] != 4 || !is_python(&json) {
            continue;
        }
        let imported = ipynb::import(&json, &python_kernel()).unwrap();
        let mut analyses = Vec::new();
        for cell in imported.notebook.cells() {
            if cell.kind != middleman::document::CellKind::Code {
                continue;
            }
            cells += 1;
            let analysis = middleman::graph::analyse(&cell.source);
            if analysis.error.is_some() {
                refused.push(cell.source);
            }
            analyses.push((cell.id, analysis));
        }
        // The same notebook's graph under both rules: the strict one refuses redefinitions and
        // cycles, the positional one nothing but syntax errors.
        let refs: Vec<(&str, &middleman::graph::CellAnalysis)> =
            analyses.iter().map(|(id, a)| (id.as_str(), a)).collect();
        for (rule, count) in [
            (GraphRule::Strict, &mut blocked_strict),
            (GraphRule::Positional, &mut blocked_positional),
        ] {
            *count += Graph::build(&refs, rule)
                .cells()
                .iter()
                .filter(|c| {
                    c.error
                        .as_ref()
                        .is_some_and(|e| !matches!(e, GraphError::Syntax { .. }))
                })
                .count();
        }
    }
    eprintln!(
        "corpus: graph refusals of {cells} Python code cells: strict rule {blocked_strict}, positional rule {blocked_positional}"
    );
    assert_eq!(blocked_positional, 0);
    assert!(cells >= 200, "only {cells} Python code cells");
    // What the analysis refuses, IPython must refuse too: its own transforms, then Python's
    // compiler (the corpus has Python 2 prints and cells broken on purpose).
    let dir = TempDir::new("corpus-cells");
    let list = dir.0.join("refused.json");
    std::fs::write(&list, serde_json::to_vec(&refused).unwrap()).unwrap();
    let python = venv_python();
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(
            "import json, sys\n\
             from IPython.core.inputtransformer2 import TransformerManager\n\
             ok = []\n\
             for src in json.load(open(sys.argv[1])):\n\
             \x20   try:\n\
             \x20       compile(TransformerManager().transform_cell(src), '<cell>', 'exec')\n\
             \x20       ok.append(src)\n\
             \x20   except SyntaxError:\n\
             \x20       pass\n\
             json.dump(ok, sys.stdout)",
        )
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runnable: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "corpus: {cells} Python code cells analysed, {} refused (IPython refuses them too)",
        refused.len()
    );
    assert!(
        runnable.is_empty(),
        "IPython runs these, the analysis refuses them:\n{}",
        runnable.join("\n----\n")
    );
}

/// The Python notebooks of the corpus, imported into a live document and run cell by cell in
/// document order through the graph (positional rule, lazy so that each cell runs once): no
/// cell is refused by the graph. Cells may fail on their own (a missing package, no network, a
/// file the notebook expected); that is the notebook's business, not the graph's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_notebooks_of_the_corpus_run_in_order_without_graph_refusals() {
    use doc_protocol::{ClientMessage, Reactivity, ServerEvent};
    use session_token::Role;
    // Short: some cells sleep for long, or wait for input() nobody gives.
    let server = TestServer::start(&["--execution-timeout", "5s"]).await;
    let bearer = format!("Bearer {}", server.token("ada", Role::Editor));
    let mut c = server.client("ada", Role::Editor).await;
    c.send(&ClientMessage::SetReactivity {
        mode: Reactivity::Lazy,
    })
    .await;
    let (mut notebooks, mut ran, mut failed) = (0, 0, 0);
    for path in corpus() {
        let Some(json) = read_json(&path) else {
            continue;
        };
        if json["nbformat"] != 4 || !is_python(&json) {
            continue;
        }
        let (status, reply) = http_send(
            server.addr,
            "PUT",
            "/api/notebook",
            &[("Authorization", &bearer)],
            json.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{}: {reply}", path.display());
        notebooks += 1;
        // The cells as the document holds them (ids a notebook lacked were made by the import).
        let (status, body) =
            http_request(server.addr, "/api/notebook", &[("Authorization", &bearer)]).await;
        assert_eq!(status, 200);
        let exported: Value = serde_json::from_str(&body).unwrap();
        let imported = ipynb::import(&exported, &python_kernel()).unwrap();
        for cell in imported.notebook.cells() {
            if cell.kind != middleman::document::CellKind::Code || cell.source.trim().is_empty() {
                continue;
            }
            let rid = format!("r{ran}");
            c.send(&ClientMessage::ExecuteCell {
                cell_id: cell.id.clone(),
                request_id: Some(rid.clone()),
                stop_on_error: false,
            })
            .await;
            let execution = c
                .until(|e| {
                    matches!(e, ServerEvent::ExecutionQueued { request_id: Some(r), .. } if *r == rid)
                        || matches!(e, ServerEvent::Error { .. })
                })
                .await;
            match execution.last() {
                Some(ServerEvent::ExecutionQueued { execution, .. }) => {
                    let run = c.collect(&execution.id).await;
                    ran += 1;
                    if run.status != Some(doc_protocol::ExecutionStatus::Ok) {
                        failed += 1;
                    }
                }
                other => {
                    // Only a syntax error IPython shares may keep a cell from running.
                    let syntax = middleman::graph::analyse(&cell.source).error.is_some();
                    assert!(
                        syntax,
                        "{}: cell {} refused: {other:?}\n{}",
                        path.display(),
                        cell.id,
                        cell.source
                    );
                }
            }
        }
    }
    eprintln!(
        "corpus: {notebooks} Python notebooks, {ran} code cells run in order, {failed} failed on their own"
    );
    assert!(
        notebooks >= 20 && ran >= 150,
        "{notebooks} notebooks, {ran} cells"
    );
    server.stop().await;
}
