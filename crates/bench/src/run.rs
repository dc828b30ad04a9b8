//! The orchestration: open every connection, start the senders on one shared
//! schedule, watch the server while the measured window runs, drain, and turn
//! the connections' outcomes into a report.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::Args;
use crate::connection::{self, Control, Outcome, Plan, Schedule, Settings};
use crate::procfs;
use crate::report::{self, Bench, Config, Connect, ErrorCount, Idle, Report, Server, Summary};
use crate::stats::Stats;

/// Time between the last join and the first send, so every task is waiting.
const START_DELAY: Duration = Duration::from_millis(300);

/// After the drain's counts match, a little longer to catch late duplicates.
const DRAIN_GRACE: Duration = Duration::from_millis(300);

/// How often the server's RSS is sampled and the progress bar redrawn.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

pub struct Finished {
    pub report: Report,
    /// For the plot.
    pub latency: Histogram<u64>,
}

pub async fn run(args: Args, threads: usize) -> Result<Finished, String> {
    args.validate()?;
    procfs::check(&args.server_pid)?;
    let limit = procfs::raise_open_files_limit();
    if args.connections as u64 + 64 > limit {
        return Err(format!(
            "{} connections need more open files than this process may have ({limit}): \
             raise the hard limit (`ulimit -Hn`) or use fewer connections",
            args.connections
        ));
    }
    args.check_ports(procfs::local_ports())?;
    let bench_cpu_start = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let group_prefix = args.group_prefix.clone().unwrap_or_else(|| {
        let run: u32 = rand::rng().random();
        format!("bench-{run:08x}-")
    });
    let plans = plans(&args, &group_prefix)?;
    let senders = plans.iter().filter(|p| p.sender_rank.is_some()).count();
    let seconds = (args.warmup + args.duration + args.drain).ceil() as usize + 10;
    let stats = Arc::new(Stats::new(seconds));
    let tls = if args.urls.iter().any(|u| u.starts_with("https://") || u.starts_with("wss://")) {
        Some(
            next_chat_client::tls_client_config(args.ca_file.as_deref())
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let settings = Arc::new(Settings {
        protocol: args.protocol.wire(),
        length: args.length,
        timeout: args.timeout(),
        tls,
        jwt_secret: args.jwt_secret()?,
    });
    let progress = progress_bar(&args);

    let rss_before = procfs::total_rss(&args.server_pid).0;
    let own_rss = || procfs::rss_kib(std::process::id()).map_or(0, |(rss, _)| rss);
    let bench_rss_before = own_rss();
    let connect_started = Instant::now();
    // Each connection runs (reads, answers the server's pings, pings itself)
    // from the moment it has joined: with 100,000 connections the last join
    // can come more than the server's 30 s client timeout after the first.
    let (control, control_rx) = watch::channel(Control::Wait);
    let mut tasks = JoinSet::new();
    let connect_times =
        open_all(&args, plans, &settings, &progress, &mut tasks, &control_rx, &stats).await?;
    let connect_total = connect_started.elapsed();
    let bench_rss_joined = own_rss();
    wait_for_go(&args, &progress).await?;

    let mut rss_max = procfs::total_rss(&args.server_pid).0;
    let mut server = None;
    let mut idle = None;
    if args.idle {
        progress.set_message(format!("holding {} idle connections", args.connections));
        let settle = Duration::from_secs_f64(args.settle);
        let cpu_start = procfs::total_cpu(&args.server_pid);
        let until = Instant::now() + settle;
        while Instant::now() < until {
            tokio::time::sleep(SAMPLE_EVERY).await;
            progress.tick();
        }
        if !args.server_pid.is_empty() {
            server = Some((procfs::total_cpu(&args.server_pid) - cpu_start, settle));
        }
        let rss_after = procfs::total_rss(&args.server_pid).0;
        if !args.server_pid.is_empty() {
            idle = Some(Idle {
                connections: args.connections,
                rss_before_mib: Report::mib(rss_before),
                rss_after_mib: Report::mib(rss_after),
                rss_per_connection_kib: rss_after.saturating_sub(rss_before) as f64
                    / args.connections as f64,
            });
        }
        rss_max = rss_max.max(rss_after);
    } else {
        let start = Instant::now() + START_DELAY;
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        let stop_at = measure_from + Duration::from_secs_f64(args.duration);
        let schedule = Schedule {
            start,
            measure_from,
            stop_at,
            period: Duration::from_secs_f64(senders as f64 / args.rate),
            senders,
        };
        stats.start_timeline(start.into_std());
        let _ = control.send(Control::Run(schedule));
        progress.set_length((stop_at - Instant::now()).as_millis() as u64);
        progress.set_position(0);
        let began = Instant::now();
        let mut last = (Instant::now(), 0u64);
        let mut cpu_start = None;
        let mut show = |stats: &Stats, phase: &str| {
            let now = Instant::now();
            let delivered = stats.delivered.load(Ordering::Relaxed);
            let rate = (delivered - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
            last = (now, delivered);
            progress.set_position((now - began).as_millis() as u64);
            progress.set_message(format!(
                "{phase}: sent {}, delivered {delivered} ({rate:.0}/s), in flight {}",
                stats.sent.load(Ordering::Relaxed),
                stats.in_flight.load(Ordering::Relaxed)
            ));
        };
        while Instant::now() < stop_at {
            let next = (Instant::now() + SAMPLE_EVERY).min(stop_at);
            if cpu_start.is_none() && next >= measure_from {
                tokio::time::sleep_until(measure_from).await;
                cpu_start = Some(procfs::total_cpu(&args.server_pid));
            } else {
                tokio::time::sleep_until(next).await;
            }
            rss_max = rss_max.max(procfs::total_rss(&args.server_pid).0);
            let phase = if cpu_start.is_some() { "measuring" } else { "warming up" };
            show(&stats, phase);
        }
        let cpu_end = procfs::total_cpu(&args.server_pid);
        let window = Duration::from_secs_f64(args.duration);
        // Drain: every call answered and every expected delivery in, or time up.
        let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
        while Instant::now() < drain_until {
            let done = stats.in_flight.load(Ordering::Relaxed) == 0
                && stats.delivered.load(Ordering::Relaxed)
                    >= stats.expected.load(Ordering::Relaxed);
            if done {
                tokio::time::sleep(DRAIN_GRACE).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            show(&stats, "draining");
        }
        if !args.server_pid.is_empty() {
            let cpu_s = cpu_end - cpu_start.unwrap_or(cpu_end);
            server = Some((cpu_s, window));
        }
    }
    let _ = control.send(Control::Finish);
    progress.finish_and_clear();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(args.connections);
    while let Some(outcome) = tasks.join_next().await {
        outcomes.push(outcome.map_err(|e| format!("a connection task failed: {e}"))?);
    }
    outcomes.sort_by_key(|o| o.index);

    let latency = stats.latency();
    let load = (!args.idle).then(|| {
        let mut load = report::account(&outcomes);
        load.send_rate = load.sent as f64 / args.duration;
        load.deliveries_per_s = load.delivered as f64 / args.duration;
        load.latency_ms = Summary::from_micros(&latency);
        load.send_completion_ms = Summary::from_micros(&stats.completion());
        load.send_lag_ms = Summary::from_micros(&stats.send_lag());
        let mut timeline: Vec<_> = stats
            .timeline()
            .into_iter()
            .enumerate()
            .map(|(second, (delivered, sent))| report::TimelinePoint { second, sent, delivered })
            .collect();
        while timeline.last().is_some_and(|p| p.sent == 0 && p.delivered == 0) {
            timeline.pop();
        }
        load.timeline = timeline;
        load
    });
    let (_, rss_peak) = procfs::total_rss(&args.server_pid);
    let server = (!args.server_pid.is_empty()).then(|| {
        let (cpu_s, window) = server.unwrap_or((0.0, Duration::ZERO));
        let window_s = window.as_secs_f64();
        let delivered = load.as_ref().map_or(0, |l| l.delivered);
        Server {
            pids: args.server_pid.clone(),
            cpu_s,
            window_s,
            cores: if window_s > 0.0 { cpu_s / window_s } else { 0.0 },
            cpu_us_per_delivery: (delivered > 0 && window_s > 0.0)
                .then(|| cpu_s * 1e6 / delivered as f64),
            rss_max_mib: Report::mib(rss_max),
            rss_peak_mib: Report::mib(rss_peak),
        }
    });
    let bench_cpu = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_cpu_start;
    let bench_elapsed = connect_started.elapsed().as_secs_f64();
    let report = Report {
        mode: if args.idle { "idle" } else { "load" },
        config: Config {
            urls: args.urls.clone(),
            connections: args.connections,
            group_size: args.group_size,
            groups: args.groups(),
            senders,
            rate: args.rate,
            length: args.length,
            duration_s: args.duration,
            warmup_s: args.warmup,
            protocol: args.protocol.wire().name(),
            group_prefix: group_prefix.clone(),
        },
        connect: Connect {
            total_s: connect_total.as_secs_f64(),
            per_second: args.connections as f64 / connect_total.as_secs_f64().max(1e-6),
            per_connection_ms: Summary::from_micros(&connect_times),
        },
        load,
        server,
        idle,
        bench: Bench {
            cpu_s: bench_cpu,
            cores: bench_cpu / bench_elapsed.max(1e-3),
            rss_peak_mib: Report::mib(procfs::rss_kib(std::process::id()).unwrap_or((0, 0)).1),
            rss_per_connection_kib: bench_rss_joined.saturating_sub(bench_rss_before) as f64
                / args.connections as f64,
            threads,
        },
        errors: stats
            .errors()
            .into_iter()
            .map(|(error, count)| ErrorCount { error, count })
            .collect(),
    };
    Ok(Finished { report, latency })
}

/// Who each connection is: user, URL (round-robin, or its group's with
/// `--url-per-group`), group, and whether it
/// creates the group or sends.
fn plans(args: &Args, prefix: &str) -> Result<Vec<Plan>, String> {
    let ws_urls: Vec<String> = args.urls.iter().map(|u| ws_url(u)).collect::<Result<_, _>>()?;
    let sources = args.sources()?;
    let mut rank = 0;
    Ok((0..args.connections)
        .map(|index| {
            let group_index = index / args.group_size;
            let position = index % args.group_size;
            let first = group_index * args.group_size;
            let members = args.group_size.min(args.connections - first) as u64;
            let sender = !args.idle && position < args.senders_per_group;
            let sender_rank = sender.then(|| {
                rank += 1;
                rank - 1
            });
            Plan {
                index,
                ws_url: ws_urls
                    [if args.url_per_group { group_index } else { index } % ws_urls.len()]
                .clone(),
                source: source_of(index, ws_urls.len(), &sources),
                user: format!("{}{index}", args.user_prefix),
                group: format!("{prefix}{group_index}"),
                group_index,
                members,
                create: args.create && position == 0,
                sender_rank,
            }
        })
        .collect())
}

/// `--ready-file` and `--go-file`: says that this process has joined all its
/// connections, then waits for the word to go (the connections keep running).
async fn wait_for_go(args: &Args, progress: &ProgressBar) -> Result<(), String> {
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, b"").map_err(|e| format!("--ready-file {}: {e}", ready.display()))?;
    }
    let Some(go) = &args.go_file else { return Ok(()) };
    progress.set_message(format!("waiting for {}", go.display()));
    while !go.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        progress.tick();
    }
    Ok(())
}

/// Connection `index`'s source address: the sources in turn within each URL's
/// share, so that every (source, URL) pair gets an equal part.
fn source_of(index: usize, urls: usize, sources: &[IpAddr]) -> Option<IpAddr> {
    (!sources.is_empty()).then(|| sources[(index / urls.max(1)) % sources.len()])
}

/// `http(s)://h:p/next-chat` → `ws(s)://h:p/next-chat` (ws:// and wss:// pass through).
pub(crate) fn ws_url(url: &str) -> Result<String, String> {
    if let Some(rest) = url.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else if let Some(rest) = url.strip_prefix("https://") {
        Ok(format!("wss://{rest}"))
    } else if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(url.to_string())
    } else {
        Err(format!("--url {url}: use http(s)://HOST:PORT/next-chat or ws(s)://…"))
    }
}

