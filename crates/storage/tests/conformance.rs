//! One conformance suite for every backend: each test is a generic function over
//! a `Fixture`, and `conformance!` instantiates all of them for a backend. The
//! embedded backends run on a temporary SQLite file; the scale-out ones on the
//! machine's Redis and MariaDB, each test with its own key prefix and database,
//! removed afterwards, so the tests run in parallel and can be rerun.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use next_chat_core::{
    HistoryStore, JoinOutcome, LocalFanout, Membership, Message, MessageId, MessageText, Messaging,
    NewMessage,
};

/// One backend set under test. Dropping it removes what the test created.
#[async_trait]
trait Fixture: Sized + Send + Sync + 'static {
    async fn start() -> Self;
    fn membership(&self) -> Arc<dyn Membership>;
    fn history(&self) -> Arc<dyn HistoryStore>;
    /// A messaging backend delivering to `fanout`.
    async fn messaging(&self, fanout: Arc<LocalFanout>) -> Arc<dyn Messaging>;
    /// Whether other instances share this backend's state (rate buckets).
    const SHARED: bool;
}

// ---------------------------------------------------------------- the suite

async fn groups_are_created_once_and_listed_in_code_point_order<F: Fixture>() {
    let fixture = F::start().await;
    let membership = fixture.membership();
    let names = ["b", "a", "B", "é", "z", "ä", "日本", "Z", "a b", "😀"];
    for name in names {
        membership.create_group(&group(name), None).await.unwrap();
    }
    // Creating one that exists is not an error.
    membership.create_group(&group("a"), None).await.unwrap();
    assert!(membership.group_exists(&group("é")).await.unwrap());
    assert!(!membership.group_exists(&group("A")).await.unwrap(), "case-sensitive");
    assert!(!membership.group_exists(&group("nope")).await.unwrap());
    assert_eq!(membership.group_count().await.unwrap(), names.len(), "each group counted once");

    let mut expected: Vec<&str> = names.to_vec();
    expected.sort(); // str order is code-point order
    let all = membership.list_groups(None, 1000).await.unwrap();
    let all: Vec<&str> = all.iter().map(|g| g.as_str()).collect();
    assert_eq!(all, expected);

    // Paging by `after`, three at a time, yields the same sequence.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = membership.list_groups(after.as_ref(), 3).await.unwrap();
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page.iter().map(|g| g.as_str().to_string()));
    }
    assert_eq!(paged, expected);
    // `after` need not be a group: it is a position.
    let page = membership.list_groups(Some(&group("b0")), 2).await.unwrap();
    let page: Vec<&str> = page.iter().map(|g| g.as_str()).collect();
    assert_eq!(page, vec!["z", "ä"]);
}

