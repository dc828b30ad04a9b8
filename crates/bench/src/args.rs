//! The command line: what load to generate, against which servers, and what to
//! report.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Load generator for Next Chat: opens C connections in groups of G, has one
/// member of each group send at an aggregate rate R, and reports deliveries,
/// loss, latency, and the server's CPU and memory.
#[derive(Debug, Clone, Parser)]
#[command(name = "next-chat-bench", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Instead of a fan-out run: fill or probe history at scale.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Hub URL(s); connections go round-robin over them. Repeat the flag or
    /// separate with commas.
    #[arg(long = "url", value_delimiter = ',', default_value = "http://127.0.0.1:5000/next-chat")]
    pub urls: Vec<String>,

    /// Send all of a group's connections to one URL (group g to URL g mod N),
    /// so that each instance serves its own share of the groups, instead of
    /// spreading every group's connections round-robin over the URLs.
    #[arg(long)]
    pub url_per_group: bool,

    /// Number of connections (users bench-0 … bench-(C-1)).
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,

    /// Connections per group: connection i joins group i / G.
    #[arg(short = 'g', long, default_value_t = 20)]
    pub group_size: usize,

    /// Sending connections per group (the group's first ones).
    #[arg(long, default_value_t = 1)]
    pub senders_per_group: usize,

    /// Aggregate send rate, messages per second over all senders.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,

    /// Message length in characters (at least the header's ~20).
    #[arg(short = 'l', long, default_value_t = 200)]
    pub length: usize,

    /// Measured sending time, seconds.
    #[arg(short = 'd', long, default_value_t = 20.0)]
    pub duration: f64,

    /// Sending before the measured window, not counted, seconds.
    #[arg(short = 'w', long, default_value_t = 3.0)]
    pub warmup: f64,

    /// After sending stops, how long to wait at most for the last deliveries, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,

    /// CreateGroup each group before joining it.
    #[arg(long)]
    pub create: bool,

    #[arg(long, value_enum, default_value_t = ProtocolArg::Json)]
    pub protocol: ProtocolArg,

    /// Group names are PREFIX + number; the default is fresh for every run.
    #[arg(long)]
    pub group_prefix: Option<String>,

    /// User ids are PREFIX + connection index.
    #[arg(long, default_value = "bench-")]
    pub user_prefix: String,

    /// Local (source) addresses to connect from, in turn. One source address
    /// has only as many ports per server address as
    /// `net.ipv4.ip_local_port_range` holds (about 28,000), so 100,000
    /// connections to one server need four or more. A list, or a range such as
    /// 127.0.0.2-127.0.0.5 (all of 127.0.0.0/8 is loopback on Linux).
    #[arg(long = "source-ip", value_delimiter = ',', value_name = "IP|IP-IP")]
    pub source_ips: Vec<String>,

    /// Connections being opened (and joined) at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Server process id(s), to report their CPU seconds over the measured
    /// window, CPU per delivery and peak RSS (from /proc).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Only hold C joined, idle connections and report server RSS per connection.
    #[arg(long)]
    pub idle: bool,

    /// In --idle mode, how long to hold the connections before measuring, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,

    /// Once every connection has joined, create this file (empty): with
    /// --go-file, several bench processes can start their load together.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,

    /// Once every connection has joined, wait until this file exists (checked
    /// every 50 ms) before the warm-up starts or the idle connections are held.
    #[arg(long, value_name = "FILE")]
    pub go_file: Option<PathBuf>,

    /// Print the report as JSON on stdout (the progress bar still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Draw the latency distribution and deliveries/s over time into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Tokio worker threads for the bench (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,

    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,

    /// How long a connect (TCP, upgrade, handshake) or a hub call may take, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// A PEM file of CA certificates to trust besides the system's (https:// URLs).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The servers run --auth jwt with the HS256 secret in this file: each
    /// connection's token is minted with it. Or set NEXT_CHAT_JWT_SECRET.
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Fill the server's history tables directly (stop the server first):
    /// --messages over --groups, in SQLite or in MySQL with the groups in Redis.
    /// Prints what it wrote as JSON.
    LoadHistory(crate::history::LoadArgs),
    /// Measure JoinGroup (with OnHistory), GetHistory paging and ListGroupsPage
    /// latency on groups load-history made, through a running server. Prints JSON.
    ProbeHistory(crate::history::ProbeArgs),
    /// Time another user's LeaveGroup + JoinGroup + GetHistory + SendMessage
    /// while members of a group filled with long messages read its history in
    /// a loop (from a process of their own); report the server's RSS growth.
    /// Prints JSON.
    HistoryAttack(crate::attack::AttackArgs),
}

/// Most addresses one `--source-ip` range may name.
const MAX_SOURCES: u32 = 1024;

