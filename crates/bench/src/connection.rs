//! One bench connection on a raw WebSocket: connect and handshake, create and
//! join its group, then receive (and, for a sender, send on a fixed schedule)
//! until told to finish, keeping exact counts of what arrived.
//!
//! The bench does not use `next-chat-client` for this: that library hands
//! every message to another task through a channel as owned strings, checks it
//! against a per-group set of recent ids, and decodes it into a value tree
//! first. That is right for an application and about as costly per delivery as
//! the server's own work, which would make the bench measure itself. Here a
//! connection is one task that reads the header of each `OnMessage` in place
//! (see `wire`), and the codecs of `next-chat-signalr` do the rest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use next_chat_contract::{JoinResult, Method};
use next_chat_signalr::handshake::{self, HandshakeRequest, HandshakeResponse};
use next_chat_signalr::{Protocol, Value};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::payload::{self, Header, Phase};
use crate::stats::Stats;
use crate::wire::{self, Completion, Record, Records};

/// The server closes a connection it heard nothing from for 30 s; receivers
/// send a Ping this often (plus jitter, so 10,000 of them do not ping at once).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The hub protocol version the bench asks for.
const HUB_PROTOCOL_VERSION: i64 = 1;

/// `SentLog` state bits, per sequence number.
pub const MEASURED: u8 = 1;
pub const ACCEPTED: u8 = 2;
pub const FAILED: u8 = 4;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Who a connection is and what it does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub index: usize,
    /// `ws://host:port/next-chat`.
    pub ws_url: String,
    /// The local address to connect from (`--source-ip`); `None`: the kernel's choice.
    pub source: Option<IpAddr>,
    pub user: String,
    pub group: String,
    pub group_index: usize,
    /// Connections in this group: what each accepted message is expected to reach.
    pub members: u64,
    /// Whether this connection sends `CreateGroup` before joining.
    pub create: bool,
    /// `Some(rank)` for a sender, 0-based over all senders.
    pub sender_rank: Option<usize>,
}

/// What every connection shares.
pub struct Settings {
    pub protocol: Protocol,
    pub length: usize,
    pub timeout: Duration,
    /// For `wss://` URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The server runs `--auth jwt` with this HS256 secret: each connection's
    /// token is minted with it, its `sub` the connection's user.
    pub jwt_secret: Option<Vec<u8>>,
}

/// How long a minted token is valid: longer than any bench run.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// What a connection sends as `Authorization: Bearer …`.
fn credential(user: &str, settings: &Settings) -> Result<String, String> {
    let Some(secret) = &settings.jwt_secret else { return Ok(user.to_owned()) };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({ "sub": user, "exp": now + TOKEN_LIFETIME_SECS });
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(|e| format!("cannot mint a token: {e}"))
}

/// When the senders send, fixed by the orchestrator once everyone has joined.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub measure_from: Instant,
    pub stop_at: Instant,
    /// Between two messages of one sender.
    pub period: Duration,
    pub senders: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum Control {
    Wait,
    Run(Schedule),
    Finish,
}

/// What one sender's messages became; indexed by sequence number.
#[derive(Debug, Default)]
pub struct SentLog {
    pub states: Vec<u8>,
}

/// What one connection received from one sender.
#[derive(Debug)]
pub struct Received {
    pub sender: u32,
    /// Bit `seq` is set once `seq` has arrived.
    seen: Vec<u64>,
    max_seq: Option<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Received {
    fn new(sender: u32) -> Received {
        Received { sender, seen: Vec::new(), max_seq: None, duplicates: 0, out_of_order: 0 }
    }

    pub fn has(&self, seq: usize) -> bool {
        self.seen.get(seq / 64).is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }

    /// Records an arrival; false for a duplicate.
    fn arrive(&mut self, seq: u64, counted: bool) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += u64::from(counted);
            return false;
        }
        self.seen[word] |= 1 << bit;
        if self.max_seq.is_some_and(|max| max > seq) {
            self.out_of_order += u64::from(counted);
        }
        self.max_seq = Some(self.max_seq.map_or(seq, |max| max.max(seq)));
        true
    }
}

/// A connection's results, handed back when it finishes.
#[derive(Debug)]
pub struct Outcome {
    pub index: usize,
    pub group_index: usize,
    pub received: Vec<Received>,
    pub sent: Option<SentLog>,
    /// `OnMessage`s that were not bench messages.
    pub foreign: u64,
    /// Why the connection ended before it was told to, if it did.
    pub lost: Option<String>,
}

