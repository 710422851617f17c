//! HTTPS on the public address: a certificate made with OpenSSL, and curl as the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

#[tokio::test]
async fn the_public_address_speaks_tls_when_given_a_certificate() {
    let dir = testkit::TempDir::new("gw-tls");
    let (cert, key) = common::self_signed(&dir.0);
    let signing = session_token::SigningKey::generate();
    let public = dir.0.join("public.pem");
    std::fs::write(&public, signing.verifying_key().to_pem().unwrap()).unwrap();

    let path = |p: &std::path::Path| p.display().to_string();
    let args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--route".into(),
        "p1=http://127.0.0.1:9".into(),
        "--public-key".into(),
        path(&public),
        "--tls-cert".into(),
        path(&cert),
        "--tls-key".into(),
        path(&key),
    ];
    let gateway = std::path::Path::new(env!("CARGO_BIN_EXE_gateway"));
    let (_child, addr) = common::spawn(gateway, &args).await;

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
