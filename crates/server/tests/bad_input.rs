//! Bad input closes only the connection that sent it, with an error a person can
//! act on; the server goes on serving everyone else.

mod common;

use common::*;
use futures_util::SinkExt;
use next_chat_testkit::TestServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;

/// A bystander connection that must keep working after each bad one.
async fn assert_still_serving(bystander: &mut Socket, id: &str) {
    let completion = json_invoke(bystander, id, "ListGroups", json!([])).await;
    assert!(completion.get("error").is_none(), "{completion}");
}

#[tokio::test]
async fn malformed_json_closes_with_an_error() {
    let server = TestServer::embedded().await;
    let mut bystander = json_hub(&server.ws_url(), "bystander").await;
    let mut bad = json_hub(&server.ws_url(), "mallory").await;
    send_text(&mut bad, &format!("{{\"type\":1,\"target\":{RS}")).await;
    let close = expect_close(&mut bad).await;
    let error = close["error"].as_str().expect("Close carries an error");
    assert!(!error.is_empty());
    assert_still_serving(&mut bystander, "1").await;
}

#[tokio::test]
async fn unknown_message_type_closes_with_an_error() {
    let server = TestServer::embedded().await;
    let mut bystander = json_hub(&server.ws_url(), "bystander").await;
    let mut bad = json_hub(&server.ws_url(), "mallory").await;
    send_text(&mut bad, &format!("{{\"type\":99}}{RS}")).await;
    let close = expect_close(&mut bad).await;
    assert!(close["error"].as_str().expect("an error").contains("99"), "{close}");
    assert_still_serving(&mut bystander, "1").await;
}

#[tokio::test]
async fn truncated_messagepack_closes_with_an_error() {
    let server = TestServer::embedded().await;
    let mut bystander = json_hub(&server.ws_url(), "bystander").await;
    let mut bad = websocket(&server.ws_url(), "mallory").await;
    send_text(&mut bad, &format!("{{\"protocol\":\"messagepack\",\"version\":1}}{RS}")).await;
    assert_eq!(next_data(&mut bad).await.expect("handshake reply"), format!("{{}}{RS}").as_bytes());
    // A whole record (length 3) whose body is an array of 6 with only 2 elements.
    bad.send(Frame::binary(vec![3u8, 0x96, 0x01, 0x80])).await.expect("send");
    // The Close message is MessagePack: [7, error, allowReconnect?]; find its error text.
    let data = next_data(&mut bad).await.expect("a Close record");
    let text = String::from_utf8_lossy(&data);
    assert!(data.len() > 3 && data[1] & 0xf0 == 0x90, "a MessagePack array: {data:?}");
    assert_eq!(data[2], 7, "message type Close: {data:?}");
    assert!(text.len() > 4, "the Close carries an error text: {text}");
    assert!(next_data(&mut bad).await.is_none(), "then the socket closes");
    assert_still_serving(&mut bystander, "1").await;
}

#[tokio::test]
async fn invalid_handshake_gets_a_handshake_error() {
    let server = TestServer::embedded().await;
    let mut bystander = json_hub(&server.ws_url(), "bystander").await;
    let mut bad = websocket(&server.ws_url(), "mallory").await;
    send_text(&mut bad, &format!("{{\"protocol\":{RS}")).await;
    let reply = next_data(&mut bad).await.expect("a handshake reply");
    let reply: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&reply).trim_end_matches(RS)).expect("JSON");
    assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()), "{reply}");
    assert!(next_data(&mut bad).await.is_none(), "then the socket closes");
    assert_still_serving(&mut bystander, "1").await;
}

#[tokio::test]
async fn unknown_protocol_gets_a_handshake_error_naming_it() {
    let server = TestServer::embedded().await;
    let mut bad = websocket(&server.ws_url(), "mallory").await;
    send_text(&mut bad, &format!("{{\"protocol\":\"xml\",\"version\":1}}{RS}")).await;
    let reply = next_data(&mut bad).await.expect("a handshake reply");
    let reply: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&reply).trim_end_matches(RS)).expect("JSON");
    assert!(reply["error"].as_str().expect("an error").contains("xml"), "{reply}");
    let mut good = json_hub(&server.ws_url(), "bystander").await;
    assert_still_serving(&mut good, "1").await;
}

#[tokio::test]
async fn a_200_kib_message_closes_with_an_error_naming_the_limit() {
    let server = TestServer::embedded().await;
    let mut bystander = json_hub(&server.ws_url(), "bystander").await;
    let mut bad = json_hub(&server.ws_url(), "mallory").await;
    let huge = "x".repeat(200 * 1024);
    let invocation =
        json!({"type": 1, "invocationId": "1", "target": "SendMessage", "arguments": ["g", huge]});
    // The server may close before reading the whole frame; a failed send is fine.
    let _ = bad.send(Frame::text(format!("{invocation}{RS}"))).await;
    match next_data(&mut bad).await {
        Some(data) => {
            let text = String::from_utf8_lossy(&data);
            assert!(text.contains("\"type\":7"), "a Close message: {text}");
            assert!(text.contains("131072") || text.contains("128 KiB"), "names the limit: {text}");
        }
        None => panic!("the server closed without saying why"),
    }
    assert_still_serving(&mut bystander, "1").await;
}

#[tokio::test]
async fn wrong_arguments_are_completion_errors_and_the_connection_goes_on() {
    let server = TestServer::embedded().await;
    let mut socket = json_hub(&server.ws_url(), "ann").await;
    let cases = [
        ("CreateGroup", json!([]), "CreateGroup takes 1 argument (groupId), not 0"),
        ("CreateGroup", json!([42]), "groupId must be a string"),
        ("ListGroupsPage", json!([null, "ten"]), "limit must be an integer"),
        ("NoSuchMethod", json!([]), "unknown hub method 'NoSuchMethod'"),
    ];
    for (i, (target, args, expected)) in cases.into_iter().enumerate() {
        let completion = json_invoke(&mut socket, &format!("e{i}"), target, args).await;
        let error =
            completion["error"].as_str().unwrap_or_else(|| panic!("an error: {completion}"));
        assert!(error.contains(expected), "{target}: {error}");
        let ok = json_invoke(&mut socket, &format!("ok{i}"), "ListGroups", json!([])).await;
        assert!(ok.get("error").is_none(), "{ok}");
    }
}