/// A joined connection, ready to run.
pub struct Connection {
    plan: Plan,
    settings: Arc<Settings>,
    socket: Socket,
    records: Records,
    next_call: u64,
}

/// Connects, handshakes, creates (if asked) and joins. The error says what failed
/// in words a person can act on.
pub async fn open(plan: Plan, settings: Arc<Settings>) -> Result<Connection, String> {
    let timeout = settings.timeout;
    let url = plan.ws_url.clone();
    let connected = tokio::time::timeout(timeout, connect(&plan, &settings)).await;
    let (socket, leftover) = connected
        .map_err(|_| format!("{url}: no connection within {} s", timeout.as_secs_f64()))??;
    let mut records = Records::new(settings.protocol);
    let mut ignored = Vec::new();
    records.feed(&leftover, |r| ignored.push(r))?;
    let mut connection = Connection { plan, settings, socket, records, next_call: 0 };
    if connection.plan.create {
        let group = connection.plan.group.clone();
        connection.call(Method::CreateGroup, vec![group.into()]).await?;
    }
    let group = connection.plan.group.clone();
    let joined = connection.call(Method::JoinGroup, vec![group.as_str().into()]).await?;
    match joined.result {
        Some(result) if result == JoinResult::Ok.wire() => Ok(connection),
        Some(result) if result == JoinResult::NoRoom.wire() => Err(format!(
            "JoinGroup {group}: the group is full (NoRoom). Another run may still be \
             connected to it, or --group-size is above the server's max_members"
        )),
        other => Err(format!("JoinGroup {group}: unexpected result {other:?}")),
    }
}

