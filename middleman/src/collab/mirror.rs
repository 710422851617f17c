//! The execution mirror: the kernel session's events applied to the document. Outputs land in
//! the cell that ran (stream chunks merged as nbformat stores them), cells follow their
//! executions' states, and the kernel's state, the queue and the pending prompt are kept for
//! snapshots. Pure logic over the document; the hub sequences and broadcasts the events.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::document::{CellState, Notebook};
use crate::protocol::{
    ExecutionStatus, ExecutionSummary, KernelState, Output, PendingInput, RunRecord, ServerEvent,
};

/// Executions whose cells are remembered, so late output still lands on the right cell.
const RECENT_EXECUTIONS: usize = 64;

/// What the kernel is doing, as far as the document is concerned.
#[derive(Debug)]
pub(super) struct Mirror {
    pub(super) kernel_state: KernelState,
    /// The running execution, then the queue.
    pub(super) executions: Vec<ExecutionSummary>,
    /// The prompt waiting for an answer.
    pub(super) input: Option<PendingInput>,
    /// The kernel session running now (results of cells run in another are not in the kernel).
    pub(super) kernel_session: String,
    /// The cell of each recent execution, and who queued it.
    exec_cells: HashMap<String, (String, String)>,
    exec_order: VecDeque<String>,
    /// Cells whose outputs are cleared when their next output arrives (`clear_output(wait)`).
    clear_pending: HashSet<String>,
}

/// What an event did to the document.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Applied {
    /// Cell events it implies, sent after it.
    pub(super) follow: Vec<ServerEvent>,
    /// Whether the saved document changed.
    pub(super) changed: bool,
    /// An execution of a cell joined the queue: the cell and its code.
    pub(super) queued: Option<(String, String)>,
    /// An execution of a cell ended: the cell, how, and who had queued it.
    pub(super) finished: Option<(String, ExecutionStatus, String)>,
    /// A new kernel session began (its id).
    pub(super) new_kernel: Option<String>,
}

impl Default for Mirror {
    fn default() -> Self {
        Self {
            kernel_state: KernelState::Starting,
            executions: Vec::new(),
            input: None,
            kernel_session: String::new(),
            exec_cells: HashMap::new(),
            exec_order: VecDeque::new(),
            clear_pending: HashSet::new(),
        }
    }
}

impl Mirror {
    /// Records a kernel event in the document; `now_ms` is the time it happened (milliseconds
    /// since the Unix epoch), for the cells' last runs.
    pub(super) fn apply(&mut self, nb: &mut Notebook, event: &ServerEvent, now_ms: u64) -> Applied {
        let mut applied = Applied::default();
        match event {
            ServerEvent::KernelStatus {
                state,
                kernel_session,
                ..
            } => {
                self.kernel_state = *state;
                if let Some(session) = kernel_session {
                    self.kernel_session.clone_from(session);
                    applied.new_kernel = Some(session.clone());
                }
            }
            ServerEvent::Queue { executions } => self.executions = executions.clone(),
            ServerEvent::ExecutionQueued { execution, .. } => {
                if let Some(cell) = &execution.cell_id {
                    self.exec_cells
                        .insert(execution.id.clone(), (cell.clone(), execution.by.clone()));
                    self.exec_order.push_back(execution.id.clone());
                    while self.exec_order.len() > RECENT_EXECUTIONS {
                        if let Some(old) = self.exec_order.pop_front() {
                            self.exec_cells.remove(&old);
                        }
                    }
                    set_state(nb, cell, CellState::Queued, None, None, &mut applied.follow);
                    applied.queued = Some((cell.clone(), execution.code.clone()));
                }
            }
            ServerEvent::ExecutionStarted { execution_id } => {
                if let Some(cell) = self.cell_of(execution_id)
                    && nb.clear_outputs(&cell).is_ok()
                {
                    self.clear_pending.remove(&cell);
                    applied.follow.push(ServerEvent::OutputsCleared {
                        cell_id: cell.clone(),
                    });
                    set_state(
                        nb,
                        &cell,
                        CellState::Running,
                        None,
                        None,
                        &mut applied.follow,
                    );
                }
            }
            ServerEvent::Output {
                execution_id,
                output,
            } => {
                if let Some(cell) = self.cell_of(execution_id) {
                    let pending_clear = self.clear_pending.remove(&cell);
                    if let Ok(r) = nb.runtime_mut(&cell) {
                        if pending_clear {
                            r.outputs.clear();
                        }
                        push_output(&mut r.outputs, output.clone());
                        applied.changed = true;
                    }
                }
            }
            ServerEvent::UpdateDisplay {
                display_id,
                data,
                metadata,
                ..
            } => {
                for r in nb.runtimes_mut() {
                    for o in &mut r.outputs {
                        if let Output::DisplayData {
                            data: d,
                            metadata: m,
                            display_id: Some(id),
                        } = o
                            && id == display_id
                        {
                            *d = data.clone();
                            *m = metadata.clone();
                            applied.changed = true;
                        }
                    }
                }
            }
            ServerEvent::ClearOutput { execution_id, wait } => {
                if let Some(cell) = self.cell_of(execution_id) {
                    if *wait {
                        self.clear_pending.insert(cell);
                    } else if let Ok(r) = nb.runtime_mut(&cell) {
                        r.outputs.clear();
                        applied.changed = true;
                    }
                }
            }
            ServerEvent::OutputTruncated { execution_id, .. } => {
                if let Some(cell) = self.cell_of(execution_id)
                    && let Ok(r) = nb.runtime_mut(&cell)
                {
                    r.truncated = true;
                    applied.changed = true;
                }
            }
            ServerEvent::InputRequest {
                execution_id,
                prompt,
                password,
            } => {
                self.input = Some(PendingInput {
                    execution_id: execution_id.clone(),
                    prompt: prompt.clone(),
                    password: *password,
                });
            }
            ServerEvent::InputResolved { execution_id, .. } => self.prompt_ended(execution_id),
            ServerEvent::ExecutionFinished {
                execution_id,
                status,
                execution_count,
                duration_ms,
                ..
            } => {
                self.prompt_ended(execution_id);
                if let Some((cell, by)) = self.exec_cells.get(execution_id).cloned() {
                    let state = match status {
                        ExecutionStatus::Ok | ExecutionStatus::Aborted => CellState::Idle,
                        _ => CellState::Error,
                    };
                    // An aborted execution never ran: the cell's last run is the one before.
                    let ran = (*status != ExecutionStatus::Aborted).then(|| RunRecord {
                        by: by.clone(),
                        at_ms: now_ms,
                        duration_ms: *duration_ms,
                        kernel_session: self.kernel_session.clone(),
                    });
                    let count = *execution_count;
                    set_state(nb, &cell, state, count, ran, &mut applied.follow);
                    applied.finished = Some((cell, *status, by));
                }
            }
            _ => {}
        }
        if !applied.follow.is_empty() {
            applied.changed = true;
        }
        applied
    }

