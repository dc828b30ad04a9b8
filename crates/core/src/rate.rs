//! Per-user rate limits on this instance: token buckets for messages sent,
//! groups created and bytes of history read, and the history reads in flight.
//! One `UserLimits` is shared by all of a user's connections here and outlives
//! the last of them until its buckets are full again, so reconnecting does
//! not refill them; memory is bounded by the users active within the longest
//! refill time. How many of a user's connections joined a group is not kept
//! here: fan-out counts it from its subscriptions (`LocalFanout::subscribe_at_most`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

    /// When the bucket is full again if nothing is taken.
    fn full_at(&self, rate: &Rate) -> Instant {
        self.empty_at + rate.interval() * rate.burst
    }

    /// For costs known only afterwards (bytes read): whether the bucket holds
    /// a token now, or how long until it does. Takes nothing; `charge` does.
    fn ready(&self, now: Instant, rate: &Rate) -> Result<(), Duration> {
        let next = self.empty_at + rate.interval();
        if next <= now { Ok(()) } else { Err(next - now) }
    }

    /// Takes `tokens` at once, going into debt if the bucket holds fewer: the
    /// next `ready` waits until the debt is paid back.
    fn charge(&mut self, now: Instant, rate: &Rate, tokens: u32) {
        let interval = rate.interval();
        let floor = now.checked_sub(interval * rate.burst).unwrap_or(self.empty_at);
        self.empty_at = self.empty_at.max(floor) + interval * tokens;
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

/// The per-user rates, and the history reads one user may have in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRates {
    pub messages: Rate,
    pub creations: Rate,
    /// Bytes of history pages per second, and the burst.
    pub history_bytes: Rate,
    pub history_reads_in_flight: usize,
}

/// One user's buckets on this instance.
#[derive(Debug)]
pub struct UserLimits {
    state: Mutex<UserState>,
    /// History reads of this user running now.
    reads_in_flight: AtomicUsize,
}

#[derive(Debug)]
struct UserState {
    messages: TokenBucket,
    creations: TokenBucket,
    history_bytes: TokenBucket,
}

/// Which rate a refused call exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Messages,
    GroupCreations,
}

/// A history read let through by `UserLimits::start_read`; dropping it ends
/// the read. Charge what it returned with `UserLimits::charge_read`.
#[derive(Debug)]
pub struct ReadPermit<'a> {
    limits: &'a UserLimits,
}

impl Drop for ReadPermit<'_> {
    fn drop(&mut self) {
        self.limits.reads_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a history read may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRefused {
    /// The user read its byte budget; retry after the wait.
    Bytes(Duration),
    /// The user has as many reads in flight as allowed.
    InFlight,
}

impl UserLimits {
    fn new(now: Instant, rates: &UserRates) -> UserLimits {
        UserLimits {
            state: Mutex::new(UserState {
                messages: TokenBucket::full(now, &rates.messages),
                creations: TokenBucket::full(now, &rates.creations),
                history_bytes: TokenBucket::full(now, &rates.history_bytes),
            }),
            reads_in_flight: AtomicUsize::new(0),
        }
    }

    /// Lets a history read start if the user has bytes left to read and fewer
    /// than `rates.history_reads_in_flight` reads running. What the read
    /// returns is charged afterwards (`charge_read`): its size is not known
    /// before, and one page is bounded (`history_page_max_bytes`).
    pub fn start_read(
        &self,
        rates: &UserRates,
        now: Instant,
    ) -> Result<ReadPermit<'_>, ReadRefused> {
        self.lock().history_bytes.ready(now, &rates.history_bytes).map_err(ReadRefused::Bytes)?;
        let max = rates.history_reads_in_flight;
        self.reads_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| ReadRefused::InFlight)?;
        Ok(ReadPermit { limits: self })
    }

    /// Charges the bytes a history read returned to the user's budget.
    pub fn charge_read(&self, rates: &UserRates, now: Instant, bytes: usize) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.lock().history_bytes.charge(now, &rates.history_bytes, bytes);
    }

    /// Whether every bucket is full again at `now`, so forgetting the user
    /// gives back nothing it had not earned anyway.
    fn rested(&self, rates: &UserRates, now: Instant) -> bool {
        let state = self.lock();
        state.messages.full_at(&rates.messages) <= now
            && state.creations.full_at(&rates.creations) <= now
            && state.history_bytes.full_at(&rates.history_bytes) <= now
            && self.reads_in_flight.load(Ordering::Acquire) == 0
    }

    fn lock(&self) -> MutexGuard<'_, UserState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

