//! Data work with a real kernel: SQL cells over DataFrames and workspace files in the reactive
//! graph, table outputs paged and sorted in the kernel, completion and inspection answered while
//! a cell runs (ipykernel 7's subshell), their limits, and SQL cells through `.ipynb` and
//! nbformat's validator, run back in a stock kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Client, TestServer, venv_python};
use doc_protocol::{
    AssistAnswer, AssistRefusal, CellKind, ClientMessage, Output, ServerEvent, TABLE_MIME,
    TableOutput, TableSort,
};
use serde_json::Value;
use session_token::Role;

/// Inserts a cell of `kind` and returns its id.
async fn insert(c: &mut Client, index: u32, kind: CellKind, source: &str) -> String {
    c.send(&ClientMessage::InsertCell {
        index,
        cell_type: kind,
        source: source.into(),
        request_id: Some(format!("ins-{index}")),
    })
    .await;
    let events = c
        .until(|e| {
            matches!(
                e,
                ServerEvent::CellCreated { .. } | ServerEvent::Error { .. }
            )
        })
        .await;
    match events.last() {
        Some(ServerEvent::CellCreated { cell_id, .. }) => cell_id.clone(),
        other => panic!("insert refused: {other:?}"),
    }
}

/// Asks a side question and waits for its answer.
async fn ask(c: &mut Client, message: ClientMessage) -> AssistAnswer {
    let id = match &message {
        ClientMessage::Complete { request_id, .. }
        | ClientMessage::Inspect { request_id, .. }
        | ClientMessage::TablePage { request_id, .. } => request_id.clone(),
        other => panic!("not a question: {other:?}"),
    };
    c.send(&message).await;
    let events = c
        .until(|e| matches!(e, ServerEvent::Assist { request_id, .. } if *request_id == id))
        .await;
    match events.last() {
        Some(ServerEvent::Assist { answer, .. }) => answer.clone(),
        _ => unreachable!(),
    }
}

fn complete(id: &str, code: &str) -> ClientMessage {
    ClientMessage::Complete {
        request_id: id.into(),
        cell_id: None,
        code: code.into(),
        cursor: code.encode_utf16().count() as u32,
    }
}

fn page(id: &str, table: &str, offset: u64, limit: u32, sort: Option<TableSort>) -> ClientMessage {
    ClientMessage::TablePage {
        request_id: id.into(),
        table: table.into(),
        offset,
        limit,
        sort,
    }
}

