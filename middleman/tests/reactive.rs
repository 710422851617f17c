//! The reactive graph with a real kernel: autorun, lazy mode, duplicate definitions, cycles,
//! upstream errors, disabled and deleted cells, interrupts, seen the same way by every
//! collaborator.
//!
//! What must *not* happen (a cell that should not run) is checked after a console execution
//! queued behind everything the hub had decided by then: the kernel runs in order, so a wrong
//! run would have started (and shown in the view, or in the kernel's names) before the check
//! finished, however late it came.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{Client, TestServer};
use doc_protocol::{
    CellState, ClientMessage, ErrorCode, ExecutionStatus, GraphCell, GraphError, GraphRule, Output,
    Reactivity, RunRecord, ServerEvent, StateCause,
};
use session_token::Role;

/// A collaborator's view of the cells, kept from the events.
#[derive(Default)]
struct View {
    state: HashMap<String, CellState>,
    stdout: HashMap<String, String>,
    exec_cell: HashMap<String, String>,
    started: Vec<String>,
    finished: HashMap<String, ExecutionStatus>,
    graph: Vec<GraphCell>,
    checks: u64,
    cause: HashMap<String, StateCause>,
    last_run: HashMap<String, RunRecord>,
    kernel_session: Option<String>,
    /// The request ids `run_finished` named, in order.
    runs_finished: Vec<String>,
}

impl View {
    fn apply(&mut self, e: &ServerEvent) {
        match e {
            ServerEvent::ExecutionQueued { execution, .. } => {
                if let Some(c) = &execution.cell_id {
                    self.exec_cell.insert(execution.id.clone(), c.clone());
                }
            }
            ServerEvent::ExecutionStarted { execution_id } => {
                if let Some(c) = self.exec_cell.get(execution_id) {
                    self.started.push(c.clone());
                }
            }
            ServerEvent::OutputsCleared { cell_id } => {
                self.stdout.remove(cell_id);
            }
            ServerEvent::Output {
                execution_id,
                output: Output::Stream { text, .. },
            } => {
                if let Some(c) = self.exec_cell.get(execution_id) {
                    self.stdout.entry(c.clone()).or_default().push_str(text);
                }
            }
            ServerEvent::CellState {
                cell_id,
                state,
                cause,
                last_run,
                ..
            } => {
                self.state.insert(cell_id.clone(), *state);
                match cause {
                    Some(c) => self.cause.insert(cell_id.clone(), c.clone()),
                    None => self.cause.remove(cell_id),
                };
                if let Some(r) = last_run {
                    self.last_run.insert(cell_id.clone(), r.clone());
                }
            }
            ServerEvent::KernelStatus {
                kernel_session: Some(s),
                ..
            } => self.kernel_session = Some(s.clone()),
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                ..
            } => {
                if let Some(c) = self.exec_cell.get(execution_id) {
                    self.finished.insert(c.clone(), *status);
                }
            }
            ServerEvent::Graph { cells } => self.graph = cells.clone(),
            ServerEvent::RunFinished { request_id } => self.runs_finished.push(request_id.clone()),
            _ => {}
        }
    }

    /// Reads until `done` holds (for at most two minutes).
    async fn until(&mut self, c: &mut Client, done: impl Fn(&View) -> bool) {
        tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while !done(self) {
                let e = c.next().await.event;
                self.apply(&e);
            }
        })
        .await
        .expect("the document never reached the expected state");
    }

    /// Runs `code` outside the document, after everything queued so far, and returns what it
    /// printed (the view keeps following the events meanwhile).
    async fn console(&mut self, c: &mut Client, code: &str) -> String {
        self.checks += 1;
        let rid = format!("check-{}", self.checks);
        c.send(&ClientMessage::Execute {
            code: code.into(),
            request_id: Some(rid.clone()),
            stop_on_error: false,
        })
        .await;
        let mut id = None;
        let mut out = String::new();
        loop {
            let e = c.next().await.event;
            self.apply(&e);
            match e {
                ServerEvent::ExecutionQueued {
                    execution,
                    request_id: Some(r),
                } if r == rid => id = Some(execution.id),
                ServerEvent::Output {
                    execution_id,
                    output: Output::Stream { text, .. },
                } if id.as_ref() == Some(&execution_id) => out.push_str(&text),
                ServerEvent::ExecutionFinished { execution_id, .. }
                    if id.as_ref() == Some(&execution_id) =>
                {
                    return out;
                }
                ServerEvent::Error { message, .. } if id.is_none() => {
                    panic!("the check was refused: {message}")
                }
                _ => {}
            }
        }
    }

    fn is(&self, cell: &str, state: CellState) -> bool {
        self.state.get(cell) == Some(&state)
    }

    fn out(&self, cell: &str) -> &str {
        self.stdout.get(cell).map_or("", String::as_str)
    }

    fn node(&self, cell: &str) -> Option<&GraphCell> {
        self.graph.iter().find(|g| g.id == cell)
    }
}

