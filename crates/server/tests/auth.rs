//! `--auth jwt` and TLS against real server processes: tokens minted here with
//! the crate the server verifies them with, a certificate authority generated
//! per test, the Rust client library and raw HTTP/WebSocket requests.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{WAIT, expect_close, json_hub};
use next_chat_client::{Client, ClientError, ClientOptions, Event};
use next_chat_testkit::identity::{
    SigningKey, TEST_SECRET, TestCa, hs256_token, now_secs, secret_file, sign_hs256,
};
use next_chat_testkit::{TestServer, eventually_ok};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "next-chat";

/// A server verifying HS256 tokens with `TEST_SECRET`, plus `extra` flags.
async fn hs256_server(dir: &tempfile::TempDir, extra: &[&str]) -> TestServer {
    let secret = secret_file(dir.path(), TEST_SECRET);
    let mut args: Vec<String> = vec![
        "--auth".into(),
        "jwt".into(),
        "--jwt-secret-file".into(),
        secret.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    TestServer::start(args).await
}

/// What a refusal looked like: status, `WWW-Authenticate`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    challenge: String,
    body: String,
}

async fn negotiate(server: &TestServer, token: &str) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}/negotiate?negotiateVersion=1", server.url))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("negotiate answered");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ASCII challenge").to_owned())
        .unwrap_or_default();
    Answer { status, challenge, body: response.text().await.unwrap_or_default() }
}

/// A WebSocket straight to the hub (no negotiate), the token as `access_token`
/// as browsers send it; `Ok` if the upgrade succeeded.
async fn websocket_refusal(server: &TestServer, token: &str) -> Result<(), Answer> {
    let url = format!("{}?access_token={token}", server.ws_url());
    let request = url.into_client_request().expect("a ws URL");
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade answered in time")
    {
        Ok(_) => Ok(()),
        Err(tungstenite::Error::Http(response)) => Err(Answer {
            status: response.status().as_u16(),
            challenge: response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().expect("ASCII").to_owned())
                .unwrap_or_default(),
            body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned(),
        }),
        Err(other) => panic!("the upgrade failed without an HTTP answer: {other}"),
    }
}

fn claims(sub: Option<&str>, exp_from_now: i64) -> serde_json::Value {
    let mut claims = json!({
        "exp": now_secs() as i64 + exp_from_now,
        "iss": ISSUER,
        "aud": AUDIENCE,
    });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    claims
}

#[tokio::test]
async fn a_valid_token_connects_and_its_sub_is_the_author() {
    let dir = tempfile::tempdir().unwrap();
    let server = hs256_server(&dir, &[]).await;
    let token = hs256_token(TEST_SECRET, "ann", 600);
    let (client, mut events) =
        Client::connect(ClientOptions::new(&server.url, token)).await.expect("connects");
    client.join_group("jwt-room").await.unwrap();
    client.send_message("jwt-room", "signed in").await.unwrap();
    let message = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.expect("events go on") {
                Event::Message(message) => return message,
                _ => continue,
            }
        }
    })
    .await
    .expect("the message comes back");
    assert_eq!(message.author_id, "ann");
    assert_eq!(message.text, "signed in");
    client.close().await;
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_a_challenge_on_negotiate_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate("k1");
    let public = dir.path().join("public.pem");
    std::fs::write(&public, key.public_pem()).unwrap();
    let server = TestServer::start(
        [
            "--auth",
            "jwt",
            "--jwt-public-key",
            public.to_str().unwrap(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let stranger = SigningKey::generate("k1");
    let with = |name: &str, value: serde_json::Value| {
        let mut claims = claims(Some("ann"), 600);
        claims[name] = value;
        claims
    };
    let cases = [
        ("expired", key.sign(&claims(Some("ann"), -120)), "the token expired"),
        ("not yet valid", key.sign(&with("nbf", json!(now_secs() + 600))), "not valid yet"),
        ("wrong signature", stranger.sign(&claims(Some("ann"), 600)), "bad signature"),
        ("wrong issuer", key.sign(&with("iss", json!("https://evil.test"))), "wrong issuer"),
        ("wrong audience", key.sign(&with("aud", json!("other-app"))), "wrong audience"),
        ("missing claim", key.sign(&claims(None, 600)), "no 'sub' claim"),
        (
            "alg none",
            // {"alg":"none","typ":"JWT"} . {"sub":"ann"} . (no signature)
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbm4ifQ.".to_owned(),
            "'none' is never accepted",
        ),
        (
            "HS256 signed with the public key",
            sign_hs256(key.public_pem().as_bytes(), &claims(Some("ann"), 600)),
            "'HS256' is not accepted",
        ),
        ("a user id the chat rules refuse", key.sign(&claims(Some(" "), 600)), "'sub' claim"),
    ];
    for (case, token, reason) in &cases {
        let answer = negotiate(&server, token).await;
        assert_eq!(answer.status, 401, "{case}: negotiate {answer:?}");
        assert!(
            answer.challenge.starts_with("Bearer error=\"invalid_token\", error_description=\"")
                && answer.challenge.contains(reason),
            "{case}: negotiate challenge {answer:?}"
        );
        assert!(answer.body.contains(reason), "{case}: negotiate body {answer:?}");
        let answer = websocket_refusal(&server, token).await.expect_err(case);
        assert_eq!(answer.status, 401, "{case}: WebSocket {answer:?}");
        assert!(answer.challenge.contains(reason), "{case}: WebSocket {answer:?}");
    }
    // No token at all: a bare challenge.
    let response = reqwest::Client::new()
        .post(format!("{}/negotiate?negotiateVersion=1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    // The same server takes a good token, by negotiate and by WebSocket.
    let good = key.sign(&claims(Some("ann"), 600));
    assert_eq!(negotiate(&server, &good).await.status, 200);
    assert!(websocket_refusal(&server, &good).await.is_ok());
}

#[tokio::test]
async fn a_token_expiring_during_a_connection_closes_it_with_allow_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let server = hs256_server(&dir, &["--jwt-leeway-secs", "0"]).await;
    // Whole seconds: between 1 and 2 s from now.
    let token = hs256_token(TEST_SECRET, "ann", 2);
    let mut socket = json_hub(&server.ws_url(), &format!("Bearer {token}")).await;
    let close = expect_close(&mut socket).await;
    assert_eq!(close["allowReconnect"], json!(true), "{close}");
    assert!(close["error"].as_str().is_some_and(|e| e.contains("expired")), "{close}");
    // And the token no longer opens a connection.
    assert_eq!(negotiate(&server, &token).await.status, 401);
}

/// A JWKS served over HTTP from memory, as an identity provider would.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    fetches: Arc<Mutex<u32>>,
}

impl JwksServer {
    async fn start(document: serde_json::Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let document = Arc::new(Mutex::new(document.to_string()));
        let fetches = Arc::new(Mutex::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let body = served.lock().unwrap().clone();
                *counted.lock().unwrap() += 1;
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(response.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                });
            }
        });
        JwksServer { url, document, fetches }
    }
}

