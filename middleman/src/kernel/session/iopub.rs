//! What an IOPub message means for the running execution's output: a stream chunk, a rich
//! output, an update of a displayed output, or a clear. Pure, unit-tested; the session applies
//! it to the execution's output buffer (which coalesces and caps).

use jupyter_protocol::JupyterMessageContent;

use crate::protocol::{Output, StreamName};

/// One IOPub message, as output.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum IopubOutput {
    Stream {
        name: StreamName,
        text: String,
    },
    Rich(Output),
    /// `update_display_data` of the output shown with this id.
    Update {
        display_id: String,
        data: serde_json::Map<String, serde_json::Value>,
        metadata: serde_json::Map<String, serde_json::Value>,
    },
    Clear {
        wait: bool,
    },
}

/// The output an IOPub message carries, if any (status, `execute_input` and comm messages
/// carry none).
pub(super) fn output_of(content: JupyterMessageContent) -> Option<IopubOutput> {
    Some(match content {
        JupyterMessageContent::StreamContent(s) => IopubOutput::Stream {
            name: match s.name {
                jupyter_protocol::Stdio::Stderr => StreamName::Stderr,
                _ => StreamName::Stdout,
            },
            text: s.text,
        },
        JupyterMessageContent::DisplayData(d) => IopubOutput::Rich(Output::DisplayData {
            data: media_map(&d.data),
            metadata: d.metadata,
            display_id: d.transient.and_then(|t| t.display_id),
        }),
        JupyterMessageContent::ExecuteResult(r) => IopubOutput::Rich(Output::ExecuteResult {
            execution_count: u64::try_from(r.execution_count.value()).ok(),
            data: media_map(&r.data),
            metadata: r.metadata,
        }),
        JupyterMessageContent::ErrorOutput(e) => IopubOutput::Rich(Output::Error {
            ename: e.ename,
            evalue: e.evalue,
            traceback: e.traceback,
        }),
        JupyterMessageContent::UpdateDisplayData(u) => IopubOutput::Update {
            display_id: u.transient.display_id?,
            data: media_map(&u.data),
            metadata: u.metadata,
        },
        JupyterMessageContent::ClearOutput(c) => IopubOutput::Clear { wait: c.wait },
        _ => return None,
    })
}

/// A Jupyter MIME bundle as the protocol's JSON object.
pub(super) fn media_map(
    media: &jupyter_protocol::Media,
) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(media) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IOPub content from its wire JSON, as the kernel sends it.
    fn content(msg_type: &str, json: serde_json::Value) -> JupyterMessageContent {
        JupyterMessageContent::from_type_and_content(msg_type, json).unwrap()
    }

    #[test]
    fn every_kind_of_output() {
        let cases: Vec<(&str, serde_json::Value, Option<IopubOutput>)> = vec![
            (
                "stream",
                serde_json::json!({"name": "stderr", "text": "oops\n"}),
                Some(IopubOutput::Stream {
                    name: StreamName::Stderr,
                    text: "oops\n".into(),
                }),
            ),
            (
                "stream",
                serde_json::json!({"name": "stdout", "text": "hi"}),
                Some(IopubOutput::Stream {
                    name: StreamName::Stdout,
                    text: "hi".into(),
                }),
            ),
            (
                "clear_output",
                serde_json::json!({"wait": true}),
                Some(IopubOutput::Clear { wait: true }),
            ),
            (
                "status",
                serde_json::json!({"execution_state": "busy"}),
                None,
            ),
            (
                "execute_input",
                serde_json::json!({"code": "1", "execution_count": 1}),
                None,
            ),
            // An update without a display id updates nothing.
            (
                "update_display_data",
                serde_json::json!({"data": {"text/plain": "2"}, "metadata": {}, "transient": {}}),
                None,
            ),
        ];
        for (msg_type, json, want) in cases {
            assert_eq!(
                output_of(content(msg_type, json.clone())),
                want,
                "{msg_type} {json}"
            );
        }
    }

    #[test]
    fn rich_outputs_keep_their_bundles_and_ids() {
        let shown = output_of(content(
            "display_data",
            serde_json::json!({"data": {"text/html": "<b>x</b>", "text/plain": "x"}, "metadata": {}, "transient": {"display_id": "d1"}}),
        ));
        let Some(IopubOutput::Rich(Output::DisplayData {
            data, display_id, ..
        })) = shown
        else {
            panic!("{shown:?}");
        };
        assert_eq!(display_id.as_deref(), Some("d1"));
        assert_eq!(data["text/html"], "<b>x</b>");
        let result = output_of(content(
            "execute_result",
            serde_json::json!({"data": {"text/plain": "42"}, "metadata": {}, "execution_count": 7}),
        ));
        assert!(
            matches!(&result, Some(IopubOutput::Rich(Output::ExecuteResult { execution_count: Some(7), data, .. })) if data["text/plain"] == "42"),
            "{result:?}"
        );
        let error = output_of(content(
            "error",
            serde_json::json!({"ename": "ValueError", "evalue": "bad", "traceback": ["t"]}),
        ));
        assert!(
            matches!(&error, Some(IopubOutput::Rich(Output::Error { ename, .. })) if ename == "ValueError"),
            "{error:?}"
        );
        let update = output_of(content(
            "update_display_data",
            serde_json::json!({"data": {"text/plain": "2"}, "metadata": {}, "transient": {"display_id": "d1"}}),
        ));
        assert!(
            matches!(&update, Some(IopubOutput::Update { display_id, data, .. }) if display_id == "d1" && data["text/plain"] == "2"),
            "{update:?}"
        );
    }
}
