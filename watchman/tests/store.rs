//! The same behaviour from both stores: memory, and a real Redis (this is why it is an
//! integration test, not part of the unit tier).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use testkit::RedisServer;
use watchman::model::{Allocation, EndReason, Pod, PodState, now_ms};

use watchman::store::{Claim, MemoryStore, RedisOptions, RedisStore, StateCounts, Store};

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

/// The store's counts agree with the pods it holds (what ListPools answers from).
async fn assert_counts(store: &Store) {
    let mut expected = std::collections::BTreeMap::new();
    for plan in ["free", "pro"] {
        expected.insert(plan.to_owned(), StateCounts::default());
    }
    for p in store.pods().await.unwrap() {
        let c = expected.get_mut(&p.plan).unwrap();
        match p.state {
            PodState::Warm => c.warm += 1,
            PodState::Starting => c.starting += 1,
            PodState::Allocated => c.allocated += 1,
            PodState::Ending => c.ending += 1,
        }
    }
    assert_eq!(store.counts(&["free", "pro"]).await.unwrap(), expected);
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
    assert_counts(&store).await;
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
    assert_counts(&store).await;
    assert_eq!(
        store.counts(&["free"]).await.unwrap()["free"],
        StateCounts {
            warm: 0,
            starting: 1,
            allocated: 1,
            ending: 0
        }
    );

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
    assert_counts(&store).await;
    // Surplus: a starting pod retires once; adding a pod again replaces it in the counts.
    assert!(store.retire("b").await.unwrap());
    assert!(!store.retire("b").await.unwrap());
    store.add_pod(&pod("b", "free")).await.unwrap();
    assert_counts(&store).await;
    assert!(store.retire("b").await.unwrap());
    store.remove_pod("a").await.unwrap();
    store.remove_pod("a").await.unwrap();
    assert_counts(&store).await;
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

    // The checkpoint index: by plan, by when saved; a document moving to another plan is
    // found under that plan only.
    assert!(!store.has_checkpoint("d1").await.unwrap());
    store.note_checkpoint("d1", "free", 1_000).await.unwrap();
    store.note_checkpoint("d2", "free", 5_000).await.unwrap();
    store.note_checkpoint("d3", "pro", 1_000).await.unwrap();
    assert!(store.has_checkpoint("d1").await.unwrap());
    assert_eq!(
        store.checkpoints_before("free", 5_000, 10).await.unwrap(),
        vec!["d1".to_owned()]
    );
    assert_eq!(
        store.checkpoints_before("free", 6_000, 1).await.unwrap(),
        vec!["d1".to_owned()],
        "oldest first, at most the limit"
    );
    store.note_checkpoint("d1", "pro", 2_000).await.unwrap();
    assert_eq!(
        store.checkpoints_before("free", 6_000, 10).await.unwrap(),
        vec!["d2".to_owned()]
    );
    assert_eq!(
        store.checkpoints_before("pro", 6_000, 10).await.unwrap(),
        vec!["d3".to_owned(), "d1".to_owned()]
    );
    store.forget_checkpoint("d1").await.unwrap();
    assert!(!store.has_checkpoint("d1").await.unwrap());
    assert_eq!(
        store.checkpoints_before("pro", 6_000, 10).await.unwrap(),
        vec!["d3".to_owned()]
    );

    // Deletions are remembered.
    assert_eq!(store.deleted_at("d2").await.unwrap(), None);
    store.note_deleted("d2", 1_700_000_000).await.unwrap();
    assert_eq!(store.deleted_at("d2").await.unwrap(), Some(1_700_000_000));

    // Records (Jupyter sessions and contents): per kind and scope, bounded, replaced in place.
    let k = "jupyter-sessions";
    assert!(
        store
            .put_record(k, "u:ada", "s1", "{\"a\":1}", 2)
            .await
            .unwrap()
    );
    assert!(store.put_record(k, "u:ada", "s2", "{}", 2).await.unwrap());
    assert!(
        !store.put_record(k, "u:ada", "s3", "{}", 2).await.unwrap(),
        "over the bound"
    );
    assert!(
        store
            .put_record(k, "u:ada", "s1", "{\"a\":2}", 2)
            .await
            .unwrap(),
        "a replacement"
    );
    assert!(
        store.put_record(k, "u:eve", "s1", "{}", 2).await.unwrap(),
        "another scope"
    );
    assert!(
        store
            .put_record("jupyter-contents", "u:ada", "s1", "{}", 2)
            .await
            .unwrap()
    );
    assert_eq!(
        store.record(k, "u:ada", "s1").await.unwrap().as_deref(),
        Some("{\"a\":2}")
    );
    assert_eq!(store.record(k, "u:bob", "s1").await.unwrap(), None);
    let ids: Vec<String> = store
        .records(k, "u:ada")
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
    assert!(store.delete_record(k, "u:ada", "s1").await.unwrap());
    assert!(!store.delete_record(k, "u:ada", "s1").await.unwrap());
    assert_eq!(store.records(k, "u:ada").await.unwrap().len(), 1);
    assert_eq!(store.records(k, "u:nobody").await.unwrap(), vec![]);
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
    assert_eq!(
        store.counts(&["free"]).await.unwrap()["free"],
        StateCounts {
            warm: 2,
            allocated: 8,
            ..StateCounts::default()
        },
        "every claim moved exactly one pod"
    );
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

fn signal(redis: &RedisServer, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &redis.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Issue 23: under load, a Redis (or a Watchman) on saturated cores can answer a command late,
/// and the client's default gave every command 500 ms and no second chance, so `ListPools`
/// answered UNAVAILABLE. Here Redis is stopped for 1.5 s while calls are made: with that old
/// setting they fail; with a retry budget they wait it out, and a claim retried after its
/// answer was lost finds the allocation it made, with the counts moved once.
#[tokio::test]
async fn a_stalled_redis_delays_calls_instead_of_failing_them() {
    let redis = RedisServer::start();
    let old = Store::Redis(
        RedisStore::connect_with(
            &redis.url(),
            "t3:",
            RedisOptions {
                timeout: Duration::from_millis(500),
                retry_for: Duration::ZERO,
            },
        )
        .await
        .unwrap(),
    );
    let store = Store::Redis(
        RedisStore::connect_with(
            &redis.url(),
            "t3:",
            RedisOptions {
                timeout: Duration::from_millis(300),
                retry_for: Duration::from_secs(20),
            },
        )
        .await
        .unwrap(),
    );
    store.add_pod(&pod("a", "free")).await.unwrap();
    store.pod_ready("a", now_ms(), "").await.unwrap();

    signal(&redis, "-STOP");
    let resume = std::thread::spawn({
        let pid = redis.pid();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status()
                .unwrap();
        }
    });
    let before = old.counts(&["free"]).await;
    assert!(before.is_err(), "500 ms and no retry: {before:?}");
    let counts = store.counts(&["free"]).await.unwrap();
    assert_eq!(counts["free"].warm, 1);
    resume.join().unwrap();

    // The claim's first attempt may time out and still run: its retry finds the allocation.
    signal(&redis, "-STOP");
    let resume = std::thread::spawn({
        let pid = redis.pid();
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status()
                .unwrap();
        }
    });
    let claim = store.claim(&template("d1", "free")).await.unwrap();
    resume.join().unwrap();
    let (Claim::Claimed(a) | Claim::Existing(a)) = claim else {
        panic!("no claim: {claim:?}")
    };
    assert_eq!(a.pod, "a");
    assert_eq!(
        store.counts(&["free"]).await.unwrap()["free"],
        StateCounts {
            allocated: 1,
            ..StateCounts::default()
        }
    );
    assert_counts(&store).await;
}

