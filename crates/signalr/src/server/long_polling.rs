//! The Long Polling transport's outbound side: each `GET ?id=` takes what is queued
//! (waiting up to the poll timeout), at most `long_poll_max_response_bytes` of it
//! (always at least one record), and a newer poll ends an older one with 204,
//! as ASP.NET Core does. The first poll only starts the connection and is answered
//! at once (the JS client sends its handshake only after it returns).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::connection::Outbound;
use super::registry::LongPoll;

/// The outbound queue of one long-polling connection, lent to one poll at a time.
#[derive(Debug)]
pub(crate) struct PollState {
    /// `None` while a poll holds it.
    outbound: Mutex<Option<Lent>>,
    /// Signalled when a poll gives the outbound back.
    returned: Notify,
    /// Ends the poll in progress when a newer one arrives.
    current_poll: Mutex<Option<oneshot::Sender<()>>>,
    times: Mutex<PollTimes>,
    /// Signalled when a poll starts or ends, so the session re-arms its idle timer.
    activity: Notify,
    /// A poll took the last record (the Close message, if any).
    delivered: watch::Sender<bool>,
    /// A poll was answered 204 because the outbound ended: the client knows.
    finished: watch::Sender<bool>,
    /// Set once: the transport must not be used any more.
    gone: AtomicBool,
}

/// What a poll borrows: the queue, and a record taken from it that did not fit
/// in the previous response, which goes first in the next.
#[derive(Debug)]
struct Lent {
    outbound: Outbound,
    carried: Option<Bytes>,
}

#[derive(Debug)]
struct PollTimes {
    active: usize,
    last_end: Instant,
}

impl PollState {
    pub(crate) fn new(outbound: Outbound) -> Self {
        Self {
            outbound: Mutex::new(Some(Lent { outbound, carried: None })),
            returned: Notify::new(),
            current_poll: Mutex::new(None),
            times: Mutex::new(PollTimes { active: 0, last_end: Instant::now() }),
            activity: Notify::new(),
            delivered: watch::channel(false).0,
            finished: watch::channel(false).0,
            gone: AtomicBool::new(false),
        }
    }

    /// When the last poll ended, or `None` while one is outstanding.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let times = self.times.lock();
        (times.active == 0).then_some(times.last_end)
    }

    /// Resolves when a poll starts or ends.
    pub(crate) async fn activity(&self) {
        self.activity.notified().await;
    }

    /// Waits (at most `timeout`) for a poll to take the last records.
    pub(crate) async fn wait_delivered(&self, timeout: Duration) {
        let mut delivered = self.delivered.subscribe();
        let _ = tokio::time::timeout(timeout, delivered.wait_for(|done| *done)).await;
    }

    /// Waits (at most `timeout`) for a poll to be told with 204 that the connection
    /// ended; after that every poll gets 204 until the connection is forgotten.
    pub(crate) async fn wait_finished(&self, timeout: Duration) {
        let mut finished = self.finished.subscribe();
        let _ = tokio::time::timeout(timeout, finished.wait_for(|done| *done)).await;
        self.gone.store(true, Ordering::Release);
    }

    fn mark_delivered(&self) {
        self.delivered.send_replace(true);
    }

    fn mark_finished(&self) {
        self.mark_delivered();
        self.finished.send_replace(true);
    }

    fn is_finished(&self) -> bool {
        *self.finished.borrow() || self.gone.load(Ordering::Acquire)
    }

    fn begin(&self) {
        self.times.lock().active += 1;
        self.activity.notify_one();
    }
}

impl LongPoll for PollState {
    fn poll(self: Arc<Self>, timeout: Duration, max_bytes: usize) -> BoxFuture<'static, Response> {
        Box::pin(poll(self, timeout, max_bytes))
    }
}

/// Gives the outbound back and records the end of the poll, however it ends
/// (including the client aborting the request).
struct PollGuard {
    polls: Arc<PollState>,
    outbound: Option<Lent>,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        if let Some(outbound) = self.outbound.take() {
            *self.polls.outbound.lock() = Some(outbound);
            self.polls.returned.notify_one();
        }
        {
            let mut times = self.polls.times.lock();
            times.active = times.active.saturating_sub(1);
            times.last_end = Instant::now();
        }
        self.polls.activity.notify_one();
    }
}

/// Answers one poll: 200 with records (at most `max_bytes` of them, or one record
/// if that alone is bigger), 200 empty on timeout, 204 when the connection has
/// ended or a newer poll replaced this one.
pub(crate) async fn poll(polls: Arc<PollState>, timeout: Duration, max_bytes: usize) -> Response {
    if polls.is_finished() {
        return no_content();
    }
    let (cancel_tx, mut cancelled) = oneshot::channel();
    if let Some(previous) = polls.current_poll.lock().replace(cancel_tx) {
        let _ = previous.send(());
    }
    polls.begin();
    let mut guard = PollGuard { polls: polls.clone(), outbound: None };
    let lent = loop {
        let returned = polls.returned.notified();
        if let Some(lent) = polls.outbound.lock().take() {
            break guard.outbound.insert(lent);
        }
        tokio::select! {
            _ = returned => {}
            _ = &mut cancelled => return no_content(),
        }
    };
    let first = match lent.carried.take() {
        Some(record) => Some(record),
        None => tokio::select! {
            record = lent.outbound.next() => record,
            _ = tokio::time::sleep(timeout) => return empty(StatusCode::OK),
            _ = &mut cancelled => return no_content(),
        },
    };
    let Some(first) = first else {
        polls.mark_finished();
        return no_content();
    };
    let mut body = Vec::with_capacity(first.len());
    body.extend_from_slice(&first);
    while let Some(record) = lent.outbound.try_next() {
        if body.len() + record.len() > max_bytes {
            lent.carried = Some(record);
            break;
        }
        body.extend_from_slice(&record);
    }
    if lent.carried.is_none() && lent.outbound.is_finished() {
        polls.mark_delivered();
    }
    drop(guard);
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
        ],
        body,
    )
        .into_response()
}

/// The answer to the first poll, which starts the connection.
pub(crate) fn started() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-cache, no-store"),
        ],
        Vec::<u8>::new(),
    )
        .into_response()
}

fn no_content() -> Response {
    empty(StatusCode::NO_CONTENT)
}

fn empty(status: StatusCode) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain"), (header::CACHE_CONTROL, "no-cache, no-store")])
        .into_response()
}
