//! Abuse of the chat rules, against a real server process: each test exceeds one
//! bound (identity, history page bytes, groups per connection, connections per
//! user in a group, message and group-creation rates, total groups), checks the
//! error a person reads, and then checks the same connection still works.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use next_chat_testkit::{TestServer, eventually};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Frame;

/// Sends every invocation without waiting for any completion (a client
/// pipelining its calls, one WebSocket message each) and returns the
/// completions by invocation id.
async fn invoke_all(
    socket: &mut Socket,
    calls: &[(String, &str, Value)],
) -> HashMap<String, Value> {
    for (id, target, args) in calls {
        let invocation =
            json!({"type": 1, "invocationId": id, "target": target, "arguments": args});
        socket.feed(Frame::text(format!("{invocation}{RS}"))).await.expect("queue a frame");
    }
    socket.flush().await.expect("send the frames");
    let mut completions = HashMap::new();
    while completions.len() < calls.len() {
        let data = next_data(socket).await.expect("the connection stays open");
        for record in String::from_utf8_lossy(&data).split(RS).filter(|r| !r.is_empty()) {
            let value: Value = serde_json::from_str(record).expect("server sends JSON");
            if value["type"] == 3 {
                let id = value["invocationId"].as_str().expect("an invocation id").to_string();
                completions.insert(id, value);
            }
        }
    }
    completions
}

fn error_of(completion: &Value) -> &str {
    completion["error"].as_str().unwrap_or_else(|| panic!("an error completion: {completion}"))
}

fn assert_ok(completion: &Value) {
    assert!(completion.get("error").is_none(), "{completion}");
}

async fn assert_usable(socket: &mut Socket, id: &str) {
    assert_ok(&json_invoke(socket, id, "ListGroups", json!([])).await);
}

/// `retry in N ms` from a rate-limit error.
fn retry_ms(error: &str) -> u64 {
    let rest = error.split("retry in ").nth(1).unwrap_or_else(|| panic!("a retry time: {error}"));
    rest.split(" ms").next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{error}"))
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(
            |b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            },
        )
        .collect()
}

#[tokio::test]
async fn user_ids_with_format_characters_or_only_whitespace_are_refused() {
    let server = TestServer::embedded().await;
    let bad = [
        ("ann\u{200B}", "format"),
        ("\u{202E}nna", "format"),
        ("\u{FEFF}ann", "format"),
        ("a\u{2066}nn\u{2069}", "format"),
        ("soft\u{AD}hyphen", "format"),
        ("\u{200D}", "format"),
        ("   ", "blank"),
        ("\u{3000}\u{2003}", "blank"),
    ];
    for (user, rule) in bad {
        let path = format!(
            "/next-chat/negotiate?negotiateVersion=1&access_token={}",
            percent_encode(user)
        );
        let (status, body) = http(server.port, "POST", &path, &[]).await;
        assert_eq!(status, 401, "user {user:?}: {body}");
        assert!(body.contains("user id") && body.contains(rule), "user {user:?}: {body}");
    }
    let (status, body) =
        http(server.port, "POST", "/next-chat/negotiate?negotiateVersion=1&access_token=ann", &[])
            .await;
    assert_eq!(status, 200, "{body}");
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    assert_usable(&mut ann, "1").await;
}

#[tokio::test]
async fn group_ids_with_format_characters_are_refused() {
    let server = TestServer::embedded().await;
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    let cases = [
        ("CreateGroup", "off\u{200B}topic", "format"),
        ("JoinGroup", "\u{202E}cipot-ffo", "format"),
        ("JoinGroup", "\u{2067}g", "format"),
        ("CreateGroup", "\u{3000}", "blank"),
    ];
    for (i, (method, group, rule)) in cases.into_iter().enumerate() {
        let completion = json_invoke(&mut ann, &format!("e{i}"), method, json!([group])).await;
        let error = error_of(&completion);
        assert!(error.contains("groupId") && error.contains(rule), "{group:?}: {error}");
        assert_usable(&mut ann, &format!("ok{i}")).await;
    }
    let groups = json_invoke(&mut ann, "list", "ListGroups", json!([])).await;
    assert_eq!(groups["result"], json!([]), "no group was created");
}

