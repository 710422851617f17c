//! Every pool rule as a table: an observation (or a pool) in, the decision out.
//!
//! One file: the tables share their fixtures (plans, pods, observations), and reading them
//! side by side is the point; each table is one test.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::model::KernelState;
use crate::plan::parse_plans;

/// The pass's wall clock (ms since the epoch).
const NOW: u64 = 1_000_000_000;

const LIMITS: Limits = Limits {
    startup_timeout: Duration::from_secs(120),
    max_in_flight: 4,
    in_flight: InFlight::CreateCalls,
};

/// Plans `name = (ratio, min, max)`, idle timeout 60 s.
fn plans(specs: &[(&str, f64, u32, u32)]) -> BTreeMap<String, crate::plan::Plan> {
    let toml: String = specs
        .iter()
        .map(|(name, ratio, min, max)| {
            format!(
                "[plans.{name}]\nwarm = {{ ratio = {ratio:?}, min = {min}, max = {max} }}\nidle_timeout = \"60s\"\n"
            )
        })
        .collect();
    parse_plans("test", &toml).unwrap()
}

fn pod(id: &str, plan: &str, state: PodState, age_ms: u64) -> Pod {
    Pod {
        id: id.into(),
        plan: plan.into(),
        state,
        endpoint: format!("http://{id}"),
        handle: String::new(),
        created_ms: NOW - age_ms,
        ready_ms: None,
        document: None,
        allocation: None,
    }
}

fn seen(state: PodState, health: Option<Health>) -> Observed {
    Observed {
        pod: pod("p", "free", state, 1_000),
        health,
        endpoint: None,
        usage: None,
    }
}

fn activity(connections: u64, idle_s: u64, kernel_state: KernelState) -> Option<Activity> {
    Some(Activity {
        connections,
        last_activity: NOW / 1000 - idle_s,
        kernel_state,
    })
}

fn usage(expires_in_ms: Option<i64>, activity: Option<Activity>) -> Option<Usage> {
    Some(Usage {
        expires_ms: expires_in_ms.map(|d| NOW.saturating_add_signed(d)),
        activity,
    })
}

/// One line per action, for tables.
fn describe(a: &PodAction) -> String {
    match a {
        PodAction::MarkReady { pod, endpoint } => format!("ready {} at {endpoint:?}", pod.id),
        PodAction::Discard {
            pod,
            reason,
            detail,
        } => format!("discard {} {}: {detail}", pod.id, reason.label()),
        PodAction::End {
            pod,
            reason,
            detail,
        } => format!("end {} {}: {detail}", pod.id, reason.label()),
        PodAction::Delete { pod } => format!("delete {}", pod.id),
    }
}

fn decide_one(o: Observed, plans: &BTreeMap<String, crate::plan::Plan>) -> Vec<String> {
    let pods = [o];
    let d = decide(&Snapshot {
        now_ms: NOW,
        plans,
        pods: &pods,
        demand: &BTreeMap::new(),
        creations: 0,
        limits: LIMITS,
    });
    d.pods.iter().map(describe).collect()
}

