//! The `object_store` crate against a real S3 server (SeaweedFS, testkit's `S3Server`): what the
//! kernel checkpoints (issue 17) will rely on. Put, get, list, delete, a multipart upload,
//! conditional puts, refused credentials, and pre-signed URLs used by a plain HTTP client, which
//! is how pods will read and write their checkpoints without holding the store's credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{
    ClientOptions, Error, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use testkit::s3::S3Server;

/// A client of `bucket` on `server` with these credentials: path-style requests over plain HTTP,
/// as to any S3-compatible store on a private endpoint; no retries, so refusals show at once.
fn store_with(server: &S3Server, bucket: &str, access_key: &str, secret: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        // First: the client options replace those set before (allow_http among them).
        .with_client_options(ClientOptions::new().with_timeout(Duration::from_secs(30)))
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region(server.region())
        .with_bucket_name(bucket)
        .with_access_key_id(access_key)
        .with_secret_access_key(secret)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .build()
        .expect("an S3 client")
}

fn store(server: &S3Server, bucket: &str) -> AmazonS3 {
    store_with(server, bucket, server.access_key(), server.secret_key())
}

fn started() -> S3Server {
    // object_store's reqwest has rustls without a provider of its own (see the root
    // Cargo.toml): the workspace's crypto is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let t = Instant::now();
    let server = S3Server::start();
    eprintln!("SeaweedFS S3 server ready in {:?}", t.elapsed());
    server
}

#[tokio::test]
async fn put_get_list_delete_and_conditional_puts() {
    let server = started();
    server.create_bucket("basics");
    let store = store(&server, "basics");

    let a = Path::from("kernels/k1/checkpoint-1");
    let b = Path::from("kernels/k1/checkpoint-2");
    let other = Path::from("kernels/k2/checkpoint-1");
    store
        .put(&a, PutPayload::from_static(b"one"))
        .await
        .unwrap();
    store
        .put(&b, PutPayload::from_static(b"two!"))
        .await
        .unwrap();
    store
        .put(&other, PutPayload::from_static(b"x"))
        .await
        .unwrap();

    let got = store.get(&a).await.unwrap();
    assert_eq!(got.meta.size, 3);
    assert_eq!(got.bytes().await.unwrap(), Bytes::from_static(b"one"));
    assert_eq!(store.head(&b).await.unwrap().size, 4);

    let mut listed: Vec<(String, u64)> = store
        .list(Some(&Path::from("kernels/k1")))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("kernels/k1/checkpoint-1".to_owned(), 3),
            ("kernels/k1/checkpoint-2".to_owned(), 4)
        ]
    );
    let tree = store
        .list_with_delimiter(Some(&Path::from("kernels")))
        .await
        .unwrap();
    let mut prefixes: Vec<String> = tree.common_prefixes.iter().map(|p| p.to_string()).collect();
    prefixes.sort();
    assert_eq!(prefixes, ["kernels/k1", "kernels/k2"]);

    store.delete(&a).await.unwrap();
    assert!(matches!(store.get(&a).await, Err(Error::NotFound { .. })));
    assert!(matches!(store.head(&a).await, Err(Error::NotFound { .. })));
    let left: Vec<_> = store
        .list(Some(&Path::from("kernels/k1")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(left.len(), 1);

    // Conditional puts: create only if absent (If-None-Match: *), replace only the version read
    // (If-Match: ETag).
    let c = Path::from("kernels/k1/latest");
    let create = |data: &'static [u8]| {
        store.put_opts(
            &c,
            PutPayload::from_static(data),
            PutOptions::from(PutMode::Create),
        )
    };
    let first = create(b"v1").await.unwrap();
    let again = create(b"v1 again").await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "{again:?}"
    );
    let update = |version: UpdateVersion, data: &'static [u8]| {
        store.put_opts(
            &c,
            PutPayload::from_static(data),
            PutOptions::from(PutMode::Update(version)),
        )
    };
    let second = update(first.clone().into(), b"v2").await.unwrap();
    assert_ne!(first.e_tag, second.e_tag);
    let stale = update(first.into(), b"v3 from a stale read").await;
    assert!(
        matches!(stale, Err(Error::Precondition { .. })),
        "{stale:?}"
    );
    assert_eq!(
        store.get(&c).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"v2")
    );
}

#[tokio::test]
async fn multipart_upload_of_20_mb() {
    let server = started();
    server.create_bucket("multipart");
    let store = store(&server, "multipart");
    let path = Path::from("kernels/k1/big");

    // Four parts of 5 MiB (S3's smallest part but the last), each its own pattern.
    let part = |i: u8| -> Vec<u8> { (0..5 << 20).map(|n: u32| (n % 251) as u8 ^ i).collect() };
    let t = Instant::now();
    let mut upload = store.put_multipart(&path).await.unwrap();
    let mut whole = Vec::new();
    for i in 0..4 {
        let data = part(i);
        whole.extend_from_slice(&data);
        upload.put_part(PutPayload::from(data)).await.unwrap();
    }
    upload.complete().await.unwrap();
    eprintln!("20 MiB multipart upload in {:?}", t.elapsed());

    assert_eq!(store.head(&path).await.unwrap().size, 20 << 20);
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert!(
        got == whole,
        "the object read back differs from what was uploaded"
    );
    let range = store
        .get_range(&path, (5 << 20) - 2..(5 << 20) + 2)
        .await
        .unwrap();
    assert_eq!(&range[..], &whole[(5 << 20) - 2..(5 << 20) + 2]);

    // An upload aborted midway leaves nothing behind.
    let aborted = Path::from("kernels/k1/aborted");
    let mut upload = store.put_multipart(&aborted).await.unwrap();
    upload.put_part(PutPayload::from(part(9))).await.unwrap();
    upload.abort().await.unwrap();
    assert!(matches!(
        store.head(&aborted).await,
        Err(Error::NotFound { .. })
    ));
}

