//! Per-user rate limits on this instance: token buckets for messages sent,
//! groups created and bytes of history read, and the history reads in flight.
//! One `UserLimits` is shared by all of a user's connections here and outlives
//! the last of them until its buckets are full again, so reconnecting does
//! not refill them; memory is bounded by the users active within the longest
//! refill time. How many of a user's connections joined a group is not kept
//! here: fan-out counts it from its subscriptions (`LocalFanout::subscribe_at_most`).
//!
//! Messages and group creations use `governor`'s token bucket, as signalr's
//! per-connection limit does. The history byte budget is the one exception,
//! `DebtBucket` below: a read's cost is known only after the read, and
//! governor can neither take more tokens than the bucket holds (going into
//! debt) nor say whether a token is there without taking it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

    /// Time for an empty bucket to be full again.
    fn refill(&self) -> Duration {
        self.interval() * self.burst.max(1)
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

/// A token bucket for costs known only afterwards (bytes read), kept as the
/// instant it would be empty (the GCRA form, as governor's): `ready` says
/// whether it holds a token without taking one, `charge` takes the cost at
/// once and may go into debt, which the next `ready` waits out.
#[derive(Debug)]
struct DebtBucket {
    empty_at: Mutex<Instant>,
}

impl DebtBucket {
    fn full(now: Instant, rate: &Rate) -> DebtBucket {
        DebtBucket { empty_at: Mutex::new(now.checked_sub(rate.refill()).unwrap_or(now)) }
    }

    /// When the bucket is full again if nothing is taken.
    fn full_at(&self, rate: &Rate) -> Instant {
        *self.empty_at.lock() + rate.refill()
    }

    /// Whether the bucket holds a token now, or how long until it does.
    fn ready(&self, now: Instant, rate: &Rate) -> Result<(), Duration> {
        let next = *self.empty_at.lock() + rate.interval();
        if next <= now { Ok(()) } else { Err(next - now) }
    }

    /// Takes `tokens`, going into debt if the bucket holds fewer.
    fn charge(&self, now: Instant, rate: &Rate, tokens: u32) {
        let mut empty_at = self.empty_at.lock();
        let floor = now.checked_sub(rate.refill()).unwrap_or(*empty_at);
        *empty_at = (*empty_at).max(floor) + rate.interval() * tokens;
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

/// One user's buckets on this instance, shared by its connections here.
#[derive(Debug)]
pub struct UserLimits {
    messages: Bucket,
    creations: Bucket,
    history_bytes: DebtBucket,
    /// History reads of this user running now.
    reads_in_flight: AtomicUsize,
    /// `created`, and when the last token was taken from `messages` or
    /// `creations`, in nanoseconds after it plus one (0: none taken yet):
    /// governor's buckets are full again at the latest one refill after that.
    created: Instant,
    last_take_nanos: AtomicU64,
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
            messages: bucket(&rates.messages, MonotonicClock),
            creations: bucket(&rates.creations, MonotonicClock),
            history_bytes: DebtBucket::full(now, &rates.history_bytes),
            reads_in_flight: AtomicUsize::new(0),
            created: now,
            last_take_nanos: AtomicU64::new(0),
        }
    }

    /// Takes a token for `what`, or returns how long until one is available.
    pub fn take(&self, what: Limited) -> Result<(), Duration> {
        let since = Instant::now().saturating_duration_since(self.created);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX).saturating_add(1);
        self.last_take_nanos.fetch_max(nanos, Ordering::AcqRel);
        match what {
            Limited::Messages => take(&self.messages, &MonotonicClock),
            Limited::GroupCreations => take(&self.creations, &MonotonicClock),
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
        self.history_bytes.ready(now, &rates.history_bytes).map_err(ReadRefused::Bytes)?;
        let max = rates.history_reads_in_flight;
        self.reads_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| ReadRefused::InFlight)?;
        Ok(ReadPermit { limits: self })
    }

    /// Charges the bytes a history read returned to the user's budget.
    pub fn charge_read(&self, rates: &UserRates, now: Instant, bytes: usize) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.history_bytes.charge(now, &rates.history_bytes, bytes);
    }

    /// Whether every bucket is full again at `now`, so forgetting the user
    /// gives back nothing it had not earned anyway.
    fn rested(&self, rates: &UserRates, now: Instant) -> bool {
        let governed_full = match self.last_take_nanos.load(Ordering::Acquire) {
            0 => true,
            nanos => {
                let refill = rates.messages.refill().max(rates.creations.refill());
                self.created + Duration::from_nanos(nanos - 1) + refill <= now
            }
        };
        governed_full
            && self.history_bytes.full_at(&rates.history_bytes) <= now
            && self.reads_in_flight.load(Ordering::Acquire) == 0
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

    /// The user's limits, shared with its other connections here (and with
    /// its earlier ones while their buckets refill); pair with `disconnected`.
    pub fn connected(&self, user: &UserId) -> Arc<UserLimits> {
        let mut state = self.state.lock();
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
        let mut state = self.state.lock();
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
        let mut state = self.state.lock();
        self.forget_rested(&mut state.users, now);
    }

    /// Users known here: connected, or refilling (for tests).
    pub fn len(&self) -> usize {
        self.state.lock().users.len()
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

    fn rates() -> UserRates {
        UserRates {
            messages: Rate::per_minute(1, 2),
            creations: Rate::per_minute(1, 1),
            history_bytes: Rate::per_second(1000, 2000),
            history_reads_in_flight: 2,
        }
    }

    #[test]
    fn a_users_connections_share_its_buckets() {
        let users = Users::new(rates());
        let ann = UserId::from_trusted("ann");
        let (first, second) = (users.connected(&ann), users.connected(&ann));
        assert!(first.take(Limited::Messages).is_ok());
        assert!(second.take(Limited::Messages).is_ok());
        assert!(first.take(Limited::Messages).is_err(), "the burst of 2 is the user's");
        assert!(second.take(Limited::GroupCreations).is_ok());
        assert!(first.take(Limited::GroupCreations).is_err());
    }

    #[test]
    fn a_user_outlives_its_last_connection_until_its_buckets_are_full() {
        let users = Users::new(rates());
        let ann = UserId::from_trusted("ann");
        let first = users.connected(&ann);
        let second = users.connected(&ann);
        assert!(Arc::ptr_eq(&first, &second), "one user, one set of buckets");
        assert!(first.take(Limited::GroupCreations).is_ok());
        let now = Instant::now();
        users.disconnected(&ann);
        users.disconnected(&ann);
        users.sweep(now);
        assert_eq!(users.len(), 1, "kept while its creation bucket refills");
        let again = users.connected(&ann);
        assert!(Arc::ptr_eq(&first, &again), "a reconnect finds the same buckets");
        assert!(again.take(Limited::GroupCreations).is_err());
        users.disconnected(&ann);
        users.sweep(Instant::now() + Duration::from_secs(59));
        assert_eq!(users.len(), 1, "the creation bucket is not full yet");
        // The message bucket (2 at 1 a minute) takes longest to refill: two minutes.
        users.sweep(Instant::now() + Duration::from_secs(119));
        assert_eq!(users.len(), 1, "kept until the longest refill after the last take");
        users.sweep(Instant::now() + Duration::from_secs(121));
        assert!(users.is_empty(), "forgotten once full again");
    }

    #[test]
    fn an_idle_user_is_forgotten_at_the_first_sweep() {
        let users = Users::new(rates());
        let ann = UserId::from_trusted("ann");
        drop(users.connected(&ann));
        users.disconnected(&ann);
        users.sweep(Instant::now());
        assert!(users.is_empty(), "nothing taken, nothing to refill");
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
