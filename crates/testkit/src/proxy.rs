//! A TCP proxy a test owns, to take a backend away from the servers of one test
//! while every other test keeps using it: the servers connect through the
//! proxy's port, and `cut` resets every forwarded connection and refuses new
//! ones until `restore`; `drop_connections` resets them and accepts new ones.
//! `retarget` sends later connections elsewhere, as a load balancer that moves
//! a client to another instance.
//!
//! Quieter faults: `set_latency` delays every forwarded chunk, and `half_open`
//! silences every connection without closing it, as a dead NAT or a pulled
//! cable: the peer's writes are accepted (the proxy's kernel acknowledges
//! them) and nothing comes back, ever. `restore` forwards new connections
//! again; those silenced stay silent (never forwarded, never closed) until a
//! `cut`, a `drop_connections` or the proxy's drop resets them, so a client
//! that does not notice a dead connection by itself stays stuck on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
    /// True while half-open: new connections are accepted and left silent.
    half_open: AtomicBool,
    /// Bumped by every `cut`, which ends every connection forwarded before it.
    cuts: watch::Sender<u64>,
    /// Bumped by every `half_open`, which silences every connection forwarded before it.
    silences: watch::Sender<u64>,
    /// How long each chunk waits before it is passed on, in microseconds.
    latency_micros: AtomicU64,
}

impl State {
    fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }
}

/// Bytes read at once from one side; also what one delayed chunk holds at most.
const CHUNK: usize = 16 * 1024;

/// Chunks in flight per direction while they wait out the latency: beyond it
/// the proxy stops reading, and the sender's own buffers fill.
const CHUNKS_IN_FLIGHT: usize = 256;

impl TcpProxy {
    /// Starts forwarding a free local port to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy has an address").port();
        let state = Arc::new(State {
            target: Mutex::new(target.to_string()),
            open: AtomicBool::new(true),
            half_open: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            silences: watch::channel(0).0,
            latency_micros: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        TcpProxy { port, state, accept }
    }

    /// `127.0.0.1:PORT`, to point a client at instead of the target.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
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

    /// Resets every open connection (both ends), silent ones included, but
    /// keeps forwarding new ones: a network blip, after which a client can
    /// reconnect at once.
    pub fn drop_connections(&self) {
        self.state.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Delays every chunk forwarded from now on, in both directions, by
    /// `latency` (in order: a chunk never overtakes an earlier one); zero
    /// forwards at once again.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.state.latency_micros.store(micros, Ordering::Relaxed);
    }

    /// Silences every open connection and every new one until `restore`:
    /// nothing is forwarded either way and nothing is closed (no FIN, no RST),
    /// so each client sees a connection that simply never answers. What was
    /// on its way is lost.
    pub fn half_open(&self) {
        // As in `cut`: set before the bump, read after subscribing.
        self.state.half_open.store(true, Ordering::SeqCst);
        self.state.silences.send_modify(|silences| *silences += 1);
    }

    /// Forwards new connections again (after `cut` or `half_open`). The
    /// connections `half_open` silenced stay silent and open: their clients
    /// must notice by themselves and connect again.
    pub fn restore(&self) {
        self.state.half_open.store(false, Ordering::SeqCst);
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
        // Subscribe before looking at `open` and `half_open`, so that a `cut`
        // or `half_open` racing with this connection cannot be missed by both
        // checks.
        let cut = state.cuts.subscribe();
        let silence = state.silences.subscribe();
        if !state.open.load(Ordering::SeqCst) {
            reset(client);
            continue;
        }
        if state.half_open.load(Ordering::SeqCst) {
            tokio::spawn(hold(vec![client], cut));
            continue;
        }
        let target = state.target.lock().clone();
        tokio::spawn(forward(client, target, Arc::clone(&state), cut, silence));
    }
}

async fn forward(
    mut client: TcpStream,
    target: String,
    state: Arc<State>,
    mut cut: watch::Receiver<u64>,
    mut silence: watch::Receiver<u64>,
) {
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        reset(client);
        return;
    };
    let ended = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let pumps = async {
            tokio::try_join!(
                pump(client_read, upstream_write, &state),
                pump(upstream_read, client_write, &state),
            )
        };
        tokio::select! {
            // A cut or a silence wins over data that arrived with it.
            biased;
            _ = cut.changed() => Ended::Cut,
            _ = silence.changed() => Ended::Silenced,
            pumped = pumps => Ended::Pumped(pumped.is_ok()),
        }
    };
    match ended {
        // Both sides closed in turn: dropping closes them normally.
        Ended::Pumped(true) => {}
        // One side failed (say it was reset): so is the other.
        Ended::Pumped(false) | Ended::Cut => {
            reset(client);
            reset(upstream);
        }
        Ended::Silenced => hold(vec![client, upstream], cut).await,
    }
}

