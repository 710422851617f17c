//! The reactor: the rules of `docs/reactivity.md` as decisions. Given the graph, the cells'
//! states and what happened (a run finished, a cell was edited or deleted, someone interrupted),
//! it says what to do: run these cells, mark those stale or blocked, remove names from the
//! kernel. It does nothing itself (no kernel, no lock, no clock), so every rule is a table-driven
//! unit test; the document hub (`collab::Hub`) carries the decisions out.
//!
//! A reactive run is a *plan*: the cells to run, in dependency order, one at a time, so that a
//! failure holds back exactly what depends on it. The reactor keeps the plan, the one cell of it
//! queued now (*in flight*), and the source each cell last ran with (to tell an edit that makes
//! a cell stale from one that puts back what ran).

use std::collections::{HashMap, HashSet, VecDeque};

use crate::document::{CellRuntime, CellState};
use crate::graph::{Graph, GraphError};
use crate::protocol::{ExecutionStatus, Reactivity, StateCause};

/// What the reactor reads: the graph, every cell's runtime (state and disabled flag, by id) and
/// the document's mode.
#[derive(Debug, Clone, Copy)]
pub struct Document<'a> {
    pub graph: &'a Graph,
    pub cells: &'a HashMap<String, CellRuntime>,
    pub mode: Reactivity,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// An execution of `cell` joined the kernel's queue with `code`.
    Queued { cell: &'a str, code: &'a str },
    /// An execution of `cell` ended (the cell's own state already says how: idle or error).
    Finished {
        cell: &'a str,
        status: ExecutionStatus,
    },
    /// The source of code cell `cell` changed (to `source`).
    Edited { cell: &'a str, source: &'a str },
    /// Code cells were deleted (or stopped being code). `names` are the global names only they
    /// defined; `dependents` the cells that depended on them, in dependency order.
    Deleted {
        cells: &'a [String],
        names: &'a [String],
        dependents: &'a [String],
    },
    /// These cells now read their names from other cells than before (a cell moved, or the
    /// graph rule changed), their sources unchanged.
    Reparented { cells: &'a [String] },
    /// Someone asked to run every stale cell.
    RunStale,
    /// Someone asked to run every code cell.
    RunAll,
    /// A new kernel session began (`session`): cells whose results came from another one
    /// (or from a file) have nothing in the kernel.
    NewKernel { session: &'a str },
    /// Someone interrupted the kernel.
    Interrupted,
    /// The kernel session refused to queue the run of `cell` that the reactor decided on.
    Refused { cell: &'a str },
    /// The document resumed from its checkpoint: exactly `cells` run again (in this order),
    /// to rebuild names the checkpoint could not bring back. Their successes change nothing
    /// else: what depends on them was restored as it was.
    Resume { cells: &'a [String] },
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Set a cell's state, and why (stale and blocked cells say; other states clear it).
    SetState {
        cell: String,
        state: CellState,
        cause: Option<StateCause>,
    },
    /// Queue the cell's current source on the kernel. `after` says what started the run (a
    /// cell id, "run stale", "a deleted cell"); the execution shows "graph (after ...)".
    Run { cell: String, after: String },
    /// Remove these names from the kernel's globals.
    Forget { names: Vec<String> },
}

impl std::fmt::Display for Decision {
    /// The short form the tests' tables use: `run b after a`, `stale c`, `forget x, y`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::SetState { cell, state, .. } => {
                write!(f, "{} {cell}", state_name(*state))
            }
            Decision::Run { cell, after } => write!(f, "run {cell} after {after}"),
            Decision::Forget { names } => write!(f, "forget {}", names.join(", ")),
        }
    }
}

fn state_name(state: CellState) -> &'static str {
    match state {
        CellState::Idle => "idle",
        CellState::Queued => "queued",
        CellState::Running => "running",
        CellState::Error => "error",
        CellState::Stale => "stale",
        CellState::Blocked => "blocked",
    }
}

/// Why a code cell may not run (its text is shown to whoever asked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotRunnable {
    /// The cell itself is disabled.
    #[error("the cell is disabled")]
    Disabled { cell: String },
    /// The cell does not parse.
    #[error("{message}")]
    Syntax { cell: String, message: String },
    /// The cell defines names another cell also defines.
    #[error("it defines {} that another cell also defines", names.join(", "))]
    MultipleDefinitions { cell: String, names: Vec<String> },
    /// The cell is part of a dependency cycle.
    #[error("it is part of a dependency cycle")]
    Cycle { cell: String },
    /// A cell it depends on is disabled.
    #[error("it depends on a disabled cell")]
    DependsOnDisabled { cell: String, disabled: String },
}

