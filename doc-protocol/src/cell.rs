//! Cells as clients see them: kind, state, the runtime part kept outside the CRDT, and the
//! document's reactivity mode.

use serde::{Deserialize, Serialize};

use crate::Output;

/// Code or markdown (raw cells import as markdown-like text and export back as raw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    Code,
    Markdown,
    Raw,
}

impl CellKind {
    /// The name used on the wire, in the CRDT and in `.ipynb` files.
    pub fn as_str(self) -> &'static str {
        match self {
            CellKind::Code => "code",
            CellKind::Markdown => "markdown",
            CellKind::Raw => "raw",
        }
    }

    /// The kind named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "code" => Some(CellKind::Code),
            "markdown" => Some(CellKind::Markdown),
            "raw" => Some(CellKind::Raw),
            _ => None,
        }
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