    fn cell_of(&self, execution_id: &str) -> Option<String> {
        self.exec_cells
            .get(execution_id)
            .map(|(cell, _)| cell.clone())
    }

    fn prompt_ended(&mut self, execution_id: &str) {
        if self
            .input
            .as_ref()
            .is_some_and(|i| i.execution_id == execution_id)
        {
            self.input = None;
        }
    }
}

/// Sets a cell's state (and count and last run, when given) and announces it.
fn set_state(
    nb: &mut Notebook,
    cell: &str,
    state: CellState,
    execution_count: Option<u64>,
    last_run: Option<RunRecord>,
    follow: &mut Vec<ServerEvent>,
) {
    let Ok(r) = nb.runtime_mut(cell) else {
        return;
    };
    r.state = state;
    // Queued, running, idle or failed: the cell's own run says why.
    r.cause = None;
    if execution_count.is_some() {
        r.execution_count = execution_count;
    }
    if last_run.is_some() {
        r.last_run.clone_from(&last_run);
    }
    follow.push(ServerEvent::CellState {
        cell_id: cell.to_owned(),
        state,
        execution_count: r.execution_count,
        cause: None,
        last_run,
    });
}

/// Appends an output, merging a stream chunk into the previous output of the same stream (as
/// nbformat stores them).
fn push_output(outputs: &mut Vec<Output>, output: Output) {
    if let Output::Stream { name, text } = &output
        && let Some(Output::Stream {
            name: last_name,
            text: last_text,
        }) = outputs.last_mut()
        && last_name == name
    {
        last_text.push_str(text);
        return;
    }
    outputs.push(output);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::StreamName;

    fn queued(id: &str, cell: &str) -> ServerEvent {
        ServerEvent::ExecutionQueued {
            execution: ExecutionSummary {
                id: id.into(),
                cell_id: Some(cell.into()),
                by: "ada".into(),
                code: "print(1)".into(),
                running: false,
            },
            request_id: None,
        }
    }

    fn stream(id: &str, name: StreamName, text: &str) -> ServerEvent {
        ServerEvent::Output {
            execution_id: id.into(),
            output: Output::Stream {
                name,
                text: text.into(),
            },
        }
    }

    fn finished(id: &str, status: ExecutionStatus) -> ServerEvent {
        ServerEvent::ExecutionFinished {
            execution_id: id.into(),
            status,
            execution_count: Some(3),
            duration_ms: 1,
            reason: None,
        }
    }

    #[test]
    fn a_cell_follows_its_execution_and_keeps_its_outputs_as_nbformat_does() {
        let mut nb = Notebook::new();
        let cell = nb.cells()[0].id.clone();
        let mut m = Mirror::default();
        let a = m.apply(&mut nb, &queued("x1", &cell), 1_000);
        assert_eq!(a.queued, Some((cell.clone(), "print(1)".into())));
        assert_eq!(nb.runtimes()[&cell].state, CellState::Queued);
        let started = m.apply(
            &mut nb,
            &ServerEvent::ExecutionStarted {
                execution_id: "x1".into(),
            },
            1_000,
        );
        assert!(matches!(
            started.follow[..],
            [
                ServerEvent::OutputsCleared { .. },
                ServerEvent::CellState {
                    state: CellState::Running,
                    ..
                }
            ]
        ));
        m.apply(&mut nb, &stream("x1", StreamName::Stdout, "a"), 1_000);
        m.apply(&mut nb, &stream("x1", StreamName::Stdout, "b"), 1_000);
        m.apply(&mut nb, &stream("x1", StreamName::Stderr, "c"), 1_000);
        // An execution without a cell (a console) leaves the document alone.
        assert!(
            !m.apply(&mut nb, &stream("x9", StreamName::Stdout, "z"), 1_000)
                .changed
        );
        let done = m.apply(&mut nb, &finished("x1", ExecutionStatus::Error), 1_000);
        assert_eq!(
            done.finished,
            Some((cell.clone(), ExecutionStatus::Error, "ada".into()))
        );
        let r = &nb.runtimes()[&cell];
        let ran = r.last_run.as_ref().expect("a finished run is recorded");
        assert_eq!(
            (ran.by.as_str(), ran.at_ms, ran.duration_ms),
            ("ada", 1_000, 1)
        );
        assert!(matches!(
            &done.follow[..],
            [ServerEvent::CellState {
                last_run: Some(_),
                cause: None,
                ..
            }]
        ));
        assert_eq!(r.state, CellState::Error);
        assert_eq!(r.execution_count, Some(3));
        assert_eq!(
            r.outputs,
            vec![
                Output::Stream {
                    name: StreamName::Stdout,
                    text: "ab".into()
                },
                Output::Stream {
                    name: StreamName::Stderr,
                    text: "c".into()
                }
            ]
        );
    }

    #[test]
    fn clear_output_wait_clears_when_the_next_output_arrives() {
        let mut nb = Notebook::new();
        let cell = nb.cells()[0].id.clone();
        let mut m = Mirror::default();
        m.apply(&mut nb, &queued("x1", &cell), 1_000);
        m.apply(&mut nb, &stream("x1", StreamName::Stdout, "old"), 1_000);
        m.apply(
            &mut nb,
            &ServerEvent::ClearOutput {
                execution_id: "x1".into(),
                wait: true,
            },
            1_000,
        );
        assert_eq!(nb.runtimes()[&cell].outputs.len(), 1, "not yet");
        m.apply(&mut nb, &stream("x1", StreamName::Stdout, "new"), 1_000);
        assert_eq!(
            nb.runtimes()[&cell].outputs,
            vec![Output::Stream {
                name: StreamName::Stdout,
                text: "new".into()
            }]
        );
    }

    #[test]
    fn aborted_cells_end_idle_and_prompts_end_with_their_execution() {
        let mut nb = Notebook::new();
        let cell = nb.cells()[0].id.clone();
        let mut m = Mirror::default();
        m.apply(&mut nb, &queued("x1", &cell), 1_000);
        m.apply(
            &mut nb,
            &ServerEvent::InputRequest {
                execution_id: "x1".into(),
                prompt: "name? ".into(),
                password: false,
            },
            1_000,
        );
        assert!(m.input.is_some());
        m.apply(&mut nb, &finished("x1", ExecutionStatus::Aborted), 1_000);
        assert!(m.input.is_none());
        assert_eq!(nb.runtimes()[&cell].state, CellState::Idle);
        assert!(
            nb.runtimes()[&cell].last_run.is_none(),
            "an aborted execution never ran"
        );
    }

    #[test]
    fn a_new_kernel_session_is_recorded_and_reported() {
        let mut nb = Notebook::new();
        let mut m = Mirror::default();
        let a = m.apply(
            &mut nb,
            &ServerEvent::KernelStatus {
                state: KernelState::Idle,
                reason: None,
                kernel_session: Some("k2".into()),
            },
            1_000,
        );
        assert_eq!(a.new_kernel.as_deref(), Some("k2"));
        assert_eq!(m.kernel_session, "k2");
    }
}
