//! The per-connection invocation rate limit: `governor`'s token bucket (the
//! generic cell rate algorithm, one atomic instant), the same crate the chat
//! rules use for their per-user limits.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::HubConfig;

/// `invocations_per_second` on average, `invocation_burst` at once after a quiet
/// spell. The bucket is made on the connection's first call: most connections
/// are idle, and an idle one holds nothing but the `None`.
pub(super) struct RateLimit<C: Clock = MonotonicClock> {
    bucket: Option<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>>,
}

impl<C: Clock> Default for RateLimit<C> {
    fn default() -> Self {
        RateLimit { bucket: None }
    }
}

impl RateLimit {
    /// Takes one call's token; `Err` is how long until a call would be allowed.
    pub(super) fn acquire(&mut self, config: &HubConfig) -> Result<(), Duration> {
        self.acquire_on(config, &MonotonicClock)
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    fn acquire_on(&mut self, config: &HubConfig, clock: &C) -> Result<(), Duration> {
        let bucket = self.bucket.get_or_insert_with(|| {
            let interval = Duration::from_secs(1) / config.invocations_per_second.max(1);
            let burst = NonZeroU32::new(config.invocation_burst).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(interval.max(Duration::from_nanos(1)))
                .expect("a non-zero period")
                .allow_burst(burst);
            RateLimiter::direct_with_clock(quota, clock.clone())
        });
        bucket.check().map_err(|not_until| not_until.wait_time_from(clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits(per_second: u32, burst: u32) -> HubConfig {
        HubConfig {
            invocations_per_second: per_second,
            invocation_burst: burst,
            ..HubConfig::default()
        }
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let config = limits(10, 5);
        let clock = FakeRelativeClock::default();
        let mut rate = RateLimit::default();
        for _ in 0..5 {
            assert_eq!(rate.acquire_on(&config, &clock), Ok(()));
        }
        // The sixth call at once waits for one interval (100 ms).
        assert_eq!(rate.acquire_on(&config, &clock), Err(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(60));
        assert_eq!(rate.acquire_on(&config, &clock), Err(Duration::from_millis(40)));
        clock.advance(Duration::from_millis(40));
        assert_eq!(rate.acquire_on(&config, &clock), Ok(()));
        // Over a quiet spell the bucket fills again, but never past the burst.
        clock.advance(Duration::from_secs(10));
        for _ in 0..5 {
            assert_eq!(rate.acquire_on(&config, &clock), Ok(()));
        }
        assert!(rate.acquire_on(&config, &clock).is_err());
    }

    #[test]
    fn rate_limit_keeps_a_steady_sender_under_it() {
        let config = limits(2000, 2000);
        let clock = FakeRelativeClock::default();
        let mut rate = RateLimit::default();
        // 1000 calls a second for 10 s, as the seed's load test sends.
        for i in 0..10_000u32 {
            assert_eq!(rate.acquire_on(&config, &clock), Ok(()), "call {i}");
            clock.advance(Duration::from_millis(1));
        }
    }
}
