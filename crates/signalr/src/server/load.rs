//! Whether this process's Tokio runtime has time to spare, which decides how
//! WebSocket records reach their sockets.
//!
//! With time to spare, a sender writes a record to an idle connection's socket
//! itself (see `writer::Direct`): one write system call, no task woken. Busy,
//! it queues the record for the connection's writer task instead: the writer
//! then runs late and finds several records waiting, which go out in one write.
//! Under heavy load that batching is what keeps the cost per record low, so
//! direct writes are for the everyday load only.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::Instant;

/// How often the runtime's busy time is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Above this share of its workers' time busy, the runtime counts as busy...
const BUSY_ABOVE: f64 = 0.5;

/// ...until it falls below this share (the gap keeps it from flapping, as
/// direct writes cost more than batched ones at the same load).
const IDLE_BELOW: f64 = 0.25;

#[derive(Debug, Default)]
pub(crate) struct Load {
    busy: AtomicBool,
}

impl Load {
    /// A gauge sampled in the background for as long as it lives. Outside a
    /// multi-thread runtime (whose metrics it reads) it never turns busy.
    pub(crate) fn start() -> std::sync::Arc<Load> {
        let load = std::sync::Arc::new(Load::default());
        if let Ok(handle) = Handle::try_current()
            && handle.runtime_flavor() == RuntimeFlavor::MultiThread
        {
            handle.spawn(sample(std::sync::Arc::downgrade(&load), handle.clone()));
        }
        load
    }

    /// Whether senders may write records to idle sockets directly.
    pub(crate) fn has_time(&self) -> bool {
        !self.busy.load(Ordering::Relaxed)
    }
}

async fn sample(load: Weak<Load>, handle: Handle) {
    let metrics = handle.metrics();
    let workers = metrics.num_workers();
    let busy_total = || (0..workers).map(|w| metrics.worker_total_busy_duration(w)).sum();
    let mut last: Duration = busy_total();
    let mut last_at = Instant::now();
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let Some(load) = load.upgrade() else { return };
        let (busy, now) = (busy_total(), Instant::now());
        let elapsed = now.duration_since(last_at).as_secs_f64() * workers as f64;
        if elapsed > 0.0 {
            let share = busy.saturating_sub(last).as_secs_f64() / elapsed;
            let was_busy = load.busy.load(Ordering::Relaxed);
            let is_busy = if was_busy { share >= IDLE_BELOW } else { share > BUSY_ABOVE };
            load.busy.store(is_busy, Ordering::Relaxed);
        }
        (last, last_at) = (busy, now);
    }
}
