//! What a pod may reach through Watchman, and what its kernel may not: a pod reads and saves
//! its own document and no other; a kernel sees none of Watchman's secrets (signing key, API
//! token, environment, command line); a plan whose sandbox level the host cannot give gets no
//! pods, and Allocate says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use watchman_proto::v1 as pb;

/// A raw request to Watchman's HTTP side; (status, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let start = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, out[start..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_reaches_its_own_document_and_no_other() {
    let d = Deployment::new("poddocs", 2, "30m");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-a", 0))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .allocate(allocate_req("doc-b", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.pod, b.pod);
    // Code run in each document is saved through Watchman.
    assert_eq!(run_code(&a, "1 + 1").await, "2");
    assert_eq!(run_code(&b, "2 + 2").await, "4");
    let credential = |pod: &str| {
        std::fs::read_to_string(d.dir.0.join("pods").join(pod).join("credential")).unwrap()
    };
    let (cred_a, cred_b) = (credential(&a.pod), credential(&b.pod));
    let get = |cred: String, binding: String| {
        let addr = w.http_addr;
        async move {
            let bearer = format!("Bearer {cred}");
            http(
                addr,
                "GET",
                "/v1/pod/document",
                &[("Authorization", &bearer), ("x-nbplat-binding", &binding)],
                b"",
            )
            .await
        }
    };
    // Its own credential and a token minted for it: its own document, read and written.
    let put = |cred: String, binding: String, body: &'static [u8]| {
        let addr = w.http_addr;
        async move {
            let bearer = format!("Bearer {cred}");
            http(
                addr,
                "PUT",
                "/v1/pod/document",
                &[("Authorization", &bearer), ("x-nbplat-binding", &binding)],
                body,
            )
            .await
        }
    };
    assert_eq!(
        put(cred_a.clone(), a.token.clone(), b"saved by A").await.0,
        204
    );
    assert_eq!(
        put(cred_b.clone(), b.token.clone(), b"saved by B").await.0,
        204
    );
    assert_eq!(
        get(cred_a.clone(), a.token.clone()).await,
        (200, b"saved by A".to_vec())
    );
    // Pod A with B's token (naming doc-b and pod B): refused.
    assert_eq!(get(cred_a.clone(), b.token.clone()).await.0, 403);
    // B's credential with A's token: refused.
    assert_eq!(get(cred_b.clone(), a.token.clone()).await.0, 403);
    // A forged credential: another pod's name with A's tag.
    let forged = cred_a.replacen(&a.pod, &b.pod, 1);
    assert_eq!(get(forged, b.token.clone()).await.0, 401);
    // No credential, no binding.
    assert_eq!(
        http(w.http_addr, "GET", "/v1/pod/document", &[], b"")
            .await
            .0,
        401
    );
    assert_eq!(
        http(
            w.http_addr,
            "GET",
            "/v1/pod/document",
            &[("Authorization", &format!("Bearer {cred_a}"))],
            b""
        )
        .await
        .0,
        403
    );
    // A pod can overwrite only its own document: B's is untouched by a PUT from A.
    assert_eq!(
        put(cred_a.clone(), b.token.clone(), b"planted").await.0,
        403
    );
    assert_eq!(
        get(cred_b.clone(), b.token.clone()).await,
        (200, b"saved by B".to_vec())
    );
    // The kernel cannot read its pod's credential, or anything of the pod's directory.
    let pod_dir = d.dir.0.join("pods").join(&a.pod);
    let probe = format!(
        "import os\nseen = [p for p in ({cred:?}, {dir:?}) if os.path.exists(p)]\nprint(seen)",
        cred = pod_dir.join("credential").display().to_string(),
        dir = pod_dir.display().to_string(),
    );
    assert_eq!(run_code(&a, &probe).await, "[]\n");
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_the_host_cannot_sandbox_is_refused_with_the_reason() {
    let d = Deployment::new("levels", 1, "30m");
    // `strict` needs a workspace quota; `nodisk` has none, `strict` (the default quota) has one.
    std::fs::write(
        &d.plans,
        "[plans.free]\nkernel = \"python3\"\nsandbox = \"strict\"\nwarm = { ratio = 0.0, min = 1, max = 1 }\n\
         [plans.nodisk]\nkernel = \"python3\"\nsandbox = \"strict\"\nwarm = { ratio = 0.0, min = 1, max = 1 }\n\
         [plans.nodisk.limits]\nworkspace_mib = 0\n",
    )
    .unwrap();
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let mut refused = allocate_req("doc-x", 1000);
    refused.plan = "nodisk".into();
    let status = c.allocate(refused).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("workspace_quota"),
        "{}",
        status.message()
    );
    // No pod of it was ever started.
    let pools = c
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(pools.pools.iter().all(|p| p.plan != "nodisk"), "{pools:?}");
    // The plan the host can give runs, in its jail.
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-y", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        run_code(&a, "import os\nprint(os.getuid() != 0, os.getpid())").await,
        "True 3\n"
    );
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernels_see_none_of_watchmans_secrets() {
    let d = Deployment::new("secrets", 1, "30m");
    let token_file = d.dir.0.join("api-token");
    std::fs::write(&token_file, API_TOKEN).unwrap();
    let args: Vec<String> = [
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--plans",
        &d.plans.display().to_string(),
        "--signing-key",
        &d.key.display().to_string(),
        "--middleman-bin",
        &middleman_bin().display().to_string(),
        "--local-root",
        &d.dir.0.join("pods").display().to_string(),
        "--pool-id",
        &d.pool_id,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The API token in the environment, as the documentation allows.
    let bin = middleman_bin().with_file_name("watchman");
    let mut args = args;
    args.push("--delete-pods-on-exit".into());
    let log = d.dir.0.join("watchman.log");
    let child = std::process::Command::new(&bin)
        .args(&args)
        .env("WATCHMAN_API_TOKEN", API_TOKEN)
        .env("NBPLAT_TEST_SECRET", "hunter2")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(d.dir.0.join("watchman.err")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
    let watchman = Kill(child);
    let log_text = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(d.dir.0.join("watchman.err")).unwrap_or_default()
    };
    let mut grpc = None;
    for _ in 0..300 {
        grpc = log_text()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("grpc_addr="))
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        if grpc.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let grpc = grpc.unwrap_or_else(|| panic!("watchman never listened:\n{}", log_text()));
    let mut c = client(grpc, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-s", 0))
        .await
        .unwrap()
        .into_inner();
    let probe = format!(
        r#"import os
found = []
for k, v in os.environ.items():
    if 'WATCHMAN' in k or 'hunter2' in v or '{token}' in v:
        found.append(k)
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            data = open(f'/proc/{{p}}/cmdline', 'rb').read() + open(f'/proc/{{p}}/environ', 'rb').read()
        except OSError:
            continue
        if b'watchman' in data or b'{token}' in data or b'hunter2' in data:
            found.append(p)
for path in ({key:?}, {tokenfile:?}, {plans:?}):
    if os.path.exists(path):
        found.append(path)
print(found)"#,
        token = API_TOKEN,
        key = d.key.display().to_string(),
        tokenfile = token_file.display().to_string(),
        plans = d.plans.display().to_string(),
    );
    assert_eq!(run_code(&a, &probe).await, "[]\n");
    drop(watchman);
}
