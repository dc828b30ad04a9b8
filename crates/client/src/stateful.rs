//! Stateful reconnect, the client's side: the signalr crate's [`Sequencing`]
//! (numbering, Acks, de-duplication, the resend buffer) plus how to open
//! another WebSocket to the same connection. When a new WebSocket replaces one
//! that dropped, the client sends a `Sequence` message then everything the
//! server has not acknowledged; the connection's calls and groups carry on as
//! if nothing happened.

use bytes::Bytes;
use next_chat_signalr::protocol::HubMessage;
use next_chat_signalr::sequence::Sequencing;
use tokio::time::Instant;

use crate::transport::Resume;

/// Bytes of sent messages kept until the server acknowledges them; while
/// more are kept, the client sends no new call (the JavaScript client's
/// default and behaviour).
const BUFFER_BYTES: usize = 100_000;

pub(crate) struct Stateful {
    pub(crate) resume: Resume,
    sequencing: Sequencing,
}

impl Stateful {
    pub(crate) fn new(resume: Resume) -> Stateful {
        Stateful { resume, sequencing: Sequencing::new(BUFFER_BYTES) }
    }

    /// Whether to hold new calls until the server acknowledges some.
    pub(crate) fn is_full(&self) -> bool {
        self.sequencing.is_full()
    }

    /// Keeps a record being sent, if it is sequenced.
    pub(crate) fn sending(&mut self, message: &HubMessage, record: &Bytes) {
        self.sequencing.sending(message, record);
    }

    /// Whether to act on a message from the server; `Err` ends the connection.
    pub(crate) fn admit(&mut self, message: &HubMessage, now: Instant) -> Result<bool, String> {
        self.sequencing.admit(message, now).map_err(|bad| {
            format!(
                "the server's Sequence ID {} is beyond the {} messages received",
                bad.sequence_id,
                bad.expected - 1
            )
        })
    }

    pub(crate) fn ack_due(&self) -> Option<Instant> {
        self.sequencing.ack_due()
    }

    /// The Ack to send now, if there is anything new to acknowledge.
    pub(crate) fn take_ack(&mut self) -> Option<HubMessage> {
        self.sequencing.take_ack()
    }

    /// A new socket replaced the old one: what to send on it first (the
    /// Sequence message, then every unacknowledged record).
    pub(crate) fn resumed(&mut self) -> (HubMessage, Vec<Bytes>) {
        self.sequencing.resumed(Instant::now())
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
        let error = state.admit(&HubMessage::Sequence { sequence_id: 9 }, now);
        assert_eq!(
            error,
            Err("the server's Sequence ID 9 is beyond the 3 messages received".into())
        );
    }
}
