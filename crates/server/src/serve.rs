//! Serves the router over HTTP/1 with hyper's connection builder rather than
//! `axum::serve`, for three bounds that one lacks: the time a client has to send
//! a request head (hyper starts the same timer when a kept-alive connection
//! falls idle, so it bounds idle connections too), the size of that head, and
//! the number of TCP connections open at once. Beyond the last, a new connection
//! is answered 503 and closed, so file descriptors never run out. WebSocket
//! upgrades, TCP_NODELAY, the client's address (axum's `ConnectInfo`, for the
//! per-address cap) and graceful shutdown work as they did. With a TLS acceptor
//! each connection is HTTPS (and its upgrades WSS); its handshake must finish
//! within the request-head timeout.
//!
//! One more bound is per client address: connections that have not yet made an
//! authenticated request (`max_unauthenticated_connections_per_ip`), so that one
//! address holding half-sent heads cannot take every connection. Beyond it a
//! new connection is closed at once. A connection stops counting when a request
//! on it authenticates: the authenticator calls [`mark_authenticated`], which
//! finds the connection through a task-local set around each request.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use tracing::{debug, info, warn};

/// File descriptors kept back from the default connection cap for everything
/// else the process opens: database and Redis connections, the SQLite files,
/// and the connections being refused.
const RESERVED_FILES: usize = 256;

/// Connections being answered 503 at once; more over the cap are closed
/// without an answer, so refusing cannot itself exhaust descriptors.
const REFUSING_AT_ONCE: usize = 64;

/// How long a refused connection may take to be told and closed.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// At most this much of a refused client's request is read (and discarded), so
/// that closing the socket does not reset the connection before the client has
/// read the 503.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// After an accept error other than a connection's own (say, out of file
/// descriptors), wait this long before accepting again rather than spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How often at most the cap being reached is logged at warn level.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The HTTP-level bounds, from the configuration.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// `http_header_timeout_secs`.
    pub header_timeout: Duration,
    /// `http_max_head_bytes`: hyper's read buffer, so a head must fit in it.
    pub max_head_bytes: usize,
    /// `max_http_connections`.
    pub max_connections: usize,
    /// `max_unauthenticated_connections_per_ip`.
    pub max_unauthenticated_per_ip: usize,
    /// Counts the connections closed for being over the last.
    pub unauthenticated_refused: Counter,
}

/// The default `max_http_connections`: the open-file limit less
/// [`RESERVED_FILES`] (half the limit when that is small).
pub fn default_max_connections() -> usize {
    let limit = open_file_limit().unwrap_or(1024);
    limit.saturating_sub(RESERVED_FILES).max(limit / 2).max(1)
}

