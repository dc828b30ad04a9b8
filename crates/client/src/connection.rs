//! Drives one WebSocket: sends calls and keep-alive pings, matches completions to
//! calls by invocation id, hands `OnMessage` and `OnHistory` to delivery, and
//! notices a dead server. It ends with the connection; reconnecting is the
//! caller's business (see `client`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{SinkExt, StreamExt};
use next_chat_contract::Callback;
use next_chat_signalr::protocol::{Decoder, HubMessage, Outcome, Protocol as WireProtocol};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::delivery::Delivery;
use crate::error::ClientError;
use crate::model::Message;
use crate::stateful::Stateful;
use crate::transport::{Transport, WebSocket};
use crate::wire;

/// The server's messages (a full history) have no size limit in the contract;
/// this only stops a broken peer from exhausting memory.
const MAX_INCOMING_MESSAGE: usize = 64 * 1024 * 1024;

/// After the client closes, how long it waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Timed-out calls leave an entry behind until their connection ends; sweep
/// them out whenever the table reaches a multiple of this.
const PENDING_SWEEP: usize = 256;

pub(crate) enum Outgoing {
    Call(Call),
    /// Close the WebSocket cleanly and end.
    Close,
}

pub(crate) struct Call {
    pub(crate) invocation_id: String,
    pub(crate) message: HubMessage,
    pub(crate) reply: oneshot::Sender<Outcome>,
    /// Set for `JoinGroup`, whose `OnHistory` arrives before its completion.
    pub(crate) join: Option<JoinTrack>,
}

pub(crate) struct JoinTrack {
    pub(crate) group: String,
    /// For a rejoin after a reconnect the history goes here, for catching up,
    /// instead of to the caller as `Event::History`.
    pub(crate) history: Option<oneshot::Sender<Vec<Message>>>,
}

/// Sends work to a connection's task. Clones share the one connection.
#[derive(Clone)]
pub(crate) struct ConnectionHandle {
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

impl ConnectionHandle {
    /// Queues a call; `Err` when the connection has ended.
    pub(crate) fn send(&self, call: Call) -> Result<(), ClientError> {
        self.outgoing.send(Outgoing::Call(call)).map_err(|_| ClientError::Disconnected)
    }

    pub(crate) fn close(&self) {
        let _ = self.outgoing.send(Outgoing::Close);
    }
}

/// How a connection ended.
#[derive(Debug)]
pub(crate) struct ConnectionEnd {
    pub(crate) error: Option<String>,
    /// False when the server's Close message said not to reconnect.
    pub(crate) allow_reconnect: bool,
    pub(crate) closed_by_client: bool,
    /// The WebSocket failed or closed (no Close message, no protocol error, no
    /// server timeout): stateful reconnect may resume the connection.
    pub(crate) socket_lost: bool,
}

impl ConnectionEnd {
    fn lost(error: impl Into<String>) -> ConnectionEnd {
        ConnectionEnd {
            error: Some(error.into()),
            allow_reconnect: true,
            closed_by_client: false,
            socket_lost: false,
        }
    }

    fn socket(error: impl Into<String>) -> ConnectionEnd {
        ConnectionEnd { socket_lost: true, ..ConnectionEnd::lost(error) }
    }
}

/// Attempts at a new WebSocket for stateful reconnect before the connection
/// counts as lost, and the first wait between them (doubling).
const RESUME_ATTEMPTS: usize = 3;
const RESUME_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) struct Timing {
    pub(crate) keep_alive_interval: Duration,
    pub(crate) server_timeout: Duration,
}

pub(crate) fn spawn(
    transport: Transport,
    protocol: WireProtocol,
    timing: Timing,
    delivery: Arc<Mutex<Delivery>>,
) -> (ConnectionHandle, JoinHandle<ConnectionEnd>) {
    let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
    let mut decoder = protocol.decoder(MAX_INCOMING_MESSAGE);
    decoder.push(&transport.leftover);
    let driver = Driver {
        stateful: transport.resume.map(Stateful::new),
        socket: transport.socket,
        decoder,
        protocol,
        timing,
        delivery,
        pending: HashMap::new(),
        joins: VecDeque::new(),
    };
    let task = tokio::spawn(driver.run(outgoing_rx));
    (ConnectionHandle { outgoing }, task)
}

struct Driver {
    /// Set when the server agreed to stateful reconnect.
    stateful: Option<Stateful>,
    socket: WebSocket,
    decoder: Decoder,
    protocol: WireProtocol,
    timing: Timing,
    delivery: Arc<Mutex<Delivery>>,
    /// Calls waiting for their completion, by invocation id.
    pending: HashMap<String, oneshot::Sender<Outcome>>,
    /// `JoinGroup` calls in flight, in the order sent: an `OnHistory` belongs to
    /// the join of its messages' group, or (when empty) to the oldest one.
    joins: VecDeque<(String, JoinTrack)>,
}