/// The table output among `outputs`.
fn table_of(outputs: &[Output]) -> TableOutput {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::ExecuteResult { data, .. } | Output::DisplayData { data, .. } => data
                .get(TABLE_MIME)
                .map(|t| serde_json::from_value(t.clone()).unwrap()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no table output in {outputs:?}"))
}

/// Waits until cell `cell`'s next run ends, and returns what it printed; `earlier` are events
/// already read.
async fn printed_by(c: &mut Client, cell: &str, earlier: Vec<ServerEvent>) -> String {
    let mut execution = None;
    let mut text = String::new();
    let mut earlier = earlier.into_iter();
    loop {
        let event = match earlier.next() {
            Some(e) => e,
            None => c.next().await.event,
        };
        match event {
            ServerEvent::ExecutionQueued { execution: e, .. }
                if e.cell_id.as_deref() == Some(cell) =>
            {
                execution = Some(e.id);
            }
            ServerEvent::Output {
                execution_id,
                output: Output::Stream { text: t, .. },
            } if Some(&execution_id) == execution.as_ref() => text.push_str(&t),
            ServerEvent::Output {
                execution_id,
                output: Output::Error { ename, evalue, .. },
            } if Some(&execution_id) == execution.as_ref() => {
                panic!("cell {cell} failed: {ename}: {evalue}")
            }
            ServerEvent::ExecutionFinished { execution_id, .. }
                if Some(&execution_id) == execution.as_ref() =>
            {
                return text;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cells_read_frames_and_files_and_feed_python_cells_reactively() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let first = c.first_cell();
    c.set_source(
        &first,
        "import pandas as pd\n\
         pd.DataFrame({'region': ['n', 's', 'n'], 'amount': [1, 2, 3]}).to_csv('sales.csv', index=False)\n\
         rates = pd.DataFrame({'region': ['n', 's'], 'rate': [10, 100]})",
    )
    .await;
    let sql = insert(
        &mut c,
        1,
        CellKind::Sql,
        "-- result: totals\n\
         SELECT s.region, sum(s.amount) * any_value(r.rate) AS total\n\
         FROM 'sales.csv' s JOIN rates r USING (region)\n\
         GROUP BY s.region ORDER BY s.region",
    )
    .await;
    let user = insert(&mut c, 2, CellKind::Code, "print(totals.to_dict('list'))").await;
    // The graph learned the SQL cell's reads and definitions from its parser.
    let graph = c
        .until(|e| matches!(e, ServerEvent::Graph { cells } if cells.len() == 3 && cells.iter().any(|g| g.id == user && !g.parents.is_empty())))
        .await;
    let Some(ServerEvent::Graph { cells }) = graph.last() else {
        unreachable!()
    };
    let node = cells.iter().find(|g| g.id == sql).unwrap();
    assert_eq!(node.defs, vec!["totals".to_owned()]);
    assert_eq!(node.refs, vec!["rates".to_owned()]);
    assert_eq!(node.parents, vec![first.clone()]);
    assert_eq!(
        cells.iter().find(|g| g.id == user).unwrap().parents,
        vec![sql.clone()]
    );

    c.send(&ClientMessage::RunAll { request_id: None }).await;
    assert_eq!(
        printed_by(&mut c, &user, Vec::new()).await,
        "{'region': ['n', 's'], 'total': [40.0, 200.0]}\n"
    );

    // Edit the query and run it: the Python cell that reads its result runs again by itself.
    c.set_source(
        &sql,
        "-- result: totals\n\
         SELECT s.region, sum(s.amount) * any_value(r.rate) AS total\n\
         FROM 'sales.csv' s JOIN rates r USING (region)\n\
         WHERE s.amount > 1 GROUP BY s.region ORDER BY s.region",
    )
    .await;
    let run = c.submit_cell(&sql).await;
    let result = c.collect(&run).await;
    assert_eq!(table_of(&result.outputs).row_count, 2);
    assert_eq!(
        printed_by(&mut c, &user, result.events).await,
        "{'region': ['n', 's'], 'total': [30.0, 200.0]}\n"
    );

    // A failing query says what DuckDB said, and blocks the cell that reads its result.
    c.set_source(&sql, "-- result: totals\nSELECT * FROM no_such_table")
        .await;
    let run = c.submit_cell(&sql).await;
    let failed = c.collect(&run).await;
    let error = failed
        .outputs
        .iter()
        .find_map(|o| match o {
            Output::Error { ename, evalue, .. } => Some(format!("{ename}: {evalue}")),
            _ => None,
        })
        .expect("an error output");
    assert!(
        error.starts_with("SQLError") && error.contains("no_such_table"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_page_and_completion_answers_while_a_cell_runs() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    let shown = c
        .run(
            "import pandas as pd\n\
             df = pd.DataFrame({'a': range(1_000_000), 'b': [i % 7 for i in range(1_000_000)]})\n\
             df",
        )
        .await;
    let table = table_of(&shown.outputs);
    assert_eq!(table.row_count, 1_000_000);
    assert_eq!(table.rows.len(), 50);
    assert_eq!(
        table
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.dtype.as_str()))
            .collect::<Vec<_>>(),
        [("a", "int64"), ("b", "int64")]
    );
    assert!(table.index.is_empty(), "a plain range index is not shown");
    // Other clients get pandas' own (truncated) HTML beside it.
    assert!(shown.outputs.iter().any(
        |o| matches!(o, Output::ExecuteResult { data, .. } if data.contains_key("text/html"))
    ));

    // A long cell runs; questions are answered beside it.
    let sleeper = c.submit("import time\ntime.sleep(60)").await;
    c.until(
        |e| matches!(e, ServerEvent::ExecutionStarted { execution_id } if *execution_id == sleeper),
    )
    .await;
    let last = ask(&mut c, page("p1", &table.table, 999_998, 5, None)).await;
    let AssistAnswer::TablePage {
        rows, row_count, ..
    } = last
    else {
        panic!("no page: {last:?}")
    };
    assert_eq!(row_count, 1_000_000);
    assert_eq!(
        rows,
        vec![
            vec![Value::from(999_998), Value::from(999_998 % 7)],
            vec![Value::from(999_999), Value::from(999_999 % 7)]
        ]
    );
    let sorted = ask(
        &mut c,
        page(
            "p2",
            &table.table,
            0,
            2,
            Some(TableSort {
                column: "a".into(),
                descending: true,
            }),
        ),
    )
    .await;
    assert!(
        matches!(&sorted, AssistAnswer::TablePage { rows, .. } if rows[0][0] == 999_999 && rows[1][0] == 999_998),
        "{sorted:?}"
    );
    let columns = ask(&mut c, complete("c1", "df['")).await;
    let AssistAnswer::Complete { matches, .. } = &columns else {
        panic!("no completion: {columns:?}")
    };
    assert!(
        matches.iter().any(|m| m.text.trim_matches('\'') == "a"),
        "{matches:?}"
    );
    let doc = ask(
        &mut c,
        ClientMessage::Inspect {
            request_id: "i1".into(),
            cell_id: None,
            code: "len".into(),
            cursor: 3,
            detail: 0,
        },
    )
    .await;
    assert!(
        matches!(&doc, AssistAnswer::Inspect { found: true, text } if text.contains("number of items")),
        "{doc:?}"
    );

    // A flood is refused, not queued: every question gets exactly one answer.
    for i in 0..40 {
        c.send(&complete(&format!("f{i}"), "pd.read_")).await;
    }
    let mut answered = std::collections::HashSet::new();
    let mut limited = 0;
    while answered.len() < 40 {
        if let ServerEvent::Assist { request_id, answer } = c.next().await.event {
            assert!(answered.insert(request_id), "answered twice");
            if matches!(
                answer,
                AssistAnswer::Refused {
                    reason: AssistRefusal::RateLimited,
                    ..
                }
            ) {
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "40 questions at once were all answered");

    // A viewer pages tables but does not complete.
    let mut viewer = server.client("vic", Role::Viewer).await;
    assert!(matches!(
        ask(&mut viewer, page("v1", &table.table, 10, 1, None)).await,
        AssistAnswer::TablePage { .. }
    ));
    assert!(matches!(
        ask(&mut viewer, complete("v2", "d")).await,
        AssistAnswer::Refused {
            reason: AssistRefusal::Forbidden,
            ..
        }
    ));

    // After a restart the table is gone from the kernel, and the page says so.
    c.restart().await;
    assert!(matches!(
        ask(&mut c, page("p3", &table.table, 0, 5, None)).await,
        AssistAnswer::Refused {
            reason: AssistRefusal::Gone,
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_cells_complete_names_in_scope_and_their_columns() {
    let server = TestServer::start(&[]).await;
    let mut c = server.client("ada", Role::Editor).await;
    c.run("import pandas as pd\nsales = pd.DataFrame({'region': ['n'], 'amount': [1]})")
        .await;
    let sql = insert(&mut c, 1, CellKind::Sql, "").await;
    let code = "SELECT reg FROM sales WHERE sa";
    let at = |cursor: usize| ClientMessage::Complete {
        request_id: format!("s{cursor}"),
        cell_id: Some(sql.clone()),
        code: code.into(),
        cursor: cursor as u32,
    };
    let names = ask(&mut c, at(code.len())).await;
    assert!(
        matches!(&names, AssistAnswer::Complete { matches, cursor_start, .. } if *cursor_start == (code.len() - 2) as u32 && matches.iter().any(|m| m.text == "sales" && m.kind.as_deref() == Some("table"))),
        "{names:?}"
    );
    let column = ask(&mut c, at("SELECT reg".len())).await;
    assert!(
        matches!(&column, AssistAnswer::Complete { matches, .. } if matches.iter().any(|m| m.text == "region" && m.kind.as_deref() == Some("column"))),
        "{column:?}"
    );
    server.stop().await;
}

#[test]
fn sql_cells_survive_ipynb_the_validator_and_run_in_a_stock_kernel() {
    use middleman::document::{Notebook, ipynb};
    use middleman::protocol::KernelDescription;
    let kernel = KernelDescription {
        name: "python3".into(),
        display_name: "Python 3".into(),
        language: "python".into(),
    };
    let mut nb = Notebook::new();
    let first = nb.cells()[0].id.clone();
    nb.set_source(
        &first,
        "import pandas as pd\nframe = pd.DataFrame({'x': [1, 2, 3]})",
    )
    .unwrap();
    let query = "-- result: doubled\nSELECT x * 2 AS y FROM frame WHERE x > 1 -- \"quoted\"\n";
    let sql = nb.insert_cell(1, CellKind::Sql, query).unwrap();
    nb.insert_cell(2, CellKind::Code, "print(list(doubled['y']))")
        .unwrap();
    let exported = ipynb::export(&nb, &kernel);
    let dir = testkit::TempDir::new("sql-ipynb");
    let path = dir.0.join("sql.ipynb");
    std::fs::write(&path, serde_json::to_vec_pretty(&exported).unwrap()).unwrap();

    // nbformat validates it, and a stock ipykernel (no platform helper) runs every cell.
    let script = r#"
import sys, nbformat
from jupyter_client.manager import start_new_kernel
nb = nbformat.read(sys.argv[1], as_version=4)
nbformat.validate(nb)
km, kc = start_new_kernel(kernel_name="python3")
try:
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        reply = kc.execute_interactive(cell.source, timeout=60, output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
    print("".join(out).strip())
finally:
    km.shutdown_kernel(now=True)
"#;
    let run = std::process::Command::new(venv_python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "[4, 6]");

    // Imported back, the SQL cell is a SQL cell again, with its source.
    let back = ipynb::import(&exported, &kernel).unwrap().notebook;
    let cells = back.cells();
    assert_eq!(cells[1].id, sql);
    assert_eq!(cells[1].kind, CellKind::Sql);
    assert_eq!(cells[1].source, query);
    // Its code edited in another tool, it stays the code that was written.
    let mut edited = exported.clone();
    edited["cells"][1]["source"] = Value::from("import duckdb\ndoubled = None");
    let imported = ipynb::import(&edited, &kernel).unwrap();
    assert_eq!(imported.notebook.cells()[1].kind, CellKind::Code);
    assert!(imported.changes.iter().any(|c| c.contains("SQL cell")));
    assert_eq!(
        ipynb::export(&imported.notebook, &kernel)["cells"][1]["metadata"],
        serde_json::json!({})
    );
}
