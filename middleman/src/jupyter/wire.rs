//! The frames of Jupyter Server's kernel WebSocket (`/api/kernels/{id}/channels`), both wire
//! forms, as a pure codec: bytes in, [`WireMessage`] out, and back. No I/O and no state.
//!
//! - [`Framing::V1`], the `v1.kernel.websocket.jupyter.org` subprotocol: binary frames both
//!   ways, a u64 little-endian offset table, then the channel name, the four JSON parts and the
//!   buffers.
//! - [`Framing::Legacy`], no subprotocol: a text frame holding one JSON object, or, only when a
//!   message has buffers, a binary frame with a u32 big-endian offset table, the JSON object and
//!   the buffers.
//!
//! The layouts and what we refuse are specified in `docs/plans/jupyter-server-api.md` §1.
//! [`decode`] reads what a client sends and never panics; nothing it allocates is larger than
//! the frame. [`encode`] writes what a client receives. The tests check both against byte vectors
//! from Jupyter Server's own serializers (`scripts/python/jupyter_ws_vectors.py`).
//!
//! One file: the two forms share the offset-table reader and the message rules; the tests, which
//! need both and the vectors, make it longer than 500 lines.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

/// The WebSocket subprotocol of the v1 form.
pub const SUBPROTOCOL: &str = "v1.kernel.websocket.jupyter.org";

/// Offsets in a v1 frame: the channel name and four JSON parts take 6, each buffer one more.
const V1_OFFSETS: (u64, u64) = (6, 70);
/// Offsets in a legacy binary frame: the JSON takes 1, each buffer one more (at least one).
const LEGACY_OFFSETS: (u64, u64) = (2, 65);
/// What every header must hold as strings (the `validateMessage` of @jupyterlab/services checks
/// the same).
const HEADER_FIELDS: [&str; 5] = ["msg_id", "msg_type", "session", "username", "version"];
/// How much of an unknown channel's name an error repeats.
const NAME_IN_ERROR: usize = 32;

/// A kernel channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Requests and their replies.
    Shell,
    /// Broadcasts from the kernel (server to client only).
    Iopub,
    /// `input()` requests and replies.
    Stdin,
    /// Interrupts, shutdowns and debug requests.
    Control,
}

impl Channel {
    /// The name on the wire: `shell`, `iopub`, `stdin` or `control`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Iopub => "iopub",
            Self::Stdin => "stdin",
            Self::Control => "control",
        }
    }

    /// The channel of a wire name, which must be exact (lower case).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shell" => Some(Self::Shell),
            "iopub" => Some(Self::Iopub),
            "stdin" => Some(Self::Stdin),
            "control" => Some(Self::Control),
            _ => None,
        }
    }
}

/// Which wire form a connection speaks, fixed by the WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// [`SUBPROTOCOL`] was selected.
    V1,
    /// No subprotocol.
    Legacy,
}

/// One kernel message, as either form carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    pub channel: Channel,
    pub header: Map<String, Value>,
    /// `{}` when there is no parent.
    pub parent_header: Map<String, Value>,
    pub metadata: Map<String, Value>,
    pub content: Map<String, Value>,
    pub buffers: Vec<Bytes>,
}

impl WireMessage {
    /// `header.msg_type`, or `""` when it is absent or not a string.
    #[must_use]
    pub fn msg_type(&self) -> &str {
        self.header_str("msg_type")
    }

    /// `header.msg_id`, or `""` when it is absent or not a string.
    #[must_use]
    pub fn msg_id(&self) -> &str {
        self.header_str("msg_id")
    }

    fn header_str(&self, field: &str) -> &str {
        self.header.get(field).and_then(Value::as_str).unwrap_or("")
    }
}

/// An incoming WebSocket data frame.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// An outgoing frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

