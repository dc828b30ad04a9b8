//! The load phase, the original project's: one user sends `rate` messages per
//! second of `message_chars` characters for `duration` to a group another user
//! has joined; it passes when every send succeeds, every message arrives, and
//! the mean time from starting a send to its arrival at the other member is
//! under `max_mean_latency`.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use next_chat_client::{Event, Events};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::scenarios::{Outcome, Run, Scenario};

pub struct LoadSpec {
    pub rate: u32,
    pub duration: Duration,
    pub message_chars: usize,
    pub max_mean_latency: Duration,
}

/// How long the receiver waits for stragglers after the last send completed.
const DRAIN: Duration = Duration::from_secs(5);
/// Digits of the sequence number each message starts with.
const SEQ_DIGITS: usize = 7;

pub fn scenario(spec: LoadSpec) -> Scenario {
    let name = format!(
        "load: {} messages/s of {} characters for {} s, mean latency under {} ms",
        spec.rate,
        spec.message_chars,
        spec.duration.as_secs(),
        spec.max_mean_latency.as_millis()
    );
    let time_limit = spec.duration + Duration::from_secs(60);
    Scenario::new(name, time_limit, move |run| load(run, spec))
}

async fn load(run: Run, spec: LoadSpec) -> Outcome {
    ensure!(spec.rate > 0, "--load-rate must be at least 1");
    ensure!(spec.message_chars > SEQ_DIGITS, "--load-message-chars must exceed {SEQ_DIGITS}");
    let group = run.group("load");
    let mut sender = run.connect(&run.user("loader")).await?;
    let mut receiver = run.connect(&run.user("watcher")).await?;
    sender.join(&group).await?;
    receiver.join(&group).await?;

    let total = (u64::from(spec.rate) * spec.duration.as_secs()).max(1) as usize;
    let (stop, stopped) = oneshot::channel();
    let collector = tokio::spawn(collect(receiver.events, group.clone(), total, stopped));

    // Each send runs as its own task, so a slow completion never delays the
    // schedule: the offered load stays `rate` per second.
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / spec.rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut started_at = Vec::with_capacity(total);
    let mut sends = JoinSet::new();
    let filler = "x".repeat(spec.message_chars - SEQ_DIGITS);
    for seq in 0..total {
        ticks.tick().await;
        let text = format!("{seq:0width$}{filler}", width = SEQ_DIGITS);
        let (client, group) = (sender.client.clone(), group.clone());
        started_at.push(Instant::now());
        sends.spawn(async move { client.send_message(&group, &text).await });
    }
    let mut failed_sends = 0;
    let mut first_error = None;
    while let Some(result) = sends.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed_sends += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed_sends += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let mut collector = collector;
    let arrivals = match tokio::time::timeout(DRAIN, &mut collector).await {
        Ok(arrived) => arrived,
        Err(_) => {
            let _ = stop.send(());
            collector.await
        }
    }
    .context("the receiving task")?;

    let latencies: Vec<Duration> = started_at
        .iter()
        .zip(&arrivals.arrived)
        .filter_map(|(sent, arrived)| arrived.map(|a| a.saturating_duration_since(*sent)))
        .collect();
    let missing = total - latencies.len();
    sender.close().await;
    receiver.client.close().await;

    ensure!(
        failed_sends == 0,
        "{failed_sends} of {total} sends failed, the first with: {}",
        first_error.unwrap_or_default()
    );
    ensure!(missing == 0, "{missing} of {total} messages never arrived");
    ensure!(arrivals.duplicates == 0, "{} messages arrived more than once", arrivals.duplicates);
    let stats = Stats::of(latencies);
    ensure!(
        stats.mean < spec.max_mean_latency,
        "mean latency {} ms is not under {} ms ({stats})",
        stats.mean.as_millis(),
        spec.max_mean_latency.as_millis()
    );
    Ok(format!("{total} messages, {stats}"))
}

/// Records when each message of the load arrives (index: its sequence
/// number) until all have, or `stop` fires.
async fn collect(
    mut events: Events,
    group: String,
    total: usize,
    mut stop: oneshot::Receiver<()>,
) -> Arrivals {
    let mut arrived = vec![None; total];
    let mut count = 0;
    let mut duplicates = 0;
    while count < total {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = &mut stop => break,
        };
        match event {
            Some(Event::Message(message)) if message.group_id == group => {
                let now = Instant::now();
                let seq = message.text.get(..SEQ_DIGITS).and_then(|s| s.parse::<usize>().ok());
                match seq.and_then(|seq| arrived.get_mut(seq)) {
                    Some(slot @ None) => {
                        *slot = Some(now);
                        count += 1;
                    }
                    // Delivered twice: the protocol promises exactly once.
                    Some(Some(_)) => duplicates += 1,
                    None => {}
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    Arrivals { arrived, duplicates }
}

/// What the receiving member saw of the load.
struct Arrivals {
    /// When each message arrived, by sequence number; `None`: never.
    arrived: Vec<Option<Instant>>,
    /// Messages of the load delivered more than once (before the last arrived).
    duplicates: usize,
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut latencies: Vec<Duration>) -> Stats {
        latencies.sort();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(i).copied().unwrap_or_default()
        };
        let sum: Duration = latencies.iter().sum();
        let mean = sum.checked_div(latencies.len() as u32).unwrap_or_default();
        Stats {
            mean,
            p50: at(0.5),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "latency mean {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.mean.as_secs_f64() * 1e3,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}
