//! Sessions' and contents' records in Watchman's store: small JSON records per kind, in the
//! scope of the caller's token (a user's, or a document's), bounded per scope.

use serde::Serialize;
use serde::de::DeserializeOwned;
use session_token::Claims;

use super::kernels::Scope;
use super::{JupyterApi, JupyterError};
use crate::service::ServiceError;

/// The store's scope key of a token.
fn scope_key(claims: &Claims) -> String {
    match Scope::of(claims) {
        Scope::User(user) => format!("u:{user}"),
        Scope::Document(document) => format!("d:{document}"),
    }
}

impl JupyterApi {
    /// Every readable record of `kind` in the caller's scope.
    pub(super) async fn records<T: DeserializeOwned>(
        &self,
        kind: &str,
        claims: &Claims,
    ) -> Result<Vec<T>, JupyterError> {
        let all = self
            .watchman
            .store()
            .records(kind, &scope_key(claims))
            .await
            .map_err(ServiceError::from)?;
        Ok(all
            .into_iter()
            .filter_map(|(_, json)| serde_json::from_str(&json).ok())
            .collect())
    }

    /// Record `id` of `kind` in the caller's scope.
    pub(super) async fn record<T: DeserializeOwned>(
        &self,
        kind: &str,
        claims: &Claims,
        id: &str,
    ) -> Result<Option<T>, JupyterError> {
        let json = self
            .watchman
            .store()
            .record(kind, &scope_key(claims), id)
            .await
            .map_err(ServiceError::from)?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Keeps `value` as record `id`; refused past `max` records (`what`: their name).
    pub(super) async fn keep_record<T: Serialize>(
        &self,
        kind: &str,
        claims: &Claims,
        id: &str,
        value: &T,
        (max, what): (usize, &str),
    ) -> Result<(), JupyterError> {
        let json = serde_json::to_string(value).unwrap_or_default();
        let kept = self
            .watchman
            .store()
            .put_record(kind, &scope_key(claims), id, &json, max)
            .await
            .map_err(ServiceError::from)?;
        if kept {
            Ok(())
        } else {
            Err(JupyterError::BadRequest(format!(
                "at most {max} {what}; delete some first"
            )))
        }
    }

    /// Forgets record `id`; whether it was there.
    pub(super) async fn forget_record(
        &self,
        kind: &str,
        claims: &Claims,
        id: &str,
    ) -> Result<bool, JupyterError> {
        Ok(self
            .watchman
            .store()
            .delete_record(kind, &scope_key(claims), id)
            .await
            .map_err(ServiceError::from)?)
    }
}
