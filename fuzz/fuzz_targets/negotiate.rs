//! Arbitrary HTTP requests through the real router (`HubServer::router`): negotiate,
//! the query and header handling, and the SSE and Long Polling transports, whose
//! POSTed bodies reach the real session (handshake, decoder, hub).
//!
//! An input is requests separated by a line `===`. Each request is a line
//! `METHOD target`, header lines `Name: value`, an empty line and the body. `{id}`
//! in the target stands for the token of the last successful negotiate, so the
//! fuzzer reaches past the connection lookup. Requests run concurrently (a long
//! poll waits for what later POSTs cause) in virtual time: timeouts cost nothing.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use next_chat_signalr::Value;
use next_chat_signalr::negotiate::NegotiateResponse;
use next_chat_signalr::server::{
    Connection, Hub, HubConfig, HubServer, Identity, Invoked, Refused,
};
use tower::ServiceExt;

/// Enough for negotiate, start, handshake, a few sends, a poll and a delete.
const MAX_REQUESTS: usize = 16;
/// Longer than every server timeout (long poll 90 s, handshake 15 s, client 30 s,
/// long-poll disconnect 15 s, negotiate 15 s), so every connection is gone after it.
const SETTLE: Duration = Duration::from_secs(300);

/// Echoes its first argument; any non-empty token but `invalid` is a user.
struct EchoHub;

impl Hub for EchoHub {
    type Session = Connection;

    async fn authenticate(&self, token: &str) -> Result<Identity, Refused> {
        if token.is_empty() || token == "invalid" {
            Err(format!("invalid user '{token}'").into())
        } else {
            Ok(token.to_owned().into())
        }
    }

    async fn connected(&self, connection: Connection) -> Result<Connection, String> {
        Ok(connection)
    }

    async fn invoke(&self, _: &Connection, target: &str, arguments: Vec<Value>) -> Invoked {
        match target {
            "fail" => Invoked::Done(Err("failed on purpose".to_owned())),
            _ => Invoked::Done(Ok(arguments.into_iter().next())),
        }
    }

    async fn disconnected(&self, _: Connection) {}
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run(data));
});

async fn run(data: &[u8]) {
    let server = HubServer::new(Arc::new(EchoHub), HubConfig::default());
    let router = server.router("/hub");
    let mut token = String::new();
    let mut exchanges = Vec::new();
    for text in split(data, b"\n===\n").take(MAX_REQUESTS) {
        let Some(request) = parse_request(text, &token) else {
            continue;
        };
        let negotiates =
            request.method() == Method::POST && request.uri().path().ends_with("/negotiate");
        let exchange = tokio::spawn(exchange(router.clone(), request));
        if negotiates {
            if let Some(negotiated) = exchange.await.expect("no panic") {
                token = negotiated;
            }
        } else {
            exchanges.push(exchange);
            // Lets the request reach its handler before the next one starts.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    for exchange in exchanges {
        assert!(exchange.is_finished(), "a response is still open after every timeout");
    }
    assert_eq!(server.connection_count(), 0, "a connection outlived every timeout");
}

/// Sends one request and reads the whole response; the token if it negotiated one.
async fn exchange(router: axum::Router, request: Request<Body>) -> Option<String> {
    let negotiates =
        request.method() == Method::POST && request.uri().path().ends_with("/negotiate");
    let response = router.oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    assert!(!status.is_server_error(), "answered {status}");
    let body = response.into_body().collect().await.ok()?.to_bytes();
    if !(negotiates && status == StatusCode::OK) {
        return None;
    }
    let negotiated = NegotiateResponse::parse(&body).expect("negotiate answers its own JSON");
    negotiated.transport_id().map(str::to_owned)
}

fn split<'a>(data: &'a [u8], separator: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(separator.len()).position(|w| w == separator) {
            Some(at) => {
                rest = Some(&current[at + separator.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn parse_request(text: &[u8], token: &str) -> Option<Request<Body>> {
    let (head, body) = match text.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = lines.next()?;
    let space = request_line.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&request_line[..space]).ok()?;
    let target = String::from_utf8_lossy(&request_line[space + 1..]).replace("{id}", token);
    let mut request = Request::builder().method(method).uri(target);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        request = request.header(name, value);
    }
    request.body(Body::from(body.to_vec())).ok()
}
