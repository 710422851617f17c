//! The Jupyter Server API on warm pods, end to end: Watchman with the local backend (real
//! Middleman and ipykernel pods) behind the `gateway` binary, driven by real Jupyter clients:
//! a peer made of jupyter_client's `Session` and jupyter_server's serializers
//! (scripts/python/jupyter_peer.py), `@jupyterlab/services` (what JupyterLab and VS Code use;
//! scripts/node/jupyter-services-peer.mjs) and jupyter_server itself in gateway mode
//! (`jupyter lab --gateway-url`; scripts/python/jupyter_gateway_peer.py). Runs land in the
//! kernel's document, where a web client sees them; bad tokens and foreign kernels are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

use common::gateway::*;
use common::*;
use watchman_proto::v1 as pb;

/// Watchman (memory store, `warm` pods of plan `free`) and a gateway in front of it.
async fn edge(tag: &str, warm: u32) -> (Deployment, watchman::Running, Gateway) {
    let d = Deployment::new(tag, warm, "10m");
    let token = d.dir.0.join("route-token");
    std::fs::write(&token, ROUTE_TOKEN).unwrap();
    let w = d
        .replica("memory", &["--route-token-file", token.to_str().unwrap()])
        .await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, warm).await;
    let api = format!("http://{}", w.http_addr);
    let g = Gateway::start(&d.dir.0, &d.key, w.grpc_addr, &["--jupyter-api", &api]).await;
    (d, w, g)
}