async fn run(c: &mut Client, cell: &str) {
    c.send(&ClientMessage::ExecuteCell {
        cell_id: cell.into(),
        request_id: None,
        stop_on_error: true,
    })
    .await;
}

/// Three cells in a chain (`x`, `y` reading it, `p` printing `y`), written by `ada` in the
/// kernel's language, seen by `bob`: the graph links them; running `x` runs the others after it,
/// printing `first`; editing `x` to `edit` marks all three stale, and running it brings all up to
/// date, printing `second`. Returns the three cells' ids.
async fn a_chain_reruns_in_order(
    ada: &mut Client,
    bob: &mut Client,
    view: &mut View,
    cells: [&str; 3],
    edit: &str,
    [first, second]: [&str; 2],
) -> [String; 3] {
    let x = ada.first_cell();
    ada.set_source(&x, cells[0]).await;
    let y = ada.insert_cell(1, cells[1]).await;
    let p = ada.insert_cell(2, cells[2]).await;
    view.until(bob, |v| {
        v.node(&y).is_some_and(|g| g.parents == [x.clone()])
            && v.node(&p)
                .is_some_and(|g| g.parents == [y.clone()] && g.refs == ["y"])
    })
    .await;
    assert_eq!(view.node(&x).unwrap().defs, ["x"]);
    assert_eq!(view.node(&x).unwrap().children, vec![y.clone()]);

    // Running the first cell runs the others after it.
    run(ada, &x).await;
    view.until(bob, |v| v.is(&p, CellState::Idle) && v.out(&p) == first)
        .await;
    assert_eq!(view.started, [x.clone(), y.clone(), p.clone()]);

    // Editing marks the cell and what depends on it stale; running it brings all up to date.
    ada.set_source(&x, edit).await;
    view.until(bob, |v| {
        [&x, &y, &p].iter().all(|c| v.is(c, CellState::Stale))
    })
    .await;
    view.started.clear();
    run(ada, &x).await;
    view.until(bob, |v| v.is(&p, CellState::Idle) && v.out(&p) == second)
        .await;
    assert_eq!(view.started, [x.clone(), y.clone(), p.clone()]);
    [x, y, p]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_cell_reruns_its_dependents_in_order_for_everyone() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut bob = server.client("bob", Role::Editor).await;
    let mut view = View::default();
    let [x, y, p] = a_chain_reruns_in_order(
        &mut ada,
        &mut bob,
        &mut view,
        ["x = 1", "y = x + 1", "print(y)"],
        "x = 2",
        ["2\n", "3\n"],
    )
    .await;

    // Lazy mode: dependents are marked, not run, until someone runs what is stale.
    ada.send(&ClientMessage::SetReactivity {
        mode: Reactivity::Lazy,
    })
    .await;
    ada.set_source(&x, "x = 5").await;
    view.started.clear();
    run(&mut ada, &x).await;
    view.until(&mut bob, |v| {
        v.is(&x, CellState::Idle) && v.is(&y, CellState::Stale) && v.is(&p, CellState::Stale)
    })
    .await;
    assert_eq!(
        view.console(&mut bob, "print(y)").await,
        "3\n",
        "y kept its value"
    );
    assert_eq!(view.started, vec![x.clone()]);
    assert_eq!(view.out(&p), "3\n", "not re-run in lazy mode");
    ada.send(&ClientMessage::RunStale { request_id: None })
        .await;
    view.until(&mut bob, |v| {
        v.is(&p, CellState::Idle) && v.out(&p) == "6\n"
    })
    .await;
    assert_eq!(view.started, [x.clone(), y.clone(), p.clone()]);
    server.stop().await;
}