/// How often `Users` looks for users to forget; between two looks the map
/// holds at most the users active since the one before.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Every user with a connection on this instance, and those without one
/// whose buckets are not full again yet.
#[derive(Debug)]
pub struct Users {
    rates: UserRates,
    state: Mutex<UsersState>,
}

#[derive(Debug)]
struct UsersState {
    /// Each user's connections here, and its limits.
    users: HashMap<UserId, (usize, Arc<UserLimits>)>,
    next_sweep: Instant,
}

impl Users {
    pub fn new(rates: UserRates) -> Users {
        let state = UsersState { users: HashMap::new(), next_sweep: Instant::now() + SWEEP_EVERY };
        Users { rates, state: Mutex::new(state) }
    }

    pub fn rates(&self) -> &UserRates {
        &self.rates
    }

    pub fn messages(&self) -> &Rate {
        &self.rates.messages
    }

    pub fn creations(&self) -> &Rate {
        &self.rates.creations
    }

    fn lock(&self) -> MutexGuard<'_, UsersState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user's limits, shared with its other connections here (and with
    /// its earlier ones while their buckets refill); pair with `disconnected`.
    pub fn connected(&self, user: &UserId) -> Arc<UserLimits> {
        let mut state = self.lock();
        let (connections, limits) = state
            .users
            .entry(user.clone())
            .or_insert_with(|| (0, Arc::new(UserLimits::new(Instant::now(), &self.rates))));
        *connections += 1;
        Arc::clone(limits)
    }

    /// One of the user's connections here is gone. The user is kept until its
    /// buckets are full again, so a reconnect starts where it left off.
    pub fn disconnected(&self, user: &UserId) {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some((connections, _)) = state.users.get_mut(user) {
            *connections = connections.saturating_sub(1);
        }
        if now >= state.next_sweep {
            state.next_sweep = now + SWEEP_EVERY;
            self.forget_rested(&mut state.users, now);
        }
    }

    /// Forgets the users with no connection here whose buckets are full again.
    fn forget_rested(&self, users: &mut HashMap<UserId, (usize, Arc<UserLimits>)>, now: Instant) {
        users.retain(|_, (connections, limits)| {
            *connections > 0 || !limits.rested(&self.rates, now)
        });
    }

    /// Forgets now the users it may (for tests; `disconnected` does it at most
    /// every `SWEEP_EVERY`).
    pub fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        self.forget_rested(&mut state.users, now);
    }

    /// Users known here: connected, or refilling (for tests).
    pub fn len(&self) -> usize {
        self.lock().users.len()
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

    fn rates() -> UserRates {
        UserRates {
            messages: Rate::per_second(1, 1),
            creations: Rate::per_minute(1, 1),
            history_bytes: Rate::per_second(1000, 2000),
            history_reads_in_flight: 2,
        }
    }

    #[test]
    fn a_user_outlives_its_last_connection_until_its_buckets_are_full() {
        let users = Users::new(rates());
        let ann = UserId::from_trusted("ann");
        let first = users.connected(&ann);
        let second = users.connected(&ann);
        assert!(Arc::ptr_eq(&first, &second), "one user, one set of buckets");
        let now = Instant::now();
        assert!(first.take(Limited::GroupCreations, &rates().creations, now).is_ok());
        users.disconnected(&ann);
        users.disconnected(&ann);
        users.sweep(now);
        assert_eq!(users.len(), 1, "kept while its creation bucket refills");
        let again = users.connected(&ann);
        assert!(Arc::ptr_eq(&first, &again), "a reconnect finds the same buckets");
        assert!(again.take(Limited::GroupCreations, &rates().creations, now).is_err());
        users.disconnected(&ann);
        users.sweep(now + Duration::from_secs(61));
        assert!(users.is_empty(), "forgotten once full again");
    }

    #[test]
    fn history_reads_are_bounded_in_bytes_and_in_flight() {
        let rates = rates();
        let limits = UserLimits::new(Instant::now(), &rates);
        let now = Instant::now();
        let one = limits.start_read(&rates, now).unwrap();
        let two = limits.start_read(&rates, now).unwrap();
        assert_eq!(limits.start_read(&rates, now).unwrap_err(), ReadRefused::InFlight);
        drop(one);
        limits.charge_read(&rates, now, 2500);
        drop(two);
        // 500 bytes in debt at 1000 per second: half a second, then one millisecond's token.
        let Err(ReadRefused::Bytes(wait)) = limits.start_read(&rates, now) else {
            panic!("a read past the budget was let through");
        };
        assert_eq!(wait, Duration::from_millis(501));
        assert!(limits.start_read(&rates, now + wait).is_ok());
    }
}
