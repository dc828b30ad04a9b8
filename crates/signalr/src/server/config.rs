//! [`HubConfig`]: the SignalR server's tuning, with the wire contract's defaults.

use std::time::Duration;

use crate::negotiate::Transport;

/// Tuning of the SignalR server. `Default` gives the values of the wire contract.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Send a Ping after this long without sending anything.
    pub keep_alive_interval: Duration,
    /// Close a connection that sent no hub message for this long (not long polling,
    /// whose polls keep it alive, as in ASP.NET Core).
    pub client_timeout: Duration,
    /// The handshake request must arrive within this long of the transport opening.
    pub handshake_timeout: Duration,
    /// The largest incoming hub message (one record), in bytes. A bigger one
    /// closes the connection with an error naming this limit.
    pub max_message_size: usize,
    /// The largest incoming WebSocket message or POST body, in bytes. Stock
    /// clients batch every record queued while a send is in flight into one
    /// WebSocket message or POST, so this is several records' worth; like
    /// ASP.NET Core, the per-message limit applies to each record.
    pub max_batch_size: usize,
    /// Records queued for one client before it counts as too slow and is closed.
    pub outbound_queue_capacity: usize,
    /// tungstenite's read buffer, allocated per connection: small to keep idle
    /// connections cheap.
    pub ws_read_buffer_size: usize,
    /// Bytes buffered before a WebSocket write goes out; 0 writes each message at once.
    /// The writer flushes after each batch of queued records, so a buffer only lets
    /// a batch go out in one write instead of one per record; it adds no delay.
    pub ws_write_buffer_size: usize,
    /// The most a WebSocket write buffer may hold (outgoing messages have no size
    /// limit, so this must exceed the largest one).
    pub ws_max_write_buffer_size: usize,
    /// A negotiated connection that no transport request claims within this long is
    /// forgotten.
    pub negotiate_timeout: Duration,
    /// An idle long poll is answered (200, empty) after this long. ASP.NET: 90 s.
    pub long_poll_timeout: Duration,
    /// A long-polling connection with no poll outstanding for this long is closed.
    /// ASP.NET's DisconnectTimeout: 15 s.
    pub long_poll_disconnect_timeout: Duration,
    /// Invocations received while one runs, before the connection stops reading;
    /// also the most [`Invoked::Finishing`](super::Invoked::Finishing) invocations of one connection at once
    /// (beyond it the next invocation waits for the oldest to finish).
    pub max_queued_invocations: usize,
    /// The transports offered by negotiate and accepted, in order of preference.
    pub transports: Vec<Transport>,
    /// Bytes of records queued for one client before it counts as too slow and is
    /// closed, as with `outbound_queue_capacity`. One record bigger than this is
    /// still queued when the queue is empty (a reply the hub made goes out to a
    /// client that keeps up); the connection is closed at the next record.
    pub outbound_queue_bytes: usize,
    /// Bytes of invocations received while one runs (each counted by its record's
    /// size; a record's decoded size is bounded by `max_message_size`, see
    /// [`crate::protocol::BYTES_PER_VALUE`]) before the connection stops reading.
    /// The queue may pass it by one record.
    pub max_queued_invocation_bytes: usize,
    /// Invocations one connection may start per second on average (a token
    /// bucket); a call over the limit is not run and completes with an error
    /// saying when to retry. The connection stays open.
    pub invocations_per_second: u32,
    /// Invocations one connection may start at once after a quiet spell (the
    /// bucket's size).
    pub invocation_burst: u32,

    /// Connections open at once (handshaking ones included); beyond it a new one
    /// is refused with 503. `None`: no cap.
    pub max_connections: Option<usize>,
    /// Connections one user may have open at once; beyond it 429.
    pub max_connections_per_user: Option<usize>,
    /// Connections from one client address at once; beyond it 429. Off by
    /// default: behind a proxy every client has the proxy's address.
    pub max_connections_per_ip: Option<usize>,
    /// Negotiated connections not yet claimed by a transport request, in total;
    /// beyond it negotiate answers 503.
    pub max_pending_negotiations: Option<usize>,
    /// The same, per user; beyond it negotiate answers 429.
    pub max_pending_negotiations_per_user: Option<usize>,
    /// The most bytes of records one long-poll response carries (at least one
    /// record, whatever its size); the rest waits for the next poll.
    pub long_poll_max_response_bytes: usize,

    /// Offer stateful reconnect (ASP.NET Core 8+, WebSockets only) to clients that
    /// ask for it in negotiate (`useStatefulReconnect=true`).
    pub stateful_reconnect: bool,
    /// Bytes of sent records kept per connection until the client acknowledges
    /// them (ASP.NET Core's default: 100,000). While the socket is up and it is
    /// full, the writer waits for an Ack (the outbound queue's bounds then
    /// apply); while the socket is down, a record that does not fit closes the
    /// connection.
    pub stateful_reconnect_buffer_bytes: usize,
    /// How long a connection whose socket dropped is kept (its hub session,
    /// groups and buffer) for the client to reconnect.
    pub stateful_reconnect_window: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message_size: 128 * 1024,
            max_batch_size: 1024 * 1024,
            outbound_queue_capacity: 1024,
            ws_read_buffer_size: 1024,
            ws_write_buffer_size: 32 * 1024,
            ws_max_write_buffer_size: usize::MAX,
            negotiate_timeout: Duration::from_secs(15),
            long_poll_timeout: Duration::from_secs(90),
            long_poll_disconnect_timeout: Duration::from_secs(15),
            max_queued_invocations: 32,
            transports: Transport::ALL.to_vec(),
            outbound_queue_bytes: 4 * 1024 * 1024,
            max_queued_invocation_bytes: 1024 * 1024,
            invocations_per_second: 2000,
            invocation_burst: 2000,

            max_connections: Some(200_000),
            max_connections_per_user: Some(100),
            max_connections_per_ip: None,
            max_pending_negotiations: Some(100_000),
            max_pending_negotiations_per_user: Some(100),
            long_poll_max_response_bytes: 1024 * 1024,

            stateful_reconnect: true,
            stateful_reconnect_buffer_bytes: 100_000,
            stateful_reconnect_window: Duration::from_secs(45),
        }
    }
}