/// A plain HTTP request (no credentials): status and body.
async fn http(method: &str, url: &str, body: &'static [u8]) -> (u16, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test]
async fn presigned_urls_for_one_key_and_method_until_they_expire() {
    let server = started();
    server.create_bucket("signed");
    let store = store(&server, "signed");
    let path = Path::from("kernels/k1/checkpoint");
    let hour = Duration::from_secs(3600);

    // The pod's side: a signed PUT uploads, a signed GET downloads, with no credentials.
    let put = store.signed_url(Method::PUT, &path, hour).await.unwrap();
    assert!(put.as_str().contains("X-Amz-Signature="), "{put}");
    let (status, body) = http("PUT", put.as_str(), b"checkpoint bytes").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"checkpoint bytes")
    );
    let get = store.signed_url(Method::GET, &path, hour).await.unwrap();
    let (status, body) = http("GET", get.as_str(), b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, Bytes::from_static(b"checkpoint bytes"));

    // Only for its method: the GET URL cannot write, the PUT URL cannot read or delete.
    assert_eq!(http("PUT", get.as_str(), b"overwrite").await.0, 403);
    assert_eq!(http("GET", put.as_str(), b"").await.0, 403);
    assert_eq!(http("DELETE", put.as_str(), b"").await.0, 403);
    // Only for its key: the same signature on another key (or another bucket) is refused.
    let elsewhere = |url: &str, from: &str, to: &str| {
        assert!(url.contains(from), "{url}");
        url.replacen(from, to, 1)
    };
    let other_key = elsewhere(put.as_str(), "/kernels/k1/", "/kernels/k2/");
    assert_eq!(http("PUT", &other_key, b"sneaky").await.0, 403);
    let other_key = elsewhere(get.as_str(), "/checkpoint?", "/checkpoint2?");
    assert_eq!(http("GET", &other_key, b"").await.0, 403);
    let other_bucket = elsewhere(get.as_str(), "/signed/", "/signed2/");
    assert!(http("GET", &other_bucket, b"").await.0 >= 400);
    // Tampering with the expiry breaks the signature.
    let longer = get
        .as_str()
        .replace("X-Amz-Expires=3600", "X-Amz-Expires=7200");
    assert_ne!(longer, get.as_str());
    assert_eq!(http("GET", &longer, b"").await.0, 403);
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        Bytes::from_static(b"checkpoint bytes"),
        "a refused request changed the object"
    );

    // Expiry is enforced by the server: a URL valid for 1 s is refused 2 s later.
    let short_get = store
        .signed_url(Method::GET, &path, Duration::from_secs(1))
        .await
        .unwrap();
    let short_put = store
        .signed_url(Method::PUT, &path, Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = http("GET", short_get.as_str(), b"").await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("expired"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(http("PUT", short_put.as_str(), b"late").await.0, 403);
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_refused() {
    let server = started();
    server.create_bucket("private");
    let path = Path::from("secret");
    store(&server, "private")
        .put(&path, PutPayload::from_static(b"s"))
        .await
        .unwrap();

    // Refusals are PermissionDenied (403) or Unauthenticated (401), except on List, which
    // object_store reports as a Generic error carrying the status.
    let refused = |r: Result<(), Error>| match r {
        Err(Error::PermissionDenied { .. } | Error::Unauthenticated { .. }) => {}
        Err(e @ Error::Generic { .. }) if format!("{e:?}").contains("status: 403") => {}
        other => panic!("not refused: {other:?}"),
    };
    for (key, secret) in [
        (server.access_key(), "not-the-secret"),
        ("unknown-access-key", server.secret_key()),
    ] {
        let s = store_with(&server, "private", key, secret);
        refused(s.get(&path).await.map(drop));
        refused(s.put(&path, PutPayload::from_static(b"x")).await.map(drop));
        refused(s.list(None).try_collect::<Vec<_>>().await.map(drop));
        refused(s.delete(&path).await);
        // A URL signed with them is refused too.
        let url = s
            .signed_url(Method::GET, &path, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(http("GET", url.as_str(), b"").await.0, 403);
    }
    // Anonymous requests are refused.
    let anonymous: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(server.endpoint())
            .with_allow_http(true)
            .with_region(server.region())
            .with_bucket_name("private")
            .with_skip_signature(true)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
            .unwrap(),
    );
    refused(anonymous.get(&path).await.map(drop));
    let plain = format!("{}/private/secret", server.endpoint());
    assert_eq!(http("GET", &plain, b"").await.0, 403);
    assert_eq!(
        store(&server, "private")
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        Bytes::from_static(b"s")
    );
}
