use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};

use crate::{Claims, Expectations, MAX_TOKEN_LEN, TokenError};

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

const HEADER_JSON: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

/// The private half: mints tokens. Lives in Watchman (or the developer's key file).
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// Parses a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519` writes these).
    pub fn from_pem(pem: &str) -> Result<Self, TokenError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<String, TokenError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map(|s| s.to_string())
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    /// The secret key's bytes (for deriving other keys from it).
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.0.verifying_key())
    }

    /// Signs `claims` into a compact JWT.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let payload = serde_json::to_vec(claims)
            .map_err(|_| TokenError::Malformed("claims do not encode"))?;
        let mut token = B64.encode(HEADER_JSON);
        token.push('.');
        token.push_str(&B64.encode(payload));
        let signature = self.0.sign(token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(signature.to_bytes()));
        Ok(token)
    }

    /// An Ed25519 signature of `message`, base64url without padding (signed receipts).
    pub fn sign_detached(&self, message: &[u8]) -> String {
        B64.encode(self.0.sign(message).to_bytes())
    }
}

/// The public half: verifies tokens. The only key Middleman holds.
#[derive(Clone, Debug)]
pub struct VerifyingKey(ed25519_dalek::VerifyingKey);

impl VerifyingKey {
    /// Parses an SPKI PEM public key (`openssl pkey -pubout` writes these).
    pub fn from_pem(pem: &str) -> Result<Self, TokenError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    /// The key as SPKI PEM.
    pub fn to_pem(&self) -> Result<String, TokenError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| TokenError::Key(e.to_string()))
    }

    /// Checks a signature made by [`SigningKey::sign_detached`] over exactly `message`.
    pub fn verify_detached(&self, message: &[u8], signature: &str) -> Result<(), TokenError> {
        let bytes = B64
            .decode(signature.trim())
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signature =
            Signature::from_slice(&bytes).map_err(|_| TokenError::Malformed("signature length"))?;
        self.0
            .verify_strict(message, &signature)
            .map_err(|_| TokenError::BadSignature)
    }

    /// A short name of the key: the first 16 hex digits of SHA-256 of its 32 bytes.
    pub fn key_id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks the signature, the algorithm, the time window and `expect`, and returns the claims.
    pub fn verify(&self, token: &str, expect: &Expectations<'_>) -> Result<Claims, TokenError> {
        self.verify_at(token, expect, crate::now_secs())
    }

    /// Checks that `token` is genuine and was minted for `pod`, whatever its age: the proof that
    /// `pod` serves the token's document (a pod only ever serves one, so the binding never
    /// expires even when the token does).
    pub fn verify_binding(&self, token: &str, pod: &str) -> Result<Claims, TokenError> {
        self.verify_at(
            token,
            &Expectations {
                document: None,
                pod: Some(pod),
                leeway_secs: u64::MAX,
                audience: None,
            },
            crate::now_secs(),
        )
    }

    /// [`Self::verify`] at a given Unix time (for tests of expiry).
    pub fn verify_at(
        &self,
        token: &str,
        expect: &Expectations<'_>,
        now: u64,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: token.len(),
                limit: MAX_TOKEN_LEN,
            });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "expected three dot-separated segments",
            ));
        };
        let header: Header = decode_json(h, "header")?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let sig_bytes = B64
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signature = Signature::from_slice(&sig_bytes)
            .map_err(|_| TokenError::Malformed("signature length"))?;
        // The signed message is the header and payload exactly as sent.
        let signed_len = h.len() + 1 + p.len();
        self.0
            .verify_strict(&token.as_bytes()[..signed_len], &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = decode_json(p, "payload")?;
        if claims.exp.saturating_add(expect.leeway_secs) <= now {
            return Err(TokenError::Expired {
                ago_secs: now - claims.exp,
            });
        }
        if let Some(nbf) = claims.nbf
            && nbf > now.saturating_add(expect.leeway_secs)
        {
            return Err(TokenError::NotYetValid);
        }
        // The kind first: a token of another kind is not "for another pod", it is not one.
        if claims.aud.as_deref() != expect.audience {
            return Err(TokenError::WrongAudience);
        }
        if expect.document.is_some_and(|d| d != claims.doc) {
            return Err(TokenError::WrongDocument);
        }
        if expect.pod.is_some_and(|p| p != claims.pod) {
            return Err(TokenError::WrongPod);
        }
        Ok(claims)
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(
    segment: &str,
    what: &'static str,
) -> Result<T, TokenError> {
    let bytes = B64.decode(segment).map_err(|_| {
        TokenError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|_| {
        TokenError::Malformed(if what == "header" {
            "header is not the expected JSON"
        } else {
            "payload is not the expected claims"
        })
    })
}
