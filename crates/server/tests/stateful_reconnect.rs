//! Stateful reconnect as a chat member sees it: a member whose socket drops
//! keeps its place in a full group for the reconnect window, and loses it when
//! the window passes without a reconnect (counted as `expired`).

mod common;

use common::*;
use next_chat_testkit::{TestServer, eventually};
use serde_json::json;

/// `nextchat_stateful_reconnects_total{outcome="..."}` (0 before the first).
async fn reconnects(server: &TestServer, outcome: &str) -> f64 {
    let metrics = server.metrics().await;
    metrics.value_or_zero("nextchat_stateful_reconnects_total", &[("outcome", outcome)])
}

/// A hub connection with stateful reconnect (negotiated, handshake version 2).
async fn stateful_hub(server: &TestServer, user: &str) -> Socket {
    let (status, body) = http(
        server.port,
        "POST",
        "/next-chat/negotiate?negotiateVersion=1&useStatefulReconnect=true",
        &[("Authorization", user)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("negotiate JSON");
    assert_eq!(body["useStatefulReconnect"], true, "{body}");
    let token = body["connectionToken"].as_str().expect("a token");
    let mut socket = websocket(&format!("{}?id={token}", server.ws_url()), user).await;
    send_text(&mut socket, &format!("{{\"protocol\":\"json\",\"version\":2}}{RS}")).await;
    let reply = next_data(&mut socket).await.expect("handshake reply");
    assert_eq!(String::from_utf8_lossy(&reply), format!("{{}}{RS}"));
    socket
}

#[tokio::test]
async fn a_member_cut_off_keeps_its_place_in_a_full_group_for_the_window_only() {
    let server = TestServer::start(vec![
        "--stateful-reconnect-window-secs".into(),
        "3".into(),
        "--max-members".into(),
        "20".into(),
    ])
    .await;
    let mut first = stateful_hub(&server, "member0").await;
    assert_eq!(json_invoke(&mut first, "j", "JoinGroup", json!(["full"])).await["result"], 0);
    let mut others = Vec::new();
    for i in 1..20 {
        let mut member = json_hub(&server.ws_url(), &format!("member{i}")).await;
        assert_eq!(json_invoke(&mut member, "j", "JoinGroup", json!(["full"])).await["result"], 0);
        others.push(member);
    }
    drop(first);

    // Within the window the group is still full: member0 holds its place.
    let mut late = json_hub(&server.ws_url(), "late").await;
    let refused = json_invoke(&mut late, "j1", "JoinGroup", json!(["full"])).await;
    assert_eq!(refused["result"], 1, "no room while member0 may come back: {refused}");
    assert_eq!(reconnects(&server, "expired").await, 0.0);

    // When the window passes, member0's connection ends and its place is free.
    eventually(WAIT, "the window expires", || async { reconnects(&server, "expired").await > 0.0 })
        .await;
    let joined = json_invoke(&mut late, "j2", "JoinGroup", json!(["full"])).await;
    assert_eq!(joined["result"], 0, "member0's place was released: {joined}");
}

#[tokio::test]
async fn messages_for_a_member_away_beyond_the_buffer_close_its_connection() {
    let server = TestServer::start(vec![
        "--stateful-reconnect-buffer-bytes".into(),
        "2000".into(),
        "--max-members".into(),
        "2".into(),
    ])
    .await;
    let mut away = stateful_hub(&server, "away").await;
    assert_eq!(json_invoke(&mut away, "j", "JoinGroup", json!(["g"])).await["result"], 0);
    let mut sender = json_hub(&server.ws_url(), "sender").await;
    assert_eq!(json_invoke(&mut sender, "j", "JoinGroup", json!(["g"])).await["result"], 0);
    drop(away);

    // About 150 bytes each: 40 of them are three times the buffer.
    for i in 0..40 {
        let id = format!("s{i}");
        let sent = json_invoke(&mut sender, &id, "SendMessage", json!(["g", "x".repeat(50)])).await;
        assert!(sent.get("error").is_none(), "{sent}");
    }
    eventually(WAIT, "an overflow counted", || async {
        reconnects(&server, "overflowed").await > 0.0
    })
    .await;
    assert_eq!(reconnects(&server, "expired").await, 0.0);
    // Its place in the group (2 of 2) is free again.
    let mut late = json_hub(&server.ws_url(), "late").await;
    assert_eq!(json_invoke(&mut late, "j", "JoinGroup", json!(["g"])).await["result"], 0);
}