impl Driver {
    async fn run(mut self, mut outgoing: mpsc::UnboundedReceiver<Outgoing>) -> ConnectionEnd {
        let mut last_sent = Instant::now();
        let mut last_received = Instant::now();
        // The handshake's frame may already have carried messages.
        let mut end = self.drain_decoder().err();
        while end.is_none() {
            let ping_at = last_sent + self.timing.keep_alive_interval;
            let dead_at = last_received + self.timing.server_timeout;
            let ack_at = self.stateful.as_ref().and_then(Stateful::ack_due);
            // While the server has not acknowledged enough, new calls wait.
            let may_send = !self.stateful.as_ref().is_some_and(Stateful::is_full);
            end = tokio::select! {
                frame = self.socket.next() => {
                    last_received = Instant::now();
                    self.on_frame(frame).err()
                }
                () = sleep_until_opt(ack_at) => {
                    match self.stateful.as_mut().and_then(Stateful::take_ack) {
                        Some(ack) => self.send(&ack).await.err(),
                        None => None,
                    }
                }
                command = outgoing.recv(), if may_send => match command {
                    Some(Outgoing::Call(call)) => {
                        last_sent = Instant::now();
                        self.send_call(call).await.err()
                    }
                    Some(Outgoing::Close) | None => {
                        self.close().await;
                        Some(ConnectionEnd {
                            error: None,
                            allow_reconnect: false,
                            closed_by_client: true,
                            socket_lost: false,
                        })
                    }
                },
                () = sleep_until(ping_at) => {
                    last_sent = Instant::now();
                    self.send(&HubMessage::Ping).await.err()
                }
                () = sleep_until(dead_at) => Some(ConnectionEnd::lost(format!(
                    "the server sent nothing for {:?}",
                    self.timing.server_timeout
                ))),
            };
            if end.as_ref().is_some_and(|end| end.socket_lost) && self.stateful.is_some() {
                match self.resume().await {
                    Ok(()) => {
                        end = None;
                        last_received = Instant::now();
                        last_sent = last_received;
                    }
                    Err(error) => {
                        tracing::info!(%error, "stateful reconnect failed; the connection is lost");
                    }
                }
            }
        }
        // Calls in flight fail: dropping their reply makes them `Disconnected`.
        self.pending.clear();
        end.unwrap_or_else(|| ConnectionEnd::lost("connection ended"))
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), ConnectionEnd> {
        match frame {
            None => Err(ConnectionEnd::socket("the server closed the connection")),
            Some(Err(e)) => Err(ConnectionEnd::socket(e.to_string())),
            Some(Ok(WsMessage::Text(text))) => {
                self.decoder.push(text.as_bytes());
                self.drain_decoder()
            }
            Some(Ok(WsMessage::Binary(bytes))) => {
                self.decoder.push(&bytes);
                self.drain_decoder()
            }
            Some(Ok(WsMessage::Close(frame))) => {
                let reason = frame.map(|f| f.reason.to_string()).filter(|r| !r.is_empty());
                Err(ConnectionEnd::lost(
                    reason.unwrap_or_else(|| "the server closed the connection".into()),
                ))
            }
            // WebSocket pings are answered by tungstenite; they prove the server lives.
            Some(Ok(_)) => Ok(()),
        }
    }

