//! Stateful reconnect's bookkeeping, the same on both sides of a connection
//! (ASP.NET Core's and `@microsoft/signalr`'s `MessageBuffer`): each side
//! numbers the hub messages it sends from 1 (every one but Ping, Close, Ack and
//! Sequence), keeps what the peer has not acknowledged (`Ack`) in a buffer
//! bounded in bytes, and after a new socket replaced one that dropped, says
//! where it resumes (`Sequence`) and sends the rest again; each side drops the
//! duplicates it receives.
//!
//! [`Sequencing`] is the whole of it for one side, as a client running one task
//! uses it. A server whose reading and writing run in separate tasks splits it
//! ([`Sequencing::split`]) into what the reader keeps ([`Received`]) and what
//! the writer keeps ([`ResendBuffer`]), and passes the peer's Acks from one to
//! the other. Knows nothing of sockets or timers: the caller says what time it
//! is and when a socket changed.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::{HubMessage, Protocol};

/// How often (at most) a side acknowledges what it received, as ASP.NET Core
/// and the JavaScript client do.
pub const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a message counts toward the sequence ids (ASP.NET Core's
/// `HubInvocationMessage`s).
pub fn is_sequenced(message: &HubMessage) -> bool {
    matches!(
        message,
        HubMessage::Invocation { .. }
            | HubMessage::StreamItem { .. }
            | HubMessage::Completion { .. }
            | HubMessage::StreamInvocation { .. }
            | HubMessage::CancelInvocation { .. }
    )
}

/// The peer's Sequence message named an id it cannot resume from: below 1, or
/// beyond the next message this side expects. The connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSequence {
    pub sequence_id: i64,
    /// The id of the next sequenced message this side expects.
    pub expected: i64,
}

/// What to do with a message received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Act on it.
    Process,
    /// Drop it: a duplicate of a resend, anything before the Sequence message
    /// that starts one, or the Sequence message itself.
    Skip,
    /// An Ack: the peer has everything up to this id (for the [`ResendBuffer`]).
    Acked(i64),
}

/// The receiving half: de-duplicates by sequence id and says when to Ack.
#[derive(Debug)]
pub struct Received {
    /// After a new socket, everything up to the peer's Sequence message is
    /// dropped (it belongs to a resend that the Sequence message starts).
    wait_for_sequence: bool,
    /// The id the next sequenced message from the peer carries.
    next_id: i64,
    /// The highest id processed; lower ones are duplicates of a resend.
    latest: i64,
    /// The highest id acknowledged to the peer.
    last_acked: i64,
    ack_due: Option<Instant>,
}

impl Default for Received {
    fn default() -> Self {
        Self { wait_for_sequence: false, next_id: 1, latest: 0, last_acked: 0, ack_due: None }
    }
}

impl Received {
    /// What to do with a message from the peer.
    pub fn admit(&mut self, message: &HubMessage, now: Instant) -> Result<Admitted, BadSequence> {
        if self.wait_for_sequence {
            if !matches!(message, HubMessage::Sequence { .. }) {
                return Ok(Admitted::Skip);
            }
            self.wait_for_sequence = false;
        }
        match message {
            HubMessage::Sequence { sequence_id } => {
                if *sequence_id < 1 || *sequence_id > self.next_id {
                    return Err(BadSequence { sequence_id: *sequence_id, expected: self.next_id });
                }
                self.next_id = *sequence_id;
                Ok(Admitted::Skip)
            }
            HubMessage::Ack { sequence_id } => Ok(Admitted::Acked(*sequence_id)),
            message if is_sequenced(message) => {
                let id = self.next_id;
                self.next_id += 1;
                if id <= self.latest {
                    return Ok(Admitted::Skip);
                }
                self.latest = id;
                self.ack_due.get_or_insert(now + ACK_INTERVAL);
                Ok(Admitted::Process)
            }
            _ => Ok(Admitted::Process),
        }
    }

