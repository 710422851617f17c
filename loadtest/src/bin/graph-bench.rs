//! Re-analysing one edited cell and rebuilding the dependency graph of a 500-cell notebook:
//! Middleman's analysis (Ruff's parser) and graph, against marimo's own compiler and graph on
//! the same notebook, side by side in one run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use middleman::graph::{CellAnalysis, Graph, GraphRule, analyse};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 500)]
    cells: usize,
    #[arg(long, default_value_t = 400)]
    iterations: usize,
    /// The Python with marimo installed (`make bench` prepares it).
    #[arg(long, default_value = "~/.cache/nbplat/bench-venv/bin/python")]
    marimo_python: String,
    /// The graph rule Middleman uses: positional (documents' default) or strict (marimo's).
    #[arg(long, default_value = "positional", value_parser = parse_rule)]
    rule: GraphRule,
}

fn parse_rule(s: &str) -> Result<GraphRule, String> {
    match s {
        "positional" => Ok(GraphRule::Positional),
        "strict" => Ok(GraphRule::Strict),
        _ => Err(format!("unknown rule {s:?} (positional or strict)")),
    }
}

/// A notebook of `n` cells that looks like analysis code: imports, helpers, a long chain of
/// derived values with fan-in, some classes and comprehensions.
fn notebook(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let p = i.saturating_sub(1);
            let q = i.saturating_sub(7);
            if i == 0 {
                "import math\nimport statistics as stats\nfrom collections import Counter".into()
            } else if i == 1 {
                "v1 = 1".into()
            } else if i % 25 == 0 {
                format!(
                    "def helper_{i}(values, scale=v{p}):\n    out = []\n    for v in values:\n        out.append(math.sqrt(abs(v)) * scale)\n    return out\nv{i} = sum(helper_{i}([1, 2, 3]))"
                )
            } else if i % 40 == 0 {
                format!(
                    "class Model{i}:\n    factor = v{p}\n    def predict(self, x):\n        return x * self.factor + v{q}\nv{i} = Model{i}().predict(2)"
                )
            } else {
                let extra = if q > 1 { format!(" + v{q}") } else { String::new() };
                format!(
                    "v{i} = [x * 2 for x in range(3)][0] + v{p}{extra}\nlabel_{i} = f\"{{v{i}:.2f}}\"\nif v{i} > 100:\n    print(label_{i}, stats.mean([v{i}, 1]))"
                )
            }
        })
        .collect()
}

