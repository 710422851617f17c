//! The JavaScript/TypeScript cell analysis agrees with the TypeScript compiler: every cell of
//! `tests/corpus/js/` (one notebook cell per file) is analysed by
//! `middleman::graph::javascript::analyse` (oxc) and by `tests/js_analysis.mjs` (the
//! TypeScript compiler's binder and checker, run by Node), which applies the same rules and the
//! same builtins list (passed from here), and the answers must be identical per file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use middleman::graph::javascript::{BUILTINS, analyse};

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/js");
    let mut cells: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    cells.sort();
    cells
}

/// The TypeScript compiler's answer for each cell, in order.
fn typescript(cells: &[(String, String)]) -> Vec<serde_json::Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js_analysis.mjs");
    let input = serde_json::json!({
        "builtins": BUILTINS,
        "cells": cells.iter().map(|(_, s)| s).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new("node")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node: run `make test` (scripts/bootstrap.sh installs typescript on NODE_PATH)");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the TypeScript harness failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn names(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// What only one side has, as `+name` (oxc only) and `-name` (TypeScript only).
fn diff(ours: &BTreeSet<String>, theirs: &BTreeSet<String>) -> String {
    ours.difference(theirs)
        .map(|n| format!("+{n}"))
        .chain(theirs.difference(ours).map(|n| format!("-{n}")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn analysis_agrees_with_the_typescript_compiler_on_the_corpus() {
    let cells = corpus();
    assert!(cells.len() >= 40, "the corpus has {} cells", cells.len());
    let expected = typescript(&cells);
    assert_eq!(expected.len(), cells.len());
    let mut mismatches = Vec::new();
    for ((name, source), want) in cells.iter().zip(&expected) {
        let got = analyse(source);
        let (want_defs, want_refs) = (names(&want["defs"]), names(&want["refs"]));
        let want_error = want["error"].as_bool().unwrap();
        if got.defs != want_defs || got.refs != want_refs || got.error.is_some() != want_error {
            mismatches.push(format!(
                "{name} (+ oxc only, - TypeScript only):\n  defs: {}\n  refs: {}\n  error: oxc {:?}, TypeScript {want_error}",
                diff(&got.defs, &want_defs),
                diff(&got.refs, &want_refs),
                got.error,
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
    // The corpus exercises both answers: a syntax error, and cells with names on both sides.
    assert!(expected.iter().any(|e| e["error"] == true));
    assert!(
        expected
            .iter()
            .filter(|e| !names(&e["defs"]).is_empty() && !names(&e["refs"]).is_empty())
            .count()
            >= 30
    );
}
