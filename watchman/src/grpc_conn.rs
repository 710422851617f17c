//! gRPC connections with read deadlines: the first bytes (the HTTP/2 preface or a TLS hello)
//! within [`FIRST_BYTE`], then something at least every [`SILENCE`]. The server pings every
//! [`KEEPALIVE`], so a live client (even one only waiting on a `WatchAllocation` stream)
//! always answers well within it; one that connects and says nothing, or stops half-way, is
//! dropped instead of holding a connection forever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use httpserve::ReadDeadline;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new connection may take to send its first bytes.
pub(crate) const FIRST_BYTE: Duration = Duration::from_secs(10);
/// How often the server pings an HTTP/2 connection.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a connection may send nothing at all.
pub(crate) const SILENCE: Duration = Duration::from_secs(90);

/// An accepted gRPC connection.
#[derive(Debug)]
pub(crate) struct GrpcConn(ReadDeadline<TcpStream>);

impl GrpcConn {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self(ReadDeadline::new(tcp, FIRST_BYTE, SILENCE))
    }
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().connect_info()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
