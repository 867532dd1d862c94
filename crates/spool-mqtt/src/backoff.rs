//! Reconnect delays: exponential backoff with full jitter between a minimum and a maximum.
//!
//! Attempt `n` (0-based) waits a uniformly random time in `[min, min(max, min * 2^n)]`
//! ("full jitter" over the exponential ceiling, floored at `min`): a fleet of devices that lost
//! the same broker does not come back in lock step, and no device hammers a broker that is
//! down. The randomness is an argument so that tests check the bounds with a seeded source.

use std::time::Duration;

use rand::Rng;

/// Default shortest wait before a reconnect.
pub const BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(500);
/// Default longest wait before a reconnect: a broker back after a restart is found within a
/// minute, and a fleet retrying an absent broker costs it little.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (`max` is raised to `min` when smaller).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay: `min(max, min * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniform in `[min, ceiling]`; the ceiling doubles for the next call.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jitter(self.min, ceiling, rng)
    }

    /// The delay after a refusal that retrying soon will not fix (bad credentials, not
    /// authorized): uniform in `[max / 2, max]`.
    pub fn slow_delay(&mut self, rng: &mut impl Rng) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        jitter((self.max / 2).max(self.min), self.max, rng)
    }

    /// Attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first delay (after a connection that stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn jitter(low: Duration, high: Duration, rng: &mut impl Rng) -> Duration {
    let span = high
        .saturating_sub(low)
        .as_nanos()
        .min(u128::from(u64::MAX)) as u64;
    if span == 0 {
        return low;
    }
    low + Duration::from_nanos(rng.random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    fn check(min: Duration, max: Duration, rounds: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut b = Backoff::new(min, max);
        for n in 0..rounds {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d >= min, "seed {seed} attempt {n}: {d:?} < {min:?}");
            assert!(d <= ceiling, "seed {seed} attempt {n}: {d:?} > {ceiling:?}");
            assert!(
                d <= max.max(min),
                "seed {seed} attempt {n}: {d:?} > {max:?}"
            );
        }
    }

    #[test]
    fn delays_stay_between_min_and_the_exponential_ceiling() {
        for seed in 0..50 {
            check(100 * MS, 10_000 * MS, 40, seed);
            check(MS, 60_000 * MS, 80, seed);
        }
    }

    #[test]
    fn ceiling_doubles_up_to_max_and_reset_starts_again() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1000, 1000].map(|m| m * MS).to_vec()
        );
        b.reset();
        assert_eq!(b.ceiling(), 100 * MS);
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(MS, 1000 * MS);
        for _ in 0..20 {
            b.next_delay(&mut rng);
        }
        let delays: Vec<Duration> = (0..100).map(|_| b.next_delay(&mut rng)).collect();
        let low = delays.iter().filter(|d| **d < 500 * MS).count();
        assert!(low > 10 && low < 90, "{low} of 100 below half");
    }

    #[test]
    fn degenerate_bounds_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(&mut rng), Duration::ZERO);
        let mut b = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(b.next_delay(&mut rng), 500 * MS);
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..70 {
            assert_eq!(b.next_delay(&mut rng), Duration::MAX);
        }
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let d = b.slow_delay(&mut rng);
        assert!(d >= 500 * MS && d <= 1000 * MS, "{d:?}");
    }
}
