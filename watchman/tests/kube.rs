//! Watchman's Kubernetes backend against a real API server (etcd, kube-apiserver with RBAC and
//! admission, controller manager, scheduler, kwok playing the kubelet): each test has its own
//! namespaces, fake spot nodes and pool, and Watchman acts as its service account with exactly
//! the Role that deploy/ grants.
//!
//! One file, one test binary: the tests share one control plane (with-kube-cluster.sh) and
//! its helpers (pod labels, the audit log, metrics), and cargo runs each test binary apart, so
//! splitting it would only add binaries to build and link.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use common::kube::{KubeEnv, replica, replica_of, replica_with};
use common::{API_TOKEN, allocate_req, client, wait_warm, wait_warm_plan};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, EvictParams};
use testkit::kube::{NodeSize, WatchmanProcess};
use watchman_proto::v1 as pb;

fn label<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn name(p: &Pod) -> &str {
    p.metadata.name.as_deref().unwrap_or("")
}

fn count_state(pods: &[Pod], state: &str) -> usize {
    pods.iter()
        .filter(|p| label(p, "nbplat.dev/state") == Some(state))
        .count()
}

async fn watch(c: &mut common::Client, doc: &str) -> tonic::Streaming<pb::AllocationEvent> {
    c.watch_allocation(pb::WatchAllocationRequest {
        document_id: doc.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The allocation's end, skipping the `ready` event.
async fn ended(stream: &mut tonic::Streaming<pb::AllocationEvent>) -> pb::Ended {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(180), stream.message())
            .await
            .expect("no end within 180 s")
            .unwrap()
            .expect("stream closed");
        if let Some(pb::allocation_event::Event::Ended(e)) = event.event {
            return e;
        }
    }
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The value of the unlabelled series `name` in a /metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Reconcile passes the replica has run as leader (its pass histogram's count).
async fn passes(p: &WatchmanProcess) -> f64 {
    let text = metrics_text(p.http_addr().await).await;
    metric(&text, "watchman_reconcile_duration_seconds_count").unwrap_or(0.0)
}

/// Waits until the replica has run `n` more passes as leader than now: whatever those passes
/// would do wrong with the state they saw, they have done.
async fn more_passes(p: &WatchmanProcess, n: f64) {
    let start = passes(p).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while passes(p).await < start + n {
        assert!(Instant::now() < deadline, "no reconcile passes for 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pod requests with verb `verb` that Watchman's service account made in this test and the
/// API server granted, from its audit log: every one, whenever it was made, so a pod created
/// and deleted again between two looks still counts. The log is written as requests complete,
/// so this waits (a while) for at least `at_least` before counting.
async fn pod_requests(k: &KubeEnv, verb: &str, at_least: usize) -> usize {
    let count = || {
        k.audited()
            .iter()
            .filter(|e| e.0 == "pods" && e.1 == verb && (200..300).contains(&e.3))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < at_least && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    count()
}

/// (resource[.group], verb) pairs the Role in deploy/base/watchman-rbac.yaml grants.
fn deploy_role_rules() -> BTreeSet<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/base/watchman-rbac.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let list = |line: &str| -> Vec<String> {
        let inner = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut out = BTreeSet::new();
    for doc in text.split("\n---\n") {
        if !doc.contains("kind: Role\n") {
            continue;
        }
        let (mut groups, mut resources) = (Vec::new(), Vec::new());
        for line in doc.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("- apiGroups:") {
                groups = list(rest);
            } else if line.starts_with("resources:") {
                resources = list(line);
            } else if line.starts_with("verbs:") {
                for g in &groups {
                    for r in &resources {
                        for v in list(line) {
                            let res = if g.is_empty() {
                                r.clone()
                            } else {
                                format!("{r}.{g}")
                            };
                            out.insert((res, v));
                        }
                    }
                }
            }
        }
    }
    assert!(!out.is_empty(), "no rules parsed from {path}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_converge_on_hardened_pods_allocate_binds_warm_ones_and_the_role_is_exact() {
    let k = KubeEnv::new("pools", 2).await;
    let w = replica_with(
        &k,
        "free",
        3,
        "memory",
        "replica-a",
        &["--pod-document-store", "http://watchman.test:8080"],
    )
    .await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 3).await;
    let pods = k
        .wait_pods("three warm pods", |p| {
            p.len() == 3 && count_state(p, "warm") == 3
        })
        .await;

    // What the API server admitted (restricted Pod Security and the kernel pod policy are on
    // in this namespace) is the hardened pod of DESIGN.md, on this test's spot nodes.
    let pod = &pods[0];
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.service_account_name.as_deref(), Some("middleman"));
    assert!(spec.node_name.as_deref().unwrap().starts_with(&k.tag));
    assert!(
        spec.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("nbplat.dev/spot"))
    );
    let psc = spec.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    // Two containers, two principals: Middleman, and the kernel (its agent) under another
    // uid, each in its own PID namespace, sharing only the ipc and agent directories.
    assert_eq!(spec.share_process_namespace, Some(false));
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["middleman", "kernel"]);
    let uid = |c: &k8s_openapi::api::core::v1::Container| {
        c.security_context.as_ref().unwrap().run_as_user.unwrap()
    };
    let (middleman, kernel) = (&spec.containers[0], &spec.containers[1]);
    assert_ne!(uid(middleman), uid(kernel));
    assert!(uid(kernel) != 0 && uid(middleman) != 0);
    let kernel_args = kernel.args.as_ref().unwrap();
    assert_eq!(kernel_args[0], "kernel-agent");
    let allowed = kernel_args
        .iter()
        .position(|a| a == "--allow-uid")
        .map(|i| kernel_args[i + 1].parse::<i64>().unwrap());
    assert_eq!(
        allowed,
        Some(uid(middleman)),
        "the agent answers Middleman only"
    );
    let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.name.clone())
            .collect()
    };
    assert!(mounts(middleman).contains(&"pod-info".to_owned()));
    assert!(
        !mounts(kernel).contains(&"pod-info".to_owned()),
        "the kernel must not see the pod's credential"
    );
    let shared: Vec<String> = mounts(kernel)
        .into_iter()
        .filter(|m| mounts(middleman).contains(m))
        .collect();
    // The workspace too: Middleman's file API reads and writes it as the shared group.
    assert_eq!(shared, ["work", "ipc", "agent"]);
    // Nothing store-wide reaches a pod: its documents go through Watchman with a credential
    // for this pod alone.
    for c in &spec.containers {
        let text = format!("{:?} {:?}", c.args, c.env);
        assert!(!text.contains("redis://"), "{text}");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
    }
    let limits = kernel.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "1Gi");
    assert_eq!(limits["ephemeral-storage"].0, "1Gi");
    assert!(
        annotation(pod, "nbplat.dev/public-key")
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );
    let middleman_args = middleman.args.as_ref().unwrap().join(" ");
    assert!(
        middleman_args.contains("--document-store watchman+http://watchman.test:8080")
            && middleman_args.contains("--pod-credential-file /etc/nbplat/pod/credential"),
        "{middleman_args}"
    );
    let key =
        session_token::SigningKey::from_pem(&std::fs::read_to_string(&k.key).unwrap()).unwrap();
    let credential = annotation(pod, "nbplat.dev/pod-credential").unwrap();
    assert_eq!(
        key.check_pod_credential(credential).as_deref(),
        Some(name(pod)),
        "the credential names this pod and no other"
    );
    assert_eq!(label(pod, "nbplat.dev/plan"), Some("free"));

    // Allocate binds a warm pod, at its pod IP; the pod is relabelled for operators and the
    // pool refills.
    let a = c
        .allocate(allocate_req("doc-kube", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.launch, pb::LaunchKind::Warm as i32);
    let bound = pods.iter().find(|p| name(p) == a.pod).expect("a warm pod");
    let ip = bound.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(
        a.websocket_url.contains(&format!("{ip}:8888")),
        "{} should reach {ip}",
        a.websocket_url
    );
    k.wait_pods("the pod relabelled allocated and the pool refilled", |p| {
        p.iter().any(|x| {
            name(x) == a.pod
                && label(x, "nbplat.dev/state") == Some("allocated")
                && annotation(x, "nbplat.dev/document") == Some("doc-kube")
        }) && count_state(p, "warm") == 3
            && p.len() == 4
    })
    .await;

    // Release deletes the pod.
    c.release(pb::ReleaseRequest {
        document_id: "doc-kube".into(),
    })
    .await
    .unwrap();
    k.wait_pods("the released pod deleted", |p| {
        !p.iter().any(|x| name(x) == a.pod) && p.len() == 3
    })
    .await;
    w.stop().await;

    // The Role is exactly what Watchman used: every rule exercised, nothing refused.
    let audit = k.audited();
    let refused: Vec<_> = audit.iter().filter(|e| e.3 == 403).collect();
    assert!(refused.is_empty(), "requests refused by RBAC: {refused:?}");
    for e in &audit {
        let expected_ns = if e.0.starts_with("leases") {
            &k.ns
        } else {
            &k.pods_ns
        };
        assert_eq!(&e.2, expected_ns, "request outside its namespace: {e:?}");
    }
    let used: BTreeSet<(String, String)> =
        audit.iter().map(|e| (e.0.clone(), e.1.clone())).collect();
    assert_eq!(
        used,
        deploy_role_rules(),
        "the Role in deploy/base/watchman-rbac.yaml and what Watchman does differ"
    );
    k.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_evicted_and_failed_pods_end_their_allocations_with_the_reason() {
    let k = KubeEnv::new("loss", 2).await;
    // A plan of its own: the metrics below are the process's, shared with parallel tests.
    let w = replica_of(&k, "loss", 3, "memory", "replica-a").await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm_plan(&mut c, "loss", 3).await;
    let req = |doc: &str| pb::AllocateRequest {
        plan: "loss".into(),
        ..allocate_req(doc, 0)
    };
    let a = c.allocate(req("doc-deleted")).await.unwrap().into_inner();
    let b = c.allocate(req("doc-evicted")).await.unwrap().into_inner();
    let f = c.allocate(req("doc-failed")).await.unwrap().into_inner();
    let mut wa = watch(&mut c, "doc-deleted").await;
    let mut wb = watch(&mut c, "doc-evicted").await;
    let mut wf = watch(&mut c, "doc-failed").await;

    // Someone deletes one pod; the other is evicted (what a node drain or the spot
    // termination handler does).
    k.pods()
        .delete(&a.pod, &DeleteParams::default())
        .await
        .unwrap();
    k.pods()
        .evict(&b.pod, &EvictParams::default())
        .await
        .unwrap();
    // The third one's container is killed (kwok's test hook: the pod fails with exit 137).
    k.pods()
        .patch(
            &f.pod,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"kwok.nbplat.dev/fail-after": "0s"}}
            })),
        )
        .await
        .unwrap();

    let ea = ended(&mut wa).await;
    assert_eq!(ea.reason, pb::EndReason::PodLost as i32, "{ea:?}");
    let eb = ended(&mut wb).await;
    assert_eq!(eb.reason, pb::EndReason::Preempted as i32, "{eb:?}");
    assert!(eb.detail.contains("EvictionByEvictionAPI"), "{eb:?}");
    let ef = ended(&mut wf).await;
    assert_eq!(ef.reason, pb::EndReason::PodLost as i32, "{ef:?}");
    assert!(ef.detail.contains("exited with 137"), "{ef:?}");

    // The documents are free again, the pool refills, and the metrics say why.
    wait_warm_plan(&mut c, "loss", 3).await;
    let text = metrics_text(w.http_addr).await;
    for reason in ["pod_lost", "preempted"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("watchman_pods_ended_total")
                    && l.contains("plan=\"loss\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} series in {text}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
    let again = c.allocate(req("doc-deleted")).await.unwrap().into_inner();
    assert_ne!(again.pod, a.pod);
    w.stop().await;
    k.cleanup().await;
}

/// A pool of two warm pods and one allocation on node `<tag>-a-0`; node `<tag>-b-0` joins;
/// `fail` takes the first node away. The allocation must end `PREEMPTED`, its detail naming
/// `cause`, and the pool must refill on the node that is left. The document had a kernel
/// checkpoint (saved through Watchman as its pod would, with that pod's credential and
/// binding): its next `Allocate` resumes.
async fn lose_a_node(
    tag: &str,
    extra: &[&str],
    cause: &str,
    fail: impl AsyncFnOnce(&KubeEnv, &str),
) {
    let k = KubeEnv::new(tag, 0).await;
    let lost = format!("{}-a", k.tag);
    k.create_nodes(1, &lost, &NodeSize::default()).await;
    let checkpoints = common::Dir::new("kube-ckpt");
    let checkpoint_dir = checkpoints.0.display().to_string();
    let mut flags = vec![
        "--pod-document-store",
        "http://watchman.nbplat.svc:9090",
        "--checkpoint-store",
        &checkpoint_dir,
    ];
    flags.extend_from_slice(extra);
    let w = replica_with(&k, "free", 2, "memory", "replica-a", &flags).await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-on-lost-node", 0))
        .await
        .unwrap()
        .into_inner();
    assert!(!a.resumes);
    let mut wa = watch(&mut c, "doc-on-lost-node").await;
    k.wait_pods("two warm pods and one allocated", |p| p.len() == 3)
        .await;
    // The pod keeps its checkpoint through Watchman, as it does its document.
    let pods: Api<Pod> = Api::namespaced(k.admin.clone(), &k.pods_ns);
    let pod = pods.get(&a.pod).await.unwrap();
    let args = pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--checkpoint-store"
                && w[1] == "watchman+http://watchman.nbplat.svc:9090"),
        "{args:?}"
    );
    // The plan's checkpoint limits (the defaults here).
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--checkpoint-max-mib" && w[1] == "4096"),
        "{args:?}"
    );
    let credential =
        pod.metadata.annotations.as_ref().unwrap()["nbplat.dev/pod-credential"].clone();
    let manifest = serde_json::json!({
        "version": 1, "document": "doc-on-lost-node", "names": {}, "recompute": {}
    });
    let saved = save_checkpoint(w.http_addr, &credential, &a.token, &manifest).await;
    assert_eq!(saved, 204);
    let spare = format!("{}-b", k.tag);
    k.create_nodes(1, &spare, &NodeSize::default()).await;
    let lost = format!("{lost}-0");
    fail(&k, &lost).await;

    let e = ended(&mut wa).await;
    assert_eq!(e.reason, pb::EndReason::Preempted as i32, "{e:?}");
    assert!(e.detail.contains(cause), "{e:?}");
    assert_eq!(e.allocation_id, a.allocation_id);
    k.wait_pods("two warm pods on the remaining node", |p| {
        p.len() == 2
            && count_state(p, "warm") == 2
            && p.iter().all(|x| {
                x.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&format!("{spare}-0"))
            })
    })
    .await;
    wait_warm(&mut c, 2).await;
    let again = c
        .allocate(allocate_req("doc-on-lost-node", 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.pod, a.pod);
    assert!(again.resumes, "the next pod resumes from the checkpoint");
    w.stop().await;
    // The lost node goes (if it has not), so that no pod on it holds the namespace.
    let nodes: Api<Node> = Api::all(k.admin.clone());
    let _ = nodes.delete(&lost, &DeleteParams::default()).await;
    k.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_spot_node_ends_its_allocations_and_the_pool_refills_on_other_nodes() {
    // The spot node is reclaimed: its Node object goes, and the pod garbage collector
    // removes its pods (about 40 s later).
    lose_a_node(
        "spot",
        &[],
        "DeletionByPodGC",
        async |k: &KubeEnv, node: &str| {
            let nodes: Api<Node> = Api::all(k.admin.clone());
            nodes.delete(node, &DeleteParams::default()).await.unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_answering_has_its_allocations_ended_and_the_pool_moves() {
    // Pods leave a node that stopped answering after 5 s here (30 s by default).
    let extra = ["--pod-unreachable-toleration", "5s"];
    lose_a_node(
        "notready",
        &extra,
        "DeletionByTaintManager",
        async |k: &KubeEnv, node: &str| {
            // The node's kubelet reports NotReady (kwok's test hook, and the status itself in
            // case kwok's stage has not run yet; the annotation keeps kwok from setting it Ready
            // again): the node lifecycle controller taints it not-ready:NoExecute, and its pods
            // are evicted once their toleration ends.
            let nodes: Api<Node> = Api::all(k.admin.clone());
            let params = kube::api::PatchParams::default();
            nodes
                .patch(
                    node,
                    &params,
                    &kube::api::Patch::Merge(serde_json::json!({
                        "metadata": {"annotations": {"kwok.nbplat.dev/not-ready": "true"}}
                    })),
                )
                .await
                .unwrap();
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            nodes
                .patch_status(
                    node,
                    &params,
                    &kube::api::Patch::Strategic(serde_json::json!({
                        "status": {"conditions": [{
                            "type": "Ready", "status": "False", "reason": "KubeletNotReady",
                            "message": "test: the node stopped answering",
                            "lastHeartbeatTime": now, "lastTransitionTime": now
                        }]}
                    })),
                )
                .await
                .unwrap();
        },
    )
    .await;
}

/// A replica of `warm` pods of plan `free` as a child process (killed with SIGKILL on drop).
fn spawn_replica(k: &KubeEnv, warm: u32, store: &str, instance: &str) -> WatchmanProcess {
    let plans = k.write_plans(&k.plan("free", warm));
    WatchmanProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_watchman")),
        &k.args(&plans, store, instance, API_TOKEN),
        k.dir.0.join(format!("{instance}.log")),
        "info",
    )
}

async fn client_of(p: &WatchmanProcess) -> common::Client {
    client(p.grpc_addr().await, API_TOKEN).await
}

async fn lease_holder(k: &KubeEnv) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(k.admin.clone(), &k.ns);
    leases
        .get_opt("watchman")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

async fn wait_holder(k: &KubeEnv, who: &str) -> Duration {
    let started = Instant::now();
    while lease_holder(k).await.as_deref() != Some(who) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{who} never took the lease (holder: {:?})",
            lease_holder(k).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_reconciliation_without_extra_pods() {
    let redis = testkit::RedisServer::start();
    let k = KubeEnv::new("leader", 2).await;
    let mut first = spawn_replica(&k, 3, &redis.url(), "replica-a");
    wait_holder(&k, "replica-a").await;
    let mut c1 = client_of(&first).await;
    wait_warm(&mut c1, 3).await;
    let second = spawn_replica(&k, 3, &redis.url(), "replica-b");
    let mut c2 = client_of(&second).await;
    // Both serve Allocate; only the leader reconciles.
    let a = c2
        .allocate(allocate_req("doc-before", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.launch, pb::LaunchKind::Warm as i32);
    k.wait_pods("the pool refilled by the leader", |p| {
        p.len() == 4 && count_state(p, "warm") == 3
    })
    .await;
    assert_eq!(lease_holder(&k).await.as_deref(), Some("replica-a"));

    first.kill();
    let took = wait_holder(&k, "replica-b").await;
    eprintln!("replica-b took the lease {took:?} after the leader was killed (lease 3 s)");
    // The new leader works from the shared store: no pod is created beyond the target.
    let a2 = c2
        .allocate(allocate_req("doc-after", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a2.launch, pb::LaunchKind::Warm as i32);
    k.wait_pods("the pool refilled by the new leader", |p| {
        p.len() == 5 && count_state(p, "warm") == 3
    })
    .await;
    // Two more passes of the new leader over that state, then every creation ever made:
    // three to fill the pool and one refill per allocation, nothing beyond the target.
    more_passes(&second, 2.0).await;
    let created = pod_requests(&k, "create", 5).await;
    assert_eq!(created, 5, "pods created beyond 2 allocated + 3 warm");
    drop(second);
    k.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stalls_past_its_lease_does_nothing_when_it_wakes() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let redis = testkit::RedisServer::start();
    let k = KubeEnv::new("stall", 2).await;
    let first = spawn_replica(&k, 3, &redis.url(), "replica-a");
    wait_holder(&k, "replica-a").await;
    let mut c1 = client_of(&first).await;
    wait_warm(&mut c1, 3).await;
    let second = spawn_replica(&k, 3, &redis.url(), "replica-b");
    let mut c2 = client_of(&second).await;
    // The leader freezes (a long GC pause, a starved node, SIGSTOP): the other takes over,
    // serves and refills.
    let pid = Pid::from_raw(i32::try_from(first.pid()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    wait_holder(&k, "replica-b").await;
    for doc in ["doc-1", "doc-2"] {
        c2.allocate(allocate_req(doc, 0)).await.unwrap();
    }
    k.wait_pods("two allocated and three warm", |p| {
        p.len() == 5 && count_state(p, "warm") == 3
    })
    .await;
    // It wakes with the view it had: it must notice it lost the lease and act on nothing.
    // Its leader gauge drops only once the pass it was frozen in has ended and its next lease
    // check failed; by then anything it would wrongly do is done, and in the audit log.
    kill(pid, Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(
        &metrics_text(first.http_addr().await).await,
        "watchman_leader",
    ) != Some(0.0)
    {
        assert!(
            Instant::now() < deadline,
            "the woken replica still believes it leads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    more_passes(&second, 2.0).await;
    let created = pod_requests(&k, "create", 5).await;
    assert_eq!(created, 5, "pods created beyond 2 allocated + 3 warm");
    assert_eq!(
        pod_requests(&k, "delete", 0).await,
        0,
        "a pod was deleted though none ended"
    );
    assert_eq!(k.live_pods().await.len(), 5);
    assert_eq!(lease_holder(&k).await.as_deref(), Some("replica-b"));
    c1.get_allocation(pb::GetAllocationRequest {
        document_id: "doc-1".into(),
    })
    .await
    .expect("the woken replica serves the shared store");
    drop((first, second));
    k.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_watchman_adopts_its_pods_instead_of_leaking_or_recreating_them() {
    let redis = testkit::RedisServer::start();
    let k = KubeEnv::new("adopt", 2).await;

    // With the memory store: the warm pods are adopted from their labels.
    let w = replica(&k, 3, "memory", "replica-a").await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 3).await;
    let uids = |pods: &[Pod]| -> HashSet<String> {
        pods.iter().filter_map(|p| p.metadata.uid.clone()).collect()
    };
    let before = uids(
        &k.wait_pods("three warm", |p| {
            p.len() == 3 && count_state(p, "warm") == 3
        })
        .await,
    );
    w.stop().await;
    let w = replica(&k, 3, "memory", "replica-b").await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 3).await;
    let a = c
        .allocate(allocate_req("doc-adopted", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.launch, pb::LaunchKind::Warm as i32);
    let after = k
        .wait_pods("refilled", |p| p.len() == 4 && count_state(p, "warm") == 3)
        .await;
    let after_uids = uids(&after);
    assert!(before.is_subset(&after_uids), "adopted pods were replaced");
    assert_eq!(after_uids.len(), 4, "exactly one new pod (the refill)");
    w.stop().await;
    let pods = k.live_pods().await;
    for p in &pods {
        k.pods()
            .delete(name(p), &DeleteParams::default())
            .await
            .unwrap();
    }
    k.wait_pods("all gone", <[Pod]>::is_empty).await;

    // With Redis: allocated pods keep their documents across the restart.
    let w = replica(&k, 2, &redis.url(), "replica-c").await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    let a = c
        .allocate(allocate_req("doc-kept", 0))
        .await
        .unwrap()
        .into_inner();
    let before = uids(
        &k.wait_pods("refilled", |p| p.len() == 3 && count_state(p, "warm") == 2)
            .await,
    );
    w.stop().await;
    // Meanwhile a pod of this pool appears that no record accounts for, labelled allocated
    // (as one created by a Watchman that crashed before recording it might be).
    let settings = watchman::backend::KubeSettings {
        namespace: k.pods_ns.clone(),
        pool_id: k.pool_id.clone(),
        default_image: "ghcr.io/nbplat/middleman:0.1.0".into(),
        public_key_pem: "unused".into(),
        document_store: watchman::config::PodDocumentStore::None,
        checkpoints: false,
        signing_key: session_token::SigningKey::generate(),
        service_account: "middleman".into(),
        delete_grace: Duration::from_secs(1),
        unreachable_toleration: Duration::from_secs(30),
        extra_annotations: Default::default(),
    };
    let plan = watchman::plan::parse_plans("test", &k.plan("free", 2))
        .unwrap()
        .remove("free")
        .unwrap();
    let mut stray = watchman::backend::kube::pod_manifest(&settings, "free-stray", &plan);
    stray
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("nbplat.dev/state".into(), "allocated".into());
    k.pods().create(&Default::default(), &stray).await.unwrap();
    let w = replica(&k, 2, &redis.url(), "replica-d").await;
    let mut c = client(w.grpc_addr, API_TOKEN).await;
    wait_warm(&mut c, 2).await;
    // Its garbage collection deletes the stray pod, and only that one.
    k.wait_pods("the stray pod deleted", |p| {
        !p.iter().any(|x| name(x) == "free-stray")
    })
    .await;
    let got = c
        .get_allocation(pb::GetAllocationRequest {
            document_id: "doc-kept".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.pod, a.pod);
    assert_eq!(uids(&k.live_pods().await), before);
    w.stop().await;
    k.cleanup().await;
}

/// `PUT /v1/pod/checkpoint/manifest` as a pod's Middleman sends it; the answer's status.
async fn save_checkpoint(
    http: std::net::SocketAddr,
    credential: &str,
    binding: &str,
    manifest: &serde_json::Value,
) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::put(format!("http://{http}/v1/pod/checkpoint/manifest"))
        .header("authorization", format!("Bearer {credential}"))
        .header(doc_store::BINDING_HEADER, binding)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::to_vec(manifest).unwrap(),
        )))
        .unwrap();
    client.request(request).await.unwrap().status().as_u16()
}
