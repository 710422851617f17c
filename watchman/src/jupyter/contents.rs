//! A small Jupyter contents service (`/jupyter/api/contents`): one flat directory of files per
//! token scope, kept in the store, enough for what clients of a kernel server need: VS Code's
//! backing file (created, renamed, deleted around a session), and JupyterLab's notebooks
//! (created, saved, opened, renamed, deleted). Notebooks and text are kept whole, up to
//! [`MAX_FILE_BYTES`] each and [`MAX_FILES`] files. The shared documents themselves are the
//! pods' (their `/api/notebook`); these files are the client's own.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use session_token::Claims;

use super::kernels::jupyter_time;
use super::{JupyterApi, JupyterError};

const KIND: &str = "jupyter-contents";
/// Files one scope may hold.
const MAX_FILES: usize = 64;
/// Largest file kept, as its JSON record (so a scope holds at most 128 MiB).
pub(super) const MAX_FILE_BYTES: usize = 2 << 20;

/// A file as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct File {
    path: String,
    /// `notebook` or `file`.
    #[serde(rename = "type")]
    kind: String,
    /// `json` (a notebook), `text` or `base64`.
    format: String,
    content: Value,
    created: u64,
    modified: u64,
}

impl File {
    fn model(&self, with_content: bool) -> Value {
        let mimetype = match self.kind.as_str() {
            "notebook" => Value::Null,
            _ if self.format == "base64" => json!("application/octet-stream"),
            _ => json!("text/plain"),
        };
        json!({
            "name": self.path,
            "path": self.path,
            "type": self.kind,
            "format": if with_content { json!(self.format) } else { Value::Null },
            "content": if with_content { self.content.clone() } else { Value::Null },
            "mimetype": mimetype,
            "created": jupyter_time(self.created),
            "last_modified": jupyter_time(self.modified),
            "writable": true,
            "size": null,
            "hash": null,
            "hash_algorithm": null,
        })
    }
}

/// A save or a creation, as a client sends it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Upload {
    #[serde(rename = "type")]
    kind: Option<String>,
    format: Option<String>,
    content: Option<Value>,
    ext: Option<String>,
    /// A rename's new path.
    path: Option<String>,
}

/// A file name in the flat directory: no separators, no control characters, not `.`/`..`.
fn valid_name(path: &str) -> Result<String, JupyterError> {
    let name = path.trim_matches('/');
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if ok {
        Ok(name.to_owned())
    } else {
        Err(JupyterError::BadRequest(format!(
            "{:?} is not a file name here (one flat directory: no '/', at most 255 bytes)",
            path.chars().take(80).collect::<String>()
        )))
    }
}