impl NotRunnable {
    /// The cell that may not run.
    pub fn cell(&self) -> &str {
        match self {
            NotRunnable::Disabled { cell }
            | NotRunnable::Syntax { cell, .. }
            | NotRunnable::MultipleDefinitions { cell, .. }
            | NotRunnable::Cycle { cell }
            | NotRunnable::DependsOnDisabled { cell, .. } => cell,
        }
    }

    /// The cause a cell blocked for this reason shows.
    pub fn cause(&self) -> StateCause {
        match self {
            NotRunnable::Disabled { .. } => StateCause::Disabled,
            NotRunnable::DependsOnDisabled { disabled, .. } => StateCause::UpstreamDisabled {
                cell: disabled.clone(),
            },
            other => StateCause::Invalid {
                message: other.to_string(),
            },
        }
    }
}

/// Why `cell` may not run now, if it may not: it is disabled, has a graph error, or depends on
/// a disabled cell.
pub fn not_runnable(doc: &Document<'_>, cell: &str) -> Option<NotRunnable> {
    not_runnable_given(doc, cell, &doc.graph.ancestor_ids(cell))
}

/// [`not_runnable`], given the cell's ancestors.
fn not_runnable_given(doc: &Document<'_>, cell: &str, ancestors: &[&str]) -> Option<NotRunnable> {
    let disabled = |c: &str| doc.cells.get(c).is_some_and(|r| r.disabled);
    if disabled(cell) {
        return Some(NotRunnable::Disabled { cell: cell.into() });
    }
    if let Some(error) = doc.graph.get(cell).and_then(|g| g.error.as_ref()) {
        let cell = cell.to_owned();
        return Some(match error {
            GraphError::Syntax { message } => NotRunnable::Syntax {
                cell,
                message: message.clone(),
            },
            GraphError::MultipleDefinitions { names, .. } => NotRunnable::MultipleDefinitions {
                cell,
                names: names.clone(),
            },
            GraphError::Cycle { .. } => NotRunnable::Cycle { cell },
        });
    }
    ancestors
        .iter()
        .find(|a| disabled(a))
        .map(|disabled| NotRunnable::DependsOnDisabled {
            cell: cell.into(),
            disabled: (*disabled).to_owned(),
        })
}

/// The reactive run in progress and what each cell last ran (see the module docs).
#[derive(Debug, Default)]
pub struct Reactor {
    /// Cells the graph will run, in order, after the one in flight.
    plan: VecDeque<String>,
    /// The same cells, to ask "is it planned?" in constant time (a plan can hold a whole
    /// 20,000-cell notebook, and each finished cell asks it of all its dependents).
    planned: HashSet<String>,
    /// The plan holds every code cell (a run all): what a planned cell's success would add is
    /// planned already, so its dependents need not be looked at.
    covering: bool,
    /// The cell of the plan queued on the kernel now.
    in_flight: Option<String>,
    /// The source each cell last joined the kernel's queue with.
    last_run: HashMap<String, String>,
    /// The cell that was running when someone interrupted: if it still ends well, what
    /// depends on it does not run (an interrupt stops the whole run).
    stopped: Option<String>,
}

/// One decision step: the decisions so far, and the states they set (read back by later rules of
/// the same step, as the hub will have applied them).
struct Step<'d, 'a> {
    doc: &'d Document<'a>,
    states: HashMap<String, (CellState, Option<StateCause>)>,
    out: Vec<Decision>,
}

impl Step<'_, '_> {
    fn state(&self, cell: &str) -> Option<CellState> {
        self.states
            .get(cell)
            .map(|(s, _)| *s)
            .or_else(|| self.doc.cells.get(cell).map(|r| r.state))
    }

    fn cause(&self, cell: &str) -> Option<&StateCause> {
        match self.states.get(cell) {
            Some((_, cause)) => cause.as_ref(),
            None => self.doc.cells.get(cell).and_then(|r| r.cause.as_ref()),
        }
    }

    /// Sets a cell's state and cause (nothing for a cell that does not exist or is already
    /// there).
    fn set(&mut self, cell: &str, state: CellState, cause: Option<StateCause>) {
        let Some(now) = self.state(cell) else {
            return;
        };
        if now == state && self.cause(cell) == cause.as_ref() {
            return;
        }
        self.states.insert(cell.to_owned(), (state, cause.clone()));
        self.out.push(Decision::SetState {
            cell: cell.to_owned(),
            state,
            cause,
        });
    }

