//! A run's outputs as Middleman's events build them: nbformat 4 outputs, with `clear_output`
//! (at once or at the next output) and `update_display` applied, as a notebook would show them.

use doc_protocol::Output;
use serde_json::{Map, Value};

/// The outputs of one execution.
#[derive(Debug, Default)]
pub struct Outputs {
    list: Vec<Value>,
    /// Display ids of `list`'s entries (None for outputs without one).
    ids: Vec<Option<String>>,
    clear_at_next: bool,
    /// The output cap was reached (Middleman's, or this one); later output was dropped.
    pub truncated: bool,
    /// Bytes kept (as JSON), and the most that may be (0: no cap). A pod is not trusted to
    /// keep to its own cap.
    bytes: usize,
    cap: usize,
}

impl Outputs {
    /// Outputs kept up to `cap` bytes (as JSON), with room for Middleman's own framing.
    pub fn capped(cap: u64) -> Self {
        Self {
            cap: usize::try_from(cap)
                .unwrap_or(usize::MAX)
                .saturating_add(64 << 10),
            ..Self::default()
        }
    }

    fn fits(&mut self, more: usize) -> bool {
        if self.cap > 0 && self.bytes.saturating_add(more) > self.cap {
            self.truncated = true;
            return false;
        }
        self.bytes += more;
        true
    }

    /// Adds an output; returns it in nbformat shape (for live watchers), or `None` when it is
    /// over the cap (dropped, and `truncated` set).
    pub fn push(&mut self, output: &Output) -> Option<Value> {
        if std::mem::take(&mut self.clear_at_next) {
            self.list.clear();
            self.ids.clear();
            self.bytes = 0;
        }
        let (value, id) = nbformat(output);
        if !self.fits(value.to_string().len()) {
            return None;
        }
        self.list.push(value.clone());
        self.ids.push(id);
        Some(value)
    }

    /// `clear_output`: now, or (`wait`) when the next output arrives.
    pub fn clear(&mut self, wait: bool) {
        if wait {
            self.clear_at_next = true;
        } else {
            self.list.clear();
            self.ids.clear();
            self.bytes = 0;
        }
    }

    /// `update_display`: every output shown with `display_id` gets the new data and metadata.
    pub fn update_display(
        &mut self,
        display_id: &str,
        data: &Map<String, Value>,
        metadata: &Map<String, Value>,
    ) {
        let shown = self
            .ids
            .iter()
            .filter(|id| id.as_deref() == Some(display_id))
            .count();
        let size = serde_json::to_string(data).map_or(0, |s| s.len())
            + serde_json::to_string(metadata).map_or(0, |s| s.len());
        // Counted as added (what it replaces is not taken off): an update cannot grow past the cap.
        if shown == 0 || !self.fits(size.saturating_mul(shown)) {
            return;
        }
        for (value, id) in self.list.iter_mut().zip(&self.ids) {
            if id.as_deref() == Some(display_id)
                && let Some(o) = value.as_object_mut()
            {
                o.insert("data".into(), Value::Object(data.clone()));
                o.insert("metadata".into(), Value::Object(metadata.clone()));
            }
        }
    }

    /// Whether an `error` output was shown (the code raised).
    pub fn has_error(&self) -> bool {
        self.list
            .iter()
            .any(|o| o.get("output_type").and_then(Value::as_str) == Some("error"))
    }

    /// `ename: evalue` of the last `error` output.
    pub fn error_summary(&self) -> Option<String> {
        self.list
            .iter()
            .rev()
            .find(|o| o.get("output_type").and_then(Value::as_str) == Some("error"))
            .map(|o| {
                let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                format!("{}: {}", s("ename"), s("evalue"))
            })
    }

    pub fn into_vec(self) -> Vec<Value> {
        self.list
    }
}

/// An output as nbformat 4 writes it, and its display id (kept outside nbformat's fields).
fn nbformat(output: &Output) -> (Value, Option<String>) {
    match output {
        Output::DisplayData {
            data,
            metadata,
            display_id,
        } => (
            serde_json::json!({"output_type": "display_data", "data": data, "metadata": metadata}),
            display_id.clone(),
        ),
        Output::Unknown { output } => (Value::Object(output.clone()), None),
        other => (serde_json::to_value(other).unwrap_or(Value::Null), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use doc_protocol::StreamName;

    fn display(id: &str, text: &str) -> Output {
        let mut data = Map::new();
        data.insert("text/plain".into(), Value::String(text.into()));
        Output::DisplayData {
            data,
            metadata: Map::new(),
            display_id: Some(id.into()),
        }
    }

    #[test]
    fn outputs_are_nbformat_and_clear_and_update_as_a_notebook_shows_them() {
        let mut o = Outputs::default();
        let v = o
            .push(&Output::Stream {
                name: StreamName::Stdout,
                text: "a\n".into(),
            })
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"output_type": "stream", "name": "stdout", "text": "a\n"})
        );
        o.push(&display("d1", "one"));
        let mut data = Map::new();
        data.insert("text/plain".into(), Value::String("two".into()));
        o.update_display("d1", &data, &Map::new());
        let shown = o.list[1].clone();
        assert_eq!(shown["data"]["text/plain"], "two");
        assert!(shown.get("display_id").is_none(), "{shown}");
        o.clear(true);
        assert_eq!(o.list.len(), 2, "a waiting clear keeps what is shown");
        o.push(&Output::Error {
            ename: "E".into(),
            evalue: "x".into(),
            traceback: vec![],
        });
        assert_eq!(o.list.len(), 1);
        assert!(o.has_error());
        assert_eq!(o.error_summary().as_deref(), Some("E: x"));
        o.clear(false);
        assert!(o.into_vec().is_empty());
    }

    #[test]
    fn a_pod_that_ignores_its_output_cap_is_capped_here() {
        let mut o = Outputs::capped(1000);
        let big = "x".repeat(40 << 10);
        let mut kept = 0;
        for _ in 0..10 {
            if o.push(&Output::Stream {
                name: StreamName::Stdout,
                text: big.clone(),
            })
            .is_some()
            {
                kept += 1;
            }
        }
        assert_eq!(kept, 1);
        assert!(o.truncated);
        let mut o = Outputs::capped(0);
        o.push(&display("d", "small"));
        let mut data = Map::new();
        data.insert("text/plain".into(), Value::String(big));
        for _ in 0..4 {
            o.update_display("d", &data, &Map::new());
        }
        assert!(o.truncated, "updates count against the cap too");
    }
}