fn empty_notebook() -> Value {
    json!({ "cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5 })
}

impl JupyterApi {
    async fn files(&self, claims: &Claims) -> Result<Vec<File>, JupyterError> {
        self.records(KIND, claims).await
    }

    async fn file(&self, claims: &Claims, name: &str) -> Result<Option<File>, JupyterError> {
        self.record(KIND, claims, name).await
    }

    async fn keep(&self, claims: &Claims, file: &File) -> Result<(), JupyterError> {
        let size = serde_json::to_vec(file).map_or(usize::MAX, |v| v.len());
        if size > MAX_FILE_BYTES {
            return Err(JupyterError::BadRequest(format!(
                "files here are at most {} MiB",
                MAX_FILE_BYTES >> 20
            )));
        }
        self.keep_record(KIND, claims, &file.path, file, (MAX_FILES, "files"))
            .await
    }

    /// GET: the directory (the root) or one file.
    pub(super) async fn get_contents(
        &self,
        claims: &Claims,
        path: &str,
        with_content: bool,
    ) -> Result<Value, JupyterError> {
        if path.trim_matches('/').is_empty() {
            let files = self.files(claims).await?;
            let newest = files.iter().map(|f| f.modified).max().unwrap_or(0);
            let content: Vec<Value> = files.iter().map(|f| f.model(false)).collect();
            return Ok(json!({
                "name": "", "path": "", "type": "directory", "format": if with_content { json!("json") } else { Value::Null },
                "content": if with_content { json!(content) } else { Value::Null },
                "mimetype": null, "created": jupyter_time(newest), "last_modified": jupyter_time(newest),
                "writable": true, "size": null, "hash": null, "hash_algorithm": null,
            }));
        }
        let name = valid_name(path)?;
        let file = self
            .file(claims, &name)
            .await?
            .ok_or_else(|| JupyterError::NoFile(name.clone()))?;
        Ok(file.model(with_content))
    }

    /// POST in the root: a new untitled notebook (or file), named as Jupyter Server names them.
    pub(super) async fn create_untitled(
        &self,
        claims: &Claims,
        asked: Upload,
    ) -> Result<Value, JupyterError> {
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("create files"));
        }
        let notebook = asked.kind.as_deref().unwrap_or("file") == "notebook";
        let ext = if notebook {
            ".ipynb".to_owned()
        } else {
            asked.ext.unwrap_or_default()
        };
        let taken: std::collections::HashSet<String> = self
            .files(claims)
            .await?
            .into_iter()
            .map(|f| f.path)
            .collect();
        let stem = if notebook { "Untitled" } else { "untitled" };
        let name = std::iter::once(format!("{stem}{ext}"))
            .chain((1..=MAX_FILES).map(|n| format!("{stem}{n}{ext}")))
            .find(|n| !taken.contains(n))
            .ok_or_else(|| JupyterError::BadRequest("no free name".into()))?;
        let name = valid_name(&name)?;
        let now = session_token::now_secs();
        let file = File {
            path: name,
            kind: if notebook { "notebook" } else { "file" }.to_owned(),
            format: if notebook { "json" } else { "text" }.to_owned(),
            content: if notebook {
                empty_notebook()
            } else {
                json!("")
            },
            created: now,
            modified: now,
        };
        self.keep(claims, &file).await?;
        Ok(file.model(false))
    }

    /// PUT: saves a file whole (created if new). Returns the model and whether it was new.
    pub(super) async fn save(
        &self,
        claims: &Claims,
        path: &str,
        upload: Upload,
    ) -> Result<(Value, bool), JupyterError> {
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("save files"));
        }
        let name = valid_name(path)?;
        let existing = self.file(claims, &name).await?;
        let kind = upload.kind.unwrap_or_else(|| "file".to_owned());
        if kind == "directory" {
            return Err(JupyterError::BadRequest(
                "directories are not kept here".into(),
            ));
        }
        let notebook = kind == "notebook";
        let format = if notebook {
            "json".to_owned()
        } else {
            upload.format.unwrap_or_else(|| "text".to_owned())
        };
        let content = match upload.content {
            Some(c) => c,
            None if notebook => empty_notebook(),
            None => json!(""),
        };
        let valid = match (notebook, format.as_str()) {
            (true, _) => content.get("cells").is_some_and(Value::is_array),
            (false, "text" | "base64") => content.is_string(),
            _ => false,
        };
        if !valid {
            return Err(JupyterError::BadRequest(
                "a notebook's content is its nbformat JSON; a file's is a string in text or base64"
                    .into(),
            ));
        }
        let now = session_token::now_secs();
        let file = File {
            path: name,
            kind,
            format,
            content,
            created: existing.as_ref().map_or(now, |f| f.created),
            modified: now,
        };
        self.keep(claims, &file).await?;
        Ok((file.model(false), existing.is_none()))
    }

    /// PATCH: a rename.
    pub(super) async fn rename(
        &self,
        claims: &Claims,
        path: &str,
        to: Upload,
    ) -> Result<Value, JupyterError> {
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("rename files"));
        }
        let name = valid_name(path)?;
        let new = valid_name(to.path.as_deref().unwrap_or(""))?;
        let mut file = self
            .file(claims, &name)
            .await?
            .ok_or_else(|| JupyterError::NoFile(name.clone()))?;
        if new != name && self.file(claims, &new).await?.is_some() {
            return Err(JupyterError::Conflict(format!("{new} exists")));
        }
        file.path = new;
        file.modified = session_token::now_secs();
        self.keep(claims, &file).await?;
        if file.path != name {
            self.forget_record(KIND, claims, &name).await?;
        }
        Ok(file.model(false))
    }

    /// DELETE a file.
    pub(super) async fn delete_file(
        &self,
        claims: &Claims,
        path: &str,
    ) -> Result<(), JupyterError> {
        if !claims.role.can_edit() {
            return Err(JupyterError::Forbidden("delete files"));
        }
        let name = valid_name(path)?;
        let removed = self.forget_record(KIND, claims, &name).await?;
        if removed {
            Ok(())
        } else {
            Err(JupyterError::NoFile(name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_in_the_flat_directory() {
        assert_eq!(valid_name("/a.ipynb").unwrap(), "a.ipynb");
        for bad in ["", "/", "..", "a/b.ipynb", "x\u{0}y"] {
            assert!(valid_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn models_have_jupyters_fields() {
        let f = File {
            path: "a.ipynb".into(),
            kind: "notebook".into(),
            format: "json".into(),
            content: empty_notebook(),
            created: 0,
            modified: 1_700_000_000,
        };
        let m = f.model(true);
        assert_eq!(m["type"], "notebook");
        assert_eq!(m["content"]["nbformat"], 4);
        assert_eq!(m["last_modified"], "2023-11-14T22:13:20.000000Z");
        assert!(f.model(false)["content"].is_null());
    }
}
