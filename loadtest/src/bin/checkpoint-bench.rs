//! Kernel checkpoints (docs/checkpoints.md), measured side by side in one run against the same
//! Middleman without them:
//!
//! - the overhead of per-cell checkpoints: a cell that makes `size` bytes of NumPy state, run
//!   again and again; each run's round trip includes the save after the one before (the save
//!   runs before the next cell), with checkpoints on and off;
//! - resume, through Watchman (local backend, warm pods): a document with `size` bytes of
//!   NumPy and pandas state loses its pod (`Release`: SIGTERM, the last save); the time from the
//!   next `Allocate` (a warm pod) to the first result that uses the restored state, against the
//!   same with the state rebuilt by running the cells again (checkpoints off).
//!
//! Prints Markdown tables.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use doc_protocol::{CellKind, ClientMessage, ServerEvent};
use futures_util::SinkExt as _;
use loadtest::{Keys, Middleman, Ws, next_frame, read_cell_run, tempdir};
use tokio_tungstenite::tungstenite::Message;
use watchman_proto::v1 as pb;

#[derive(Parser, Debug)]
struct Args {
    /// Measured runs of the cell per size (overhead).
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// State sizes for the overhead, MiB (fractions allowed).
    #[arg(long, value_delimiter = ',', default_value = "0.001,1,10")]
    overhead_mib: Vec<f64>,
    /// State sizes for resume, MiB (0 skips the resume runs).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    resume_mib: Vec<f64>,
    /// More Middleman flags for the runs with checkpoints on (to compare settings).
    #[arg(long, allow_hyphen_values = true)]
    on_flag: Vec<String>,
    /// The middleman binary.
    #[arg(long, default_value = "target/release/middleman")]
    middleman_bin: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scratch = tempdir("checkpoint-bench")?;
    println!("| state | checkpoints off: p50 / mean ms | on: p50 / mean ms | overhead (mean) |");
    println!("|---|---|---|---|");
    for &mib in &args.overhead_mib {
        let (off, on) = overhead(&args, &scratch, mib).await?;
        println!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:+.1}% |",
            size(mib),
            off.0,
            off.1,
            on.0,
            on.1,
            (on.1 / off.1 - 1.0) * 100.0
        );
    }
    println!();
    println!(
        "| state | resume: Allocate to first result | checkpoint size | re-run instead: Allocate to first result |"
    );
    println!("|---|---|---|---|");
    for &mib in args.resume_mib.iter().filter(|m| **m > 0.0) {
        let (resumed, bytes) = resume(&args, &scratch, mib, true).await?;
        let (rerun, _) = resume(&args, &scratch, mib, false).await?;
        println!(
            "| {} | {:.0} ms | {:.0} MiB | {:.0} ms |",
            size(mib),
            resumed.as_secs_f64() * 1e3,
            bytes as f64 / f64::from(1u32 << 20),
            rerun.as_secs_f64() * 1e3
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn size(mib: f64) -> String {
    if mib < 1.0 {
        format!("{:.0} KiB", mib * 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Float64s for `mib` MiB.
fn floats(mib: f64) -> usize {
    (mib * f64::from(1u32 << 20) / 8.0) as usize
}

async fn insert(ws: &mut Ws, index: u32, source: &str) -> anyhow::Result<String> {
    send(
        ws,
        &ClientMessage::InsertCell {
            index,
            cell_type: CellKind::Code,
            source: source.into(),
            request_id: Some("ins".into()),
        },
    )
    .await?;
    loop {
        if let ServerEvent::CellCreated { cell_id, .. } = next_frame(ws).await?.event {
            return Ok(cell_id);
        }
    }
}

async fn send(ws: &mut Ws, m: &ClientMessage) -> anyhow::Result<()> {
    ws.send(Message::text(serde_json::to_string(m)?)).await?;
    Ok(())
}

async fn run(ws: &mut Ws, cell: &str) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    send(
        ws,
        &ClientMessage::ExecuteCell {
            cell_id: cell.into(),
            request_id: None,
            stop_on_error: true,
        },
    )
    .await?;
    let r = read_cell_run(ws, cell, start).await?;
    Ok((r.at, r.text))
}

fn flags(args: &Args, store: &Path, docs: &Path, checkpoints: bool) -> Vec<String> {
    let mut f = vec![
        "--document-store".to_owned(),
        docs.display().to_string(),
        "--kernel-memory-mib".into(),
        "8192".into(),
        "--shutdown-grace".into(),
        "120s".into(),
        "--save-interval".into(),
        "50ms".into(),
    ];
    if checkpoints {
        f.extend(["--checkpoint-store".to_owned(), store.display().to_string()]);
        f.extend(args.on_flag.iter().cloned());
    }
    f
}

/// (p50, mean) round trip in ms of a cell remaking `mib` of state, with checkpoints off and
/// on: both Middlemen run at once and the cell runs on each in turn, so that whatever else the
/// machine does weighs on both alike.
async fn overhead(
    args: &Args,
    scratch: &Path,
    mib: f64,
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let mut sides = Vec::new();
    for checkpoints in [false, true] {
        let dir = scratch.join(format!("o{}-{}", floats(mib), u8::from(checkpoints)));
        let keys = Keys::generate(&dir.join("keys"))?;
        let flags = flags(args, &dir.join("ckpt"), &dir.join("docs"), checkpoints);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mm = Middleman::start_with(&args.middleman_bin, &dir, &keys, "local", &flags).await?;
        mm.wait_ready().await?;
        let mut ws = mm.connect(&mm.token("ada").await?).await?;
        let cell = insert(
            &mut ws,
            0,
            &format!(
                "import numpy as np\nstate = np.random.default_rng().random({})",
                floats(mib)
            ),
        )
        .await?;
        for _ in 0..5 {
            run(&mut ws, &cell).await?;
        }
        sides.push((mm, ws, cell, Vec::with_capacity(args.iterations)));
    }
    for _ in 0..args.iterations {
        for (_, ws, cell, times) in &mut sides {
            times.push(run(ws, cell).await?.0.as_secs_f64() * 1e3);
        }
    }
    let mut results = Vec::new();
    for (mm, ws, _, mut times) in sides {
        drop(ws);
        mm.stop().await;
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        results.push((times[times.len() / 2], mean));
    }
    Ok((results[0], results[1]))
}

/// A Watchman (in this process: local backend, memory store) with a warm pool of two real
/// Middleman + ipykernel pods, kernel checkpoints kept in `dir/checkpoints` or off.
async fn watchman(
    args: &Args,
    dir: &Path,
    checkpoints: bool,
) -> anyhow::Result<(watchman::Running, loadtest::WatchmanClient)> {
    let store = if checkpoints {
        dir.join("checkpoints").display().to_string()
    } else {
        "none".to_owned()
    };
    loadtest::local_watchman(
        dir,
        "[plans.bench]\nwarm = { ratio = 0.0, min = 2, max = 2 }\n[plans.bench.limits]\nmemory_mib = 8192\nworkspace_mib = 4096\nexecution_timeout = \"10m\"\n",
        &args.middleman_bin,
        "100ms",
        &[
            "--checkpoint-store",
            &store,
            "--shutdown-grace",
            "120s",
            "--delete-pods-on-exit",
        ],
    )
    .await
}

async fn wait_warm(c: &mut loadtest::WatchmanClient) -> anyhow::Result<()> {
    let (within, every) = (Duration::from_secs(120), Duration::from_millis(100));
    loadtest::wait_pool(c, within, every, |p| p.warm >= 2).await
}

async fn allocate(c: &mut loadtest::WatchmanClient, doc: &str) -> anyhow::Result<pb::Allocation> {
    Ok(c.allocate(pb::AllocateRequest {
        document_id: doc.into(),
        plan: "bench".into(),
        user_id: "ada".into(),
        user_name: "Ada".into(),
        ..Default::default()
    })
    .await?
    .into_inner())
}

async fn open(a: &pb::Allocation) -> anyhow::Result<Ws> {
    loadtest::connect(&format!("{}?token={}", a.websocket_url, a.token)).await
}

/// A document with `mib` of NumPy and pandas state loses its pod (`Release`: SIGTERM, the
/// last save), and the next `Allocate` binds a warm pod: the time from that `Allocate` to the
/// first result that uses the state, restored from the checkpoint or (without checkpoints)
/// rebuilt by running the cells again. Also the checkpoint's stored bytes.
async fn resume(
    args: &Args,
    scratch: &Path,
    mib: f64,
    checkpoints: bool,
) -> anyhow::Result<(Duration, u64)> {
    let dir = scratch.join(format!("resume-{mib}-{checkpoints}"));
    let (w, mut c) = watchman(args, &dir, checkpoints).await?;
    wait_warm(&mut c).await?;
    let doc = "bench-doc";
    let first = allocate(&mut c, doc).await?;
    let mut ws = open(&first).await?;
    let half = floats(mib / 2.0);
    let data = insert(
        &mut ws,
        0,
        &format!("import numpy as np\narr = np.random.default_rng(1).random({half})"),
    )
    .await?;
    let frame = insert(
        &mut ws,
        1,
        &format!(
            "import pandas as pd\ndf = pd.DataFrame({{'a': np.random.default_rng(2).random({half})}})"
        ),
    )
    .await?;
    let check = insert(&mut ws, 2, "print(round(float(arr.sum() + df.a.sum())))").await?;
    for cell in [&data, &frame, &check] {
        run(&mut ws, cell).await?;
    }
    let (_, expected) = run(&mut ws, &check).await?;
    drop(ws);
    // Let the document's debounced save land, then the pod goes (its last checkpoint).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.release(pb::ReleaseRequest {
        document_id: doc.into(),
    })
    .await?;
    let manifest = dir
        .join("checkpoints")
        .join(doc.bytes().map(|b| format!("{b:02x}")).collect::<String>())
        .join("manifest.json");
    let deadline = Instant::now() + Duration::from_secs(300);
    // The old pod is gone once its process exits; the checkpoint then names both names.
    while checkpoints
        && !std::fs::read_to_string(&manifest)
            .is_ok_and(|m| m.contains("\"arr\"") && m.contains("\"df\""))
    {
        if Instant::now() > deadline {
            bail!("no checkpoint after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_warm(&mut c).await?;
    let bytes = dir_bytes(&dir.join("checkpoints"));

    let start = Instant::now();
    let second = allocate(&mut c, doc).await?;
    if second.resumes != checkpoints {
        bail!(
            "resumes = {} with checkpoints {checkpoints}",
            second.resumes
        );
    }
    let mut ws = open(&second).await?;
    if !checkpoints {
        for cell in [&data, &frame] {
            run(&mut ws, cell).await?;
        }
    }
    let (_, text) = run(&mut ws, &check).await?;
    let took = start.elapsed();
    if text != expected {
        bail!("resumed state differs: {text:?} != {expected:?}");
    }
    drop(ws);
    let _ = w.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((took, bytes))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
