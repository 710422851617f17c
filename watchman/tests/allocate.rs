//! Watchman end to end with the local backend: real Middleman and ipykernel processes, real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use testkit::RedisServer;
use tonic::Code;
use watchman_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_connect_execute_and_the_same_document_gets_the_same_pod() {
    let d = Deployment::new("basic", 2, "30m");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.launch, pb::LaunchKind::Warm as i32);
    assert!(
        a.websocket_url.starts_with("ws://127.0.0.1:"),
        "{}",
        a.websocket_url
    );
    assert_eq!(run_code(&a, "1+1").await, "2");
    // The plan's limits reach the kernel, and it has no network (not even the host's loopback,
    // where Watchman's own gRPC port listens).
    assert_eq!(
        run_code(
            &a,
            "import resource\nresource.getrlimit(resource.RLIMIT_NOFILE)"
        )
        .await,
        "(321, 321)"
    );
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {}), timeout=2); print('reached')\nexcept OSError:\n    print('isolated')",
        w.grpc_addr.port()
    );
    assert_eq!(run_code(&a, &probe).await, "isolated\n");
    let again = c
        .allocate(allocate_req("doc-1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.pod, a.pod);
    assert_eq!(again.allocation_id, a.allocation_id);
    assert_eq!(again.launch, pb::LaunchKind::Existing as i32);
    // State survived: it is the same kernel.
    assert_eq!(run_code(&again, "x = 41\nx + 1").await, "42");
    // A second collaborator's token works on the same pod.
    let viewer = c
        .mint_token(pb::MintTokenRequest {
            document_id: "doc-1".into(),
            user_id: "bob".into(),
            user_name: "Bob".into(),
            role: pb::Role::Editor as i32,
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    let b = pb::Allocation {
        token: viewer.token,
        ..again.clone()
    };
    assert_eq!(run_code(&b, "x").await, "41");
    let got = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: "doc-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.pod, a.pod);
    assert!(got.token.is_empty());
    // Release: the pod is deleted, never reused; the pool refills.
    let pid = pod_pid(&w, &a.pod).await;
    assert!(
        c.release(pb::ReleaseRequest {
            document_id: "doc-1".into()
        })
        .await
        .unwrap()
        .into_inner()
        .released
    );
    wait_pid_gone(pid, "the released pod").await;
    let fresh = c
        .allocate(allocate_req("doc-1", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fresh.pod, a.pod, "a used pod is never given out again");
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_errors() {
    let d = Deployment::new("errors", 0, "30m");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let mut req = allocate_req("doc-1", 200);
    req.plan = "platinum".into();
    let e = c.allocate(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("unknown plan \"platinum\"") && e.message().contains("free"),
        "{}",
        e.message()
    );
    let e = c
        .allocate(allocate_req("bad doc id!", 200))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Names are bounded, and refusals never echo them.
    let mut long = allocate_req("doc-1", 200);
    long.user_name = "a".repeat(10_000);
    let e = c.allocate(long).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("user_name") && e.message().len() < 200,
        "{}",
        e.message()
    );
    let mut control = allocate_req("doc-1", 200);
    control.user_name = "Ada\u{7}\n".into();
    assert_eq!(
        c.allocate(control).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut huge = allocate_req("doc-1", 200);
    huge.plan = "p".repeat(1 << 20);
    let e = c.allocate(huge).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{e:?}"
    );
    assert!(e.message().len() < 300, "{}", e.message().len());
    // Empty pool, short deadline.
    let e = c.allocate(allocate_req("doc-1", 300)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("within 300 ms"), "{}", e.message());
    let e = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Authentication.
    let mut anon = client(w.grpc_addr, "").await;
    assert_eq!(
        anon.list_pools(pb::ListPoolsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let mut wrong = client(w.grpc_addr, "not-the-token-at-all-000").await;
    assert_eq!(
        wrong
            .list_pools(pb::ListPoolsRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_launch_waits_for_a_new_pod() {
    let d = Deployment::new("cold", 0, "30m");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    let a = c
        .allocate(allocate_req("doc-cold", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.launch, pb::LaunchKind::Cold as i32);
    assert_eq!(run_code(&a, "1+1").await, "2");
    teardown(w).await;
}

/// The idle end is a suspension: the pod goes, and the document's next `Allocate` resumes it
/// with its kernel's state and its workspace files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_ends_the_allocation_and_deletes_the_pod() {
    let d = Deployment::new("idle", 1, "2s");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-idle", 0))
        .await
        .unwrap()
        .into_inner();
    let mut watch = c
        .watch_allocation(pb::WatchAllocationRequest {
            document_id: "doc-idle".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        watch.message().await.unwrap().unwrap().event,
        Some(pb::allocation_event::Event::Ready(_))
    ));
    assert_eq!(
        run_code(&a, "x = 1+1\nopen('idle.txt', 'w').write('kept')\nx").await,
        "2"
    );
    let ended = tokio::time::timeout(Duration::from_secs(60), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ended.event {
        Some(pb::allocation_event::Event::Ended(e)) => {
            assert_eq!(e.reason, pb::EndReason::Idle as i32, "{e:?}")
        }
        other => panic!("{other:?}"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while w
        .watchman
        .store()
        .pods()
        .await
        .unwrap()
        .iter()
        .any(|p| p.id == a.pod)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle pod not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_warm(&mut c, 1).await;
    let b = c
        .allocate(allocate_req("doc-idle", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(b.pod, a.pod);
    assert!(b.resumes, "suspended, not lost");
    assert_eq!(
        run_code(&b, "x, open('idle.txt').read()").await,
        "(2, 'kept')"
    );
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_middleman_ends_the_allocation_and_the_pool_refills() {
    let d = Deployment::new("killed", 1, "30m");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    let a = c
        .allocate(allocate_req("doc-k", 0))
        .await
        .unwrap()
        .into_inner();
    let mut watch = c
        .watch_allocation(pb::WatchAllocationRequest {
            document_id: "doc-k".into(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    let pid = pod_pid(&w, &a.pod).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ended.event {
        Some(pb::allocation_event::Event::Ended(e)) => {
            assert_eq!(e.reason, pb::EndReason::PodLost as i32);
            assert!(e.detail.contains("exited"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    wait_warm(&mut c, 1).await;
    let b = c
        .allocate(allocate_req("doc-k", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(b.pod, a.pod);
    assert_eq!(run_code(&b, "1+1").await, "2");
    teardown(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_never_bind_a_pod_twice() {
    let redis = RedisServer::start();
    let d = Deployment::new("race", 24, "30m");
    let w1 = d
        .replica(&redis.url(), &["--max-concurrent-starts", "6"])
        .await;
    let w2 = d.replica(&redis.url(), &[]).await;
    let mut c1 = client(w1.grpc_addr, API_TOKEN).await;
    let c2 = client(w2.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c1, 24).await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut c = if i % 2 == 0 { c1.clone() } else { c2.clone() };
            tokio::spawn(async move {
                c.allocate(allocate_req(&format!("doc-{}", i % 20), 5_000))
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    let mut pod_of: HashMap<String, String> = HashMap::new();
    for call in calls {
        let a = call.await.unwrap().unwrap();
        let previous = pod_of.insert(a.document_id.clone(), a.pod.clone());
        assert!(
            previous.is_none_or(|p| p == a.pod),
            "document {} got two pods",
            a.document_id
        );
    }
    assert_eq!(pod_of.len(), 20);
    let pods: HashSet<&String> = pod_of.values().collect();
    assert_eq!(pods.len(), 20, "a pod was bound to two documents");
    // Every binding is also what the store says.
    for (doc, pod) in &pod_of {
        let got = w2.watchman.store().allocation(doc).await.unwrap().unwrap();
        assert_eq!(&got.pod, pod);
    }
    teardown(w1).await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_watchman_keeps_allocations_and_orphans_nothing() {
    let redis = RedisServer::start();
    let d = Deployment::new("restart", 2, "30m");
    let w = d.replica(&redis.url(), &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-r", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run_code(&a, "y = 7\ny").await, "7");
    let before: HashSet<(String, String)> = w
        .watchman
        .store()
        .pods()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.handle))
        .collect();
    w.stop().await; // like a crash: pods are left running
    // A new replica (new lease holder once the old lease expires) adopts everything.
    let w2 = d.replica(&redis.url(), &["--lease-ttl", "1s"]).await;
    let mut c2 = client(w2.grpc_addr, API_TOKEN).await;
    let again = c2
        .allocate(allocate_req("doc-r", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.pod, a.pod);
    assert_eq!(run_code(&again, "y").await, "7");
    wait_warm(&mut c2, 2).await;
    // The new leader's first pass collected garbage; two passes over the full pool, and any
    // pod it would wrongly start or leave behind is there to see.
    more_passes(&w2, 2).await;
    let after: HashSet<i32> = pool_processes(&d.pool_id).into_iter().collect();
    let pods = w2.watchman.store().pods().await.unwrap();
    assert_eq!(pods.len(), 3, "two warm and one allocated: {pods:?}");
    // Every running Middleman is a pod the store knows (kernel agents and kernels are its
    // children).
    let known: HashSet<i32> = pods.iter().map(|p| p.handle.parse().unwrap()).collect();
    let is_middleman = |pid: &i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let mut args = c.split(|b| *b == 0);
            args.next().is_some_and(|a0| a0.ends_with(b"/middleman"))
                && args.next() == Some(&b"serve"[..])
        })
    };
    let leaders: HashSet<i32> = after.iter().copied().filter(is_middleman).collect();
    assert_eq!(leaders, known, "no orphaned or unknown middleman processes");
    let now: HashSet<(String, String)> = pods
        .iter()
        .map(|p| (p.id.clone(), p.handle.clone()))
        .collect();
    assert!(
        before.is_subset(&now),
        "pods were adopted, not recreated: {before:?} vs {now:?}"
    );
    teardown(w2).await;
    assert!(
        wait_pool_gone(&d.pool_id).await,
        "everything stopped: {:?}",
        pool_processes(&d.pool_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_allocation_watches_instead_of_waiting_for_them() {
    let d = Deployment::new("watch-stop", 1, "30m");
    // A grace period no drain needs: running out of it means something held shutdown up.
    let w = d.replica("memory", &["--shutdown-grace", "120s"]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 1).await;
    c.allocate(allocate_req("doc-watched", 0)).await.unwrap();
    let mut watch = c
        .watch_allocation(pb::WatchAllocationRequest {
            document_id: "doc-watched".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        watch.message().await.unwrap().unwrap().event,
        Some(pb::allocation_event::Event::Ready(_))
    ));
    let wm = w.watchman.clone();
    assert_eq!(w.stop().await, watchman::Stopped::Drained);
    // The watcher is told to watch again elsewhere, not left hanging.
    let e = watch.message().await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    wm.delete_all_pods().await.unwrap();
}

/// Checkpoints through Watchman: a released document's next pod gets its kernel's names back
/// (the last save at shutdown, stored by Watchman for that document only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_document_comes_back_on_a_new_pod_with_its_kernel_state() {
    let d = Deployment::new("basic", 2, "30m");
    let w = d.replica("memory", &[]).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-ckpt", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.resumes, "nothing to resume from yet");
    assert_eq!(
        run_code(&a, "import numpy as np\nx = 41\narr = np.arange(10)\nx + 1").await,
        "42"
    );
    assert!(
        c.release(pb::ReleaseRequest {
            document_id: "doc-ckpt".into()
        })
        .await
        .unwrap()
        .into_inner()
        .released
    );
    // The checkpoint is Watchman's, under the document, once the old pod has gone.
    let manifest = d
        .dir
        .0
        .join("pods/checkpoints")
        .join(hex("doc-ckpt"))
        .join("manifest.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !manifest.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = c
        .allocate(allocate_req("doc-ckpt", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(b.pod, a.pod);
    assert!(b.resumes, "the allocation says it resumes");
    assert_eq!(run_code(&b, "int(arr.sum()) + x").await, "86");
    // Another document's pod sees nothing of it.
    let other = c
        .allocate(allocate_req("doc-other", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        run_code(&other, "'x' in globals(), 'arr' in globals()").await,
        "(False, False)"
    );
    teardown(w).await;
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Checkpoints in object storage (a real S3 server, SeaweedFS): pods move their objects
/// themselves with pre-signed URLs, the next pod resumes, and `DeleteDocument` takes the
/// allocation, the snapshot and the checkpoint with it. Without a signature the bucket refuses
/// everyone, and a URL signed for one document's object opens no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_in_object_storage_resume_and_go_with_the_document() {
    use object_store::ObjectStore as _;
    use object_store::signer::Signer as _;
    let s3 = testkit::s3::S3Server::start();
    s3.create_bucket("ckpt");
    let d = Deployment::new("s3ckpt", 2, "30m");
    let options = d.dir.0.join("s3.options");
    std::fs::write(
        &options,
        format!(
            "# a mounted secret\naccess_key_id = {}\nsecret_access_key = {}\n",
            s3.access_key(),
            s3.secret_key()
        ),
    )
    .unwrap();
    let spec = format!(
        "s3://ckpt/notebooks?endpoint={}&region={}&allow_http=true",
        s3.endpoint(),
        s3.region()
    );
    let w = d
        .replica(
            "memory",
            &[
                "--checkpoint-store",
                &spec,
                "--checkpoint-store-options",
                &options.display().to_string(),
            ],
        )
        .await;
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region(s3.region())
        .with_bucket_name("ckpt")
        .with_access_key_id(s3.access_key())
        .with_secret_access_key(s3.secret_key())
        .build()
        .unwrap();
    let keys = |prefix: String| {
        let bucket = &bucket;
        async move {
            let prefix = object_store::path::Path::from(prefix);
            let listed: Vec<object_store::ObjectMeta> =
                futures_util::TryStreamExt::try_collect(bucket.list(Some(&prefix)))
                    .await
                    .unwrap();
            listed
                .into_iter()
                .map(|m| m.location.to_string())
                .collect::<Vec<_>>()
        }
    };
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-s3", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.resumes);
    assert_eq!(
        run_code(
            &a,
            "import numpy as np\nx = 41\narr = np.arange(10)\nopen('kept.txt', 'w').write('a file')\nx + 1"
        )
        .await,
        "42"
    );
    c.release(pb::ReleaseRequest {
        document_id: "doc-s3".into(),
    })
    .await
    .unwrap();
    let prefix = format!("notebooks/{}", hex("doc-s3"));
    let manifest = format!("{prefix}/manifest.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stored = keys(prefix.clone()).await;
        if stored.contains(&manifest) {
            assert!(stored.iter().any(|k| k.contains("/objects/")), "{stored:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint in the bucket: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = c
        .allocate(allocate_req("doc-s3", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(b.resumes, "the allocation says it resumes");
    assert_eq!(run_code(&b, "int(arr.sum()) + x").await, "86");
    assert_eq!(
        run_code(&b, "open('kept.txt').read()").await,
        "'a file'",
        "the workspace's files come back too"
    );

    // The bucket refuses a request without a signature, and a URL signed for this document's
    // object does not open another key.
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let status = |url: String| {
        let http = http.clone();
        async move {
            http.get(url.parse().unwrap())
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status(format!("{}/ckpt/{manifest}", s3.endpoint())).await,
        403
    );
    let signed = bucket
        .signed_url(
            object_store::signer::Method::GET,
            &object_store::path::Path::from(manifest.clone()),
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .to_string();
    assert_eq!(status(signed.clone()).await, 200);
    let other = signed.replace(&hex("doc-s3"), &hex("doc-other"));
    assert_ne!(other, signed);
    assert_eq!(status(other).await, 403);

    // Deleting the document ends its allocation and removes its snapshot and checkpoint.
    let deleted = c
        .delete_document(pb::DeleteDocumentRequest {
            document_id: "doc-s3".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.released, "{deleted:?}");
    assert!(deleted.checkpoint, "{deleted:?}");
    let ended = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: "doc-s3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(ended.code(), Code::NotFound);
    // The ending pod's last save is refused: nothing comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(keys(prefix.clone()).await, Vec::<String>::new());
    let fresh = c
        .allocate(allocate_req("doc-s3", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.resumes);
    assert_eq!(
        run_code(
            &fresh,
            "import os\n'x' in globals(), os.path.exists('kept.txt')"
        )
        .await,
        "(False, False)"
    );
    teardown(w).await;
}
