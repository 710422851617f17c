//! Decoding kernel messages, tolerant of what Python's JSON encoder emits but `serde_json`
//! refuses: lone UTF-16 surrogate escapes (`"\udcff"`), which a kernel writes when it prints
//! bytes that are not UTF-8. They become U+FFFD instead of costing the whole message.

use bytes::Bytes;
use jupyter_protocol::{Header, JupyterMessage, JupyterMessageContent};
use serde_json::Value;

/// A kernel message split at its delimiter, its signature checked, not yet decoded.
#[derive(Debug)]
pub(crate) struct RawMessage {
    /// The routing frames before `<IDS|MSG>`.
    pub(crate) zmq_identities: Vec<Bytes>,
    /// Header, parent header, metadata, content, then any buffers.
    pub(crate) jparts: Vec<Bytes>,
}

/// Splits a multipart ZeroMQ message into a [`RawMessage`] and checks its signature, part by
/// part (no concatenated copy: a 100 MB output batch costs 100 MB, not 200 MB).
pub(crate) fn split_and_verify(
    mut parts: Vec<Bytes>,
    key: &Option<ring::hmac::Key>,
) -> Result<RawMessage, WireError> {
    let delimiter = parts
        .iter()
        .position(|p| &p[..] == b"<IDS|MSG>")
        .ok_or(WireError::Framing("no <IDS|MSG> delimiter"))?;
    let jparts = parts.split_off((delimiter + 2).min(parts.len()));
    if jparts.len() < 4 {
        return Err(WireError::Parts(jparts.len()));
    }
    let signature = parts.pop().ok_or(WireError::Framing("no signature"))?;
    parts.pop(); // the delimiter
    if let Some(key) = key {
        let expected = data_encoding::HEXLOWER
            .decode(&signature)
            .map_err(|_| WireError::Framing("signature is not hex"))?;
        let mut ctx = ring::hmac::Context::with_key(key);
        for part in &jparts[..4] {
            ctx.update(part);
        }
        let tag = ctx.sign();
        // Constant-time comparison via ring's verify on the tag we computed.
        if expected.len() != tag.as_ref().len() || !constant_time_eq(&expected, tag.as_ref()) {
            return Err(WireError::Framing("bad signature"));
        }
    }
    Ok(RawMessage {
        zmq_identities: parts,
        jparts,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a message from the kernel was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("malformed message: {0}")]
    Framing(&'static str),
    #[error("message has {0} parts, need 4")]
    Parts(usize),
    #[error("{part} is not valid JSON: {source}")]
    Json {
        part: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Encodes a request the typed client cannot send: a message type it does not know, or one for
/// a kernel subshell (JEP 91: `subshell_id` in the header). Signed like any other. Returns the
/// request's `msg_id` (what its reply's parent header carries) and the message.
pub(crate) fn encode_request(
    msg_type: &str,
    content: &Value,
    session: &str,
    subshell: Option<&str>,
    key: &Option<ring::hmac::Key>,
) -> Result<(String, Vec<Bytes>), WireError> {
    let outgoing = Outgoing {
        msg_type,
        msg_id: None,
        content,
        metadata: &Value::Object(serde_json::Map::new()),
        buffers: &[],
    };
    encode_message(&outgoing, session, subshell, key)
}

/// A message for the kernel's shell as a client made it: a Jupyter client's comm message
/// (with its buffers) passed on.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) msg_type: &'a str,
    /// The message's id (fresh when `None`): the kernel parents its answers to it.
    pub(crate) msg_id: Option<&'a str>,
    pub(crate) content: &'a Value,
    pub(crate) metadata: &'a Value,
    pub(crate) buffers: &'a [bytes::Bytes],
}

/// Encodes and signs `outgoing` for the kernel's shell.
pub(crate) fn encode_message(
    outgoing: &Outgoing<'_>,
    session: &str,
    subshell: Option<&str>,
    key: &Option<ring::hmac::Key>,
) -> Result<(String, Vec<Bytes>), WireError> {
    let template = JupyterMessage::new(
        jupyter_protocol::UnknownMessage {
            msg_type: outgoing.msg_type.to_owned(),
            content: Value::Null,
        },
        None,
    );
    let mut header = serde_json::to_value(&template.header).map_err(|source| WireError::Json {
        part: "header",
        source,
    })?;
    let msg_id = match outgoing.msg_id {
        Some(id) => {
            header["msg_id"] = Value::from(id);
            id.to_owned()
        }
        None => template.header.msg_id.clone(),
    };
    header["session"] = Value::from(session);
    if let Some(id) = subshell {
        header["subshell_id"] = Value::from(id);
    }
    let json = |v: &Value| Bytes::from(v.to_string().into_bytes());
    let mut parts = vec![
        json(&header),
        json(&serde_json::json!({})),
        json(outgoing.metadata),
        json(outgoing.content),
    ];
    parts.extend(outgoing.buffers.iter().cloned());
    Ok((msg_id, sign(parts, key)))
}

/// Encodes a typed message for the kernel as a client of `session`, signed.
pub(crate) fn encode(
    mut message: JupyterMessage,
    session: &str,
    key: &Option<ring::hmac::Key>,
) -> Result<Vec<Bytes>, WireError> {
    message.header.session = session.to_owned();
    let json = |part: &'static str, v: Result<Vec<u8>, serde_json::Error>| {
        v.map(Bytes::from)
            .map_err(|source| WireError::Json { part, source })
    };
    let mut parts = vec![
        json("header", serde_json::to_vec(&message.header))?,
        match &message.parent_header {
            Some(parent) => json("parent_header", serde_json::to_vec(parent))?,
            None => Bytes::from_static(b"{}"),
        },
        json("metadata", serde_json::to_vec(&message.metadata))?,
        json("content", serde_json::to_vec(&message.content))?,
    ];
    parts.append(&mut message.buffers);
    Ok(sign(parts, key))
}

/// The frames of a message: the delimiter, the signature of the four JSON parts (not the
/// buffers), then the parts.
fn sign(parts: Vec<Bytes>, key: &Option<ring::hmac::Key>) -> Vec<Bytes> {
    let signature = match key {
        Some(key) => {
            let mut ctx = ring::hmac::Context::with_key(key);
            // The signature covers the four JSON parts, not the buffers.
            for part in parts.iter().take(4) {
                ctx.update(part);
            }
            data_encoding::HEXLOWER.encode(ctx.sign().as_ref())
        }
        None => String::new(),
    };
    let mut frames = Vec::with_capacity(parts.len() + 2);
    frames.push(Bytes::from_static(b"<IDS|MSG>"));
    frames.push(Bytes::from(signature.into_bytes()));
    frames.extend(parts);
    frames
}

/// Turns a verified raw message into a typed one.
pub(crate) fn decode(raw: RawMessage) -> Result<JupyterMessage, WireError> {
    if raw.jparts.len() < 4 {
        return Err(WireError::Parts(raw.jparts.len()));
    }
    let header: Header = parse(&raw.jparts[0], "header")?;
    // One pass for the usual parent (a header); `{}` or one that is not a header is `None`,
    // and only what is not JSON at all is an error.
    let parent_header = match parse::<Header>(&raw.jparts[1], "parent_header") {
        Ok(header) => Some(header),
        Err(_) => {
            parse::<Value>(&raw.jparts[1], "parent_header")?;
            None
        }
    };
    let metadata: Value = parse(&raw.jparts[2], "metadata")?;
    let content: Value = parse(&raw.jparts[3], "content")?;
    let content = JupyterMessageContent::from_type_and_content(&header.msg_type, content).map_err(
        |source| WireError::Json {
            part: "content",
            source,
        },
    )?;
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
            Some(fixed) => {
                serde_json::from_slice(&fixed).map_err(|source| WireError::Json { part, source })
            }
            None => Err(WireError::Json {
                part,
                source: first,
            }),
        },
    }
}

