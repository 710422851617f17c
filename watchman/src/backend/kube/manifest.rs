//! The pod manifest: one pod per warm kernel, built from its plan, hardened as DESIGN.md asks
//! (non-root, read-only root filesystems, every capability dropped, seccomp RuntimeDefault, no
//! service account token, no service links, memory and ephemeral-storage limits, the plan's
//! RuntimeClass, spot placement). The kernel is another principal than Middleman: it runs in a
//! container of its own under its own uid (the `kernel` container's entrypoint is the kernel
//! agent, which Middleman commands over a socket only Middleman's uid may use); the two share
//! only the ipc directory and the agent's socket. Only Middleman's container mounts the pod's
//! information (the public key and the pod credential). docs/sandbox.md says why.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, HTTPGetAction, ObjectFieldSelector, Pod as KubePod, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Toleration as KubeToleration, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{KubeSettings, keys};
use crate::config::PodDocumentStore;
use crate::model::PodState;
use crate::plan::Plan;

/// Middleman's port in the pod.
pub const MIDDLEMAN_PORT: i32 = 8888;
/// Middleman's uid, the only one the kernel agent answers.
pub(super) const MIDDLEMAN_UID: i64 = 10001;
/// The kernel container's uid.
pub(super) const KERNEL_UID: i64 = 10002;
/// The group both containers share the ipc and agent directories through.
pub(super) const SHARED_GID: i64 = 10000;
/// The binary in the image (both containers run it).
const MIDDLEMAN_BIN: &str = "/usr/local/bin/middleman";
/// Middleman's memory limit (the plan's resources are the kernel's).
const MIDDLEMAN_MEMORY: &str = "256Mi";
/// Connection files and the kernel's ipc sockets, shared by both containers.
pub(super) const IPC_DIR: &str = "/run/nbplat/ipc";
/// The kernel agent's socket, shared by both containers.
pub(super) const AGENT_DIR: &str = "/run/nbplat/agent";
/// The pod's information (public key, credential), in Middleman's container only.
pub(super) const POD_INFO: &str = "/etc/nbplat/pod";
/// The kernel's home and workspace.
pub(super) const KERNEL_HOME: &str = "/home/kernel";

