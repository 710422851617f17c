//! Every rule of `docs/reactivity.md`'s "Graph rules" as a table: a notebook, what is given,
//! then steps (what happens, and the decisions expected, in order). The harness plays the
//! hub's part: it applies the decided states, marks a decided run queued (as the kernel's
//! `execution_queued` would), and sets a finished cell idle or error before the reactor
//! hears of it (as the execution mirror does).
//!
//! One file over 500 lines: the table is read as one list of rules against one harness.

use super::*;
use crate::graph::{CellAnalysis, GraphRule, analyse};

use CellState::{Error, Stale};
use ExecutionStatus::{Aborted, Error as Failed, Interrupted, KernelDied, Ok as Done, TimedOut};

#[derive(Debug, Clone, Copy)]
enum Given {
    State(&'static str, CellState),
    Disabled(&'static str),
    Lazy,
    /// The document uses the strict graph rule (the positional rule otherwise).
    Strict,
}

#[derive(Debug, Clone, Copy)]
enum Do {
    /// A person runs the cell (its execution joins the queue).
    Run(&'static str),
    /// The cell's execution ends.
    Finish(&'static str, ExecutionStatus),
    /// The cell's source becomes this.
    Edit(&'static str, &'static str),
    /// The cell is deleted.
    Delete(&'static str),
    RunStale,
    Interrupt,
    /// The session refuses the run the reactor decided for this cell.
    Refuse(&'static str),
    /// The cell moves to this index.
    Move(&'static str, usize),
    RunAll,
    /// A new kernel session begins.
    NewKernel(&'static str),
    /// The document resumed from its checkpoint: these cells run again.
    Resume(&'static [&'static str]),
}
use Do::*;

struct Case {
    rule: &'static str,
    cells: &'static [(&'static str, &'static str)],
    given: &'static [Given],
    steps: &'static [(Do, &'static [&'static str])],
}

/// x -> y -> p, and x -> w (w independent of y).
const CHAIN: &[(&str, &str)] = &[
    ("a", "x = 1"),
    ("b", "y = x + 1"),
    ("c", "print(y)"),
    ("d", "w = x * 2"),
];

const CASES: &[Case] = &[
    Case {
        rule: "resume: exactly the cells named run again, in order; their success runs nothing else",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Resume(&["a", "b"]), &["run a after resume"]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &[]),
        ],
    },
    Case {
        rule: "positional: a reference depends on the nearest definition above it; redefinitions and x = x + 1 chains run in document order",
        cells: &[
            ("a", "x = 1"),
            ("b", "x = x + 1"),
            ("c", "print(x)"),
            ("d", "x = 10"),
            ("e", "print(x)"),
        ],
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &[]),
            (Run("d"), &[]),
            (Finish("d", Done), &["run e after d"]),
            (Finish("e", Done), &[]),
        ],
    },
    Case {
        rule: "positional: what the strict rule calls a cycle is an order: each cell reads what is above it",
        cells: &[("a", "p = 1"), ("b", "q = p"), ("c", "p = q + 1")],
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &[]),
        ],
    },
    Case {
        rule: "positional: after a move, cells that now read from another cell, and their dependents, go stale",
        cells: &[
            ("a", "x = 1"),
            ("b", "x = 2"),
            ("c", "y = x"),
            ("d", "print(y)"),
        ],
        given: &[],
        steps: &[
            (Run("c"), &[]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
            (Move("a", 1), &["stale c", "stale d"]),
        ],
    },
    Case {
        rule: "an edge runs from the cell that defines a name to each cell that reads it",
        cells: &[("a", "x = 1"), ("b", "y = x + 1"), ("c", "z = 3")],
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &[]),
        ],
    },
    Case {
        rule: "autorun: dependents run one at a time, in topological order, document order among independent cells (strict: a reader may sit above what it reads)",
        cells: &[
            ("p", "print(y, w)"),
            ("a", "x = 1"),
            ("b", "y = x + 1"),
            ("c", "w = x * 2"),
        ],
        given: &[Given::Strict],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run p after c"]),
            (Finish("p", Done), &[]),
        ],
    },
    Case {
        rule: "lazy: dependents are marked stale instead, and run_stale runs every stale cell in dependency order",
        cells: CHAIN,
        given: &[Given::Lazy],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["stale b", "stale c", "stale d"]),
            (RunStale, &["run b after run stale"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
        ],
    },
    Case {
        rule: "run_stale blocks what may not run (saying why, not leaving it stale for ever) and what a failure holds back",
        cells: CHAIN,
        given: &[
            Given::State("a", Error),
            Given::State("b", Stale),
            Given::State("d", Stale),
            Given::Disabled("d"),
        ],
        steps: &[(RunStale, &["blocked d", "blocked b"])],
    },
    Case {
        rule: "strict: a name defined in two cells is an error on both: such cells do not run, and block nothing else",
        cells: &[
            ("a", "x = 1"),
            ("b", "y = x"),
            ("c", "y = 2"),
            ("d", "z = x"),
        ],
        given: &[Given::Strict],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["blocked b", "run d after a"]),
            (Finish("d", Done), &[]),
        ],
    },
    Case {
        rule: "strict: a cycle is an error on every cell in it: those cells do not run",
        cells: &[("a", "x = 1"), ("b", "p = q + x"), ("c", "q = p")],
        given: &[Given::Strict],
        steps: &[(Run("a"), &[]), (Finish("a", Done), &[])],
    },
    Case {
        rule: "disabled cells, and cells that depend on a disabled cell, do not run",
        cells: CHAIN,
        given: &[Given::Disabled("b")],
        steps: &[
            (Run("a"), &[]),
            (
                Finish("a", Done),
                &["blocked b", "blocked c", "run d after a"],
            ),
            (Finish("d", Done), &[]),
        ],
    },
    Case {
        rule: "editing a cell that has run marks it and its dependents stale",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
            // b is queued again: its state is the kernel's to set until it has run.
            (Run("b"), &[]),
            (Edit("a", "x = 2"), &["stale a", "stale c", "stale d"]),
        ],
    },
    Case {
        rule: "editing a cell that never ran, or back to what it ran, marks nothing",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Edit("b", "y = x + 2"), &[]),
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
            (Edit("a", "x = 1"), &[]),
        ],
    },
    Case {
        rule: "an error marks the dependents blocked; the rest of the run goes on",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Failed), &["blocked c", "run d after b"]),
            (Finish("d", Done), &[]),
        ],
    },
    Case {
        rule: "a timeout marks the dependents blocked; the rest of the run goes on",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", TimedOut), &["blocked c", "run d after b"]),
            (Finish("d", Done), &[]),
        ],
    },
    Case {
        rule: "a kernel death marks the dependents blocked; the rest of the run goes on",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", KernelDied), &["blocked c", "run d after b"]),
            (Finish("d", Done), &[]),
        ],
    },
    Case {
        rule: "a failure of a cell a person ran blocks its dependents",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (
                Finish("a", Failed),
                &["blocked b", "blocked c", "blocked d"],
            ),
        ],
    },
    Case {
        rule: "interrupting cancels the rest of the run (stale); the interrupted cell's dependents are blocked",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Interrupt, &["stale c", "stale d"]),
            (Finish("b", Interrupted), &["blocked c"]),
        ],
    },
    Case {
        rule: "an interrupt that comes as the running cell succeeds still stops the run",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Interrupt, &["stale c", "stale d"]),
            (Finish("b", Done), &[]),
        ],
    },
    Case {
        rule: "an interrupted execution stops the run even without the interrupt event",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Interrupted), &["blocked c", "stale d"]),
        ],
    },
    Case {
        rule: "a planned cell aborted before it ran (interrupt, restart) is stale, and the rest of the run is cancelled",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Aborted), &["stale b", "stale c", "stale d"]),
        ],
    },
    Case {
        rule: "an aborted cell whose upstream failed is blocked",
        cells: CHAIN,
        given: &[Given::State("a", Error)],
        steps: &[(Run("b"), &[]), (Finish("b", Aborted), &["blocked b"])],
    },
    Case {
        rule: "deleting a cell removes the names it alone defined; in autorun its dependents re-run",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Delete("a"), &["forget x", "run b after a deleted cell"]),
            // b fails (x is gone): c is held back, d runs and fails too.
            (Finish("b", Failed), &["blocked c", "run d after b"]),
            (Finish("d", Failed), &[]),
        ],
    },
    Case {
        rule: "deleting a cell removes the names it alone defined; in lazy mode its dependents become stale",
        cells: CHAIN,
        given: &[Given::Lazy],
        steps: &[(Delete("a"), &["forget x", "stale b", "stale c", "stale d"])],
    },
    Case {
        rule: "deleting a cell whose names another cell still defines changes nothing else",
        cells: &[("a", "x = 1"), ("b", "x = 2"), ("c", "print(x)")],
        given: &[],
        steps: &[(Delete("a"), &[])],
    },
    Case {
        rule: "names starting with _ are cell-local: no edge, nothing runs",
        cells: &[("a", "_t = 1"), ("b", "print(_t)")],
        given: &[],
        steps: &[(Run("a"), &[]), (Finish("a", Done), &[])],
    },
    Case {
        rule: "a run the kernel refuses ends the run: it and the rest become stale, and the next run starts afresh",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Refuse("b"), &["stale b", "stale c", "stale d"]),
            (Run("a"), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
        ],
    },
];

