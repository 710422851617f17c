//! Cells as clients see them: kind, state, the runtime part kept outside the CRDT, and the
//! document's reactivity mode.

use serde::{Deserialize, Serialize};

use crate::Output;

/// Code, SQL or markdown (raw cells import as markdown-like text and export back as raw).
///
/// A SQL cell runs its query with DuckDB in the kernel, against the DataFrames in scope and the
/// files in the workspace. A first line `-- result: name` binds the result (a DataFrame) to
/// `name` for the cells that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    Code,
    Sql,
    Markdown,
    Raw,
}

impl CellKind {
    /// The name used on the wire, in the CRDT and in `.ipynb` files.
    pub fn as_str(self) -> &'static str {
        match self {
            CellKind::Code => "code",
            CellKind::Sql => "sql",
            CellKind::Markdown => "markdown",
            CellKind::Raw => "raw",
        }
    }

    /// The kind named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "code" => Some(CellKind::Code),
            "sql" => Some(CellKind::Sql),
            "markdown" => Some(CellKind::Markdown),
            "raw" => Some(CellKind::Raw),
            _ => None,
        }
    }

    /// Whether cells of this kind run in the kernel (code and SQL).
    pub fn runs(self) -> bool {
        matches!(self, CellKind::Code | CellKind::Sql)
    }
}

/// Where a code cell is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum CellState {
    #[default]
    Idle,
    Queued,
    Running,
    Error,
    /// Its source, or something it depends on, changed since it last ran.
    Stale,
    /// Something it depends on failed, or is disabled, so it did not run.
    Blocked,
}

/// Everything about a cell that is not collaborative text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CellRuntime {
    #[serde(default)]
    pub outputs: Vec<Output>,
    #[serde(default)]
    pub execution_count: Option<u64>,
    #[serde(default)]
    pub state: CellState,
    /// The last execution's output passed its byte cap; later output was dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// A disabled cell does not run, and blocks the cells that depend on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Why the cell is stale or blocked (absent in other states).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<StateCause>,
    /// Who ran it last, when, for how long, on which kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunRecord>,
}

/// Why a cell is stale or blocked: what a person needs to know to fix it. Cells are named by
/// id; clients show them by position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateCause {
    /// Its source changed since it ran.
    Edited,
    /// `cell`, which it depends on, changed (or ran again, in lazy mode).
    UpstreamChanged { cell: String },
    /// It now reads its names from other cells (a move, the graph rule, a deleted cell).
    Reparented,
    /// `cell`, which it depends on, failed.
    UpstreamFailed { cell: String },
    /// `cell`, which it depends on, did not run (refused, blocked or cancelled).
    UpstreamNotRun { cell: String },
    /// The cell itself may not run: `message` says why (a syntax error, a name defined in two
    /// cells, a cycle).
    Invalid { message: String },
    /// The cell is disabled.
    Disabled,
    /// `cell`, which it depends on, is disabled.
    UpstreamDisabled { cell: String },
    /// A run that would have reached it was interrupted, or the kernel refused it.
    Cancelled,
    /// Its results are not in the kernel: the kernel restarted, or the document came back on a
    /// new kernel, since it ran.
    NotInKernel,
}

/// The last run of a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RunRecord {
    /// The display name of whoever ran it ("graph" runs name who started the chain).
    pub by: String,
    /// When it finished, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub duration_ms: u64,
    /// The kernel session that ran it (see `Snapshot::kernel_session`): results from another
    /// session are not in the kernel.
    pub kernel_session: String,
}

/// A cell as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CellView {
    pub id: String,
    pub kind: CellKind,
    pub source: String,
    #[serde(flatten)]
    pub runtime: CellRuntime,
    /// In a welcome snapshot: this cell's outputs were left out to keep the snapshot small
    /// (`outputs` is empty); `fetch_outputs` brings them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<DeferredOutputs>,
}

/// What a snapshot left out of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct DeferredOutputs {
    /// How many outputs.
    pub count: u32,
    /// About how many bytes of JSON they take.
    pub bytes: u64,
}

/// A cell's id and type, as listed in [`crate::ServerEvent::Cells`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CellHeader {
    pub id: String,
    pub cell_type: CellKind,
}

/// How the graph resolves a name that several cells define.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum GraphRule {
    /// A reference depends on the nearest cell above that defines the name (as in Deepnote and
    /// Hex): redefinitions and `x = x + 1` chains run in document order, and there are no
    /// cycles. Notebooks written for Jupyter run as they are.
    #[default]
    Positional,
    /// Each global name is defined in one cell and order does not matter (as in marimo): a
    /// name defined in several cells, and a cycle, are errors.
    Strict,
}

/// How the document reacts when a cell runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Reactivity {
    /// Running a cell runs the cells that depend on it.
    #[default]
    Autorun,
    /// Dependents are marked stale; `run_stale` brings them up to date.
    Lazy,
}