/// Under the strict rule, a cell `source` defining `x` again (after the document's other
/// cells): both cells show the duplicate, and running the new one is refused. Returns its id.
async fn a_second_definition_of_x_is_refused(
    ada: &mut Client,
    view: &mut View,
    x: &str,
    source: &str,
) -> String {
    let dup = ada.insert_cell(3, source).await;
    view.until(ada, |v| {
        matches!(v.node(x).and_then(|g| g.error.as_ref()), Some(GraphError::MultipleDefinitions { names, .. }) if names == &["x"])
            && v.node(&dup).is_some_and(|g| g.error.is_some())
    })
    .await;
    run(ada, &dup).await;
    ada.until(|e| matches!(e, ServerEvent::Error { code: ErrorCode::InvalidEdit, message, .. } if message.contains("defines x")))
        .await;
    dup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_errors_block_execution_and_failures_block_dependents() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut view = View::default();
    // marimo's guarantees: one definition per name, no cycles.
    ada.send(&ClientMessage::SetGraphRule {
        rule: GraphRule::Strict,
    })
    .await;
    let x = ada.first_cell();
    ada.set_source(&x, "x = 1").await;
    let y = ada.insert_cell(1, "y = x + 1").await;
    let p = ada.insert_cell(2, "print(y)").await;

    let dup = a_second_definition_of_x_is_refused(&mut ada, &mut view, &x, "x = 10").await;
    ada.send(&ClientMessage::DeleteCell { cell_id: dup }).await;

    // A cycle is an error on every cell in it.
    let a = ada.insert_cell(3, "a = b + 1").await;
    let b = ada.insert_cell(4, "b = a + 1").await;
    view.until(&mut ada, |v| {
        [&a, &b].iter().all(|c| {
            matches!(v.node(c).and_then(|g| g.error.as_ref()), Some(GraphError::Cycle { cells }) if cells.len() == 2)
        }) && v.node(&x).is_some_and(|g| g.error.is_none())
    })
    .await;
    run(&mut ada, &a).await;
    ada.until(|e| matches!(e, ServerEvent::Error { code: ErrorCode::InvalidEdit, message, .. } if message.contains("cycle")))
        .await;
    ada.send(&ClientMessage::DeleteCell { cell_id: a }).await;
    ada.send(&ClientMessage::DeleteCell { cell_id: b }).await;

    // An upstream error blocks what depends on it.
    ada.set_source(&x, "x = 1 / 0").await;
    run(&mut ada, &x).await;
    view.until(&mut ada, |v| {
        v.is(&x, CellState::Error) && v.is(&y, CellState::Blocked) && v.is(&p, CellState::Blocked)
    })
    .await;
    assert_eq!(
        view.console(&mut ada, "print('y' in globals())").await,
        "False\n",
        "a blocked cell did not run"
    );
    assert!(!view.started.contains(&y), "a blocked cell did not run");

    // Fixed, everything runs; a disabled cell blocks its dependents.
    ada.set_source(&x, "x = 1").await;
    run(&mut ada, &x).await;
    view.until(&mut ada, |v| {
        v.is(&p, CellState::Idle) && v.out(&p) == "2\n"
    })
    .await;
    ada.send(&ClientMessage::SetCellDisabled {
        cell_id: y.clone(),
        disabled: true,
    })
    .await;
    run(&mut ada, &p).await;
    ada.until(|e| matches!(e, ServerEvent::Error { code: ErrorCode::InvalidEdit, message, .. } if message.contains("disabled")))
        .await;
    ada.send(&ClientMessage::SetCellDisabled {
        cell_id: y.clone(),
        disabled: false,
    })
    .await;

    // Deleting the defining cell removes x from the kernel; its dependents re-run and fail.
    view.started.clear();
    ada.send(&ClientMessage::DeleteCell { cell_id: x.clone() })
        .await;
    view.until(&mut ada, |v| {
        v.is(&y, CellState::Error) && v.is(&p, CellState::Blocked)
    })
    .await;
    let check = ada.run("print('x' in globals(), 'y' in globals())").await;
    assert_eq!(
        check.stdout(),
        "False True\n",
        "x is gone; y is the old value"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_cancels_the_rest_of_a_reactive_run() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut view = View::default();
    let a = ada.first_cell();
    ada.set_source(&a, "x = 1").await;
    // The graph runs b, c, d after a; b takes long enough to be interrupted, c depends on b,
    // d only on a.
    let b = ada
        .insert_cell(
            1,
            "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\ny = x + 1",
        )
        .await;
    let c = ada.insert_cell(2, "z = y + 1").await;
    let d = ada.insert_cell(3, "w = x + 1").await;
    view.until(&mut ada, |v| {
        v.node(&c).is_some_and(|g| g.parents == [b.clone()])
            && v.node(&d).is_some_and(|g| g.parents == [a.clone()])
    })
    .await;

    run(&mut ada, &a).await;
    view.until(&mut ada, |v| v.out(&b) == "sleeping\n").await;
    ada.send(&ClientMessage::Interrupt).await;
    // The interrupted cell failed, what depends on it is blocked, and what the run had not
    // reached yet is stale rather than run.
    view.until(&mut ada, |v| {
        v.is(&b, CellState::Error) && v.is(&c, CellState::Blocked) && v.is(&d, CellState::Stale)
    })
    .await;
    assert_eq!(view.finished.get(&b), Some(&ExecutionStatus::Interrupted));
    assert_eq!(
        view.console(&mut ada, "print('z' in globals(), 'w' in globals())")
            .await,
        "False False\n",
        "nothing after the interrupted cell ran"
    );
    assert_eq!(view.started, [a.clone(), b.clone()]);

    // What was cancelled is stale, so running what is stale finishes the job (c stays blocked
    // until b runs again).
    ada.send(&ClientMessage::RunStale { request_id: None })
        .await;
    view.until(&mut ada, |v| v.is(&d, CellState::Idle)).await;
    assert_eq!(
        view.console(&mut ada, "print('z' in globals(), w)").await,
        "False 2\n"
    );
    assert!(view.is(&c, CellState::Blocked));
    server.stop().await;
}

/// Notebooks written for Jupyter use IPython's syntax: cell magics whose bodies are not Python,
/// magics that bind names, prompt-style cells, `from __future__` in several cells. The graph
/// understands them as IPython runs them, and they run, with their dependents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_magics_and_ipython_syntax_run_through_the_graph() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut view = View::default();
    let future_a = ada.first_cell();
    ada.set_source(
        &future_a,
        "from __future__ import annotations\nlimit: int = 3",
    )
    .await;
    let future_b = ada
        .insert_cell(
            1,
            "from __future__ import annotations\nwords = ['a', 'b', 'c'][:limit]",
        )
        .await;
    let write = ada
        .insert_cell(2, "%%writefile magic-data.txt\nfrom the writefile magic\n")
        .await;
    let bash = ada
        .insert_cell(
            3,
            "%%bash --out listing\ncat magic-data.txt\necho from bash",
        )
        .await;
    let html = ada
        .insert_cell(4, "%%html\n<b>bold</b> & not Python (")
        .await;
    let capture = ada
        .insert_cell(5, "%%capture captured\nprint('inside', len(words))")
        .await;
    let uses = ada
        .insert_cell(
            6,
            "print(captured.stdout.strip(), '|', listing.splitlines()[1])",
        )
        .await;
    let timeit = ada.insert_cell(7, "%%timeit -n1 -r1\nsorted(words)").await;
    let prompt = ada
        .insert_cell(8, ">>> total = len(words)\n>>> print('total', total)")
        .await;
    let cells = [
        &future_a, &future_b, &write, &bash, &html, &capture, &uses, &timeit, &prompt,
    ];
    view.until(&mut ada, |v| {
        cells.iter().all(|c| v.node(c).is_some())
            && v.node(&uses)
                .is_some_and(|g| g.parents.contains(&capture) && g.parents.contains(&bash))
    })
    .await;
    for c in cells {
        let node = view.node(c).unwrap();
        assert!(node.error.is_none(), "{c}: {:?}", node.error);
    }
    assert_eq!(
        view.node(&future_b).unwrap().parents,
        std::slice::from_ref(&future_a)
    );
    assert_eq!(view.node(&capture).unwrap().defs, ["captured"]);
    assert_eq!(view.node(&bash).unwrap().defs, ["listing"]);
    assert!(view.node(&timeit).unwrap().defs.is_empty());
    assert_eq!(view.node(&prompt).unwrap().defs, ["total"]);

    for c in cells {
        run(&mut ada, c).await;
    }
    view.until(&mut ada, |v| {
        cells.iter().all(|c| v.finished.contains_key(*c))
    })
    .await;
    for c in cells {
        assert_eq!(view.finished[c.as_str()], ExecutionStatus::Ok, "{c}");
    }
    assert_eq!(view.out(&uses), "inside 3 | from bash\n");
    assert_eq!(view.out(&prompt), "total 3\n");
    server.stop().await;
}