async fn a_user_on_two_connections_counts_once<F: Fixture>() {
    let fixture = F::start().await;
    let membership = fixture.membership();
    let g = group("room");
    membership.create_group(&g, None).await.unwrap();
    let alice = user("alice");
    assert_eq!(
        membership.join(&g, &alice, &connection("c1"), 20).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(
        membership.join(&g, &alice, &connection("c2"), 20).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(membership.member_count(&g).await.unwrap(), 1);
    assert_eq!(membership.members(&g).await.unwrap(), std::slice::from_ref(&alice));
    // Members are listed once each, in code point order.
    membership.join(&g, &user("Zoe"), &connection("c3"), 20).await.unwrap();
    membership.join(&g, &user("émile"), &connection("c4"), 20).await.unwrap();
    membership.join(&g, &user("bob"), &connection("c5"), 20).await.unwrap();
    assert_eq!(
        membership.members(&g).await.unwrap(),
        [user("Zoe"), alice.clone(), user("bob"), user("émile")]
    );
    for (name, c) in [("Zoe", "c3"), ("émile", "c4"), ("bob", "c5")] {
        membership.leave(&g, &user(name), &connection(c)).await.unwrap();
    }
    membership.leave(&g, &alice, &connection("c1")).await.unwrap();
    assert_eq!(membership.member_count(&g).await.unwrap(), 1, "c2 is still joined");
    assert_eq!(membership.members(&g).await.unwrap(), std::slice::from_ref(&alice));
    membership.leave(&g, &alice, &connection("c2")).await.unwrap();
    assert_eq!(membership.member_count(&g).await.unwrap(), 0);
    assert!(membership.members(&g).await.unwrap().is_empty());
    assert!(membership.members(&group("nowhere")).await.unwrap().is_empty());
    // Leaving a group one is not in, or one that has no members, is fine.
    membership.leave(&g, &alice, &connection("c2")).await.unwrap();
    membership.leave(&group("other"), &alice, &connection("c1")).await.unwrap();
}

async fn the_twenty_first_user_finds_no_room_until_a_place_is_freed<F: Fixture>() {
    let fixture = F::start().await;
    let membership = fixture.membership();
    let g = group("full");
    membership.create_group(&g, None).await.unwrap();
    for i in 0..20 {
        let outcome =
            membership.join(&g, &user(&format!("u{i}")), &connection(&format!("c{i}")), 20).await;
        assert_eq!(outcome.unwrap(), JoinOutcome::Joined, "user {i}");
    }
    let late = user("late");
    assert_eq!(
        membership.join(&g, &late, &connection("cl"), 20).await.unwrap(),
        JoinOutcome::NoRoom
    );
    assert_eq!(membership.member_count(&g).await.unwrap(), 20, "NoRoom changes nothing");
    // A member on another connection still gets in.
    assert_eq!(
        membership.join(&g, &user("u3"), &connection("c3-bis"), 20).await.unwrap(),
        JoinOutcome::Joined
    );
    // A leave by a connection that is not the member's frees nothing.
    membership.leave(&g, &user("u5"), &connection("not-c5")).await.unwrap();
    assert_eq!(
        membership.join(&g, &late, &connection("cl"), 20).await.unwrap(),
        JoinOutcome::NoRoom
    );
    membership.leave(&g, &user("u5"), &connection("c5")).await.unwrap();
    assert_eq!(membership.member_count(&g).await.unwrap(), 19);
    assert_eq!(
        membership.join(&g, &late, &connection("cl"), 20).await.unwrap(),
        JoinOutcome::Joined
    );
    assert_eq!(membership.member_count(&g).await.unwrap(), 20);
    assert_eq!(
        membership.join(&g, &user("u5"), &connection("c5"), 20).await.unwrap(),
        JoinOutcome::NoRoom,
        "the freed place was taken"
    );
}

async fn joins_racing_for_the_last_places_admit_exactly_the_maximum<F: Fixture>() {
    let fixture = F::start().await;
    let membership = fixture.membership();
    let g = group("race");
    membership.create_group(&g, None).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let membership = Arc::clone(&membership);
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            membership.join(&g, &user(&format!("u{i}")), &connection(&format!("c{i}")), 20).await
        }));
    }
    let mut joined = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == JoinOutcome::Joined {
            joined += 1;
        }
    }
    assert_eq!(joined, 20);
    assert_eq!(membership.member_count(&g).await.unwrap(), 20);
}

async fn appending_the_same_batch_twice_stores_it_once<F: Fixture>() {
    let fixture = F::start().await;
    let history = fixture.history();
    let batch: Vec<Message> = (0..5).map(|i| message("g", 1000 + i, 0, &format!("m{i}"))).collect();
    history.append(&batch).await.unwrap();
    history.append(&batch).await.unwrap();
    // Overlapping batches too.
    history.append(&batch[3..]).await.unwrap();
    history.append(&[]).await.unwrap();
    let stored = history.read(&group("g"), None, 100).await.unwrap();
    assert_eq!(stored, batch);
}

