//! Hands incoming messages to the caller's event stream exactly once and in
//! order, also across reconnects: remembers the latest message ids delivered per
//! group, and holds a group's live messages back while the messages missed in a
//! disconnect are fetched, so that they come out after those.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::mpsc;

use crate::model::{Event, Message};

/// How many recent ids per group are remembered to drop duplicates. A duplicate
/// can only come from the overlap between a rejoin's history and live delivery,
/// which is far shorter than this.
const REMEMBERED_IDS: usize = 1024;

pub(crate) struct Delivery {
    /// `None` once the client is finished: nothing is delivered after `Closed`.
    events: Option<mpsc::UnboundedSender<Event>>,
    seen: HashMap<String, RecentIds>,
    /// Groups being caught up after a reconnect, with the live messages that
    /// arrived meanwhile.
    held: HashMap<String, Vec<Message>>,
    /// Messages dropped as already delivered. Outside a reconnect the server
    /// never sends one twice, so tests assert this stays 0.
    duplicates_dropped: u64,
}

#[derive(Default)]
struct RecentIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentIds {
    /// Records `id`; false if it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        // No let-chains: the workspace's rust-version is 1.85.
        let evicted =
            if self.order.len() == REMEMBERED_IDS { self.order.pop_front() } else { None };
        if let Some(oldest) = evicted {
            self.set.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.set.insert(id.to_string());
        true
    }
}

impl Delivery {
    pub(crate) fn new(events: mpsc::UnboundedSender<Event>) -> Delivery {
        Delivery {
            events: Some(events),
            seen: HashMap::new(),
            held: HashMap::new(),
            duplicates_dropped: 0,
        }
    }

    pub(crate) fn event(&mut self, event: Event) {
        if let Some(events) = &self.events {
            // A caller that dropped its `Events` just does not get them.
            let _ = events.send(event);
        }
    }

    /// A live `OnMessage`.
    pub(crate) fn message(&mut self, message: Message) {
        if let Some(held) = self.held.get_mut(&message.group_id) {
            held.push(message);
            return;
        }
        self.deliver_once(message);
    }

    /// `OnHistory` answering the caller's own `join_group`: delivered whole (the
    /// caller asked to see it), and remembered so live duplicates are dropped.
    pub(crate) fn history(&mut self, group: String, messages: Vec<Message>) {
        let recent = self.seen.entry(group.clone()).or_default();
        for message in &messages {
            recent.insert(&message.id);
        }
        self.event(Event::History { group, messages });
    }

    /// The id of the latest message delivered in `group`, if any.
    pub(crate) fn last_id(&self, group: &str) -> Option<String> {
        self.seen.get(group).and_then(|recent| recent.order.back().cloned())
    }

    /// From now on `group`'s live messages wait for [`Delivery::release`].
    pub(crate) fn hold(&mut self, group: &str) {
        self.held.entry(group.to_string()).or_default();
    }

    /// Delivers the messages missed in `group`, then the live ones held back,
    /// each at most once. Returns how many of `missed` were new.
    pub(crate) fn release(&mut self, group: &str, missed: Vec<Message>) -> usize {
        let held = self.held.remove(group).unwrap_or_default();
        let mut delivered = 0;
        for message in missed {
            if self.deliver_once(message) {
                delivered += 1;
            }
        }
        for message in held {
            self.deliver_once(message);
        }
        delivered
    }

    /// The caller left `group`: nothing to remember for it.
    pub(crate) fn forget(&mut self, group: &str) {
        self.seen.remove(group);
        self.held.remove(group);
    }

    /// The last event; the stream ends once every sender is gone.
    pub(crate) fn finish(&mut self, error: Option<String>) {
        let held: Vec<String> = self.held.keys().cloned().collect();
        for group in held {
            self.release(&group, Vec::new());
        }
        self.event(Event::Closed { error });
        self.events = None;
    }

    /// Whether it was new (and delivered).
    fn deliver_once(&mut self, message: Message) -> bool {
        if self.seen.entry(message.group_id.clone()).or_default().insert(&message.id) {
            self.event(Event::Message(message));
            true
        } else {
            self.duplicates_dropped += 1;
            false
        }
    }

    pub(crate) fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped
    }
}

/// What was missed in a group, given the id of the last message delivered and
/// the group's history, oldest first, as far back as fetched. `None` when the
/// history does not reach back to that message (fetch older pages first).
pub(crate) fn missed_since(last_id: Option<&str>, history: &[Message]) -> Option<Vec<Message>> {
    match last_id {
        None => Some(history.to_vec()),
        Some(last) => {
            let position = history.iter().position(|m| m.id == last)?;
            Some(history[position + 1..].to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn msg(group: &str, id: &str) -> Message {
        Message {
            id: id.into(),
            author_id: "a".into(),
            group_id: group.into(),
            send_time: SystemTime::UNIX_EPOCH,
            text: id.into(),
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(event) = rx.try_recv() {
            out.push(match event {
                Event::Message(m) => format!("{}:{}", m.group_id, m.id),
                Event::History { group, messages } => format!("history {group} {}", messages.len()),
                other => format!("{other:?}"),
            });
        }
        out
    }

    #[test]
    fn drops_duplicates_and_holds_live_messages_while_catching_up() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut delivery = Delivery::new(tx);
        delivery.history("g".into(), vec![msg("g", "1"), msg("g", "2")]);
        delivery.message(msg("g", "2"));
        delivery.message(msg("g", "3"));
        assert_eq!(drain(&mut rx), ["history g 2", "g:3"]);
        assert_eq!(delivery.duplicates_dropped(), 1);
        assert_eq!(delivery.last_id("g").as_deref(), Some("3"));

        delivery.hold("g");
        delivery.message(msg("g", "6"));
        delivery.message(msg("h", "1"));
        assert_eq!(drain(&mut rx), ["h:1"]);
        let new =
            delivery.release("g", vec![msg("g", "3"), msg("g", "4"), msg("g", "5"), msg("g", "6")]);
        assert_eq!(new, 3, "3 was delivered before");
        assert_eq!(drain(&mut rx), ["g:4", "g:5", "g:6"]);
    }

    #[test]
    fn finish_is_the_last_event() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut delivery = Delivery::new(tx);
        delivery.finish(Some("gone".into()));
        delivery.message(msg("g", "1"));
        assert_eq!(drain(&mut rx), ["Closed { error: Some(\"gone\") }"]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn missed_since_finds_the_last_delivered_message() {
        let history = [msg("g", "1"), msg("g", "2"), msg("g", "3")];
        let ids =
            |v: Option<Vec<Message>>| v.map(|v| v.into_iter().map(|m| m.id).collect::<Vec<_>>());
        assert_eq!(ids(missed_since(Some("2"), &history)), Some(vec!["3".to_string()]));
        assert_eq!(ids(missed_since(Some("3"), &history)), Some(vec![]));
        assert_eq!(ids(missed_since(None, &history)).map(|v| v.len()), Some(3));
        assert_eq!(ids(missed_since(Some("0"), &history)), None);
    }
}