/// The positional rule (every document's default): a notebook written for Jupyter, with names
/// redefined down the page and `x = x + 1` chains, runs as it is and keeps its dependents fresh;
/// a move changes what a cell reads and marks it stale; the strict rule can be chosen per
/// document, and every collaborator (and a late joiner's snapshot) sees which one is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notebooks_written_for_jupyter_run_under_the_positional_rule() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut view = View::default();
    let load = ada.first_cell();
    ada.set_source(&load, "df = [3, 1, 2]").await;
    let clean = ada.insert_cell(1, "df = sorted(df)").await;
    let show = ada.insert_cell(2, "print(df)").await;
    let bump = ada.insert_cell(3, "df = df + [9]").await;
    let last = ada.insert_cell(4, "print(len(df))").await;
    view.until(&mut ada, |v| {
        v.node(&last).is_some_and(|g| g.parents == [bump.clone()])
            && v.node(&bump).is_some_and(|g| g.parents == [clean.clone()])
    })
    .await;
    assert!(
        view.graph.iter().all(|g| g.error.is_none()),
        "{:?}",
        view.graph
    );

    run(&mut ada, &load).await;
    view.until(&mut ada, |v| {
        v.is(&last, CellState::Idle) && v.out(&last) == "4\n"
    })
    .await;
    assert_eq!(
        view.started,
        [&load, &clean, &show, &bump, &last].map(|c| c.clone())
    );
    assert_eq!(view.out(&show), "[1, 2, 3]\n");

    // Moving `bump` above `show`: show now reads bump's df, so it (and not the others) is stale.
    ada.send(&ClientMessage::MoveCell {
        cell_id: bump.clone(),
        index: 2,
    })
    .await;
    view.until(&mut ada, |v| {
        v.is(&show, CellState::Stale) && v.node(&show).is_some_and(|g| g.parents == [bump.clone()])
    })
    .await;
    assert!(view.is(&load, CellState::Idle) && view.is(&clean, CellState::Idle));
    ada.send(&ClientMessage::RunStale { request_id: None })
        .await;
    view.until(&mut ada, |v| {
        v.is(&show, CellState::Idle) && v.out(&show) == "[1, 2, 3, 9]\n"
    })
    .await;

    // Strict, for this document: the redefinitions become errors, seen by a late joiner too.
    ada.send(&ClientMessage::SetGraphRule {
        rule: GraphRule::Strict,
    })
    .await;
    view.until(&mut ada, |v| {
        matches!(
            v.node(&load).and_then(|g| g.error.as_ref()),
            Some(GraphError::MultipleDefinitions { .. })
        )
    })
    .await;
    let bob = server.client("bob", Role::Viewer).await;
    assert!(
        matches!(&bob.snapshot().graph_rule, GraphRule::Strict),
        "the snapshot names the rule"
    );
    // A viewer cannot change it.
    let mut bob = bob;
    bob.send(&ClientMessage::SetGraphRule {
        rule: GraphRule::Positional,
    })
    .await;
    bob.until(|e| matches!(e, ServerEvent::Error { .. })).await;
    // Back to positional: no errors again.
    ada.send(&ClientMessage::SetGraphRule {
        rule: GraphRule::Positional,
    })
    .await;
    view.until(&mut ada, |v| v.graph.iter().all(|g| g.error.is_none()))
        .await;
    server.stop().await;
}