async fn history_reads_latest_and_before_oldest_first<F: Fixture>() {
    let fixture = F::start().await;
    let history = fixture.history();
    // Ids with sequences past 9 and millis of different lengths: ordering must
    // be numeric, not textual.
    let mut all = Vec::new();
    for (millis, seq) in [(999, 0), (999, 1), (1000, 0), (1000, 2), (1000, 9), (1000, 10)] {
        all.push(message("room", millis, seq, &format!("{millis}-{seq}")));
    }
    for seq in 0..5 {
        all.push(message("room", 10_000, seq, "later"));
    }
    // Appended out of order and in two batches.
    let mut shuffled = all.clone();
    shuffled.reverse();
    history.append(&shuffled[..4]).await.unwrap();
    history.append(&shuffled[4..]).await.unwrap();
    // Other groups, including one that differs only in case, stay apart.
    history
        .append(&[message("Room", 1000, 1, "other"), message("room2", 1000, 1, "x")])
        .await
        .unwrap();

    let g = group("room");
    assert_eq!(history.read(&g, None, 100).await.unwrap(), all);
    assert_eq!(history.read(&g, None, 3).await.unwrap(), all[8..].to_vec());
    let before = MessageId::new(1000, 10);
    assert_eq!(history.read(&g, Some(before), 3).await.unwrap(), all[2..5].to_vec());
    assert_eq!(history.read(&g, Some(before), 100).await.unwrap(), all[..5].to_vec());
    assert_eq!(history.read(&g, Some(MessageId::new(999, 0)), 10).await.unwrap(), vec![]);
    assert_eq!(history.read(&group("nobody"), None, 10).await.unwrap(), vec![]);

    assert!(history.contains(&g, MessageId::new(1000, 10)).await.unwrap());
    assert!(!history.contains(&g, MessageId::new(1000, 1)).await.unwrap());
    assert!(history.contains(&group("Room"), MessageId::new(1000, 1)).await.unwrap());
    assert!(!history.contains(&group("ROOM"), MessageId::new(1000, 1)).await.unwrap());
}

async fn history_reads_after_an_id_oldest_first<F: Fixture>() {
    let fixture = F::start().await;
    let history = fixture.history();
    // Numeric ordering across sequence and millis lengths, as for `read`.
    let mut all = Vec::new();
    for (millis, seq) in [(999, 0), (999, 1), (1000, 0), (1000, 2), (1000, 9), (1000, 10)] {
        all.push(message("room", millis, seq, &format!("{millis}-{seq}")));
    }
    for seq in 0..5 {
        all.push(message("room", 10_000, seq, "later"));
    }
    let mut shuffled = all.clone();
    shuffled.reverse();
    history.append(&shuffled).await.unwrap();
    history
        .append(&[message("Room", 1000, 1, "other"), message("room2", 1000, 1, "x")])
        .await
        .unwrap();

    let g = group("room");
    assert_eq!(history.read_after(&g, MessageId::MIN, 100).await.unwrap(), all);
    assert_eq!(history.read_after(&g, MessageId::MIN, 3).await.unwrap(), all[..3].to_vec());
    // After a stored id: the ones above it, not it.
    assert_eq!(
        history.read_after(&g, MessageId::new(1000, 2), 3).await.unwrap(),
        all[4..7].to_vec()
    );
    // `after` as a position between ids (1000-1 is another group's).
    assert_eq!(
        history.read_after(&g, MessageId::new(1000, 1), 100).await.unwrap(),
        all[3..].to_vec()
    );
    assert_eq!(
        history.read_after(&g, MessageId::new(999, 5), 2).await.unwrap(),
        all[2..4].to_vec()
    );
    assert_eq!(history.read_after(&g, MessageId::new(10_000, 4), 10).await.unwrap(), vec![]);
    assert_eq!(history.read_after(&g, MessageId::new(u64::MAX >> 1, 0), 10).await.unwrap(), vec![]);
    assert_eq!(history.read_after(&group("nobody"), MessageId::MIN, 10).await.unwrap(), vec![]);
    // Paging on from each page's last id walks every message once.
    let mut after = MessageId::MIN;
    let mut walked = Vec::new();
    loop {
        let page = history.read_after(&g, after, 4).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        walked.extend(page);
    }
    assert_eq!(walked, all);
}

