//! Jupyter kernels as allocations. A kernel is a document's pod:
//!
//! - with a user's token (no document in it), each start allocates a fresh document
//!   `jupyter-<kernel id>` (a v4 UUID), owned by the user: the document's allocation is the
//!   kernel, and its record is the allocation's (no table of its own);
//! - with a document's token, the kernel is that document's pod (shared with its web
//!   collaborators): its id is a v5 UUID of the allocation, so a later pod is a new kernel,
//!   which is what "the kernel ended" means to Jupyter.
//!
//! An id that is not a UUID, is not the caller's, or whose pod ended is "not found", never
//! "forbidden": existence does not leak.

use serde_json::{Value, json};
use session_token::{Claims, Role};

use super::JupyterError;
use crate::model::Allocation;
use crate::service::{AllocationRequest, ServiceError, Watchman};

/// The documents of user-scoped kernels.
pub(super) const DOCUMENT_PREFIX: &str = "jupyter-";

/// The v5 namespace of document-scoped kernel ids.
const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6e62_706c_6174_4a75_7079_7465_724b_726e);

/// How long a kernel start waits for a pod (Jupyter's gateway client gives up after 40 s).
pub(super) const START_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whose kernels a token reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every kernel the user started with a user token.
    User(String),
    /// The one document's kernel.
    Document(String),
}

impl Scope {
    pub(super) fn of(claims: &Claims) -> Self {
        if claims.doc.is_empty() {
            Scope::User(claims.sub.clone())
        } else {
            Scope::Document(claims.doc.clone())
        }
    }
}

/// A live kernel the caller may use.
#[derive(Debug, Clone)]
pub(super) struct Kernel {
    pub id: uuid::Uuid,
    pub allocation: Allocation,
}

fn document_kernel_id(allocation: &Allocation) -> uuid::Uuid {
    uuid::Uuid::new_v5(&NAMESPACE, allocation.id.as_bytes())
}

/// The caller's live kernel `id`, or not found.
pub(super) async fn find(
    watchman: &Watchman,
    claims: &Claims,
    id: &str,
) -> Result<Kernel, JupyterError> {
    let not_found = || JupyterError::NoKernel(id.chars().take(64).collect());
    let kernel_id = uuid::Uuid::try_parse(id).map_err(|_| not_found())?;
    match Scope::of(claims) {
        Scope::User(user) => {
            let document = format!("{DOCUMENT_PREFIX}{kernel_id}");
            let allocation = live(watchman, &document).await?.ok_or_else(not_found)?;
            if allocation.user != user {
                return Err(not_found());
            }
            Ok(Kernel {
                id: kernel_id,
                allocation,
            })
        }
        Scope::Document(document) => {
            let allocation = live(watchman, &document).await?.ok_or_else(not_found)?;
            if document_kernel_id(&allocation) != kernel_id {
                return Err(not_found());
            }
            Ok(Kernel {
                id: kernel_id,
                allocation,
            })
        }
    }
}

