//! What operators and integrators touch besides Allocate: mutual TLS on the API, and `grpcurl`
//! against health checking and server reflection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use watchman_proto::v1 as pb;
use watchman_proto::v1::watchman_client::WatchmanClient;

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        ok.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1, and a client certificate, all signed by
/// the CA; plus a second, unrelated CA with its own client certificate.
fn make_pki(dir: &std::path::Path) {
    for ca in ["ca", "evil-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "1",
                "-subj",
                &format!("/CN={ca}"),
            ],
        );
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("evil-client", "evil-ca", "client.ext"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                ext,
            ],
        );
    }
}

async fn tls_client(
    addr: std::net::SocketAddr,
    dir: &std::path::Path,
    identity: Option<&str>,
) -> Result<Client, tonic::transport::Error> {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    if let Some(name) = identity {
        tls = tls.identity(Identity::from_pem(
            read(&format!("{name}.pem")),
            read(&format!("{name}.key")),
        ));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(WatchmanClient::with_interceptor(
        channel,
        Bearer(API_TOKEN.into()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let d = Deployment::new("mtls", 0, "30m");
    let pki = d.dir.0.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_pki(&pki);
    let p = |f: &str| pki.join(f).display().to_string();
    let w = d
        .replica(
            "memory",
            &[
                "--tls-cert",
                &p("server.pem"),
                "--tls-key",
                &p("server.key"),
                "--tls-client-ca",
                &p("ca.pem"),
            ],
        )
        .await;
    let mut good = tls_client(w.grpc_addr, &pki, Some("client")).await.unwrap();
    assert!(good.list_pools(pb::ListPoolsRequest {}).await.is_ok());
    // No client certificate, or one from another CA: the handshake or the first call fails.
    for identity in [None, Some("evil-client")] {
        let refused = match tls_client(w.grpc_addr, &pki, identity).await {
            Err(_) => true,
            Ok(mut c) => c.list_pools(pb::ListPoolsRequest {}).await.is_err(),
        };
        assert!(refused, "a client with {identity:?} got in");
    }
    // Plaintext is refused too.
    let plain = Channel::from_shared(format!("http://{}", w.grpc_addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut c = WatchmanClient::with_interceptor(channel, Bearer(API_TOKEN.into()));
        assert!(c.list_pools(pb::ListPoolsRequest {}).await.is_err());
    }
    w.stop().await;
}

fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .expect("grpcurl not found: run the tests with `make test`, which builds it");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_checks_health_and_calls_with_the_token() {
    let d = Deployment::new("grpcurl", 0, "30m");
    let w = d.replica("memory", &[]).await;
    let addr = w.grpc_addr.to_string();
    let (ok, out) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || grpcurl(&["-plaintext", &addr, "list"])
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    for service in [
        "watchman.v1.Watchman",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(out.contains(service), "{service} not listed: {out}");
    }
    let (ok, out) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            grpcurl(&[
                "-plaintext",
                "-d",
                r#"{"service":"watchman.v1.Watchman"}"#,
                &addr,
                "grpc.health.v1.Health/Check",
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            grpcurl(&[
                "-plaintext",
                "-H",
                &format!("authorization: Bearer {API_TOKEN}"),
                &addr,
                "watchman.v1.Watchman/ListPools",
            ])
        }
    })
    .await
    .unwrap();
    assert!(ok && out.contains("\"plan\": \"free\""), "{out}");
    // Without the token: Unauthenticated, with the documented message.
    let (ok, out) = tokio::task::spawn_blocking(move || {
        grpcurl(&["-plaintext", &addr, "watchman.v1.Watchman/ListPools"])
    })
    .await
    .unwrap();
    assert!(
        !ok && out.contains("Unauthenticated") && out.contains("bearer token"),
        "{out}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_its_store() {
    let redis = testkit::RedisServer::start();
    let d = Deployment::new("ready", 0, "30m");
    let w = d.replica(&redis.url(), &[]).await;
    assert_eq!(http_status(w.http_addr, "/healthz").await, 200);
    assert_eq!(http_status(w.http_addr, "/readyz").await, 200);
    drop(redis);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while http_status(w.http_addr, "/readyz").await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready without Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Alive, just not ready; and the API says why instead of hanging.
    assert_eq!(http_status(w.http_addr, "/healthz").await, 200);
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let e = c.list_pools(pb::ListPoolsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_page_opens_a_document_without_a_cross_origin_redirect() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let d = Deployment::new("devpage", 1, "30m");
    let w = d.replica("memory", &["--dev-page"]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let body = "document=doc-page&plan=free&name=Ada";
    let mut s = tokio::net::TcpStream::connect(w.http_addr).await.unwrap();
    let req = format!(
        "POST /open HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        w.http_addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    // A browser blocks a form's redirect to another origin under `form-action 'self'`; the page
    // must navigate by itself instead.
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let a = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: "doc-page".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let pod_url = a
        .websocket_url
        .trim_end_matches("/ws")
        .replacen("ws://", "http://", 1);
    assert!(
        out.contains(&format!(
            "http-equiv=\"refresh\" content=\"0;url={pod_url}/#token="
        )),
        "{out}"
    );
    teardown(w).await;
}
