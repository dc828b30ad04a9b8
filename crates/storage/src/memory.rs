//! Messaging for a single instance: no log to share, so a message is "accepted"
//! once it has an id, and is handed to this instance's `LocalFanout` at once.
//!
//! Ids have the Redis Streams form `<millis>-<seq>`, so they compare the same way
//! in both modes. They strictly increase even if the wall clock goes back, and
//! never fall below the floor given at construction (the latest id the history
//! holds), so they keep increasing across restarts.

use std::hash::BuildHasher;
use std::sync::Arc;

use async_trait::async_trait;
use next_chat_core::{
    BackendError, GroupId, LocalFanout, Message, MessageId, Messaging, NewMessage, OnAccepted,
};
use parking_lot::Mutex;

use crate::clock::{now_millis, time_of};

/// Groups share this many publish locks. Sends to groups on different locks
/// run in parallel; two groups on one lock take turns, which with this many
/// locks is rare among the groups busy at one moment.
const PUBLISH_STRIPES: usize = 64;

pub struct InProcessMessaging {
    fanout: Arc<LocalFanout>,
    /// One lock per stripe of groups, held from a message's id to the end of
    /// its delivery, so every group's messages reach the fan-out in id order.
    /// Delivery never waits, and only sends to the same stripe take turns.
    stripes: Box<[Mutex<()>]>,
    /// Which stripe a group's lock is.
    stripe_hasher: std::hash::RandomState,
    /// The last id handed out, locked only to take the next one (inside a
    /// stripe's lock), so ids strictly increase across the instance.
    last: Mutex<MessageId>,
}

impl InProcessMessaging {
    /// `floor` is the highest id already used (e.g. `SqliteStore::latest_id`);
    /// every id handed out is above it.
    pub fn new(fanout: Arc<LocalFanout>, floor: MessageId) -> InProcessMessaging {
        InProcessMessaging {
            fanout,
            stripes: (0..PUBLISH_STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_hasher: std::hash::RandomState::new(),
            last: Mutex::new(floor),
        }
    }

    fn stripe(&self, group: &GroupId) -> usize {
        self.stripe_hasher.hash_one(group) as usize % self.stripes.len()
    }

    /// The next id, and the wall-clock millisecond it was taken at.
    fn take_id(&self) -> (MessageId, u64) {
        let mut last = self.last.lock();
        let now = now_millis();
        let id = next_id(*last, now);
        *last = id;
        (id, now)
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
        let _in_order = self.stripes[self.stripe(&message.group)].lock();
        let (id, now) = self.take_id();
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
    use std::collections::{HashMap, HashSet};
    use std::sync::mpsc;
    use std::time::Duration;

    use futures_util::FutureExt;
    use next_chat_core::{ConnectionId, Delivery, MessageText, Recipient, UserId};

    use super::*;

    /// Records the ids it is given; optionally announces each delivery and
    /// then waits to be released (a recipient stuck inside `deliver`).
    struct Recorder {
        id: ConnectionId,
        seen: Mutex<Vec<MessageId>>,
        entered: Option<Mutex<mpsc::Sender<MessageId>>>,
        release: Option<Mutex<mpsc::Receiver<()>>>,
    }

    impl Recorder {
        fn new(id: &str) -> Arc<Recorder> {
            Arc::new(Recorder {
                id: ConnectionId::new(id),
                seen: Mutex::new(Vec::new()),
                entered: None,
                release: None,
            })
        }
    }

    impl Recipient for Recorder {
        fn connection_id(&self) -> &ConnectionId {
            &self.id
        }
        fn user(&self) -> &str {
            self.id.as_str()
        }
        fn deliver(&self, delivery: &Delivery) {
            self.seen.lock().push(delivery.message.id);
            if let Some(entered) = &self.entered {
                let _ = entered.lock().send(delivery.message.id);
            }
            if let Some(release) = &self.release {
                let _ = release.lock().recv_timeout(Duration::from_secs(30));
            }
        }
        fn deliver_history(&self, _: &[Message]) {}
        fn encoded_size(&self, _: &Message) -> usize {
            0
        }
    }

    fn draft(group: &GroupId) -> NewMessage {
        NewMessage {
            author: UserId::from_trusted("ann"),
            group: group.clone(),
            text: MessageText::from_trusted("hi"),
        }
    }

    fn join(fanout: &LocalFanout, group: &GroupId, recipient: Arc<Recorder>) {
        fanout.subscribe(group, recipient).expect("a new subscription").open(&[]);
    }

    /// Publishes without an executor: in-process publishing never waits.
    fn publish(messaging: &InProcessMessaging, group: &GroupId) -> Message {
        messaging
            .publish(draft(group), &|_| {})
            .now_or_never()
            .expect("publishing never waits")
            .expect("accepted")
    }

    #[test]
    fn concurrent_sends_reach_every_member_once_and_in_id_order_per_group() {
        const GROUPS: usize = 12;
        const THREADS: usize = 6;
        const SENDS: usize = 300;
        let fanout = Arc::new(LocalFanout::new());
        let messaging = Arc::new(InProcessMessaging::new(fanout.clone(), MessageId::MIN));
        let groups: Vec<GroupId> =
            (0..GROUPS).map(|g| GroupId::from_trusted(&format!("g{g}"))).collect();
        let members: Vec<Vec<Arc<Recorder>>> = groups
            .iter()
            .map(|group| {
                (0..2)
                    .map(|m| {
                        let member = Recorder::new(&format!("{}-{m}", group.as_str()));
                        join(&fanout, group, member.clone());
                        member
                    })
                    .collect()
            })
            .collect();
        let senders: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (messaging, groups) = (messaging.clone(), groups.clone());
                std::thread::spawn(move || {
                    let mut sent = Vec::with_capacity(SENDS);
                    for i in 0..SENDS {
                        let group = &groups[(thread + i) % GROUPS];
                        sent.push((group.clone(), publish(&messaging, group).id));
                    }
                    sent
                })
            })
            .collect();
        let mut sent_to: HashMap<GroupId, Vec<MessageId>> = HashMap::new();
        for sender in senders {
            let sent = sender.join().expect("a sender thread");
            // One thread's sends follow each other: their ids increase.
            assert!(sent.windows(2).all(|pair| pair[0].1 < pair[1].1), "{sent:?}");
            for (group, id) in sent {
                sent_to.entry(group).or_default().push(id);
            }
        }
        let all: HashSet<MessageId> = sent_to.values().flatten().copied().collect();
        assert_eq!(all.len(), THREADS * SENDS, "every id is handed out once");
        for (group, members) in groups.iter().zip(&members) {
            let mut expected = sent_to.remove(group).unwrap_or_default();
            expected.sort();
            for member in members {
                let seen = member.seen.lock().clone();
                assert_eq!(seen, expected, "{}: every message once, in id order", member.id);
            }
        }
    }

