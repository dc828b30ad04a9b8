//! Per-user rate limits on this instance: token buckets for messages sent and
//! groups created. One `UserLimits` is shared by all of a user's connections
//! here and lives while the user has a connection on this instance, so memory
//! is bounded by the connections (which the HTTP edge caps). How many of a
//! user's connections joined a group is not kept here: fan-out counts it from
//! its subscriptions (`LocalFanout::subscribe_at_most`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use parking_lot::Mutex;

use crate::domain::UserId;

/// A rate: `per_period` tokens every `period`, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_period: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    pub fn per_second(per_second: u32, burst: u32) -> Rate {
        Rate { per_period: per_second, period: Duration::from_secs(1), burst }
    }

    pub fn per_minute(per_minute: u32, burst: u32) -> Rate {
        Rate { per_period: per_minute, period: Duration::from_secs(60), burst }
    }

    /// Time to earn one token.
    fn interval(&self) -> Duration {
        self.period / self.per_period.max(1)
    }
}

/// A token bucket (`governor`'s generic cell rate algorithm: one atomic
/// instant, no lock, no timer to refill it) that starts full.
type Bucket<C = MonotonicClock> =
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn bucket<C: Clock>(rate: &Rate, clock: C) -> Bucket<C> {
    let period = rate.interval().max(Duration::from_nanos(1));
    let quota = Quota::with_period(period).expect("a non-zero period");
    // A burst of 0 would refuse every call; the settings require at least 1.
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct_with_clock(quota.allow_burst(burst), clock)
}

/// Takes one token, or says how long until one is available.
fn take<C: Clock>(bucket: &Bucket<C>, clock: &C) -> Result<(), Duration> {
    bucket.check().map_err(|not_until| not_until.wait_time_from(clock.now()))
}

/// One user's buckets on this instance, shared by its connections here.
#[derive(Debug)]
pub struct UserLimits {
    messages: Bucket,
    creations: Bucket,
}

/// Which rate a refused call exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Messages,
    GroupCreations,
}

impl UserLimits {
    fn new(messages: &Rate, creations: &Rate) -> UserLimits {
        UserLimits {
            messages: bucket(messages, MonotonicClock),
            creations: bucket(creations, MonotonicClock),
        }
    }

    /// Takes a token for `what`, or returns how long until one is available.
    pub fn take(&self, what: Limited) -> Result<(), Duration> {
        match what {
            Limited::Messages => take(&self.messages, &MonotonicClock),
            Limited::GroupCreations => take(&self.creations, &MonotonicClock),
        }
    }
}

/// Every user with a connection on this instance.
#[derive(Debug)]
pub struct Users {
    messages: Rate,
    creations: Rate,
    users: Mutex<HashMap<UserId, (usize, Arc<UserLimits>)>>,
}

impl Users {
    pub fn new(messages: Rate, creations: Rate) -> Users {
        Users { messages, creations, users: Mutex::new(HashMap::new()) }
    }

    pub fn messages(&self) -> &Rate {
        &self.messages
    }

    pub fn creations(&self) -> &Rate {
        &self.creations
    }

    /// The user's limits, shared with its other connections here; pair with `disconnected`.
    pub fn connected(&self, user: &UserId) -> Arc<UserLimits> {
        let mut users = self.users.lock();
        let (connections, limits) = users
            .entry(user.clone())
            .or_insert_with(|| (0, Arc::new(UserLimits::new(&self.messages, &self.creations))));
        *connections += 1;
        Arc::clone(limits)
    }

    /// Forgets the user when its last connection here is gone.
    pub fn disconnected(&self, user: &UserId) {
        let mut users = self.users.lock();
        if let Some((connections, _)) = users.get_mut(user) {
            *connections -= 1;
            if *connections == 0 {
                users.remove(user);
            }
        }
    }

    /// Users with a connection here (for tests).
    pub fn len(&self) -> usize {
        self.users.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_bucket_allows_the_burst_then_the_rate() {
        let rate = Rate::per_second(10, 5);
        let clock = FakeRelativeClock::default();
        let bucket = bucket(&rate, clock.clone());
        for _ in 0..5 {
            assert!(take(&bucket, &clock).is_ok());
        }
        assert_eq!(take(&bucket, &clock), Err(Duration::from_millis(100)));
        clock.advance(Duration::from_millis(99));
        assert!(take(&bucket, &clock).is_err());
        clock.advance(Duration::from_millis(1));
        assert!(take(&bucket, &clock).is_ok());
        // A long pause saves up no more than the burst.
        clock.advance(Duration::from_secs(60));
        for _ in 0..5 {
            assert!(take(&bucket, &clock).is_ok());
        }
        assert!(take(&bucket, &clock).is_err());
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let rate = Rate::per_second(1000, 1000);
        let clock = FakeRelativeClock::default();
        let bucket = bucket(&rate, clock.clone());
        for i in 0..10_000u32 {
            assert!(take(&bucket, &clock).is_ok(), "message {i}");
            clock.advance(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_users_connections_share_its_buckets() {
        let users = Users::new(Rate::per_minute(1, 2), Rate::per_minute(1, 1));
        let ann = UserId::from_trusted("ann");
        let (first, second) = (users.connected(&ann), users.connected(&ann));
        assert!(first.take(Limited::Messages).is_ok());
        assert!(second.take(Limited::Messages).is_ok());
        assert!(first.take(Limited::Messages).is_err(), "the burst of 2 is the user's");
        assert!(second.take(Limited::GroupCreations).is_ok());
        assert!(first.take(Limited::GroupCreations).is_err());
    }

    #[test]
    fn users_are_forgotten_with_their_last_connection() {
        let users = Users::new(Rate::per_second(1, 1), Rate::per_minute(1, 1));
        let ann = UserId::from_trusted("ann");
        let first = users.connected(&ann);
        let second = users.connected(&ann);
        assert!(Arc::ptr_eq(&first, &second), "one user, one set of buckets");
        users.disconnected(&ann);
        assert_eq!(users.len(), 1);
        users.disconnected(&ann);
        assert!(users.is_empty());
    }
}
