//! Serving HTTP/1.1 with deadlines. `axum::serve` sets no timer, so a client that connects and
//! sends nothing, or half a request, or a body one byte a minute, holds a connection (and a
//! task) forever. Here every connection has:
//! - a header deadline: the request head must arrive within it, for the first request and for
//!   each next one on a kept-alive connection (which is also the idle timeout);
//! - a request deadline: the handler, including reading the body, must answer within it.
//!
//! WebSocket upgrades leave both behind once upgraded; the WebSocket's own pings then decide.
//! [`ReadDeadline`] gives connections of other protocols (gRPC over HTTP/2) deadlines for their
//! first byte and for silence.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

/// How long each part of a request may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// For a request's head, counted from when the server starts waiting for it (so it is also
    /// how long a kept-alive connection may sit idle).
    pub header: Duration,
    /// For the handler's answer, reading the request body included.
    pub request: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            header: Duration::from_secs(30),
            request: Duration::from_secs(120),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets open connections finish
/// their current request (the caller bounds how long it waits for this future).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    deadlines: Deadlines,
) {
    serve_with(listener, app, shutdown, deadlines, Plain).await;
}

/// What turns an accepted TCP connection into the byte stream HTTP is read from: nothing
/// ([`Plain`]), or a TLS handshake. It runs in the connection's own task, under the header
/// deadline.
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream after the handshake.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Performs the handshake.
    fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Plain TCP: no handshake.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Io = tokio::net::TcpStream;
    async fn handshake(&self, tcp: tokio::net::TcpStream) -> std::io::Result<Self::Io> {
        Ok(tcp)
    }
}

/// [`serve`], with each connection passed through `handshake` first (TLS). Every request
/// carries the peer's address as `axum::extract::ConnectInfo<SocketAddr>`.
pub async fn serve_with<H: Handshake>(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    deadlines: Deadlines,
    handshake: H,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Frames are small and latency-bound: never let Nagle hold one back for an ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        let handshake = handshake.clone();
        connections.spawn(async move {
            let stream =
                match tokio::time::timeout(deadlines.header, handshake.handshake(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "handshake took too long");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut app = app.clone();
                async move {
                    let mut request = request.map(Body::new);
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    match tokio::time::timeout(deadlines.request, app.call(request)).await {
                        Ok(response) => response,
                        Err(_) => Ok(too_slow()),
                    }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(deadlines.header)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn too_slow() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        axum::http::StatusCode::REQUEST_TIMEOUT,
        axum::Json(serde_json_message()),
    )
        .into_response()
}

fn serde_json_message() -> std::collections::BTreeMap<&'static str, &'static str> {
    std::collections::BTreeMap::from([
        ("error", "request_timeout"),
        ("message", "the request took too long to arrive"),
    ])
}

/// A connection that must send its first byte within a deadline (an HTTP/2 preface, a TLS
/// hello) and then something at least every `idle` (HTTP/2 keep-alive pings make a live
/// connection answer well within it): a client that connects and says nothing, or stops
/// half-way, is dropped.
#[derive(Debug)]
pub struct ReadDeadline<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<T> ReadDeadline<T> {
    pub fn new(inner: T, first: Duration, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(first)),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn server(deadlines: Deadlines) -> (std::net::SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", axum::routing::get(|| async { "hello" }))
            .route(
                "/echo",
                axum::routing::put(|body: String| async move { body }),
            );
        let token = CancellationToken::new();
        tokio::spawn(serve(listener, app, token.clone(), deadlines));
        (addr, token)
    }

    /// Reads until the server closes; the bytes it sent.
    async fn until_closed(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn silent_half_and_slow_clients_are_cut_off() {
        let (addr, token) = server(Deadlines {
            header: Duration::from_millis(300),
            request: Duration::from_millis(300),
        })
        .await;
        // Says nothing.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(until_closed(&mut silent).await, "");
        // Half a request head.
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let out = until_closed(&mut half).await;
        assert!(!out.contains("hello"), "{out}");
        // A body that never finishes arriving.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
            .await
            .unwrap();
        let out = until_closed(&mut slow).await;
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        // A kept-alive connection that goes idle after a request.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let out = until_closed(&mut idle).await;
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("hello"),
            "{out}"
        );
        token.cancel();
    }

    #[tokio::test]
    async fn silent_connections_fail_and_talking_ones_live() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let mut guarded = ReadDeadline::new(
            stream,
            Duration::from_millis(200),
            Duration::from_millis(200),
        );
        let mut buf = [0u8; 8];
        // A peer that keeps talking is read as long as it does.
        for _ in 0..5 {
            client.write_all(b"ping").await.unwrap();
            assert_eq!(guarded.read(&mut buf).await.unwrap(), 4);
        }
        // Then silence.
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }
}
