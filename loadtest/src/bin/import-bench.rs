//! Importing big notebooks: `.ipynb` JSON of 500, 5,000 and 20,000 cells (code with outputs,
//! markdown with metadata) through Middleman's import, the document replacement a `PUT
//! /api/notebook` does, and the export; with nbformat's own reader (`nbformat.reads`) on the
//! same files as the anchor, side by side in one run. Then end to end against a Middleman
//! process: `PUT /api/notebook` of each size, and how long a joining client waits for its
//! welcome (and how big it is) in a small document and in one with 20 MB of outputs.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use doc_protocol::KernelDescription;
use middleman::document::{Notebook, ipynb};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// Cell counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "500,5000,20000")]
    cells: Vec<usize>,
    /// Runs of each size (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The Python with nbformat (the tools' environment, `make test` prepares it).
    #[arg(long, default_value = "~/.cache/nbplat/tools-env/bin/python")]
    python: String,
    /// The Middleman binary for the end-to-end part.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: std::path::PathBuf,
}

/// A notebook of `n` cells: two thirds code with a stream and a result, a third markdown with
/// tags; a realistic mix of sizes (about 400 bytes a cell).
fn notebook(n: usize) -> Value {
    let cells: Vec<Value> = (0..n)
        .map(|i| {
            if i % 3 == 2 {
                json!({"id": format!("m{i}"), "cell_type": "markdown", "metadata": {"tags": ["notes"]},
                       "source": format!("## Section {i}\n\nSome prose about step {i}, with `code` and a [link](https://example.org/{i}).")})
            } else {
                json!({"id": format!("c{i}"), "cell_type": "code", "metadata": {}, "execution_count": i,
                       "source": format!("df_{i} = df_{p}.assign(col_{i}=lambda d: d.a * {i})\nprint(len(df_{i}))\ndf_{i}.head()", p = i.saturating_sub(1)),
                       "outputs": [
                           {"output_type": "stream", "name": "stdout", "text": format!("{i}\n")},
                           {"output_type": "execute_result", "execution_count": i, "metadata": {},
                            "data": {"text/plain": format!("   a  col_{i}\n0  1  {i}\n1  2  {}", i * 2)}}
                       ]})
            }
        })
        .collect();
    json!({"nbformat": 4, "nbformat_minor": 5,
           "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
           "cells": cells})
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kernel = KernelDescription {
        name: "python3".into(),
        display_name: "Python 3".into(),
        language: "python".into(),
    };
    let python = args
        .python
        .replacen('~', &std::env::var("HOME").unwrap_or_default(), 1);
    let dir = std::env::temp_dir().join(format!("import-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "Import of generated notebooks (median of {} runs, ms): parse + import, replace the document, export; nbformat.reads on the same bytes.\n",
        args.runs
    );
    println!(
        "| cells | bytes | Middleman parse + import | replace document | export | nbformat.reads | nbformat / Middleman import |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.cells {
        let bytes = serde_json::to_vec(&notebook(n))?;
        let (mut import, mut replace, mut export) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            let t = Instant::now();
            let json: Value = serde_json::from_slice(&bytes)?;
            let imported = ipynb::import(&json, &kernel)?;
            import.push(t.elapsed());
            let mut doc = Notebook::new();
            let t = Instant::now();
            doc.replace_all(&imported.notebook);
            replace.push(t.elapsed());
            let t = Instant::now();
            std::hint::black_box(serde_json::to_vec(&ipynb::export(&doc, &kernel))?);
            export.push(t.elapsed());
            anyhow::ensure!(
                doc.len() as usize == n,
                "imported {} cells of {n}",
                doc.len()
            );
        }
        let path = dir.join(format!("{n}.ipynb"));
        std::fs::write(&path, &bytes)?;
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(
                "import sys, time, nbformat\n\
                 data = open(sys.argv[1]).read()\n\
                 times = []\n\
                 for _ in range(int(sys.argv[2])):\n\
                 \x20   t = time.perf_counter(); nbformat.reads(data, as_version=4); times.append(time.perf_counter() - t)\n\
                 print(sorted(times)[len(times) // 2] * 1000)",
            )
            .arg(&path)
            .arg(args.runs.to_string())
            .output()
            .with_context(|| format!("running {python}"))?;
        anyhow::ensure!(
            out.status.success(),
            "nbformat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let anchor: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let ours = median(import);
        println!(
            "| {n} | {} | {ours:.1} | {:.1} | {:.1} | {anchor:.1} | {:.1} |",
            bytes.len(),
            median(replace),
            median(export),
            anchor / ours
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    end_to_end(&args).await
}

/// A notebook of `cells` code cells whose outputs total about `output_bytes`.
fn with_outputs(cells: usize, output_bytes: usize) -> Value {
    let mut nb = notebook(cells);
    let code = nb["cells"]
        .as_array()
        .map_or(1, |c| c.iter().filter(|c| c["cell_type"] == "code").count())
        .max(1);
    let each = output_bytes / code;
    if let Some(cells) = nb["cells"].as_array_mut() {
        for c in cells.iter_mut().filter(|c| c["cell_type"] == "code") {
            c["outputs"][0]["text"] = Value::String("y".repeat(each));
        }
    }
    nb
}

async fn put(addr: &str, token: &str, body: &[u8]) -> anyhow::Result<(u16, Duration)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "PUT /api/notebook HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    let text = String::from_utf8_lossy(&reply);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, t.elapsed()))
}

/// Connects a client and reads its welcome: (time, bytes).
async fn welcome(mm: &loadtest::Middleman, token: &str) -> anyhow::Result<(Duration, usize)> {
    use futures_util::StreamExt as _;
    let t = Instant::now();
    let mut ws = mm.connect(token).await?;
    loop {
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                return Ok((t.elapsed(), text.len()));
            }
            Some(Ok(_)) => {}
            other => anyhow::bail!("no welcome: {other:?}"),
        }
    }
}