#[tokio::test]
async fn a_rotated_jwks_key_is_picked_up_without_a_restart() {
    let first = SigningKey::generate("2026-01");
    let second = SigningKey::generate("2026-02");
    let jwks = JwksServer::start(json!({ "keys": [first.jwk()] })).await;
    let server = TestServer::start(
        // Its tokens carry no `aud`: this test is about the keys.
        [
            "--auth",
            "jwt",
            "--jwks",
            &jwks.url,
            "--jwt-audience",
            "any",
            "--jwks-min-refetch-secs",
            "1",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let token = |key: &SigningKey| key.sign(&json!({"sub": "ann", "exp": now_secs() + 600}));
    assert_eq!(negotiate(&server, &token(&first)).await.status, 200);
    let before = negotiate(&server, &token(&second)).await;
    assert_eq!(before.status, 401, "{before:?}");
    assert!(before.challenge.contains("unknown key id '2026-02'"), "{before:?}");

    // The provider rotates: the new key in, the old one out.
    *jwks.document.lock().unwrap() = json!({ "keys": [second.jwk()] }).to_string();
    // An unknown kid makes the server fetch again, at most once a second.
    eventually_ok(WAIT, "the new key is picked up", || async {
        let answer = negotiate(&server, &token(&second)).await;
        if answer.status == 200 {
            return Ok(());
        }
        assert!(answer.challenge.contains("unknown key id"), "{answer:?}");
        Err(answer)
    })
    .await;
    let old = negotiate(&server, &token(&first)).await;
    assert_eq!(old.status, 401, "the retired key no longer verifies: {old:?}");
    let fetches = *jwks.fetches.lock().unwrap();
    assert!(fetches <= 3 + WAIT.as_secs() as u32, "the floor bounds the fetches: {fetches}");
}

#[tokio::test]
async fn over_tls_the_client_library_connects_by_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path(), "one");
    let mut args = ca.server_args();
    args.extend(["--auth", "jwt", "--jwt-secret-file"].map(String::from));
    args.push(secret_file(dir.path(), TEST_SECRET).display().to_string());
    let server = TestServer::start(args).await;
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);

    let token = hs256_token(TEST_SECRET, "ann", 600);
    for (url, skip_negotiation) in [(server.url.clone(), false), (server.ws_url(), true)] {
        let mut options = ClientOptions::new(&url, &token);
        options.ca_file = Some(ca.ca_file.clone());
        options.skip_negotiation = skip_negotiation;
        let (client, _events) = Client::connect(options).await.expect("connects over TLS");
        client.join_group("tls-room").await.expect("a call over TLS");
        client.send_message("tls-room", "encrypted").await.unwrap();
        client.close().await;
    }
    // Without the test CA, the server's certificate is not trusted.
    let refused = Client::connect(ClientOptions::new(&server.url, &token)).await.err();
    assert!(
        matches!(&refused, Some(ClientError::Connection(e)) if e.contains("certificate")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCa::create(dir.path(), "first");
    let second = TestCa::create(dir.path(), "second");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first.cert_file, &cert).unwrap();
    std::fs::copy(&first.key_file, &key).unwrap();
    let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let server = TestServer::start(args.map(String::from).to_vec()).await;
    let connect = |ca: &TestCa| {
        let mut options = ClientOptions::new(&server.url, "ann");
        options.ca_file = Some(ca.ca_file.clone());
        Client::connect(options)
    };
    connect(&first).await.expect("the first certificate is served").0.close().await;

    // Renewal writes the key, then the certificate (as cert-manager does).
    std::fs::copy(&second.key_file, &key).unwrap();
    std::fs::copy(&second.cert_file, &cert).unwrap();
    // The files are polled every 5 s.
    let (client, _events) =
        eventually_ok(Duration::from_secs(20), "the renewed certificate is served", || {
            connect(&second)
        })
        .await;
    client.close().await;
    assert!(connect(&first).await.is_err(), "the old certificate is no longer served");
}