/// Why a client's frame was refused (the connection closes with 1007).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("a text frame on a {SUBPROTOCOL} connection, which takes binary frames only")]
    TextOnV1,
    #[error("frame of {len} bytes is too short: its offset table needs {needed}")]
    TooShort { len: usize, needed: u64 },
    #[error("frame declares {count} offsets; at least {min} are needed")]
    TooFewOffsets { count: u64, min: u64 },
    #[error("frame declares {count} offsets; at most {max} are allowed")]
    TooManyOffsets { count: u64, max: u64 },
    #[error("the first offset is {found}; it must be {expected}, where the offset table ends")]
    FirstOffset { found: u64, expected: u64 },
    #[error("offset {index} ({offset}) is below the one before it ({previous})")]
    DecreasingOffset {
        index: usize,
        offset: u64,
        previous: u64,
    },
    #[error("offset {index} ({offset}) is past the end of the {len}-byte frame")]
    OffsetOverrun {
        index: usize,
        offset: u64,
        len: usize,
    },
    #[error("the last offset is {found}; it must be the frame's length, {len}")]
    LastOffset { found: u64, len: usize },
    #[error("unknown channel {0:?}; a client sends on shell, control or stdin")]
    UnknownChannel(String),
    #[error("a client may not send on the iopub channel")]
    IopubFromClient,
    #[error("the {part} is not UTF-8")]
    NotUtf8 { part: &'static str },
    #[error("the {part} is not JSON: {reason}")]
    NotJson { part: &'static str, reason: String },
    #[error("the {part} is not a JSON object")]
    NotObject { part: &'static str },
    #[error("the message has no {part}")]
    MissingPart { part: &'static str },
    #[error("the header lacks a string {field:?}")]
    HeaderField { field: &'static str },
}

/// Decodes a client's frame. Refuses iopub as the channel (clients never send on it).
///
/// # Errors
///
/// A [`WireError`] for any frame that breaks the layout of its form or the message rules.
pub fn decode(framing: Framing, frame: Incoming<'_>) -> Result<WireMessage, WireError> {
    decode_from(framing, frame, false)
}

/// [`decode`], with `allow_iopub` deciding whether iopub is refused (the tests read the server's
/// side of the vectors with it).
fn decode_from(
    framing: Framing,
    frame: Incoming<'_>,
    allow_iopub: bool,
) -> Result<WireMessage, WireError> {
    let message = match (framing, frame) {
        (Framing::V1, Incoming::Text(_)) => return Err(WireError::TextOnV1),
        (Framing::V1, Incoming::Binary(bytes)) => decode_v1(bytes)?,
        (Framing::Legacy, Incoming::Text(text)) => {
            from_legacy_object(json_object("message", text.as_bytes())?, Vec::new())?
        }
        (Framing::Legacy, Incoming::Binary(bytes)) => decode_legacy_binary(bytes)?,
    };
    if message.channel == Channel::Iopub && !allow_iopub {
        return Err(WireError::IopubFromClient);
    }
    if let Some(field) = HEADER_FIELDS
        .into_iter()
        .find(|field| !message.header.get(*field).is_some_and(Value::is_string))
    {
        return Err(WireError::HeaderField { field });
    }
    Ok(message)
}

fn decode_v1(frame: &[u8]) -> Result<WireMessage, WireError> {
    let offsets = read_offsets::<8>(frame, u64::from_le_bytes, V1_OFFSETS)?;
    if let Some(&last) = offsets.last()
        && last != frame.len()
    {
        return Err(WireError::LastOffset {
            found: to_u64(last),
            len: frame.len(),
        });
    }
    let mut parts = offsets.windows(2).map(|w| span(frame, w));
    let name = parts.next().unwrap_or_default();
    let channel = std::str::from_utf8(name)
        .ok()
        .and_then(Channel::parse)
        .ok_or_else(|| unknown_channel(&String::from_utf8_lossy(name)))?;
    let mut json = |part| json_object(part, parts.next().unwrap_or_default());
    Ok(WireMessage {
        channel,
        header: json("header")?,
        parent_header: json("parent_header")?,
        metadata: json("metadata")?,
        content: json("content")?,
        buffers: parts.map(Bytes::copy_from_slice).collect(),
    })
}

fn decode_legacy_binary(frame: &[u8]) -> Result<WireMessage, WireError> {
    let mut offsets = read_offsets::<4>(frame, |b| u32::from_be_bytes(b).into(), LEGACY_OFFSETS)?;
    // The last part runs to the frame's end.
    offsets.push(frame.len());
    let mut parts = offsets.windows(2).map(|w| span(frame, w));
    let object = json_object("message", parts.next().unwrap_or_default())?;
    from_legacy_object(object, parts.map(Bytes::copy_from_slice).collect())
}

/// Reads and checks the offset table of a binary frame: a W-byte count, then that many W-byte
/// offsets from the frame's start, the first just past the table, none decreasing and none past
/// the end. `(min, max)` bounds the count before anything is allocated.
fn read_offsets<const W: usize>(
    frame: &[u8],
    word: fn([u8; W]) -> u64,
    (min, max): (u64, u64),
) -> Result<Vec<usize>, WireError> {
    let len = frame.len();
    let count = frame
        .first_chunk::<W>()
        .map(|c| word(*c))
        .ok_or_else(|| WireError::TooShort {
            len,
            needed: to_u64(W),
        })?;
    if count < min {
        return Err(WireError::TooFewOffsets { count, min });
    }
    if count > max {
        return Err(WireError::TooManyOffsets { count, max });
    }
    // count <= 70, so the table is at most 568 bytes.
    let table_end = to_u64(W) * (count + 1);
    let table = usize::try_from(table_end)
        .ok()
        .and_then(|end| frame.get(W..end))
        .ok_or(WireError::TooShort {
            len,
            needed: table_end,
        })?;
    let (words, _) = table.as_chunks::<W>();
    let mut offsets = Vec::with_capacity(words.len() + 1);
    for (index, raw) in words.iter().map(|w| word(*w)).enumerate() {
        if index == 0 && raw != table_end {
            return Err(WireError::FirstOffset {
                found: raw,
                expected: table_end,
            });
        }
        if let Some(&previous) = offsets.last()
            && raw < to_u64(previous)
        {
            return Err(WireError::DecreasingOffset {
                index,
                offset: raw,
                previous: to_u64(previous),
            });
        }
        match usize::try_from(raw) {
            Ok(offset) if offset <= len => offsets.push(offset),
            _ => {
                return Err(WireError::OffsetOverrun {
                    index,
                    offset: raw,
                    len,
                });
            }
        }
    }
    Ok(offsets)
}

/// The bytes between two checked offsets (`[start, end]`); empty if they were not.
fn span<'a>(frame: &'a [u8], bounds: &[usize]) -> &'a [u8] {
    match *bounds {
        [start, end] => frame.get(start..end).unwrap_or_default(),
        _ => &[],
    }
}

fn json_object(part: &'static str, bytes: &[u8]) -> Result<Map<String, Value>, WireError> {
    let text = std::str::from_utf8(bytes).map_err(|_| WireError::NotUtf8 { part })?;
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(WireError::NotObject { part }),
        Err(e) => Err(WireError::NotJson {
            part,
            reason: e.to_string(),
        }),
    }
}

/// The message in a legacy JSON object: a missing (or null) `channel` means shell, and
/// `buffers` and any other extra keys are ignored.
fn from_legacy_object(
    mut object: Map<String, Value>,
    buffers: Vec<Bytes>,
) -> Result<WireMessage, WireError> {
    let channel = match object.remove("channel") {
        None | Some(Value::Null) => Channel::Shell,
        Some(Value::String(name)) => Channel::parse(&name).ok_or_else(|| unknown_channel(&name))?,
        Some(other) => return Err(unknown_channel(&other.to_string())),
    };
    let mut take = |part| match object.remove(part) {
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(WireError::NotObject { part }),
        None => Err(WireError::MissingPart { part }),
    };
    Ok(WireMessage {
        channel,
        header: take("header")?,
        parent_header: take("parent_header")?,
        metadata: take("metadata")?,
        content: take("content")?,
        buffers,
    })
}

fn unknown_channel(name: &str) -> WireError {
    WireError::UnknownChannel(name.chars().take(NAME_IN_ERROR).collect())
}

/// Encodes a message for a client: v1 always binary; legacy text when there are no buffers,
/// binary (u32 BE) otherwise.
#[must_use]
pub fn encode(framing: Framing, message: &WireMessage) -> Outgoing {
    match framing {
        Framing::V1 => Outgoing::Binary(encode_v1(message)),
        Framing::Legacy if message.buffers.is_empty() => Outgoing::Text(
            serde_json::to_string(&LegacyJson::new(message, true))
                .unwrap_or_else(|_| String::from("{}")),
        ),
        Framing::Legacy => Outgoing::Binary(encode_legacy_binary(message)),
    }
}

fn encode_v1(message: &WireMessage) -> Vec<u8> {
    let json = [
        &message.header,
        &message.parent_header,
        &message.metadata,
        &message.content,
    ]
    .map(compact);
    let mut parts = vec![message.channel.as_str().as_bytes()];
    parts.extend(json.iter().map(Vec::as_slice));
    parts.extend(message.buffers.iter().map(|b| &b[..]));
    frame_with_table::<8>(&parts, true, u64::to_le_bytes)
}

fn encode_legacy_binary(message: &WireMessage) -> Vec<u8> {
    let json = compact(&LegacyJson::new(message, false));
    let mut parts = vec![json.as_slice()];
    parts.extend(message.buffers.iter().map(|b| &b[..]));
    // Only a frame over 4 GiB would saturate; the 1 MiB message limit keeps far from it.
    let word = |n: u64| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    frame_with_table::<4>(&parts, false, word)
}

/// A binary frame: a W-byte count, the W-byte offsets where each part starts (and, `with_end`,
/// where the last one ends), then the parts back to back.
fn frame_with_table<const W: usize>(
    parts: &[&[u8]],
    with_end: bool,
    word: impl Fn(u64) -> [u8; W],
) -> Vec<u8> {
    let count = parts.len() + usize::from(with_end);
    let table_end = W * (count + 1);
    let mut frame = Vec::with_capacity(table_end + parts.iter().map(|p| p.len()).sum::<usize>());
    frame.extend_from_slice(&word(to_u64(count)));
    let mut at = table_end;
    for part in parts {
        frame.extend_from_slice(&word(to_u64(at)));
        at += part.len();
    }
    if with_end {
        frame.extend_from_slice(&word(to_u64(at)));
    }
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

/// The legacy JSON object: the four parts, `channel`, and the copies of the header's `msg_id`
/// and `msg_type` that Jupyter Server's `Session.deserialize` adds; `buffers: []` in a text frame.
#[derive(Serialize)]
struct LegacyJson<'a> {
    header: &'a Map<String, Value>,
    parent_header: &'a Map<String, Value>,
    metadata: &'a Map<String, Value>,
    content: &'a Map<String, Value>,
    channel: &'static str,
    msg_id: &'a str,
    msg_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    buffers: Option<[(); 0]>,
}

impl<'a> LegacyJson<'a> {
    fn new(message: &'a WireMessage, text: bool) -> Self {
        LegacyJson {
            header: &message.header,
            parent_header: &message.parent_header,
            metadata: &message.metadata,
            content: &message.content,
            channel: message.channel.as_str(),
            msg_id: message.msg_id(),
            msg_type: message.msg_type(),
            buffers: text.then_some([]),
        }
    }
}

/// Compact JSON. Serializing maps of `Value` with string keys into a `Vec` cannot fail; `{}`
/// stands in should that ever change.
fn compact(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn header(msg_type: &str) -> Map<String, Value> {
        object(json!({
            "msg_id": "a1", "msg_type": msg_type, "session": "s1", "username": "u",
            "version": "5.4", "date": "2026-12-04T10:20:30.123456Z",
        }))
    }

    fn message(channel: Channel, buffers: &[&[u8]]) -> WireMessage {
        WireMessage {
            channel,
            header: header("execute_request"),
            parent_header: Map::new(),
            metadata: object(json!({"cellId": "c"})),
            content: object(json!({"code": "print('é')\n", "silent": false})),
            buffers: buffers.iter().map(|b| Bytes::copy_from_slice(b)).collect(),
        }
    }

    fn binary(out: Outgoing) -> Vec<u8> {
        match out {
            Outgoing::Binary(bytes) => bytes,
            Outgoing::Text(text) => panic!("expected a binary frame, got {text}"),
        }
    }

    fn text(out: Outgoing) -> String {
        match out {
            Outgoing::Text(text) => text,
            Outgoing::Binary(bytes) => panic!("expected a text frame, got {bytes:?}"),
        }
    }

    /// A v1 frame from raw parts (so that malformed ones can be made).
    fn v1_frame(channel: &str, json: [&str; 4], buffers: &[&[u8]]) -> Vec<u8> {
        let mut parts = vec![channel.as_bytes()];
        parts.extend(json.iter().map(|j| j.as_bytes()));
        parts.extend_from_slice(buffers);
        frame_with_table::<8>(&parts, true, u64::to_le_bytes)
    }

    /// Overwrites word `slot` of a frame's table (0: the count, i + 1: offset i).
    fn set_word<const W: usize>(mut frame: Vec<u8>, slot: usize, word: [u8; W]) -> Vec<u8> {
        frame[slot * W..(slot + 1) * W].copy_from_slice(&word);
        frame
    }

    fn word<const W: usize>(frame: &[u8], slot: usize) -> [u8; W] {
        frame[slot * W..(slot + 1) * W].try_into().unwrap()
    }

    const HEADER: &str =
        r#"{"msg_id":"a","msg_type":"t","session":"s","username":"u","version":"5.4"}"#;

    #[test]
    fn v1_round_trips_with_and_without_buffers() {
        for buffers in [&[][..], &[&b"\x00\xff"[..], b"", b"third"][..]] {
            let sent = message(Channel::Shell, buffers);
            let frame = binary(encode(Framing::V1, &sent));
            assert_eq!(decode(Framing::V1, Incoming::Binary(&frame)), Ok(sent));
        }
        let frame = binary(encode(Framing::V1, &message(Channel::Control, &[])));
        assert_eq!(u64::from_le_bytes(word(&frame, 0)), 6);
        assert_eq!(u64::from_le_bytes(word(&frame, 1)), 56);
        assert_eq!(&frame[56..63], b"control");
        assert_eq!(&frame[63..65], b"{\"");
    }

    #[test]
    fn legacy_round_trips_as_text_and_as_binary() {
        let sent = message(Channel::Stdin, &[]);
        let frame = text(encode(Framing::Legacy, &sent));
        assert_eq!(decode(Framing::Legacy, Incoming::Text(&frame)), Ok(sent));

        let sent = message(Channel::Shell, &[b"one", b"", b"\x00three"]);
        let frame = binary(encode(Framing::Legacy, &sent));
        assert_eq!(u32::from_be_bytes(word(&frame, 0)), 4);
        assert_eq!(u32::from_be_bytes(word(&frame, 1)), 20);
        assert_eq!(&frame[frame.len() - 6..], b"\x00three");
        assert_eq!(decode(Framing::Legacy, Incoming::Binary(&frame)), Ok(sent));
    }

    #[test]
    fn legacy_missing_or_null_channel_means_shell() {
        let parts =
            format!(r#""header":{HEADER},"parent_header":{{}},"metadata":{{}},"content":{{}}"#);
        for frame in [
            format!("{{{parts}}}"),
            format!(r#"{{{parts},"channel":null,"buffers":[]}}"#),
        ] {
            let got = decode(Framing::Legacy, Incoming::Text(&frame)).unwrap();
            assert_eq!(got.channel, Channel::Shell);
            assert_eq!((got.msg_id(), got.msg_type()), ("a", "t"));
        }
    }

    #[test]
    fn legacy_outgoing_has_top_level_msg_id_and_msg_type() {
        let sent = message(Channel::Iopub, &[]);
        let out: Value = serde_json::from_str(&text(encode(Framing::Legacy, &sent))).unwrap();
        assert_eq!(out["msg_id"], "a1");
        assert_eq!(out["msg_type"], "execute_request");
        assert_eq!(out["channel"], "iopub");
        assert_eq!(out["buffers"], json!([]));
        assert_eq!(out["parent_header"], json!({}));

        let frame = binary(encode(Framing::Legacy, &message(Channel::Iopub, &[b"b"])));
        let out: Value = serde_json::from_slice(&frame[12..frame.len() - 1]).unwrap();
        assert_eq!(
            (&out["msg_id"], &out["msg_type"]),
            (&json!("a1"), &json!("execute_request"))
        );
        assert_eq!(out["channel"], "iopub");
        assert!(out.get("buffers").is_none());
    }

    #[test]
    fn iopub_is_refused_on_decode_in_both_forms() {
        let sent = message(Channel::Iopub, &[]);
        let v1 = binary(encode(Framing::V1, &sent));
        assert_eq!(
            decode(Framing::V1, Incoming::Binary(&v1)),
            Err(WireError::IopubFromClient)
        );
        let legacy = text(encode(Framing::Legacy, &sent));
        let got = decode(Framing::Legacy, Incoming::Text(&legacy));
        assert_eq!(got, Err(WireError::IopubFromClient));
    }

    fn refuses_all(framing: Framing, cases: Vec<(&str, Vec<u8>, WireError)>) {
        for (name, frame, want) in cases {
            let got = decode(framing, Incoming::Binary(&frame));
            assert_eq!(got, Err(want), "{name}");
        }
    }

    #[test]
    fn v1_refuses_bad_offset_tables() {
        use WireError as E;
        let ok = v1_frame("shell", [HEADER, "{}", "{}", "{}"], &[b"buf"]);
        let len = ok.len();
        assert!(decode(Framing::V1, Incoming::Binary(&ok)).is_ok());
        let o = |i: usize| u64::from_le_bytes(word(&ok, i + 1));
        let le = u64::to_le_bytes;
        let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            (
                "shorter than a count",
                ok[..7].to_vec(),
                E::TooShort { len: 7, needed: 8 },
            ),
            (
                "N < 6",
                set_word(ok.clone(), 0, le(5)),
                E::TooFewOffsets { count: 5, min: 6 },
            ),
            (
                "N > 70",
                set_word(ok.clone(), 0, le(71)),
                E::TooManyOffsets { count: 71, max: 70 },
            ),
            (
                "N huge",
                set_word(ok.clone(), 0, le(u64::MAX)),
                E::TooManyOffsets {
                    count: u64::MAX,
                    max: 70,
                },
            ),
            (
                "table overruns",
                set_word(ok.clone(), 0, le(70)),
                E::TooShort { len, needed: 568 },
            ),
            (
                "o[0] != 8(N+1)",
                set_word(ok.clone(), 1, le(72)),
                E::FirstOffset {
                    found: 72,
                    expected: 64,
                },
            ),
            (
                "decreasing",
                set_word(ok.clone(), 3, le(o(1) - 1)),
                E::DecreasingOffset {
                    index: 2,
                    offset: o(1) - 1,
                    previous: o(1),
                },
            ),
            (
                "overrun",
                set_word(ok.clone(), 6, le(9999)),
                E::OffsetOverrun {
                    index: 5,
                    offset: 9999,
                    len,
                },
            ),
            (
                "o[N-1] != len",
                [&ok[..], b"x"].concat(),
                E::LastOffset {
                    found: o(6),
                    len: len + 1,
                },
            ),
        ];
        refuses_all(Framing::V1, cases);
        assert_eq!(decode(Framing::V1, Incoming::Text("{}")), Err(E::TextOnV1));
    }

    #[test]
    fn v1_refuses_bad_channels_parts_and_headers() {
        use WireError as E;
        let bad_header = r#"{"msg_id":"a","msg_type":"t","username":"u","version":"5.4"}"#;
        let cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            (
                "unknown channel",
                v1_frame("Shell", [HEADER, "{}", "{}", "{}"], &[]),
                E::UnknownChannel("Shell".into()),
            ),
            (
                "empty channel",
                v1_frame("", [HEADER, "{}", "{}", "{}"], &[]),
                E::UnknownChannel(String::new()),
            ),
            (
                "iopub",
                v1_frame("iopub", [HEADER, "{}", "{}", "{}"], &[]),
                E::IopubFromClient,
            ),
            (
                "not UTF-8",
                frame_with_table::<8>(
                    &[
                        b"shell",
                        HEADER.as_bytes(),
                        b"{}",
                        b"{\"a\":\"\xff\"}",
                        b"{}",
                    ],
                    true,
                    u64::to_le_bytes,
                ),
                E::NotUtf8 { part: "metadata" },
            ),
            (
                "not JSON",
                v1_frame("shell", [HEADER, "{", "{}", "{}"], &[]),
                E::NotJson {
                    part: "parent_header",
                    reason: "EOF while parsing an object at line 1 column 1".into(),
                },
            ),
            (
                "not an object",
                v1_frame("shell", [HEADER, "{}", "{}", "[]"], &[]),
                E::NotObject { part: "content" },
            ),
            (
                "header lacks session",
                v1_frame("stdin", [bad_header, "{}", "{}", "{}"], &[]),
                E::HeaderField { field: "session" },
            ),
            (
                "msg_id not a string",
                v1_frame(
                    "control",
                    [&HEADER.replace(r#""a""#, "1"), "{}", "{}", "{}"],
                    &[],
                ),
                E::HeaderField { field: "msg_id" },
            ),
        ];
        refuses_all(Framing::V1, cases);
    }

    #[test]
    fn legacy_refuses_bad_offset_tables() {
        use WireError as E;
        let sent = message(Channel::Shell, &[b"one", b"two"]);
        let ok = binary(encode(Framing::Legacy, &sent));
        let len = ok.len();
        let be = |n: u32| n.to_be_bytes();
        let off = |i: usize| u32::from_be_bytes(word(&ok, i + 1));
        let binary_cases: Vec<(&str, Vec<u8>, WireError)> = vec![
            (
                "shorter than a count",
                ok[..3].to_vec(),
                E::TooShort { len: 3, needed: 4 },
            ),
            (
                "n < 2",
                set_word(ok.clone(), 0, be(1)),
                E::TooFewOffsets { count: 1, min: 2 },
            ),
            (
                "n > 65",
                set_word(ok.clone(), 0, be(66)),
                E::TooManyOffsets { count: 66, max: 65 },
            ),
            (
                "n negative",
                set_word(ok.clone(), 0, be(u32::MAX)),
                E::TooManyOffsets {
                    count: 4_294_967_295,
                    max: 65,
                },
            ),
            (
                "table overruns",
                set_word(ok[..100].to_vec(), 0, be(65)),
                E::TooShort {
                    len: 100,
                    needed: 264,
                },
            ),
            (
                "off[0] != 4(n+1)",
                set_word(ok.clone(), 1, be(20)),
                E::FirstOffset {
                    found: 20,
                    expected: 16,
                },
            ),
            (
                "decreasing",
                set_word(ok.clone(), 3, be(off(1) - 1)),
                E::DecreasingOffset {
                    index: 2,
                    offset: (off(1) - 1).into(),
                    previous: off(1).into(),
                },
            ),
            (
                "overrun",
                set_word(ok.clone(), 3, be(u32::try_from(len).unwrap() + 1)),
                E::OffsetOverrun {
                    index: 2,
                    offset: len as u64 + 1,
                    len,
                },
            ),
            (
                "not UTF-8",
                frame_with_table::<4>(&[b"\xff", b"buf"], false, |n| {
                    u32::try_from(n).unwrap().to_be_bytes()
                }),
                E::NotUtf8 { part: "message" },
            ),
        ];
        refuses_all(Framing::Legacy, binary_cases);
    }

    #[test]
    fn legacy_refuses_bad_objects() {
        use WireError as E;
        let parts = format!(r#""header":{HEADER},"parent_header":{{}},"metadata":{{}}"#);
        let text_cases: Vec<(&str, String, WireError)> = vec![
            (
                "not JSON",
                "{".into(),
                E::NotJson {
                    part: "message",
                    reason: "EOF while parsing an object at line 1 column 1".into(),
                },
            ),
            (
                "not an object",
                "[]".into(),
                E::NotObject { part: "message" },
            ),
            (
                "no content",
                format!("{{{parts}}}"),
                E::MissingPart { part: "content" },
            ),
            (
                "content not an object",
                format!(r#"{{{parts},"content":"x"}}"#),
                E::NotObject { part: "content" },
            ),
            (
                "unknown channel",
                format!(r#"{{{parts},"content":{{}},"channel":"shel"}}"#),
                E::UnknownChannel("shel".into()),
            ),
            (
                "channel not a string",
                format!(r#"{{{parts},"content":{{}},"channel":5}}"#),
                E::UnknownChannel("5".into()),
            ),
            (
                "header lacks username",
                format!(
                    r#"{{"header":{},"parent_header":{{}},"metadata":{{}},"content":{{}}}}"#,
                    HEADER.replace("username", "user")
                ),
                E::HeaderField { field: "username" },
            ),
            (
                "iopub",
                format!(r#"{{{parts},"content":{{}},"channel":"iopub"}}"#),
                E::IopubFromClient,
            ),
        ];
        for (name, frame, want) in text_cases {
            assert_eq!(
                decode(Framing::Legacy, Incoming::Text(&frame)),
                Err(want.clone()),
                "{name}"
            );
            // The same object in a binary frame with one buffer fails the same way.
            let frame = frame_with_table::<4>(&[frame.as_bytes(), b"buf"], false, |n| {
                u32::try_from(n).unwrap().to_be_bytes()
            });
            assert_eq!(
                decode(Framing::Legacy, Incoming::Binary(&frame)),
                Err(want),
                "{name} (binary)"
            );
        }
    }

    #[test]
    fn errors_read_clearly() {
        let e = WireError::TooFewOffsets { count: 3, min: 6 };
        assert_eq!(
            e.to_string(),
            "frame declares 3 offsets; at least 6 are needed"
        );
        let e = WireError::TextOnV1;
        let want = "a text frame on a v1.kernel.websocket.jupyter.org connection, which takes \
                    binary frames only";
        assert_eq!(e.to_string(), want);
        let e = WireError::HeaderField { field: "session" };
        assert_eq!(e.to_string(), r#"the header lacks a string "session""#);
    }

    /// A vector's expected decoding, from its `.json` (by `scripts/python/jupyter_ws_vectors.py`).
    fn expected(json: &str) -> WireMessage {
        let mut v = object(serde_json::from_str(json).unwrap());
        let mut part = |name| object(v.remove(name).unwrap());
        let (header, parent_header, metadata, content) = (
            part("header"),
            part("parent_header"),
            part("metadata"),
            part("content"),
        );
        let hex = |s: &Value| -> Bytes {
            let s = s.as_str().unwrap();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        WireMessage {
            channel: Channel::parse(v["channel"].as_str().unwrap()).unwrap(),
            header,
            parent_header,
            metadata,
            content,
            buffers: v["buffers"].as_array().unwrap().iter().map(hex).collect(),
        }
    }

    #[test]
    fn v1_vector_execute_request() {
        let frame = include_bytes!("vectors/v1_execute_request.bin");
        let want = expected(include_str!("vectors/v1_execute_request.json"));
        assert_eq!(
            decode(Framing::V1, Incoming::Binary(frame)),
            Ok(want.clone())
        );
        // The script packs the JSON parts as serde_json writes them (compact, keys sorted), and
        // the framing is deterministic, so our bytes are jupyter_server's.
        assert_eq!(binary(encode(Framing::V1, &want)), frame);
    }

    #[test]
    fn v1_vector_display_data_with_two_buffers() {
        let frame = include_bytes!("vectors/v1_display_data.bin");
        let want = expected(include_str!("vectors/v1_display_data.json"));
        assert_eq!(want.buffers.len(), 2);
        assert_eq!(
            decode_from(Framing::V1, Incoming::Binary(frame), true),
            Ok(want.clone())
        );
        assert_eq!(
            decode(Framing::V1, Incoming::Binary(frame)),
            Err(WireError::IopubFromClient)
        );
        assert_eq!(binary(encode(Framing::V1, &want)), frame);
    }

    #[test]
    fn legacy_vector_comm_msg_with_a_buffer() {
        let frame = include_bytes!("vectors/legacy_comm_msg.bin");
        let want = expected(include_str!("vectors/legacy_comm_msg.json"));
        assert_eq!(
            decode(Framing::Legacy, Incoming::Binary(frame)),
            Ok(want.clone())
        );
        // serialize_binary_message writes its JSON with json.dumps's default separators (", ",
        // ": ") and ASCII escapes, ours is compact: the table's shape, the JSON's value and the
        // buffers must agree, not the bytes.
        let ours = binary(encode(Framing::Legacy, &want));
        let count = u32::from_be_bytes(word(frame, 0));
        assert_eq!((u32::from_be_bytes(word(&ours, 0)), count), (2, 2));
        let json = |f: &[u8]| -> Value {
            let (start, end) = (
                u32::from_be_bytes(word(f, 1)),
                u32::from_be_bytes(word(f, 2)),
            );
            serde_json::from_slice(&f[start as usize..end as usize]).unwrap()
        };
        assert_eq!(json(&ours), json(frame));
        let buffer = |f: &[u8]| f[u32::from_be_bytes(word(f, 2)) as usize..].to_vec();
        assert_eq!(buffer(&ours), buffer(frame));
        assert_eq!(decode(Framing::Legacy, Incoming::Binary(&ours)), Ok(want));
    }

    /// A deterministic generator (64-bit LCG, Knuth's constants) for the mutation test.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(self.0 >> 33).unwrap() % n.max(1)
        }
    }

    fn incoming(out: &Outgoing) -> Incoming<'_> {
        match out {
            Outgoing::Text(text) => Incoming::Text(text),
            Outgoing::Binary(bytes) => Incoming::Binary(bytes),
        }
    }

    /// Decodes a frame every way (binary in both forms, and as text); returns how many decoded.
    /// Whatever decodes must re-encode to a frame that decodes to the same message.
    fn check(frame: &[u8]) -> usize {
        let text = String::from_utf8_lossy(frame);
        let ways = [
            (Framing::V1, Incoming::Binary(frame)),
            (Framing::Legacy, Incoming::Binary(frame)),
            (Framing::Legacy, Incoming::Text(&text)),
        ];
        let mut decoded = 0;
        for (framing, frame) in ways {
            if let Ok(message) = decode_from(framing, frame, true) {
                let again = encode(framing, &message);
                assert_eq!(decode_from(framing, incoming(&again), true), Ok(message));
                decoded += 1;
            }
        }
        decoded
    }

    #[test]
    fn truncated_and_mutated_frames_never_panic() {
        let seeds: Vec<Vec<u8>> = vec![
            binary(encode(Framing::V1, &message(Channel::Shell, &[]))),
            binary(encode(
                Framing::V1,
                &message(Channel::Shell, &[b"ab", b"", b"\xff"]),
            )),
            binary(encode(
                Framing::Legacy,
                &message(Channel::Control, &[b"x", b"yz"]),
            )),
            text(encode(Framing::Legacy, &message(Channel::Stdin, &[]))).into_bytes(),
            include_bytes!("vectors/v1_execute_request.bin").to_vec(),
            include_bytes!("vectors/v1_display_data.bin").to_vec(),
            include_bytes!("vectors/legacy_comm_msg.bin").to_vec(),
        ];
        let mut rng = Lcg(20);
        let (mut frames, mut decoded) = (0, 0);
        for seed in &seeds {
            for cut in 0..=seed.len() {
                decoded += check(&seed[..cut]);
                frames += 1;
            }
            for at in 0..seed.len() {
                for value in [
                    0,
                    1,
                    0x7f,
                    0x80,
                    0xff,
                    seed[at] ^ 1,
                    seed[at].wrapping_add(8),
                ] {
                    let mut frame = seed.clone();
                    frame[at] = value;
                    decoded += check(&frame);
                    frames += 1;
                }
            }
            for _ in 0..2000 {
                let mut frame = seed.clone();
                for _ in 0..=rng.below(4) {
                    match rng.below(4) {
                        0 => frame.truncate(rng.below(frame.len() + 1)),
                        1 => frame.insert(
                            rng.below(frame.len() + 1),
                            u8::try_from(rng.below(256)).unwrap(),
                        ),
                        2 if !frame.is_empty() => drop(frame.remove(rng.below(frame.len()))),
                        _ if !frame.is_empty() => {
                            let at = rng.below(frame.len());
                            frame[at] = u8::try_from(rng.below(256)).unwrap();
                        }
                        _ => {}
                    }
                }
                decoded += check(&frame);
                frames += 1;
            }
        }
        // Both outcomes are exercised: most mutants are refused, some still decode.
        assert!(
            decoded > frames / 50 && decoded < frames,
            "{decoded} of {frames} decoded"
        );
    }
}