/// A stall longer than the retry budget is an error the caller sees (UNAVAILABLE at the API),
/// not a hang; the store works again once Redis does.
#[tokio::test]
async fn a_stall_beyond_the_budget_fails_the_call_and_passes() {
    let redis = RedisServer::start();
    let store = Store::Redis(
        RedisStore::connect_with(
            &redis.url(),
            "t4:",
            RedisOptions {
                timeout: Duration::from_millis(200),
                retry_for: Duration::from_millis(400),
            },
        )
        .await
        .unwrap(),
    );
    signal(&redis, "-STOP");
    let stalled = store.counts(&["free"]).await;
    signal(&redis, "-CONT");
    assert!(stalled.is_err(), "{stalled:?}");
    assert_eq!(
        store.counts(&["free"]).await.unwrap()["free"],
        StateCounts::default()
    );
}

/// A store written before counts were kept gets them built once, on connecting.
#[tokio::test]
async fn counts_are_built_for_a_store_that_had_none() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for (id, plan, state) in [
        ("a", "free", "warm"),
        ("b", "free", "allocated"),
        ("c", "pro", "starting"),
        ("d", "free", "allocated"),
    ] {
        let mut p = pod(id, plan);
        p.state = serde_json::from_value(serde_json::json!(state)).unwrap();
        let _: () = redis::pipe()
            .set(format!("t5:pod:{id}"), serde_json::to_string(&p).unwrap())
            .sadd("t5:pods", id)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let store = Store::Redis(RedisStore::connect(&redis.url(), "t5:").await.unwrap());
    assert_eq!(
        store.counts(&["free"]).await.unwrap()["free"],
        StateCounts {
            warm: 1,
            allocated: 2,
            ..StateCounts::default()
        }
    );
    assert_counts(&store).await;
    // Once only: a second replica connecting does not count again.
    let again = Store::Redis(RedisStore::connect(&redis.url(), "t5:").await.unwrap());
    assert_counts(&again).await;
}
