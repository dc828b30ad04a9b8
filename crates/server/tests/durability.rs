//! Nothing whose send completed is lost: the double fault of a history
//! outage and a killed instance, with streams small enough that the
//! messages fill them. The stream keeps what history lacks and refuses
//! further sends with an error naming the setting, rather than trimming
//! accepted messages away.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::join_all;
use next_chat_client::{Client, ClientOptions, JoinResult};
use next_chat_testkit::{
    MYSQL_ADDR, ScaleOut, TcpProxy, TestServer, eventually, mariadb, max_size_text,
};

const GROUP: &str = "double-fault";

#[tokio::test(flavor = "multi_thread")]
async fn a_history_outage_and_a_killed_instance_lose_no_completed_send() {
    const SENDS: usize = 40;
    let scale = ScaleOut::create();
    let proxy = TcpProxy::start(MYSQL_ADDR).await;
    let mut args = scale.args_via(None, Some(proxy.port));
    // One stream shard of 1 MiB: about a dozen of the largest messages.
    args.extend(
        ["--redis-stream-shards", "1", "--redis-stream-max-bytes", "1048576"].map(String::from),
    );
    let mut server = TestServer::start(args.clone()).await;
    // 40 queued calls of 64 KiB each outlast the default call timeout on a
    // loaded machine; a timed-out send would leave its outcome unknown.
    let mut options = ClientOptions::new(&server.url, "alice");
    options.call_timeout = Duration::from_secs(120);
    let (client, _events) = Client::connect(options).await.unwrap();
    assert_eq!(client.join_group(GROUP).await, Ok(JoinResult::Joined));

    proxy.cut();
    // 40 maximum-size messages at once, while history is away.
    let sends = (0..SENDS).map(|i| {
        let client = client.clone();
        async move { (i, client.send_message(GROUP, &max_size_text(i)).await) }
    });
    let results = join_all(sends).await;
    let mut completed = HashSet::new();
    for (i, result) in results {
        match result {
            Ok(()) => {
                completed.insert(max_size_text(i));
            }
            Err(error) => {
                let error = error.to_string();
                assert!(error.contains("limit redis_stream_max_bytes"), "send {i}: {error}");
            }
        }
    }
    println!("{} of {SENDS} sends completed during the outage", completed.len());
    assert!(completed.len() >= 5, "the shard takes several before it is full");
    assert!(completed.len() < SENDS, "a 1 MiB shard cannot hold 40 of the largest messages");

    // The instance dies with everything unstored; history comes back; a new
    // instance (its reconciler) must store every completed send, once.
    server.kill().await;
    proxy.restore();
    let _next = TestServer::start(args).await;
    let database = scale.database.clone();
    let count_sql = format!("SELECT COUNT(*) FROM messages WHERE group_id = '{GROUP}'");
    let expected = completed.len().to_string();
    let took = eventually(Duration::from_secs(60), "every completed send is stored", || {
        let (database, sql, expected) = (database.clone(), count_sql.clone(), expected.clone());
        async move { mariadb(&database, &sql).await == expected }
    })
    .await;
    println!("all {} stored {took:?} after the new instance started", completed.len());
    let stored = mariadb(
        &database,
        &format!("SELECT COUNT(DISTINCT id_millis, id_seq), COUNT(DISTINCT text) FROM messages WHERE group_id = '{GROUP}'"),
    )
    .await;
    assert_eq!(stored, format!("{0}\t{0}", completed.len()), "each stored once");
    // The mariadb client shows the emoji as '?': compare the numbers in front.
    let sql = format!("SELECT LEFT(text, 5) FROM messages WHERE group_id = '{GROUP}'");
    let texts = mariadb(&database, &sql).await;
    let stored: HashSet<String> = texts.lines().map(str::to_string).collect();
    let completed: HashSet<String> = completed.iter().map(|t| t[..5].to_string()).collect();
    assert_eq!(stored, completed, "exactly the completed sends are stored");
}