    /// Why `cell` may not run because of what is above it: the first cell it depends on that
    /// failed, else the first that did not run.
    fn upstream(&self, cell: &str) -> Option<StateCause> {
        self.upstream_given(&self.doc.graph.ancestor_ids(cell))
    }

    /// [`Step::upstream`], given the cell's ancestors.
    fn upstream_given(&self, ancestors: &[&str]) -> Option<StateCause> {
        if let Some(a) = ancestors
            .iter()
            .find(|a| self.state(a) == Some(CellState::Error))
        {
            return Some(StateCause::UpstreamFailed {
                cell: (*a).to_owned(),
            });
        }
        ancestors
            .iter()
            .find(|a| self.state(a) == Some(CellState::Blocked))
            .map(|a| StateCause::UpstreamNotRun {
                cell: (*a).to_owned(),
            })
    }

    /// Whether `cell` is waiting in the kernel's queue or running.
    fn busy(&self, cell: &str) -> bool {
        matches!(
            self.state(cell),
            Some(CellState::Queued | CellState::Running)
        )
    }
}

impl Reactor {
    /// Applies the rules to `event`; returns what to do, in order.
    pub fn decide(&mut self, doc: &Document<'_>, event: Event<'_>) -> Vec<Decision> {
        let mut step = Step {
            doc,
            states: HashMap::new(),
            out: Vec::new(),
        };
        match event {
            Event::Queued { cell, code } => {
                self.last_run.insert(cell.to_owned(), code.to_owned());
            }
            Event::Finished { cell, status } => self.finished(&mut step, cell, status),
            Event::Edited { cell, source } => self.edited(&mut step, cell, source),
            Event::Reparented { cells } => {
                for cell in cells {
                    if self.last_run.contains_key(cell.as_str()) {
                        Self::stale_from(&mut step, cell, StateCause::Reparented);
                    }
                }
            }
            Event::Deleted {
                cells,
                names,
                dependents,
            } => self.deleted(&mut step, cells, names, dependents),
            Event::RunAll => {
                let all: HashSet<String> = doc.graph.cells().iter().map(|c| c.id.clone()).collect();
                let skipped = self.plan_all(&mut step, &all, "run all");
                self.covering = !skipped && self.running();
            }
            Event::RunStale => {
                let stale: HashSet<String> = doc
                    .cells
                    .iter()
                    .filter(|(_, r)| r.state == CellState::Stale)
                    .map(|(id, _)| id.clone())
                    .collect();
                let skipped = self.plan_all(&mut step, &stale, "run stale");
                // After a restart every cell is stale: such a plan covers them all too.
                self.covering = !skipped
                    && self.running()
                    && doc.graph.cells().iter().all(|c| stale.contains(&c.id));
            }
            Event::Resume { cells } => {
                let order: Vec<String> = cells
                    .iter()
                    .filter(|c| step.state(c) != Some(CellState::Queued))
                    .cloned()
                    .collect();
                self.run(&mut step, order, "resume");
                // As in a run of every cell: a planned cell's success plans nothing more.
                self.covering = self.running();
            }
            Event::NewKernel { session } => {
                // Cells that ran elsewhere (another session, or before the document was saved)
                // show results the kernel does not have.
                let mut gone: Vec<&String> = doc
                    .cells
                    .iter()
                    .filter(|(_, r)| {
                        matches!(r.state, CellState::Idle | CellState::Error)
                            && match &r.last_run {
                                Some(run) => run.kernel_session != session,
                                None => r.execution_count.is_some(),
                            }
                    })
                    .map(|(id, _)| id)
                    .collect();
                gone.sort();
                for cell in gone {
                    step.set(cell, CellState::Stale, Some(StateCause::NotInKernel));
                }
            }
            // A person said stop: what the run had not reached yet does not run (it is stale,
            // for `run_stale`). The cell in flight ends through the kernel (interrupted, or
            // aborted if it had not started) and is handled when it finishes.
            Event::Interrupted => {
                self.stopped = self.in_flight.clone().or_else(|| {
                    doc.cells
                        .iter()
                        .find(|(_, r)| r.state == CellState::Running)
                        .map(|(id, _)| id.clone())
                });
                self.cancel(&mut step);
            }
            Event::Refused { cell } => {
                if self.in_flight.as_deref() == Some(cell) {
                    self.in_flight = None;
                }
                step.set(cell, CellState::Stale, Some(StateCause::Cancelled));
                self.cancel(&mut step);
            }
        }
        step.out
    }

