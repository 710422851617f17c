//! The pure decisions of the job runner: what follows an attempt (retry or finish), the backoff,
//! whether a user's quota admits another run, and what a run is charged.

use std::time::Duration;

use super::model::{Outcome, RunState};
use crate::plan::JobsPolicy;

/// The longest backoff between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What follows an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The run ends in `state`.
    Finish(RunState),
    /// Another attempt, after this pause.
    Retry(Duration),
}

/// Only the infrastructure's failures are retried, while attempts remain; the code's own error,
/// its kernel's death and its timeout end the run at once.
pub fn after_attempt(
    outcome: Outcome,
    attempt: u32,
    policy: &JobsPolicy,
    cancel_requested: bool,
    jitter: f64,
) -> Next {
    match outcome {
        Outcome::Succeeded => Next::Finish(RunState::Succeeded),
        Outcome::UserError | Outcome::KernelDied => Next::Finish(RunState::Failed),
        Outcome::TimedOut => Next::Finish(RunState::TimedOut),
        Outcome::Cancelled => Next::Finish(RunState::Cancelled),
        Outcome::PodLost | Outcome::NoPod | Outcome::StoreError => {
            if cancel_requested {
                Next::Finish(RunState::Cancelled)
            } else if attempt >= policy.max_attempts {
                Next::Finish(RunState::Errored)
            } else {
                Next::Retry(backoff(attempt, policy.retry_backoff, jitter))
            }
        }
    }
}

/// The pause after attempt `attempt` (1-based): `first` doubled per attempt, capped at
/// [`MAX_BACKOFF`], of which a random half (`jitter` in 0..1) is taken off, so that runs lost
/// together do not come back together.
pub fn backoff(attempt: u32, first: Duration, jitter: f64) -> Duration {
    let doubled = first.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = doubled.min(MAX_BACKOFF);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    full / 2 + full.mul_f64(jitter / 2.0)
}

/// When an unfinished run stops counting as the user's active run if nobody finishes it (a
/// replica that died): well after every attempt could have waited for a pod, run to its limit
/// and backed off. Renewed at each attempt's start, so time in the queue does not count.
pub fn lost_after(timeout: Duration, policy: &JobsPolicy) -> Duration {
    let per_attempt = timeout + super::runner::POD_WAIT + MAX_BACKOFF;
    per_attempt * policy.max_attempts + Duration::from_secs(300)
}

/// What a user of a plan has in use: runs not finished, and today's (UTC) runs and charge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub active: u32,
    pub runs_today: u32,
    pub cpu_ms_today: u64,
}

/// Why a new run is refused, or `None` when the quota admits it. The message says which limit
/// and when it frees up.
pub fn quota_refusal(usage: &Usage, policy: &JobsPolicy) -> Option<String> {
    if policy.user_concurrent_runs > 0 && usage.active >= policy.user_concurrent_runs {
        return Some(format!(
            "quota: {} of {} concurrent runs in use; submit again when one finishes",
            usage.active, policy.user_concurrent_runs
        ));
    }
    if policy.user_runs_per_day > 0 && usage.runs_today >= policy.user_runs_per_day {
        return Some(format!(
            "quota: {} runs today (UTC) of {} allowed; it resets at midnight UTC",
            usage.runs_today, policy.user_runs_per_day
        ));
    }
    if policy.user_cpu_seconds_per_day > 0
        && usage.cpu_ms_today >= policy.user_cpu_seconds_per_day.saturating_mul(1000)
    {
        return Some(format!(
            "quota: {:.1} of {} CPU seconds used today (UTC); it resets at midnight UTC",
            usage.cpu_ms_today as f64 / 1000.0,
            policy.user_cpu_seconds_per_day
        ));
    }
    None
}

/// What a run of `ran_ms` on a pod of `cpus` CPUs is charged, in CPU milliseconds: the time its
/// pod was held times its CPUs (1 when the plan sets none). An upper bound that the code cannot
/// talk down.
pub fn charge_cpu_ms(ran_ms: u64, cpus: f64) -> u64 {
    let cpus = if cpus > 0.0 && cpus.is_finite() {
        cpus
    } else {
        1.0
    };
    (ran_ms as f64 * cpus).ceil() as u64
}