#[tokio::test]
async fn a_connection_joins_at_most_max_groups_per_connection() {
    let server = TestServer::embedded().await;
    // The groups exist already (made by several users, each within its
    // creation rate), so only the per-connection bound is in play.
    for creator in 0..3 {
        let mut user = json_hub(&server.ws_url(), &format!("creator{creator}")).await;
        let calls: Vec<_> = (0..101)
            .filter(|i| i % 3 == creator)
            .map(|i| (format!("c{i}"), "CreateGroup", json!([format!("g{i:03}")])))
            .collect();
        invoke_all(&mut user, &calls).await.values().for_each(assert_ok);
    }
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    let calls: Vec<_> =
        (0..101).map(|i| (format!("j{i}"), "JoinGroup", json!([format!("g{i:03}")]))).collect();
    let completions = invoke_all(&mut ann, &calls).await;
    let refused: Vec<_> = completions.values().filter(|c| c.get("error").is_some()).collect();
    assert_eq!(refused.len(), 1, "exactly one join over the limit is refused: {refused:?}");
    let error = error_of(&completions["j100"]);
    assert!(error.contains("max_groups_per_connection") && error.contains("100"), "{error}");
    assert_usable(&mut ann, "1").await;
    assert_ok(&json_invoke(&mut ann, "leave", "LeaveGroup", json!(["g000"])).await);
    assert_eq!(json_invoke(&mut ann, "again", "JoinGroup", json!(["g100"])).await["result"], 0);
}

#[tokio::test]
async fn a_user_joins_one_group_from_at_most_max_connections_per_user_in_group() {
    let server = TestServer::embedded().await;
    let mut sockets = Vec::new();
    for i in 0..10 {
        let mut socket = json_hub(&server.ws_url(), "ann").await;
        assert_eq!(
            json_invoke(&mut socket, &format!("j{i}"), "JoinGroup", json!(["g"])).await["result"],
            0
        );
        sockets.push(socket);
    }
    let mut eleventh = json_hub(&server.ws_url(), "ann").await;
    let completion = json_invoke(&mut eleventh, "j", "JoinGroup", json!(["g"])).await;
    let error = error_of(&completion);
    assert!(
        error.contains("max_connections_per_user_in_group")
            && error.contains("10")
            && error.contains("ann"),
        "{error}"
    );
    assert_usable(&mut eleventh, "1").await;
    let mut bob = json_hub(&server.ws_url(), "bob").await;
    assert_eq!(json_invoke(&mut bob, "j", "JoinGroup", json!(["g"])).await["result"], 0);
    assert_ok(&json_invoke(&mut sockets[0], "leave", "LeaveGroup", json!(["g"])).await);
    assert_eq!(json_invoke(&mut eleventh, "j2", "JoinGroup", json!(["g"])).await["result"], 0);
}

