//! Exponential reconnect backoff with jitter, so a fleet of Pis does not reconnect in step.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: RandomState,
    n: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
            rng: RandomState::new(),
            n: 0,
        }
    }

    /// The next delay: uniformly in [d/2, d] for the current step d, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        self.n += 1;
        // RandomState is randomly keyed per process: hashing a counter gives cheap jitter
        // without pulling in a RNG crate.
        let r = self.rng.hash_one(self.n) % 1_000_000;
        d / 2 + (d / 2).mul_f64(r as f64 / 1_000_000.0)
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        let delays: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays.last().unwrap() >= &Duration::from_secs(30));
        assert!(
            delays.windows(2).any(|w| w[0] != w[1]),
            "no jitter: {delays:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
