//! The same behaviour from both stores: memory, and a real Redis (this is why it is an
//! integration test, not part of the unit tier).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::RedisServer;
use watchman::model::{Allocation, EndReason, Pod, PodState, now_ms};
use watchman::store::{Claim, MemoryStore, RedisStore, Store};

fn pod(id: &str, plan: &str) -> Pod {
    Pod {
        id: id.into(),
        plan: plan.into(),
        state: PodState::Starting,
        endpoint: format!("http://127.0.0.1:1/{id}"),
        handle: "0".into(),
        created_ms: now_ms(),
        ready_ms: None,
        document: None,
        allocation: None,
    }
}

fn template(doc: &str, plan: &str) -> Allocation {
    Allocation {
        id: uuid::Uuid::new_v4().to_string(),
        document: doc.into(),
        plan: plan.into(),
        pod: String::new(),
        endpoint: String::new(),
        user: "u".into(),
        created_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
    }
}

async fn conformance(store: Store) {
    store.add_pod(&pod("a", "free")).await.unwrap();
    store.add_pod(&pod("b", "free")).await.unwrap();
    store.add_pod(&pod("c", "pro")).await.unwrap();
    // Not warm yet: nothing to claim.
    assert_eq!(
        store.claim(&template("d1", "free")).await.unwrap(),
        Claim::Empty
    );
    assert!(store.pod_ready("a", now_ms(), "").await.unwrap());
    assert!(
        !store
            .pod_ready("a", now_ms(), "http://10.0.0.9:8888")
            .await
            .unwrap(),
        "only once"
    );
    // A pod whose address is only known once it runs (Kubernetes) gets it when ready.
    assert!(
        store
            .pod_ready("c", now_ms(), "http://10.0.0.7:8888")
            .await
            .unwrap()
    );
    let c = store.pods().await.unwrap();
    let c = c.iter().find(|p| p.id == "c").unwrap();
    assert_eq!(c.endpoint, "http://10.0.0.7:8888");

    let Claim::Claimed(first) = store.claim(&template("d1", "free")).await.unwrap() else {
        panic!("claim")
    };
    assert_eq!(first.pod, "a");
    assert_eq!(first.endpoint, "http://127.0.0.1:1/a");
    // Same document: the same allocation, whatever the template says.
    assert_eq!(
        store.claim(&template("d1", "free")).await.unwrap(),
        Claim::Existing(first.clone())
    );
    // Another document: pod b is not warm, pro's pod is another plan.
    assert_eq!(
        store.claim(&template("d2", "free")).await.unwrap(),
        Claim::Empty
    );
    assert_eq!(store.allocation("d1").await.unwrap(), Some(first.clone()));

    let ended = store
        .end_pod("a", EndReason::Released, "bye")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.allocation, first.id);
    assert_eq!(ended.reason, EndReason::Released);
    assert_eq!(store.allocation("d1").await.unwrap(), None);
    assert_eq!(store.ended(&first.id).await.unwrap(), Some(ended.clone()));
    // The gateway asks by pod: the record, then how it ended (kept after the pod is gone).
    assert_eq!(
        store.pod("a").await.unwrap().map(|p| p.state),
        Some(PodState::Ending)
    );
    assert_eq!(store.ended_pod("a").await.unwrap(), Some(ended.clone()));
    assert_eq!(store.ended_pod("b").await.unwrap(), None);
    // An ended pod is never claimed again.
    let pods = store.pods().await.unwrap();
    assert_eq!(
        pods.iter().find(|p| p.id == "a").unwrap().state,
        PodState::Ending
    );
    assert!(
        store
            .end_pod("a", EndReason::Idle, "again")
            .await
            .unwrap()
            .is_none()
    );
    store.remove_pod("a").await.unwrap();
    assert_eq!(store.pods().await.unwrap().len(), 2);
    assert_eq!(store.pod("a").await.unwrap(), None);
    assert_eq!(store.ended_pod("a").await.unwrap(), Some(ended));

    // Leases.
    assert!(store.try_lease("r1", 10_000).await.unwrap());
    assert!(!store.try_lease("r2", 10_000).await.unwrap());
    assert!(store.try_lease("r1", 10_000).await.unwrap(), "renewal");

    // Demand expires.
    store
        .note_demand("free", "w1", now_ms() + 60_000)
        .await
        .unwrap();
    store
        .note_demand("free", "w2", now_ms().saturating_sub(1))
        .await
        .unwrap();
    assert_eq!(store.demand("free").await.unwrap(), 1);
}

#[tokio::test]
async fn memory_store() {
    conformance(Store::Memory(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_store() {
    let redis = RedisServer::start();
    conformance(Store::Redis(
        RedisStore::connect(&redis.url(), "t1:").await.unwrap(),
    ))
    .await;
}

/// Many concurrent claims for a few documents against a small pool: no pod is bound twice and
/// every document gets exactly one pod.
async fn race(store: Store) {
    for i in 0..10 {
        let id = format!("p{i}");
        store.add_pod(&pod(&id, "free")).await.unwrap();
        store.pod_ready(&id, now_ms(), "").await.unwrap();
    }
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim(&template(&format!("doc{}", i % 8), "free"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut by_doc = std::collections::HashMap::new();
    for t in tasks {
        match t.await.unwrap() {
            Claim::Claimed(a) | Claim::Existing(a) => {
                let prev = by_doc.insert(a.document.clone(), a.pod.clone());
                assert!(
                    prev.is_none_or(|p| p == a.pod),
                    "document {} got two pods",
                    a.document
                );
            }
            Claim::Empty => panic!("pool of 10 cannot run out for 8 documents"),
        }
    }
    assert_eq!(by_doc.len(), 8);
    let pods: std::collections::HashSet<_> = by_doc.values().collect();
    assert_eq!(pods.len(), 8, "no pod bound twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_race_safely_in_memory() {
    race(Store::Memory(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_race_safely_in_redis() {
    let redis = RedisServer::start();
    race(Store::Redis(
        RedisStore::connect(&redis.url(), "t2:").await.unwrap(),
    ))
    .await;
}
