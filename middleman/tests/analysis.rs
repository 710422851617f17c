//! The cell analysis agrees with Python itself: every cell of the corpus (hand-written scoping
//! edge cases and notebook-style code) is analysed by `middleman::graph::analyse` and by
//! `scripts/python/cell_scopes.py` (Python's own `ast` and `symtable`), and the answers must be
//! identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use middleman::graph::analyse;

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cells = Vec::new();
    for file in ["edge_cases.py", "notebooks.py"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for (i, cell) in text.split("# %%\n").skip(1).enumerate() {
            cells.push((
                format!("{file} cell {}", i + 1),
                cell.trim_end_matches('\n').to_owned(),
            ));
        }
    }
    cells
}

#[test]
fn analysis_agrees_with_python_ast_and_symtable_on_the_corpus() {
    let cells = corpus();
    assert!(cells.len() >= 150, "the corpus has {} cells", cells.len());
    let python =
        PathBuf::from(std::env::var("NBP_TOOLS_ENV").expect("NBP_TOOLS_ENV: run `make test`"))
            .join("bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/cell_scopes.py");
    let sources: Vec<&str> = cells.iter().map(|(_, s)| s.as_str()).collect();
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&sources).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python harness failed");
    let expected: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut mismatches = Vec::new();
    for ((name, source), want) in cells.iter().zip(&expected) {
        let got = analyse(source);
        let got = serde_json::json!({
            "defs": got.defs,
            "refs": got.refs,
            "star_import": got.star_import,
            "error": got.error.is_some(),
        });
        if &got != want {
            mismatches.push(format!(
                "{name}:\n{source}\n  python: {want}\n  rust:   {got}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cells disagree:\n\n{}",
        mismatches.len(),
        cells.len(),
        mismatches.join("\n\n")
    );
}
