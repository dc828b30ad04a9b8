//! What every connection task records into while the bench runs: latency
//! histograms, live counters for the progress bar and the drain, and a
//! per-second timeline for the plot. The exact loss, duplicate and order counts
//! are not here: each connection keeps its own and hands them back at the end.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::{Mutex, MutexGuard};

/// Latency histograms are sharded by connection so that two worker threads
/// rarely want the same lock.
const SHARDS: usize = 16;

/// Microseconds; anything over an hour is clamped.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// At most this many distinct error texts are kept for the report.
const MAX_ERRORS: usize = 10;

pub struct Stats {
    /// The bench's clock: message send times are nanoseconds since this.
    pub epoch: Instant,
    /// Send to `OnMessage` arrival, measured messages, microseconds.
    latency: Vec<Mutex<Histogram<u64>>>,
    /// `SendMessage` invocation to its completion, measured messages.
    completion: Mutex<Histogram<u64>>,
    /// How late the bench sent each measured message against its schedule: high
    /// values mean the bench itself could not keep up.
    send_lag: Mutex<Histogram<u64>>,
    /// Unique measured deliveries so far (the drain compares it with `expected`).
    pub delivered: AtomicU64,
    /// Accepted measured messages × their group's members.
    pub expected: AtomicU64,
    /// `SendMessage` calls not yet completed.
    pub in_flight: AtomicU64,
    /// Every `SendMessage` sent, warm-up included (progress bar).
    pub sent: AtomicU64,
    /// Connections lost while running.
    pub disconnects: AtomicU64,
    /// Per second since sending started: deliveries (any phase) and sends.
    timeline_delivered: Vec<AtomicU64>,
    timeline_sent: Vec<AtomicU64>,
    /// Nanoseconds since `epoch` when sending started; `u64::MAX` before.
    timeline_start: AtomicU64,
    errors: Mutex<Vec<(String, u64)>>,
}

impl Stats {
    /// `seconds`: how long the timeline must cover (warm-up, run and drain).
    pub fn new(seconds: usize) -> Stats {
        let histogram = || Mutex::new(new_histogram());
        Stats {
            epoch: Instant::now(),
            latency: (0..SHARDS).map(|_| histogram()).collect(),
            completion: histogram(),
            send_lag: histogram(),
            delivered: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            timeline_delivered: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            timeline_sent: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            timeline_start: AtomicU64::new(u64::MAX),
            errors: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the bench's clock started.
    pub fn now_nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn start_timeline(&self, at: Instant) {
        self.timeline_start.store(self.now_nanos(at), Ordering::Relaxed);
    }

    pub fn record_latency(&self, connection: usize, nanos: u64) {
        lock(&self.latency[connection % SHARDS]).saturating_record((nanos / 1000).max(1));
    }

    pub fn record_completion(&self, duration: Duration) {
        lock(&self.completion).saturating_record(micros(duration));
    }

    pub fn record_send_lag(&self, duration: Duration) {
        lock(&self.send_lag).saturating_record(micros(duration));
    }

    /// Counts `n` arrivals (`delivered`) or sends at `at` in the timeline.
    pub fn tick(&self, at: Instant, delivered: bool, n: u64) {
        let start = self.timeline_start.load(Ordering::Relaxed);
        let Some(since) = self.now_nanos(at).checked_sub(start) else { return };
        let second = (since / 1_000_000_000) as usize;
        let line = if delivered { &self.timeline_delivered } else { &self.timeline_sent };
        if let Some(slot) = line.get(second) {
            slot.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Keeps an error's text (and how often it happened) for the report.
    pub fn error(&self, text: impl Into<String>) {
        let text = text.into();
        let mut errors = lock(&self.errors);
        if let Some((_, count)) = errors.iter_mut().find(|(t, _)| *t == text) {
            *count += 1;
        } else if errors.len() < MAX_ERRORS {
            errors.push((text, 1));
        }
    }

    pub fn errors(&self) -> Vec<(String, u64)> {
        lock(&self.errors).clone()
    }

    pub fn latency(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.latency {
            // Same bounds on both sides: adding cannot fail.
            let _ = all.add(&*lock(shard));
        }
        all
    }

    pub fn completion(&self) -> Histogram<u64> {
        lock(&self.completion).clone()
    }

    pub fn send_lag(&self) -> Histogram<u64> {
        lock(&self.send_lag).clone()
    }

    /// Per second: (deliveries, sends).
    pub fn timeline(&self) -> Vec<(u64, u64)> {
        self.timeline_delivered
            .iter()
            .zip(&self.timeline_sent)
            .map(|(d, s)| (d.load(Ordering::Relaxed), s.load(Ordering::Relaxed)))
            .collect()
    }
}

fn new_histogram() -> Histogram<u64> {
    // Valid constant bounds.
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock()
}
