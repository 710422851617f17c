//! Probes of Middleman: a tiny HTTP/1.1 client for Middleman's own endpoints (`/readyz`, `/status`): Watchman only
//! ever talks to them on loopback or the pod network, so a full client library is not worth
//! its weight. Any failure is `None`: a pod that does not answer is judged by its caller.

/// GET `path` on `base` (`http://host:port`): the status and the body (at most 64 KiB, within
/// 2 s).
pub(super) async fn get(base: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let hostport = base.strip_prefix("http://")?.trim_end_matches('/');
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(512);
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}

/// GET `path` on `base` and decode its JSON, if the answer is 200.
pub(super) async fn get_json<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> Option<T> {
    let (status, body) = get(base, path).await?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}