/// "Run all" is one plan on the server: every cell once, in dependency order (a cell that appends
/// to a list appends once); a disabled cell and what reads its names do not run and say why;
/// each run records who ran it and on which kernel; after a restart the cells whose results are
/// not in the kernel are stale, as "not in kernel", and "Run stale" brings them back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_runs_each_cell_once_and_a_restart_says_what_the_kernel_lost() {
    let server = TestServer::start(&[]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let first_session = ada.snapshot().kernel_session.clone();
    assert!(
        !first_session.is_empty(),
        "the snapshot names the kernel session"
    );
    let mut view = View::default();
    let a = ada.first_cell();
    ada.set_source(&a, "xs = []").await;
    let b = ada.insert_cell(1, "xs.append(1)\nprint(xs)").await;
    let c = ada.insert_cell(2, "z = len(xs)").await;
    let d = ada.insert_cell(3, "print('z is', z)").await;
    view.until(&mut ada, |v| {
        v.node(&d).is_some_and(|g| g.parents == [c.clone()])
    })
    .await;
    ada.send(&ClientMessage::SetCellDisabled {
        cell_id: c.clone(),
        disabled: true,
    })
    .await;
    ada.send(&ClientMessage::RunAll {
        request_id: Some("all".into()),
    })
    .await;
    // The run is told over once, after its last cell ran and the rest were blocked.
    view.until(&mut ada, |v| v.runs_finished == ["all"]).await;
    assert!(
        view.is(&b, CellState::Idle)
            && view.is(&d, CellState::Blocked)
            && view.is(&c, CellState::Blocked),
        "{:?}",
        view.state
    );
    assert_eq!(
        view.console(&mut ada, "print(xs, 'z' in globals())").await,
        "[1] False\n",
        "b appended once, and neither c nor d ran"
    );
    assert_eq!(view.started, [a.clone(), b.clone()]);
    assert_eq!(view.out(&b), "[1]\n");
    assert_eq!(view.cause.get(&c), Some(&StateCause::Disabled));
    assert_eq!(
        view.cause.get(&d),
        Some(&StateCause::UpstreamDisabled { cell: c.clone() })
    );
    let ran = view.last_run.get(&b).expect("b's run is recorded");
    assert_eq!(ran.by, "ada name (graph)", "the graph's runs are ada's");
    assert_eq!(ran.kernel_session, first_session);

    // A restart: a and b ran in the old kernel, so their results are gone with it.
    ada.restart().await;
    view.until(&mut ada, |v| {
        v.is(&a, CellState::Stale) && v.is(&b, CellState::Stale)
    })
    .await;
    assert_eq!(view.cause.get(&a), Some(&StateCause::NotInKernel));
    assert_eq!(view.cause.get(&b), Some(&StateCause::NotInKernel));
    let late = server.client("bob", Role::Viewer).await;
    let snapshot = late.snapshot();
    assert_ne!(snapshot.kernel_session, first_session, "a new session");
    let b_view = snapshot.cells.iter().find(|v| v.id == b).unwrap();
    assert_eq!(b_view.runtime.cause, Some(StateCause::NotInKernel));
    assert_eq!(
        b_view
            .runtime
            .last_run
            .as_ref()
            .map(|r| r.kernel_session.as_str()),
        Some(first_session.as_str()),
        "the snapshot keeps who ran it, on which kernel"
    );
    view.started.clear();
    ada.send(&ClientMessage::RunStale {
        request_id: Some("stale".into()),
    })
    .await;
    view.until(&mut ada, |v| v.runs_finished.len() == 2).await;
    assert_eq!(view.runs_finished, ["all", "stale"]);
    assert!(
        view.is(&a, CellState::Idle) && view.is(&b, CellState::Idle) && view.out(&b) == "[1]\n"
    );
    assert_eq!(view.started, [a.clone(), b.clone()]);
    server.stop().await;
}