    /// When the next Ack is due, if anything is waiting to be acknowledged.
    pub fn ack_due(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The Ack to send now, if anything new was received since the last one.
    pub fn take_ack(&mut self) -> Option<HubMessage> {
        self.ack_due = None;
        if self.latest <= self.last_acked {
            return None;
        }
        self.last_acked = self.latest;
        Some(HubMessage::Ack { sequence_id: self.latest })
    }

    /// A new socket replaced the old one: drop everything up to the peer's
    /// Sequence message, and acknowledge again soon (an Ack sent just before
    /// the drop may be lost).
    pub fn resumed(&mut self, now: Instant) {
        self.wait_for_sequence = true;
        self.last_acked = 0;
        if self.latest > 0 {
            self.ack_due = Some(now + ACK_INTERVAL);
        }
    }
}

/// The sending half: the sequenced records sent but not acknowledged, numbered
/// from `first_id`, bounded in bytes.
#[derive(Debug)]
pub struct ResendBuffer {
    records: VecDeque<Bytes>,
    first_id: i64,
    bytes: usize,
    limit: usize,
}

impl ResendBuffer {
    /// A buffer that counts as full at `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { records: VecDeque::new(), first_id: 1, bytes: 0, limit }
    }

    /// Whether the sender should wait for an Ack before sending more.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.limit
    }

    /// The byte bound it was made with.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// How many records wait for an Ack.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Keeps a record sent (or about to be) with the next id.
    pub fn keep(&mut self, record: Bytes) {
        self.bytes += record.len();
        self.records.push_back(record);
    }

    /// Keeps a record while no socket is attached: `false` (not kept) when it
    /// would take the buffer past its limit; an empty buffer takes any one record.
    pub fn keep_parked(&mut self, record: Bytes) -> bool {
        if !self.records.is_empty() && self.bytes + record.len() > self.limit {
            return false;
        }
        self.keep(record);
        true
    }

    /// The peer has everything up to `sequence_id`.
    pub fn ack(&mut self, sequence_id: i64) {
        while self.first_id <= sequence_id {
            let Some(record) = self.records.pop_front() else { break };
            self.bytes -= record.len();
            self.first_id += 1;
        }
        if self.records.is_empty() && self.records.capacity() > 64 {
            self.records = VecDeque::new();
        }
    }

    /// The Sequence message to send first on a new socket.
    pub fn sequence(&self) -> HubMessage {
        HubMessage::Sequence { sequence_id: self.first_id }
    }

    /// What to send on a new socket: the Sequence message, then every record
    /// kept, in order.
    pub fn resend(&self, protocol: Protocol) -> impl Iterator<Item = Bytes> + '_ {
        std::iter::once(protocol.encode(&self.sequence())).chain(self.records.iter().cloned())
    }
}

/// One side's whole bookkeeping: what it received and what it sent.
#[derive(Debug)]
pub struct Sequencing {
    received: Received,
    sent: ResendBuffer,
}

impl Sequencing {
    /// Bookkeeping whose resend buffer counts as full at `buffer_bytes`.
    pub fn new(buffer_bytes: usize) -> Self {
        Self { received: Received::default(), sent: ResendBuffer::new(buffer_bytes) }
    }

    /// The two halves, for a side that reads and writes in separate tasks.
    pub fn split(self) -> (Received, ResendBuffer) {
        (self.received, self.sent)
    }

    /// Whether to hold new messages until the peer acknowledges some.
    pub fn is_full(&self) -> bool {
        self.sent.is_full()
    }

    /// Keeps a record being sent, if its message is sequenced.
    pub fn sending(&mut self, message: &HubMessage, record: &Bytes) {
        if is_sequenced(message) {
            self.sent.keep(record.clone());
        }
    }

    /// Whether to act on a message from the peer (an Ack is applied here).
    pub fn admit(&mut self, message: &HubMessage, now: Instant) -> Result<bool, BadSequence> {
        Ok(match self.received.admit(message, now)? {
            Admitted::Process => true,
            Admitted::Skip => false,
            Admitted::Acked(sequence_id) => {
                self.sent.ack(sequence_id);
                false
            }
        })
    }

    pub fn ack_due(&self) -> Option<Instant> {
        self.received.ack_due()
    }

    pub fn take_ack(&mut self) -> Option<HubMessage> {
        self.received.take_ack()
    }

