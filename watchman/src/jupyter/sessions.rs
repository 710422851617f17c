//! Jupyter sessions (`/jupyter/api/sessions`): a notebook path bound to a kernel, what
//! JupyterLab's and VS Code's session managers create, poll and end. A session is a small
//! record in the store, per token scope; its kernel is a live kernel of the caller
//! (kernels.rs). A session whose kernel ended is dropped when next read.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use session_token::Claims;

use super::kernels::{self, Kernel, Scope};
use super::{JupyterApi, JupyterError};

/// The store's record kind.
const KIND: &str = "jupyter-sessions";
/// Sessions one scope may hold.
const MAX_SESSIONS: usize = 256;

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    path: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    kernel: String,
}

/// What a client asks of a session (POST or PATCH).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Asked {
    path: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    kernel: Option<AskedKernel>,
}

#[derive(Debug, Default, Deserialize)]
struct AskedKernel {
    id: Option<String>,
    name: Option<String>,
}

fn bounded(what: &str, value: &str) -> Result<(), JupyterError> {
    if value.len() > 1024 || value.chars().any(char::is_control) {
        return Err(JupyterError::BadRequest(format!(
            "{what} must be at most 1024 characters, without control characters"
        )));
    }
    Ok(())
}

impl JupyterApi {
    async fn session_model(&self, record: &Record, kernel: &Kernel) -> Value {
        json!({
            "id": record.id,
            "path": record.path,
            "name": record.name,
            "type": record.kind,
            "kernel": self.model(kernel).await,
            "notebook": { "path": record.path, "name": record.name },
        })
    }

    /// A session's record and its live kernel; a session whose kernel ended is forgotten.
    async fn live_session(
        &self,
        claims: &Claims,
        record: Record,
    ) -> Result<Option<(Record, Kernel)>, JupyterError> {
        match kernels::find(&self.watchman, claims, &record.kernel).await {
            Ok(kernel) => Ok(Some((record, kernel))),
            Err(JupyterError::NoKernel(_)) => {
                self.forget_record(KIND, claims, &record.id).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn store_session(&self, claims: &Claims, record: &Record) -> Result<(), JupyterError> {
        self.keep_record(KIND, claims, &record.id, record, (MAX_SESSIONS, "sessions"))
            .await
    }

    /// The kernel a session asks for: one of the caller's by id, or a new one of a spec.
    async fn kernel_for(
        &self,
        claims: &Claims,
        asked: Option<&AskedKernel>,
    ) -> Result<Kernel, JupyterError> {
        if let Some(id) = asked.and_then(|k| k.id.as_deref()) {
            return kernels::find(&self.watchman, claims, id).await;
        }
        let name = asked.and_then(|k| k.name.clone());
        let plan = self.plan_named(name)?;
        kernels::start(&self.watchman, claims, &plan).await
    }

    pub(super) async fn list_sessions(&self, claims: &Claims) -> Result<Value, JupyterError> {
        let mut models = Vec::new();
        for record in self.records::<Record>(KIND, claims).await? {
            if let Some((record, kernel)) = self.live_session(claims, record).await? {
                models.push(self.session_model(&record, &kernel).await);
            }
        }
        Ok(Value::Array(models))
    }

    pub(super) async fn get_session(
        &self,
        claims: &Claims,
        id: &str,
    ) -> Result<Value, JupyterError> {
        let not_found = || JupyterError::NoSession(id.chars().take(64).collect());
        let record: Record = self.record(KIND, claims, id).await?.ok_or_else(not_found)?;
        let (record, kernel) = self
            .live_session(claims, record)
            .await?
            .ok_or_else(not_found)?;
        Ok(self.session_model(&record, &kernel).await)
    }

    /// POST: the path's live session, or a new one on the kernel asked for.
    pub(super) async fn create_session(
        &self,
        claims: &Claims,
        asked: Asked,
    ) -> Result<Value, JupyterError> {
        let path = asked.path.clone().unwrap_or_default();
        bounded("path", &path)?;
        if !path.is_empty() {
            for record in self.records::<Record>(KIND, claims).await? {
                if record.path == path
                    && let Some((record, kernel)) = self.live_session(claims, record).await?
                {
                    return Ok(self.session_model(&record, &kernel).await);
                }
            }
        }
        let kernel = self.kernel_for(claims, asked.kernel.as_ref()).await?;
        let record = Record {
            id: uuid::Uuid::new_v4().to_string(),
            name: asked.name.unwrap_or_default(),
            kind: asked.kind.unwrap_or_else(|| "notebook".to_owned()),
            path,
            kernel: kernel.id.to_string(),
        };
        bounded("name", &record.name)?;
        bounded("type", &record.kind)?;
        self.store_session(claims, &record).await?;
        Ok(self.session_model(&record, &kernel).await)
    }

    /// PATCH: a new path, name or type; `kernel.id` moves the session to another of the
    /// caller's kernels, `kernel.name` to a new kernel (the old one ends, as in Jupyter Server).
    pub(super) async fn update_session(
        &self,
        claims: &Claims,
        id: &str,
        asked: Asked,
    ) -> Result<Value, JupyterError> {
        let not_found = || JupyterError::NoSession(id.chars().take(64).collect());
        let mut record: Record = self.record(KIND, claims, id).await?.ok_or_else(not_found)?;
        for (field, value) in [
            ("path", &asked.path),
            ("name", &asked.name),
            ("type", &asked.kind),
        ] {
            if let Some(v) = value {
                bounded(field, v)?;
            }
        }
        if let Some(path) = asked.path {
            record.path = path;
        }
        if let Some(name) = asked.name {
            record.name = name;
        }
        if let Some(kind) = asked.kind {
            record.kind = kind;
        }
        let kernel = match &asked.kernel {
            Some(k)
                if k.id.as_deref().is_some_and(|new| new != record.kernel)
                    || k.id.is_none() && k.name.is_some() =>
            {
                let new = self.kernel_for(claims, Some(k)).await?;
                if k.id.is_none()
                    && let Ok(old) = kernels::find(&self.watchman, claims, &record.kernel).await
                {
                    self.end_kernel(claims, &old).await?;
                }
                new
            }
            _ => kernels::find(&self.watchman, claims, &record.kernel)
                .await
                .map_err(|_| not_found())?,
        };
        record.kernel = kernel.id.to_string();
        self.store_session(claims, &record).await?;
        Ok(self.session_model(&record, &kernel).await)
    }

    /// DELETE: the session ends, and with it its kernel when that is the user's own (a
    /// document's pod is the document's collaborators' too, and stays).
    pub(super) async fn delete_session(
        &self,
        claims: &Claims,
        id: &str,
    ) -> Result<(), JupyterError> {
        let record: Record = self
            .record(KIND, claims, id)
            .await?
            .ok_or_else(|| JupyterError::NoSession(id.chars().take(64).collect()))?;
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("end sessions"));
        }
        if let Ok(kernel) = kernels::find(&self.watchman, claims, &record.kernel).await
            && matches!(Scope::of(claims), Scope::User(_))
        {
            self.end_kernel(claims, &kernel).await?;
        }
        self.forget_record(KIND, claims, id).await?;
        Ok(())
    }
}