enum Ended {
    /// Both directions reached their end; `false` when one failed.
    Pumped(bool),
    Cut,
    Silenced,
}

/// Keeps silenced connections open without reading or writing, until a cut
/// resets them.
async fn hold(streams: Vec<TcpStream>, mut cut: watch::Receiver<u64>) {
    let _ = cut.changed().await;
    streams.into_iter().for_each(reset);
}

/// Copies one direction: each chunk read is written `latency` later, in
/// order; the end of the reader's stream shuts the writer's side down.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    state: &State,
) -> std::io::Result<()> {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    // Ends (dropping `chunks`) at the end of the stream; the writer then
    // writes what is left and shuts its side down.
    let read = async move {
        loop {
            let mut chunk = vec![0; CHUNK];
            let n = from.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            chunk.truncate(n);
            let at = Instant::now() + state.latency();
            if chunks.send((at, chunk)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Closes with a TCP RST, as a peer that vanished would look after a timeout.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that echoes every byte back on each connection.
    async fn echo() -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (addr, task)
    }

    /// Sends `bytes` and reads as many back, within `within`.
    async fn round_trip(stream: &mut TcpStream, bytes: &[u8], within: Duration) -> Option<Vec<u8>> {
        stream.write_all(bytes).await.ok()?;
        let mut back = vec![0; bytes.len()];
        match tokio::time::timeout(within, stream.read_exact(&mut back)).await {
            Ok(Ok(_)) => Some(back),
            _ => None,
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn forwards_both_ways_and_in_order() {
        let (target, _echo) = echo().await;
        let proxy = TcpProxy::start(&target).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut stream, &bytes, WAIT).await.as_deref(), Some(&bytes[..]));
    }

    #[tokio::test]
    async fn latency_delays_each_direction_and_keeps_the_order() {
        let (target, _echo) = echo().await;
        let proxy = TcpProxy::start(&target).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let latency = Duration::from_millis(150);
        proxy.set_latency(latency);
        for i in 0..3u8 {
            let started = Instant::now();
            let back = round_trip(&mut stream, &[i; 100], WAIT).await;
            let took = started.elapsed();
            assert_eq!(back, Some(vec![i; 100]), "round trip {i}");
            // Once on the way there, once on the way back.
            assert!(took >= 2 * latency, "round trip {i} took {took:?}, under twice {latency:?}");
        }
        // Many small writes at once arrive whole and in order.
        let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        for piece in bytes.chunks(1000) {
            stream.write_all(piece).await.unwrap();
        }
        let mut back = vec![0; bytes.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, bytes);

        proxy.set_latency(Duration::ZERO);
        let started = Instant::now();
        assert!(round_trip(&mut stream, b"fast", WAIT).await.is_some());
        assert!(started.elapsed() < latency, "no delay once set back to zero");
    }

    #[tokio::test]
    async fn half_open_answers_nothing_and_closes_nothing_until_restored() {
        let (target, _echo) = echo().await;
        let proxy = TcpProxy::start(&target).await;
        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut before, b"hello", WAIT).await.is_some());

        proxy.half_open();
        let quiet = Duration::from_millis(500);
        // The open connection: the write is taken, no answer, no close.
        assert_eq!(round_trip(&mut before, b"anyone?", quiet).await, None);
        // A new connection is accepted, and silent too.
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut during, b"anyone?", quiet).await, None);
        for stream in [&mut before, &mut during] {
            // Neither FIN (a read of 0) nor RST (an error): the read just waits.
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(quiet, stream.read(&mut byte)).await;
            assert!(read.is_err(), "the silent connection was closed: {read:?}");
            assert!(stream.write_all(b"more").await.is_ok(), "writes are still taken");
        }

        proxy.restore();
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after, b"back", WAIT).await.as_deref(), Some(&b"back"[..]));
        // The silenced ones stay silent and open.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(quiet, before.read(&mut byte)).await;
        assert!(read.is_err(), "a silenced connection came back: {read:?}");

        // Until a reset ends them.
        proxy.drop_connections();
        for stream in [&mut before, &mut during] {
            let read = tokio::time::timeout(WAIT, stream.read(&mut byte)).await;
            assert!(matches!(read, Ok(Err(_)) | Ok(Ok(0))), "reset: {read:?}");
        }
        assert!(round_trip(&mut after, b"still", WAIT).await.is_none(), "after was reset too");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut fresh, b"again", WAIT).await.is_some());
    }

    #[tokio::test]
    async fn cut_resets_and_refuses_until_restored() {
        let (target, _echo) = echo().await;
        let proxy = TcpProxy::start(&target).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut stream, b"hello", WAIT).await.is_some());
        proxy.cut();
        assert!(round_trip(&mut stream, b"gone", WAIT).await.is_none());
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut refused, b"gone", WAIT).await.is_none());
        proxy.restore();
        let mut back = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut back, b"back", WAIT).await.is_some());
    }
}