async fn history_reads_are_cut_in_bytes_of_text<F: Fixture>() {
    let fixture = F::start().await;
    let history = fixture.history();
    // Ten messages of 100 bytes (é is two), then one of 1000 and a short one.
    let mut all = Vec::new();
    for seq in 0..10 {
        all.push(message("room", 1000, seq, &"é".repeat(50)));
    }
    all.push(message("room", 2000, 0, &"x".repeat(1000)));
    all.push(message("room", 2000, 1, "tail"));
    history.append(&all).await.unwrap();
    let g = group("room");

    // Backwards: the newest that fit, at least one however small the budget.
    let page = history.read_within(&g, None, 100, 1004).await.unwrap();
    assert_eq!(page, all[10..].to_vec());
    let page = history.read_within(&g, None, 100, 1003).await.unwrap();
    assert_eq!(page, all[11..].to_vec());
    let page = history.read_within(&g, Some(MessageId::new(2000, 1)), 100, 10).await.unwrap();
    assert_eq!(page, all[10..11].to_vec(), "one message over the budget still comes");
    let page = history.read_within(&g, Some(MessageId::new(2000, 0)), 100, 350).await.unwrap();
    assert_eq!(page, all[7..10].to_vec());
    // The row limit still holds, and a budget that holds all changes nothing.
    let page = history.read_within(&g, Some(MessageId::new(2000, 0)), 2, 1 << 20).await.unwrap();
    assert_eq!(page, all[8..10].to_vec());
    assert_eq!(history.read_within(&g, None, 100, 1 << 20).await.unwrap(), all);
    assert_eq!(history.read_within(&group("nobody"), None, 10, 10).await.unwrap(), vec![]);

    // Forwards: the oldest that fit, at least one.
    let page = history.read_after_within(&g, MessageId::MIN, 100, 350).await.unwrap();
    assert_eq!(page, all[..3].to_vec());
    let page = history.read_after_within(&g, MessageId::new(1000, 9), 100, 10).await.unwrap();
    assert_eq!(page, all[10..11].to_vec());
    let page = history.read_after_within(&g, MessageId::new(1000, 8), 100, 1100).await.unwrap();
    assert_eq!(page, all[9..11].to_vec());
    let page = history.read_after_within(&g, MessageId::new(1000, 8), 1, 1 << 20).await.unwrap();
    assert_eq!(page, all[9..10].to_vec());
    let page = history.read_after_within(&g, MessageId::new(2000, 1), 10, 10).await.unwrap();
    assert_eq!(page, vec![]);
}

async fn history_keeps_the_longest_text_and_any_characters<F: Fixture>() {
    let fixture = F::start().await;
    let history = fixture.history();
    // 16384 characters of 4 bytes each: 64 KiB, more than a MySQL TEXT holds.
    let long = "😀".repeat(16384);
    let odd = "line 1\nline 2\t\u{0}end 'quoted' \"double\" \\ é日本";
    let batch = vec![message("g😀", 1, 0, &long), message("g😀", 1, 1, odd)];
    history.append(&batch).await.unwrap();
    assert_eq!(history.read(&group("g😀"), None, 10).await.unwrap(), batch);
}

fn draft(group_name: &str, text: &str) -> NewMessage {
    NewMessage {
        author: user("alice"),
        group: group(group_name),
        text: MessageText::from_trusted(text),
    }
}

async fn published_messages_get_increasing_ids_and_are_delivered_in_order<F: Fixture>() {
    let fixture = F::start().await;
    let fanout = Arc::new(LocalFanout::new());
    let messaging = fixture.messaging(Arc::clone(&fanout)).await;
    let g = group("talk");
    let mut first = subscribe(&fanout, messaging.as_ref(), &g, "c1").await;
    let mut second = subscribe(&fanout, messaging.as_ref(), &g, "c2").await;
    let mut elsewhere = subscribe(&fanout, messaging.as_ref(), &group("elsewhere"), "c3").await;

    let accepted = Mutex::new(Vec::new());
    let mut published = Vec::new();
    for i in 0..50 {
        let on_accepted = |m: &Message| accepted.lock().unwrap().push(m.clone());
        let message =
            messaging.publish(draft("talk", &format!("m{i}")), &on_accepted).await.unwrap();
        assert_eq!(message.group, g);
        assert_eq!(message.text.as_str(), format!("m{i}"));
        published.push(message);
    }
    assert_eq!(*accepted.lock().unwrap(), published, "on_accepted saw each message once");
    assert!(published.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(receive(&mut first, 50).await, published);
    assert_eq!(receive(&mut second, 50).await, published);
    expect_nothing(&mut first, Duration::from_millis(100)).await;
    expect_nothing(&mut elsewhere, Duration::from_millis(1)).await;
    messaging.shutdown().await;
}

async fn concurrent_publishers_are_seen_in_one_order<F: Fixture>() {
    let fixture = F::start().await;
    let fanout = Arc::new(LocalFanout::new());
    let messaging = fixture.messaging(Arc::clone(&fanout)).await;
    let g = group("busy");
    let mut first = subscribe(&fanout, messaging.as_ref(), &g, "c1").await;
    let mut second = subscribe(&fanout, messaging.as_ref(), &g, "c2").await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let messaging = Arc::clone(&messaging);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let m = messaging.publish(draft("busy", &format!("{t}/{i}")), &|_| {}).await;
                ids.push(m.unwrap().id);
            }
            ids
        }));
    }
    let mut published = BTreeSet::new();
    for task in tasks {
        let ids = task.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "one publisher's ids increase");
        published.extend(ids);
    }
    assert_eq!(published.len(), 100, "ids are unique");
    let seen_first: Vec<MessageId> = receive(&mut first, 100).await.iter().map(|m| m.id).collect();
    let seen_second: Vec<MessageId> =
        receive(&mut second, 100).await.iter().map(|m| m.id).collect();
    assert_eq!(seen_first, seen_second, "both subscribers see one order");
    assert_eq!(seen_first, published.into_iter().collect::<Vec<_>>(), "delivered in id order");
    messaging.shutdown().await;
}

