//! Outputs, in nbformat 4's shape.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One output, in nbformat 4 shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "output_type", rename_all = "snake_case")]
pub enum Output {
    Stream {
        name: StreamName,
        text: String,
    },
    DisplayData {
        #[cfg_attr(feature = "ts", ts(type = "MimeBundle"))]
        data: Map<String, Value>,
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
        metadata: Map<String, Value>,
        /// Kept outside nbformat's fields so later `update_display` messages can find it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_id: Option<String>,
    },
    ExecuteResult {
        /// Null in notebooks saved without one (nbformat allows it).
        execution_count: Option<u64>,
        #[cfg_attr(feature = "ts", ts(type = "MimeBundle"))]
        data: Map<String, Value>,
        #[serde(default)]
        #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
        metadata: Map<String, Value>,
    },
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    /// An output of an imported notebook that the document does not model (an output type of
    /// a newer nbformat, a stream other than stdout and stderr): kept as it was and written back
    /// on export; clients need not render it.
    Unknown {
        #[cfg_attr(feature = "ts", ts(type = "Record<string, unknown>"))]
        output: Map<String, Value>,
    },
}

/// Which stream a `stream` output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}