/// The document's allocation, if it has one.
async fn live(watchman: &Watchman, document: &str) -> Result<Option<Allocation>, JupyterError> {
    match watchman.get(document).await {
        Ok(a) => Ok(Some(a)),
        Err(ServiceError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The caller's live kernels.
pub(super) async fn list(
    watchman: &Watchman,
    claims: &Claims,
) -> Result<Vec<Kernel>, JupyterError> {
    match Scope::of(claims) {
        Scope::Document(document) => Ok(live(watchman, &document)
            .await?
            .map(|allocation| Kernel {
                id: document_kernel_id(&allocation),
                allocation,
            })
            .into_iter()
            .collect()),
        Scope::User(user) => {
            // The pods serving Jupyter documents, then their allocations (whose user is the
            // owner). A scan of the pods: enough for a pool's thousands; an index per user is
            // the next step if pools grow past that.
            let mut kernels = Vec::new();
            for pod in watchman.store().pods().await.map_err(ServiceError::from)? {
                let Some(document) = pod.document.as_deref() else {
                    continue;
                };
                let Some(id) = document
                    .strip_prefix(DOCUMENT_PREFIX)
                    .and_then(|id| uuid::Uuid::try_parse(id).ok())
                else {
                    continue;
                };
                if let Some(allocation) = live(watchman, document).await?
                    && allocation.user == user
                    && pod.allocation.as_deref() == Some(allocation.id.as_str())
                {
                    kernels.push(Kernel { id, allocation });
                }
            }
            kernels.sort_by_key(|k| k.allocation.created_ms);
            Ok(kernels)
        }
    }
}

/// Starts a kernel of `plan` for the caller: a warm pod for a new document, or the document's
/// pod (existing or new) for a document's token.
pub(super) async fn start(
    watchman: &Watchman,
    claims: &Claims,
    plan: &str,
) -> Result<Kernel, JupyterError> {
    if !claims.role.can_edit() {
        return Err(JupyterError::Forbidden("start kernels"));
    }
    let (document, new_id) = match Scope::of(claims) {
        Scope::User(_) => {
            let id = uuid::Uuid::new_v4();
            (format!("{DOCUMENT_PREFIX}{id}"), Some(id))
        }
        Scope::Document(document) => (document, None),
    };
    let granted = watchman
        .allocate(&AllocationRequest {
            document: &document,
            plan,
            kernel: "",
            user: &claims.sub,
            user_name: &claims.name,
            role: claims.role,
            wait: Some(START_WAIT),
        })
        .await?;
    let allocation = granted.allocation;
    let id = new_id.unwrap_or_else(|| document_kernel_id(&allocation));
    Ok(Kernel { id, allocation })
}

/// A session token for the caller on the kernel's pod (for the kernel WebSocket and the pod's
/// kernel actions), and its expiry.
pub(super) async fn session_token(
    watchman: &Watchman,
    claims: &Claims,
    kernel: &Kernel,
    ttl: Option<std::time::Duration>,
) -> Result<(String, u64), JupyterError> {
    let role = if claims.role.can_edit() {
        Role::Editor
    } else {
        Role::Viewer
    };
    let (_, token, expires) = watchman
        .mint_for(
            &kernel.allocation.document,
            &claims.sub,
            &claims.name,
            role,
            ttl,
        )
        .await?;
    Ok((token, expires))
}

/// The Jupyter kernel model: what clients list and poll. `status` is the pod's `/status`
/// (`None`: it did not answer).
pub(super) fn model(kernel: &Kernel, status: Option<&Value>) -> Value {
    let state = status
        .and_then(|s| s.get("kernel_state"))
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let connections = status
        .and_then(|s| s.get("connections"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let last_secs = status
        .and_then(|s| s.get("last_activity"))
        .and_then(Value::as_u64)
        .unwrap_or(kernel.allocation.created_ms / 1000);
    json!({
        "id": kernel.id.to_string(),
        "name": kernel.allocation.plan,
        "last_activity": jupyter_time(last_secs),
        "execution_state": state,
        "connections": connections,
        "nbplat": {
            "document": kernel.allocation.document,
            "plan": kernel.allocation.plan,
            "pod": kernel.allocation.pod,
        },
    })
}

/// A time as Jupyter's clients parse it: RFC 3339 in UTC with six fraction digits and `Z`
/// (jupyter_server's gateway client requires both).
pub(super) fn jupyter_time(unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocation(id: &str, user: &str) -> Allocation {
        Allocation {
            id: id.into(),
            document: "doc".into(),
            plan: "python".into(),
            pod: "pod-1".into(),
            endpoint: "http://127.0.0.1:1".into(),
            user: user.into(),
            created_ms: 1_700_000_000_000,
            expires_ms: 0,
        }
    }

    #[test]
    fn times_have_six_fraction_digits_and_a_z() {
        assert_eq!(jupyter_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(jupyter_time(1_700_000_000), "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn a_document_kernel_is_its_allocation_and_a_new_pod_is_a_new_kernel() {
        let a = allocation("a1", "ada");
        assert_eq!(document_kernel_id(&a), document_kernel_id(&a.clone()));
        assert_ne!(
            document_kernel_id(&a),
            document_kernel_id(&allocation("a2", "ada"))
        );
        assert_eq!(document_kernel_id(&a).get_version_num(), 5);
    }

    #[test]
    fn the_model_has_what_jupyters_clients_parse() {
        let kernel = Kernel {
            id: uuid::Uuid::nil(),
            allocation: allocation("a1", "ada"),
        };
        let m = model(
            &kernel,
            Some(
                &json!({ "kernel_state": "busy", "connections": 2, "last_activity": 1_700_000_000 }),
            ),
        );
        assert_eq!(m["id"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(m["name"], "python");
        assert_eq!(m["execution_state"], "busy");
        assert_eq!(m["connections"], 2);
        assert_eq!(m["last_activity"], "2023-11-14T22:13:20.000000Z");
        let unknown = model(&kernel, None);
        assert_eq!(unknown["execution_state"], "unknown");
        assert_eq!(unknown["last_activity"], "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn scopes_follow_the_token() {
        let user = Claims::jupyter("t", "ada", "Ada", "", Role::Editor, 60);
        assert_eq!(Scope::of(&user), Scope::User("ada".into()));
        let doc = Claims::jupyter("t", "ada", "Ada", "d1", Role::Viewer, 60);
        assert_eq!(Scope::of(&doc), Scope::Document("d1".into()));
    }
}