/// A Middleman process that takes notebooks of up to 128 MiB.
async fn start(args: &Args, scratch: &std::path::Path) -> anyhow::Result<loadtest::Middleman> {
    loadtest::Middleman::start(
        &args.middleman_bin,
        scratch,
        &[
            "--max-import-bytes",
            "134217728",
            "--max-document-bytes",
            "134217728",
        ],
    )
    .await
}

async fn end_to_end(args: &Args) -> anyhow::Result<()> {
    let scratch = loadtest::tempdir("import-bench")?;
    let mm = start(args, &scratch).await?;
    let token = mm.token("bench").await?;
    println!(
        "\nEnd to end against a Middleman process (median of {} runs, ms):\n",
        args.runs
    );
    println!("| cells | PUT /api/notebook |");
    println!("|---|---|");
    for &n in &args.cells {
        let body = serde_json::to_vec(&notebook(n))?;
        let mut times = Vec::new();
        for _ in 0..args.runs {
            let (status, took) = put(&mm.addr, &token, &body).await?;
            anyhow::ensure!(status == 200, "PUT of {n} cells answered {status}");
            times.push(took);
        }
        println!("| {n} | {:.1} |", median(times));
    }
    mm.stop().await;
    // A fresh process for the welcomes: the imports above leave the kernel a queued execution
    // that forgets the replaced cells' names, which a welcome would carry.
    let fresh = scratch.join("fresh");
    std::fs::create_dir_all(&fresh)?;
    let mm = start(args, &fresh).await?;
    let token = mm.token("bench").await?;
    println!("\n| document | outputs | welcome bytes | time to welcome |");
    println!("|---|---|---|---|");
    for (label, nb) in [
        ("small (50 cells)", with_outputs(50, 50 * 100)),
        (
            "20 MB of outputs (50 cells)",
            with_outputs(50, 20 * 1024 * 1024),
        ),
    ] {
        let body = serde_json::to_vec(&nb)?;
        let (status, _) = put(&mm.addr, &token, &body).await?;
        anyhow::ensure!(status == 200, "PUT answered {status}");
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..args.runs {
            let (took, size) = welcome(&mm, &token).await?;
            times.push(took);
            bytes = size;
        }
        println!(
            "| {label} | {} | {bytes} | {:.1} |",
            body.len(),
            median(times)
        );
    }
    mm.stop().await;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