    /// Whether `cell`'s execution is the reactive run's (not a person's).
    pub fn in_flight(&self, cell: &str) -> bool {
        self.in_flight.as_deref() == Some(cell)
    }

    /// Whether a reactive run is in progress (tests and metrics).
    pub fn running(&self) -> bool {
        self.in_flight.is_some() || !self.plan.is_empty()
    }

    /// A person asked to run `cells` (every cell, or the stale ones): they join the plan once
    /// each, in dependency order, merged with what it holds. Cells already waiting in the
    /// kernel's queue are not planned again; cells that may not run are blocked with why.
    /// Returns whether a cell was left out for waiting in the kernel's queue already.
    fn plan_all(&mut self, step: &mut Step<'_, '_>, cells: &HashSet<String>, after: &str) -> bool {
        let doc = step.doc;
        let mut order = Vec::new();
        let mut skipped = false;
        for cell in doc.graph.order_of(cells) {
            if step.state(&cell) == Some(CellState::Queued) {
                skipped = true;
                continue;
            }
            match not_runnable(doc, &cell) {
                Some(reason) => step.set(&cell, CellState::Blocked, Some(reason.cause())),
                None => order.push(cell),
            }
        }
        self.run(step, order, after);
        skipped
    }

    /// What a finished execution of `cell` means for the cells that depend on it.
    fn finished(&mut self, step: &mut Step<'_, '_>, cell: &str, status: ExecutionStatus) {
        let reactive = self.in_flight.as_deref() == Some(cell);
        if reactive {
            self.in_flight = None;
        }
        let stopped = self.stopped.as_deref() == Some(cell);
        if stopped {
            self.stopped = None;
        }
        let doc = step.doc;
        match status {
            // Interrupted as it succeeded: the run stops here all the same.
            ExecutionStatus::Ok if stopped => {}
            ExecutionStatus::Ok if reactive && self.covering => self.dispatch(step, cell),
            ExecutionStatus::Ok => {
                // What depends on it and is not already on its way (planned, or waiting in
                // the kernel's queue behind it) runs or goes stale.
                let (runnable, blocked): (Vec<String>, Vec<String>) = doc
                    .graph
                    .descendants(cell)
                    .into_iter()
                    .filter(|d| {
                        !step.busy(d)
                            && !self.planned.contains(d)
                            && self.in_flight.as_deref() != Some(d.as_str())
                    })
                    .partition(|d| not_runnable(doc, d).is_none());
                for d in blocked {
                    if let Some(reason) = not_runnable(doc, &d) {
                        step.set(&d, CellState::Blocked, Some(reason.cause()));
                    }
                }
                match doc.mode {
                    Reactivity::Lazy => {
                        for d in runnable {
                            step.set(
                                &d,
                                CellState::Stale,
                                Some(StateCause::UpstreamChanged {
                                    cell: cell.to_owned(),
                                }),
                            );
                        }
                        self.dispatch(step, cell);
                    }
                    Reactivity::Autorun => self.run(step, runnable, cell),
                }
            }
            ExecutionStatus::Aborted => {
                // It never ran: held back by a failure upstream, or simply cancelled.
                match step.upstream(cell) {
                    Some(cause) => step.set(cell, CellState::Blocked, Some(cause)),
                    None => step.set(cell, CellState::Stale, Some(StateCause::Cancelled)),
                }
                if reactive {
                    // Interrupted or restarted before it ran: the rest of the plan is cancelled.
                    self.cancel(step);
                }
            }
            ExecutionStatus::Interrupted => {
                self.block_dependents(step, cell);
                // An interrupt stops the whole run, not only the cell it hit.
                self.cancel(step);
            }
            ExecutionStatus::Error | ExecutionStatus::TimedOut | ExecutionStatus::KernelDied => {
                // A failure holds back what depends on it; the rest of the run goes on.
                self.block_dependents(step, cell);
                self.dispatch(step, cell);
            }
        }
    }

