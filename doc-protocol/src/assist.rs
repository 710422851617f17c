//! Questions a client asks the kernel on the side, answered to that connection only: completion
//! and inspection as the user types, and pages of a table output. They never wait behind a
//! running cell (Middleman asks on a kernel subshell when the kernel has them, and otherwise
//! refuses at once while the kernel is busy), and they are rate-limited per connection.
//!
//! Offsets (`cursor`, `cursor_start`, `cursor_end`) count UTF-16 code units, as JavaScript
//! strings and Yjs text do; Middleman converts them to the code points Jupyter counts.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The MIME type of a table output: what a kernel displays for a DataFrame (besides its own
/// `text/html` for other clients). Its data is a [`TableOutput`].
pub const TABLE_MIME: &str = "application/vnd.nbplat.table+json";

/// The data of a [`TABLE_MIME`] output: the table's shape and its first page. Later pages come
/// from the kernel with `table_page`, while the kernel still holds the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TableOutput {
    /// The kernel's handle for the table (valid while that kernel runs and keeps it).
    pub table: String,
    pub columns: Vec<TableColumn>,
    /// Rows in the whole table.
    pub row_count: u64,
    /// The index's name(s) when it carries information (not a plain 0..n range).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub index: Vec<String>,
    /// The first rows: one array per row, index values first, then one value per column.
    #[cfg_attr(feature = "ts", ts(type = "Array<Array<unknown>>"))]
    pub rows: Vec<Vec<Value>>,
}

/// A column of a table output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TableColumn {
    pub name: String,
    /// The column's type as the kernel names it (`int64`, `float64`, `object`, `datetime64[ns]`).
    #[serde(rename = "type")]
    pub dtype: String,
}

/// The order a page is asked in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct TableSort {
    pub column: String,
    #[serde(default)]
    pub descending: bool,
}

/// One completion candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Completion {
    pub text: String,
    /// What it is, as the kernel says (`function`, `instance`, `module`, `keyword`, `column`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<String>,
    /// A callable's signature, when the kernel gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The answer to a side question. Exactly one of the answer's fields is set, or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AssistAnswer {
    /// Candidates replacing `cursor_start..cursor_end` of the code asked about.
    Complete {
        matches: Vec<Completion>,
        cursor_start: u32,
        cursor_end: u32,
    },
    /// What the kernel knows about the name at the cursor: text with ANSI colours, empty when
    /// it knows nothing.
    Inspect { found: bool, text: String },
    /// Rows `offset..offset + rows.len()` of `table` in the order asked.
    TablePage {
        table: String,
        offset: u64,
        row_count: u64,
        #[cfg_attr(feature = "ts", ts(type = "Array<Array<unknown>>"))]
        rows: Vec<Vec<Value>>,
    },
    /// The question could not be answered now; `message` says why.
    Refused {
        reason: AssistRefusal,
        message: String,
    },
}

/// Why a side question was not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum AssistRefusal {
    /// The kernel is running a cell and has no subshell to answer beside it.
    Busy,
    /// This connection asks too often; the next question will be answered.
    RateLimited,
    /// The kernel is starting, restarting or dead.
    NoKernel,
    /// The kernel did not answer in time.
    Timeout,
    /// The table is no longer in the kernel (a restart, or too many tables since).
    Gone,
    /// The kernel answered with an error (`message` has it).
    Failed,
    /// This connection's role may not ask it (viewers page tables; they do not complete).
    Forbidden,
}