/// A Jupyter API token from Watchman (`POST /v1/jupyter-tokens`, the product backend's call).
async fn jupyter_token(w: &watchman::Running, user: &str, document: &str, role: &str) -> String {
    let body = serde_json::json!({
        "user_id": user, "user_name": format!("{user} name"), "document_id": document, "role": role,
    });
    let auth = format!("Bearer {API_TOKEN}");
    let (status, _, body) = http(
        w.http_addr,
        "POST",
        "/v1/jupyter-tokens",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// A REST call of the Jupyter API through the gateway: status and JSON body.
async fn rest(
    g: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("token {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (status, _, body) = http(g.addr, method, path, &headers, body.as_bytes()).await;
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// Runs a script (`python` or `node` peer) and returns its last stdout line as JSON. Node finds
/// the test tools' packages (`make test` installs them) through `NODE_PATH`.
async fn run_peer(program: &str, args: &[&str]) -> serde_json::Value {
    let node_path = format!(
        "{}/node/node_modules",
        std::env::var("NBP_CACHE").expect("NBP_CACHE: run `make test`")
    );
    let out = tokio::process::Command::new(program)
        .args(args)
        .env("NODE_PATH", node_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program} {args:?} failed (its reason is in its stderr above)\n{stdout}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

fn script(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    format!(
        "{}/bin/python",
        std::env::var("NBP_TOOLS_ENV").expect("NBP_TOOLS_ENV: run `make test`")
    )
}

/// The kernel's document, as a web client sees it (a session token from `MintToken`).
async fn document_cells(w: &watchman::Running, document: &str) -> Vec<serde_json::Value> {
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let a = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: document.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let t = c
        .mint_token(pb::MintTokenRequest {
            document_id: document.into(),
            user_id: "grace".into(),
            user_name: "Grace".into(),
            role: pb::Role::Viewer as i32,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let url = format!("{}?token={}", a.websocket_url, t.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt as _;
    loop {
        let m = ws.next().await.unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "welcome" {
                return v["snapshot"]["cells"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
            }
        }
    }
}

fn channels(g: &Gateway, kernel: &str) -> String {
    format!("ws://{}/jupyter/api/kernels/{kernel}/channels", g.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jupyter_client_starts_runs_and_ends_a_kernel_on_a_warm_pod() {
    let (d, w, g) = edge("jupyter-api", 2).await;
    let ada = jupyter_token(&w, "ada", "", "editor").await;

    // The server and its specs.
    let (status, v) = rest(&g, "GET", "/jupyter/api", None, "").await;
    assert_eq!((status, v["version"].is_string()), (200, true));
    let (status, specs) = rest(&g, "GET", "/jupyter/api/kernelspecs", Some(&ada), "").await;
    assert_eq!(status, 200, "{specs}");
    assert_eq!(specs["default"], "free");
    let free = &specs["kernelspecs"]["free"];
    assert_eq!(free["spec"]["language"], "python");
    assert!(free["spec"]["argv"].is_array());
    let (status, me) = rest(&g, "GET", "/jupyter/api/me", Some(&ada), "").await;
    assert_eq!(
        (status, me["identity"]["username"].as_str()),
        (200, Some("ada"))
    );

    // Start: a warm pod is taken (by the kernel's own name too: `python3` is plan `free`).
    let (status, model) = rest(
        &g,
        "POST",
        "/jupyter/api/kernels",
        Some(&ada),
        r#"{"name": "python3"}"#,
    )
    .await;
    assert_eq!(status, 201, "{model}");
    let kernel = model["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::try_parse(&kernel).is_ok());
    assert_eq!(model["name"], "free");
    let last = model["last_activity"].as_str().unwrap();
    assert!(
        last.ends_with('Z') && last.split('.').nth(1).unwrap().len() == 7,
        "{last}"
    );
    let (status, list) = rest(&g, "GET", "/jupyter/api/kernels", Some(&ada), "").await;
    assert_eq!(status, 200);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == kernel.as_str())
    );

    // The kernel WebSocket through the gateway, with everything a Jupyter client does.
    let url = channels(&g, &kernel);
    run_peer(
        &python(),
        &[
            &script("scripts/python/jupyter_peer.py"),
            &url,
            &ada,
            "full",
        ],
    )
    .await;
    run_peer(
        &python(),
        &[
            &script("scripts/python/jupyter_peer.py"),
            &url,
            &ada,
            "legacy",
        ],
    )
    .await;
    run_peer(
        &python(),
        &[
            &script("scripts/python/jupyter_peer.py"),
            &url,
            &ada,
            "malformed",
        ],
    )
    .await;

    // The runs are in the kernel's document, with who ran them.
    let document = format!("jupyter-{kernel}");
    let cells = document_cells(&w, &document).await;
    let cell = cells
        .iter()
        .find(|c| c["id"] == "cell-a")
        .expect("cell-a in the document");
    assert_eq!(cell["last_run"]["by"], "ada name (Jupyter)");

    // REST interrupt and restart.
    let path = format!("/jupyter/api/kernels/{kernel}");
    let (status, _) = rest(&g, "POST", &format!("{path}/interrupt"), Some(&ada), "").await;
    assert_eq!(status, 204);
    let (status, model) = rest(&g, "POST", &format!("{path}/restart"), Some(&ada), "").await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["id"], kernel.as_str());

    // Refusals: no token, a forged one, a session token, another user's kernel, not a UUID.
    let (status, _) = rest(&g, "GET", "/jupyter/api/kernels", None, "").await;
    assert_eq!(status, 401);
    let forged = {
        let other = session_token::SigningKey::generate();
        other
            .mint(&session_token::Claims::jupyter(
                "x",
                "ada",
                "Ada",
                "",
                session_token::Role::Editor,
                60,
            ))
            .unwrap()
    };
    assert_eq!(
        rest(&g, "GET", "/jupyter/api/kernels", Some(&forged), "")
            .await
            .0,
        401
    );
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let session = c
        .mint_token(pb::MintTokenRequest {
            document_id: document.clone(),
            user_id: "ada".into(),
            user_name: "Ada".into(),
            role: pb::Role::Editor as i32,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(
        rest(&g, "GET", "/jupyter/api/kernels", Some(&session), "")
            .await
            .0,
        401,
        "a session token is not a Jupyter token"
    );
    let eve = jupyter_token(&w, "eve", "", "editor").await;
    assert_eq!(
        rest(&g, "GET", &path, Some(&eve), "").await.0,
        404,
        "another user's kernel"
    );
    assert_eq!(rest(&g, "DELETE", &path, Some(&eve), "").await.0, 404);
    assert_eq!(
        rest(&g, "GET", "/jupyter/api/kernels/not-a-uuid", Some(&ada), "")
            .await
            .0,
        404
    );
    let (_, eves) = rest(&g, "GET", "/jupyter/api/kernels", Some(&eve), "").await;
    assert_eq!(
        eves,
        serde_json::json!([]),
        "eve sees none of ada's kernels"
    );
    // The WebSocket: a foreign kernel, a session token, a Jupyter token on a pod's document.
    for (what, url, token) in [
        ("foreign", channels(&g, &kernel), eve.clone()),
        ("session token", channels(&g, &kernel), session.clone()),
    ] {
        let request = format!("{url}?session_id=s&token={token}");
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let s = r.status().as_u16();
                assert!(s == 401 || s == 404, "{what}: {s}");
            }
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    let a = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: document.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    match tokio_tungstenite::connect_async(g.ws(&a.pod, &ada)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!(
            "a Jupyter token opened a document socket: {:?}",
            other.map(|_| ())
        ),
    }

    // Nothing climbs out of /jupyter/ to Watchman's other routes.
    for path in [
        "/jupyter/../metrics",
        "/jupyter/%2e%2e/metrics",
        "/jupyter/api/%2E%2E/%2e%2e/metrics",
    ] {
        let (status, _) = rest(&g, "GET", path, Some(&ada), "").await;
        assert_eq!(status, 400, "{path}");
    }

    // Shutdown releases the pod; the kernel is gone.
    assert_eq!(rest(&g, "DELETE", &path, Some(&ada), "").await.0, 204);
    assert_eq!(rest(&g, "GET", &path, Some(&ada), "").await.0, 404);
    let gone = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: document.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    drop(g);
    teardown(w).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyterlab_services_drives_a_kernel_in_both_wire_forms() {
    let (d, w, g) = edge("jupyter-services", 2).await;
    let ada = jupyter_token(&w, "ada", "", "editor").await;
    let base = format!("http://{}/jupyter/", g.addr);
    let peer = script("scripts/node/jupyter-services-peer.mjs");
    for form in [None, Some("legacy")] {
        let mut args = vec![peer.as_str(), base.as_str(), ada.as_str(), "free"];
        args.extend(form);
        let summary = run_peer("node", &args).await;
        assert_eq!(summary["ok"], true, "{summary}");
    }
    drop(g);
    teardown(w).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jupyter_server_in_gateway_mode_runs_kernels_on_warm_pods() {
    let (d, w, g) = edge("jupyter-gateway", 2).await;
    let ada = jupyter_token(&w, "ada", "", "editor").await;
    let gateway_url = format!("http://{}/jupyter", g.addr);
    run_peer(
        &python(),
        &[
            &script("scripts/python/jupyter_gateway_peer.py"),
            &gateway_url,
            &ada,
            "free",
        ],
    )
    .await;
    drop(g);
    teardown(w).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_token_joins_the_documents_pod_that_web_users_have_open() {
    let (d, w, g) = edge("jupyter-document", 2).await;
    // Grace has the document open in the web client.
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let a = c
        .allocate(allocate_req("shared-doc", 5_000))
        .await
        .unwrap()
        .into_inner();
    // Ada's Jupyter token for that document: her kernel is the document's pod.
    let ada = jupyter_token(&w, "ada", "shared-doc", "editor").await;
    let (status, model) = rest(
        &g,
        "POST",
        "/jupyter/api/kernels",
        Some(&ada),
        r#"{"name": "free"}"#,
    )
    .await;
    assert_eq!(status, 201, "{model}");
    assert_eq!(model["nbplat"]["document"], "shared-doc");
    assert_eq!(model["nbplat"]["pod"], a.pod.as_str());
    let kernel = model["id"].as_str().unwrap().to_owned();
    // Starting again is the same kernel; the list holds just it.
    let (_, again) = rest(
        &g,
        "POST",
        "/jupyter/api/kernels",
        Some(&ada),
        r#"{"name": "free"}"#,
    )
    .await;
    assert_eq!(again["id"], kernel.as_str());
    let (_, list) = rest(&g, "GET", "/jupyter/api/kernels", Some(&ada), "").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Her runs land in the document Grace sees.
    let url = channels(&g, &kernel);
    run_peer(
        &python(),
        &[
            &script("scripts/python/jupyter_peer.py"),
            &url,
            &ada,
            "legacy",
        ],
    )
    .await;
    let cells = document_cells(&w, "shared-doc").await;
    assert!(
        cells
            .iter()
            .any(|c| c["source"] == "6*7" && c["last_run"]["by"] == "ada name (Jupyter)"),
        "{cells:?}"
    );
    // A viewer's token sees the kernel and may not start, interrupt or end it.
    let vic = jupyter_token(&w, "vic", "shared-doc", "viewer").await;
    let (_, seen) = rest(&g, "GET", "/jupyter/api/kernels", Some(&vic), "").await;
    assert_eq!(seen[0]["id"], kernel.as_str());
    let path = format!("/jupyter/api/kernels/{kernel}");
    assert_eq!(
        rest(&g, "POST", "/jupyter/api/kernels", Some(&vic), "{}")
            .await
            .0,
        403
    );
    assert_eq!(
        rest(&g, "POST", &format!("{path}/interrupt"), Some(&vic), "")
            .await
            .0,
        403
    );
    assert_eq!(rest(&g, "DELETE", &path, Some(&vic), "").await.0, 403);
    run_peer(
        &python(),
        &[
            &script("scripts/python/jupyter_peer.py"),
            &url,
            &vic,
            "viewer",
        ],
    )
    .await;
    // Another document's token does not reach it.
    let other = jupyter_token(&w, "ada", "other-doc", "editor").await;
    assert_eq!(rest(&g, "GET", &path, Some(&other), "").await.0, 404);
    // The document's next pod is a new kernel.
    c.release(pb::ReleaseRequest {
        document_id: "shared-doc".into(),
    })
    .await
    .unwrap();
    assert_eq!(rest(&g, "GET", &path, Some(&ada), "").await.0, 404);
    drop(g);
    teardown(w).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vs_codes_existing_server_sequence_works_and_its_cells_land_in_the_document() {
    let (d, w, g) = edge("jupyter-vscode", 2).await;
    let ada = jupyter_token(&w, "ada", "", "editor").await;
    let base = format!("http://{}/jupyter/", g.addr);
    let peer = script("scripts/node/jupyter-vscode-peer.mjs");
    let summary = run_peer("node", &[&peer, &base, &ada, "free", "keep"]).await;
    let document = summary["document"].as_str().unwrap().to_owned();
    let cells = document_cells(&w, &document).await;
    let cell = cells
        .iter()
        .find(|c| c["source"] == "answer + 1")
        .unwrap_or_else(|| panic!("VS Code's cell is not in the document: {cells:?}"));
    let id = cell["id"].as_str().unwrap();
    assert!(
        id.starts_with('j') && id.len() == 17,
        "a cell URI becomes a cell id: {id}"
    );
    assert!(
        !cells
            .iter()
            .any(|c| c["source"].as_str().unwrap_or("").contains("vscode_silent")),
        "silent runs stay out of the document"
    );
    // Contents and sessions are the caller's: another user sees none of them.
    let eve = jupyter_token(&w, "eve", "", "editor").await;
    let (status, listing) = rest(&g, "GET", "/jupyter/api/contents", Some(&eve), "").await;
    assert_eq!(
        (status, listing["content"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (_, sessions) = rest(&g, "GET", "/jupyter/api/sessions", Some(&eve), "").await;
    assert_eq!(sessions, serde_json::json!([]));
    // A path that leaves the flat directory is refused.
    let (status, _) = rest(
        &g,
        "PUT",
        "/jupyter/api/contents/a%2F..%2Fb.ipynb",
        Some(&ada),
        r#"{"type": "file", "format": "text", "content": "x"}"#,
    )
    .await;
    assert_eq!(status, 400);
    // Ending the session ends its kernel (the user's own).
    let session = summary["session"].as_str().unwrap();
    let kernel = summary["kernel"].as_str().unwrap();
    let path = format!("/jupyter/api/sessions/{session}");
    assert_eq!(
        rest(&g, "DELETE", &path, Some(&eve), "").await.0,
        404,
        "not eve's"
    );
    assert_eq!(rest(&g, "DELETE", &path, Some(&ada), "").await.0, 204);
    let kernel_path = format!("/jupyter/api/kernels/{kernel}");
    assert_eq!(rest(&g, "GET", &kernel_path, Some(&ada), "").await.0, 404);
    assert_eq!(rest(&g, "GET", &path, Some(&ada), "").await.0, 404);
    drop(g);
    teardown(w).await;
    drop(d);
}