    /// Marks what depends on `cell` blocked (except what is queued or running already) and takes
    /// it out of the plan.
    fn block_dependents(&mut self, step: &mut Step<'_, '_>, cell: &str) {
        let descendants = step.doc.graph.descendants(cell);
        for d in &descendants {
            self.planned.remove(d);
        }
        let planned = &self.planned;
        self.plan.retain(|c| planned.contains(c));
        let cause = StateCause::UpstreamFailed {
            cell: cell.to_owned(),
        };
        for d in descendants {
            if !step.busy(&d) {
                step.set(&d, CellState::Blocked, Some(cause.clone()));
            }
        }
    }

    /// An edited cell that ran before with another source, and whatever depends on it, is stale.
    fn edited(&mut self, step: &mut Step<'_, '_>, cell: &str, source: &str) {
        let ran = self.last_run.get(cell);
        if ran.is_none_or(|r| r == source) {
            return;
        }
        Self::stale_from(step, cell, StateCause::Edited);
    }

    /// A cell that has run and what depends on it no longer show what the code would give.
    fn stale_from(step: &mut Step<'_, '_>, cell: &str, why: StateCause) {
        let upstream = StateCause::UpstreamChanged {
            cell: cell.to_owned(),
        };
        let mut cells = vec![(cell.to_owned(), why)];
        cells.extend(
            step.doc
                .graph
                .descendants(cell)
                .into_iter()
                .map(|d| (d, upstream.clone())),
        );
        for (c, cause) in cells {
            if matches!(
                step.state(&c),
                Some(CellState::Idle | CellState::Error | CellState::Blocked)
            ) {
                step.set(&c, CellState::Stale, Some(cause));
            }
        }
    }

    /// A deleted cell's names leave the kernel; its dependents re-run (and fail) or go stale.
    fn deleted(
        &mut self,
        step: &mut Step<'_, '_>,
        cells: &[String],
        names: &[String],
        dependents: &[String],
    ) {
        for c in cells {
            self.last_run.remove(c);
        }
        // Every name it defined is still defined elsewhere: nothing depends on it alone.
        if names.is_empty() {
            return;
        }
        step.out.push(Decision::Forget {
            names: names.to_vec(),
        });
        match step.doc.mode {
            Reactivity::Lazy => {
                for c in dependents {
                    step.set(c, CellState::Stale, Some(StateCause::Reparented));
                }
            }
            Reactivity::Autorun => self.run(step, dependents.to_vec(), "a deleted cell"),
        }
    }

    /// Adds cells to the plan, keeps the plan in dependency order, and starts the next one.
    fn run(&mut self, step: &mut Step<'_, '_>, cells: Vec<String>, after: &str) {
        let before = self.plan.len();
        for cell in cells {
            if self.in_flight.as_deref() != Some(cell.as_str()) && self.planned.insert(cell.clone())
            {
                self.plan.push_back(cell);
            }
        }
        // Merged plans (a run all, then what autorun adds) still run each cell after what it
        // depends on.
        if before > 0 && self.plan.len() > before {
            self.plan = step.doc.graph.order_of(&self.planned).into();
            self.planned = self.plan.iter().cloned().collect();
        }
        self.dispatch(step, after);
    }

    /// Queues the next runnable cell of the plan, unless one is in flight; cells whose upstream
    /// failed or did not run, or that may not run, are blocked on the way.
    fn dispatch(&mut self, step: &mut Step<'_, '_>, after: &str) {
        while self.in_flight.is_none() {
            let Some(cell) = self.plan.pop_front() else {
                self.covering = false;
                return;
            };
            self.planned.remove(&cell);
            // Only code cells are in the graph: one deleted, or no longer code, is skipped.
            if step.doc.graph.get(&cell).is_none() {
                continue;
            }
            // One walk of what it depends on serves both questions.
            let ancestors = step.doc.graph.ancestor_ids(&cell);
            let held = not_runnable_given(step.doc, &cell, &ancestors)
                .map(|reason| reason.cause())
                .or_else(|| step.upstream_given(&ancestors));
            if let Some(cause) = held {
                step.set(&cell, CellState::Blocked, Some(cause));
                continue;
            }
            self.in_flight = Some(cell.clone());
            step.out.push(Decision::Run {
                cell,
                after: after.to_owned(),
            });
        }
    }

    /// Cancels the rest of the plan: those cells become stale.
    fn cancel(&mut self, step: &mut Step<'_, '_>) {
        self.planned.clear();
        self.covering = false;
        for c in std::mem::take(&mut self.plan) {
            step.set(&c, CellState::Stale, Some(StateCause::Cancelled));
        }
    }
}

#[cfg(test)]
mod tests;