#[tokio::test]
async fn sending_faster_than_the_user_rate_is_refused_with_a_retry_time() {
    let server = TestServer::start(
        ["--user-messages-per-second", "10", "--user-messages-burst", "10"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    assert_eq!(json_invoke(&mut ann, "j", "JoinGroup", json!(["g"])).await["result"], 0);
    let calls: Vec<_> =
        (0..40).map(|i| (format!("s{i}"), "SendMessage", json!(["g", format!("m{i}")]))).collect();
    let completions = invoke_all(&mut ann, &calls).await;
    let errors: Vec<&str> =
        completions.values().filter(|c| c.get("error").is_some()).map(error_of).collect();
    let accepted = completions.len() - errors.len();
    assert!(
        (10..40).contains(&accepted),
        "the burst of 10 and what refilled got through: {accepted}"
    );
    for error in &errors {
        assert!(
            error.starts_with(
                "rate limited: more than 10 messages per second for user ann; retry in "
            ),
            "{error}"
        );
        assert!((1..=100).contains(&retry_ms(error)), "one message per 100 ms: {error}");
    }
    assert_usable(&mut ann, "1").await;
    // Send until refused, then wait the time the error names: that is enough.
    let mut refused = None;
    for i in 0..20 {
        let completion =
            json_invoke(&mut ann, &format!("t{i}"), "SendMessage", json!(["g", "t"])).await;
        if let Some(error) = completion["error"].as_str() {
            refused = Some(retry_ms(error));
            break;
        }
    }
    let wait = refused.expect("sending one by one runs into the limit again");
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_ok(&json_invoke(&mut ann, "after", "SendMessage", json!(["g", "again"])).await);
}

#[tokio::test]
async fn creating_groups_faster_than_the_user_rate_is_refused() {
    let server =
        TestServer::start(["--groups-created-per-minute", "3"].map(String::from).to_vec()).await;
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    for (i, group) in ["a", "b", "c"].into_iter().enumerate() {
        assert_ok(&json_invoke(&mut ann, &format!("c{i}"), "CreateGroup", json!([group])).await);
    }
    for (method, group) in [("CreateGroup", "d"), ("JoinGroup", "e")] {
        let completion = json_invoke(&mut ann, method, method, json!([group])).await;
        let error = error_of(&completion);
        assert!(
            error.starts_with(
                "rate limited: more than 3 groups created per minute for user ann; retry in "
            ),
            "{method}: {error}"
        );
        assert!((1..=60_000).contains(&retry_ms(error)), "{error}");
    }
    // Groups that exist cost nothing: creating or joining them still works.
    assert_ok(&json_invoke(&mut ann, "again", "CreateGroup", json!(["a"])).await);
    assert_eq!(json_invoke(&mut ann, "join", "JoinGroup", json!(["b"])).await["result"], 0);
    let mut bob = json_hub(&server.ws_url(), "bob").await;
    assert_ok(&json_invoke(&mut bob, "c", "CreateGroup", json!(["d"])).await);
    let groups = json_invoke(&mut ann, "list", "ListGroups", json!([])).await;
    assert_eq!(groups["result"].as_array().map(Vec::len), Some(4), "{groups}");
}

/// Reconnecting does not refill the user's creation bucket.
#[tokio::test]
async fn reconnecting_does_not_refill_the_group_creation_rate() {
    let server =
        TestServer::start(["--groups-created-per-minute", "3"].map(String::from).to_vec()).await;
    let mut created = 0;
    for i in 0..5 {
        let mut ann = json_hub(&server.ws_url(), "ann").await;
        for j in 0..2 {
            let completion =
                json_invoke(&mut ann, "c", "CreateGroup", json!([format!("r{i}-{j}")])).await;
            match completion["error"].as_str() {
                None => created += 1,
                Some(error) => assert!(error.contains("groups created per minute"), "{error}"),
            }
        }
        ann.close(None).await.unwrap();
    }
    assert_eq!(created, 3);
}

/// One user may have created at most `max_groups_owned_per_user` groups that
/// exist, counted from storage: a restart does not reset it; others still create.
#[tokio::test]
async fn a_user_owns_at_most_max_groups_owned_per_user_across_restarts() {
    let mut server =
        TestServer::start(["--max-groups-owned-per-user", "2"].map(String::from).to_vec()).await;
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    for group in ["a", "b"] {
        assert_ok(&json_invoke(&mut ann, group, "CreateGroup", json!([group])).await);
    }
    let expected = "user 'ann' created 2 groups that still exist, the limit \
                    (max_groups_owned_per_user); join an existing group";
    for (method, group) in [("CreateGroup", "c"), ("JoinGroup", "d")] {
        let completion = json_invoke(&mut ann, method, method, json!([group])).await;
        assert_eq!(error_of(&completion), expected, "{method}");
    }
    // Groups that exist are joined as before; other users create their own.
    assert_eq!(json_invoke(&mut ann, "j", "JoinGroup", json!(["a"])).await["result"], 0);
    let mut bob = json_hub(&server.ws_url(), "bob").await;
    assert_ok(&json_invoke(&mut bob, "c", "CreateGroup", json!(["c"])).await);
    drop((ann, bob));
    server.restart().await;
    let mut ann = json_hub(&server.ws_url(), "ann").await;
    let completion = json_invoke(&mut ann, "e", "CreateGroup", json!(["e"])).await;
    assert_eq!(error_of(&completion), expected, "the count is stored, not kept in memory");
}

#[tokio::test]
async fn the_server_holds_at_most_max_groups() {
    let server = TestServer::start(["--max-groups", "3"].map(String::from).to_vec()).await;
    for i in 0..3 {
        let mut user = json_hub(&server.ws_url(), &format!("u{i}")).await;
        assert_ok(&json_invoke(&mut user, "c", "CreateGroup", json!([format!("g{i}")])).await);
    }
    let mut mallory = json_hub(&server.ws_url(), "mallory").await;
    for (method, group) in [("CreateGroup", "!!!"), ("JoinGroup", "!!!!")] {
        let completion = json_invoke(&mut mallory, method, method, json!([group])).await;
        let error = error_of(&completion);
        assert!(error.contains("max_groups") && error.contains('3'), "{method}: {error}");
    }
    assert_eq!(json_invoke(&mut mallory, "j", "JoinGroup", json!(["g0"])).await["result"], 0);
    let groups = json_invoke(&mut mallory, "list", "ListGroups", json!([])).await;
    assert_eq!(groups["result"], json!([{"groupId": "g0"}, {"groupId": "g1"}, {"groupId": "g2"}]));
}

/// The default history page cap, `history_page_max_bytes`.
const PAGE_CAP: usize = 1024 * 1024;
const CONTROL_TEXT_CHARS: usize = 16_384;
const MESSAGES: usize = 500;

fn rss_kib(pid: u32) -> u64 {
    next_chat_testkit::rss_kib(pid).expect("the server runs")
}

/// The finding: a group of 16,384-character messages of control
/// characters (each escaped as `\u00XX`, ~98 KiB of JSON), read with
/// `GetHistory(g, null, 500)`. A client that stops reading and asks ten times
/// made the server hold 514 MB; a reading client got 49 MB pages.
#[tokio::test]
async fn history_pages_are_capped_in_bytes_whether_or_not_the_client_reads() {
    // The reader below pages back through ~49 MB at once: a history read budget
    // that does not get in the way (the budget has tests of its own).
    let server = TestServer::start(
        [
            "--history-read-bytes-per-second",
            "1000000000",
            "--history-read-burst-bytes",
            "1000000000",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let pid = server.pid().expect("the server runs");
    let mut writer = json_hub(&server.ws_url(), "writer").await;
    assert_eq!(json_invoke(&mut writer, "j", "JoinGroup", json!(["g"])).await["result"], 0);
    let text: String = (0..CONTROL_TEXT_CHARS).map(|i| char::from(1 + (i % 7) as u8)).collect();
    for batch in 0..MESSAGES / 50 {
        let calls: Vec<_> =
            (0..50).map(|i| (format!("s{batch}-{i}"), "SendMessage", json!(["g", text]))).collect();
        let completions = invoke_all(&mut writer, &calls).await;
        completions.values().for_each(assert_ok);
    }
    drop(writer);

    // A client that never reads: ten full-size pages must not pile up in memory.
    let before = rss_kib(pid);
    let mut silent = json_hub(&server.ws_url(), "silent").await;
    // Its OnHistory is a page too; the client does not read that either.
    let mut frame = format!(
        "{}{RS}",
        json!({"type": 1, "invocationId": "j", "target": "JoinGroup", "arguments": ["g"]})
    );
    for i in 0..10 {
        let call = json!({"type": 1, "invocationId": format!("h{i}"), "target": "GetHistory", "arguments": ["g", null, 500]});
        frame.push_str(&format!("{call}{RS}"));
    }
    send_text(&mut silent, &frame).await;
    // Either every call is answered (pages under the cap, or refused once the
    // user's history read budget is spent) or, with the outbound byte bound,
    // the server closes the client as a slow consumer first.
    let what = "the server answers the ten GetHistory calls or closes the client";
    eventually(Duration::from_secs(120), what, || async {
        let metrics = server.metrics().await;
        let answered = |outcome| {
            metrics.value_or_zero(
                "nextchat_invocations_total",
                &[("method", "GetHistory"), ("outcome", outcome)],
            )
        };
        let reads = answered("ok") + answered("error");
        reads >= 10.0 || metrics.value_or_zero("nextchat_slow_consumers_closed_total", &[]) > 0.0
    })
    .await;
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    eprintln!("RSS grew by {grown_mib} MiB for ten unread GetHistory(g, null, 500) pages");
    assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB for a client that does not read");
    drop(silent);

    // A client that reads: every page is under the cap, and paging back with
    // `before` = the page's oldest id sees every message once, in order.
    let mut reader = json_hub(&server.ws_url(), "reader").await;
    let join = json!({"type": 1, "invocationId": "j", "target": "JoinGroup", "arguments": ["g"]});
    send_text(&mut reader, &format!("{join}{RS}")).await;
    let mut on_history_bytes = None;
    loop {
        let data = next_data(&mut reader).await.expect("the connection stays open");
        for record in String::from_utf8_lossy(&data).split(RS).filter(|r| !r.is_empty()) {
            let value: Value = serde_json::from_str(record).expect("JSON");
            if value["target"] == "OnHistory" {
                on_history_bytes = Some(record.len());
                let messages = value["arguments"][0].as_array().expect("a message array");
                assert!(
                    !messages.is_empty() && messages.len() < 100,
                    "{} messages",
                    messages.len()
                );
            }
        }
        if on_history_bytes.is_some() {
            break;
        }
    }
    let on_history_bytes = on_history_bytes.expect("an OnHistory");
    assert!(on_history_bytes <= PAGE_CAP, "OnHistory is {on_history_bytes} bytes");

    let mut seen: Vec<String> = Vec::new();
    let mut before: Value = Value::Null;
    let mut pages = 0;
    loop {
        let id = format!("p{pages}");
        let call = json!({"type": 1, "invocationId": id, "target": "GetHistory", "arguments": ["g", before, 500]});
        send_text(&mut reader, &format!("{call}{RS}")).await;
        let (bytes, completion) = loop {
            let data = next_data(&mut reader).await.expect("the connection stays open");
            let text = String::from_utf8_lossy(&data).to_string();
            let found = text.split(RS).filter(|r| !r.is_empty()).find_map(|record| {
                let value: Value = serde_json::from_str(record).expect("JSON");
                (value["invocationId"] == id.as_str()).then_some((record.len(), value))
            });
            if let Some(found) = found {
                break found;
            }
        };
        assert!(bytes <= PAGE_CAP, "page {pages} is {bytes} bytes");
        let page = completion["result"].as_array().expect("a message array").clone();
        pages += 1;
        if page.is_empty() {
            break;
        }
        let ids: Vec<String> =
            page.iter().map(|m| m["id"].as_str().expect("an id").to_string()).collect();
        before = json!(ids[0]);
        seen.splice(0..0, ids);
    }
    assert_eq!(seen.len(), MESSAGES, "every message once, over {pages} pages");
    let mut sorted = seen.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').expect("an id");
        (ms.parse::<u64>().expect("ms"), seq.parse::<u64>().expect("seq"))
    });
    sorted.dedup();
    assert_eq!(sorted, seen, "oldest first, no repeats");
    assert!(pages > 40, "{pages} pages of at most 1 MiB for ~49 MB of history");
    eprintln!("{pages} pages; OnHistory {on_history_bytes} bytes");
}
