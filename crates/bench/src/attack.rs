//! `history-attack`: whether one group's history readers can starve everyone
//! else. A filler sends `--fill` messages of `--fill-chars` emoji to a group;
//! then `--readers` members of it, from a process of their own (this binary
//! again, `--readers-only`), call `GetHistory(g, null, --read-limit)` in a
//! loop, taking a refusal as a cue to ask again at once. Meanwhile a probe
//! user, on a small group of its own, times rounds of `LeaveGroup` +
//! `JoinGroup` (with its `OnHistory`) + `GetHistory(20)` + `SendMessage`:
//! first for `--baseline` seconds without the readers, then for `--attack`
//! seconds with them. Prints both latency summaries, the server's RSS before
//! the readers and at its peak while they read, and what the readers got.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use next_chat_contract::Method;
use next_chat_signalr::Value;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

use crate::history::Caller;
use crate::procfs;
use crate::report::Summary;

#[derive(Debug, Clone, clap::Args)]
pub struct AttackArgs {
    /// The server's hub URL.
    #[arg(long, default_value = "http://127.0.0.1:5000/next-chat")]
    pub url: String,
    /// The server's process id, for its resident memory (repeatable).
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// Members of the filled group reading its history in a loop.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Messages the filler sends to the group first.
    #[arg(long, default_value_t = 500)]
    pub fill: usize,
    /// Emoji per filler message (4 bytes each in UTF-8).
    #[arg(long, default_value_t = 16_384)]
    pub fill_chars: usize,
    /// The readers' GetHistory limit (1..500).
    #[arg(long, default_value_t = 500)]
    pub read_limit: usize,
    /// Seconds of probe rounds before the readers start.
    #[arg(long, default_value_t = 10.0)]
    pub baseline: f64,
    /// Seconds of probe rounds while the readers read.
    #[arg(long, default_value_t = 20.0)]
    pub attack: f64,
    /// A probe round starts this often (or at once after a slower one), as a
    /// person's client would act, not as fast as it can.
    #[arg(long, default_value_t = 50)]
    pub probe_interval_ms: u64,
    /// Group and user ids start with this [default: fresh for every run].
    #[arg(long)]
    pub prefix: Option<String>,
    /// How long one call may take, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// The readers wait the `retry in X ms` of a refusal before reading again,
    /// as a well-behaved client does; without it they ask again at once.
    #[arg(long)]
    pub readers_wait: bool,
    /// Run only the readers, for --attack seconds, after printing `ready`
    /// once they joined; then print what they got as JSON. The attack's own
    /// process runs this.
    #[arg(long, hide = true)]
    pub readers_only: bool,
}

/// What the readers got.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Readers {
    pub readers: usize,
    /// GetHistory calls answered with a page.
    pub pages: u64,
    /// Messages in those pages.
    pub messages: u64,
    /// Calls refused with `rate limited`.
    pub refused: u64,
    /// Calls that failed otherwise.
    pub errors: u64,
}

/// What `history-attack` measured; latencies in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Attacked {
    pub fill_messages: usize,
    pub fill_bytes: usize,
    /// One probe round: LeaveGroup + JoinGroup + GetHistory(20) + SendMessage.
    pub baseline_round_ms: Summary,
    pub attack_round_ms: Summary,
    pub rss_before_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_growth_mib: f64,
    pub readers: Readers,
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.001))
}

fn names(args: &AttackArgs) -> (String, String, String) {
    let prefix = args.prefix.clone().unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("attack{}-", now.as_millis())
    });
    (format!("{prefix}big"), format!("{prefix}small"), prefix)
}

