//! The dependency graph as every collaborator sees it (`docs/reactivity.md`).

use serde::{Deserialize, Serialize};

/// What is wrong with a cell's place in the graph; such a cell does not run until fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GraphError {
    /// The cell does not parse.
    Syntax { message: String },
    /// These global names are also defined by other cells.
    MultipleDefinitions {
        names: Vec<String>,
        cells: Vec<String>,
    },
    /// The cell is part of a dependency cycle with these cells.
    Cycle { cells: Vec<String> },
}

/// One cell as every collaborator sees it in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct GraphCell {
    pub id: String,
    pub defs: Vec<String>,
    /// Global names it reads that it does not define itself.
    pub refs: Vec<String>,
    /// Cells it depends on, and cells that depend on it (document order).
    pub parents: Vec<String>,
    pub children: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<GraphError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
