//! WebSocket frames read as they pass (RFC 6455, section 5.2). The relay forwards every frame's
//! bytes as they arrive, masked or not, and looks only at headers: a message is never assembled
//! here, so a large frame costs the gateway no memory and an idle connection holds no buffer.
//!
//! What is checked on the client's side, before its bytes reach the pod: frames are masked, use
//! no reserved bits (no extension is ever agreed through the gateway) and known opcodes; control
//! frames are whole and at most 125 bytes; continuations follow a started message; a message is
//! at most `--max-frame-bytes` over all its fragments. Close frames are held back (they are at
//! most 125 bytes) so the relay can decide what each side is told.

/// A frame the relay must not pass on: the close code and reason to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Self {
        Self { code: 1002, reason }
    }
}

/// Which side frames come from: clients must mask theirs, servers must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Pod,
}

/// A close frame, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The status code, if the frame had one.
    pub code: Option<u16>,
    pub reason: String,
    /// The frame as it was sent (header and payload, masked if it was).
    pub raw: Vec<u8>,
}

/// What a call to [`Frames::feed`] ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Every byte was taken; more may follow.
    More,
    /// A close frame ended the stream; what followed it was ignored.
    Closed(Close),
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One direction's position in its stream of frames.
#[derive(Debug)]
pub struct Frames {
    origin: Origin,
    max_message: u64,
    /// The current frame's header, while it is incomplete (at most 14 bytes).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// A close frame being read: its bytes so far.
    close: Option<Vec<u8>>,
    /// Inside a fragmented message: its payload bytes so far.
    message: Option<u64>,
}

impl Frames {
    pub fn new(origin: Origin, max_message: u64) -> Self {
        Self {
            origin,
            max_message,
            head: [0; 14],
            head_len: 0,
            remaining: 0,
            close: None,
            message: None,
        }
    }

    /// True between frames: something of the relay's own may be sent this way now.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.remaining == 0 && self.close.is_none()
    }

    /// Takes `input`, appending to `out` the bytes to pass on. On a violation, `out` holds
    /// every frame before the offending one, and the stream must end.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<Fed, Violation> {
        while !input.is_empty() {
            if self.remaining == 0 && self.close.is_none() {
                // A header, possibly split over reads.
                let take = (header_len(&self.head[..self.head_len]) - self.head_len)
                    .min(input.len())
                    .min(14 - self.head_len);
                self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                self.head_len += take;
                input = &input[take..];
                let need = header_len(&self.head[..self.head_len]);
                if self.head_len < need {
                    continue;
                }
                match self.start_frame(out) {
                    Ok(Some(close)) => return Ok(Fed::Closed(close)),
                    Ok(None) => continue,
                    Err(violation) => {
                        // The offending frame is dropped whole: what was passed on ends
                        // between frames.
                        self.head_len = 0;
                        self.remaining = 0;
                        return Err(violation);
                    }
                }
            }
            let take = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            match &mut self.close {
                Some(buf) => buf.extend_from_slice(&input[..take]),
                None => out.extend_from_slice(&input[..take]),
            }
            self.remaining -= take as u64;
            input = &input[take..];
            if self.remaining == 0
                && let Some(close) = self.finish_close()?
            {
                return Ok(Fed::Closed(close));
            }
        }
        Ok(Fed::More)
    }

    /// The header is complete: checks it and starts the frame. A close frame with no payload
    /// is returned at once.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<Option<Close>, Violation> {
        let head = &self.head[..self.head_len];
        let (b0, b1) = (head[0], head[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let masked = b1 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(Violation::protocol("reserved bits set"));
        }
        if masked != (self.origin == Origin::Client) {
            return Err(Violation::protocol(match self.origin {
                Origin::Client => "client frames must be masked",
                Origin::Pod => "server frames must not be masked",
            }));
        }
        let len = match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&head[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(Violation::protocol("frame length out of range"));
                }
                len
            }
            n => u64::from(n),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(Violation::protocol("control frames are whole and short"));
                }
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {
                let so_far = match (opcode, self.message) {
                    (OP_CONTINUATION, Some(n)) => n,
                    (OP_CONTINUATION, None) => {
                        return Err(Violation::protocol("continuation without a message"));
                    }
                    (_, Some(_)) => {
                        return Err(Violation::protocol("new message inside a fragmented one"));
                    }
                    (_, None) => 0,
                };
                let total = so_far.saturating_add(len);
                if total > self.max_message {
                    return Err(Violation {
                        code: 1009,
                        reason: "message too large",
                    });
                }
                self.message = (!fin).then_some(total);
            }
            _ => return Err(Violation::protocol("unknown opcode")),
        }
        self.remaining = len;
        if opcode == OP_CLOSE {
            let mut buf = Vec::with_capacity(self.head_len + 125);
            buf.extend_from_slice(head);
            self.close = Some(buf);
            self.head_len = 0;
            return if len == 0 {
                self.finish_close()
            } else {
                Ok(None)
            };
        }
        out.extend_from_slice(head);
        self.head_len = 0;
        Ok(None)
    }

    /// A close frame's last byte came: decodes it.
    fn finish_close(&mut self) -> Result<Option<Close>, Violation> {
        let Some(raw) = self.close.take() else {
            return Ok(None);
        };
        let head = header_len(&raw);
        let mut payload = raw[head..].to_vec();
        if raw[1] & 0x80 != 0 {
            let key = [raw[head - 4], raw[head - 3], raw[head - 2], raw[head - 1]];
            apply_mask(&mut payload, key);
        }
        let (code, reason) = match payload.len() {
            0 => (None, String::new()),
            1 => return Err(Violation::protocol("a close payload has a code")),
            _ => (
                Some(u16::from_be_bytes([payload[0], payload[1]])),
                String::from_utf8_lossy(&payload[2..]).into_owned(),
            ),
        };
        Ok(Some(Close { code, reason, raw }))
    }
}

