//! HTTPS on the public address: a certificate made with OpenSSL, and curl as the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt as _;

#[tokio::test]
async fn the_public_address_speaks_tls_when_given_a_certificate() {
    let dir = testkit::TempDir::new("gw-tls");
    let (cert, key) = common::self_signed(&dir.0);
    let signing = session_token::SigningKey::generate();
    let public = dir.0.join("public.pem");
    std::fs::write(&public, signing.verifying_key().to_pem().unwrap()).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .arg("--public-key")
        .arg(&public)
        .args(["--route", "p1=http://127.0.0.1:9"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: std::net::SocketAddr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("listening on https://").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The web client's page, over TLS, verified against the certificate.
    let (code, body) = curl(&cert, &format!("https://{addr}/pods/p1/")).await;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("/assets/app.js"), "{body}");
    // Refusals too.
    let (code, body) = curl(&cert, &format!("https://{addr}/pods/p1/api/notebook")).await;
    assert_eq!(code, "401", "{body}");
    assert!(body.contains("token_missing"), "{body}");
    // Plain HTTP on the TLS port gets nothing served.
    let (code, body) = curl(&cert, &format!("http://{addr}/pods/p1/")).await;
    assert_ne!(code, "200", "{body}");
    assert!(!body.contains("app.js"));
}

/// `curl --cacert cert url`: the status code and the body.
async fn curl(cert: &std::path::Path, url: &str) -> (String, String) {
    let (cert, url) = (cert.to_owned(), url.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&cert)
            .args(["-w", "\n%{http_code}"])
            .arg(&url)
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    })
    .await
    .unwrap()
}