#[test]
fn each_pod_gets_what_its_observation_calls_for() {
    use Health::{Lost, NotReady, Preempted, Ready};
    use KernelState::{Busy, NotBusy};
    use PodState::{Allocated, Ending, Starting, Warm};
    let lost = || Lost("middleman process 42 exited".into());
    let preempted = || Preempted("DeletionByTaintManager: node gone".into());
    let aged = |state, health, age_ms| Observed {
        pod: pod("p", "free", state, age_ms),
        ..seen(state, Some(health))
    };
    let used = |u| Observed {
        usage: u,
        ..seen(Allocated, Some(Ready))
    };
    let cases: Vec<(&str, Observed, Option<&str>)> = vec![
        // Starting pods.
        (
            "ready, address unchanged",
            seen(Starting, Some(Ready)),
            Some("ready p at \"\""),
        ),
        (
            "ready at the address the backend assigned",
            Observed {
                endpoint: Some("http://10.1.2.3:8888".into()),
                ..seen(Starting, Some(Ready))
            },
            Some("ready p at \"http://10.1.2.3:8888\""),
        ),
        ("not ready yet", seen(Starting, Some(NotReady)), None),
        (
            "not ready at the startup timeout exactly",
            aged(Starting, NotReady, 120_000),
            None,
        ),
        (
            "not ready after the startup timeout",
            aged(Starting, NotReady, 120_001),
            Some("discard p failed_start: did not become ready in time"),
        ),
        (
            "died while starting",
            seen(Starting, Some(lost())),
            Some("discard p failed_start: middleman process 42 exited"),
        ),
        (
            "preempted while starting",
            seen(Starting, Some(preempted())),
            Some("discard p failed_start: DeletionByTaintManager: node gone"),
        ),
        ("not probed", seen(Starting, None), None),
        // Warm pods.
        ("warm and well", seen(Warm, Some(Ready)), None),
        (
            "warm, not ready for a moment",
            seen(Warm, Some(NotReady)),
            None,
        ),
        (
            "warm and lost",
            seen(Warm, Some(lost())),
            Some("discard p pod_lost: middleman process 42 exited"),
        ),
        (
            "warm and preempted",
            seen(Warm, Some(preempted())),
            Some("discard p preempted: DeletionByTaintManager: node gone"),
        ),
        (
            "warm, of a removed plan",
            Observed {
                pod: pod("p", "gone", Warm, 1_000),
                ..seen(Warm, Some(Ready))
            },
            Some("discard p plan_removed: its plan no longer exists"),
        ),
        (
            "warm, lost, of a removed plan: the loss is what happened",
            Observed {
                pod: pod("p", "gone", Warm, 1_000),
                ..seen(Warm, Some(lost()))
            },
            Some("discard p pod_lost: middleman process 42 exited"),
        ),
        // Allocated pods.
        (
            "allocated and lost",
            seen(Allocated, Some(lost())),
            Some("end p pod_lost: middleman process 42 exited"),
        ),
        (
            "allocated and preempted",
            seen(Allocated, Some(preempted())),
            Some("end p preempted: DeletionByTaintManager: node gone"),
        ),
        ("allocated, use not due for a check", used(None), None),
        (
            "allocated past its lifetime",
            used(usage(Some(-1), None)),
            Some("end p lifetime: reached the plan's maximum lifetime"),
        ),
        (
            "allocated at its lifetime exactly",
            used(usage(Some(0), activity(1, 0, Busy))),
            Some("end p lifetime: reached the plan's maximum lifetime"),
        ),
        (
            "allocated within its lifetime, in use",
            used(usage(Some(1), activity(1, 0, Busy))),
            None,
        ),
        (
            "idle for the idle timeout",
            used(usage(Some(60_000), activity(0, 60, NotBusy))),
            Some("end p idle: no activity for 60 s"),
        ),
        (
            "idle for less than the idle timeout",
            used(usage(Some(60_000), activity(0, 59, NotBusy))),
            None,
        ),
        (
            "quiet but someone is connected",
            used(usage(Some(60_000), activity(1, 3600, NotBusy))),
            None,
        ),
        (
            "quiet but the kernel is busy",
            used(usage(Some(60_000), activity(0, 3600, Busy))),
            None,
        ),
        (
            "Middleman did not answer",
            used(usage(Some(60_000), None)),
            None,
        ),
        (
            "no allocation record, idle",
            used(usage(None, activity(0, 61, NotBusy))),
            Some("end p idle: no activity for 61 s"),
        ),
        (
            "allocated, of a removed plan: no idle or lifetime rule applies",
            Observed {
                pod: pod("p", "gone", Allocated, 1_000),
                ..used(usage(Some(-1), activity(0, 3600, NotBusy)))
            },
            None,
        ),
        (
            "allocated and lost, of a removed plan",
            Observed {
                pod: pod("p", "gone", Allocated, 1_000),
                ..seen(Allocated, Some(lost()))
            },
            Some("end p pod_lost: middleman process 42 exited"),
        ),
        // Ending pods.
        ("ending", seen(Ending, None), Some("delete p")),
    ];
    let plans = plans(&[("free", 0.0, 0, 0)]);
    for (what, observed, expected) in cases {
        let got = decide_one(observed, &plans);
        let expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        assert_eq!(got, expected, "{what}");
    }
}