/// What is kept of a kernel message too large to decode whole (a stream batch from a kernel
/// printing in a tight loop can be tens of megabytes).
#[derive(Debug)]
pub(crate) struct Oversized {
    pub(crate) parent_msg_id: String,
    pub(crate) msg_type: String,
    /// For `stream` messages: the stream name and the first bytes of the text.
    pub(crate) stream_prefix: Option<(String, String)>,
    pub(crate) bytes: usize,
}

/// Reads only the headers of an oversized message and, for a stream, the beginning of its text
/// (at most `keep` bytes), without parsing the rest.
pub(crate) fn decode_oversized(raw: &RawMessage, keep: usize) -> Result<Oversized, WireError> {
    if raw.jparts.len() < 4 {
        return Err(WireError::Parts(raw.jparts.len()));
    }
    let header: Header = parse(&raw.jparts[0], "header")?;
    let parent: Value = parse(&raw.jparts[1], "parent_header")?;
    let parent_msg_id = parent
        .get("msg_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let content = &raw.jparts[3];
    let stream_prefix = (header.msg_type == "stream")
        .then(|| stream_prefix(content, keep))
        .flatten();
    Ok(Oversized {
        parent_msg_id,
        msg_type: header.msg_type,
        stream_prefix,
        bytes: content.len(),
    })
}

fn stream_prefix(content: &[u8], keep: usize) -> Option<(String, String)> {
    let find = |needle: &[u8]| content.windows(needle.len()).position(|w| w == needle);
    let name = if find(br#""stderr""#).is_some_and(|i| i < 64) {
        "stderr"
    } else {
        "stdout"
    };
    let key = find(br#""text""#)?;
    let open = key + 6 + content[key + 6..].iter().position(|&b| b == b'"')? + 1;
    let mut end = (open + keep).min(content.len());
    // Do not cut inside an escape sequence: back up to before any backslash in the last 12
    // bytes (a surrogate pair escape is 12 long).
    if let Some(i) = content[end.saturating_sub(12).max(open)..end]
        .iter()
        .rposition(|&b| b == b'\\')
    {
        end = end.saturating_sub(12).max(open) + i;
    }
    let slice = content.get(open..end)?;
    // The text ends at its closing (unescaped) quote if it was short enough; otherwise we cut.
    let mut escaped = false;
    let close = slice.iter().position(|&b| {
        let is_close = b == b'"' && !escaped;
        escaped = b == b'\\' && !escaped;
        is_close
    });
    let slice = close.map_or(slice, |i| &slice[..i]);
    let mut quoted = Vec::with_capacity(slice.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(slice);
    quoted.push(b'"');
    let text: String = parse(&quoted, "content").ok()?;
    Some((name.to_owned(), text))
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
    fn an_encoded_message_verifies_and_decodes_and_a_changed_one_does_not() {
        let key = Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret"));
        let mut message: JupyterMessage =
            jupyter_protocol::ExecuteRequest::new("1+1".into()).into();
        message.buffers = vec![Bytes::from_static(b"not signed")];
        let id = message.header.msg_id.clone();
        let frames = encode(message, "our-session", &key).unwrap();
        assert_eq!(&frames[0][..], b"<IDS|MSG>");
        let decoded = decode(split_and_verify(frames.clone(), &key).unwrap()).unwrap();
        assert_eq!(decoded.header.msg_id, id);
        assert_eq!(decoded.header.session, "our-session");
        assert!(decoded.parent_header.is_none());
        assert_eq!(decoded.buffers, vec![Bytes::from_static(b"not signed")]);
        let JupyterMessageContent::ExecuteRequest(request) = decoded.content else {
            panic!("an execute_request");
        };
        assert_eq!(request.code, "1+1");
        // The signature covers the four JSON parts, not the buffers.
        let mut changed = frames.clone();
        changed[5] = Bytes::from_static(br#"{"code":"2+2"}"#);
        assert!(split_and_verify(changed, &key).is_err());
        let mut rebuffered = frames;
        rebuffered[6] = Bytes::from_static(b"other");
        assert!(split_and_verify(rebuffered, &key).is_ok());
    }

    #[test]
    fn oversized_stream_keeps_a_clean_prefix() {
        let text = r#"line \"quoted\" \u00e9\n"#.repeat(100);
        let content = format!(r#"{{"name": "stdout", "text": "{text}"}}"#);
        let raw = RawMessage {
            zmq_identities: vec![],
            jparts: vec![
                br#"{"msg_id":"m","username":"u","session":"s","date":"2024-01-01T00:00:00Z","msg_type":"stream","version":"5.3"}"#.to_vec().into(),
                br#"{"msg_id":"parent"}"#.to_vec().into(),
                b"{}".to_vec().into(),
                content.into_bytes().into(),
            ],
        };
        for keep in [0, 1, 7, 8, 9, 50, 333, 10_000] {
            let o = decode_oversized(&raw, keep).unwrap();
            assert_eq!(o.parent_msg_id, "parent");
            let (name, prefix) = o.stream_prefix.unwrap();
            assert_eq!(name, "stdout");
            let full = "line \"quoted\" \u{e9}\n".repeat(100);
            assert!(full.starts_with(&prefix), "keep {keep}: {prefix:?}");
            assert!(prefix.len() <= keep + 1);
        }
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let input = br#"{"text":"a\udcffb \ud83d\ude00 \\udcff \ud800"}"#;
        let fixed = replace_lone_surrogates(input).unwrap();
        let v: Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(v["text"], "a\u{fffd}b \u{1F600} \\udcff \u{fffd}");
        assert!(replace_lone_surrogates(br#"{"ok":"\u00e9"}"#).is_none());
    }
}
