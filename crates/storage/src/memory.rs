//! Messaging for a single instance: no log to share, so a message is "accepted"
//! once it has an id, and is handed to this instance's `LocalFanout` at once.
//!
//! Ids have the Redis Streams form `<millis>-<seq>`, so they compare the same way
//! in both modes. They strictly increase even if the wall clock goes back, and
//! never fall below the floor given at construction (the latest id the history
//! holds), so they keep increasing across restarts.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use next_chat_core::{
    BackendError, LocalFanout, Message, MessageId, Messaging, NewMessage, OnAccepted,
};

use crate::clock::{now_millis, time_of};

pub struct InProcessMessaging {
    fanout: Arc<LocalFanout>,
    /// The last id handed out. Held while the message is delivered, so every
    /// group's messages reach the fan-out in id order; delivery never waits.
    last: Mutex<MessageId>,
}

impl InProcessMessaging {
    /// `floor` is the highest id already used (e.g. `SqliteStore::latest_id`);
    /// every id handed out is above it.
    pub fn new(fanout: Arc<LocalFanout>, floor: MessageId) -> InProcessMessaging {
        InProcessMessaging { fanout, last: Mutex::new(floor) }
    }
}

/// The id after `last` at wall-clock time `now`: the clock's millisecond if it
/// moved forward, else the next sequence number in the last millisecond.
fn next_id(last: MessageId, now: u64) -> MessageId {
    if now > last.millis {
        MessageId::new(now, 0)
    } else {
        MessageId::new(last.millis, last.seq + 1)
    }
}

#[async_trait]
impl Messaging for InProcessMessaging {
    async fn publish(
        &self,
        message: NewMessage,
        on_accepted: OnAccepted<'_>,
    ) -> Result<Message, BackendError> {
        let mut last = self.last.lock().unwrap_or_else(|poison| poison.into_inner());
        let now = now_millis();
        let id = next_id(*last, now);
        *last = id;
        let accepted = Message {
            id,
            author: message.author,
            group: message.group,
            // The wall clock, not the id's millisecond: after the clock went
            // back the id runs ahead of the time, and the time is what people read.
            send_time: time_of(now),
            text: message.text,
        };
        on_accepted(&accepted);
        self.fanout.deliver(accepted.clone());
        Ok(accepted)
    }

    async fn check(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_when_the_clock_goes_back() {
        let a = next_id(MessageId::new(1000, 4), 900);
        assert_eq!(a, MessageId::new(1000, 5));
        let b = next_id(a, 1000);
        assert_eq!(b, MessageId::new(1000, 6));
        assert_eq!(next_id(b, 1001), MessageId::new(1001, 0));
    }

    #[test]
    fn ids_start_above_the_floor() {
        assert_eq!(next_id(MessageId::new(5000, 0), 10), MessageId::new(5000, 1));
        assert_eq!(next_id(MessageId::MIN, 10), MessageId::new(10, 0));
    }
}
