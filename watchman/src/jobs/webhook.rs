//! Webhooks: when a run ends (succeeded, or failed in any way), a POST of its summary to the
//! URL its submitter or schedule gave, signed with HMAC-SHA256 so the receiver knows it came
//! from Watchman, and retried with backoff on a connection error, a timeout, 429 or 5xx.
//!
//! Headers: `Webhook-Id` (the run id: the same on every retry, for the receiver to drop
//! duplicates), `Webhook-Timestamp` (Unix seconds) and `Webhook-Signature: v1=<hex>`, the
//! HMAC-SHA256 with the webhook's secret of `<timestamp>.<body>`.

use std::time::Duration;

use rand::Rng as _;
use serde_json::json;

use super::Jobs;
use super::model::{Run, RunState, Webhook};

/// Deliveries tried at most, the first included.
pub const ATTEMPTS: u32 = 6;
/// The first retry's wait; it doubles each time (with jitter), up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest secret taken.
pub const MIN_SECRET: usize = 16;

/// Checks a webhook as given.
pub fn check(w: &Webhook) -> Result<(), String> {
    if w.url.len() > 2048 {
        return Err("webhook.url is longer than 2048 bytes".into());
    }
    let url = reqwest::Url::parse(&w.url).map_err(|e| format!("webhook.url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("webhook.url must be an http or https URL with a host".into());
    }
    if w.secret.len() < MIN_SECRET || w.secret.len() > 512 {
        return Err(format!(
            "webhook.secret must be {MIN_SECRET}-512 bytes (the receiver checks the signature with it)"
        ));
    }
    if !w.on_success && !w.on_failure {
        return Err("webhook: set on_success, on_failure or both".into());
    }
    Ok(())
}

/// `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{timestamp}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// Whether a response asks for the delivery to be tried again.
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// What the receiver gets: the run's summary (its outputs are fetched with `GetRun`).
pub fn body(run: &Run) -> String {
    json!({
        "type": "run.finished",
        "run": {
            "id": run.id,
            "user_id": run.user_id,
            "plan": run.plan,
            "state": run.state.label(),
            "exit_reason": run.exit_reason,
            "attempts": run.attempts.len(),
            "queued_at_ms": run.queued_at_ms,
            "started_at_ms": run.started_at_ms,
            "finished_at_ms": run.finished_at_ms,
            "document": run.notebook.as_ref().map(|n| n.document.clone()).filter(|d| !d.is_empty()),
            "schedule_id": run.fired_by.as_ref().map(|f| f.schedule_id.clone()),
            "due_at_ms": run.fired_by.as_ref().map(|f| f.due_at_ms),
            "receipt": run.receipt,
        }
    })
    .to_string()
}

impl Jobs {
    /// Delivers the end of `run` to `hook` in the background, if the hook wants this end.
    pub(super) fn notify(&self, hook: &Webhook, run: &Run) {
        let wanted = if run.state == RunState::Succeeded {
            hook.on_success
        } else {
            hook.on_failure
        };
        if !wanted {
            return;
        }
        let (jobs, hook, body, id) = (self.clone(), hook.clone(), body(run), run.id.clone());
        self.inner.tracker.spawn(async move {
            let outcome = tokio::select! {
                o = jobs.deliver(&hook, &id, &body) => o,
                () = jobs.inner.shutdown.cancelled() => Err("Watchman stopped".into()),
            };
            let label = match &outcome {
                Ok(tries) => {
                    tracing::info!(run = %id, tries, "webhook delivered");
                    "delivered"
                }
                Err(why) => {
                    tracing::warn!(run = %id, %why, "webhook not delivered");
                    "failed"
                }
            };
            metrics::counter!("watchman_webhooks_total", "outcome" => label).increment(1);
        });
    }

    /// Posts `body` until the receiver takes it; returns the number of tries.
    async fn deliver(&self, hook: &Webhook, id: &str, body: &str) -> Result<u32, String> {
        let mut wait = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let timestamp = crate::model::now_ms() / 1000;
            let sent = self
                .inner
                .http
                .post(&hook.url)
                .timeout(TIMEOUT)
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signature(&hook.secret, timestamp, body),
                )
                .body(body.to_owned())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(attempt),
                Ok(r) if !retryable(r.status()) => {
                    return Err(format!("the receiver refused it: {}", r.status()));
                }
                Ok(r) => last = format!("the receiver answered {}", r.status()),
                // Without the URL: receivers' URLs often hold a secret of their own.
                Err(e) => last = e.without_url().to_string(),
            }
            if attempt < ATTEMPTS {
                metrics::counter!("watchman_webhooks_total", "outcome" => "retried").increment(1);
                let jitter = rand::thread_rng().gen_range(0.0..0.5);
                tokio::time::sleep(wait.mul_f64(1.0 + jitter)).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
        Err(format!("{ATTEMPTS} tries; the last: {last}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_and_body() {
        // RFC 4231-style check against an independent computation (Python's hmac module):
        // hmac.new(b"0123456789abcdef", b"1700000000.{}", "sha256").hexdigest()
        assert_eq!(
            signature("0123456789abcdef", 1_700_000_000, "{}"),
            "v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    #[test]
    fn webhooks_are_checked() {
        let ok = Webhook {
            url: "https://example.com/hook".into(),
            secret: "s".repeat(MIN_SECRET),
            on_success: false,
            on_failure: true,
        };
        assert!(check(&ok).is_ok());
        for (bad, says) in [
            (
                Webhook {
                    url: "ftp://x/y".into(),
                    ..ok.clone()
                },
                "http or https",
            ),
            (
                Webhook {
                    secret: "short".into(),
                    ..ok.clone()
                },
                "secret",
            ),
            (
                Webhook {
                    on_failure: false,
                    ..ok.clone()
                },
                "on_success",
            ),
        ] {
            assert!(check(&bad).unwrap_err().contains(says), "{bad:?}");
        }
        assert!(!retryable(reqwest::StatusCode::BAD_REQUEST));
        assert!(retryable(reqwest::StatusCode::BAD_GATEWAY));
    }
}
