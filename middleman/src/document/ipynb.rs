//! `.ipynb` (nbformat 4) import and export, without loss: what the document does not model
//! (cell and notebook metadata, attachments, raw cells' formats, cell types and output types of
//! newer minor versions, streams other than stdout and stderr) is kept as it came and written
//! back. What an import had to change is reported, never silent:
//! - cell ids that were missing (nbformat < 4.5), invalid or repeated get new ones;
//! - the kernelspec and `language_info` written are those of the document's kernel;
//! - outputs that are not JSON objects are dropped.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::notebook::new_cell_id;
use super::{CellKind, DocumentError, Notebook};
use crate::protocol::{CellRuntime, KernelDescription, Output};

/// The oldest minor version written: cell ids are always present.
const MINOR: u64 = 5;

/// An imported notebook and what the import changed.
#[derive(Debug)]
pub struct Imported {
    pub notebook: Notebook,
    /// Human-readable, one change a line (empty when nothing changed but the layout of
    /// multi-line strings).
    pub changes: Vec<String>,
}

/// The key, in a cell's metadata, of what the platform keeps there: `{"sql": source}` for a SQL
/// cell.
const SQL_METADATA: &str = "nbplat";

/// Removes a SQL cell's source from the cell's metadata (dropping what is left empty).
fn take_sql(cell: &mut Map<String, Value>) -> Option<String> {
    let metadata = cell.get_mut("metadata")?.as_object_mut()?;
    let ours = metadata.get_mut(SQL_METADATA)?.as_object_mut()?;
    let sql = match ours.remove("sql")? {
        Value::String(s) => s,
        _ => return None,
    };
    if ours.is_empty() {
        metadata.remove(SQL_METADATA);
    }
    Some(sql)
}

/// The document as an nbformat 4 notebook (minor version 5, or the imported one if newer).
pub fn export(nb: &Notebook, kernel: &KernelDescription) -> Value {
    let mut extras = nb.extras();
    let cells: Vec<Value> = nb
        .cells()
        .into_iter()
        .map(|c| {
            let mut cell = extras
                .remove(&c.id)
                .and_then(|json| serde_json::from_str::<Map<String, Value>>(&json).ok())
                .unwrap_or_default();
            let kept_type = cell.remove("cell_type");
            let cell_type = match (c.kind, kept_type) {
                // A cell type the document does not know, kept as a raw cell.
                (CellKind::Raw, Some(Value::String(t))) => t,
                // A SQL cell is a code cell calling DuckDB, its SQL kept in the metadata.
                (CellKind::Sql, _) => CellKind::Code.as_str().to_owned(),
                (kind, _) => kind.as_str().to_owned(),
            };
            cell.insert("id".into(), Value::String(c.id));
            cell.insert("cell_type".into(), Value::String(cell_type.clone()));
            let metadata = cell.entry("metadata").or_insert_with(|| json!({}));
            if c.kind == CellKind::Sql {
                if let Value::Object(m) = metadata {
                    let ours = m.entry(SQL_METADATA).or_insert_with(|| json!({}));
                    if !ours.is_object() {
                        *ours = json!({});
                    }
                    ours["sql"] = Value::String(c.source.clone());
                }
                cell.insert(
                    "source".into(),
                    Value::String(crate::sql::notebook_code(&c.source)),
                );
            } else {
                cell.insert("source".into(), Value::String(c.source));
            }
            if c.kind.runs() {
                cell.insert(
                    "execution_count".into(),
                    c.runtime.execution_count.map_or(Value::Null, Value::from),
                );
                cell.insert(
                    "outputs".into(),
                    Value::Array(c.runtime.outputs.iter().map(output_json).collect()),
                );
            } else if ["markdown", "raw"].contains(&cell_type.as_str()) {
                cell.remove("outputs");
                cell.remove("execution_count");
            }
            Value::Object(cell)
        })
        .collect();
    let mut top = nb
        .notebook_extras()
        .and_then(|json| serde_json::from_str::<Map<String, Value>>(&json).ok())
        .unwrap_or_default();
    let mut metadata = match top.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    metadata.insert(
        "kernelspec".into(),
        json!({ "name": kernel.name, "display_name": kernel.display_name, "language": kernel.language }),
    );
    let language_info = match metadata.remove("language_info") {
        // The imported details (version, mimetype, ...) stay when the language is the same.
        Some(Value::Object(mut info))
            if info.get("name").and_then(Value::as_str) == Some(kernel.language.as_str()) =>
        {
            info.insert("name".into(), Value::String(kernel.language.clone()));
            Value::Object(info)
        }
        _ => json!({ "name": kernel.language }),
    };
    metadata.insert("language_info".into(), language_info);
    let minor = top
        .remove("nbformat_minor")
        .and_then(|v| v.as_u64())
        .map_or(MINOR, |m| m.max(MINOR));
    top.insert("nbformat".into(), json!(4));
    top.insert("nbformat_minor".into(), json!(minor));
    top.insert("metadata".into(), Value::Object(metadata));
    top.insert("cells".into(), Value::Array(cells));
    Value::Object(top)
}

