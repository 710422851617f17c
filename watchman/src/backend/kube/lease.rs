//! The reconciler's `coordination.k8s.io` Lease: one replica at a time holds it.
//!
//! client-go's rule: expiry is judged on this replica's clock from when it last saw the record
//! change, never from the timestamps in it, so clock skew between replicas does not matter.
//! The Lease is touched every third of its duration rather than on every reconcile pass: a
//! leader keeps it through two failed renewals, and a follower looks as often.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

use super::timed_out;

/// One replica's handle on the Lease.
pub struct KubeLease {
    api: Api<Lease>,
    namespace: String,
    name: String,
    /// The record as last observed (holder and renew time), and when it was first seen so.
    observed: Option<(String, Instant)>,
    /// When this replica last read or renewed the Lease, and whether it held it then.
    checked: Option<(Instant, bool)>,
}

impl std::fmt::Debug for KubeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLease")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("checked", &self.checked)
            .finish_non_exhaustive()
    }
}

impl KubeLease {
    /// The Lease `namespace/name` (created on first use).
    pub fn new(client: &Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            observed: None,
            checked: None,
        }
    }

    /// Takes or renews the Lease for `ttl`. `Some(at)` while `holder` holds it, `at` being
    /// when the API server last confirmed it (a cached answer is as old as the check it
    /// repeats).
    pub async fn try_acquire(
        &mut self,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Instant>, kube::Error> {
        if let Some((at, held)) = self.checked
            && at.elapsed() < ttl / 3
        {
            return Ok(held.then_some(at));
        }
        let asked = Instant::now();
        let result = tokio::time::timeout(ttl / 3, self.touch(holder, ttl))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        self.checked = match &result {
            Ok(held) => Some((asked, *held)),
            Err(_) => None,
        };
        result.map(|held| held.then_some(asked))
    }

    async fn touch(&mut self, holder: &str, ttl: Duration) -> Result<bool, kube::Error> {
        let name = &self.name;
        let secs = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current = match self.api.get_opt(name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(holder.to_owned()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(holder);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = {
            let record = format!(
                "{:?}/{:?}",
                spec.holder_identity,
                spec.renew_time.as_ref().map(|t| t.0)
            );
            match self.observed.as_ref() {
                Some((r, at)) if *r == record => {
                    let duration = u64::try_from(spec.lease_duration_seconds.unwrap_or(secs))
                        .unwrap_or(u64::MAX);
                    at.elapsed() > Duration::from_secs(duration)
                }
                _ => {
                    self.observed = Some((record, Instant::now()));
                    false
                }
            }
        };
        if !(ours || free || expired) {
            return Ok(false);
        }
        let mut next = current;
        let spec = next.spec.get_or_insert_with(LeaseSpec::default);
        if !ours {
            spec.holder_identity = Some(holder.to_owned());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(secs);
        spec.renew_time = Some(now);
        next.metadata.resource_version = Some(version);
        match self.api.replace(name, &PostParams::default(), &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (at shutdown), so that another replica takes over at once.
    pub async fn release(&mut self, holder: &str) {
        self.checked = None;
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(holder) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(%error, "could not release the lease");
        } else {
            tracing::info!("released the reconciler lease");
        }
    }
}