pub async fn attack(args: AttackArgs) -> Result<Attacked, String> {
    if args.read_limit == 0 || args.read_limit > 500 {
        return Err("--read-limit must be between 1 and 500".into());
    }
    if args.readers_only {
        let readers = read_in_a_loop(&args).await?;
        println!("{}", serde_json::to_string(&readers).map_err(|e| e.to_string())?);
        std::process::exit(0);
    }
    procfs::check(&args.server_pid)?;
    let timeout = seconds(args.timeout);
    let (big, small, prefix) = names(&args);
    let text = "🦀".repeat(args.fill_chars);
    fill(&args.url, &format!("{prefix}filler"), &big, &text, args.fill, timeout).await?;

    let mut probe = Caller::connect(&args.url, &format!("{prefix}probe"), timeout).await?;
    probe.call(Method::CreateGroup, vec![small.as_str().into()]).await?;
    probe.call(Method::JoinGroup, vec![small.as_str().into()]).await?;
    probe.call(Method::SendMessage, vec![small.as_str().into(), "hello".into()]).await?;
    let every = Duration::from_millis(args.probe_interval_ms);
    let baseline = rounds(&mut probe, &small, every, seconds(args.baseline)).await?;

    let rss_before = procfs::total_rss(&args.server_pid).0;
    let mut child =
        tokio::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["history-attack", "--readers-only", "--url", &args.url])
            .args(["--readers", &args.readers.to_string()])
            .args(["--read-limit", &args.read_limit.to_string()])
            .args(["--attack", &args.attack.to_string(), "--prefix", &prefix])
            .args(["--timeout", &args.timeout.to_string()])
            .args(args.readers_wait.then_some("--readers-wait"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the readers' process: {e}"))?;
    let stdout = child.stdout.take().ok_or("the readers' process has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(timeout, lines.next_line()).await {
        Ok(Ok(Some(line))) if line == "ready" => {}
        other => return Err(format!("the readers did not get ready: {other:?}")),
    }
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (sampling, peak, pids) = (sampling.clone(), peak.clone(), args.server_pid.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(procfs::total_rss(&pids).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let attacked = rounds(&mut probe, &small, every, seconds(args.attack)).await?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let report = tokio::time::timeout(timeout + seconds(args.attack), lines.next_line())
        .await
        .map_err(|_| "the readers did not finish".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the readers printed nothing")?;
    let readers: Readers = serde_json::from_str(&report).map_err(|e| format!("{report}: {e}"))?;
    let _ = child.wait().await;
    let peak = peak.load(Ordering::Relaxed);
    Ok(Attacked {
        fill_messages: args.fill,
        fill_bytes: args.fill * text.len(),
        baseline_round_ms: Summary::from_micros(&baseline),
        attack_round_ms: Summary::from_micros(&attacked),
        rss_before_mib: report_mib(rss_before),
        rss_peak_mib: report_mib(peak),
        rss_growth_mib: report_mib(peak.saturating_sub(rss_before)),
        readers,
    })
}

fn report_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Sends `count` messages of `text` to a new group `group` as `user`,
/// waiting out rate limits and a full history queue as a patient client would.
async fn fill(
    url: &str,
    user: &str,
    group: &str,
    text: &str,
    count: usize,
    timeout: Duration,
) -> Result<(), String> {
    let mut filler = Caller::connect(url, user, timeout).await?;
    filler.call(Method::CreateGroup, vec![group.into()]).await?;
    filler.call(Method::JoinGroup, vec![group.into()]).await?;
    for sent in 0..count {
        let started = Instant::now();
        loop {
            match filler.call(Method::SendMessage, vec![group.into(), text.into()]).await {
                Ok(_) => break,
                Err(e) if started.elapsed() < timeout && e.contains("retry") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(format!("filling message {sent}: {e}")),
            }
        }
    }
    filler.call(Method::LeaveGroup, vec![group.into()]).await?;
    Ok(())
}

/// Probe rounds, one every `every`, for `duration`; each round's time in
/// microseconds.
async fn rounds(
    probe: &mut Caller,
    group: &str,
    every: Duration,
    duration: Duration,
) -> Result<Histogram<u64>, String> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    let until = Instant::now() + duration;
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let started = Instant::now();
        probe.call(Method::LeaveGroup, vec![group.into()]).await?;
        probe.call(Method::JoinGroup, vec![group.into()]).await?;
        probe.call(Method::GetHistory, vec![group.into(), Value::Null, Value::Int(20)]).await?;
        let text = format!("probe {n}");
        probe.call(Method::SendMessage, vec![group.into(), text.into()]).await?;
        histogram.saturating_record(started.elapsed().as_micros() as u64);
        n += 1;
    }
    Ok(histogram)
}

/// The readers' side: join, say `ready`, then read until `--attack` is over.
async fn read_in_a_loop(args: &AttackArgs) -> Result<Readers, String> {
    let timeout = seconds(args.timeout);
    let (big, _, prefix) = names(args);
    let mut callers = Vec::new();
    for i in 0..args.readers {
        let mut caller =
            Caller::connect(&args.url, &format!("{prefix}reader-{i}"), timeout).await?;
        caller.call(Method::JoinGroup, vec![big.as_str().into()]).await?;
        callers.push(caller);
    }
    println!("ready");
    let until = Instant::now() + seconds(args.attack);
    let mut tasks = Vec::new();
    for mut caller in callers {
        let (big, limit, wait) = (big.clone(), args.read_limit as i64, args.readers_wait);
        tasks.push(tokio::spawn(async move {
            let mut got = Readers { readers: 1, ..Readers::default() };
            while Instant::now() < until {
                let read = vec![big.as_str().into(), Value::Null, Value::Int(limit)];
                match caller.call(Method::GetHistory, read).await {
                    Ok((_, page)) => {
                        got.pages += 1;
                        got.messages += page.as_array().map_or(0, |m| m.len() as u64);
                    }
                    Err(e) if e.contains("rate limited") => {
                        got.refused += 1;
                        if wait {
                            tokio::time::sleep(retry_in(&e)).await;
                        }
                    }
                    Err(e) => {
                        got.errors += 1;
                        if e.contains("connection") || e.contains("closed") {
                            break;
                        }
                    }
                }
            }
            got
        }));
    }
    let mut total = Readers::default();
    for task in tasks {
        let got = task.await.map_err(|e| e.to_string())?;
        total.readers += got.readers;
        total.pages += got.pages;
        total.messages += got.messages;
        total.refused += got.refused;
        total.errors += got.errors;
    }
    Ok(total)
}

/// The wait a `rate limited ... retry in X ms` error names (1 ms if none).
fn retry_in(error: &str) -> Duration {
    let ms = error
        .rsplit_once("retry in ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_read_from_the_refusal() {
        let error = "GetHistory: the server answered: rate limited: more than 1048576 bytes of \
                     history per second for user u; retry in 250 ms";
        assert_eq!(retry_in(error), Duration::from_millis(250));
        assert_eq!(retry_in("something else"), Duration::from_millis(1));
    }
}
