//! One side of a relayed WebSocket as a byte stream the relay can wait on without holding a
//! buffer: a plain TCP connection is waited on for readiness and read only when bytes are
//! there, so ten thousand idle connections hold no read buffers at all. Anything else (a TLS
//! stream) keeps a small buffer of its own.

use std::io;

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How much one read takes at most.
pub const READ_BYTES: usize = 16 * 1024;

/// A side's stream.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Other(Buffered),
}

/// A stream read through a buffer of its own (a TLS stream).
#[derive(Debug)]
pub struct Buffered {
    io: TokioIo<Upgraded>,
    buf: BytesMut,
    ended: bool,
}

impl Conn {
    /// The stream under an upgraded HTTP connection, and the bytes HTTP had already read past
    /// the handshake (they come first).
    pub fn from_upgraded(upgraded: Upgraded) -> (Self, Bytes) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (Conn::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (
                Conn::Other(Buffered {
                    io: TokioIo::new(upgraded),
                    buf: BytesMut::new(),
                    ended: false,
                }),
                Bytes::new(),
            ),
        }
    }

    /// Waits until a read would not block (bytes, the end, or an error are there). Cancel
    /// safe: nothing is lost if another event wins.
    pub async fn ready(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.readable().await,
            Conn::Other(b) => {
                if !b.buf.is_empty() || b.ended {
                    return Ok(());
                }
                b.buf.reserve(4096);
                // `read_buf` is cancel safe: no bytes are taken unless it completes.
                if b.io.read_buf(&mut b.buf).await? == 0 {
                    b.ended = true;
                }
                Ok(())
            }
        }
    }

    /// Appends what can be read now to `into`: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing is there after all.
    pub fn try_read(&mut self, into: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_read_buf(into),
            Conn::Other(b) => {
                if b.buf.is_empty() {
                    return if b.ended {
                        Ok(0)
                    } else {
                        Err(io::ErrorKind::WouldBlock.into())
                    };
                }
                let n = b.buf.len();
                into.extend_from_slice(&b.buf.split_to(n));
                Ok(n)
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes).await,
            Conn::Other(b) => {
                b.io.write_all(bytes).await?;
                b.io.flush().await
            }
        }
    }

    /// Ends the sending side (best effort): the peer reads the end after what was sent.
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown().await,
            Conn::Other(b) => b.io.shutdown().await,
        };
    }
}
