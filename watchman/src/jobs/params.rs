//! Parameters of a notebook run, injected as papermill does: a code cell tagged
//! `injected-parameters` right after the cell tagged `parameters`, assigning each name its
//! value as a Python literal. A run on a live document finds the cell again by its first line.
//! Pure: unit-tested here, used by submission (uploaded notebooks) and the runner (documents).

use serde_json::{Map, Value};

/// The tag of the cell that declares a notebook's parameters and their defaults.
pub const PARAMETERS_TAG: &str = "parameters";
/// The tag of the cell a run injects (papermill's).
pub const INJECTED_TAG: &str = "injected-parameters";
/// The first line of an injected cell: how a run on a live document (whose cells carry no tags
/// once edited there) finds the cell an earlier run injected.
pub const INJECTED_HEADER: &str = "# Parameters (injected by a run)";

/// Why parameters cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter name {0:?} is not a Python identifier")]
    BadName(String),
    #[error("the notebook has no cell tagged \"parameters\" to take parameters")]
    NoParametersCell,
    #[error("unknown parameter(s) {unknown}; the parameters cell assigns: {known}")]
    Unknown { unknown: String, known: String },
    #[error("not a notebook: {0}")]
    NotNotebook(String),
}

/// `value` as a Python literal (JSON's strings and numbers already are).
pub fn python_literal(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        // JSON string escapes (\n, \", \\, \uXXXX) mean the same in Python.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
        && !matches!(
            name,
            "None"
                | "True"
                | "False"
                | "and"
                | "or"
                | "not"
                | "if"
                | "else"
                | "for"
                | "while"
                | "def"
                | "class"
                | "import"
                | "from"
                | "return"
                | "lambda"
                | "in"
                | "is"
                | "pass"
                | "del"
                | "global"
                | "nonlocal"
                | "try"
                | "except"
                | "finally"
                | "with"
                | "as"
                | "raise"
                | "yield"
                | "assert"
                | "break"
                | "continue"
                | "elif"
                | "async"
                | "await"
        )
}

/// Checks every name.
pub fn check_names(parameters: &Map<String, Value>) -> Result<(), ParamError> {
    match parameters.keys().find(|k| !is_identifier(k)) {
        Some(bad) => Err(ParamError::BadName(bad.chars().take(64).collect())),
        None => Ok(()),
    }
}

/// The source of the injected cell.
pub fn injected_source(parameters: &Map<String, Value>) -> String {
    let mut source = String::from(INJECTED_HEADER);
    for (name, value) in parameters {
        source.push('\n');
        source.push_str(name);
        source.push_str(" = ");
        source.push_str(&python_literal(value));
    }
    source
}

/// The names a parameters cell assigns at its top level (`name = ...`, `name: type = ...`).
pub fn assigned_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source.lines() {
        let end = line
            .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
            .unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        let rest = rest.trim_start();
        let assigns = (rest.starts_with('=') && !rest.starts_with("=="))
            || (rest.starts_with(':') && rest.contains('='));
        if assigns && is_identifier(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Refuses names the parameters cell (`source`) does not assign.
pub fn check_known(parameters: &Map<String, Value>, source: &str) -> Result<(), ParamError> {
    let known = assigned_names(source);
    let unknown: Vec<&str> = parameters
        .keys()
        .filter(|k| !known.iter().any(|n| n == *k))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ParamError::Unknown {
        unknown: unknown.join(", "),
        known: if known.is_empty() {
            "nothing".into()
        } else {
            known.join(", ")
        },
    })
}

/// A cell's source as one string (nbformat allows a list of lines).
pub fn cell_source(cell: &Value) -> String {
    match cell.get("source") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(lines)) => lines.iter().filter_map(Value::as_str).collect(),
        _ => String::new(),
    }
}

/// Whether a cell carries `tag`.
pub fn has_tag(cell: &Value, tag: &str) -> bool {
    cell.pointer("/metadata/tags")
        .and_then(Value::as_array)
        .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag)))
}

/// Whether a cell is one a run injected.
pub fn is_injected(cell: &Value) -> bool {
    has_tag(cell, INJECTED_TAG) || cell_source(cell).starts_with(INJECTED_HEADER)
}

