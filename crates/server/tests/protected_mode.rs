//! Protected mode: with `auth: header` a client that is not on loopback gets
//! 403 naming `--auth jwt` and `allow_remote_header_auth`, unless that is set;
//! a loopback client always gets in. The remote client is real: it connects
//! from a network namespace of the test's own, over a veth pair with addresses
//! of its own. Creating one needs root and `ip`; where either is missing the
//! tests say so and skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(10);

/// A network namespace joined to this one by a veth pair: the host side has
/// `host`, the namespace's side `host` + 1 in the same /24. Deleted on drop.
struct Netns {
    name: String,
    host_link: String,
    host: String,
    guest: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip").args(args).output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Netns {
    /// A namespace with addresses unique to this test process and call, or why
    /// there cannot be one here.
    fn create() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".to_owned());
        }
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (a, b) = (100 + pid % 100, (pid / 100 % 50) * 5 + u32::from(n % 5));
        let netns = Netns {
            name: format!("ncpm{pid}-{n}"),
            host_link: format!("vpm{}h{n}", pid % 1_000_000),
            host: format!("10.{a}.{b}.1"),
            guest: format!("10.{a}.{b}.2"),
        };
        let guest_link = format!("vpm{}g{n}", pid % 1_000_000);
        ip(&["netns", "add", &netns.name])?;
        // From here on, drop deletes what was made.
        ip(&["link", "add", &netns.host_link, "type", "veth", "peer", "name", &guest_link])?;
        ip(&["link", "set", &guest_link, "netns", &netns.name])?;
        ip(&["addr", "add", &format!("{}/24", netns.host), "dev", &netns.host_link])?;
        ip(&["link", "set", &netns.host_link, "up"])?;
        let inside = ["netns", "exec", &netns.name, "ip"];
        ip(&[&inside[..], &["addr", "add", &format!("{}/24", netns.guest), "dev", &guest_link]]
            .concat())?;
        ip(&[&inside[..], &["link", "set", &guest_link, "up"]].concat())?;
        ip(&[&inside[..], &["link", "set", "lo", "up"]].concat())?;
        Ok(netns)
    }

    /// Runs `request` from inside the namespace to `to` and returns the
    /// response (status, body). The socket is made on a thread of its own that
    /// enters the namespace, so nothing else of the test moves there.
    async fn request(&self, to: SocketAddr, request: String) -> (u16, String) {
        let path = format!("/var/run/netns/{}", self.name);
        let (done, answer) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: setns moves only this thread, into a namespace whose file
            // stays open for the call.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let _ = done.send(http(to, &request));
        });
        tokio::time::timeout(WAIT, answer).await.expect("an answer in time").expect("the thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and so both.
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// One request over a blocking socket: (status, body).
fn http(to: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&to, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("the response");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn negotiate(user: &str) -> String {
    format!(
        "POST /next-chat/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: {user}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

/// A server in header mode on every address; returns it and its port.
async fn server(dir: &std::path::Path, extra: &[&str]) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(next_chat_testkit::binary("next-chat-server"))
        .args(["--listen", "0.0.0.0:0", "--database", "sqlite://protected.db"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("next-chat-server starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.strip_prefix("listening on ") {
                return address.rsplit(':').next().and_then(|p| p.trim().parse().ok());
            }
        }
        None
    })
    .await
    .expect("listening in time")
    .expect("a port");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// The namespace, or `None` after saying why this test skips.
fn netns_or_skip(test: &str) -> Option<Netns> {
    match Netns::create() {
        Ok(netns) => Some(netns),
        Err(why) => {
            eprintln!(
                "SKIPPED {test}: it needs a network namespace of its own (root and `ip`): {why}"
            );
            None
        }
    }
}

#[tokio::test]
async fn header_mode_refuses_clients_off_loopback_naming_both_ways_out() {
    let Some(netns) = netns_or_skip("header_mode_refuses_clients_off_loopback") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = server(dir.path(), &[]).await;
    let remote: SocketAddr = format!("{}:{port}", netns.host).parse().unwrap();

    let (status, body) = netns.request(remote, negotiate("ann")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--auth jwt"), "{body}");
    assert!(body.contains("allow_remote_header_auth: true"), "{body}");
    // The web page explains the same rather than load and fail.
    let (status, page) = netns.request(remote, get("/")).await;
    assert_eq!((status, page.as_str()), (403, body.as_str()));
    assert_eq!(netns.request(remote, get("/web-config.json")).await.0, 403);
    // Probes and scrapers carry no identity: still answered.
    assert_eq!(netns.request(remote, get("/healthz")).await, (200, "ok\n".to_owned()));
    let (_, metrics) = netns.request(remote, get("/metrics")).await;
    assert!(metrics.contains("nextchat_remote_header_auth_refused_total 3\n"), "{metrics}");

    // A client on loopback always gets in.
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, body) =
        tokio::task::spawn_blocking(move || http(local, &negotiate("ann"))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("connectionToken"), "{body}");
}

#[tokio::test]
async fn with_the_opt_in_clients_off_loopback_get_in() {
    let Some(netns) = netns_or_skip("with_the_opt_in_clients_off_loopback_get_in") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = server(dir.path(), &["--allow-remote-header-auth"]).await;
    let remote: SocketAddr = format!("{}:{port}", netns.host).parse().unwrap();
    let (status, body) = netns.request(remote, negotiate("ann")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("connectionToken"), "{body}");
    assert_eq!(netns.request(remote, get("/")).await.0, 200);
    let local: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, _) =
        tokio::task::spawn_blocking(move || http(local, &negotiate("bob"))).await.unwrap();
    assert_eq!(status, 200);
}
