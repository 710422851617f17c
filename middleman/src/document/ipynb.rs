//! `.ipynb` (nbformat 4.5, with cell ids) import and export.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::notebook::new_cell_id;
use super::{CellKind, DocumentError, Notebook};
use crate::protocol::{KernelDescription, Output};

/// The document as an nbformat 4.5 notebook.
pub fn export(nb: &Notebook, kernel: &KernelDescription) -> Value {
    let cells: Vec<Value> = nb
        .cells()
        .into_iter()
        .map(|c| {
            let mut cell = json!({
                "id": c.id,
                "cell_type": match c.kind { CellKind::Code => "code", CellKind::Markdown => "markdown", CellKind::Raw => "raw" },
                "metadata": {},
                "source": c.source,
            });
            if c.kind == CellKind::Code {
                cell["execution_count"] = c.runtime.execution_count.map_or(Value::Null, Value::from);
                cell["outputs"] = Value::Array(c.runtime.outputs.iter().map(output_json).collect());
            }
            cell
        })
        .collect();
    json!({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": { "name": kernel.name, "display_name": kernel.display_name, "language": kernel.language },
            "language_info": { "name": kernel.language },
        },
        "cells": cells,
    })
}

/// nbformat's output shape: ours minus the display id, which nbformat keeps out of the file.
fn output_json(o: &Output) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.remove("display_id");
    }
    v
}

/// Joins nbformat's multi-line form (an array of strings) into one string.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

fn normalise_bundle(data: &mut Map<String, Value>) {
    for (mime, value) in data.iter_mut() {
        if !mime.ends_with("json")
            && let Some(text) = text_of(value)
        {
            *value = Value::String(text);
        }
    }
}

fn parse_output(v: &Value) -> Option<Output> {
    let mut v = v.clone();
    let obj = v.as_object_mut()?;
    if let Some(text) = obj.get("text").and_then(text_of) {
        obj.insert("text".into(), Value::String(text));
    }
    if let Some(Value::Object(data)) = obj.get_mut("data") {
        normalise_bundle(data);
    }
    serde_json::from_value(v).ok()
}

/// A document from an nbformat 4 notebook. Invalid or duplicate cell ids are replaced, missing
/// ones (nbformat < 4.5) generated; outputs of unknown shape are dropped.
pub fn import(json: &Value) -> Result<Notebook, DocumentError> {
    let bad = |m: &str| DocumentError::BadNotebook(m.to_owned());
    if json.get("nbformat").and_then(Value::as_u64) != Some(4) {
        return Err(bad("nbformat must be 4"));
    }
    let cells = json
        .get("cells")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no cells array"))?;
    let mut nb = Notebook::empty();
    let mut seen = HashSet::new();
    for (i, cell) in cells.iter().enumerate() {
        let kind = match cell.get("cell_type").and_then(Value::as_str) {
            Some("code") => CellKind::Code,
            Some("markdown") => CellKind::Markdown,
            Some("raw") => CellKind::Raw,
            other => {
                return Err(DocumentError::BadNotebook(format!(
                    "cell {i}: unknown cell_type {other:?}"
                )));
            }
        };
        let source = cell.get("source").and_then(text_of).unwrap_or_default();
        let id = cell
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| {
                (1..=64).contains(&id.len())
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    && !seen.contains(*id)
            })
            .map_or_else(new_cell_id, str::to_owned);
        seen.insert(id.clone());
        let index = nb.len();
        nb.insert_cell_with_id(index, &id, kind, &source)?;
        if kind == CellKind::Code {
            let runtime = nb.runtime_mut(&id)?;
            runtime.execution_count = cell.get("execution_count").and_then(Value::as_u64);
            runtime.outputs = cell
                .get("outputs")
                .and_then(Value::as_array)
                .map(|outs| outs.iter().filter_map(parse_output).collect())
                .unwrap_or_default();
        }
    }
    if nb.is_empty() {
        nb.insert_cell(0, CellKind::Code, "")?;
    }
    Ok(nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_sources_and_outputs_import() {
        let json = json!({
            "nbformat": 4, "nbformat_minor": 4, "metadata": {},
            "cells": [
                {"cell_type": "code", "metadata": {}, "source": ["x = 1\n", "x"], "execution_count": 3,
                 "outputs": [{"output_type": "stream", "name": "stdout", "text": ["a\n", "b\n"]},
                             {"output_type": "execute_result", "execution_count": 3, "metadata": {}, "data": {"text/plain": ["1"]}},
                             {"output_type": "mystery"}]},
                {"cell_type": "markdown", "id": "bad id!", "metadata": {}, "source": "# T"}
            ]
        });
        let nb = import(&json).unwrap();
        let cells = nb.cells();
        assert_eq!(cells[0].source, "x = 1\nx");
        assert_eq!(cells[0].runtime.execution_count, Some(3));
        assert_eq!(cells[0].runtime.outputs.len(), 2, "unknown output dropped");
        assert_ne!(cells[1].id, "bad id!");
        assert!(import(&json!({"nbformat": 3, "cells": []})).is_err());
    }
}
