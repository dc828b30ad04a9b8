//! Stateful reconnect, the client's side (as `@microsoft/signalr`'s
//! `MessageBuffer`): both sides number the hub messages they send from 1 (every
//! one but Ping, Close, Ack and Sequence), keep what the other has not
//! acknowledged, and when a new WebSocket replaces one that dropped, each sends
//! a `Sequence` message then everything unacknowledged; each drops what it
//! already processed. The connection's calls and groups carry on as if nothing
//! happened.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use next_chat_signalr::protocol::HubMessage;
use tokio::time::Instant;

use crate::transport::Resume;

/// How often (at most) the client acknowledges what it received, as the
/// JavaScript client does.
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes of sent messages kept until the server acknowledges them; while
/// more are kept, the client sends no new call (the JavaScript client's
/// default and behaviour).
pub(crate) const BUFFER_BYTES: usize = 100_000;

pub(crate) struct Stateful {
    pub(crate) resume: Resume,
    /// Sent sequenced records the server has not acknowledged, from `first_id`.
    sent: VecDeque<Bytes>,
    first_id: i64,
    sent_bytes: usize,
    /// After a new socket, everything before the server's Sequence message is
    /// ignored.
    wait_for_sequence: bool,
    next_receive_id: i64,
    latest_received: i64,
    last_acked: i64,
    ack_due: Option<Instant>,
}

/// Whether a message counts toward the sequence ids.
fn is_sequenced(message: &HubMessage) -> bool {
    matches!(
        message,
        HubMessage::Invocation { .. }
            | HubMessage::StreamItem { .. }
            | HubMessage::Completion { .. }
            | HubMessage::StreamInvocation { .. }
            | HubMessage::CancelInvocation { .. }
    )
}

impl Stateful {
    pub(crate) fn new(resume: Resume) -> Stateful {
        Stateful {
            resume,
            sent: VecDeque::new(),
            first_id: 1,
            sent_bytes: 0,
            wait_for_sequence: false,
            next_receive_id: 1,
            latest_received: 0,
            last_acked: 0,
            ack_due: None,
        }
    }

    /// Whether to hold new calls until the server acknowledges some.
    pub(crate) fn is_full(&self) -> bool {
        self.sent_bytes >= BUFFER_BYTES
    }

    /// Keeps a record being sent, if it is sequenced.
    pub(crate) fn sending(&mut self, message: &HubMessage, record: &Bytes) {
        if is_sequenced(message) {
            self.sent_bytes += record.len();
            self.sent.push_back(record.clone());
        }
    }

    /// Whether to act on a message from the server; `Err` ends the connection.
    pub(crate) fn admit(&mut self, message: &HubMessage, now: Instant) -> Result<bool, String> {
        if self.wait_for_sequence {
            if !matches!(message, HubMessage::Sequence { .. }) {
                return Ok(false);
            }
            self.wait_for_sequence = false;
        }
        match message {
            HubMessage::Sequence { sequence_id } => {
                if *sequence_id < 1 || *sequence_id > self.next_receive_id {
                    return Err(format!(
                        "the server's Sequence ID {sequence_id} is beyond the {} messages received",
                        self.next_receive_id - 1
                    ));
                }
                self.next_receive_id = *sequence_id;
                Ok(false)
            }
            HubMessage::Ack { sequence_id } => {
                while self.first_id <= *sequence_id {
                    let Some(record) = self.sent.pop_front() else { break };
                    self.sent_bytes -= record.len();
                    self.first_id += 1;
                }
                Ok(false)
            }
            message if is_sequenced(message) => {
                let id = self.next_receive_id;
                self.next_receive_id += 1;
                if id <= self.latest_received {
                    return Ok(false);
                }
                self.latest_received = id;
                self.ack_due.get_or_insert(now + ACK_INTERVAL);
                Ok(true)
            }
            _ => Ok(true),
        }
    }

    pub(crate) fn ack_due(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The Ack to send now, if there is anything new to acknowledge.
    pub(crate) fn take_ack(&mut self) -> Option<HubMessage> {
        self.ack_due = None;
        (self.latest_received > self.last_acked).then(|| {
            self.last_acked = self.latest_received;
            HubMessage::Ack { sequence_id: self.latest_received }
        })
    }

    /// A new socket replaced the old one: what to send on it first (the
    /// Sequence message, then every unacknowledged record).
    pub(crate) fn resumed(&mut self) -> (HubMessage, Vec<Bytes>) {
        self.wait_for_sequence = true;
        // An Ack sent just before the drop may be lost: acknowledge again.
        self.last_acked = 0;
        (HubMessage::Sequence { sequence_id: self.first_id }, self.sent.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stateful() -> Stateful {
        Stateful::new(crate::transport::Resume::for_tests())
    }

    fn call(id: &str) -> HubMessage {
        HubMessage::Invocation {
            invocation_id: Some(id.into()),
            target: "SendMessage".into(),
            arguments: Vec::new(),
            stream_ids: Vec::new(),
        }
    }

    #[test]
    fn unacked_calls_are_resent_after_the_sequence() {
        let mut state = stateful();
        for id in ["1", "2", "3"] {
            state.sending(&call(id), &Bytes::from(id.to_owned()));
        }
        state.sending(&HubMessage::Ping, &Bytes::from_static(b"ping"));
        assert_eq!(state.admit(&HubMessage::Ack { sequence_id: 1 }, Instant::now()), Ok(false));
        let (sequence, records) = state.resumed();
        assert_eq!(sequence, HubMessage::Sequence { sequence_id: 2 });
        assert_eq!(records, vec![Bytes::from("2"), Bytes::from("3")]);
    }

    #[test]
    fn duplicates_from_the_server_are_dropped() {
        let mut state = stateful();
        let now = Instant::now();
        let completion = HubMessage::Completion {
            invocation_id: "1".into(),
            outcome: next_chat_signalr::protocol::Outcome::Void,
        };
        assert_eq!(state.admit(&completion, now), Ok(true));
        assert_eq!(state.admit(&completion, now), Ok(true));
        assert_eq!(state.take_ack(), Some(HubMessage::Ack { sequence_id: 2 }));
        state.resumed();
        assert_eq!(state.admit(&completion, now), Ok(false), "before the Sequence");
        assert_eq!(state.admit(&HubMessage::Sequence { sequence_id: 2 }, now), Ok(false));
        assert_eq!(state.admit(&completion, now), Ok(false), "2 again");
        assert_eq!(state.admit(&completion, now), Ok(true), "3 is new");
        assert!(state.admit(&HubMessage::Sequence { sequence_id: 9 }, now).is_err());
    }
}