    fn drain_decoder(&mut self) -> Result<(), ConnectionEnd> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(message)) => self.on_message(message)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(ConnectionEnd::lost(format!("protocol error: {e}"))),
            }
        }
    }

    fn on_message(&mut self, message: HubMessage) -> Result<(), ConnectionEnd> {
        if let Some(stateful) = self.stateful.as_mut() {
            match stateful.admit(&message, Instant::now()) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(error) => return Err(ConnectionEnd::lost(error)),
            }
        }
        match message {
            HubMessage::Completion { invocation_id, outcome } => {
                self.joins.retain(|(id, _)| *id != invocation_id);
                if let Some(reply) = self.pending.remove(&invocation_id) {
                    // The caller may have timed out and gone.
                    let _ = reply.send(outcome);
                }
            }
            HubMessage::Invocation { target, arguments, .. } => {
                self.on_callback(&target, &arguments);
            }
            HubMessage::Close { error, allow_reconnect } => {
                return Err(ConnectionEnd {
                    error: Some(error.unwrap_or_else(|| "the server closed the connection".into())),
                    allow_reconnect,
                    closed_by_client: false,
                    socket_lost: false,
                });
            }
            // Pings only prove the server lives; this client starts no streams.
            _ => {}
        }
        Ok(())
    }

    fn on_callback(&mut self, target: &str, arguments: &[next_chat_signalr::value::Value]) {
        let Some(argument) = arguments.first() else {
            tracing::warn!(target, "callback without an argument ignored");
            return;
        };
        match Callback::parse(target) {
            Some(Callback::OnMessage) => match wire::message(argument) {
                Ok(message) => self.delivery().message(message),
                Err(e) => tracing::warn!("OnMessage ignored: {e}"),
            },
            Some(Callback::OnHistory) => match wire::messages(argument) {
                Ok(messages) => self.on_history(messages),
                Err(e) => tracing::warn!("OnHistory ignored: {e}"),
            },
            None => tracing::debug!(target, "unknown callback ignored"),
        }
    }

    fn on_history(&mut self, messages: Vec<Message>) {
        let index = match messages.first() {
            Some(first) => self.joins.iter().position(|(_, join)| join.group == first.group_id),
            None => (!self.joins.is_empty()).then_some(0),
        };
        let join = index.and_then(|i| self.joins.remove(i)).map(|(_, join)| join);
        let group = match (&join, messages.first()) {
            (Some(join), _) => join.group.clone(),
            (None, Some(first)) => first.group_id.clone(),
            // An empty history for no join in flight says nothing.
            (None, None) => return,
        };
        match join.and_then(|join| join.history) {
            Some(rejoin) => {
                let _ = rejoin.send(messages);
            }
            None => self.delivery().history(group, messages),
        }
    }

    fn delivery(&self) -> parking_lot::MutexGuard<'_, Delivery> {
        self.delivery.lock()
    }

    async fn send_call(&mut self, call: Call) -> Result<(), ConnectionEnd> {
        if call.reply.is_closed() {
            return Ok(());
        }
        if self.pending.len() % PENDING_SWEEP == PENDING_SWEEP - 1 {
            self.pending.retain(|_, reply| !reply.is_closed());
        }
        self.pending.insert(call.invocation_id.clone(), call.reply);
        if let Some(join) = call.join {
            self.joins.push_back((call.invocation_id, join));
        }
        self.send(&call.message).await
    }

    async fn send(&mut self, message: &HubMessage) -> Result<(), ConnectionEnd> {
        let record = self.protocol.encode(message);
        if let Some(stateful) = self.stateful.as_mut() {
            stateful.sending(message, &record);
        }
        self.send_record(record).await
    }

    /// Sends one encoded record as one WebSocket message.
    async fn send_record(&mut self, record: bytes::Bytes) -> Result<(), ConnectionEnd> {
        let frame = if self.protocol.is_binary() {
            WsMessage::Binary(record)
        } else {
            match Utf8Bytes::try_from(record) {
                Ok(text) => WsMessage::Text(text),
                Err(_) => {
                    return Err(ConnectionEnd::lost("the JSON encoder produced invalid UTF-8"));
                }
            }
        };
        self.socket.send(frame).await.map_err(|e| ConnectionEnd::socket(e.to_string()))
    }

    /// Stateful reconnect: a new WebSocket to the same connection, then the
    /// Sequence message and every call the server has not acknowledged.
    async fn resume(&mut self) -> Result<(), ClientError> {
        let Some(stateful) = self.stateful.as_mut() else {
            return Err(ClientError::Disconnected);
        };
        let resume = stateful.resume.clone();
        let mut last_error = ClientError::Disconnected;
        // The first attempt at once, then one after each backoff delay.
        let delays = ExponentialBuilder::new()
            .with_min_delay(RESUME_BACKOFF)
            .with_factor(2.0)
            .without_max_delay()
            .with_max_times(RESUME_ATTEMPTS - 1)
            .build();
        for delay in std::iter::once(None).chain(delays.map(Some)) {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let socket = match resume.reopen().await {
                Ok(socket) => socket,
                Err(error) => {
                    last_error = error;
                    continue;
                }
            };
            self.socket = socket;
            // A partial record from the old socket means nothing now.
            self.decoder = self.protocol.decoder(MAX_INCOMING_MESSAGE);
            let Some(stateful) = self.stateful.as_mut() else { break };
            let (sequence, records) = stateful.resumed();
            let record = self.protocol.encode(&sequence);
            let mut sent = self.send_record(record).await;
            for record in records {
                if sent.is_err() {
                    break;
                }
                sent = self.send_record(record).await;
            }
            match sent {
                Ok(()) => {
                    tracing::debug!("stateful reconnect: resumed on a new WebSocket");
                    return Ok(());
                }
                Err(end) => {
                    last_error = ClientError::Connection(end.error.unwrap_or_default());
                }
            }
        }
        Err(last_error)
    }

    async fn close(&mut self) {
        self.stateful = None;
        let _ = self.socket.close(None).await;
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