/// TCP, WebSocket upgrade and hub handshake. Returns the socket and any bytes
/// that followed the handshake response.
pub(crate) async fn connect(plan: &Plan, settings: &Settings) -> Result<(Socket, Vec<u8>), String> {
    let url = &plan.ws_url;
    let mut request =
        url.as_str().into_client_request().map_err(|e| format!("{url}: not a usable URL: {e}"))?;
    let authorization =
        HeaderValue::from_str(&format!("Bearer {}", credential(&plan.user, settings)?))
            .map_err(|_| format!("{:?} cannot be sent as a user id", plan.user))?;
    request.headers_mut().insert("authorization", authorization);
    let host = request.uri().host().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let secure = request.uri().scheme_str() == Some("wss");
    let port = request.uri().port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = tcp_connect(&host, port, plan.source)
        .await
        .map_err(|e| format!("cannot reach {host}:{port}: {e}{}", hint(&e)))?;
    // Latency is what is measured: no Nagle delay on the bench's small sends.
    tcp.set_nodelay(true).map_err(|e| format!("{host}:{port}: {e}"))?;
    // Small buffers: 10,000 idle connections must not cost the bench gigabytes.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0);
    let (mut socket, _response) = tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        Some(config),
        settings.tls.clone().map(Connector::Rustls),
    )
    .await
    .map_err(|e| upgrade_error(url, e))?;

    let protocol = settings.protocol;
    let handshake = HandshakeRequest::new(protocol, HUB_PROTOCOL_VERSION).encode();
    let text = Utf8Bytes::try_from(handshake).map_err(|_| "handshake is not UTF-8".to_string())?;
    socket.send(WsMessage::Text(text)).await.map_err(|e| format!("{url}: handshake: {e}"))?;
    let mut received = Vec::new();
    loop {
        let data = match socket.next().await {
            Some(Ok(WsMessage::Text(text))) => Bytes::from(text),
            Some(Ok(WsMessage::Binary(data))) => data,
            Some(Ok(WsMessage::Close(frame))) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(format!("{url}: the server closed during the handshake {reason}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("{url}: handshake: {e}")),
            None => return Err(format!("{url}: the server closed during the handshake")),
        };
        received.extend_from_slice(&data);
        if let Some(end) = handshake::find_record_end(&received) {
            let response = HandshakeResponse::parse(&received[..end])
                .map_err(|e| format!("{url}: handshake response: {e}"))?;
            if let Some(error) = response.error {
                return Err(format!("{url}: the server refused the hub handshake: {error}"));
            }
            return Ok((socket, received.split_off(end + 1)));
        }
    }
}

/// A TCP connection to `host:port`, from `source` when given. The socket is
/// bound to the source address before it connects, with
/// `IP_BIND_ADDRESS_NO_PORT` so that the port is chosen at connect time per
/// destination (a port chosen at bind time would have to be free for every
/// destination, and finding one slows down as the ports fill up).
pub async fn tcp_connect(
    host: &str,
    port: u16,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let Some(source) = source else { return TcpStream::connect((host, port)).await };
    let target = tokio::net::lookup_host((host, port))
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address of the --source-ip {source}'s family"),
            )
        })?;
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if source.is_ipv4() {
        bind_address_no_port(&socket);
    }
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Linux: defer the choice of the local port from `bind` to `connect`. A
/// kernel without it still works, with bind-time ports.
fn bind_address_no_port(socket: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` (an int, its size given) on our own socket.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn hint(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ECONNREFUSED) => " (is next-chat-server running and listening there?)",
        Some(libc::EMFILE | libc::ENFILE) => " (too many open files: raise `ulimit -n`)",
        Some(libc::EADDRNOTAVAIL) => {
            " (out of local ports: add --source-ip addresses, widen \
             net.ipv4.ip_local_port_range or use more server URLs)"
        }
        _ => "",
    }
}

fn upgrade_error(url: &str, error: tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            format!(
                "{url}: the server refused the WebSocket upgrade: {} {}",
                response.status(),
                body.trim()
            )
        }
        other => format!("{url}: WebSocket upgrade failed: {other}"),
    }
}

impl Connection {
    /// Sends one invocation and reads until its completion (setup only: no
    /// messages flow yet). A server error is returned as its text.
    async fn call(&mut self, method: Method, args: Vec<Value>) -> Result<Completion, String> {
        let id = format!("setup-{}", self.next_call);
        self.next_call += 1;
        let target = method.name();
        let record = wire::invocation(self.settings.protocol, id.clone(), method, args);
        let timeout = self.settings.timeout;
        let url = self.plan.ws_url.clone();
        self.send_record(record).await.map_err(|e| format!("{url}: {target}: {e}"))?;
        let completion = tokio::time::timeout(timeout, async {
            loop {
                let mut found = None;
                let mut closed = None;
                let data = read_data(&mut self.socket).await?;
                self.records.feed(&data, |record| match record {
                    Record::Completion(c) if c.invocation_id == id => found = Some(c),
                    Record::Close(error) => closed = Some(error),
                    _ => {}
                })?;
                if let Some(error) = closed {
                    return Err(format!(
                        "the server closed the connection: {}",
                        error.unwrap_or_default()
                    ));
                }
                if let Some(completion) = found {
                    return Ok(completion);
                }
            }
        })
        .await
        .map_err(|_| format!("{url}: {target} got no answer within {} s", timeout.as_secs_f64()))?
        .map_err(|e| format!("{url}: {target}: {e}"))?;
        match &completion.error {
            Some(error) => {
                Err(format!("{target} {}: the server answered: {error}", self.plan.group))
            }
            None => Ok(completion),
        }
    }

    async fn send_record(&mut self, record: Bytes) -> Result<(), String> {
        let frame = if self.settings.protocol.is_binary() {
            WsMessage::Binary(record)
        } else {
            WsMessage::Text(Utf8Bytes::try_from(record).map_err(|_| "non-UTF-8 JSON".to_string())?)
        };
        self.socket.send(frame).await.map_err(|e| e.to_string())
    }

    /// Receives (and sends, for a sender) until `Control::Finish`.
    pub async fn run(
        mut self,
        mut control: watch::Receiver<Control>,
        stats: Arc<Stats>,
    ) -> Outcome {
        let mut state = RunState {
            index: self.plan.index,
            members: self.plan.members,
            received: Vec::new(),
            foreign: 0,
            sending: None,
            sent: self.plan.sender_rank.map(|_| SentLog::default()),
            pending: HashMap::new(),
        };
        let jitter =
            Duration::from_millis(rand::rng().random_range(0..KEEP_ALIVE.as_millis() as u64));
        // The timers and the control future live across iterations: building
        // them anew for every frame would register and cancel a timer and a
        // watch waiter (under a lock shared by every connection) per delivery.
        let ping = sleep_until(Instant::now() + jitter);
        let send_timer = sleep_until(Instant::now());
        tokio::pin!(ping, send_timer);
        let mut lost = None;
        // A control value set before this task started is picked up first.
        let mut current = *control.borrow_and_update();
        let mut next_control = Box::pin(next_control_of(control));
        loop {
            match current {
                Control::Finish => break,
                Control::Run(schedule) if state.sending.is_none() => {
                    if let Some(rank) = self.plan.sender_rank {
                        let sending = Sending::new(&schedule, rank);
                        send_timer.as_mut().reset(sending.next_at);
                        state.sending = Some(sending);
                    }
                }
                _ => {}
            }
            let sending = state.sending.as_ref().is_some_and(|s| !s.done);
            tokio::select! {
                frame = self.socket.next() => {
                    let data = match frame {
                        Some(Ok(WsMessage::Text(text))) => Bytes::from(text),
                        Some(Ok(WsMessage::Binary(data))) => data,
                        Some(Ok(WsMessage::Close(frame))) => {
                            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                            lost = Some(format!("the server closed the connection {reason}"));
                            break;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            lost = Some(format!("connection lost: {e}"));
                            break;
                        }
                        None => {
                            lost = Some("the server closed the connection".into());
                            break;
                        }
                    };
                    let now = Instant::now();
                    let mut closed = None;
                    let fed = self.records.feed(&data, |record| {
                        if let Record::Close(error) = record {
                            closed = Some(error.unwrap_or_else(|| "no error given".into()));
                        } else {
                            state.on_record(record, now, &stats);
                        }
                    });
                    if let Err(e) = fed {
                        lost = Some(format!("unreadable data from the server: {e}"));
                        break;
                    }
                    if let Some(error) = closed {
                        lost = Some(format!("the server sent Close: {error}"));
                        break;
                    }
                }
                () = &mut send_timer, if sending => {
                    if let Err(e) = self.send_next(&mut state, &stats).await {
                        lost = Some(format!("sending failed: {e}"));
                        break;
                    }
                    if let Some(sending) = &state.sending {
                        send_timer.as_mut().reset(sending.next_at);
                    }
                }
                () = &mut ping => {
                    if let Err(e) = self.send_record(wire::ping(self.settings.protocol)).await {
                        lost = Some(format!("sending a ping failed: {e}"));
                        break;
                    }
                    ping.as_mut().reset(Instant::now() + KEEP_ALIVE);
                }
                (control, receiver) = &mut next_control => {
                    current = control;
                    next_control = Box::pin(next_control_of(receiver));
                }
            }
        }
        if let Some(error) = &lost {
            stats.disconnects.fetch_add(1, Ordering::Relaxed);
            stats.error(format!("{}: {error}", self.plan.ws_url));
            // Calls that will never complete are no longer in flight.
            stats.in_flight.fetch_sub(state.pending.len() as u64, Ordering::Relaxed);
        } else {
            let _ = self.socket.close(None).await;
        }
        Outcome {
            index: self.plan.index,
            group_index: self.plan.group_index,
            received: state.received,
            sent: state.sent,
            foreign: state.foreign,
            lost,
        }
    }

    /// Sends the next scheduled message (late ones go out at once: the schedule
    /// does not wait for the server).
    async fn send_next(&mut self, state: &mut RunState, stats: &Stats) -> Result<(), String> {
        let Some(sending) = state.sending.as_mut() else { return Ok(()) };
        let scheduled = sending.next_at;
        if scheduled >= sending.stop_at {
            sending.done = true;
            return Ok(());
        }
        let phase = if scheduled >= sending.measure_from { Phase::Measured } else { Phase::Warmup };
        let seq = sending.seq;
        sending.seq += 1;
        sending.next_at += sending.period;
        let now = Instant::now();
        let header = Header {
            phase,
            sender: self.plan.index as u32,
            seq,
            sent_at: stats.now_nanos(now.into_std()),
        };
        payload::write(&mut sending.text, header, self.settings.length);
        let args = vec![self.plan.group.as_str().into(), sending.text.as_str().into()];
        let record =
            wire::invocation(self.settings.protocol, seq.to_string(), Method::SendMessage, args);
        if let Some(log) = state.sent.as_mut() {
            log.states.push(if phase == Phase::Measured { MEASURED } else { 0 });
        }
        if phase == Phase::Measured {
            stats.record_send_lag(now.saturating_duration_since(scheduled));
        }
        state.pending.insert(seq, now);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        stats.sent.fetch_add(1, Ordering::Relaxed);
        stats.tick(now.into_std(), false, 1);
        self.send_record(record).await
    }
}

/// A sender's schedule and scratch text.
struct Sending {
    next_at: Instant,
    period: Duration,
    measure_from: Instant,
    stop_at: Instant,
    seq: u64,
    done: bool,
    text: String,
}

impl Sending {
    fn new(schedule: &Schedule, rank: usize) -> Sending {
        // Senders are spread evenly over one period so the load is smooth.
        let offset = schedule.period.mul_f64(rank as f64 / schedule.senders as f64);
        Sending {
            next_at: schedule.start + offset,
            period: schedule.period,
            measure_from: schedule.measure_from,
            stop_at: schedule.stop_at,
            seq: 0,
            done: false,
            text: String::new(),
        }
    }
}

struct RunState {
    index: usize,
    members: u64,
    received: Vec<Received>,
    foreign: u64,
    sending: Option<Sending>,
    sent: Option<SentLog>,
    /// `SendMessage` calls awaiting completion: sequence number → when sent.
    pending: HashMap<u64, Instant>,
}

impl RunState {
    fn on_record(&mut self, record: Record, now: Instant, stats: &Stats) {
        match record {
            Record::Bench(header) => self.on_bench_message(header, now, stats),
            Record::Foreign => self.foreign += 1,
            Record::Completion(completion) => self.on_completion(completion, now, stats),
            Record::Close(_) | Record::Other => {}
        }
    }

    fn on_bench_message(&mut self, header: Header, now: Instant, stats: &Stats) {
        let measured = header.phase == Phase::Measured;
        let received = match self.received.iter_mut().position(|r| r.sender == header.sender) {
            Some(i) => &mut self.received[i],
            None => {
                self.received.push(Received::new(header.sender));
                self.received.last_mut().expect("just pushed")
            }
        };
        if !received.arrive(header.seq, measured) {
            return;
        }
        let now = now.into_std();
        stats.tick(now, true, 1);
        if measured {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            stats.record_latency(self.index, stats.now_nanos(now).saturating_sub(header.sent_at));
        }
    }

    fn on_completion(&mut self, completion: Completion, now: Instant, stats: &Stats) {
        let Ok(seq) = completion.invocation_id.parse::<u64>() else { return };
        let Some(sent_at) = self.pending.remove(&seq) else { return };
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(state) = self.sent.as_mut().and_then(|log| log.states.get_mut(seq as usize))
        else {
            return;
        };
        let measured = *state & MEASURED != 0;
        match completion.error {
            Some(error) => {
                *state |= FAILED;
                stats.error(format!("SendMessage: the server answered: {error}"));
            }
            None => {
                *state |= ACCEPTED;
                if measured {
                    stats.expected.fetch_add(self.members, Ordering::Relaxed);
                }
            }
        }
        if measured {
            stats.record_completion(now.saturating_duration_since(sent_at));
        }
    }
}

/// The next control value, with the receiver handed back for the one after.
async fn next_control_of(
    mut receiver: watch::Receiver<Control>,
) -> (Control, watch::Receiver<Control>) {
    let control = match receiver.changed().await {
        Ok(()) => *receiver.borrow_and_update(),
        Err(_) => Control::Finish,
    };
    (control, receiver)
}

async fn read_data(socket: &mut Socket) -> Result<Bytes, String> {
    match socket.next().await {
        Some(Ok(WsMessage::Text(text))) => Ok(Bytes::from(text)),
        Some(Ok(WsMessage::Binary(data))) => Ok(data),
        Some(Ok(WsMessage::Close(frame))) => {
            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
            Err(format!("the server closed the connection {reason}"))
        }
        Some(Ok(_)) => Ok(Bytes::new()),
        Some(Err(e)) => Err(format!("connection lost: {e}")),
        None => Err("the server closed the connection".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_from_the_source_address_given() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        for source in ["127.0.0.2", "127.0.0.3"] {
            let source: IpAddr = source.parse().expect("an address");
            let stream = tcp_connect("127.0.0.1", port, Some(source)).await.expect("connects");
            let (_, peer) = listener.accept().await.expect("accepts");
            assert_eq!(peer.ip(), source);
            assert_eq!(stream.local_addr().expect("bound").ip(), source);
        }
        let plain = tcp_connect("127.0.0.1", port, None).await.expect("connects");
        assert_eq!(plain.local_addr().expect("bound").ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn received_counts_duplicates_and_reordering() {
        let mut r = Received::new(0);
        assert!(r.arrive(0, true));
        assert!(r.arrive(2, true));
        assert!(r.arrive(1, true));
        assert!(!r.arrive(2, true));
        assert!(r.arrive(200, false));
        assert!(r.arrive(100, false));
        assert_eq!((r.duplicates, r.out_of_order), (1, 1));
        assert!(r.has(0) && r.has(1) && r.has(2) && r.has(100) && r.has(200));
        assert!(!r.has(3) && !r.has(10_000));
    }
}
