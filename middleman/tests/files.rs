//! The file API with real parts: a real Middleman whose real kernel (in its sandbox, as its own
//! uid, in a workspace with a quota) plants symlinks and fifos while the API lists, uploads,
//! downloads, renames and deletes beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use session_token::Role;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A response: status, headers (lower-case names) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// One HTTP/1.1 request; `chunked` sends the body without a length, in 1 KiB chunks.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    chunked: bool,
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n"
    );
    if method == "POST" {
        head.push_str("Content-Type: application/json\r\n");
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    }
    // The server may answer (and close) before the body is all sent: write errors are fine.
    let _ = s.write_all(head.as_bytes()).await;
    if chunked {
        for chunk in body.chunks(1024) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            if s.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    } else {
        let _ = s.write_all(body).await;
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(server: &TestServer, path: &str, token: &str) -> Reply {
    send(server.addr, "GET", path, token, b"", false).await
}

/// The listed names, without dot files (IPython keeps its profile in the kernel's home).
fn names(listing: &Reply) -> Vec<String> {
    all_names(listing)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

fn all_names(listing: &Reply) -> Vec<String> {
    listing.json()["entries"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn kind_of(listing: &Reply, name: &str) -> String {
    listing.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_hostile_kernel_plants_are_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the file tests need root (the agent mounts the workspace's quota)"
    );
    // The kernel runs as a uid of its own, in a 4 MiB workspace mounted in the agent's mount
    // namespace: what the file API writes must reach it there, and be its to read.
    let server = TestServer::start(&[
        "--kernel-uid",
        &common::agent::own_uid(310_000),
        "--workspace-quota-mib",
        "4",
        "--max-upload-bytes",
        &(8 << 20).to_string(),
    ])
    .await;
    let editor = server.token("ada", Role::Editor);
    let viewer = server.token("vic", Role::Viewer);
    let mut kernel = server.client("ada", Role::Editor).await;

    // Upload, list, download.
    let csv = b"name,score\n\"Lovelace, Ada\",10\nBabbage,9\n";
    let put = send(
        server.addr,
        "PUT",
        "/api/files/content?path=data.csv",
        &editor,
        csv,
        false,
    )
    .await;
    assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
    let listing = get(&server, "/api/files?path=", &editor).await;
    assert_eq!(listing.status, 200);
    assert_eq!(names(&listing), ["data.csv"]);
    assert_eq!(listing.json()["max_upload_bytes"], 8 << 20);
    assert_eq!(listing.json()["can_edit"], true);
    let down = get(&server, "/api/files/content?path=data.csv", &viewer).await;
    assert_eq!(down.status, 200);
    assert_eq!(down.body, csv);
    assert_eq!(down.header("x-content-type-options"), Some("nosniff"));
    assert!(
        down.header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"data.csv\"")
    );
    let head = get(
        &server,
        "/api/files/content?path=data.csv&limit=10",
        &viewer,
    )
    .await;
    assert_eq!(head.body, &csv[..10]);
    assert_eq!(
        head.header("x-file-size"),
        Some(csv.len().to_string().as_str())
    );

    // The kernel, as its own uid, reads and overwrites what was uploaded.
    let run = kernel
        .run("print(open('data.csv').read().splitlines()[1])\nopen('data.csv', 'a').write('x,1\\n')\nprint('ok')")
        .await;
    assert_eq!(run.stdout(), "\"Lovelace, Ada\",10\nok\n", "{run:?}");

    // Rename (never replacing), then delete; a viewer can do neither.
    let rename = |from: &str, to: &str, token: &str| {
        let body = serde_json::json!({ "from": from, "to": to }).to_string();
        let token = token.to_owned();
        let addr = server.addr;
        async move {
            send(
                addr,
                "POST",
                "/api/files/rename",
                &token,
                body.as_bytes(),
                false,
            )
            .await
        }
    };
    assert_eq!(rename("data.csv", "scores.csv", &viewer).await.status, 403);
    assert_eq!(rename("data.csv", "scores.csv", &editor).await.status, 200);
    let run = kernel
        .run("import os\nprint(sorted(n for n in os.listdir('.') if not n.startswith('.')))")
        .await;
    assert_eq!(run.stdout(), "['scores.csv']\n", "{run:?}");
    kernel.run("open('other.txt', 'w').write('o')").await;
    let clash = rename("scores.csv", "other.txt", &editor).await;
    assert_eq!((clash.status, clash.code().as_str()), (409, "exists"));
    let put = send(
        server.addr,
        "PUT",
        "/api/files/content?path=v.txt",
        &viewer,
        b"v",
        false,
    )
    .await;
    assert_eq!(put.status, 403);
    let del = send(
        server.addr,
        "DELETE",
        "/api/files?path=other.txt",
        &viewer,
        b"",
        false,
    )
    .await;
    assert_eq!(del.status, 403);
    let del = send(
        server.addr,
        "DELETE",
        "/api/files?path=other.txt",
        &editor,
        b"",
        false,
    )
    .await;
    assert_eq!(del.status, 200);
    let listing = get(&server, "/api/files", &viewer).await;
    assert_eq!(names(&listing), ["scores.csv"]);
    assert_eq!(listing.json()["can_edit"], false);

    // Paths that leave the root, however spelt, are refused before touching the disk.
    for path in [
        "../etc/passwd",
        "/etc/passwd",
        "%2e%2e%2fetc%2fpasswd",
        "a/..%2F..%2Fetc",
        "a%00b",
        "./scores.csv",
    ] {
        let r = get(&server, &format!("/api/files/content?path={path}"), &editor).await;
        assert_eq!((r.status, r.code().as_str()), (400, "bad_path"), "{path}");
    }
    let long = "n".repeat(300);
    let r = get(&server, &format!("/api/files/content?path={long}"), &editor).await;
    assert_eq!(r.status, 400);

    // What the kernel plants: a symlink out, a fifo, a symlinked directory, a directory.
    let run = kernel
        .run("import os\nos.symlink('/etc/passwd', 'evil')\nos.mkfifo('pipe')\nos.symlink('/etc', 'etc')\nos.mkdir('sub')\nopen('sub/in.txt', 'w').write('inside')\nprint('planted')")
        .await;
    assert_eq!(run.stdout(), "planted\n", "{run:?}");
    let listing = get(&server, "/api/files?path=", &editor).await;
    assert_eq!(kind_of(&listing, "evil"), "symlink");
    assert_eq!(kind_of(&listing, "pipe"), "fifo");
    assert_eq!(kind_of(&listing, "etc"), "symlink");
    assert_eq!(kind_of(&listing, "sub"), "dir");
    assert_eq!(names(&listing)[0], "sub", "directories first");
    let started = Instant::now();
    for (path, code) in [
        ("evil", "symlink"),
        ("etc/passwd", "symlink"),
        ("pipe", "not_regular"),
        ("sub", "is_a_directory"),
    ] {
        let r = get(&server, &format!("/api/files/content?path={path}"), &editor).await;
        assert_eq!(r.code(), code, "{path}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("root:"),
            "{path}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a fifo must not block the server"
    );
    let r = get(&server, "/api/files?path=etc", &editor).await;
    assert_eq!((r.status, r.code().as_str()), (403, "symlink"));
    // Writing through a symlinked directory is refused too; into a real one works.
    let r = send(
        server.addr,
        "PUT",
        "/api/files/content?path=etc/x",
        &editor,
        b"x",
        false,
    )
    .await;
    assert_eq!(r.code(), "symlink");
    let r = get(&server, "/api/files/content?path=sub/in.txt", &viewer).await;
    assert_eq!(r.body, b"inside");
    // Uploading over the planted symlink replaces the link, never its target.
    let r = send(
        server.addr,
        "PUT",
        "/api/files/content?path=evil",
        &editor,
        b"mine",
        false,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        get(&server, "/api/files/content?path=evil", &editor)
            .await
            .body,
        b"mine"
    );
    // Deleting a link deletes the link.
    let run = kernel.run("os.symlink('/etc/hostname', 'link2')").await;
    assert!(
        run.outputs
            .iter()
            .all(|o| !matches!(o, doc_protocol::Output::Error { .. })),
        "{run:?}"
    );
    let r = send(
        server.addr,
        "DELETE",
        "/api/files?path=link2",
        &editor,
        b"",
        false,
    )
    .await;
    assert_eq!(r.status, 200);

    // The quota: a 6 MiB upload into a 4 MiB workspace is refused and leaves nothing.
    let big = vec![b'x'; 6 << 20];
    let r = send(
        server.addr,
        "PUT",
        "/api/files/content?path=big.bin",
        &editor,
        &big,
        false,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (507, "workspace_full"));
    let listing = get(&server, "/api/files", &editor).await;
    assert!(
        all_names(&listing)
            .iter()
            .all(|n| n != "big.bin" && !n.starts_with(".upload-")),
        "{:?}",
        all_names(&listing)
    );
    // And the server keeps serving.
    let r = get(&server, "/api/files/content?path=scores.csv", &viewer).await;
    assert_eq!(r.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_cap_are_refused_and_leave_nothing() {
    let server = TestServer::start(&["--max-upload-bytes", "1000"]).await;
    let editor = server.token("ada", Role::Editor);
    let body = vec![b'y'; 3000];
    // Declared too large: refused before reading.
    let r = send(
        server.addr,
        "PUT",
        "/api/files/content?path=a.bin",
        &editor,
        &body,
        false,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));
    // Streamed with no length: refused once past the cap.
    let r = send(
        server.addr,
        "PUT",
        "/api/files/content?path=b.bin",
        &editor,
        &body,
        true,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));
    let listing = get(&server, "/api/files", &editor).await;
    assert_eq!(listing.status, 200);
    assert!(
        all_names(&listing)
            .iter()
            .all(|n| !n.ends_with(".bin") && !n.starts_with(".upload-")),
        "{:?}",
        all_names(&listing)
    );
    // At the cap is fine.
    let r = send(
        server.addr,
        "PUT",
        "/api/files/content?path=c.bin",
        &editor,
        &body[..1000],
        true,
    )
    .await;
    assert_eq!(r.status, 201);
    let r = get(&server, "/metrics", &editor).await;
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("middleman_files_refusals_total{reason=\"too_large\"}")
            || text.contains("middleman_files_requests_total{op=\"upload\",outcome=\"refused\"} 2"),
        "{text}"
    );
    server.stop().await;
}