/// A pool of one plan: counts by state, with every starting pod not ready yet.
#[derive(Debug, Clone, Copy, Default)]
struct Pool {
    warm: usize,
    starting: usize,
    allocated: usize,
    ending: usize,
}

fn observe_pool(plan: &str, p: Pool) -> Vec<Observed> {
    let mut out = Vec::new();
    let mut add = |state, health: Option<Health>, n| {
        for i in 0..n {
            out.push(Observed {
                pod: pod(&format!("{plan}-{state:?}-{i}"), plan, state, 1_000),
                health: health.clone(),
                endpoint: None,
                usage: None,
            });
        }
    };
    add(PodState::Warm, Some(Health::Ready), p.warm);
    add(PodState::Starting, Some(Health::NotReady), p.starting);
    add(PodState::Allocated, Some(Health::Ready), p.allocated);
    add(PodState::Ending, None, p.ending);
    out
}

struct PoolCase<'a> {
    what: &'static str,
    /// (plan, ratio, min, max)
    plans: &'static [(&'static str, f64, u32, u32)],
    pools: &'a [(&'static str, Pool)],
    demand: &'static [(&'static str, u32)],
    creations: usize,
    limits: Limits,
    starts: &'static [&'static str],
    retire: &'static [&'static str],
}

const FREE: &[(&str, f64, u32, u32)] = &[("free", 0.0, 2, 2)];
const TWO: &[(&str, f64, u32, u32)] = &[("free", 0.0, 3, 3), ("pro", 0.0, 3, 3)];
const LOCAL: Limits = Limits {
    in_flight: InFlight::StartingPods,
    ..LIMITS
};
const fn pool(warm: usize, starting: usize, allocated: usize) -> Pool {
    Pool {
        warm,
        starting,
        allocated,
        ending: 0,
    }
}

