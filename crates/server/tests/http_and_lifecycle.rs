//! The server as an operator sees it: plain HTTP endpoints, identity checks,
//! configuration errors and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use next_chat_testkit::{TestServer, binary};
use serde_json::json;

#[tokio::test]
async fn health_ready_and_metrics() {
    let server = TestServer::embedded().await;
    let (status, body) = http(server.port, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(server.port, "GET", "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ready"), "{body}");

    let mut socket = json_hub(&server.ws_url(), "ann").await;
    let completion = json_invoke(&mut socket, "1", "JoinGroup", json!(["metrics"])).await;
    assert_eq!(completion["result"], 0, "{completion}");
    let completion = json_invoke(&mut socket, "2", "SendMessage", json!(["metrics", "hi"])).await;
    assert!(completion.get("error").is_none(), "{completion}");
    let completion = json_invoke(&mut socket, "3", "SendMessage", json!(["nowhere", "hi"])).await;
    assert!(completion.get("error").is_some(), "{completion}");

    let metrics = server.metrics().await;
    let invocations = |outcome| [("method", "SendMessage"), ("outcome", outcome)];
    for (name, labels, expected) in [
        ("nextchat_connections", &[("transport", "WebSockets"), ("protocol", "json")][..], 1.0),
        ("nextchat_invocations_total", &invocations("ok")[..], 1.0),
        ("nextchat_invocations_total", &invocations("error")[..], 1.0),
        ("nextchat_messages_delivered_total", &[][..], 1.0),
        ("nextchat_history_write_failures_total", &[][..], 0.0),
    ] {
        assert_eq!(metrics.value(name, labels), expected, "{name} {labels:?}:\n{metrics}");
    }
    assert!(
        metrics.get("nextchat_history_write_seconds_count", &[]).is_some(),
        "metrics lack nextchat_history_write_seconds_count:\n{metrics}"
    );
}

#[tokio::test]
async fn identity_is_required_on_negotiate_and_transports() {
    let server = TestServer::embedded().await;
    let (status, _) =
        http(server.port, "POST", "/next-chat/negotiate?negotiateVersion=1", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = http(server.port, "GET", "/next-chat", &[]).await;
    assert_eq!(status, 401);
    let (status, body) = http(
        server.port,
        "POST",
        "/next-chat/negotiate?negotiateVersion=1",
        &[("Authorization", "Bearer ann")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let negotiated: serde_json::Value =
        serde_json::from_str(&body).expect("negotiate returns JSON");
    let token = negotiated["connectionToken"].as_str().expect("v1 has a connectionToken");
    // Another user may not use ann's connection.
    let path = format!("/next-chat?id={token}");
    let (status, _) = http(
        server.port,
        "GET",
        &path,
        &[("Authorization", "bob"), ("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http(server.port, "POST", "/next-chat/negotiate?access_token=ann", &[]).await;
    assert_eq!(status, 200, "access_token works as identity");
}

#[tokio::test]
async fn sigterm_sends_close_with_allow_reconnect_and_exits_zero() {
    let mut server = TestServer::embedded().await;
    let mut socket = json_hub(&server.ws_url(), "ann").await;
    let completion = json_invoke(&mut socket, "1", "JoinGroup", json!(["bye"])).await;
    assert_eq!(completion["result"], 0);
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        let status = server.stop().await;
        (status, server)
    });
    let close = json_until(&mut socket, |v| v["type"] == 7).await;
    assert_eq!(close["allowReconnect"], true, "{close}");
    let (status, _server) = stopping.await.expect("stop task");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_restart_keeps_groups_and_history() {
    let mut server = TestServer::embedded().await;
    let mut socket = json_hub(&server.ws_url(), "ann").await;
    json_invoke(&mut socket, "1", "JoinGroup", json!(["kept"])).await;
    let sent =
        json_invoke(&mut socket, "2", "SendMessage", json!(["kept", "before restart"])).await;
    assert!(sent.get("error").is_none(), "{sent}");
    drop(socket);
    server.restart().await;

    let mut socket = json_hub(&server.ws_url(), "ann").await;
    let groups = json_invoke(&mut socket, "1", "ListGroups", json!([])).await;
    assert_eq!(groups["result"], json!([{"groupId": "kept"}]));
    let join =
        json!({"type": 1, "invocationId": "2", "target": "JoinGroup", "arguments": ["kept"]});
    send_text(&mut socket, &format!("{join}{RS}")).await;
    let history = json_until(&mut socket, |v| v["target"] == "OnHistory").await;
    let messages = history["arguments"][0].as_array().expect("an array of messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["text"], "before restart");
    // New ids keep increasing after the restart.
    let old_id = messages[0]["id"].as_str().unwrap().to_string();
    json_until(&mut socket, |v| v["type"] == 3 && v["invocationId"] == "2").await;
    json_invoke(&mut socket, "3", "SendMessage", json!(["kept", "after restart"])).await;
    let page = json_invoke(&mut socket, "4", "GetHistory", json!(["kept", null, 10])).await;
    let ids: Vec<&str> =
        page["result"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], old_id);
}

#[test]
fn a_bad_setting_stops_the_server_naming_the_key() {
    let output = std::process::Command::new(binary("next-chat-server"))
        .args(["--listen", "127.0.0.1:0", "--max-members", "0"])
        .output()
        .expect("run next-chat-server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_members"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("next-chat.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:0\nhistory_on_join: many\n").unwrap();
    let output = std::process::Command::new(binary("next-chat-server"))
        .args(["--config", file.to_str().unwrap()])
        .output()
        .expect("run next-chat-server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("history_on_join"), "{stderr}");
}

#[test]
fn an_unreachable_backend_is_retried_then_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let started = Instant::now();
    let output = std::process::Command::new(binary("next-chat-server"))
        .args(["--listen", "127.0.0.1:0", "--database", &db, "--redis", "redis://127.0.0.1:1"])
        // Long enough for a retry even when the first attempt (start-up,
        // migrations, three refused connections) is slow on a loaded machine:
        // a retry is only made while it can start before the deadline.
        .args(["--startup-timeout-secs", "5"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run next-chat-server");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("backends not reachable yet"), "it retried: {stderr}");
    assert!(stderr.contains("next-chat-server: redis: cannot start messaging"), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited before giving up");
}
