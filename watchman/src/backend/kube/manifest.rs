//! The pod manifest: one pod per warm kernel, built from its plan, with Middleman and the
//! kernel in one container, hardened as DESIGN.md asks (non-root, read-only root filesystem,
//! every capability dropped, seccomp RuntimeDefault, no service account token, no service
//! links, memory and ephemeral-storage limits, the plan's RuntimeClass, spot placement).

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
use crate::model::PodState;
use crate::plan::Plan;

/// Middleman's port in the pod.
pub const MIDDLEMAN_PORT: i32 = 8888;

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
    let args: Vec<String> = [
        "--listen",
        &format!("0.0.0.0:{MIDDLEMAN_PORT}"),
        "--pod",
        id,
        "--public-key",
        "/etc/middleman/key/public.pem",
        "--kernel",
        &plan.kernel,
        "--document-store",
        &settings.document_store,
        "--document-key-prefix",
        &settings.document_key_prefix,
        "--runtime-root",
        "/tmp/middleman-runtime",
        "--workspace",
        "/home/kernel/work",
        "--execution-timeout",
        &format!("{}ms", limits.execution_timeout.as_millis()),
        "--max-output-bytes",
        &limits.max_output_bytes.to_string(),
        "--kernel-memory-mib",
        &limits.memory_mib.to_string(),
        "--kernel-max-processes",
        &limits.max_processes.to_string(),
        "--kernel-max-open-files",
        &limits.max_open_files.to_string(),
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
                run_as_user: Some(10001),
                run_as_group: Some(10001),
                fs_group: Some(10001),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: "middleman".to_owned(),
                image: Some(image),
                args: Some(args),
                // The root filesystem is read-only: home (IPython's profile, pip --user)
                // and the workspace are on an emptyDir.
                env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                    name: "HOME".to_owned(),
                    value: Some("/home/kernel".to_owned()),
                    ..k8s_openapi::api::core::v1::EnvVar::default()
                }]),
                ports: Some(vec![ContainerPort {
                    name: Some("http".to_owned()),
                    container_port: MIDDLEMAN_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                readiness_probe: Some(probe("/readyz", 1, 2)),
                liveness_probe: Some(probe("/healthz", 10, 3)),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: Some(limit),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".to_owned()]),
                        ..Capabilities::default()
                    }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".to_owned(),
                        ..SeccompProfile::default()
                    }),
                    ..SecurityContext::default()
                }),
                volume_mounts: Some(vec![
                    mount("tmp", "/tmp", false),
                    mount("work", "/home/kernel", false),
                    mount("key", "/etc/middleman/key", true),
                ]),
                ..Container::default()
            }],
            volumes: Some(vec![
                empty_dir("tmp", "256Mi"),
                empty_dir("work", &ephemeral),
                Volume {
                    name: "key".to_owned(),
                    projected: Some(k8s_openapi::api::core::v1::ProjectedVolumeSource {
                        sources: Some(vec![VolumeProjection {
                            downward_api: Some(DownwardAPIProjection {
                                items: Some(vec![DownwardAPIVolumeFile {
                                    path: "public.pem".to_owned(),
                                    field_ref: Some(ObjectFieldSelector {
                                        field_path: format!(
                                            "metadata.annotations['{}']",
                                            keys::PUBLIC_KEY
                                        ),
                                        ..ObjectFieldSelector::default()
                                    }),
                                    ..DownwardAPIVolumeFile::default()
                                }]),
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