#[test]
fn jwt_settings_are_checked_at_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let short = secret_file(dir.path(), "too short");
    let pem = dir.path().join("public.pem");
    std::fs::write(&pem, SigningKey::generate("k").public_pem()).unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--auth", "jwt"], "auth: jwt needs keys"),
        // A provider's keys sign tokens for other applications too.
        (&["--auth", "jwt", "--jwt-public-key", pem.to_str().unwrap()], "jwt_audience"),
        (&["--auth", "jwt", "--jwks", "https://idp.invalid/jwks.json"], "jwt_audience"),
        (&["--auth", "jwt", "--jwt-secret-file", short.to_str().unwrap()], "jwt_secret_file"),
        (&["--jwt-issuer", "x"], "jwt_issuer: is set but auth is header"),
        (&["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.pem"], "tls_cert"),
    ];
    for (args, expected) in cases {
        let output = std::process::Command::new(next_chat_testkit::binary("next-chat-server"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--database", "sqlite://refused.db"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should not start");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn mint_token_prints_a_token_the_same_settings_accept() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), TEST_SECRET);
    let settings: Vec<String> = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ]
    .map(String::from)
    .to_vec();
    let output = std::process::Command::new(next_chat_testkit::binary("next-chat-server"))
        .args(["mint-token", "--user", "ann", "--valid-for-secs", "60"])
        .args(&settings)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let server = TestServer::start(settings).await;
    let answer = negotiate(&server, &token).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Without a secret there is nothing to sign with.
    let output = std::process::Command::new(next_chat_testkit::binary("next-chat-server"))
        .args(["mint-token", "--user", "ann"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("mint-token needs --auth jwt"));
}

/// In header mode on an address others can reach, the server says at start that
/// anyone can be anyone, and how to change that.
#[tokio::test]
async fn header_mode_on_a_public_address_warns_naming_auth_jwt() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut server = tokio::process::Command::new(next_chat_testkit::binary("next-chat-server"))
        .args(["--listen", "0.0.0.0:0", "--database", "sqlite://warn.db"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let warning = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("auth is header") {
                return line;
            }
        }
        panic!("the server's stderr ended without the warning");
    })
    .await
    .expect("the warning within 10 s");
    assert!(warning.contains("WARN") && warning.contains("--auth jwt"), "{warning}");
    server.kill().await.unwrap();
}

/// The client library with a token file: when the server closes the connection
/// because its token expired, the client reconnects with the token renewed in
/// the file.
#[tokio::test]
async fn the_client_library_reconnects_with_the_renewed_token_of_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = hs256_server(&dir, &["--jwt-leeway-secs", "0"]).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, hs256_token(TEST_SECRET, "ann", 2)).unwrap();
    let mut options = ClientOptions::new(&server.url, "");
    options.token_file = Some(token_file.clone());
    options.reconnect = Some(next_chat_client::ReconnectPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        max_attempts: None,
    });
    let (client, mut events) = Client::connect(options).await.expect("connects");
    client.join_group("renewed").await.unwrap();
    loop {
        match next_event(&mut events).await {
            Event::Disconnected { error } => {
                assert!(error.as_deref().is_some_and(|e| e.contains("expired")), "{error:?}");
                break;
            }
            _ => continue,
        }
    }
    // Renewed, as a sidecar or a login flow would.
    std::fs::write(&token_file, hs256_token(TEST_SECRET, "ann", 600)).unwrap();
    loop {
        match next_event(&mut events).await {
            Event::Reconnected => break,
            Event::Closed { error } => panic!("closed: {error:?}"),
            _ => continue,
        }
    }
    client.send_message("renewed", "still ann").await.expect("a call after reconnecting");
    client.close().await;
}

async fn next_event(events: &mut next_chat_client::Events) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("events go on")
}
