//! A namespace pair of its own on the test control plane (scripts/with-kube-cluster.sh), with
//! exactly the RBAC that deploy/ grants Watchman, its own fake spot nodes, and the arguments
//! that make a Watchman act as Watchman's service account there. Test support: it panics with
//! a clear message on any failure.
//!
//! One file: everything here is one test's view of the cluster (`KubeEnv`) and the Watchman
//! it runs there; the node, plan and argument helpers only make sense together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};

use crate::TempDir;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} unset: run the tests with `make test`, which starts the test Kubernetes control plane (scripts/with-kube-cluster.sh)")
    })
}

/// Capacity of a fake node (kwok reports it as allocatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSize {
    pub cpu: String,
    pub memory: String,
    /// Pods the node takes at most.
    pub pods: u32,
}

impl Default for NodeSize {
    /// What `kube-cluster.sh create-nodes` gives by default.
    fn default() -> Self {
        Self {
            cpu: "64".into(),
            memory: "256Gi".into(),
            pods: 256,
        }
    }
}

/// A fake spot node `name` in `zone` of instance type `instance_type`: kwok manages it (the
/// annotation its controller selects on), labelled and tainted `nbplat.dev/spot=true` as the
/// plans' node selectors and tolerations expect.
fn spot_node(name: &str, instance_type: &str, zone: &str, size: &NodeSize) -> Node {
    let capacity = serde_json::json!({
        "cpu": size.cpu, "memory": size.memory, "pods": size.pods.to_string(),
        "ephemeral-storage": "1Ti"
    });
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": instance_type,
                "topology.kubernetes.io/region": "kwok",
                "topology.kubernetes.io/zone": format!("kwok-{zone}"),
                "type": "kwok",
                "nbplat.dev/pool": "spot",
                "nbplat.dev/spot": "true"
            }
        },
        "spec": {"taints": [{"key": "nbplat.dev/spot", "value": "true", "effect": "NoSchedule"}]},
        "status": {"allocatable": capacity, "capacity": capacity}
    }))
    .unwrap()
}

/// One test's corner of the cluster.
pub struct KubeEnv {
    pub tag: String,
    /// Watchman's namespace (its Lease) and the kernel pods' namespace.
    pub ns: String,
    pub pods_ns: String,
    pub admin: kube::Client,
    pub dir: TempDir,
    /// Kubeconfig of Watchman's service account (a bearer token for it).
    pub sa_kubeconfig: PathBuf,
    pub key: PathBuf,
    pub pool_id: String,
    kubectl: String,
    admin_kubeconfig: String,
}

