//! A ZeroMQ peer of our own: ZMTP 3.0 with the NULL mechanism, over a unix or TCP stream we
//! already hold, for the three socket types a Jupyter client uses (DEALER for shell, control
//! and stdin; SUB for IOPub; REQ for the heartbeat), one peer each.
//!
//! Why not a ZeroMQ library: a TCP-only kernel (Deno's) listens inside the jail's network
//! namespace, where Middleman cannot connect; the jail's init connects for it and hands over the
//! connected socket ([`kernel_sandbox::bridge`]), and a library connects only to addresses.
//! Owning the stream also means a request is written by the task that sends it, not by a
//! library's writer task one wake-up later, which is most of a Deno round trip's cost.
//!
//! Frames are read into one buffer a message at a time and handed out as slices of it, so
//! [`Receiver::recv`] is cancel-safe: a partial message stays in the buffer for the next call.
//! [`Sender::send`] writes a whole message with one `write_all` and is not cancel-safe.

use std::os::fd::AsFd as _;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// The largest message accepted from a kernel: a message is held whole before it is decoded
/// (an oversized output keeps only a prefix after that), so this bounds one read's memory.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 30;

const FLAG_MORE: u8 = 0x01;
const FLAG_LONG: u8 = 0x02;
const FLAG_COMMAND: u8 = 0x04;

/// The socket type this side plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dealer,
    Sub,
    Req,
}

impl Kind {
    fn name(self) -> &'static [u8] {
        match self {
            Kind::Dealer => b"DEALER",
            Kind::Sub => b"SUB",
            Kind::Req => b"REQ",
        }
    }

    /// The peer types this one talks to (ZMTP's compatibility table).
    fn peers(self) -> &'static [&'static [u8]] {
        match self {
            Kind::Dealer => &[b"ROUTER", b"DEALER", b"REP"],
            Kind::Sub => &[b"PUB", b"XPUB"],
            Kind::Req => &[b"REP", b"ROUTER"],
        }
    }
}

/// What went wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ZmtpError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("the peer is a {0}, not a socket this one talks to")]
    Incompatible(String),
    #[error("a message of more than {} MiB", MAX_MESSAGE_BYTES >> 20)]
    TooLarge,
    #[error("an empty message")]
    Empty,
}

/// A connected stream of either family, split into owned halves.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

enum ReadHalf {
    Unix(unix::OwnedReadHalf),
    Tcp(tcp::OwnedReadHalf),
}

enum WriteHalf {
    Unix(unix::OwnedWriteHalf),
    Tcp(tcp::OwnedWriteHalf),
}

impl Stream {
    /// Connects to a unix socket (a kernel's `ipc://` endpoint).
    pub(crate) async fn unix(path: &Path) -> std::io::Result<Self> {
        Ok(Stream::Unix(UnixStream::connect(path).await?))
    }

    /// Connects to a TCP port.
    pub(crate) async fn tcp(host: &str, port: u16) -> std::io::Result<Self> {
        Ok(Stream::Tcp(TcpStream::connect((host, port)).await?))
    }