async fn groups_record_who_created_them<F: Fixture>() {
    let fixture = F::start().await;
    let membership = fixture.membership();
    let (ann, ben) = (user("ann"), user("ben"));
    membership.create_group(&group("a"), Some(&ann)).await.unwrap();
    membership.create_group(&group("b"), Some(&ann)).await.unwrap();
    membership.create_group(&group("c"), Some(&ben)).await.unwrap();
    membership.create_group(&group("loaded"), None).await.unwrap();
    // Creating one that exists changes nothing, its owner included.
    membership.create_group(&group("a"), Some(&ben)).await.unwrap();
    assert_eq!(membership.groups_owned(&ann).await.unwrap(), 2);
    assert_eq!(membership.groups_owned(&ben).await.unwrap(), 1);
    assert_eq!(membership.groups_owned(&user("cy")).await.unwrap(), 0);
    assert_eq!(membership.group_owner(&group("a")).await.unwrap(), Some(ann));
    assert_eq!(membership.group_owner(&group("c")).await.unwrap(), Some(ben));
    assert_eq!(membership.group_owner(&group("loaded")).await.unwrap(), None);
    assert_eq!(membership.group_owner(&group("missing")).await.unwrap(), None);
}

async fn shared_rate_buckets_hold_the_burst_then_the_rate<F: Fixture>() {
    let fixture = F::start().await;
    let membership = fixture.membership();
    let rate = next_chat_core::rate::Rate::per_minute(3, 3);
    let (ann, ben) = (user("ann"), user("ben"));
    for i in 0..3 {
        let taken = membership.take_shared_token("creations", &ann, &rate).await.unwrap();
        assert_eq!(taken, None, "token {i} of the burst");
    }
    let refused = membership.take_shared_token("creations", &ann, &rate).await.unwrap();
    if F::SHARED {
        let wait = refused.expect("the fourth within the minute waits");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        // Each user and each kind has a bucket of its own.
        assert_eq!(membership.take_shared_token("creations", &ben, &rate).await.unwrap(), None);
        assert_eq!(membership.take_shared_token("messages", &ann, &rate).await.unwrap(), None);
    } else {
        assert_eq!(refused, None, "one instance: its own buckets are the whole truth");
    }
}

async fn backends_answer_check<F: Fixture>() {
    let fixture = F::start().await;
    fixture.membership().check().await.unwrap();
    fixture.history().check().await.unwrap();
    let messaging = fixture.messaging(Arc::new(LocalFanout::new())).await;
    messaging.check().await.unwrap();
    messaging.shutdown().await;
}

macro_rules! conformance {
    ($module:ident, $fixture:ty) => {
        mod $module {
            use super::*;

            conformance!(@tests $fixture;
                groups_are_created_once_and_listed_in_code_point_order,
                a_user_on_two_connections_counts_once,
                the_twenty_first_user_finds_no_room_until_a_place_is_freed,
                joins_racing_for_the_last_places_admit_exactly_the_maximum,
                appending_the_same_batch_twice_stores_it_once,
                history_reads_latest_and_before_oldest_first,
                history_reads_after_an_id_oldest_first,
                history_reads_are_cut_in_bytes_of_text,
                history_keeps_the_longest_text_and_any_characters,
                published_messages_get_increasing_ids_and_are_delivered_in_order,
                concurrent_publishers_are_seen_in_one_order,
                groups_record_who_created_them,
                shared_rate_buckets_hold_the_burst_then_the_rate,
                backends_answer_check,
            );
        }
    };
    (@tests $fixture:ty; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                super::$test::<$fixture>().await;
            }
        )*
    };
}

