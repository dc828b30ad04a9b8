//! A TCP proxy a test owns, to take a backend away from the servers of one test
//! while every other test keeps using it: the servers connect through the
//! proxy's port, and `cut` resets every forwarded connection and refuses new
//! ones until `restore`; `drop_connections` resets them and accepts new ones.
//! `retarget` sends later connections elsewhere, as a load balancer that moves
//! a client to another instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to a target address, e.g. MariaDB's.
pub struct TcpProxy {
    /// The local port to give the servers instead of the target's.
    pub port: u16,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

struct State {
    target: Mutex<String>,
    /// False while cut: new connections are reset as soon as they are accepted.
    open: AtomicBool,
    /// Bumped by every `cut`, which ends every connection forwarded before it.
    cuts: watch::Sender<u64>,
}

impl TcpProxy {
    /// Starts forwarding a free local port to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy has an address").port();
        let state = Arc::new(State {
            target: Mutex::new(target.to_string()),
            open: AtomicBool::new(true),
            cuts: watch::channel(0).0,
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        TcpProxy { port, state, accept }
    }

    /// Resets every open connection (both ends) and every later one until
    /// `restore`: to its clients, the target is gone.
    pub fn cut(&self) {
        // Closed before the bump: a connection accepted concurrently either
        // sees the bump or sees `open` false (see `accept_loop`).
        self.state.open.store(false, Ordering::SeqCst);
        self.state.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Forwards the connections made from now on to `target` instead; those
    /// forwarded already stay where they are.
    pub fn retarget(&self, target: &str) {
        *self.state.target.lock() = target.to_string();
    }

    /// Resets every open connection (both ends) but keeps forwarding new ones:
    /// a network blip, after which a client can reconnect at once.
    pub fn drop_connections(&self) {
        self.state.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        // Subscribe before looking at `open`, so that a `cut` racing with this
        // connection cannot be missed by both checks.
        let cut = state.cuts.subscribe();
        if !state.open.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        let target = state.target.lock().clone();
        tokio::spawn(forward(client, target, cut));
    }
}

async fn forward(mut client: TcpStream, target: String, mut cut: watch::Receiver<u64>) {
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        reset(client);
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.changed() => {
            reset(client);
            reset(upstream);
        }
    }
}

/// Closes with a TCP RST, as a peer that vanished would look after a timeout.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
