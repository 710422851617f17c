//! Signed receipts: what a finished run ran, what it produced and under which limits, signed
//! with Ed25519 so that anyone with Watchman's public key can check it (`watchman-receipt`).
//!
//! The payload is JSON with its keys sorted and no spaces; `outputs_sha256` is SHA-256 of the
//! outputs array written the same way, by serde_json (`watchman-receipt` recomputes it; Python's
//! `json.dumps(outputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` gives the
//! same bytes except for some floats' exponent forms).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use session_token::{SigningKey, VerifyingKey};

use super::model::{Receipt, Run, RunState, sha256_hex};
use crate::plan::Plan;

/// What a receipt says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptBody {
    pub v: u32,
    pub issuer: String,
    pub run_id: String,
    pub user_id: String,
    pub plan: String,
    pub kernel: String,
    pub state: RunState,
    pub code_sha256: String,
    /// A notebook run on a user's document: the document.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub document: String,
    pub stdin_sha256: String,
    pub outputs_sha256: String,
    pub limits: ReceiptLimits,
    pub pod: String,
    pub attempts: u32,
    pub queued_at_ms: u64,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// The limits the run ran under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptLimits {
    pub timeout_ms: u64,
    pub memory_mib: u64,
    pub max_output_bytes: u64,
    pub cpus: f64,
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("the signature does not verify with this key: {0}")]
    Signature(#[from] session_token::TokenError),
    #[error("the payload is not a receipt: {0}")]
    Payload(String),
    #[error("the run does not match its receipt: {0}")]
    Mismatch(&'static str),
}

/// `value` with every object's keys in sorted order, written without spaces.
pub fn canonical(value: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&m[k])))
                        .collect(),
                )
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// SHA-256 of the outputs as [`canonical`] writes them.
pub fn outputs_sha256(outputs: &[Value]) -> String {
    sha256_hex(canonical(&Value::Array(outputs.to_vec())).as_bytes())
}

/// SHA-256 of what a run produced: its outputs, or a notebook run's executed notebook (both as
/// [`canonical`] writes them).
pub fn produced_sha256(run: &Run) -> String {
    match &run.notebook {
        Some(_) => {
            sha256_hex(canonical(run.result_notebook.as_ref().unwrap_or(&Value::Null)).as_bytes())
        }
        None => outputs_sha256(&run.outputs),
    }
}

/// Signs a finished run's receipt.
pub fn sign(run: &Run, plan: &Plan, key: &SigningKey) -> Receipt {
    let body = ReceiptBody {
        v: 1,
        issuer: "watchman".into(),
        run_id: run.id.clone(),
        user_id: run.user_id.clone(),
        plan: run.plan.clone(),
        kernel: run.kernel.clone(),
        state: run.state,
        code_sha256: run.code_sha256.clone(),
        document: run
            .notebook
            .as_ref()
            .map(|n| n.document.clone())
            .unwrap_or_default(),
        stdin_sha256: sha256_hex(run.stdin.as_bytes()),
        outputs_sha256: produced_sha256(run),
        limits: ReceiptLimits {
            timeout_ms: run.timeout_ms,
            memory_mib: plan.limits.memory_mib,
            max_output_bytes: plan.limits.max_output_bytes,
            cpus: plan.cpus(),
        },
        pod: run.pod.clone(),
        attempts: u32::try_from(run.attempts.len()).unwrap_or(u32::MAX),
        queued_at_ms: run.queued_at_ms,
        started_at_ms: run.started_at_ms.unwrap_or(0),
        finished_at_ms: run.finished_at_ms.unwrap_or(0),
    };
    let payload = canonical(&serde_json::to_value(&body).unwrap_or(Value::Null));
    Receipt {
        signature: key.sign_detached(payload.as_bytes()),
        key_id: key.verifying_key().key_id(),
        payload,
    }
}

/// Checks `receipt`'s signature with `key` and, given the run it came with, that the run's code,
/// stdin and outputs are the ones signed.
pub fn verify(
    receipt: &Receipt,
    key: &VerifyingKey,
    run: Option<&Run>,
) -> Result<ReceiptBody, ReceiptError> {
    key.verify_detached(receipt.payload.as_bytes(), &receipt.signature)?;
    let body: ReceiptBody =
        serde_json::from_str(&receipt.payload).map_err(|e| ReceiptError::Payload(e.to_string()))?;
    if let Some(run) = run {
        if run.id != body.run_id {
            return Err(ReceiptError::Mismatch("run id"));
        }
        let input = super::model::input_text(&run.code, run.notebook.as_ref());
        if sha256_hex(input.as_bytes()) != body.code_sha256 {
            return Err(ReceiptError::Mismatch("code"));
        }
        if sha256_hex(run.stdin.as_bytes()) != body.stdin_sha256 {
            return Err(ReceiptError::Mismatch("stdin"));
        }
        if produced_sha256(run) != body.outputs_sha256 {
            return Err(ReceiptError::Mismatch("outputs"));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": [{"z": 1, "y": "é"}], "c": null});
        assert_eq!(canonical(&v), r#"{"a":[{"y":"é","z":1}],"b":1,"c":null}"#);
    }
}
