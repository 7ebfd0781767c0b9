//! Retry policies: how long a failed message waits before its next attempt.
//!
//! The random source is passed in, so tests can pin the jitter.

use std::time::Duration;

use rand::Rng;

/// Decides the delay before attempt `attempt + 1`, given that attempt `attempt` (1-based) failed.
pub trait RetryPolicy: Send + Sync {
    /// The delay before the next attempt.
    fn delay(&self, attempt: u32, rng: &mut dyn rand::RngCore) -> Duration;
}

/// Exponential backoff with "equal jitter" and a cap: the `n`th retry waits between half and
/// all of `min(cap, base * 2^(n-1))`, so retries spread out but never collapse to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialBackoff {
    /// Delay after the first failure, before jitter.
    pub base: Duration,
    /// Upper bound for any delay.
    pub cap: Duration,
}

impl Default for ExponentialBackoff {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), cap: Duration::from_secs(300) }
    }
}

impl ExponentialBackoff {
    /// The un-jittered delay after `attempt` failures.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << exponent).min(self.cap)
    }
}

impl RetryPolicy for ExponentialBackoff {
    fn delay(&self, attempt: u32, rng: &mut dyn rand::RngCore) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if spread == 0 { 0 } else { rng.random_range(0..=spread) })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn delays_grow_and_stay_within_half_to_full_ceiling() {
        let policy = ExponentialBackoff { base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ceilings: Vec<u128> = (1..=7).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        for attempt in 1..=40 {
            let ceiling = policy.ceiling(attempt);
            for _ in 0..50 {
                let d = policy.delay(attempt, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?} vs {ceiling:?}");
            }
        }
    }

    #[test]
    fn zero_base_means_immediate_retry() {
        let policy = ExponentialBackoff { base: Duration::ZERO, cap: Duration::ZERO };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(policy.delay(3, &mut rng), Duration::ZERO);
    }
}