/// nbformat's output shape: ours minus the display id, which nbformat keeps out of the file;
/// an output the document does not model, as it came.
fn output_json(o: &Output) -> Value {
    if let Output::Unknown { output } = o {
        return Value::Object(output.clone());
    }
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

/// An output as the document models it when that loses nothing, else kept as it came (an
/// output type of a newer minor version, a field the document does not model, a stream other
/// than stdout and stderr).
fn parse_output(original: &Map<String, Value>) -> Output {
    let mut v = original.clone();
    if let Some(text) = v.get("text").and_then(text_of) {
        v.insert("text".into(), Value::String(text));
    }
    if let Some(Value::Object(data)) = v.get_mut("data") {
        normalise_bundle(data);
    }
    let normalised = Value::Object(v);
    match serde_json::from_value::<Output>(normalised.clone()) {
        Ok(output) if output_json(&output) == normalised => output,
        _ => Output::Unknown {
            output: original.clone(),
        },
    }
}

/// The fields of a code cell the document models itself; the rest is kept.
const MODELLED: &[&str] = &["id", "cell_type", "source", "execution_count", "outputs"];

/// A document from an nbformat 4 notebook of any minor version.
pub fn import(json: &Value, kernel: &KernelDescription) -> Result<Imported, DocumentError> {
    let bad = |m: String| DocumentError::BadNotebook(m);
    let top = json
        .as_object()
        .ok_or_else(|| bad("the notebook is not a JSON object".into()))?;
    match top.get("nbformat") {
        Some(Value::Number(n)) if n.as_u64() == Some(4) => {}
        Some(other) => return Err(bad(format!("nbformat must be 4, not {other}"))),
        None => return Err(bad("no nbformat field".into())),
    }
    let cells = top
        .get("cells")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no cells array".into()))?;
    let mut changes = Vec::new();
    let mut seen = HashSet::with_capacity(cells.len());
    let mut generated = 0usize;
    let mut built = Vec::with_capacity(cells.len());
    for (i, cell) in cells.iter().enumerate() {
        let cell = cell
            .as_object()
            .ok_or_else(|| bad(format!("cell {i} is not a JSON object")))?;
        let cell_type = cell
            .get("cell_type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("cell {i} has no cell_type")))?;
        // "sql" is not an nbformat cell type: SQL cells come back from their metadata.
        let (kind, known) = match CellKind::parse(cell_type) {
            Some(CellKind::Sql) | None => (CellKind::Raw, false),
            Some(kind) => (kind, true),
        };
        let mut source = match cell.get("source") {
            None => {
                changes.push(format!("cell {i}: no source; written back as an empty one"));
                String::new()
            }
            Some(v) => text_of(v).ok_or_else(|| {
                bad(format!(
                    "cell {i}: source must be a string or a list of strings"
                ))
            })?,
        };
        let mut kind = kind;
        let mut cell = cell.clone();
        if kind == CellKind::Code
            && let Some(sql) = take_sql(&mut cell)
        {
            if crate::sql::is_notebook_code_of(&source, &sql) {
                kind = CellKind::Sql;
                source = sql;
            } else {
                changes.push(format!(
                    "cell {i}: was a SQL cell whose code was edited elsewhere; kept as a code cell"
                ));
            }
        }
        let cell = &cell;
        let given = cell.get("id").and_then(Value::as_str);
        let id = match given {
            Some(id) if valid_id(id) && !seen.contains(id) => id.to_owned(),
            Some(id) => {
                let new = new_cell_id();
                changes.push(format!(
                    "cell {i}: id {id:?} is {} and was replaced by {new:?}",
                    if valid_id(id) {
                        "a repeat"
                    } else {
                        "not a valid cell id"
                    }
                ));
                new
            }
            None => {
                generated += 1;
                new_cell_id()
            }
        };
        seen.insert(id.clone());
        // What the document does not model, kept as it came.
        // An unknown cell type keeps its own fields (its outputs, say) but the id and source,
        // which the document holds.
        let modelled = match (known, kind) {
            (true, CellKind::Code | CellKind::Sql) => MODELLED,
            (true, _) => &["id", "cell_type", "source"][..],
            (false, _) => &["id", "source"][..],
        };
        let mut extras: Map<String, Value> = cell
            .iter()
            .filter(|(k, _)| !modelled.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if extras
            .get("metadata")
            .is_some_and(|m| m.as_object().is_some_and(Map::is_empty))
        {
            extras.remove("metadata");
        }
        if !known {
            changes.push(format!(
                "cell {i}: cell type {cell_type:?} is kept as a raw cell and written back as it was"
            ));
        }
        let mut runtime = CellRuntime::default();
        if kind.runs() {
            if let Some(given) = cell.get("outputs").and_then(Value::as_array) {
                for (j, o) in given.iter().enumerate() {
                    match o.as_object() {
                        Some(o) => runtime.outputs.push(parse_output(o)),
                        None => changes.push(format!(
                            "cell {i}: output {j} is not a JSON object and was dropped"
                        )),
                    }
                }
            }
            runtime.execution_count = cell.get("execution_count").and_then(Value::as_u64);
        }
        let extras = (!extras.is_empty()).then(|| Value::Object(extras).to_string());
        built.push((id, kind, source, extras, runtime));
    }
    if generated > 0 {
        changes.push(format!(
            "{generated} cells had no id (nbformat before 4.5) and were given one"
        ));
    }
    let notebook_extras: Map<String, Value> = top
        .iter()
        .filter(|(k, _)| !["cells", "nbformat"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    report_kernel(&notebook_extras, kernel, &mut changes);
    let mut nb = Notebook::from_cells(built, Some(Value::Object(notebook_extras).to_string()));
    if nb.is_empty() {
        nb.insert_cell(0, CellKind::Code, "")?;
    }
    Ok(Imported {
        notebook: nb,
        changes,
    })
}

/// nbformat 4.5's cell id: 1 to 64 of `[a-zA-Z0-9-_]`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Says when the kernel the notebook names is not the document's.
fn report_kernel(top: &Map<String, Value>, kernel: &KernelDescription, changes: &mut Vec<String>) {
    let metadata = top.get("metadata");
    if let Some(name) = metadata
        .and_then(|m| m.get("kernelspec"))
        .and_then(|k| k.get("name"))
        .and_then(Value::as_str)
        .filter(|name| *name != kernel.name)
    {
        changes.push(format!(
            "the notebook's kernel {name:?} is replaced by this document's {:?} on export",
            kernel.name
        ));
    }
    if let Some(language) = metadata
        .and_then(|m| m.get("language_info"))
        .and_then(|k| k.get("name"))
        .and_then(Value::as_str)
        .filter(|l| *l != kernel.language)
    {
        changes.push(format!(
            "the notebook's language {language:?} is replaced by {:?} on export",
            kernel.language
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> KernelDescription {
        KernelDescription {
            name: "python3".into(),
            display_name: "Python 3".into(),
            language: "python".into(),
        }
    }

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
        let imported = import(&json, &python()).unwrap();
        let cells = imported.notebook.cells();
        assert_eq!(cells[0].source, "x = 1\nx");
        assert_eq!(cells[0].runtime.execution_count, Some(3));
        assert_eq!(cells[0].runtime.outputs.len(), 3);
        assert!(matches!(
            cells[0].runtime.outputs[2],
            Output::Unknown { .. }
        ));
        assert_ne!(cells[1].id, "bad id!");
        assert!(
            imported.changes.iter().any(|c| c.contains("\"bad id!\"")),
            "{:?}",
            imported.changes
        );
        assert!(
            imported
                .changes
                .iter()
                .any(|c| c.contains("1 cells had no id")),
            "{:?}",
            imported.changes
        );
    }

    #[test]
    fn refusals_say_what_is_wrong_in_plain_words() {
        let rows = [
            (
                json!({"nbformat": 3, "cells": []}),
                "nbformat must be 4, not 3",
            ),
            (json!([]), "not a JSON object"),
            (json!({"nbformat": 4}), "no cells array"),
            (
                json!({"nbformat": 4, "cells": [1]}),
                "cell 0 is not a JSON object",
            ),
            (
                json!({"nbformat": 4, "cells": [{"source": ""}]}),
                "cell 0 has no cell_type",
            ),
        ];
        for (json, want) in rows {
            let error = import(&json, &python()).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
            assert!(!error.contains("Some("), "{error}");
        }
    }

    #[test]
    fn what_the_document_does_not_model_comes_back_as_it_was() {
        let original = json!({
            "nbformat": 4, "nbformat_minor": 5,
            "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                "language_info": {"name": "python", "version": "3.11.4", "mimetype": "text/x-python"},
                "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}},
                "jupytext": {"formats": "ipynb,py:percent"}
            },
            "cells": [
                {"id": "params", "cell_type": "code", "execution_count": null,
                 "metadata": {"tags": ["parameters"], "collapsed": true, "jupyter": {"source_hidden": true}},
                 "source": "alpha = 0.1", "outputs": [
                    {"output_type": "execute_result", "execution_count": null, "metadata": {}, "data": {"text/plain": "0.1"}},
                    {"output_type": "stream", "name": "stdin", "text": "typed\n"},
                    {"output_type": "future_kind", "payload": [1, 2]}
                 ]},
                {"id": "pic", "cell_type": "markdown", "metadata": {"slideshow": {"slide_type": "slide"}},
                 "attachments": {"a.png": {"image/png": "iVBORw0KGgo="}}, "source": "![a](attachment:a.png)"},
                {"id": "tex", "cell_type": "raw", "metadata": {"format": "text/latex"}, "source": "\\LaTeX"},
                {"id": "new", "cell_type": "diagram", "metadata": {}, "source": "a -> b", "layout": "lr"}
            ]
        });
        let imported = import(&original, &python()).unwrap();
        let exported = export(&imported.notebook, &python());
        assert_eq!(exported, original);
        // Kept through the CRDT's own encoding (persistence, resume), a move and a replace.
        let mut restored = Notebook::restore(
            &imported.notebook.encode_state(),
            imported.notebook.runtimes().clone(),
        )
        .unwrap();
        restored.move_cell("tex", 0).unwrap();
        restored.move_cell("tex", 2).unwrap();
        let mut replaced = Notebook::new();
        replaced.replace_all(&restored);
        assert_eq!(export(&replaced, &python()), original);
    }

    #[test]
    fn the_documents_kernel_is_written_and_a_replaced_one_reported() {
        let original = json!({
            "nbformat": 4, "nbformat_minor": 4,
            "metadata": {"kernelspec": {"name": "ir", "display_name": "R", "language": "R"},
                         "language_info": {"name": "R", "version": "4.3"}},
            "cells": []
        });
        let imported = import(&original, &python()).unwrap();
        assert!(
            imported.changes.iter().any(|c| c.contains("\"ir\"")),
            "{:?}",
            imported.changes
        );
        assert!(
            imported.changes.iter().any(|c| c.contains("\"R\"")),
            "{:?}",
            imported.changes
        );
        let exported = export(&imported.notebook, &python());
        assert_eq!(exported["metadata"]["kernelspec"]["name"], "python3");
        assert_eq!(
            exported["metadata"]["language_info"],
            json!({"name": "python"})
        );
        assert_eq!(exported["nbformat_minor"], 5);
    }
}