impl std::fmt::Debug for KubeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEnv")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl KubeEnv {
    /// Namespaces `wm-TAG-xxxx` and `wm-TAG-xxxx-pods` (restricted Pod Security, the kernel pod
    /// policy), the deploy/ RBAC in them, and `nodes` fake spot nodes for this test alone.
    pub async fn new(tag: &str, nodes: u32) -> Self {
        let admin_kubeconfig = env("NBP_KUBECONFIG");
        let kubectl = env("NBP_KUBECTL");
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let tag = format!("{tag}-{suffix}");
        let ns = format!("wm-{tag}");
        let pods_ns = format!("{ns}-pods");
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&admin_kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        let admin = kube::Client::try_from(config).unwrap();
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        for (name, kernel) in [(&ns, false), (&pods_ns, true)] {
            let mut labels = std::collections::BTreeMap::from([
                (
                    "pod-security.kubernetes.io/enforce".to_owned(),
                    "restricted".to_owned(),
                ),
                (
                    "pod-security.kubernetes.io/enforce-version".to_owned(),
                    "v1.34".to_owned(),
                ),
                ("nbplat.dev/test".to_owned(), "true".to_owned()),
            ]);
            if kernel {
                labels.insert("nbplat.dev/kernel-pods".into(), "true".into());
            }
            let n = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            namespaces.create(&PostParams::default(), &n).await.unwrap();
        }
        let dir = TempDir::new(&tag);
        let env = Self {
            tag,
            ns,
            pods_ns,
            admin,
            sa_kubeconfig: dir.0.join("watchman.kubeconfig"),
            key: dir.0.join("signing.pem"),
            pool_id: format!("test-{suffix}"),
            dir,
            kubectl,
            admin_kubeconfig,
        };
        std::fs::write(
            &env.key,
            session_token::SigningKey::generate().to_pem().unwrap(),
        )
        .unwrap();
        // Exactly deploy/'s RBAC and the kernel pods' service account, in this test's
        // namespaces.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
        let mut manifests = String::new();
        for file in ["watchman-rbac.yaml", "pods-namespace.yaml"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            manifests.push_str(&env.renamespace(&text));
            manifests.push_str("\n---\n");
        }
        env.kubectl_stdin(&["apply", "-f", "-"], &manifests);
        let token = env.kubectl(&[
            "create",
            "token",
            "watchman",
            "-n",
            &env.ns,
            "--duration",
            "2h",
        ]);
        env.write_sa_kubeconfig(token.trim());
        if nodes > 0 {
            env.create_nodes(nodes, &env.tag, &NodeSize::default())
                .await;
        }
        env
    }

    fn renamespace(&self, text: &str) -> String {
        text.replace(
            "namespace: nbplat-pods",
            &format!("namespace: {}", self.pods_ns),
        )
        .replace("name: nbplat-pods", &format!("name: {}", self.pods_ns))
        .replace("namespace: nbplat\n", &format!("namespace: {}\n", self.ns))
    }

    fn write_sa_kubeconfig(&self, token: &str) {
        let mut kc = kube::config::Kubeconfig::read_from(&self.admin_kubeconfig).unwrap();
        for auth in &mut kc.auth_infos {
            auth.auth_info = Some(kube::config::AuthInfo {
                token: Some(token.to_owned().into()),
                ..kube::config::AuthInfo::default()
            });
        }
        // JSON is YAML: no YAML writer needed.
        std::fs::write(&self.sa_kubeconfig, serde_json::to_vec(&kc).unwrap()).unwrap();
    }

    /// `kubectl ARGS` as the admin; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) {
        use std::io::Write as _;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fake spot nodes `PREFIX-0..N-1` of this environment's instance type (its plans select
    /// that type, so its pods land on its nodes only), managed by kwok, as
    /// `kube-cluster.sh create-nodes` makes them; waits until they are Ready. Nodes that
    /// exist already are left as they are.
    pub async fn create_nodes(&self, n: u32, prefix: &str, size: &NodeSize) {
        let nodes: Api<Node> = Api::all(self.admin.clone());
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            if nodes.get_opt(name).await.unwrap().is_some() {
                continue;
            }
            let node = spot_node(name, &self.tag, ["a", "b", "c"][i % 3], size);
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => panic!("creating node {name}: {e}"),
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let mut waiting = Vec::new();
            for name in &names {
                let ready = nodes.get_opt(name).await.unwrap().is_some_and(|node| {
                    node.status.and_then(|s| s.conditions).is_some_and(|cs| {
                        cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                });
                if !ready {
                    waiting.push(name.as_str());
                }
            }
            if waiting.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nodes not Ready after 120 s: {waiting:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A plan `name` of `warm` warm pods on this environment's nodes (TOML).
    pub fn plan(&self, name: &str, warm: u32) -> String {
        format!(
            r#"[plans.{name}]
kernel = "python3"
image = "ghcr.io/nbplat/middleman:0.1.0"
warm = {{ ratio = 0.0, min = {warm}, max = {warm} }}
idle_timeout = "1h"
max_lifetime = "4h"
resources = {{ cpu_request = "100m", cpu_limit = "1", memory_request = "256Mi", memory_limit = "1Gi", ephemeral_storage = "1Gi" }}
node_selector = {{ "node.kubernetes.io/instance-type" = "{}" }}
tolerations = [{{ key = "nbplat.dev/spot", operator = "Equal", value = "true", effect = "NoSchedule" }}]
"#,
            self.tag
        )
    }

    /// Writes a plans file; its path.
    pub fn write_plans(&self, toml: &str) -> PathBuf {
        let path = self.dir.0.join("plans.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Watchman's arguments for this environment (kubernetes backend as its service account)
    /// with the plans file `plans`, the store, replica name and API token.
    pub fn args(&self, plans: &Path, store: &str, instance: &str, api_token: &str) -> Vec<String> {
        [
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--plans",
            &plans.display().to_string(),
            "--signing-key",
            &self.key.display().to_string(),
            "--api-token",
            api_token,
            "--store",
            store,
            "--redis-prefix",
            &format!("{}:", self.pool_id),
            "--backend",
            "kubernetes",
            "--kubeconfig",
            &self.sa_kubeconfig.display().to_string(),
            "--pod-namespace",
            &self.pods_ns,
            "--lease-namespace",
            &self.ns,
            "--pool-id",
            &self.pool_id,
            "--instance",
            instance,
            "--reconcile-interval",
            "100ms",
            "--lease-ttl",
            "3s",
            "--pod-create-rate",
            "50",
            "--pod-delete-grace",
            "1s",
        ]
        .map(str::to_owned)
        .into()
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), &self.pods_ns)
    }

    /// This pool's pods that are not being deleted.
    pub async fn live_pods(&self) -> Vec<Pod> {
        self.pods()
            .list(&ListParams::default().labels(&format!("nbplat.dev/pool={}", self.pool_id)))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Waits until `check` holds of the live pods.
    pub async fn wait_pods(&self, what: &str, check: impl Fn(&[Pod]) -> bool) -> Vec<Pod> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let pods = self.live_pods().await;
            if check(&pods) {
                return pods;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; pods: {:?}",
                pods.iter()
                    .map(|p| (p.metadata.name.clone(), p.metadata.labels.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every request Watchman's service account made in this test's namespaces, from the API
    /// server's audit log: (resource, verb, namespace, response code).
    pub fn audited(&self) -> Vec<(String, String, String, u16)> {
        let user = format!("system:serviceaccount:{}:watchman", self.ns);
        // The log and its rotated backups (audit-<time>.log).
        let logs = Path::new(&env("NBP_KUBE_RUN")).join("logs");
        let mut text = String::new();
        for entry in std::fs::read_dir(&logs).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("audit") && name.ends_with(".log") {
                text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
                text.push('\n');
            }
        }
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == user.as_str())
            .map(|e| {
                let r = &e["objectRef"];
                let group = r["apiGroup"].as_str().unwrap_or("");
                let resource = r["resource"].as_str().unwrap_or("");
                let sub = r["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default();
                (
                    if group.is_empty() {
                        format!("{resource}{sub}")
                    } else {
                        format!("{resource}.{group}{sub}")
                    },
                    e["verb"].as_str().unwrap_or("").to_owned(),
                    r["namespace"].as_str().unwrap_or("").to_owned(),
                    e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                )
            })
            .collect()
    }

    /// Deletes this test's namespaces and nodes.
    pub async fn cleanup(self) {
        let namespaces: Api<Namespace> = Api::all(self.admin.clone());
        for ns in [&self.ns, &self.pods_ns] {
            let _ = namespaces.delete(ns, &DeleteParams::default()).await;
        }
        let nodes: Api<Node> = Api::all(self.admin.clone());
        let _ = nodes
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default()
                    .labels(&format!("node.kubernetes.io/instance-type={}", self.tag)),
            )
            .await;
    }
}

/// A Watchman replica as a child process, killed on drop. It binds its own ports (nothing is
/// handed over between parallel tests); its gRPC address is read from its log, so its
/// `RUST_LOG` must let `watchman=info` through.
#[derive(Debug)]
pub struct WatchmanProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl WatchmanProcess {
    /// Starts `bin` with `args` (which should listen on port 0), logging to `log`.
    pub fn spawn(bin: &Path, args: &[String], log: PathBuf, rust_log: &str) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gRPC address it logged once listening (waits up to 30 s).
    pub async fn grpc_addr(&self) -> std::net::SocketAddr {
        self.logged_addr("grpc_addr=").await
    }

    /// The HTTP address (/metrics) it logged once listening (waits up to 30 s).
    pub async fn http_addr(&self) -> std::net::SocketAddr {
        self.logged_addr("http_addr=").await
    }

    async fn logged_addr(&self, key: &str) -> std::net::SocketAddr {
        for _ in 0..300 {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|a| a.parse().ok())
            {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("watchman never listened: {}", self.log.display());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WatchmanProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