    #[test]
    fn a_member_stuck_in_delivery_holds_up_no_other_group() {
        let fanout = Arc::new(LocalFanout::new());
        let messaging = Arc::new(InProcessMessaging::new(fanout.clone(), MessageId::MIN));
        let stuck_group = GroupId::from_trusted("stuck");
        // A group on another lock than the stuck one (with one lock for every
        // group, no group would do).
        let other_group = (0..)
            .map(|n| GroupId::from_trusted(&format!("other-{n}")))
            .find(|group| messaging.stripe(group) != messaging.stripe(&stuck_group))
            .expect("a group on another lock");
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let stuck = Arc::new(Recorder {
            id: ConnectionId::new("stuck"),
            seen: Mutex::new(Vec::new()),
            entered: Some(Mutex::new(entered_tx)),
            release: Some(Mutex::new(release_rx)),
        });
        join(&fanout, &stuck_group, stuck);
        let (delivered_tx, delivered) = mpsc::channel();
        let other = Arc::new(Recorder {
            id: ConnectionId::new("other"),
            seen: Mutex::new(Vec::new()),
            entered: Some(Mutex::new(delivered_tx)),
            release: None,
        });
        join(&fanout, &other_group, other);

        let stuck_send = {
            let (messaging, group) = (messaging.clone(), stuck_group.clone());
            std::thread::spawn(move || publish(&messaging, &group).id)
        };
        let stuck_id = entered.recv_timeout(Duration::from_secs(10)).expect("the stuck delivery");
        let other_send = {
            let (messaging, group) = (messaging.clone(), other_group.clone());
            std::thread::spawn(move || publish(&messaging, &group).id)
        };
        let other_id = delivered.recv_timeout(Duration::from_secs(10));
        release.send(()).expect("the stuck member waits");
        let other_id = other_id.expect("the other group's send went through meanwhile");
        assert_eq!(stuck_send.join().expect("the stuck send"), stuck_id);
        assert_eq!(other_send.join().expect("the other send"), other_id);
        assert!(other_id > stuck_id, "ids increase across groups");
    }

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
