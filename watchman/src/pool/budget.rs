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

impl CreateBudget {
    /// An empty bucket at `now`, refilled at `rate` per second. It holds at most `burst`
    /// (`--max-concurrent-starts`), or what one reconcile `interval` earns if that is more, so
    /// that a pass can always use its interval's share.
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
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.capacity);
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
            (10_000, 4, 3), // capped at the capacity, not 160
            (10_000, 1, 1),
            (10_000, 0, 0),
            (10_062, 0, 0), // 0.99 of a token
            (10_063, 1, 0),
        ];
        for &(at, available, spent) in cases {
            assert_eq!(b.available(s(at)), available, "at {at} ms");
            b.spend(spent);
        }
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