/// One `--source-ip` item: an address, or an IPv4 range `A-B`, both ends included.
fn parse_sources(item: &str) -> Result<Vec<IpAddr>, String> {
    let bad = |why: &str| format!("--source-ip {item:?}: {why}");
    let Some((first, last)) = item.split_once('-') else {
        return Ok(vec![item.trim().parse().map_err(|_| bad("not an IP address"))?]);
    };
    let first: Ipv4Addr = first.trim().parse().map_err(|_| bad("not an IPv4 range A-B"))?;
    let last: Ipv4Addr = last.trim().parse().map_err(|_| bad("not an IPv4 range A-B"))?;
    let (a, b) = (u32::from(first), u32::from(last));
    if a > b {
        return Err(bad("the range's first address is above its last"));
    }
    if b - a >= MAX_SOURCES {
        return Err(bad(&format!("at most {MAX_SOURCES} addresses")));
    }
    Ok((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Json,
    #[value(alias = "msgpack")]
    Messagepack,
}

impl ProtocolArg {
    pub fn wire(self) -> next_chat_signalr::Protocol {
        match self {
            ProtocolArg::Json => next_chat_signalr::Protocol::Json,
            ProtocolArg::Messagepack => next_chat_signalr::Protocol::MessagePack,
        }
    }
}

impl Args {
    /// `--jwt-secret-file`'s secret, else `NEXT_CHAT_JWT_SECRET`; none: `--auth header`.
    pub fn jwt_secret(&self) -> Result<Option<Vec<u8>>, String> {
        match &self.jwt_secret_file {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))?;
                let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
                Ok(Some(bytes[..end].to_vec()))
            }
            None => Ok(std::env::var("NEXT_CHAT_JWT_SECRET").ok().map(String::into_bytes)),
        }
    }

    /// Refuses combinations that cannot run, with a message naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.group_size == 0 {
            return Err("--group-size must be at least 1".into());
        }
        if self.urls.is_empty() {
            return Err("--url must name at least one server".into());
        }
        if !self.idle {
            if self.senders_per_group == 0 || self.senders_per_group > self.group_size {
                return Err("--senders-per-group must be between 1 and --group-size".into());
            }
            if !(self.rate > 0.0 && self.rate.is_finite()) {
                return Err("--rate must be a positive number of messages per second".into());
            }
            if !(self.duration > 0.0 && self.duration.is_finite()) {
                return Err("--duration must be positive".into());
            }
        }
        for (name, value) in [
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--settle", self.settle),
            ("--timeout", self.timeout),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(format!("{name} must be a number of seconds, 0 or more"));
            }
        }
        if self.length == 0 || self.length > 16384 {
            return Err("--length must be between 1 and 16384 characters".into());
        }
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        self.sources()?;
        Ok(())
    }

    /// `--source-ip`, ranges expanded; empty: the kernel picks the source.
    pub fn sources(&self) -> Result<Vec<IpAddr>, String> {
        let mut all = Vec::new();
        for item in &self.source_ips {
            all.extend(parse_sources(item)?);
        }
        Ok(all)
    }

    /// Refuses a run that would need more local ports per (source, server)
    /// pair than the kernel hands out (`range`: how many ephemeral ports).
    pub fn check_ports(&self, range: u64) -> Result<(), String> {
        let pairs = (self.sources()?.len().max(1) * self.urls.len()) as u64;
        let per_pair = (self.connections as u64).div_ceil(pairs);
        if per_pair > range {
            let needed = (self.connections as u64).div_ceil(range * self.urls.len() as u64);
            return Err(format!(
                "{} connections need {per_pair} local ports per source address and server, \
                 but net.ipv4.ip_local_port_range holds {range}: give --source-ip at least \
                 {needed} addresses (e.g. --source-ip 127.0.0.2-127.0.0.{}) or widen the range",
                self.connections,
                needed + 1
            ));
        }
        Ok(())
    }

    pub fn groups(&self) -> usize {
        self.connections.div_ceil(self.group_size)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("next-chat-bench").chain(extra.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn source_ranges_expand_and_bad_ones_name_the_flag() {
        let a = args(&["--source-ip", "127.0.0.2-127.0.0.4,::1", "--source-ip", "10.0.0.1"]);
        let expected: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1", "10.0.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(a.sources(), Ok(expected));
        for bad in ["127.0.0.5-127.0.0.2", "127.0.0.x", "::1-::2", "10.0.0.0-10.0.8.0"] {
            let error = args(&["--source-ip", bad]).validate().unwrap_err();
            assert!(error.starts_with("--source-ip"), "{bad}: {error}");
        }
    }

    #[test]
    fn too_many_connections_for_the_ports_ask_for_more_sources() {
        let one = args(&["-c", "100000"]);
        let error = one.check_ports(28_232).unwrap_err();
        assert!(error.contains("at least 4 addresses"), "{error}");
        let four = args(&["-c", "100000", "--source-ip", "127.0.0.2-127.0.0.5"]);
        assert_eq!(four.check_ports(28_232), Ok(()));
        // Two servers share the load too.
        let two = args(&["-c", "50000", "--url", "http://a:1/h,http://b:1/h"]);
        assert_eq!(two.check_ports(28_232), Ok(()));
    }
}