#[test]
fn pools_reach_their_targets_within_the_budget_and_the_pods_in_flight() {
    let cases = [
        PoolCase {
            what: "an empty pool fills to its minimum",
            plans: FREE,
            pools: &[("free", pool(0, 0, 0))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &["free", "free"],
            retire: &[],
        },
        PoolCase {
            what: "starting pods count toward the target",
            plans: FREE,
            pools: &[("free", pool(1, 1, 5))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &[],
            retire: &[],
        },
        PoolCase {
            what: "ending pods do not",
            plans: FREE,
            pools: &[(
                "free",
                Pool {
                    ending: 3,
                    ..pool(1, 0, 0)
                },
            )],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &["free"],
            retire: &[],
        },
        PoolCase {
            what: "callers waiting for a cold pod add to the target",
            plans: FREE,
            pools: &[("free", pool(2, 0, 0))],
            demand: &[("free", 3)],
            creations: 10,
            limits: LIMITS,
            starts: &["free", "free", "free"],
            retire: &[],
        },
        PoolCase {
            what: "the target follows the allocated count: ceil(0.5 x 5) = 3",
            plans: &[("free", 0.5, 1, 10)],
            pools: &[("free", pool(1, 0, 5))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &["free", "free"],
            retire: &[],
        },
        PoolCase {
            what: "the target stops at the maximum",
            plans: &[("free", 0.5, 1, 2)],
            pools: &[("free", pool(1, 0, 50))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &["free"],
            retire: &[],
        },
        PoolCase {
            what: "a short budget is all that starts",
            plans: FREE,
            pools: &[("free", pool(0, 0, 0))],
            demand: &[("free", 3)],
            creations: 2,
            limits: LIMITS,
            starts: &["free", "free"],
            retire: &[],
        },
        PoolCase {
            what: "no budget, no start",
            plans: FREE,
            pools: &[("free", pool(0, 0, 0))],
            demand: &[],
            creations: 0,
            limits: LIMITS,
            starts: &[],
            retire: &[],
        },
        PoolCase {
            what: "plans take turns when the budget is short",
            plans: TWO,
            pools: &[("free", pool(0, 0, 0)), ("pro", pool(1, 0, 0))],
            demand: &[],
            creations: 4,
            limits: LIMITS,
            starts: &["free", "pro", "free", "pro"],
            retire: &[],
        },
        PoolCase {
            what: "one plan after the other when everything fits",
            plans: TWO,
            pools: &[("free", pool(1, 0, 0)), ("pro", pool(2, 0, 0))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &["free", "free", "pro"],
            retire: &[],
        },
        PoolCase {
            what: "Kubernetes: pods still starting do not hold back creations",
            plans: &[("free", 0.0, 20, 20)],
            pools: &[("free", pool(0, 10, 0))],
            demand: &[],
            creations: 100,
            limits: LIMITS,
            starts: &["free"; 10],
            retire: &[],
        },
        PoolCase {
            what: "local: pods still starting are in flight",
            plans: &[("free", 0.0, 20, 20)],
            pools: &[("free", pool(0, 3, 0))],
            demand: &[],
            creations: 100,
            limits: LOCAL,
            starts: &["free"],
            retire: &[],
        },
        PoolCase {
            what: "local: nothing starts while the limit is in flight",
            plans: &[("free", 0.0, 20, 20)],
            pools: &[("free", pool(0, 4, 0))],
            demand: &[],
            creations: 100,
            limits: LOCAL,
            starts: &[],
            retire: &[],
        },
        PoolCase {
            what: "local: the limit is over every plan's starting pods",
            plans: TWO,
            pools: &[("free", pool(0, 2, 0)), ("pro", pool(0, 1, 0))],
            demand: &[],
            creations: 100,
            limits: LOCAL,
            starts: &["free"],
            retire: &[],
        },
        PoolCase {
            what: "local: a limit of 0 still lets one pod start",
            plans: FREE,
            pools: &[("free", pool(0, 0, 0))],
            demand: &[],
            creations: 100,
            limits: Limits {
                max_in_flight: 0,
                ..LOCAL
            },
            starts: &["free"],
            retire: &[],
        },
        PoolCase {
            what: "surplus warm pods are retired",
            plans: FREE,
            pools: &[("free", pool(4, 1, 0))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &[],
            retire: &["free"],
        },
        PoolCase {
            what: "waiting callers keep what would otherwise be surplus",
            plans: FREE,
            pools: &[("free", pool(4, 1, 0))],
            demand: &[("free", 3)],
            creations: 10,
            limits: LIMITS,
            starts: &[],
            retire: &[],
        },
        PoolCase {
            what: "starting pods above the target are left to become warm",
            plans: FREE,
            pools: &[("free", pool(0, 5, 0))],
            demand: &[],
            creations: 10,
            limits: LIMITS,
            starts: &[],
            retire: &[],
        },
        PoolCase {
            what: "pods of a plan no longer in the file count for nothing",
            plans: FREE,
            pools: &[("free", pool(0, 0, 0)), ("gone", pool(5, 5, 5))],
            demand: &[("gone", 2)],
            creations: 10,
            limits: LIMITS,
            starts: &["free", "free"],
            retire: &[],
        },
    ];
    for c in cases {
        let plans = plans(c.plans);
        let pods: Vec<Observed> = c
            .pools
            .iter()
            .flat_map(|(plan, p)| observe_pool(plan, *p))
            .collect();
        let demand = c
            .demand
            .iter()
            .map(|(p, n)| ((*p).to_owned(), *n))
            .collect();
        let d = decide(&Snapshot {
            now_ms: NOW,
            plans: &plans,
            pods: &pods,
            demand: &demand,
            creations: c.creations,
            limits: c.limits,
        });
        assert_eq!(d.starts, c.starts, "{}: starts", c.what);
        assert_eq!(d.retire_surplus, c.retire, "{}: surplus", c.what);
    }
}

#[test]
fn only_pods_that_stay_starting_are_in_flight() {
    // Local, limit 4, a pool of 20: of four starting pods, one became ready, one timed out,
    // one died; only the fourth is still in flight, so three may start.
    let plans = plans(&[("free", 0.0, 20, 20)]);
    let starting = |id, health, age_ms| Observed {
        pod: pod(id, "free", PodState::Starting, age_ms),
        health: Some(health),
        endpoint: None,
        usage: None,
    };
    let pods = [
        starting("ready", Health::Ready, 1_000),
        starting("late", Health::NotReady, 300_000),
        starting("dead", Health::Lost("exited".into()), 1_000),
        starting("booting", Health::NotReady, 1_000),
    ];
    let d = decide(&Snapshot {
        now_ms: NOW,
        plans: &plans,
        pods: &pods,
        demand: &BTreeMap::new(),
        creations: 100,
        limits: LOCAL,
    });
    assert_eq!(d.starts.len(), 3, "{d:?}");
    assert_eq!(
        d.pods.iter().map(describe).collect::<Vec<_>>(),
        [
            "ready ready at \"\"",
            "discard late failed_start: did not become ready in time",
            "discard dead failed_start: exited",
        ]
    );
}

#[test]
fn counts_and_targets_per_plan() {
    // target_warm = clamp(ceil(ratio x allocated), min, max)
    let cases: &[((f64, u32, u32), u32, u32)] = &[
        ((0.2, 2, 10), 0, 2),
        ((0.2, 2, 10), 11, 3), // ceil(2.2)
        ((0.2, 2, 10), 1000, 10),
        ((0.0, 0, 0), 50, 0),
        ((1.0, 0, 5), 3, 3),
    ];
    for &((ratio, min, max), allocated, target) in cases {
        let plans = plans(&[("free", ratio, min, max)]);
        let pods: Vec<Pod> = observe_pool("free", pool(1, 2, allocated as usize))
            .into_iter()
            .map(|o| o.pod)
            .collect();
        let c = counts(&plans, &pods).remove("free").unwrap();
        assert_eq!(
            c,
            PoolCounts {
                warm: 1,
                starting: 2,
                allocated,
                ending: 0,
                target
            },
            "ratio {ratio}, min {min}, max {max}, allocated {allocated}"
        );
    }
}

#[test]
fn surplus_is_judged_on_a_fresh_read() {
    let plans = plans(FREE);
    // (warm, starting, allocated, demand) → warm pods retired
    let cases: &[(usize, usize, usize, u32, usize)] = &[
        (5, 0, 0, 0, 3),
        (2, 0, 0, 0, 0),
        (1, 4, 0, 0, 1), // never more than are warm
        (5, 0, 0, 2, 1),
        (0, 5, 0, 0, 0),
        (3, 0, 9, 0, 1), // ratio 0: the target stays 2
    ];
    for &(warm, starting, allocated, demand, retired) in cases {
        let pods: Vec<Pod> = [
            observe_pool("free", pool(warm, starting, allocated)),
            observe_pool("other", pool(5, 0, 0)),
        ]
        .concat()
        .into_iter()
        .map(|o| o.pod)
        .collect();
        let chosen = surplus("free", &plans, &pods, demand);
        assert_eq!(
            chosen.len(),
            retired,
            "warm {warm}, starting {starting}, demand {demand}"
        );
        assert!(
            chosen
                .iter()
                .all(|p| p.plan == "free" && p.state == PodState::Warm)
        );
    }
}