struct Harness {
    sources: Vec<(String, String)>,
    graph: Graph,
    cells: HashMap<String, CellRuntime>,
    mode: Reactivity,
    rule: GraphRule,
    reactor: Reactor,
    /// Decisions print with the cause of each state (`blocked c: upstream_failed a`).
    causes: bool,
}

impl Harness {
    fn new(cells: &[(&str, &str)]) -> Self {
        let mut h = Self {
            sources: cells
                .iter()
                .map(|(id, s)| ((*id).to_owned(), (*s).to_owned()))
                .collect(),
            graph: Graph::default(),
            cells: cells
                .iter()
                .map(|(id, _)| ((*id).to_owned(), CellRuntime::default()))
                .collect(),
            mode: Reactivity::Autorun,
            rule: GraphRule::Positional,
            reactor: Reactor::default(),
            causes: false,
        };
        h.rebuild();
        h
    }

    fn rebuild(&mut self) {
        let analyses: Vec<(String, CellAnalysis)> = self
            .sources
            .iter()
            .map(|(id, s)| (id.clone(), analyse(s)))
            .collect();
        let refs: Vec<(&str, &CellAnalysis)> =
            analyses.iter().map(|(id, a)| (id.as_str(), a)).collect();
        self.graph = Graph::build(&refs, self.rule);
    }