fn pct(mut s: Vec<Duration>, p: f64) -> f64 {
    s.sort();
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i].as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cells = notebook(args.cells);
    let k = args.cells / 2;
    let versions = [
        cells[k].clone(),
        cells[k].replacen(" * 2 ", " * 3 ", 1) + "\nextra_name = 1",
    ];
    // Middleman: analyses are cached per cell; an edit re-analyses one cell and rebuilds.
    let ids: Vec<String> = (0..cells.len()).map(|i| format!("c{i}")).collect();
    let mut analyses: Vec<CellAnalysis> = cells.iter().map(|c| analyse(c)).collect();
    let edges: usize = {
        let g = build(&ids, &analyses, args.rule);
        g.cells().iter().map(|c| c.parents.len()).sum()
    };
    let t = Instant::now();
    for n in 0..args.iterations {
        std::hint::black_box(analyse(&versions[n % 2]));
    }
    let analysis_only = t.elapsed() / args.iterations as u32;
    let mut rust = Vec::with_capacity(args.iterations);
    let mut graph = build(&ids, &analyses, args.rule);
    for n in 0..args.iterations {
        let t = Instant::now();
        analyses[k] = analyse(&versions[n % 2]);
        let cells: Vec<(&str, &CellAnalysis)> = ids
            .iter()
            .map(String::as_str)
            .zip(analyses.iter())
            .collect();
        let edited = ids[k].as_str();
        let (g, changed) = Graph::rebuild(
            std::mem::take(&mut graph),
            &cells,
            |id| id == edited,
            args.rule,
        );
        graph = g;
        std::hint::black_box(changed);
        rust.push(t.elapsed());
    }
    // marimo, on the same cells and edits.
    let dir = std::env::temp_dir().join(format!("graph-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cells.json"), serde_json::to_vec(&cells)?)?;
    std::fs::write(dir.join("edits.json"), serde_json::to_vec(&(k, &versions))?)?;
    let python = args
        .marimo_python
        .replacen('~', &std::env::var("HOME").unwrap_or_default(), 1);
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/marimo_graph_bench.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(dir.join("cells.json"))
        .arg(dir.join("edits.json"))
        .arg(args.iterations.to_string())
        .output()
        .with_context(|| format!("running {python}"))?;
    anyhow::ensure!(
        out.status.success(),
        "marimo bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marimo: Vec<f64> = serde_json::from_slice(&out.stdout)?;
    let marimo: Vec<Duration> = marimo.into_iter().map(Duration::from_secs_f64).collect();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "One edit in a {}-cell notebook ({edges} edges): re-analyse the cell and update the graph; {} edits, one run.\n",
        args.cells, args.iterations
    );
    println!("| system | p50 ms | p90 ms | p99 ms |");
    println!("|---|---|---|---|");
    let (r50, m50) = (pct(rust.clone(), 0.5), pct(marimo.clone(), 0.5));
    println!(
        "| Middleman (Ruff parser, graph rebuilt, {:?} rule) | {r50:.3} | {:.3} | {:.3} |",
        args.rule,
        pct(rust.clone(), 0.9),
        pct(rust, 0.99)
    );
    println!(
        "| marimo 0.25.2 (compile_cell, delete + register) | {m50:.3} | {:.3} | {:.3} |",
        pct(marimo.clone(), 0.9),
        pct(marimo, 0.99)
    );
    println!("\nRatio: marimo p50 / Middleman p50 = {:.1}", m50 / r50);
    println!(
        "(of Middleman's time, analysing the edited cell alone: {:.3} ms mean)",
        analysis_only.as_secs_f64() * 1000.0
    );
    let (total, runs) = run_all(&graph, &ids);
    println!(
        "\n\"Run all\" planned by the reactor over the {} cells (plan, then {runs} runs decided one finish at a time, merged with autorun): {:.1} ms in all, {:.1} µs a cell",
        args.cells,
        total.as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1e6 / runs.max(1) as f64
    );
    Ok(())
}

/// Plays "Run all" through the reactor as the hub does (a decided run is queued, then finishes
/// well): its decisions alone, without a kernel. Returns the time and the runs decided.
fn run_all(graph: &Graph, ids: &[String]) -> (Duration, usize) {
    use middleman::graph::reactor::{Decision, Document, Event, Reactor};
    use middleman::protocol::{CellRuntime, CellState, ExecutionStatus, Reactivity};
    let mut cells: std::collections::HashMap<String, CellRuntime> = ids
        .iter()
        .map(|id| (id.clone(), CellRuntime::default()))
        .collect();
    let mut reactor = Reactor::default();
    let mut runs = 0;
    let t = Instant::now();
    let next = |cells: &std::collections::HashMap<String, CellRuntime>,
                reactor: &mut Reactor,
                event: Event<'_>| {
        let doc = Document {
            graph,
            cells,
            mode: Reactivity::Autorun,
        };
        reactor
            .decide(&doc, event)
            .into_iter()
            .find_map(|d| match d {
                Decision::Run { cell, .. } => Some(cell),
                _ => None,
            })
    };
    let mut running = next(&cells, &mut reactor, Event::RunAll);
    while let Some(cell) = running {
        runs += 1;
        if let Some(r) = cells.get_mut(&cell) {
            r.state = CellState::Idle;
        }
        running = next(
            &cells,
            &mut reactor,
            Event::Finished {
                cell: &cell,
                status: ExecutionStatus::Ok,
            },
        );
    }
    (t.elapsed(), runs)
}

fn build(ids: &[String], analyses: &[CellAnalysis], rule: GraphRule) -> Graph {
    let cells: Vec<(&str, &CellAnalysis)> = ids
        .iter()
        .map(String::as_str)
        .zip(analyses.iter())
        .collect();
    Graph::build(&cells, rule)
}