/// Opens every connection, at most `--connect-concurrency` at once; the group
/// creators first when `--create` is given; and starts each one's task in
/// `tasks` as soon as it has joined. Fails on the first connection that
/// cannot be made, saying how many were made.
async fn open_all(
    args: &Args,
    plans: Vec<Plan>,
    settings: &Arc<Settings>,
    progress: &ProgressBar,
    tasks: &mut JoinSet<Outcome>,
    control: &watch::Receiver<Control>,
    stats: &Arc<Stats>,
) -> Result<Histogram<u64>, String> {
    progress.set_length(plans.len() as u64);
    progress.set_message("connecting and joining");
    let (creators, others): (Vec<Plan>, Vec<Plan>) = plans.into_iter().partition(|p| p.create);
    let semaphore = Arc::new(Semaphore::new(args.connect_concurrency));
    let failed = Arc::new(AtomicBool::new(false));
    let mut made = 0usize;
    let mut times = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let mut first_error: Option<String> = None;
    let mut errors = 0usize;
    for wave in [creators, others] {
        let mut set = JoinSet::new();
        for plan in wave {
            let semaphore = semaphore.clone();
            let failed = failed.clone();
            let settings = settings.clone();
            set.spawn(async move {
                let _permit = semaphore.acquire_owned().await.ok()?;
                if failed.load(Ordering::Relaxed) {
                    return None;
                }
                let started = Instant::now();
                let result = connection::open(plan, settings).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                Some(result.map(|c| (c, started.elapsed())))
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined.map_err(|e| format!("a connect task failed: {e}"))? {
                Some(Ok((connection, took))) => {
                    times.saturating_record(took.as_micros() as u64);
                    tasks.spawn(connection.run(control.clone(), stats.clone()));
                    made += 1;
                    progress.inc(1);
                }
                Some(Err(e)) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
                None => {}
            }
        }
        if let Some(error) = first_error.take() {
            return Err(format!(
                "{error}\n({} of {} connections were made, {errors} failed; stopped there)",
                made, args.connections
            ));
        }
    }
    Ok(times)
}

fn progress_bar(args: &Args) -> ProgressBar {
    let bar = ProgressBar::new(args.connections as u64);
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn urls_of(flags: &[&str]) -> Vec<(usize, String)> {
        let args = Args::try_parse_from(
            [&["next-chat-bench", "--url", "http://a/next-chat,http://b/next-chat"], flags]
                .concat(),
        )
        .unwrap();
        plans(&args, "g").unwrap().into_iter().map(|p| (p.group_index, p.ws_url)).collect()
    }

    #[test]
    fn connections_go_round_robin_or_by_group() {
        let spread = urls_of(&["-c", "4", "-g", "2"]);
        assert_eq!(spread[0].1, "ws://a/next-chat");
        assert_eq!(spread[1].1, "ws://b/next-chat", "a group's members on both");
        let by_group = urls_of(&["-c", "4", "-g", "2", "--url-per-group"]);
        assert!(by_group.iter().all(|(group, url)| {
            url == if *group == 0 { "ws://a/next-chat" } else { "ws://b/next-chat" }
        }));
    }

    #[test]
    fn sources_rotate_evenly_over_every_url() {
        let sources: Vec<IpAddr> =
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().map(|s| s.parse().unwrap()).collect();
        // Two URLs: connection i goes to URL i % 2; each pair gets 1 in 6.
        let mut pairs = std::collections::HashMap::new();
        for index in 0..600 {
            let source = source_of(index, 2, &sources).expect("a source");
            *pairs.entry((index % 2, source)).or_insert(0) += 1;
        }
        assert_eq!(pairs.len(), 6, "{pairs:?}");
        assert!(pairs.values().all(|&n| n == 100), "{pairs:?}");
        assert_eq!(source_of(5, 1, &[]), None);
    }
}