    fn source(&self, cell: &str) -> String {
        self.sources
            .iter()
            .find(|(id, _)| id == cell)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn decide(&mut self, event: Event<'_>) -> Vec<String> {
        let document = Document {
            graph: &self.graph,
            cells: &self.cells,
            mode: self.mode,
        };
        let decisions = self.reactor.decide(&document, event);
        let mut queued = Vec::new();
        for d in &decisions {
            match d {
                Decision::SetState { cell, state, cause } => {
                    self.set(cell, *state);
                    if let Some(r) = self.cells.get_mut(cell) {
                        r.cause.clone_from(cause);
                    }
                }
                Decision::Run { cell, .. } => queued.push(cell.clone()),
                Decision::Forget { .. } => {}
            }
        }
        for cell in queued {
            self.queue(&cell);
        }
        decisions
            .iter()
            .map(|d| match d {
                Decision::SetState {
                    cause: Some(cause), ..
                } if self.causes => format!("{d}: {}", cause_text(cause)),
                _ => d.to_string(),
            })
            .collect()
    }

    /// Sets a state as the execution mirror does (which clears the cause).
    fn set(&mut self, cell: &str, state: CellState) {
        if let Some(r) = self.cells.get_mut(cell) {
            r.state = state;
            r.cause = None;
        }
    }

    /// An execution of `cell` joined the kernel's queue.
    fn queue(&mut self, cell: &str) {
        self.set(cell, CellState::Queued);
        let code = self.source(cell);
        let out = self.decide(Event::Queued { cell, code: &code });
        assert!(out.is_empty(), "queuing decides nothing: {out:?}");
    }

    fn step(&mut self, action: Do) -> Vec<String> {
        match action {
            Run(cell) => {
                self.queue(cell);
                Vec::new()
            }
            Finish(cell, status) => {
                let state = match status {
                    Done | Aborted => CellState::Idle,
                    _ => CellState::Error,
                };
                self.set(cell, state);
                self.decide(Event::Finished { cell, status })
            }
            Edit(cell, source) => {
                for (id, s) in &mut self.sources {
                    if id == cell {
                        *s = source.to_owned();
                    }
                }
                self.rebuild();
                self.decide(Event::Edited { cell, source })
            }
            Delete(cell) => {
                let dependents = self.graph.descendants(cell);
                let defs = self
                    .graph
                    .get(cell)
                    .map(|g| g.defs.clone())
                    .unwrap_or_default();
                self.sources.retain(|(id, _)| id != cell);
                self.cells.remove(cell);
                self.rebuild();
                let names: Vec<String> = defs
                    .into_iter()
                    .filter(|n| !self.graph.cells().iter().any(|g| g.defs.contains(n)))
                    .collect();
                let deleted = [cell.to_owned()];
                self.decide(Event::Deleted {
                    cells: &deleted,
                    names: &names,
                    dependents: &dependents,
                })
            }
            Move(cell, to) => {
                let before = self.graph.clone();
                let at = self.sources.iter().position(|(id, _)| id == cell).unwrap();
                let moved = self.sources.remove(at);
                self.sources.insert(to, moved);
                self.rebuild();
                let reparented: Vec<String> = self
                    .graph
                    .cells()
                    .iter()
                    .filter(|c| before.get(&c.id).is_some_and(|b| b.parents != c.parents))
                    .map(|c| c.id.clone())
                    .collect();
                self.decide(Event::Reparented { cells: &reparented })
            }
            RunStale => self.decide(Event::RunStale),
            RunAll => self.decide(Event::RunAll),
            NewKernel(session) => self.decide(Event::NewKernel { session }),
            Resume(cells) => {
                let cells: Vec<String> = cells.iter().map(|c| (*c).to_owned()).collect();
                self.decide(Event::Resume { cells: &cells })
            }
            Interrupt => self.decide(Event::Interrupted),
            Refuse(cell) => self.decide(Event::Refused { cell }),
        }
    }

    fn disable(&mut self, cell: &str) {
        if let Some(r) = self.cells.get_mut(cell) {
            r.disabled = true;
        }
    }

    fn strict(&mut self) {
        self.rule = GraphRule::Strict;
        self.rebuild();
    }

    /// Plays a table's steps, checking each step's decisions, and that the run ends.
    fn play(&mut self, rule: &str, steps: &[(Do, &[&str])]) {
        for (i, (action, expected)) in steps.iter().enumerate() {
            let got = self.step(*action);
            assert_eq!(got, *expected, "rule: {rule}\nstep {} ({action:?})", i + 1);
        }
        assert!(
            !self.reactor.running(),
            "rule: {rule}: the run is over at the end"
        );
    }
}

#[test]
fn every_rule_of_the_reactivity_doc() {
    for case in CASES {
        let mut h = Harness::new(case.cells);
        for given in case.given {
            match *given {
                Given::State(cell, state) => h.set(cell, state),
                Given::Disabled(cell) => h.disable(cell),
                Given::Lazy => h.mode = Reactivity::Lazy,
                Given::Strict => h.strict(),
            }
        }
        h.play(case.rule, case.steps);
    }
}

/// Cells, the disabled ones, the cell asked about, and the start of the reason (if any).
type Runnable<'a> = (
    &'a [(&'a str, &'a str)],
    &'a [&'a str],
    &'a str,
    Option<&'a str>,
);

