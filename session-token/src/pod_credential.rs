//! Pod credentials: what a pod's Middleman presents to Watchman to read and save its own
//! document, and nothing else. A credential names one pod and is an HMAC under a key derived
//! from the signing key, so any Watchman replica can check it without a store, and a pod can
//! neither forge another pod's nor mint tokens with it. Which document a pod may touch is
//! proven separately, by a session token Watchman minted for that pod (see
//! [`crate::VerifyingKey::verify_binding`]): a pod only ever serves one document.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::SigningKey;

/// Longest pod name a credential may carry.
const MAX_POD_LEN: usize = 253;

impl SigningKey {
    fn credential_key(&self) -> ring::hmac::Key {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"nbplat pod credential v1\0");
        ctx.update(&self.secret_bytes());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ctx.finish().as_ref())
    }

    /// The credential of `pod`: `<pod>.<base64url HMAC>`.
    pub fn pod_credential(&self, pod: &str) -> String {
        let tag = ring::hmac::sign(&self.credential_key(), pod.as_bytes());
        format!("{pod}.{}", B64.encode(tag.as_ref()))
    }

    /// The pod a credential names, if it is genuine.
    pub fn check_pod_credential(&self, credential: &str) -> Option<String> {
        let (pod, tag) = credential.trim().rsplit_once('.')?;
        if pod.is_empty() || pod.len() > MAX_POD_LEN {
            return None;
        }
        let tag = B64.decode(tag).ok()?;
        ring::hmac::verify(&self.credential_key(), pod.as_bytes(), &tag).ok()?;
        Some(pod.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_one_pod_and_cannot_be_forged() {
        let key = SigningKey::generate();
        let c = key.pod_credential("pod-1");
        assert_eq!(key.check_pod_credential(&c).as_deref(), Some("pod-1"));
        assert_eq!(
            key.check_pod_credential(&format!("{c}\n")).as_deref(),
            Some("pod-1")
        );
        // Another pod's name with this pod's tag.
        let forged = c.replacen("pod-1", "pod-2", 1);
        assert_eq!(key.check_pod_credential(&forged), None);
        // Another key's credential.
        let other = SigningKey::generate().pod_credential("pod-1");
        assert_eq!(key.check_pod_credential(&other), None);
        for junk in ["", ".", "pod-1", "pod-1.", ".abc", "pod-1.!!!"] {
            assert_eq!(key.check_pod_credential(junk), None, "{junk:?}");
        }
    }
}