/// The process's soft `RLIMIT_NOFILE`.
pub fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct it is given, which lives here.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (result == 0).then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// Accepts and serves connections until `shutdown` resolves, then lets every
/// connection finish its request in progress (hyper's graceful shutdown) and
/// returns once all are closed, upgraded ones included (their hub closes them).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let (open, mut open_rx) = watch::channel(0usize);
    let open = Arc::new(open);
    let (stopping, stopping_rx) = watch::channel(false);
    let refusals = Refusals::new(limits.max_connections);
    let unauthenticated = Arc::new(Unauthenticated::new(
        limits.max_unauthenticated_per_ip,
        limits.unauthenticated_refused.clone(),
    ));
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    warn!(%error, "accept failed; pausing before the next");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if *open.borrow() >= limits.max_connections {
            refusals.refuse(tcp, peer);
            continue;
        }
        let Some(pending) = Unauthenticated::admit(&unauthenticated, peer.ip()) else {
            // Closed at once: answering would cost what the cap saves.
            drop(tcp);
            continue;
        };
        // Chat records are small and latency matters: no Nagle delay between
        // a message and the completion that follows it.
        if let Err(error) = tcp.set_nodelay(true) {
            warn!(%error, "cannot set TCP_NODELAY");
        }
        let io = Counted::new(tcp, open.clone());
        let (router, limits, stopping) = (router.clone(), limits.clone(), stopping_rx.clone());
        match &tls {
            None => {
                tokio::spawn(serve_connection(io, peer, pending, router, limits, stopping));
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(io);
                tokio::spawn(async move {
                    match tokio::time::timeout(limits.header_timeout, handshake).await {
                        Ok(Ok(io)) => {
                            serve_connection(io, peer, pending, router, limits, stopping).await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    stopping.send_replace(true);
    info!(open = *open_rx.borrow(), "HTTP: no longer accepting; waiting for open connections");
    let _ = open_rx.wait_for(|open| *open == 0).await;
}

async fn serve_connection(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    pending: Arc<Pending>,
    router: Router,
    limits: HttpLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        CONNECTION.scope(Arc::clone(&pending), router.clone().call(request))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head_bytes);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service).with_upgrades());
    tokio::select! {
        result = connection.as_mut() => return log_end(result, peer),
        _ = stopping.wait_for(|stopping| *stopping) => {}
    }
    connection.as_mut().graceful_shutdown();
    log_end(connection.await, peer);
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(error) = result {
        // Header timeouts, oversized heads, clients that went away: the client's
        // business, not the operator's.
        debug!(%peer, %error, "HTTP connection ended with an error");
    }
}

/// Errors of one incoming connection (it was reset before it was accepted):
/// nothing to do but accept the next.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Connections over the cap: answered 503 naming the setting while at most
/// [`REFUSING_AT_ONCE`] are being answered, else closed at once.
///
/// Why answer rather than only close: a client (or its operator) then reads which
/// limit it met instead of guessing at a reset; and the answer is written at once,
/// without waiting for the request, so it costs one descriptor for at most
/// [`REFUSAL_TIME`].
struct Refusals {
    response: bytes::Bytes,
    at_once: Arc<AtomicUsize>,
    last_warning: parking_lot::Mutex<Option<Instant>>,
    cap: usize,
}

impl Refusals {
    fn new(cap: usize) -> Self {
        let body = format!(
            "the server has as many HTTP connections open as it allows (max_http_connections = {cap}); try again later\n"
        );
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        Self {
            response: response.into(),
            at_once: Arc::new(AtomicUsize::new(0)),
            last_warning: parking_lot::Mutex::new(None),
            cap,
        }
    }

    fn refuse(&self, tcp: TcpStream, peer: SocketAddr) {
        self.warn_now_and_then();
        debug!(%peer, "HTTP connection refused: max_http_connections reached");
        if self.at_once.fetch_add(1, Ordering::AcqRel) >= REFUSING_AT_ONCE {
            self.at_once.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let response = self.response.clone();
        let at_once = self.at_once.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_TIME, answer(tcp, &response)).await;
            at_once.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn warn_now_and_then(&self) {
        let mut last = self.last_warning.lock();
        if last.is_none_or(|at| at.elapsed() >= CAP_WARNING_INTERVAL) {
            *last = Some(Instant::now());
            warn!(
                max_http_connections = self.cap,
                "HTTP connection cap reached: refusing new connections with 503"
            );
        }
    }
}

async fn answer(mut tcp: TcpStream, response: &[u8]) -> io::Result<()> {
    tcp.write_all(response).await?;
    tcp.shutdown().await?;
    let mut discard = [0u8; 4096];
    let mut read = 0;
    while read < REFUSAL_DRAIN_BYTES {
        match tcp.read(&mut discard).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}

tokio::task_local! {
    /// The connection whose request is being served, for [`mark_authenticated`].
    static CONNECTION: Arc<Pending>;
}

/// Marks the connection of the request being served as authenticated: it no
/// longer counts against `max_unauthenticated_connections_per_ip`. Called by
/// the authenticator when a credential passes; outside a request (or a second
/// time) it does nothing.
pub fn mark_authenticated() {
    let _ = CONNECTION.try_with(|pending| pending.release());
}

/// Connections per client address that have not authenticated yet.
struct Unauthenticated {
    cap: usize,
    per_ip: std::sync::Mutex<HashMap<IpAddr, usize>>,
    refused: Counter,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl Unauthenticated {
    fn new(cap: usize, refused: Counter) -> Self {
        Self {
            cap,
            per_ip: std::sync::Mutex::new(HashMap::new()),
            refused,
            last_warning: std::sync::Mutex::new(None),
        }
    }

    /// Counts a new connection from `ip`, unless that address is at the cap.
    fn admit(this: &Arc<Self>, ip: IpAddr) -> Option<Arc<Pending>> {
        // An IPv4 client of a dual-stack socket is the same address as over IPv4.
        let ip = ip.to_canonical();
        {
            let mut per_ip = lock(&this.per_ip);
            let count = per_ip.entry(ip).or_insert(0);
            if *count < this.cap {
                *count += 1;
                return Some(Arc::new(Pending {
                    ip,
                    table: Arc::clone(this),
                    counted: std::sync::atomic::AtomicBool::new(true),
                }));
            }
        }
        this.refused.inc();
        debug!(%ip, "connection closed: max_unauthenticated_connections_per_ip reached");
        let mut last = lock(&this.last_warning);
        if last.is_none_or(|at| at.elapsed() >= CAP_WARNING_INTERVAL) {
            *last = Some(Instant::now());
            warn!(
                %ip,
                max_unauthenticated_connections_per_ip = this.cap,
                "an address holds as many unauthenticated connections as allowed: closing its new ones"
            );
        }
        None
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = lock(&self.per_ip);
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// One connection counted in [`Unauthenticated`] until it authenticates or
/// closes, whichever comes first.
struct Pending {
    ip: IpAddr,
    table: Arc<Unauthenticated>,
    counted: std::sync::atomic::AtomicBool,
}

impl Pending {
    fn release(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.table.release(self.ip);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.release();
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A TCP stream counted as open until dropped. hyper hands the stream itself to
/// an upgraded (WebSocket) connection, so the count holds for its whole life.
struct Counted {
    tcp: TcpStream,
    open: Arc<watch::Sender<usize>>,
}

impl Counted {
    fn new(tcp: TcpStream, open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|open| *open += 1);
        Self { tcp, open }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.send_modify(|open| *open = open.saturating_sub(1));
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