    /// A new socket replaced the old one: what to send on it first (the
    /// Sequence message, then every unacknowledged record).
    pub fn resumed(&mut self, now: Instant) -> (HubMessage, Vec<Bytes>) {
        self.received.resumed(now);
        (self.sent.sequence(), self.sent.records.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation() -> HubMessage {
        HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Echo".into(),
            arguments: Vec::new(),
            stream_ids: Vec::new(),
        }
    }

    #[test]
    fn buffer_drops_what_is_acked_and_resends_the_rest_in_order() {
        let mut buffer = ResendBuffer::new(10);
        for record in ["a", "bb", "ccc"] {
            buffer.keep(Bytes::from(record));
        }
        assert_eq!(buffer.bytes(), 6);
        buffer.ack(1);
        assert_eq!(buffer.bytes(), 5);
        let resent: Vec<Bytes> = buffer.resend(Protocol::Json).collect();
        assert_eq!(
            resent,
            vec![
                Bytes::from_static(b"{\"type\":9,\"sequenceId\":2}\x1e"),
                Bytes::from("bb"),
                Bytes::from("ccc"),
            ]
        );
        // An Ack beyond what was sent empties it; the next id follows on.
        buffer.ack(99);
        assert_eq!(buffer.bytes(), 0);
        let resent: Vec<Bytes> = buffer.resend(Protocol::MessagePack).collect();
        assert_eq!(
            resent,
            vec![Protocol::MessagePack.encode(&HubMessage::Sequence { sequence_id: 4 })]
        );
    }

    #[test]
    fn buffer_is_bounded_in_bytes() {
        let mut buffer = ResendBuffer::new(10);
        assert!(
            buffer.keep_parked(Bytes::from(vec![b'x'; 30])),
            "an empty buffer takes one record"
        );
        assert!(buffer.is_full());
        assert!(!buffer.keep_parked(Bytes::from("y")));
        buffer.ack(1);
        assert!(buffer.keep_parked(Bytes::from(vec![b'x'; 6])));
        assert!(buffer.keep_parked(Bytes::from(vec![b'x'; 4])));
        assert!(buffer.is_full());
        assert!(!buffer.keep_parked(Bytes::from("z")));
        assert_eq!(buffer.bytes(), 10);
    }

    #[test]
    fn duplicates_after_a_resend_are_dropped() {
        let mut received = Received::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(received.admit(&invocation(), now), Ok(Admitted::Process));
        }
        assert_eq!(received.take_ack(), Some(HubMessage::Ack { sequence_id: 3 }));
        assert_eq!(received.take_ack(), None, "nothing new to acknowledge");
        received.resumed(now);
        assert!(received.ack_due().is_some(), "acknowledged again after a resume");
        // Before the peer's Sequence message, everything is dropped.
        assert_eq!(received.admit(&invocation(), now), Ok(Admitted::Skip));
        let sequence = HubMessage::Sequence { sequence_id: 2 };
        assert_eq!(received.admit(&sequence, now), Ok(Admitted::Skip));
        // 2 and 3 again: duplicates; 4 is new.
        assert_eq!(received.admit(&invocation(), now), Ok(Admitted::Skip));
        assert_eq!(received.admit(&invocation(), now), Ok(Admitted::Skip));
        assert_eq!(received.admit(&HubMessage::Ping, now), Ok(Admitted::Process));
        assert_eq!(received.admit(&invocation(), now), Ok(Admitted::Process));
        assert_eq!(received.take_ack(), Some(HubMessage::Ack { sequence_id: 4 }));
    }

    #[test]
    fn a_sequence_beyond_what_was_received_is_refused() {
        let mut received = Received::default();
        let now = Instant::now();
        assert_eq!(received.admit(&invocation(), now), Ok(Admitted::Process));
        let beyond = HubMessage::Sequence { sequence_id: 3 };
        assert_eq!(received.admit(&beyond, now), Err(BadSequence { sequence_id: 3, expected: 2 }));
        assert!(received.admit(&HubMessage::Sequence { sequence_id: 0 }, now).is_err());
        let sequence = HubMessage::Sequence { sequence_id: 2 };
        assert_eq!(received.admit(&sequence, now), Ok(Admitted::Skip));
    }

    #[test]
    fn acks_reach_the_resend_buffer_and_unacked_records_are_resent() {
        let mut sequencing = Sequencing::new(100);
        for id in ["1", "2", "3"] {
            sequencing.sending(&invocation(), &Bytes::from(id.to_owned()));
        }
        sequencing.sending(&HubMessage::Ping, &Bytes::from_static(b"ping"));
        let ack = HubMessage::Ack { sequence_id: 1 };
        assert_eq!(sequencing.admit(&ack, Instant::now()), Ok(false));
        let (sequence, records) = sequencing.resumed(Instant::now());
        assert_eq!(sequence, HubMessage::Sequence { sequence_id: 2 });
        assert_eq!(records, vec![Bytes::from("2"), Bytes::from("3")]);
    }
}
