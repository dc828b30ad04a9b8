//! A Redis Cluster of one test's own: three masters with one replica each,
//! `redis-server --cluster-enabled yes` on free ports (and their cluster bus
//! ports, 10000 above), joined by `redis-cli --cluster create`, without
//! persistence, in a temporary directory. Dropping it kills every node.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long forming the cluster, or a failover, may take.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node may be unreachable before the others fail it over. Low, so
/// failover tests take a few seconds.
const NODE_TIMEOUT_MS: u64 = 1000;

struct Node {
    port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// A port that is free, and whose cluster bus port (10000 above) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("a bound socket has an address").port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn start_node(dir: &Path, port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        // Replicas copy their master at once (not after the default 5 s wait
        // for more replicas), and any replica may take over: a test kills a
        // master seconds after the cluster formed.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--cluster-replica-validity-factor", "0"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is on PATH")
}

/// `redis-cli -p PORT ARGS...`'s output, or `None` when it fails.
async fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster of three masters with a replica
    /// each, and waits until every node says the cluster is ok.
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut nodes = Vec::new();
        while nodes.len() < 6 {
            // A port found free may be taken before redis-server binds it
            // (by another test's connection): then the node exits, and it
            // starts again on another port.
            let port = free_cluster_port();
            let mut child = start_node(dir.path(), port);
            loop {
                if cli(port, &["PING"]).await.as_deref() == Some("PONG\n") {
                    nodes.push(Node { port, child: Some(child) });
                    break;
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                assert!(Instant::now() < deadline, "redis-server on {port} did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        let addresses: Vec<String> =
            cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("redis-cli is on PATH");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok(deadline).await;
        // Every replica has its master's data, so it can take over.
        for node in &cluster.nodes {
            loop {
                let info = cli(node.port, &["INFO", "replication"]).await.unwrap_or_default();
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {} is not in sync: {info}", node.port);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster
    }

    /// The seed list for `--redis` with `--redis-cluster`: every node.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the masters now, from the first live node's view.
    pub async fn master_ports(&self) -> Vec<u16> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some(listing) = cli(node.port, &["CLUSTER", "NODES"]).await else { continue };
            return listing
                .lines()
                .filter(|line| {
                    let flags = line.split(' ').nth(2).unwrap_or("");
                    flags.contains("master") && !flags.contains("fail")
                })
                .filter_map(|line| {
                    let address = line.split(' ').nth(1)?;
                    address.split(['@', ':']).nth(1)?.parse().ok()
                })
                .collect();
        }
        Vec::new()
    }

    /// The port of the master serving `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> u16 {
        let node = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let slot = cli(node.port, &["CLUSTER", "KEYSLOT", key]).await.expect("CLUSTER KEYSLOT");
        let slot: u16 = slot.trim().parse().expect("a slot number");
        let shards = cli(node.port, &["CLUSTER", "SLOTS"]).await.expect("CLUSTER SLOTS");
        // redis-cli prints the nested reply one value per line: start, end,
        // then the master's ip and port first among the nodes.
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && lines[i + 2] == "127.0.0.1"
                && let Ok(port) = lines[i + 3].parse::<u16>()
                && (start..=end).contains(&slot)
            {
                return port;
            }
            i += 1;
        }
        panic!("no master serves slot {slot}: {shards}");
    }

    /// SIGKILLs the node on `port`, as a crash would.
    pub async fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Waits until every live node says the cluster is ok (after a kill: its
    /// replica has taken over).
    pub async fn wait_until_ok(&self, deadline: Instant) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let info = cli(node.port, &["CLUSTER", "INFO"]).await.unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster is not ok on {}: {info}",
                    node.port
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits until the live nodes have marked the killed master on `port` as
    /// failed and its replica serves its slots.
    pub async fn wait_for_failover(&self, port: u16) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let marker = format!("127.0.0.1:{port}@");
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let listing = cli(node.port, &["CLUSTER", "NODES"]).await.unwrap_or_default();
                let failed = listing.lines().any(|line| {
                    line.contains(&marker)
                        && line.split(' ').nth(2).is_some_and(|flags| flags.contains("fail"))
                });
                if failed {
                    break;
                }
                assert!(Instant::now() < deadline, "node {port} was not failed over: {listing}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.wait_until_ok(deadline).await;
    }
}
