//! "Run all", "Run stale" and a new kernel as tables, with the cause each stale or blocked
//! cell shows: one run per cell in dependency order, merged with what autorun schedules (never
//! twice); what depends on a cell that did not run does not run; each badge names its cause.

use super::*;
use crate::protocol::RunRecord;

#[derive(Debug, Clone, Copy)]
enum Given {
    Disabled(&'static str),
    /// The cell ran in this kernel session and ended in this state.
    Ran(&'static str, &'static str, CellState),
    /// The cell shows results from a file (an execution count, no run recorded).
    FromFile(&'static str),
    Lazy,
    Strict,
}

struct Plan {
    rule: &'static str,
    cells: &'static [(&'static str, &'static str)],
    given: &'static [Given],
    steps: &'static [(Do, &'static [&'static str])],
}

/// Run all over four cells: each runs once, in order.
const ONCE_EACH: &[(Do, &[&str])] = &[
    (RunAll, &["run a after run all"]),
    (Finish("a", Done), &["run b after a"]),
    (Finish("b", Done), &["run c after b"]),
    (Finish("c", Done), &["run d after c"]),
    (Finish("d", Done), &[]),
];

const PLANS: &[Plan] = &[
    Plan {
        rule: "run all runs every cell once, in dependency order: autorun adds nothing twice",
        cells: &[
            ("a", "xs = []"),
            ("b", "xs.append(1)"),
            ("c", "print(xs)"),
            ("d", "w = 2"),
        ],
        given: &[],
        steps: ONCE_EACH,
    },
    Plan {
        rule: "run all in lazy mode: the same single runs, nothing left stale",
        cells: CHAIN,
        given: &[Given::Lazy],
        steps: ONCE_EACH,
    },
    Plan {
        rule: "a cell already waiting in the kernel's queue is not planned again; it re-runs after its upstream does",
        cells: CHAIN,
        given: &[],
        steps: &[
            (Run("b"), &[]),
            (RunAll, &["run a after run all"]),
            (Finish("b", Done), &[]),
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
        ],
    },
    Plan {
        rule: "a disabled cell is blocked as disabled, and its dependents as depending on it; the rest runs",
        cells: CHAIN,
        given: &[Given::Disabled("b")],
        steps: &[
            (
                RunAll,
                &[
                    "blocked b: disabled",
                    "blocked c: upstream_disabled b",
                    "run a after run all",
                ],
            ),
            (Finish("a", Done), &["run d after a"]),
            (Finish("d", Done), &[]),
        ],
    },
    Plan {
        rule: "strict: a cell that may not run is blocked with why; a cell reading its names does not run from old values but says which did not run",
        cells: &[
            ("a", "x = 1"),
            ("b", "x = 2"),
            ("c", "print(x)"),
            ("d", "z = 3"),
        ],
        given: &[Given::Strict],
        steps: &[
            (
                RunAll,
                &[
                    "blocked a: invalid it defines x that another cell also defines",
                    "blocked b: invalid it defines x that another cell also defines",
                    "blocked c: upstream_not_run a",
                    "run d after run all",
                ],
            ),
            (Finish("d", Done), &[]),
        ],
    },
    Plan {
        rule: "a failure blocks what depends on it, naming the failed cell; the rest of the plan goes on",
        cells: &[
            ("a", "x = 1"),
            ("b", "y = x"),
            ("c", "print(y)"),
            ("d", "w = 2"),
        ],
        given: &[],
        steps: &[
            (RunAll, &["run a after run all"]),
            (Finish("a", Done), &["run b after a"]),
            (
                Finish("b", Failed),
                &["blocked c: upstream_failed b", "run d after b"],
            ),
            (Finish("d", Done), &[]),
        ],
    },
    Plan {
        rule: "an interrupt cancels the rest of a run all: those cells are stale, as cancelled",
        cells: CHAIN,
        given: &[],
        steps: &[
            (RunAll, &["run a after run all"]),
            (Finish("a", Done), &["run b after a"]),
            (Interrupt, &["stale c: cancelled", "stale d: cancelled"]),
            (Finish("b", Interrupted), &["blocked c: upstream_failed b"]),
        ],
    },
    Plan {
        rule: "a new kernel: what ran in another session, or came from a file, is not in the kernel; run stale brings it back in order",
        cells: CHAIN,
        given: &[
            Given::Ran("a", "k1", CellState::Idle),
            Given::Ran("b", "k1", CellState::Error),
            Given::FromFile("c"),
            Given::Ran("d", "k2", CellState::Idle),
        ],
        steps: &[
            (
                NewKernel("k2"),
                &[
                    "stale a: not_in_kernel",
                    "stale b: not_in_kernel",
                    "stale c: not_in_kernel",
                ],
            ),
            (NewKernel("k2"), &[]),
            (RunStale, &["run a after run stale"]),
            // Autorun merges a's dependents: d ran in this kernel but reads a new x.
            (Finish("a", Done), &["run b after a"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &["run d after c"]),
            (Finish("d", Done), &[]),
        ],
    },
    Plan {
        rule: "run stale in lazy mode: the stale cells once each; a dependent not stale goes stale naming its upstream",
        cells: CHAIN,
        given: &[
            Given::Lazy,
            Given::Ran("a", "k1", CellState::Idle),
            Given::Ran("b", "k1", CellState::Idle),
            Given::Ran("c", "k1", CellState::Idle),
            Given::Ran("d", "k1", CellState::Idle),
        ],
        steps: &[
            (
                Edit("b", "y = x + 2"),
                &["stale b: edited", "stale c: upstream_changed b"],
            ),
            (RunStale, &["run b after run stale"]),
            (Finish("b", Done), &["run c after b"]),
            (Finish("c", Done), &[]),
            (
                Edit("a", "x = 5"),
                &[
                    "stale a: edited",
                    "stale b: upstream_changed a",
                    "stale c: upstream_changed a",
                    "stale d: upstream_changed a",
                ],
            ),
            (Run("a"), &[]),
            (Finish("a", Done), &[]),
        ],
    },
    Plan {
        rule: "an execution aborted behind a failure is blocked naming the failure; one simply cancelled is stale",
        cells: &[("a", "x = 1"), ("b", "y = x"), ("c", "z = 1")],
        given: &[],
        steps: &[
            (Run("a"), &[]),
            (Run("b"), &[]),
            (Run("c"), &[]),
            (Finish("a", Failed), &[]),
            (Finish("b", Aborted), &["blocked b: upstream_failed a"]),
            (Finish("c", Aborted), &["stale c: cancelled"]),
        ],
    },
];

#[test]
fn run_all_run_stale_and_a_new_kernel() {
    for plan in PLANS {
        let mut h = Harness::new(plan.cells);
        h.causes = true;
        for given in plan.given {
            match *given {
                Given::Disabled(cell) => h.disable(cell),
                Given::Ran(cell, session, state) => {
                    h.queue(cell);
                    h.set(cell, state);
                    if let Some(r) = h.cells.get_mut(cell) {
                        r.execution_count = Some(1);
                        r.last_run = Some(RunRecord {
                            by: "ada".into(),
                            at_ms: 1,
                            duration_ms: 1,
                            kernel_session: session.into(),
                        });
                    }
                }
                Given::FromFile(cell) => {
                    if let Some(r) = h.cells.get_mut(cell) {
                        r.execution_count = Some(7);
                    }
                }
                Given::Lazy => h.mode = Reactivity::Lazy,
                Given::Strict => h.strict(),
            }
        }
        h.play(plan.rule, plan.steps);
    }
}
