use serde::{Deserialize, Serialize};

/// What a connection may do in a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Edits cells, runs code, answers prompts, interrupts.
    Editor,
    /// Sees everything live, changes nothing.
    Viewer,
}

impl Role {
    /// Whether this role may change the document or drive the kernel.
    pub fn can_edit(self) -> bool {
        matches!(self, Role::Editor)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "editor" => Ok(Role::Editor),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?} (expected editor or viewer)"
            )),
        }
    }
}

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, `watchman` for tokens Watchman mints, `middleman-dev` for development tokens.
    pub iss: String,
    /// The user id.
    pub sub: String,
    /// The user's display name, shown to collaborators.
    #[serde(default)]
    pub name: String,
    /// The document id.
    pub doc: String,
    /// The pod (allocation target) the token is good for.
    pub pod: String,
    /// Editor or viewer.
    pub role: Role,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Unique token id, for audit logs.
    pub jti: String,
    /// The token's kind: absent for session tokens, `jupyter` for Jupyter API tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims for `user` in `doc` on `pod`, valid for `ttl_secs` from now.
    pub fn new(
        issuer: &str,
        user: &str,
        name: &str,
        doc: &str,
        pod: &str,
        role: Role,
        ttl_secs: u64,
    ) -> Self {
        let now = crate::now_secs();
        Self {
            iss: issuer.to_owned(),
            sub: user.to_owned(),
            name: name.to_owned(),
            doc: doc.to_owned(),
            pod: pod.to_owned(),
            role,
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            jti: uuid::Uuid::new_v4().to_string(),
            aud: None,
        }
    }

    /// A Jupyter API token for `user`: any kernel of theirs (`doc` empty), or the kernel of
    /// one document they may open with `role`. It names no pod.
    pub fn jupyter(
        issuer: &str,
        user: &str,
        name: &str,
        doc: &str,
        role: Role,
        ttl_secs: u64,
    ) -> Self {
        Self {
            aud: Some(crate::JUPYTER_AUDIENCE.to_owned()),
            ..Self::new(issuer, user, name, doc, "", role, ttl_secs)
        }
    }
}
