//! The results: exact delivery accounting from every connection's outcome, the
//! latency summaries, the server's cost, and their two renderings (a summary
//! for a person, JSON for a script).

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::connection::{ACCEPTED, FAILED, MEASURED, Outcome};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub config: Config,
    pub connect: Connect,
    /// Absent in --idle mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    pub bench: Bench,
    /// Distinct error texts seen while running, with how often.
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub urls: Vec<String>,
    pub connections: usize,
    pub group_size: usize,
    pub groups: usize,
    pub senders: usize,
    pub rate: f64,
    pub length: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub protocol: &'static str,
    /// Group ids are this prefix and a number (for checking the history afterwards).
    pub group_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connect {
    /// From the first connect to the last join.
    pub total_s: f64,
    /// Connections made and joined per second over `total_s` (the accept rate).
    pub per_second: f64,
    /// One connection: TCP, upgrade, handshake, create and join.
    pub per_connection_ms: Summary,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Load {
    /// Measured `SendMessage` calls made, and what became of them.
    pub sent: u64,
    pub accepted: u64,
    pub failed: u64,
    /// No completion by the end of the drain.
    pub unanswered: u64,
    /// Accepted sends including the warm-up's: what history must hold.
    pub accepted_total: u64,
    /// Accepted measured messages × the members of their group.
    pub expected: u64,
    /// Of `expected`, the deliveries that arrived (each counted once).
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    /// Extra arrivals of a message a connection already had.
    pub duplicated: u64,
    /// Arrivals of a message older than one already seen from the same sender.
    pub out_of_order: u64,
    /// Arrivals of measured messages whose send failed or was never answered.
    pub delivered_unacknowledged: u64,
    /// `OnMessage`s that were not this bench's.
    pub foreign: u64,
    pub connections_lost: u64,
    pub send_rate: f64,
    pub deliveries_per_s: f64,
    /// Send (timestamp in the text) to `OnMessage` arrival.
    pub latency_ms: Summary,
    /// `SendMessage` invocation to completion.
    pub send_completion_ms: Summary,
    /// How late the bench sent against its schedule; high means the bench was
    /// saturated, not the server.
    pub send_lag_ms: Summary,
    /// Per second since sending started (warm-up included).
    pub timeline: Vec<TimelinePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub second: usize,
    pub sent: u64,
    pub delivered: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub pids: Vec<u32>,
    /// CPU seconds (user + system) over the measured window, all processes.
    pub cpu_s: f64,
    pub window_s: f64,
    /// `cpu_s / window_s`: 1.0 is one core busy.
    pub cores: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_delivery: Option<f64>,
    /// Largest RSS seen while running (sampled), and the kernel's peak (VmHWM).
    pub rss_max_mib: f64,
    pub rss_peak_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub connections: usize,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_per_connection_kib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    pub cpu_s: f64,
    pub cores: f64,
    pub rss_peak_mib: f64,
    /// The bench's own RSS growth from before the first connect to when all
    /// were joined, per connection.
    pub rss_per_connection_kib: f64,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub error: String,
    pub count: u64,
}

impl Summary {
    /// From a histogram of microseconds, in milliseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Summary {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The exact counts from every connection's outcome: for each group, each
/// member against each of the group's senders' logs.
pub fn account(outcomes: &[Outcome]) -> Load {
    let mut load = Load::default();
    let groups = outcomes.iter().map(|o| o.group_index + 1).max().unwrap_or(0);
    let mut members: Vec<Vec<&Outcome>> = vec![Vec::new(); groups];
    for outcome in outcomes {
        members[outcome.group_index].push(outcome);
    }
    for group in &members {
        for sender in group.iter().filter(|o| o.sent.is_some()) {
            let log = sender.sent.as_ref().map(|l| l.states.as_slice()).unwrap_or_default();
            load.accepted_total += log.iter().filter(|s| **s & ACCEPTED != 0).count() as u64;
            for &state in log.iter().filter(|s| **s & MEASURED != 0) {
                load.sent += 1;
                if state & ACCEPTED != 0 {
                    load.accepted += 1;
                } else if state & FAILED != 0 {
                    load.failed += 1;
                } else {
                    load.unanswered += 1;
                }
            }
            for receiver in group {
                let received = receiver.received.iter().find(|r| r.sender as usize == sender.index);
                let has = |seq: usize| received.is_some_and(|r| r.has(seq));
                for (seq, &state) in log.iter().enumerate().filter(|(_, s)| **s & MEASURED != 0) {
                    if state & ACCEPTED != 0 {
                        load.expected += 1;
                        if has(seq) {
                            load.delivered += 1;
                        }
                    } else if has(seq) {
                        load.delivered_unacknowledged += 1;
                    }
                }
            }
        }
    }
    load.lost = load.expected - load.delivered;
    for outcome in outcomes {
        load.foreign += outcome.foreign;
        load.connections_lost += u64::from(outcome.lost.is_some());
        for received in &outcome.received {
            load.duplicated += received.duplicates;
            load.out_of_order += received.out_of_order;
        }
    }
    load
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    pub fn mib(kib: u64) -> f64 {
        mib(kib)
    }

    /// The summary for a person.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "next-chat-bench ({}): {} connections in {} groups of {} ({}N) over {} server URL(s), {}",
            self.mode,
            c.connections,
            c.groups,
            c.group_size,
            c.group_prefix,
            c.urls.len(),
            c.protocol
        );
        let p = &self.connect.per_connection_ms;
        let _ = writeln!(
            out,
            "  connect        {:.2} s in all ({:.0} per second); per connection p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.connect.total_s, self.connect.per_second, p.p50, p.p99, p.max
        );
        if let Some(load) = &self.load {
            let _ = writeln!(
                out,
                "  load           {} senders, {} msg/s aggregate, {} characters, {} s measured after {} s warm-up",
                c.senders, c.rate, c.length, c.duration_s, c.warmup_s
            );
            let _ = writeln!(
                out,
                "  sent           {} ({:.1} msg/s): {} accepted, {} failed, {} unanswered; {} accepted with the warm-up's",
                load.sent,
                load.send_rate,
                load.accepted,
                load.failed,
                load.unanswered,
                load.accepted_total
            );
            let _ = writeln!(
                out,
                "  deliveries     expected {}, delivered {}, lost {}, duplicated {}, out of order {} ({:.0}/s)",
                load.expected,
                load.delivered,
                load.lost,
                load.duplicated,
                load.out_of_order,
                load.deliveries_per_s
            );
            if load.delivered_unacknowledged + load.foreign + load.connections_lost > 0 {
                let _ = writeln!(
                    out,
                    "                 {} deliveries of unacknowledged sends, {} foreign messages, {} connections lost",
                    load.delivered_unacknowledged, load.foreign, load.connections_lost
                );
            }
            let line = |name: &str, s: &Summary| {
                format!(
                    "  {name:<14} mean {:.2} ms, p50 {:.2}, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2} ms\n",
                    s.mean, s.p50, s.p90, s.p99, s.p999, s.max
                )
            };
            out.push_str(&line("latency", &load.latency_ms));
            out.push_str(&line("SendMessage", &load.send_completion_ms));
            let _ = writeln!(
                out,
                "  send lag       p99 {:.2} ms, max {:.2} ms (the bench's own lateness against its schedule)",
                load.send_lag_ms.p99, load.send_lag_ms.max
            );
        }
        if let Some(idle) = &self.idle {
            let _ = writeln!(
                out,
                "  idle           {} joined connections: server RSS {:.1} MiB before, {:.1} MiB after = {:.2} KiB per connection",
                idle.connections,
                idle.rss_before_mib,
                idle.rss_after_mib,
                idle.rss_per_connection_kib
            );
        }
        if let Some(server) = &self.server {
            let per_delivery = server
                .cpu_us_per_delivery
                .map(|us| format!(" = {us:.2} µs per delivery"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  server         CPU {:.2} s over {:.1} s ({:.2} cores){per_delivery}; RSS max {:.1} MiB, peak {:.1} MiB",
                server.cpu_s,
                server.window_s,
                server.cores,
                server.rss_max_mib,
                server.rss_peak_mib
            );
        }
        let _ = writeln!(
            out,
            "  bench          CPU {:.2} s ({:.2} cores, {} threads), RSS peak {:.1} MiB, {:.2} KiB per connection",
            self.bench.cpu_s,
            self.bench.cores,
            self.bench.threads,
            self.bench.rss_peak_mib,
            self.bench.rss_per_connection_kib
        );
        for e in &self.errors {
            let _ = writeln!(out, "  error ×{:<6} {}", e.count, e.error);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::SentLog;

    #[test]
    fn accounting_adds_up() {
        // Group 0: connection 0 sends seqs 0 (warm-up), 1, 2 (measured), 3 (failed).
        let sent = SentLog {
            states: vec![ACCEPTED, MEASURED | ACCEPTED, MEASURED | ACCEPTED, MEASURED | FAILED],
        };
        let outcomes = vec![
            Outcome {
                index: 0,
                group_index: 0,
                received: Vec::new(),
                sent: Some(sent),
                foreign: 0,
                lost: None,
            },
            Outcome {
                index: 1,
                group_index: 0,
                received: Vec::new(),
                sent: None,
                foreign: 1,
                lost: Some("gone".into()),
            },
        ];
        let load = account(&outcomes);
        assert_eq!((load.sent, load.accepted, load.failed), (3, 2, 1));
        assert_eq!(load.accepted_total, 3);
        assert_eq!((load.expected, load.delivered, load.lost), (4, 0, 4));
        assert_eq!((load.foreign, load.connections_lost), (1, 1));
    }
}