/// TypeScript cells on Deno's kernel follow the same rules: the edges come from their own
/// analysis (oxc), a change re-runs the dependents in order (re-running a `const` cell
/// declares it again, as Deno's REPL allows), and duplicates are graph errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_cells_rerun_their_dependents_as_python_cells_do() {
    let server = TestServer::start(&["--kernel", "deno"]).await;
    let mut ada = server.client("ada", Role::Editor).await;
    let mut bob = server.client("bob", Role::Editor).await;
    let mut view = View::default();
    let [x, y, p] = a_chain_reruns_in_order(
        &mut ada,
        &mut bob,
        &mut view,
        [
            "const x: number = 1",
            "interface Pair { a: number }\nconst y: Pair = { a: x + 1 }",
            "console.log(y.a)",
        ],
        "const x: number = 2",
        ["2\n", "3\n"],
    )
    .await;
    assert_eq!(view.node(&y).unwrap().defs, ["Pair", "y"]);
    assert!(
        [&x, &y, &p]
            .iter()
            .all(|c| view.finished.get(*c) == Some(&ExecutionStatus::Ok)),
        "{:?}",
        view.finished
    );

    // Two definitions of x, under the strict rule: both cells show it, neither runs.
    ada.send(&ClientMessage::SetGraphRule {
        rule: GraphRule::Strict,
    })
    .await;
    a_second_definition_of_x_is_refused(&mut ada, &mut view, &x, "let x = 10").await;
    server.stop().await;
}
