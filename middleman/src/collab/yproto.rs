//! The Yjs wire protocol (y-protocols' sync and awareness messages, as y-websocket frames them),
//! carried in binary WebSocket frames. Hand-written over lib0's variable-length encoding so that
//! every byte a client sends is bounds-checked before anything is allocated for it.
//!
//! ```text
//! message   = varuint(0) sync | varuint(1) varbytes(awareness_update) | varuint(3)  (query awareness)
//! sync      = varuint(0) varbytes(state_vector) | varuint(1) varbytes(update) | varuint(2) varbytes(update)
//! awareness_update = varuint(n) { varuint(client_id) varuint(clock) varstring(json_state) }*n
//! ```

/// A decoded protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YMessage {
    /// "Here is my state vector; send me what I miss."
    SyncStep1(Vec<u8>),
    /// The answer to step 1: an update holding what the peer missed.
    SyncStep2(Vec<u8>),
    /// A live document update.
    Update(Vec<u8>),
    /// An awareness (presence) update.
    Awareness(Vec<u8>),
    /// "Send me every awareness state you know."
    QueryAwareness,
}

/// One client's awareness state in an awareness update. `state` is JSON text; `"null"` means
/// the client left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    pub client: u64,
    pub clock: u64,
    pub state: String,
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YError {
    #[error("truncated message")]
    Truncated,
    #[error("variable-length integer too long")]
    Overflow,
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("awareness state is not UTF-8")]
    NotUtf8,
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

const SYNC: u64 = 0;
const AWARENESS: u64 = 1;
const QUERY_AWARENESS: u64 = 3;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn uint(&mut self) -> Result<u64, YError> {
        let mut value: u64 = 0;
        let mut shift = 0;
        loop {
            let byte = *self.buf.get(self.pos).ok_or(YError::Truncated)?;
            self.pos += 1;
            if shift >= 64 {
                return Err(YError::Overflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], YError> {
        let len = usize::try_from(self.uint()?).map_err(|_| YError::Overflow)?;
        let end = self.pos.checked_add(len).ok_or(YError::Overflow)?;
        let slice = self.buf.get(self.pos..end).ok_or(YError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn finish(&self) -> Result<(), YError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(YError::Trailing(n)),
        }
    }
}

fn write_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_uint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl YMessage {
    /// Parses one binary frame.
    pub fn decode(buf: &[u8]) -> Result<Self, YError> {
        let mut r = Reader { buf, pos: 0 };
        let message = match r.uint()? {
            SYNC => match r.uint()? {
                0 => YMessage::SyncStep1(r.bytes()?.to_vec()),
                1 => YMessage::SyncStep2(r.bytes()?.to_vec()),
                2 => YMessage::Update(r.bytes()?.to_vec()),
                other => return Err(YError::UnknownType(other)),
            },
            AWARENESS => YMessage::Awareness(r.bytes()?.to_vec()),
            QUERY_AWARENESS => YMessage::QueryAwareness,
            other => return Err(YError::UnknownType(other)),
        };
        r.finish()?;
        Ok(message)
    }

    /// Encodes one binary frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            YMessage::SyncStep1(b) => {
                write_uint(&mut out, SYNC);
                write_uint(&mut out, 0);
                write_bytes(&mut out, b);
            }
            YMessage::SyncStep2(b) => {
                write_uint(&mut out, SYNC);
                write_uint(&mut out, 1);
                write_bytes(&mut out, b);
            }
            YMessage::Update(b) => {
                write_uint(&mut out, SYNC);
                write_uint(&mut out, 2);
                write_bytes(&mut out, b);
            }
            YMessage::Awareness(b) => {
                write_uint(&mut out, AWARENESS);
                write_bytes(&mut out, b);
            }
            YMessage::QueryAwareness => write_uint(&mut out, QUERY_AWARENESS),
        }
        out
    }
}

/// Parses an awareness update.
pub fn decode_awareness(buf: &[u8]) -> Result<Vec<AwarenessEntry>, YError> {
    let mut r = Reader { buf, pos: 0 };
    let n = r.uint()?;
    // Every entry takes at least three bytes: never pre-allocate more than the input can hold.
    let mut entries = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(buf.len() / 3));
    for _ in 0..n {
        let client = r.uint()?;
        let clock = r.uint()?;
        let state = std::str::from_utf8(r.bytes()?)
            .map_err(|_| YError::NotUtf8)?
            .to_owned();
        entries.push(AwarenessEntry {
            client,
            clock,
            state,
        });
    }
    r.finish()?;
    Ok(entries)
}

/// Encodes an awareness update.
pub fn encode_awareness(entries: &[AwarenessEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    write_uint(&mut out, entries.len() as u64);
    for e in entries {
        write_uint(&mut out, e.client);
        write_uint(&mut out, e.clock);
        write_bytes(&mut out, e.state.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_message() {
        for m in [
            YMessage::SyncStep1(vec![0]),
            YMessage::SyncStep2(vec![1, 2, 3]),
            YMessage::Update(vec![0xff; 300]),
            YMessage::Awareness(encode_awareness(&[AwarenessEntry {
                client: 1 << 52,
                clock: 7,
                state: r#"{"user":{"name":"a"}}"#.into(),
            }])),
            YMessage::QueryAwareness,
        ] {
            assert_eq!(YMessage::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn matches_lib0_bytes() {
        // y-protocols' writeSyncStep1 of an empty state vector ([0]): 0, 0, len 1, 0.
        assert_eq!(YMessage::SyncStep1(vec![0]).encode(), vec![0, 0, 1, 0]);
        // lib0 writes 300 as 0xac 0x02.
        let mut out = Vec::new();
        write_uint(&mut out, 300);
        assert_eq!(out, vec![0xac, 0x02]);
    }

    #[test]
    fn hostile_input_is_refused_without_allocating() {
        assert_eq!(YMessage::decode(&[]), Err(YError::Truncated));
        assert_eq!(YMessage::decode(&[9]), Err(YError::UnknownType(9)));
        // Claims a 2^60-byte payload.
        let mut huge = vec![0, 2];
        write_uint(&mut huge, 1 << 60);
        assert!(YMessage::decode(&huge).is_err());
        assert_eq!(YMessage::decode(&[0x80; 20]), Err(YError::Overflow));
        assert_eq!(YMessage::decode(&[3, 0]), Err(YError::Trailing(1)));
        let mut many = Vec::new();
        write_uint(&mut many, u64::MAX >> 1);
        assert_eq!(decode_awareness(&many), Err(YError::Truncated));
    }
}