// ------------------------------------------------------------- embedded

mod embedded_fixture {
    use super::*;
    use next_chat_storage::{EmbeddedMembership, InProcessMessaging, SqliteStore};

    pub struct Embedded {
        // Held so the database file outlives the test.
        _dir: tempfile::TempDir,
        store: SqliteStore,
        membership: Arc<EmbeddedMembership>,
    }

    #[async_trait]
    impl Fixture for Embedded {
        const SHARED: bool = false;

        async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("chat.db").display());
            let store = SqliteStore::open(&url).await.unwrap();
            let membership = Arc::new(EmbeddedMembership::new(store.clone()));
            Embedded { _dir: dir, store, membership }
        }

        fn membership(&self) -> Arc<dyn Membership> {
            self.membership.clone()
        }

        fn history(&self) -> Arc<dyn HistoryStore> {
            Arc::new(self.store.clone())
        }

        async fn messaging(&self, fanout: Arc<LocalFanout>) -> Arc<dyn Messaging> {
            let floor = self.store.latest_id().await.unwrap().unwrap_or(MessageId::MIN);
            Arc::new(InProcessMessaging::new(fanout, floor))
        }
    }
}

conformance!(embedded, embedded_fixture::Embedded);

// ------------------------------------------------------------- Redis + MySQL

mod scale_out_fixture {
    use super::*;
    use next_chat_storage::{MySqlHistory, RedisMembership, RedisMessaging, mysql};

    pub struct ScaleOut {
        membership: Arc<RedisMembership>,
        history: Arc<MySqlHistory>,
        // Last, so the keys and database are removed after everything else let go.
        names: ScaleOutNames,
    }

    #[async_trait]
    impl Fixture for ScaleOut {
        const SHARED: bool = true;

        async fn start() -> Self {
            let names = ScaleOutNames::new();
            mysql::migrate(&names.mysql_url()).await.unwrap();
            let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), false).await.unwrap());
            let membership = Arc::new(RedisMembership::start(names.redis_config()).await.unwrap());
            ScaleOut { membership, history, names }
        }

        fn membership(&self) -> Arc<dyn Membership> {
            self.membership.clone()
        }

        fn history(&self) -> Arc<dyn HistoryStore> {
            self.history.clone()
        }

        async fn messaging(&self, fanout: Arc<LocalFanout>) -> Arc<dyn Messaging> {
            Arc::new(RedisMessaging::start(self.names.redis_config(), fanout).await.unwrap())
        }
    }
}

conformance!(redis_mysql, scale_out_fixture::ScaleOut);

// ------------------------------------------------------ Redis Cluster + MySQL

mod cluster_fixture {
    use super::*;
    use next_chat_storage::{MySqlHistory, RedisConfig, RedisMembership, RedisMessaging, mysql};
    use next_chat_testkit::RedisCluster;

    pub struct Cluster {
        membership: Arc<RedisMembership>,
        history: Arc<MySqlHistory>,
        config: RedisConfig,
        // Last: the cluster's nodes are killed and the database dropped after
        // everything else let go.
        _cluster: RedisCluster,
        _names: ScaleOutNames,
    }

    #[async_trait]
    impl Fixture for Cluster {
        const SHARED: bool = true;

        async fn start() -> Self {
            let cluster = RedisCluster::start().await;
            let names = ScaleOutNames::new();
            mysql::migrate(&names.mysql_url()).await.unwrap();
            let history = Arc::new(MySqlHistory::connect(&names.mysql_url(), false).await.unwrap());
            // Four shards in four buckets: a publisher and its readers meet
            // over several masters.
            let config = RedisConfig {
                url: cluster.url(),
                cluster: true,
                stream_shards: 4,
                ..names.redis_config()
            };
            let membership = Arc::new(RedisMembership::start(config.clone()).await.unwrap());
            Cluster { membership, history, config, _cluster: cluster, _names: names }
        }

        fn membership(&self) -> Arc<dyn Membership> {
            self.membership.clone()
        }

        fn history(&self) -> Arc<dyn HistoryStore> {
            self.history.clone()
        }

        async fn messaging(&self, fanout: Arc<LocalFanout>) -> Arc<dyn Messaging> {
            Arc::new(RedisMessaging::start(self.config.clone(), fanout).await.unwrap())
        }
    }
}

conformance!(redis_cluster_mysql, cluster_fixture::Cluster);