/// How long the header that starts with `head` is (at least 2: the part that says).
fn header_len(head: &[u8]) -> usize {
    let Some(&b1) = head.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A close frame the gateway sends: unmasked to a client, masked with `mask` to a pod. The
/// reason is cut to fit (at most 123 bytes, on a character boundary).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control_frame(OP_CLOSE, payload, mask)
}

/// An empty ping, from the gateway to a client.
pub fn ping_frame() -> Vec<u8> {
    control_frame(OP_PING, Vec::new(), None)
}

fn control_frame(opcode: u8, mut payload: Vec<u8>, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    // Control payloads are at most 125 bytes: the length fits the first byte.
    let len = payload.len().min(125) as u8;
    payload.truncate(125);
    match mask {
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            apply_mask(&mut payload, key);
        }
        None => frame.push(len),
    }
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A frame as a client (masked) or a server sends it.
    fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut p = payload.to_vec();
        if let Some(k) = mask {
            f.extend_from_slice(&k);
            apply_mask(&mut p, k);
        }
        f.extend_from_slice(&p);
        f
    }

    const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    #[test]
    fn frames_pass_byte_for_byte_however_they_are_split() {
        let mut stream = frame(0x81, b"hello", KEY);
        stream.extend(frame(0x02, &[7; 300], KEY));
        stream.extend(frame(0x89, b"ping", KEY));
        stream.extend(frame(0x80, &[9; 70_000], KEY));
        for chunk in [1, 2, 3, 13, 4096, stream.len()] {
            let mut f = Frames::new(Origin::Client, 1 << 20);
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                assert_eq!(f.feed(piece, &mut out), Ok(Fed::More));
            }
            assert_eq!(out, stream, "split in {chunk}-byte reads");
            assert!(f.at_boundary());
        }
    }

    #[test]
    fn a_close_is_held_back_and_decoded() {
        let mut stream = frame(0x81, b"last", KEY);
        let close = frame(0x88, b"\x03\xe8bye", KEY);
        stream.extend(&close);
        stream.extend(frame(0x81, b"after", KEY));
        let mut f = Frames::new(Origin::Client, 1 << 20);
        let mut out = Vec::new();
        let mut fed = Fed::More;
        for piece in stream.chunks(3) {
            fed = f.feed(piece, &mut out).unwrap();
            if fed != Fed::More {
                break;
            }
        }
        assert_eq!(out, frame(0x81, b"last", KEY));
        assert_eq!(
            fed,
            Fed::Closed(Close {
                code: Some(1000),
                reason: "bye".into(),
                raw: close
            })
        );

        let mut f = Frames::new(Origin::Pod, u64::MAX);
        let empty = frame(0x88, b"", None);
        assert_eq!(
            f.feed(&empty, &mut out).unwrap(),
            Fed::Closed(Close {
                code: None,
                reason: String::new(),
                raw: empty
            })
        );
    }

    #[test]
    fn a_message_over_the_cap_is_refused_before_its_bytes_pass() {
        let mut f = Frames::new(Origin::Client, 100);
        let mut out = Vec::new();
        let first = frame(0x01, &[b'a'; 60], KEY);
        assert_eq!(f.feed(&first, &mut out), Ok(Fed::More));
        let err = f
            .feed(&frame(0x80, &[b'a'; 60], KEY), &mut out)
            .unwrap_err();
        assert_eq!(err.code, 1009);
        assert_eq!(out, first);
        assert!(f.at_boundary(), "the refused frame is not half passed on");
        // One frame over the cap, whatever it claims to carry.
        let mut f = Frames::new(Origin::Client, 100);
        let huge = [0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(f.feed(&huge, &mut Vec::new()).unwrap_err().code, 1009);
    }

    #[test]
    fn protocol_errors_are_refused() {
        let cases: [(&[u8], &str); 7] = [
            (&frame(0x81, b"x", None), "client frames must be masked"),
            (&frame(0xC1, b"x", KEY), "reserved bits set"),
            (&frame(0x83, b"x", KEY), "unknown opcode"),
            (
                &frame(0x09, b"x", KEY),
                "control frames are whole and short",
            ),
            (
                &frame(0x89, &[0; 126], KEY),
                "control frames are whole and short",
            ),
            (&frame(0x80, b"x", KEY), "continuation without a message"),
            (&frame(0x88, b"x", KEY), "a close payload has a code"),
        ];
        for (bytes, reason) in cases {
            let mut f = Frames::new(Origin::Client, 1 << 20);
            assert_eq!(
                f.feed(bytes, &mut Vec::new()),
                Err(Violation::protocol(reason)),
                "{bytes:?}"
            );
        }
        let mut f = Frames::new(Origin::Client, 1 << 20);
        let mut two = frame(0x01, b"a", KEY);
        two.extend(frame(0x81, b"b", KEY));
        assert_eq!(
            f.feed(&two, &mut Vec::new()).unwrap_err().reason,
            "new message inside a fragmented one"
        );
        let mut f = Frames::new(Origin::Pod, u64::MAX);
        assert_eq!(
            f.feed(&frame(0x81, b"x", KEY), &mut Vec::new())
                .unwrap_err()
                .reason,
            "server frames must not be masked"
        );
    }

    #[test]
    fn the_gateways_own_frames_read_back() {
        let long = "é".repeat(100);
        for (mask, origin) in [(None, Origin::Pod), (KEY, Origin::Client)] {
            let bytes = close_frame(4410, &long, mask);
            let mut f = Frames::new(origin, 1 << 20);
            let Fed::Closed(c) = f.feed(&bytes, &mut Vec::new()).unwrap() else {
                panic!("not a close");
            };
            assert_eq!(c.code, Some(4410));
            assert_eq!(c.reason, "é".repeat(61));
        }
        let mut out = Vec::new();
        let mut f = Frames::new(Origin::Pod, 1 << 20);
        assert_eq!(f.feed(&ping_frame(), &mut out), Ok(Fed::More));
        assert_eq!(out, [0x89, 0]);
    }
}