/// The UTC day of `at_ms` (days since 1970), for the daily quotas.
pub fn day(at_ms: u64) -> u64 {
    at_ms / 86_400_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> JobsPolicy {
        JobsPolicy {
            concurrency: 2,
            max_attempts: 3,
            retry_backoff: Duration::from_millis(400),
            result_ttl: Duration::from_secs(60),
            max_code_bytes: 1024,
            max_notebook_bytes: 1024,
            user_concurrent_runs: 2,
            user_runs_per_day: 10,
            user_cpu_seconds_per_day: 5,
        }
    }

    #[test]
    fn only_the_infrastructure_is_retried_while_attempts_remain() {
        let p = policy();
        for outcome in [Outcome::PodLost, Outcome::NoPod, Outcome::StoreError] {
            assert!(matches!(
                after_attempt(outcome, 1, &p, false, 0.0),
                Next::Retry(_)
            ));
            assert!(matches!(
                after_attempt(outcome, 2, &p, false, 0.0),
                Next::Retry(_)
            ));
            assert_eq!(
                after_attempt(outcome, 3, &p, false, 0.0),
                Next::Finish(RunState::Errored)
            );
            // A run cancelled while its pod was being lost is not tried again.
            assert_eq!(
                after_attempt(outcome, 1, &p, true, 0.0),
                Next::Finish(RunState::Cancelled)
            );
        }
        for (outcome, state) in [
            (Outcome::Succeeded, RunState::Succeeded),
            (Outcome::UserError, RunState::Failed),
            (Outcome::KernelDied, RunState::Failed),
            (Outcome::TimedOut, RunState::TimedOut),
            (Outcome::Cancelled, RunState::Cancelled),
        ] {
            assert_eq!(
                after_attempt(outcome, 1, &p, false, 0.5),
                Next::Finish(state)
            );
        }
    }

    #[test]
    fn backoff_doubles_with_half_of_it_jittered_and_is_capped() {
        let first = Duration::from_millis(400);
        assert_eq!(backoff(1, first, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(1, first, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(2, first, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(3, first, 0.5), Duration::from_millis(1200));
        assert_eq!(backoff(40, first, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(40, first, 0.0), MAX_BACKOFF / 2);
        assert_eq!(backoff(1, first, f64::NAN), Duration::from_millis(200));
    }

    #[test]
    fn quotas_name_the_limit_reached_and_zero_means_none() {
        let p = policy();
        assert_eq!(quota_refusal(&Usage::default(), &p), None);
        let busy = Usage {
            active: 2,
            ..Usage::default()
        };
        assert!(quota_refusal(&busy, &p).unwrap().contains("concurrent"));
        let daily = Usage {
            runs_today: 10,
            ..Usage::default()
        };
        assert!(quota_refusal(&daily, &p).unwrap().contains("runs today"));
        let cpu = Usage {
            cpu_ms_today: 5_000,
            ..Usage::default()
        };
        assert!(quota_refusal(&cpu, &p).unwrap().contains("CPU seconds"));
        let unlimited = JobsPolicy {
            user_concurrent_runs: 0,
            user_runs_per_day: 0,
            user_cpu_seconds_per_day: 0,
            ..p
        };
        let heavy = Usage {
            active: 1000,
            runs_today: 1000,
            cpu_ms_today: u64::MAX,
        };
        assert_eq!(quota_refusal(&heavy, &unlimited), None);
    }

    #[test]
    fn the_charge_is_time_held_times_cpus() {
        assert_eq!(charge_cpu_ms(1500, 0.0), 1500);
        assert_eq!(charge_cpu_ms(1500, 2.0), 3000);
        assert_eq!(charge_cpu_ms(1000, 0.25), 250);
        assert_eq!(day(86_400_000 * 3 + 5), 3);
    }
}
