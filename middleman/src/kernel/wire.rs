//! Decoding kernel messages, tolerant of what Python's JSON encoder emits but `serde_json`
//! refuses: lone UTF-16 surrogate escapes (`"\udcff"`), which a kernel writes when it prints
//! bytes that are not UTF-8. They become U+FFFD instead of costing the whole message.

use jupyter_protocol::{Header, JupyterMessage, JupyterMessageContent};
use jupyter_zmq_client::RawMessage;
use serde_json::Value;

/// Why a message from the kernel was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("message has {0} parts, need 4")]
    Parts(usize),
    #[error("{part} is not valid JSON: {source}")]
    Json {
        part: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Turns a verified raw message into a typed one.
pub(crate) fn decode(raw: RawMessage) -> Result<JupyterMessage, WireError> {
    if raw.jparts.len() < 4 {
        return Err(WireError::Parts(raw.jparts.len()));
    }
    let header: Header = parse(&raw.jparts[0], "header")?;
    let parent: Value = parse(&raw.jparts[1], "parent_header")?;
    let parent_header = match &parent {
        Value::Object(map) if map.is_empty() => None,
        _ => serde_json::from_value(parent).ok(),
    };
    let metadata: Value = parse(&raw.jparts[2], "metadata")?;
    let content: Value = parse(&raw.jparts[3], "content")?;
    let content = JupyterMessageContent::from_type_and_content(&header.msg_type, content)
        .map_err(|source| WireError::Json { part: "content", source })?;
    Ok(JupyterMessage {
        zmq_identities: raw.zmq_identities,
        header,
        parent_header,
        metadata,
        content,
        buffers: raw.jparts.get(4..).map(<[_]>::to_vec).unwrap_or_default(),
        channel: None,
    })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], part: &'static str) -> Result<T, WireError> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(first) => match replace_lone_surrogates(bytes) {
            Some(fixed) => serde_json::from_slice(&fixed).map_err(|source| WireError::Json { part, source }),
            None => Err(WireError::Json { part, source: first }),
        },
    }
}

/// Rewrites `\uD800`-`\uDFFF` escapes that are not part of a valid pair to `\uFFFD`. Returns
/// `None` when there is nothing to replace.
pub(crate) fn replace_lone_surrogates(json: &[u8]) -> Option<Vec<u8>> {
    fn hex4(b: &[u8]) -> Option<u32> {
        let s = std::str::from_utf8(b.get(..4)?).ok()?;
        u32::from_str_radix(s, 16).ok()
    }
    let mut out = Vec::with_capacity(json.len());
    let mut changed = false;
    let mut i = 0;
    while i < json.len() {
        if json[i] != b'\\' || i + 1 >= json.len() {
            out.push(json[i]);
            i += 1;
            continue;
        }
        if json[i + 1] != b'u' {
            // Any other escape: copy both bytes so `\\u` is never read as an escape.
            out.extend_from_slice(&json[i..i + 2]);
            i += 2;
            continue;
        }
        let Some(code) = hex4(&json[i + 2..]) else {
            out.extend_from_slice(&json[i..i + 2]);
            i += 2;
            continue;
        };
        let is_high = (0xD800..0xDC00).contains(&code);
        let is_low = (0xDC00..0xE000).contains(&code);
        if is_high {
            let pair = json.get(i + 6..i + 8) == Some(b"\\u")
                && hex4(&json[i + 8..]).is_some_and(|c| (0xDC00..0xE000).contains(&c));
            if pair {
                out.extend_from_slice(&json[i..i + 12]);
                i += 12;
                continue;
            }
        }
        if is_high || is_low {
            out.extend_from_slice(b"\\ufffd");
            changed = true;
        } else {
            out.extend_from_slice(&json[i..i + 6]);
        }
        i += 6;
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let input = br#"{"text":"a\udcffb \ud83d\ude00 \\udcff \ud800"}"#;
        let fixed = replace_lone_surrogates(input).unwrap();
        let v: Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v["text"], "a\u{fffd}b \u{1F600} \\udcff \u{fffd}");
        assert!(replace_lone_surrogates(br#"{"ok":"\u00e9"}"#).is_none());
    }
}