    /// Connects to a socket of the jail's bridge and takes the TCP connection to the kernel it
    /// hands over ([`kernel_sandbox::bridge`]).
    pub(crate) async fn handed(path: &Path) -> std::io::Result<Self> {
        let unix = UnixStream::connect(path).await?;
        loop {
            unix.readable().await?;
            match unix.try_io(Interest::READABLE, || {
                kernel_sandbox::bridge::receive(unix.as_fd())
            }) {
                Ok(tcp) => {
                    tcp.set_nonblocking(true)?;
                    return Ok(Stream::Tcp(TcpStream::from_std(tcp)?));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            Stream::Tcp(s) => {
                // Jupyter messages are small and latency-bound.
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Unix(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tcp(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Unix(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Unix(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Unix(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The receiving half of a connection.
pub(crate) struct Receiver {
    stream: ReadHalf,
    kind: Kind,
    buffer: BytesMut,
}

/// The sending half of a connection.
pub(crate) struct Sender {
    stream: WriteHalf,
    kind: Kind,
    out: Vec<u8>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("kind", &self.kind).finish()
    }
}

/// Greets the peer on `stream` as a `kind` socket (with `identity`, which a ROUTER peer
/// addresses us by) and returns the connection's halves; a SUB subscribes to everything.
pub(crate) async fn handshake(
    stream: Stream,
    kind: Kind,
    identity: Option<&[u8]>,
) -> Result<(Receiver, Sender), ZmtpError> {
    let (mut read, write) = stream.split();
    let mut sender = Sender {
        stream: write,
        kind,
        out: Vec::with_capacity(4096),
    };
    sender.stream.write_all(&greeting()).await?;
    let mut theirs = [0u8; 64];
    read.read_exact(&mut theirs).await?;
    if theirs[0] != 0xff || theirs[9] != 0x7f {
        return Err(ZmtpError::Handshake("not a ZeroMQ peer"));
    }
    if theirs[10] < 3 {
        return Err(ZmtpError::Handshake("the peer speaks ZMTP 2 or older"));
    }
    if &theirs[12..16] != b"NULL" || theirs[16..32].iter().any(|&b| b != 0) {
        return Err(ZmtpError::Handshake("the peer wants a security mechanism"));
    }
    sender.out.clear();
    ready(kind, identity, &mut sender.out);
    sender.stream.write_all(&sender.out).await?;
    let body = read_command(&mut read).await?;
    let peer = peer_type(&body)?;
    if !kind.peers().contains(&peer.as_slice()) {
        return Err(ZmtpError::Incompatible(
            String::from_utf8_lossy(&peer).into_owned(),
        ));
    }
    if kind == Kind::Sub {
        // ZMTP 3.0's subscription: a message whose first byte is 1, then the prefix (none).
        sender.write(&[Bytes::from_static(&[1])]).await?;
    }
    let receiver = Receiver {
        stream: read,
        kind,
        buffer: BytesMut::with_capacity(64 * 1024),
    };
    Ok((receiver, sender))
}

/// Our greeting: signature, version 3.0, NULL, as a client.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Appends a READY command with our socket type (and identity) as a frame.
fn ready(kind: Kind, identity: Option<&[u8]>, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(64);
    body.push(5);
    body.extend_from_slice(b"READY");
    let mut property = |name: &[u8], value: &[u8]| {
        body.push(name.len() as u8); // names here are ASCII constants, under 256 bytes
        body.extend_from_slice(name);
        body.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(value);
    };
    property(b"Socket-Type", kind.name());
    if let Some(id) = identity {
        property(b"Identity", id);
    }
    frame_header(FLAG_COMMAND, body.len(), out);
    out.extend_from_slice(&body);
}

/// Reads one command frame during the handshake (nothing else may come before READY).
async fn read_command(read: &mut ReadHalf) -> Result<Vec<u8>, ZmtpError> {
    let flags = read.read_u8().await?;
    if flags & FLAG_COMMAND == 0 {
        return Err(ZmtpError::Handshake("expected READY"));
    }
    let size = if flags & FLAG_LONG != 0 {
        usize::try_from(read.read_u64().await?).unwrap_or(usize::MAX)
    } else {
        usize::from(read.read_u8().await?)
    };
    if size > 64 * 1024 {
        return Err(ZmtpError::Handshake("READY too large"));
    }
    let mut body = vec![0u8; size];
    read.read_exact(&mut body).await?;
    Ok(body)
}

/// The `Socket-Type` property of a READY command's body.
fn peer_type(body: &[u8]) -> Result<Vec<u8>, ZmtpError> {
    let malformed = || ZmtpError::Handshake("malformed READY");
    let name_len = usize::from(*body.first().ok_or(ZmtpError::Handshake("empty command"))?);
    if body.get(1..1 + name_len) != Some(b"READY".as_slice()) {
        return Err(ZmtpError::Handshake("expected READY"));
    }
    let mut rest = &body[1 + name_len..];
    // Properties: a name of one length byte, a value of four.
    while let Some(&n) = rest.first() {
        let name = rest.get(1..1 + usize::from(n)).ok_or_else(malformed)?;
        let at = 1 + usize::from(n);
        let len = rest
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(malformed)?;
        let value = rest.get(at + 4..at + 4 + len).ok_or_else(malformed)?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            return Ok(value.to_vec());
        }
        rest = &rest[at + 4 + len..];
    }
    Err(malformed())
}

fn frame_header(flags: u8, size: usize, out: &mut Vec<u8>) {
    match u8::try_from(size) {
        Ok(short) => {
            out.push(flags);
            out.push(short);
        }
        Err(_) => {
            out.push(flags | FLAG_LONG);
            out.extend_from_slice(&(size as u64).to_be_bytes());
        }
    }
}

impl Sender {
    /// Sends one message of `frames` (a REQ socket puts its empty delimiter first).
    pub(crate) async fn send(&mut self, frames: &[Bytes]) -> Result<(), ZmtpError> {
        if frames.is_empty() {
            return Err(ZmtpError::Empty);
        }
        if self.kind == Kind::Req {
            let mut with_delimiter = Vec::with_capacity(frames.len() + 1);
            with_delimiter.push(Bytes::new());
            with_delimiter.extend_from_slice(frames);
            return self.write(&with_delimiter).await;
        }
        self.write(frames).await
    }

    async fn write(&mut self, frames: &[Bytes]) -> Result<(), ZmtpError> {
        self.out.clear();
        let last = frames.len() - 1;
        for (i, frame) in frames.iter().enumerate() {
            let more = if i < last { FLAG_MORE } else { 0 };
            frame_header(more, frame.len(), &mut self.out);
            self.out.extend_from_slice(frame);
        }
        self.stream.write_all(&self.out).await?;
        // A large message should not keep its buffer for the connection's life.
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::with_capacity(4096);
        }
        Ok(())
    }
}

impl Receiver {
    /// The next message's frames (a REQ socket's empty delimiter removed; commands such as a
    /// peer's PING skipped). Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Result<Vec<Bytes>, ZmtpError> {
        loop {
            match parse(&mut self.buffer)? {
                Parsed::Message(mut frames) => {
                    if self.kind == Kind::Req && frames.first().is_some_and(Bytes::is_empty) {
                        frames.remove(0);
                    }
                    return Ok(frames);
                }
                Parsed::Command => continue,
                Parsed::Need(more) => {
                    // Grown in steps: a frame's declared size is the peer's claim.
                    self.buffer.reserve(more.clamp(8 * 1024, 16 << 20));
                    if self.stream.read_buf(&mut self.buffer).await? == 0 {
                        return Err(ZmtpError::Closed);
                    }
                }
            }
        }
    }
}

enum Parsed {
    Message(Vec<Bytes>),
    Command,
    /// At least this many more bytes are needed.
    Need(usize),
}

/// Takes one whole message (or command) off the front of `buffer`, if it holds one.
fn parse(buffer: &mut BytesMut) -> Result<Parsed, ZmtpError> {
    // (start of body, length) of each frame so far.
    let mut frames: Vec<(usize, usize)> = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(&flags) = buffer.get(at) else {
            return Ok(Parsed::Need(1));
        };
        let (header, size) = if flags & FLAG_LONG != 0 {
            let Some(b) = buffer.get(at + 1..at + 9) else {
                return Ok(Parsed::Need(at + 9 - buffer.len()));
            };
            let size = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            (9, usize::try_from(size).unwrap_or(usize::MAX))
        } else {
            let Some(&b) = buffer.get(at + 1) else {
                return Ok(Parsed::Need(1));
            };
            (2, usize::from(b))
        };
        if size > MAX_MESSAGE_BYTES || at + header + size > MAX_MESSAGE_BYTES + 64 * 1024 {
            return Err(ZmtpError::TooLarge);
        }
        let end = at + header + size;
        if buffer.len() < end {
            return Ok(Parsed::Need(end - buffer.len()));
        }
        if flags & FLAG_COMMAND != 0 {
            // Commands come between messages only; a PING needs no answer from a client.
            if frames.is_empty() {
                buffer.advance(end);
                return Ok(Parsed::Command);
            }
            return Err(ZmtpError::Handshake("a command inside a message"));
        }
        frames.push((at + header, size));
        at = end;
        if flags & FLAG_MORE == 0 {
            let whole = buffer.split_to(at).freeze();
            return Ok(Parsed::Message(
                frames
                    .into_iter()
                    .map(|(start, len)| whole.slice(start..start + len))
                    .collect(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let more = if i + 1 < frames.len() { FLAG_MORE } else { 0 };
            frame_header(more, f.len(), &mut out);
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn a_message_is_taken_whole_only_when_all_of_it_arrived() {
        let big = vec![7u8; 300];
        let bytes = encode(&[b"<IDS|MSG>", b"sig", &big]);
        let mut buffer = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            assert!(
                matches!(parse(&mut buffer).unwrap(), Parsed::Need(_)),
                "at {i}"
            );
            buffer.extend_from_slice(&[*byte]);
        }
        // A command before the next message is skipped; the next message stays.
        buffer.extend_from_slice(&[FLAG_COMMAND, 5, 4, b'P', b'I', b'N', b'G']);
        buffer.extend_from_slice(&encode(&[b"next"]));
        let Parsed::Message(frames) = parse(&mut buffer).unwrap() else {
            panic!("a message");
        };
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], b"<IDS|MSG>");
        assert_eq!(frames[2], big);
        assert!(matches!(parse(&mut buffer).unwrap(), Parsed::Command));
        let Parsed::Message(frames) = parse(&mut buffer).unwrap() else {
            panic!("a message");
        };
        assert_eq!(frames, vec![Bytes::from_static(b"next")]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn a_frame_larger_than_the_limit_is_refused_before_it_is_read() {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&[FLAG_LONG]);
        buffer.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse(&mut buffer), Err(ZmtpError::TooLarge)));
    }

    #[test]
    fn ready_names_the_socket_type_and_identity() {
        let mut out = Vec::new();
        ready(Kind::Dealer, Some(b"abc"), &mut out);
        assert_eq!(out[0], FLAG_COMMAND);
        assert_eq!(usize::from(out[1]), out.len() - 2);
        assert_eq!(peer_type(&out[2..]).unwrap(), b"DEALER");
        assert!(out.windows(3).any(|w| w == b"abc"));
        assert!(peer_type(b"\x05READY\x0bSocket-Type\x00\x00\x00\xff").is_err());
    }
}
