//! The creation rate (`--pod-create-rate`) as a token bucket, so that a refill after a burst
//! of allocations (or a lost node) does not flood the API server or the host with pod
//! creations. Time is passed in, so it is tested without a clock.

use std::time::{Duration, Instant};

/// Pod creations allowed: refilled at `rate` per second, up to a capacity.
#[derive(Debug, Clone)]
pub struct CreateBudget {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

/// The longest gap between two passes whose earnings are kept in full: a pass slower than its
/// interval (thousands of pods, a slow API server) still creates at the configured rate, while
/// a replica that has not led for minutes does not start with minutes of creations.
const KEPT_GAP: Duration = Duration::from_secs(1);

impl CreateBudget {
    /// An empty bucket at `now`, refilled at `rate` per second. It holds at most `burst`
    /// (`--max-concurrent-starts`), or what one reconcile `interval` earns if that is more, so
    /// that a pass can always use its interval's share; and after a slow pass, what the time
    /// since the last one earned (up to one second's worth).
    pub fn new(rate: f64, burst: usize, interval: Duration, now: Instant) -> Self {
        let burst = burst.max(1) as f64;
        Self {
            rate,
            capacity: burst.max(rate * interval.as_secs_f64()),
            tokens: 0.0,
            at: now,
        }
    }

    /// Creations allowed at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        let gap = now.saturating_duration_since(self.at);
        let earned = gap.as_secs_f64() * self.rate;
        let capacity = self
            .capacity
            .max(gap.min(KEPT_GAP).as_secs_f64() * self.rate);
        // The cap limits what is earned, never what is held.
        self.tokens = (self.tokens + earned).min(capacity.max(self.tokens));
        self.at = now;
        self.tokens.floor().max(0.0) as usize
    }

    /// Takes `n` creations (never below empty).
    pub fn spend(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_capacity() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        // 16/s, burst 4, passes every 250 ms: capacity max(4, 16 x 0.25) = 4.
        let mut b = CreateBudget::new(16.0, 4, Duration::from_millis(250), t0);
        let cases: &[(u64, usize, usize)] = &[
            // (at ms, available, spent)
            (0, 0, 0),
            (125, 2, 2),
            (250, 2, 0),
            (10_000, 16, 3), // one second's worth after a long gap, not 160
            (10_000, 13, 13),
            (10_000, 0, 0),
            (10_062, 0, 0), // 0.99 of a token
            (10_063, 1, 0),
            (10_313, 4, 4), // a pass on time: the burst
            (10_563, 4, 0),
            (10_813, 4, 0), // unspent: still the burst
        ];
        for &(at, available, spent) in cases {
            assert_eq!(b.available(s(at)), available, "at {at} ms");
            b.spend(spent);
        }
    }

    /// Issue 23: with thousands of pods a pass can take longer than its interval; the budget
    /// must not throw away what the rate earned meanwhile, or the pods are created at
    /// `burst / pass time` instead of the rate.
    #[test]
    fn a_slow_pass_keeps_what_the_rate_earned_meanwhile() {
        let t0 = Instant::now();
        // 250/s, burst 64, passes every 250 ms that actually take 800 ms.
        let mut b = CreateBudget::new(250.0, 64, Duration::from_millis(250), t0);
        let mut created = 0;
        for pass in 1..=10 {
            let n = b.available(t0 + Duration::from_millis(800 * pass));
            b.spend(n);
            created += n;
        }
        // 8 s at 250/s: 2,000, not 10 x 64.
        assert_eq!(created, 2000);
    }

    #[test]
    fn a_fast_rate_earns_more_than_the_burst_per_interval() {
        let t0 = Instant::now();
        // 50/s with passes every second: 50 per pass even though the burst is 4.
        let mut b = CreateBudget::new(50.0, 4, Duration::from_secs(1), t0);
        assert_eq!(b.available(t0 + Duration::from_secs(5)), 50);
        // A zero burst still allows one.
        let mut b = CreateBudget::new(0.5, 0, Duration::from_millis(100), t0);
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 1);
    }
}
