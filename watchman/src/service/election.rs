//! Which replica reconciles: one election type over the two authorities that can say so, the
//! store's lease (memory or Redis) or, with the Kubernetes backend, a `coordination.k8s.io`
//! Lease (what operators and `kubectl` see).
//!
//! Holding the lease is not enough to act: a leader that stalled (paused, starved, cut off)
//! may wake after another replica took over. So the election remembers when the authority last
//! confirmed this replica, and the reconciler acts only while that is younger than two thirds
//! of the lease time ([`Election::fresh`]).

use std::time::{Duration, Instant};

use crate::backend::KubeLease;
use crate::store::{Store, StoreError};

/// A failed lease check (the replica then acts as a follower).
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The store could not be reached.
    #[error("store lease: {0}")]
    Store(#[from] StoreError),
    /// The API server refused or did not answer.
    #[error("kubernetes lease: {0}")]
    Kube(#[from] kube::Error),
}

#[derive(Debug)]
enum Authority {
    Store(Store),
    Kube(Box<KubeLease>),
}

/// This replica's candidacy for the reconciler lease.
#[derive(Debug)]
pub struct Election {
    authority: Authority,
    /// This replica's name in the lease.
    holder: String,
    ttl: Duration,
    /// When the authority last confirmed that this replica holds the lease.
    confirmed: Option<Instant>,
}

impl Election {
    /// An election by the store's lease.
    pub fn store(store: Store, holder: String, ttl: Duration) -> Self {
        Self::new(Authority::Store(store), holder, ttl)
    }

    /// An election by a Kubernetes Lease.
    pub fn kube(lease: KubeLease, holder: String, ttl: Duration) -> Self {
        Self::new(Authority::Kube(Box::new(lease)), holder, ttl)
    }

    fn new(authority: Authority, holder: String, ttl: Duration) -> Self {
        Self {
            authority,
            holder,
            ttl,
            confirmed: None,
        }
    }

    /// This replica's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the lease; true while this replica holds it.
    pub async fn campaign(&mut self) -> Result<bool, ElectionError> {
        let asked = Instant::now();
        let confirmed = match &mut self.authority {
            Authority::Store(store) => {
                let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
                store
                    .try_lease(&self.holder, ttl)
                    .await
                    .map(|held| held.then_some(asked))
                    .map_err(ElectionError::from)
            }
            Authority::Kube(lease) => lease
                .try_acquire(&self.holder, self.ttl)
                .await
                .map_err(ElectionError::from),
        };
        self.confirmed = confirmed.as_ref().ok().copied().flatten();
        confirmed.map(|at| at.is_some())
    }

    /// Whether this replica may still act on the lease it holds: the authority confirmed it
    /// within two thirds of the lease time.
    pub fn fresh(&self) -> bool {
        let limit = self.ttl * 2 / 3;
        self.confirmed.is_some_and(|at| at.elapsed() < limit)
    }

    /// Gives the lease up at shutdown, so that another replica takes over at once. The store's
    /// lease is left to expire.
    pub async fn resign(&mut self) {
        self.confirmed = None;
        if let Authority::Kube(lease) = &mut self.authority {
            lease.release(&self.holder).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn one_holder_at_a_time_and_only_a_fresh_one_acts() {
        let store = Store::Memory(MemoryStore::default());
        let ttl = Duration::from_secs(60);
        let mut a = Election::store(store.clone(), "a".into(), ttl);
        let mut b = Election::store(store.clone(), "b".into(), ttl);
        assert!(!a.fresh(), "nothing confirmed yet");
        assert!(a.campaign().await.unwrap());
        assert!(!b.campaign().await.unwrap());
        assert!(a.fresh());
        assert!(!b.fresh());
        // Renewal keeps it.
        assert!(a.campaign().await.unwrap());
        assert!(!b.campaign().await.unwrap());
        a.resign().await;
        assert!(!a.fresh(), "a resigned replica does not act");
        // A lease of no time is never fresh: acting needs confirmation within 2/3 of it.
        let mut c = Election::store(
            Store::Memory(MemoryStore::default()),
            "c".into(),
            Duration::ZERO,
        );
        assert!(c.campaign().await.unwrap());
        assert!(!c.fresh());
    }
}
