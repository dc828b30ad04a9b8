//! Per-user rate limits on this instance: token buckets for messages sent and
//! groups created. One `UserLimits` is shared by all of a user's connections
//! here and lives while the user has a connection on this instance, so memory
//! is bounded by the connections (which the HTTP edge caps). How many of a
//! user's connections joined a group is not kept here: fan-out counts it from
//! its subscriptions (`LocalFanout::subscribe_at_most`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

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

/// A token bucket that starts full, kept as one instant (the GCRA form): no
/// floating point, and no timer to refill it.
#[derive(Debug)]
struct TokenBucket {
    /// The moment the bucket would be empty: a token is available while
    /// `now >= empty_at + interval`; full means `empty_at <= now - burst * interval`.
    empty_at: Instant,
}

impl TokenBucket {
    fn full(now: Instant, rate: &Rate) -> TokenBucket {
        let credit = rate.interval() * rate.burst;
        TokenBucket { empty_at: now.checked_sub(credit).unwrap_or(now) }
    }

    /// Takes one token, or says how long until one is available.
    fn take(&mut self, now: Instant, rate: &Rate) -> Result<(), Duration> {
        let interval = rate.interval();
        let floor = now.checked_sub(interval * rate.burst).unwrap_or(self.empty_at);
        let start = self.empty_at.max(floor);
        let next = start + interval;
        if next <= now {
            self.empty_at = next;
            Ok(())
        } else {
            Err(next - now)
        }
    }
}

/// One user's buckets on this instance.
#[derive(Debug)]
pub struct UserLimits {
    state: Mutex<UserState>,
}

#[derive(Debug)]
struct UserState {
    messages: TokenBucket,
    creations: TokenBucket,
}

/// Which rate a refused call exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Messages,
    GroupCreations,
}

impl UserLimits {
    fn new(now: Instant, messages: &Rate, creations: &Rate) -> UserLimits {
        UserLimits {
            state: Mutex::new(UserState {
                messages: TokenBucket::full(now, messages),
                creations: TokenBucket::full(now, creations),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, UserState> {
        self.state.lock()
    }

    /// Takes a token for `what`, or returns how long until one is available.
    pub fn take(&self, what: Limited, rate: &Rate, now: Instant) -> Result<(), Duration> {
        let mut state = self.lock();
        match what {
            Limited::Messages => state.messages.take(now, rate),
            Limited::GroupCreations => state.creations.take(now, rate),
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
        let (connections, limits) = users.entry(user.clone()).or_insert_with(|| {
            (0, Arc::new(UserLimits::new(Instant::now(), &self.messages, &self.creations)))
        });
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
    use super::*;

    #[test]
    fn a_bucket_allows_the_burst_then_the_rate() {
        let rate = Rate::per_second(10, 5);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(start, &rate);
        for _ in 0..5 {
            assert!(bucket.take(start, &rate).is_ok());
        }
        let wait = bucket.take(start, &rate).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(bucket.take(start + Duration::from_millis(99), &rate).is_err());
        assert!(bucket.take(start + Duration::from_millis(100), &rate).is_ok());
        // A long pause saves up no more than the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(bucket.take(later, &rate).is_ok());
        }
        assert!(bucket.take(later, &rate).is_err());
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let rate = Rate::per_second(1000, 1000);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(start, &rate);
        for i in 0..10_000u32 {
            let now = start + Duration::from_millis(u64::from(i));
            assert!(bucket.take(now, &rate).is_ok(), "message {i}");
        }
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
