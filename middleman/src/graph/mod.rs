//! The reactive cell graph: what each cell defines and references (static analysis with a
//! real Python parser), the dependency edges between cells, and the rules that decide what runs.

pub mod analysis;

pub use analysis::{CellAnalysis, analyse};