/// The pod for `id` of `plan`.
pub fn pod_manifest(settings: &KubeSettings, id: &str, plan: &Plan) -> KubePod {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "middleman".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "watchman".to_owned(),
        ),
        (keys::POOL.to_owned(), settings.pool_id.clone()),
        (keys::PLAN.to_owned(), plan.name.clone()),
        (
            keys::STATE.to_owned(),
            PodState::Starting.label().to_owned(),
        ),
    ]);
    let mut annotations = settings.extra_annotations.clone();
    annotations.insert(keys::PUBLIC_KEY.to_owned(), settings.public_key_pem.clone());
    let limits = &plan.limits;
    let r = &plan.resources;
    let q = |s: &str| Quantity(s.to_owned());
    // Memory and ephemeral storage are always limited (the namespace's admission policy
    // refuses pods without): the plan's values, or the kernel's own memory limit plus room
    // for Middleman.
    let memory_limit = if r.memory_limit.is_empty() {
        format!("{}Mi", limits.memory_mib + 256)
    } else {
        r.memory_limit.clone()
    };
    let ephemeral = if r.ephemeral_storage.is_empty() {
        "1Gi".to_owned()
    } else {
        r.ephemeral_storage.clone()
    };
    let mut requests = BTreeMap::new();
    let mut limit = BTreeMap::new();
    if !r.cpu_request.is_empty() {
        requests.insert("cpu".to_owned(), q(&r.cpu_request));
    }
    if !r.cpu_limit.is_empty() {
        limit.insert("cpu".to_owned(), q(&r.cpu_limit));
    }
    requests.insert(
        "memory".to_owned(),
        q(if r.memory_request.is_empty() {
            &memory_limit
        } else {
            &r.memory_request
        }),
    );
    limit.insert("memory".to_owned(), q(&memory_limit));
    requests.insert("ephemeral-storage".to_owned(), q(&ephemeral));
    limit.insert("ephemeral-storage".to_owned(), q(&ephemeral));

    let mut tolerations: Vec<KubeToleration> = plan
        .tolerations
        .iter()
        .map(|t| KubeToleration {
            key: Some(t.key.clone()),
            operator: Some(t.operator.clone()),
            value: (!t.value.is_empty()).then(|| t.value.clone()),
            effect: (!t.effect.is_empty()).then(|| t.effect.clone()),
            ..KubeToleration::default()
        })
        .collect();
    let evict_after = i64::try_from(settings.unreachable_toleration.as_secs()).unwrap_or(30);
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        tolerations.push(KubeToleration {
            key: Some(key.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            toleration_seconds: Some(evict_after),
            ..KubeToleration::default()
        });
    }
    let image = if plan.image.is_empty() {
        settings.default_image.clone()
    } else {
        plan.image.clone()
    };
    let mut middleman_args: Vec<String> = [
        "serve",
        "--listen",
        &format!("0.0.0.0:{MIDDLEMAN_PORT}"),
        "--pod",
        id,
        "--public-key",
        &format!("{POD_INFO}/public.pem"),
        "--runtime-root",
        "/tmp/middleman-runtime",
        "--kernel-agent",
        &format!("{AGENT_DIR}/agent.sock"),
        "--kernel-ipc-dir",
        IPC_DIR,
        // The workspace as mounted in Middleman's container too, for the file API.
        "--workspace",
        KERNEL_HOME,
        "--sandbox-require",
        plan.sandbox.name(),
        "--execution-timeout",
        &format!("{}ms", limits.execution_timeout.as_millis()),
        "--max-output-bytes",
        &limits.max_output_bytes.to_string(),
    ]
    .map(str::to_owned)
    .into();
    middleman_args.extend(plan.kernel_args());
    match &settings.document_store {
        PodDocumentStore::None => middleman_args.extend(["--document-store".into(), "none".into()]),
        PodDocumentStore::Watchman(url) => {
            // The pod's credential reaches its own document through Watchman, nothing else;
            // it is mounted in Middleman's container only.
            annotations.insert(
                keys::POD_CREDENTIAL.to_owned(),
                settings.signing_key.pod_credential(id),
            );
            middleman_args.extend([
                "--document-store".into(),
                format!("watchman+{url}"),
                "--pod-credential-file".into(),
                format!("{POD_INFO}/credential"),
            ]);
            if settings.checkpoints {
                middleman_args.extend(["--checkpoint-store".into(), format!("watchman+{url}")]);
                middleman_args.extend(limits.checkpoint_args());
            }
        }
    }
    let kernel_args: Vec<String> = [
        "kernel-agent",
        "--socket",
        &format!("{AGENT_DIR}/agent.sock"),
        "--allow-uid",
        &MIDDLEMAN_UID.to_string(),
        "--ipc-dir",
        IPC_DIR,
        "--workspace",
        KERNEL_HOME,
        "--container",
        "--max-processes",
        &limits.max_processes.to_string(),
        "--max-open-files",
        &limits.max_open_files.to_string(),
        "--workspace-quota-mib",
        &limits.workspace_mib.to_string(),
    ]
    .map(str::to_owned)
    .into();
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let empty_dir = |name: &str, size: &str| Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(q(size)),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let hardened = |uid: i64| SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    };
    let workspace_size = if limits.workspace_mib > 0 {
        format!("{}Mi", limits.workspace_mib)
    } else {
        ephemeral.clone()
    };
    let pod_info_item = |path: &str, key: &str| DownwardAPIVolumeFile {
        path: path.to_owned(),
        field_ref: Some(ObjectFieldSelector {
            field_path: format!("metadata.annotations['{key}']"),
            ..ObjectFieldSelector::default()
        }),
        ..DownwardAPIVolumeFile::default()
    };
    let mut pod_info = vec![pod_info_item("public.pem", keys::PUBLIC_KEY)];
    if matches!(settings.document_store, PodDocumentStore::Watchman(_)) {
        pod_info.push(pod_info_item("credential", keys::POD_CREDENTIAL));
    }
    KubePod {
        metadata: ObjectMeta {
            name: Some(id.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(settings.service_account.clone()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // Each container keeps its own PID namespace: the kernel cannot see or signal
            // Middleman.
            share_process_namespace: Some(false),
            runtime_class_name: (!plan.runtime_class.is_empty())
                .then(|| plan.runtime_class.clone()),
            node_selector: (!plan.node_selector.is_empty()).then(|| plan.node_selector.clone()),
            tolerations: Some(tolerations),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(
                i64::try_from(settings.delete_grace.as_secs()).unwrap_or(30),
            ),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                // The group both containers share the ipc and agent directories through.
                fs_group: Some(SHARED_GID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![
                Container {
                    name: "middleman".to_owned(),
                    image: Some(image.clone()),
                    command: Some(vec![MIDDLEMAN_BIN.to_owned()]),
                    args: Some(middleman_args),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".to_owned()),
                        container_port: MIDDLEMAN_PORT,
                        protocol: Some("TCP".to_owned()),
                        ..ContainerPort::default()
                    }]),
                    readiness_probe: Some(probe("/readyz", 1, 2)),
                    liveness_probe: Some(probe("/healthz", 10, 3)),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([
                            ("cpu".to_owned(), q("50m")),
                            ("memory".to_owned(), q("64Mi")),
                            ("ephemeral-storage".to_owned(), q("64Mi")),
                        ])),
                        limits: Some(BTreeMap::from([
                            ("memory".to_owned(), q(MIDDLEMAN_MEMORY)),
                            ("ephemeral-storage".to_owned(), q("64Mi")),
                        ])),
                        ..ResourceRequirements::default()
                    }),
                    security_context: Some(hardened(MIDDLEMAN_UID)),
                    volume_mounts: Some(vec![
                        mount("middleman-tmp", "/tmp", false),
                        // The kernel's workspace, read-write, for the file API (uploads land
                        // here as the shared group, mode 0660; the kernel is in that group).
                        mount("work", KERNEL_HOME, false),
                        mount("ipc", IPC_DIR, false),
                        mount("agent", AGENT_DIR, false),
                        mount("pod-info", POD_INFO, true),
                    ]),
                    ..Container::default()
                },
                Container {
                    name: "kernel".to_owned(),
                    image: Some(image),
                    command: Some(vec![MIDDLEMAN_BIN.to_owned()]),
                    args: Some(kernel_args),
                    env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                        name: "HOME".to_owned(),
                        value: Some(KERNEL_HOME.to_owned()),
                        ..k8s_openapi::api::core::v1::EnvVar::default()
                    }]),
                    // The plan's resources are the kernel's.
                    resources: Some(ResourceRequirements {
                        requests: Some(requests),
                        limits: Some(limit),
                        ..ResourceRequirements::default()
                    }),
                    security_context: Some(hardened(KERNEL_UID)),
                    volume_mounts: Some(vec![
                        mount("kernel-tmp", "/tmp", false),
                        mount("work", KERNEL_HOME, false),
                        mount("ipc", IPC_DIR, false),
                        mount("agent", AGENT_DIR, false),
                    ]),
                    ..Container::default()
                },
            ],
            volumes: Some(vec![
                empty_dir("middleman-tmp", "64Mi"),
                empty_dir("kernel-tmp", "256Mi"),
                empty_dir("work", &workspace_size),
                empty_dir("ipc", "16Mi"),
                empty_dir("agent", "1Mi"),
                Volume {
                    name: "pod-info".to_owned(),
                    projected: Some(k8s_openapi::api::core::v1::ProjectedVolumeSource {
                        sources: Some(vec![VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(pod_info),
                            }),
                            ..VolumeProjection::default()
                        }]),
                        ..k8s_openapi::api::core::v1::ProjectedVolumeSource::default()
                    }),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
        status: None,
    }
}
