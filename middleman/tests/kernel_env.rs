//! The kernel's environment (docs/kernel-environment.md), through the platform: Middleman starts
//! the real ipykernel of `scripts/kernel-env` (the python3 kernelspec on `JUPYTER_PATH`), which
//! runs the versions `requirements.in` pins, does a small real thing with each package, draws
//! Matplotlib figures inline (PNG by default, SVG when asked), and cannot import the platform's
//! tools; and a kernelspec on `--kernel-path` (where a plan names another environment) wins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use middleman::protocol::{ExecutionStatus, Output};
use session_token::Role;

/// `name==version` of every package `scripts/kernel-env/requirements.in` pins.
fn pinned() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/kernel-env/requirements.in");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split('#').next()?.trim().split_once("=="))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn the_docs_list_the_pinned_versions() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/kernel-environment.md"),
    )
    .unwrap();
    for (name, version) in pinned() {
        assert!(
            docs.contains(&format!("| {name} | {version} |")),
            "docs/kernel-environment.md does not list {name} {version}"
        );
    }
}

/// Runs `code` and fails with its outputs unless it finished `ok`.
async fn run_ok(c: &mut Client, code: &str) -> Run {
    let run = c.run(code).await;
    assert_eq!(run.status, Some(ExecutionStatus::Ok), "{:#?}", run.outputs);
    run
}

/// The display data of `run` with `mime`.
fn displayed<'a>(run: &'a Run, mime: &str) -> Option<&'a serde_json::Value> {
    run.outputs.iter().find_map(|o| match o {
        Output::DisplayData { data, .. } => data.get(mime),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_runs_the_locked_environment_and_every_package_works() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;

    // The kernel is the kernel environment's Python, at the versions the lock pins.
    let pins = pinned();
    assert!(pins.len() >= 9, "{pins:?}");
    let names: Vec<String> = pins.iter().map(|(n, _)| format!("{n:?}")).collect();
    let run = run_ok(
        &mut c,
        &format!(
            "import sys, importlib.metadata as md\nprint('prefix', sys.prefix)\n\
             for name in [{}]:\n    print('version', name, md.version(name))",
            names.join(", ")
        ),
    )
    .await;
    let out = run.stdout();
    let env = std::env::var("NBP_KERNEL_ENV").expect("NBP_KERNEL_ENV: run `make test`");
    assert!(out.contains(&format!("prefix {env}\n")), "{out}");
    for (name, version) in &pins {
        assert!(
            out.contains(&format!("version {name} {version}\n")),
            "{name} is not at {version}:\n{out}"
        );
    }

    // A small real thing with each package.
    let run = run_ok(
        &mut c,
        r#"
import io
import numpy as np, pandas as pd, pyarrow as pa, duckdb, altair as alt
import matplotlib.pyplot as plt
from sklearn.linear_model import LinearRegression
df = pd.DataFrame({"x": np.arange(10, dtype=float), "y": np.arange(10) * 2.0 + 1})
arrow_table = pa.Table.from_pandas(df, preserve_index=False)
print("arrow", arrow_table.num_rows, arrow_table.column_names, arrow_table.schema.field("y").type)
print("duckdb", duckdb.sql("select sum(y) from df where x >= 5").fetchall())
print("duckdb-arrow", duckdb.sql("select count(*), max(y) from arrow_table").fetchall())
model = LinearRegression().fit(df[["x"]], df["y"])
print("sklearn", round(float(model.coef_[0]), 6), round(float(model.intercept_), 6))
spec = alt.Chart(df).mark_line().encode(x="x:Q", y="y:Q").to_dict()
print("altair", spec["mark"]["type"], spec["encoding"]["x"]["field"], spec["$schema"].split("/")[-1])
fig, ax = plt.subplots()
ax.plot(df.x, df.y)
buf = io.BytesIO()
fig.savefig(buf, format="png")
plt.close(fig)
print("savefig", buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n", len(buf.getvalue()) > 1000)
"#,
    )
    .await;
    let out = run.stdout();
    for line in [
        "arrow 10 ['x', 'y'] double\n",
        "duckdb [(75.0,)]\n",
        "duckdb-arrow [(10, 19.0)]\n",
        "sklearn 2.0 1.0\n",
        "savefig True True\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("altair line x v"), "{out}");

    // The platform's tools are not there.
    let run = run_ok(
        &mut c,
        "import importlib, shutil\n\
         for name in ('jupyter_server', 'nbformat'):\n\
         \x20   try:\n\
         \x20       importlib.import_module(name)\n\
         \x20       print(name, 'IMPORTABLE')\n\
         \x20   except ModuleNotFoundError:\n\
         \x20       print(name, 'absent')\n\
         print('hadolint', shutil.which('hadolint'))",
    )
    .await;
    assert_eq!(
        run.stdout(),
        "jupyter_server absent\nnbformat absent\nhadolint None\n"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matplotlib_draws_inline_out_of_the_box_as_png_then_svg() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    // No %matplotlib: ipykernel's default backend is the inline one, and a figure left open at
    // the end of a cell is shown.
    let run = run_ok(
        &mut c,
        "import matplotlib, matplotlib.pyplot as plt\nprint(matplotlib.get_backend())\nplt.plot([1, 2, 3], [1, 4, 9])",
    )
    .await;
    assert_eq!(
        run.stdout(),
        "module://matplotlib_inline.backend_inline\n",
        "{run:?}"
    );
    let png = displayed(&run, "image/png").and_then(|v| v.as_str());
    assert!(png.is_some_and(|p| p.starts_with("iVBORw0KGgo")), "{run:?}");

    let run = run_ok(
        &mut c,
        "%config InlineBackend.figure_formats = ['svg']\nplt.plot([1, 2, 3])\nplt.show()",
    )
    .await;
    let svg = displayed(&run, "image/svg+xml").and_then(|v| v.as_str());
    assert!(svg.is_some_and(|s| s.contains("<svg")), "{run:?}");
    assert!(displayed(&run, "image/png").is_none(), "{run:?}");
    server.stop().await;
}

/// A plan that names another environment hands Middleman `--kernel-path` (watchman's
/// `Plan::kernel_args`): a kernelspec there wins over the one on `JUPYTER_PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernelspec_on_the_kernel_path_wins_over_jupyter_path() {
    require_kernel();
    let env = std::env::var("NBP_KERNEL_ENV").expect("NBP_KERNEL_ENV: run `make test`");
    let own = std::path::Path::new(&env).join("share/jupyter/kernels/python3/kernel.json");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(own).unwrap()).unwrap();
    spec["env"] = serde_json::json!({"NBP_KERNELSPEC": "from the kernel path"});
    let other = TempDir::new("kernel-path");
    let dir = other.0.join("kernels/python3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kernel.json"), spec.to_string()).unwrap();

    let server = TestServer::start(&["--kernel-path", &other.0.display().to_string()]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let run = run_ok(&mut c, "import os\nprint(os.environ.get('NBP_KERNELSPEC'))").await;
    assert_eq!(run.stdout(), "from the kernel path\n");
    server.stop().await;
}