/// Where the parameters go in `notebook`'s cells: the index of the cell tagged `parameters`
/// and of an injected cell to replace, if any. Checks the names against the parameters cell.
pub fn locate(
    notebook: &Value,
    parameters: &Map<String, Value>,
) -> Result<(usize, Option<usize>), ParamError> {
    let cells = notebook
        .get("cells")
        .and_then(Value::as_array)
        .ok_or_else(|| ParamError::NotNotebook("no \"cells\" list".into()))?;
    check_names(parameters)?;
    let at = cells
        .iter()
        .position(|c| has_tag(c, PARAMETERS_TAG))
        .ok_or(ParamError::NoParametersCell)?;
    check_known(parameters, &cell_source(&cells[at]))?;
    let injected = cells.iter().position(is_injected);
    Ok((at, injected))
}

/// Injects `parameters` into an `.ipynb`: the injected cell (replacing one an earlier run
/// left) goes right after the parameters cell.
pub fn inject(notebook: &mut Value, parameters: &Map<String, Value>) -> Result<(), ParamError> {
    if parameters.is_empty() {
        return Ok(());
    }
    let (mut at, injected) = locate(notebook, parameters)?;
    let Some(cells) = notebook.get_mut("cells").and_then(Value::as_array_mut) else {
        return Err(ParamError::NotNotebook("no \"cells\" list".into()));
    };
    if let Some(old) = injected {
        cells.remove(old);
        if old < at {
            at -= 1;
        }
    }
    cells.insert(
        at + 1,
        serde_json::json!({
            "cell_type": "code",
            "id": INJECTED_TAG,
            "metadata": {"tags": [INJECTED_TAG]},
            "source": injected_source(parameters),
            "outputs": [],
            "execution_count": null,
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn values_become_python_literals() {
        assert_eq!(python_literal(&json!(null)), "None");
        assert_eq!(python_literal(&json!(true)), "True");
        assert_eq!(python_literal(&json!(-2.5)), "-2.5");
        assert_eq!(python_literal(&json!("a \"q\"\n\\")), r#""a \"q\"\n\\""#);
        assert_eq!(
            python_literal(&json!({"k": [1, false, null]})),
            r#"{"k": [1, False, None]}"#
        );
    }

    #[test]
    fn the_parameters_cell_says_which_names_are_known() {
        let source =
            "alpha = 0.1\nn: int = 3\n  indented = 1\nif x == 2: pass\nratio=2 # c\nalpha = 5";
        assert_eq!(assigned_names(source), ["alpha", "n", "ratio"]);
        let p = params(json!({"alpha": 1, "beta": 2}));
        assert_eq!(
            check_known(&p, source),
            Err(ParamError::Unknown {
                unknown: "beta".into(),
                known: "alpha, n, ratio".into()
            })
        );
        assert_eq!(
            check_names(&params(json!({"import": 1}))),
            Err(ParamError::BadName("import".into()))
        );
        assert_eq!(
            check_names(&params(json!({"1x": 1}))),
            Err(ParamError::BadName("1x".into()))
        );
    }

    #[test]
    fn injection_follows_the_parameters_cell_and_replaces_an_earlier_one() {
        let mut nb = json!({"cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Report"},
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ["alpha = 0.1\n", "n = 3"]},
            {"cell_type": "code", "metadata": {}, "source": "print(alpha * n)"},
        ]});
        inject(&mut nb, &params(json!({"alpha": 2}))).unwrap();
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 4);
        assert!(has_tag(&cells[2], INJECTED_TAG));
        assert_eq!(
            cell_source(&cells[2]),
            format!("{INJECTED_HEADER}\nalpha = 2")
        );
        inject(&mut nb, &params(json!({"n": 4, "alpha": 1}))).unwrap();
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 4, "the earlier injection is replaced");
        assert_eq!(
            cell_source(&cells[2]),
            format!("{INJECTED_HEADER}\nalpha = 1\nn = 4")
        );
        let mut none = json!({"cells": [{"cell_type": "code", "metadata": {}, "source": "x = 1"}]});
        assert_eq!(
            inject(&mut none, &params(json!({"x": 2}))),
            Err(ParamError::NoParametersCell)
        );
        assert!(
            inject(&mut none, &Map::new()).is_ok(),
            "no parameters, no cell"
        );
    }
}
