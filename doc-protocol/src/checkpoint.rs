//! What clients are told about checkpoints: a document that came back on a new kernel with its
//! state (once per resume), and checkpoints that cannot be saved (and then can again).

use serde::{Deserialize, Serialize};

/// A resume from the checkpoint: what was restored, which cells run again to rebuild the rest
/// and why, what is lost. Sent once as `resumed`, and kept in the snapshot for whoever joins
/// later (until the kernel restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Resume {
    pub restored: Vec<RestoredNames>,
    pub rerun: Vec<RerunCell>,
    pub lost: Vec<LostName>,
    /// Set when the checkpoint could not be used at all (corrupt, or another document's):
    /// the cells that had run are run again instead, and this says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Workspace files written back from the checkpoint.
    #[serde(default)]
    pub files_restored: u32,
    /// Workspace files that could not be (past the cap, unreadable), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_lost: Vec<LostFile>,
}

/// A workspace file not brought back, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LostFile {
    pub path: String,
    pub reason: String,
}

/// Names brought back from the checkpoint, by the cell that defined them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RestoredNames {
    /// The cell, or none for names made outside cells (a console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    pub names: Vec<String>,
}

/// A cell run again on resume to rebuild names the checkpoint could not bring back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct RerunCell {
    pub cell_id: String,
    /// The names it rebuilds (empty when it runs only because a cell after it needs it).
    pub names: Vec<String>,
    /// Why they could not be restored ("TypeError: cannot pickle 'generator' object").
    pub reason: String,
}

/// A name neither restored nor rebuilt (no cell defines it any more), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct LostName {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_id: Option<String>,
    pub reason: String,
}
