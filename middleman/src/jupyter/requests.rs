//! What a Jupyter client's requests mean here: an execution's options and the document cell it
//! runs in, the kernel info we show, and the answers given when the kernel cannot be asked.

use serde_json::{Map, Value, json};

/// The parts of an `execute_request` this server acts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Execute {
    pub code: String,
    pub silent: bool,
    pub store_history: bool,
    pub allow_stdin: bool,
    pub stop_on_error: bool,
    pub user_expressions: Map<String, Value>,
    /// The document cell it runs in; `None` for a run outside the document (silent, or not in
    /// the history).
    pub cell_id: Option<String>,
}

impl Execute {
    /// Reads an `execute_request`'s content and metadata, with Jupyter's defaults. `msg_id`
    /// names the cell of a client that names none (jupyter_client, consoles).
    pub fn parse(
        content: &Map<String, Value>,
        metadata: &Map<String, Value>,
        msg_id: &str,
    ) -> Result<Self, &'static str> {
        let code = content
            .get("code")
            .and_then(Value::as_str)
            .ok_or("an execute_request needs its code")?
            .to_owned();
        let flag =
            |key: &str, default: bool| content.get(key).and_then(Value::as_bool).unwrap_or(default);
        let silent = flag("silent", false);
        let store_history = flag("store_history", !silent) && !silent;
        let in_document = !silent && store_history;
        let cell_id = in_document.then(|| {
            let named = metadata
                .get("cellId")
                .and_then(Value::as_str)
                .unwrap_or(msg_id);
            cell_id_for(named)
        });
        Ok(Self {
            code,
            silent,
            store_history,
            allow_stdin: flag("allow_stdin", true),
            stop_on_error: flag("stop_on_error", true),
            user_expressions: content
                .get("user_expressions")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            cell_id,
        })
    }
}

/// The document cell a client's cell id maps to: the id itself when nbformat allows it
/// (JupyterLab's UUIDs), else `j` and 16 hex digits of a hash of it (VS Code's cell URIs).
pub fn cell_id_for(client_id: &str) -> String {
    let valid = (1..=64).contains(&client_id.len())
        && client_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        client_id.to_owned()
    } else {
        format!("j{}", hex16(client_id.as_bytes()))
    }
}

/// The `kernel_info_reply` we show: the kernel's own, without the features this server does
/// not offer Jupyter clients (subshells, the debugger).
pub fn kernel_info(raw: &Value) -> Value {
    let mut info = match raw {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    info.insert("status".into(), "ok".into());
    info.insert("debugger".into(), false.into());
    if let Some(Value::Array(features)) = info.get_mut("supported_features") {
        features.retain(|f| f != "kernel subshells" && f != "debugger");
    }
    info.entry("protocol_version")
        .or_insert_with(|| "5.3".into());
    Value::Object(info)
}

/// The side questions passed to the kernel as they are.
pub fn side_question(msg_type: &str) -> Option<&'static str> {
    Some(match msg_type {
        "complete_request" => "complete_request",
        "inspect_request" => "inspect_request",
        "is_complete_request" => "is_complete_request",
        "history_request" => "history_request",
        "comm_info_request" => "comm_info_request",
        _ => return None,
    })
}

/// The reply type of a request type (`x_request` → `x_reply`).
pub fn reply_type(msg_type: &str) -> String {
    format!(
        "{}_reply",
        msg_type.strip_suffix("_request").unwrap_or(msg_type)
    )
}

/// An empty but valid answer to a side question the kernel could not be asked (busy without
/// a subshell, too many questions, a viewer asking): clients show nothing rather than fail.
pub fn empty_answer(msg_type: &str, content: &Map<String, Value>) -> Value {
    let cursor = content.get("cursor_pos").cloned().unwrap_or(json!(0));
    match msg_type {
        "complete_request" => json!({
            "status": "ok", "matches": [], "cursor_start": cursor, "cursor_end": cursor,
            "metadata": {},
        }),
        "inspect_request" => json!({ "status": "ok", "found": false, "data": {}, "metadata": {} }),
        "is_complete_request" => json!({ "status": "unknown" }),
        "history_request" => json!({ "status": "ok", "history": [] }),
        "comm_info_request" => json!({ "status": "ok", "comms": {} }),
        _ => {
            json!({ "status": "error", "ename": "NotSupported", "evalue": msg_type, "traceback": [] })
        }
    }
}

/// An `execute_reply` for a request that was refused before it ran.
pub fn refused_reply(why: &str) -> Value {
    json!({
        "status": "error",
        "ename": "NbplatRefused",
        "evalue": why,
        "traceback": [format!("NbplatRefused: {why}")],
        "execution_count": 0,
    })
}

/// 16 hex digits of a stable hash of `bytes` (SHA-256, truncated).
fn hex16(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn an_execute_request_lands_in_its_cell_or_stays_outside_the_document() {
        let lab = Execute::parse(
            &map(json!({ "code": "1+1" })),
            &map(json!({ "cellId": "0b8e2c4a-1f3e-4c59-9a57-3e1f5c2d7a10" })),
            "m1",
        )
        .unwrap();
        assert_eq!(
            lab.cell_id.as_deref(),
            Some("0b8e2c4a-1f3e-4c59-9a57-3e1f5c2d7a10")
        );
        assert!(lab.stop_on_error && lab.allow_stdin && lab.store_history);

        let vscode = Execute::parse(
            &map(json!({ "code": "1", "stop_on_error": false })),
            &map(json!({ "cellId": "vscode-notebook-cell:/home/a/b.ipynb#W1sZmlsZQ==" })),
            "m2",
        )
        .unwrap();
        let id = vscode.cell_id.unwrap();
        assert!(id.starts_with('j') && id.len() == 17, "{id}");
        assert!(!vscode.stop_on_error);

        let console = Execute::parse(&map(json!({ "code": "1" })), &Map::new(), "abc_1").unwrap();
        assert_eq!(console.cell_id.as_deref(), Some("abc_1"));

        for quiet in [
            json!({ "code": "x", "silent": true }),
            json!({ "code": "x", "store_history": false }),
        ] {
            let e = Execute::parse(&map(quiet), &map(json!({ "cellId": "c1" })), "m").unwrap();
            assert_eq!(e.cell_id, None, "silent runs stay out of the document");
        }
        assert!(Execute::parse(&map(json!({ "silent": true })), &Map::new(), "m").is_err());
    }

    #[test]
    fn kernel_info_hides_subshells_and_the_debugger() {
        let shown = kernel_info(&json!({
            "protocol_version": "5.4", "debugger": true,
            "supported_features": ["kernel subshells", "debugger", "other"],
            "language_info": { "name": "python" },
        }));
        assert_eq!(shown["debugger"], false);
        assert_eq!(shown["supported_features"], json!(["other"]));
        assert_eq!(shown["status"], "ok");
        assert_eq!(shown["language_info"]["name"], "python");
    }

    #[test]
    fn side_questions_have_replies_and_empty_answers() {
        assert_eq!(side_question("complete_request"), Some("complete_request"));
        assert_eq!(side_question("execute_request"), None);
        assert_eq!(reply_type("complete_request"), "complete_reply");
        let empty = empty_answer("complete_request", &map(json!({ "cursor_pos": 4 })));
        assert_eq!(empty["cursor_start"], 4);
        assert_eq!(empty["matches"], json!([]));
    }
}