#[test]
fn what_may_not_run_and_why() {
    let cases: &[Runnable<'_>] = &[
        (&[("a", "x = 1")], &[], "a", None),
        (
            &[("a", "x = (")],
            &[],
            "a",
            Some("syntax error: unexpected EOF"),
        ),
        (
            &[("a", "x = 1"), ("b", "x = 2")],
            &[],
            "b",
            Some("it defines x that another cell also defines"),
        ),
        (
            &[("a", "p = q"), ("b", "q = p")],
            &[],
            "a",
            Some("it is part of a dependency cycle"),
        ),
        (&[("a", "x = 1")], &["a"], "a", Some("the cell is disabled")),
        (
            &[("a", "x = 1"), ("b", "y = x"), ("c", "print(y)")],
            &["a"],
            "c",
            Some("it depends on a disabled cell"),
        ),
    ];
    for (cells, disabled, cell, expected) in cases {
        let mut h = Harness::new(cells);
        h.strict();
        for d in *disabled {
            h.disable(d);
        }
        let document = Document {
            graph: &h.graph,
            cells: &h.cells,
            mode: h.mode,
        };
        let got = not_runnable(&document, cell).map(|r| r.to_string());
        match expected {
            None => assert_eq!(got, None, "{cells:?}"),
            Some(text) => assert!(
                got.as_deref().is_some_and(|g| g.starts_with(text)),
                "{cells:?}: {got:?}"
            ),
        }
    }
}

/// A cause as the plan tables write it: its kind, and the cell it names.
fn cause_text(cause: &StateCause) -> String {
    let value = serde_json::to_value(cause).unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or("?").to_owned();
    match value.get("cell").or_else(|| value.get("message")) {
        Some(v) => format!("{kind} {}", v.as_str().unwrap_or("?")),
        None => kind,
    }
}

mod plans;
