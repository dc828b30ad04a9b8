//! One connection's invocations between decoding and completion: queued,
//! started one at a time in order under a per-connection rate limit, and
//! finishing in the background with their completions kept in invocation order.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tracing::error;

use super::config::HubConfig;
use super::hub::{Hub, Invoked};
use super::rate::RateLimit;
use crate::protocol::quote_untrusted;
use crate::value::Value;

/// An invocation waiting its turn.
pub(crate) struct Call {
    pub(crate) invocation_id: Option<String>,
    pub(crate) target: String,
    pub(crate) arguments: Vec<Value>,
    /// Bytes of its record, counted against the queue's byte bound.
    pub(crate) size: usize,
}

pub(crate) struct Completed {
    pub(crate) invocation_id: Option<String>,
    pub(crate) target: String,
    pub(crate) result: Result<Option<Value>, String>,
}

/// One connection's invocations between decoding and completion: queued (decoded,
/// waiting their turn), starting (the one the hub is running now, in order), and
/// finishing (started, completing in the background; completions go out in
/// invocation order).
///
/// The queue is bounded in calls and in bytes (each call counted by its record's
/// size); while it is full the session stops reading, so a fast client waits
/// rather than making the server hold its backlog.
#[derive(Default)]
pub(crate) struct Invocations<'a> {
    queued: VecDeque<Call>,
    /// Record bytes of the calls in `queued`.
    queued_bytes: usize,
    starting: Option<BoxFuture<'a, Started>>,
    finishing: Finishing,
    rate: RateLimit,
}

impl<'a> Invocations<'a> {
    /// Whether another decoded call may be queued (and so whether to read on).
    pub(crate) fn has_room(&self, config: &HubConfig) -> bool {
        self.queued.len() < config.max_queued_invocations
            && self.queued_bytes < config.max_queued_invocation_bytes
    }

    pub(crate) fn enqueue(&mut self, call: Call, size: usize) {
        self.queued_bytes += size;
        self.queued.push_back(Call { size, ..call });
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Whether the hub has work of ours (a call starting or finishing).
    pub(crate) fn is_busy(&self) -> bool {
        self.starting.is_some() || !self.finishing.is_empty()
    }

    /// Starts the next queued call if none is starting and the finishing ones
    /// leave room. A call over the rate limit is not run: it completes at once
    /// with an error (returned when nothing is ahead of it, else queued behind).
    pub(crate) fn start_next<H: Hub>(
        &mut self,
        hub: &'a H,
        session: &'a H::Session,
        config: &HubConfig,
    ) -> Option<Completed> {
        if self.starting.is_some() || self.finishing.len() >= config.max_queued_invocations {
            return None;
        }
        let call = self.queued.pop_front()?;
        self.queued_bytes -= call.size;
        if self.queued.is_empty() {
            // Most connections are idle most of the time: an empty queue
            // holds no memory (one allocation per burst of calls, not per call
            // while a client keeps several queued).
            self.queued = VecDeque::new();
        }
        match self.rate.acquire(config) {
            Ok(()) => {
                self.starting = Some(start_call(hub, session, call));
                None
            }
            Err(retry_in) => {
                let error = format!(
                    "rate limited: more than {} invocations per second on this connection; retry in {} ms",
                    config.invocations_per_second,
                    retry_in.as_micros().div_ceil(1000).max(1)
                );
                let Call { invocation_id, target, .. } = call;
                let limited = Completed { invocation_id, target, result: Err(error) };
                self.finishing.started(Started::Done(limited))
            }
        }
    }

    /// Waits for the starting call to start or the oldest finishing one to finish;
    /// `Some` is a completion to send now. Cancel-safe.
    pub(crate) async fn progress(&mut self) -> Option<Completed> {
        let Self { starting, finishing, .. } = self;
        tokio::select! {
            biased;
            started = poll_call(starting) => {
                *starting = None;
                finishing.started(started)
            }
            Some(completed) = finishing.next(), if !finishing.is_empty() => Some(completed),
        }
    }

    /// Waits for the call being started (the connection is closing); `Some` is a
    /// completion to send now.
    pub(crate) async fn finish_starting(&mut self) -> Option<Completed> {
        let started = self.starting.take()?.await;
        self.finishing.started(started)
    }

    /// The next completion of the calls finishing, `None` when none is left.
    pub(crate) async fn next_finished(&mut self) -> Option<Completed> {
        self.finishing.next().await
    }
}

/// Started invocations whose completions are not sent yet, in invocation order.
/// The queue is created on first use and boxed: most connections never need
/// it, and it would otherwise cost every idle connection two allocations and a
/// larger session future (S4 measures that cost per connection).
#[derive(Default)]
struct Finishing(Option<Box<FuturesOrdered<BoxFuture<'static, Completed>>>>);

impl Finishing {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A started call's completion to send now if nothing is ahead of it, else
    /// queues it behind the others.
    fn started(&mut self, started: Started) -> Option<Completed> {
        let rest = match started {
            Started::Done(completed) if self.is_empty() => return Some(completed),
            Started::Done(completed) => Box::pin(std::future::ready(completed)),
            Started::Finishing(rest) => rest,
        };
        self.0.get_or_insert_with(Box::default).push_back(rest);
        None
    }

    async fn next(&mut self) -> Option<Completed> {
        match &mut self.0 {
            Some(queue) => queue.next().await,
            None => None,
        }
    }
}

/// A started invocation: completed, or finishing in the background.
enum Started {
    Done(Completed),
    Finishing(BoxFuture<'static, Completed>),
}

fn start_call<'a, H: Hub>(
    hub: &'a H,
    session: &'a H::Session,
    call: Call,
) -> BoxFuture<'a, Started> {
    Box::pin(async move {
        let invoked = AssertUnwindSafe(hub.invoke(session, &call.target, call.arguments))
            .catch_unwind()
            .await;
        let Call { invocation_id, target, .. } = call;
        match invoked {
            Ok(Invoked::Done(result)) => Started::Done(Completed { invocation_id, target, result }),
            Ok(Invoked::Finishing(rest)) => Started::Finishing(Box::pin(async move {
                let result = match AssertUnwindSafe(rest).catch_unwind().await {
                    Ok(result) => result,
                    Err(_) => {
                        error!(target = ?quote_untrusted(&target), "hub panicked while finishing an invocation");
                        Err("internal server error".to_owned())
                    }
                };
                Completed { invocation_id, target, result }
            })),
            Err(_) => {
                error!(target = ?quote_untrusted(&target), "hub panicked in invoke");
                let result = Err("internal server error".to_owned());
                Started::Done(Completed { invocation_id, target, result })
            }
        }
    })
}

async fn poll_call(in_flight: &mut Option<BoxFuture<'_, Started>>) -> Started {
    match in_flight {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}
