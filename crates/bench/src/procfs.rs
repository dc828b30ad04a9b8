//! CPU time and memory of processes (the server's, and the bench's own), read
//! from /proc.

use std::io;

/// CPU seconds (user + system, all threads) the process has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3 of the line; utime is 14 and stime 15.
    let parse = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat has no field {}", i + 3)))
    };
    let ticks = parse(11)? + parse(12)?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// (current RSS, peak RSS since the process started), in KiB.
pub fn rss_kib(pid: u32) -> io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Checks that every pid names a running process, so a typo fails at the start.
pub fn check(pids: &[u32]) -> Result<(), String> {
    for pid in pids {
        cpu_seconds(*pid)
            .map_err(|e| format!("--server-pid {pid}: cannot read /proc/{pid}: {e}"))?;
    }
    Ok(())
}

/// The sum over `pids` of their CPU seconds; a process that is gone counts 0.
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu_seconds(*pid).unwrap_or(0.0)).sum()
}

/// The sum over `pids` of (current RSS, peak RSS), KiB.
pub fn total_rss(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|pid| rss_kib(*pid).unwrap_or((0, 0)))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Raises this process's open-file limit to its hard limit, so that thousands
/// of connections do not fail on the usual soft limit of 1024. Returns the limit.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// How many ephemeral ports the kernel hands out per (source, destination)
/// pair: the width of `net.ipv4.ip_local_port_range` (28,232 by default).
pub fn local_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(28_232)
}

fn parse_port_range(text: &str) -> Option<u64> {
    let mut ends = text.split_whitespace().map(|n| n.parse::<u64>());
    let (low, high) = (ends.next()?.ok()?, ends.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).expect("own stat") >= 0.0);
        let (rss, peak) = rss_kib(pid).expect("own status");
        assert!(rss > 0 && peak >= rss);
        assert!(check(&[pid]).is_ok());
        assert!(check(&[u32::MAX]).is_err());
    }

    #[test]
    fn port_ranges_are_counted_inclusively() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("1024 65535"), Some(64_512));
        assert_eq!(parse_port_range("9 8"), None);
        assert_eq!(parse_port_range(""), None);
        assert!(local_ports() > 0);
    }
}
