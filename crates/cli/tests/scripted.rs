//! The console client with stdin and stdout piped: a conversation between two
//! `next-chat` processes, every friendly error, exit codes, and reconnecting.

mod support;

use next_chat_client::{Client, ClientOptions, JoinResult};
use next_chat_testkit::{TcpProxy, TestServer};
use support::{Cli, Line, assert_clean, run_script};

#[tokio::test]
async fn two_processes_chat() {
    let server = TestServer::embedded().await;
    let mut ann = Cli::spawn(&[]);
    let mut bob = Cli::spawn(&["--url", &server.url, "--user", "bob"]);
    bob.expect_out(&format!("connected to {} as bob", server.url)).await;

    ann.send(&format!("connect {} ann", server.url)).await;
    ann.expect_out("connected to").await;
    ann.send("create lobby").await;
    ann.expect_out("created lobby").await;
    ann.send("join lobby").await;
    ann.expect_out("joined lobby").await;
    bob.send("list").await;
    bob.expect_out("lobby").await;
    bob.send("join lobby").await;
    bob.expect_out("joined lobby").await;

    bob.send("say lobby hello ann,  how are you?").await;
    for cli in [&mut ann, &mut bob] {
        cli.expect_message("lobby", "bob", "hello ann,  how are you?").await;
    }
    ann.send("say lobby fine, thanks").await;
    for cli in [&mut ann, &mut bob] {
        cli.expect_message("lobby", "ann", "fine, thanks").await;
    }

    // A late joiner sees the history, printed the same way, before "joined".
    let (code, lines) =
        run_script(&[], &format!("connect {} cy\njoin lobby\nhistory lobby 1\nbye\n", server.url))
            .await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_clean(&lines);
    let texts: Vec<&str> = lines.iter().map(Line::text).collect();
    let joined = texts.iter().position(|t| *t == "joined lobby").expect("joined");
    let hello = texts.iter().position(|t| t.ends_with("] bob: hello ann,  how are you?"));
    let fine = texts.iter().position(|t| t.ends_with("] ann: fine, thanks"));
    assert!(matches!((hello, fine), (Some(h), Some(f)) if h < f && f < joined), "{texts:#?}");
    // `history lobby 1` printed the last message once more, after "joined".
    assert!(texts[joined + 1..].iter().any(|t| t.ends_with("] ann: fine, thanks")), "{texts:#?}");

    ann.send("leave lobby").await;
    ann.expect_out("left lobby").await;
    ann.send("bye").await;
    bob.send("bye").await;
    for cli in [ann, bob] {
        let seen = cli.seen.clone();
        let (code, rest) = cli.finish().await;
        assert_eq!(code, Some(0));
        assert_clean(&seen);
        assert_clean(&rest);
    }
}

#[tokio::test]
async fn the_readme_one_liner_works() {
    let server = TestServer::embedded().await;
    let script = format!("connect {} ann\njoin g\nsay g hi\nbye\n", server.url);
    let (code, lines) = run_script(&["--strict"], &script).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_clean(&lines);
    assert!(lines.contains(&Line::Out("joined g".into())), "{lines:#?}");
    // Sent and accepted: it is in the history.
    let (reader, _events) =
        Client::connect(ClientOptions::new(&server.url, "reader")).await.expect("connects");
    reader.join_group("g").await.expect("joins");
    let history = reader.get_history("g", None, 10).await.expect("history");
    assert_eq!(history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["hi"]);
}

#[tokio::test]
async fn end_of_input_exits_zero_and_strict_reports_failures() {
    let (code, lines) = run_script(&[], "help\n").await;
    assert_eq!(code, Some(0));
    assert!(lines.iter().any(|l| l.text().contains("say GROUP TEXT...")), "{lines:#?}");

    let (code, lines) = run_script(&[], "list\n").await;
    assert_eq!(code, Some(0), "a failed command without --strict still exits 0");
    assert_clean(&lines);
    let (code, lines) = run_script(&["--strict"], "list\nbye\n").await;
    assert_eq!(code, Some(1), "--strict: a failed command makes the exit non-zero: {lines:#?}");
}

#[tokio::test]
async fn every_friendly_error_is_one_line() {
    let server = TestServer::embedded().await;
    // Fill group "full" with 20 distinct users through the library.
    let mut members = Vec::new();
    for i in 0..20 {
        let (client, events) = Client::connect(ClientOptions::new(&server.url, format!("m{i}")))
            .await
            .expect("connects");
        assert_eq!(client.join_group("full").await, Ok(JoinResult::Joined));
        members.push((client, events));
    }

    let cases: Vec<(String, &str)> = vec![
        ("list".into(), "not connected: connect first with connect URI USER"),
        ("say g hi".into(), "not connected: connect first"),
        ("dance".into(), "unknown command `dance`; type help for the list of commands"),
        ("help dance".into(), "there is no command `dance`"),
        ("join".into(), "usage: join GROUP"),
        (
            "connect http://127.0.0.1:1/next-chat ann".into(),
            "cannot connect to http://127.0.0.1:1/next-chat",
        ),
        (format!("connect {} ann", server.url), ""),
        (format!("connect {} ann", server.url), "you are connected already, as ann"),
        ("join full".into(), "group full is full (20 of 20)"),
        ("say nowhere hi".into(), "the server says: "),
        ("create  ".into(), "usage: create GROUP"),
        ("history nowhere".into(), "the server says: "),
    ];
    let mut cli = Cli::spawn(&[]);
    for (command, error) in &cases {
        cli.send(command).await;
        if error.is_empty() {
            cli.expect_out("connected to").await;
        } else {
            let line = cli.expect_err(error).await;
            assert!(!line.text().contains('\n'));
        }
    }
    cli.send("bye").await;
    let seen = cli.seen.clone();
    let (code, rest) = cli.finish().await;
    assert_eq!(code, Some(0));
    assert_clean(&seen);
    assert_clean(&rest);
    let errors = seen.iter().chain(&rest).filter(|l| matches!(l, Line::Err(_))).count();
    assert_eq!(errors, cases.len() - 1, "one line per error: {seen:#?}");
}

#[tokio::test]
async fn says_when_the_connection_drops_reconnects_and_shows_what_was_missed() {
    let mut server = TestServer::embedded().await;
    let mut ann = Cli::spawn(&["--url", &server.url, "--user", "ann"]);
    ann.expect_out("connected to").await;
    ann.send("join g").await;
    ann.expect_out("joined g").await;

    server.stop().await;
    ann.expect_err("connection lost").await;
    server.start_again().await;
    let (bob, _events) =
        Client::connect(ClientOptions::new(&server.url, "bob")).await.expect("bob connects");
    bob.join_group("g").await.expect("bob joins");
    bob.send_message("g", "while you were away").await.expect("sends");

    // Whether the message comes while catching up or live depends on timing;
    // both lines must come, in either order.
    let (mut message, mut back) = (false, false);
    while !(message && back) {
        let line = ann
            .expect("the missed message and \"reconnected\"", |l| {
                l.text().ends_with("] bob: while you were away")
                    || l.text() == "reconnected; rejoined g"
            })
            .await;
        message |= line.text().ends_with("] bob: while you were away");
        back |= line.text() == "reconnected; rejoined g";
    }
    ann.send("say g back").await;
    ann.expect_message("g", "ann", "back").await;
    ann.send("bye").await;
    let seen = ann.seen.clone();
    let (code, rest) = ann.finish().await;
    assert_eq!(code, Some(0));
    assert_clean(&seen);
    let once = seen.iter().chain(&rest).filter(|l| l.text().ends_with("bob: while you were away"));
    assert_eq!(once.count(), 1, "shown once: {seen:#?}");
}

#[tokio::test]
async fn after_a_cut_says_how_many_missed_messages_it_caught_up_on() {
    // More than the 100 a join's history holds.
    const MISSED: usize = 150;
    let server = TestServer::embedded().await;
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port)).await;
    let url = format!("http://127.0.0.1:{}/next-chat", proxy.port);
    let mut ann = Cli::spawn(&["--url", &url, "--user", "ann"]);
    ann.expect_out("connected to").await;
    ann.send("join g").await;
    ann.expect_out("joined g").await;
    let (bob, _events) =
        Client::connect(ClientOptions::new(&server.url, "bob")).await.expect("bob connects");
    bob.join_group("g").await.expect("bob joins");
    bob.send_message("g", "seen").await.expect("sends");
    ann.expect_message("g", "bob", "seen").await;

    // Kept off while bob sends, so every one of them is missed.
    proxy.cut();
    ann.expect_err("connection lost").await;
    for i in 0..MISSED {
        bob.send_message("g", &format!("away {i}")).await.expect("sends");
    }
    proxy.restore();
    ann.expect_out(&format!("caught up on {MISSED} missed messages in g")).await;
    ann.expect_out("reconnected; rejoined g").await;
    ann.send("bye").await;
    let seen = ann.seen.clone();
    let (code, _) = ann.finish().await;
    assert_eq!(code, Some(0));
    let shown: Vec<String> = seen
        .iter()
        .filter_map(|l| l.text().split_once("] bob: away ").map(|(_, n)| format!("away {n}")))
        .collect();
    let expected: Vec<String> = (0..MISSED).map(|i| format!("away {i}")).collect();
    assert_eq!(shown, expected, "each missed message shown once, in order: {seen:#?}");
}

#[tokio::test]
async fn messagepack_without_negotiation_works_too() {
    let server = TestServer::embedded().await;
    let args = ["--protocol", "messagepack", "--skip-negotiation", "--strict"];
    let mut ann = Cli::spawn(&args);
    ann.send(&format!("connect {} ann", server.ws_url())).await;
    ann.expect_out("connected to").await;
    ann.send("join g").await;
    ann.expect_out("joined g").await;
    ann.send("say g über msgpack").await;
    ann.expect_message("g", "ann", "über msgpack").await;
    ann.send("bye").await;
    let (code, rest) = ann.finish().await;
    assert_eq!(code, Some(0), "{rest:#?}");
}

/// `connect URL TOKEN` and `--token-file` against a server serving HTTPS with
/// `--auth jwt`, trusting the test's CA by `--ca-file`; a refused token says why.
#[tokio::test]
async fn connects_by_https_with_a_jwt() {
    use next_chat_testkit::identity::{TEST_SECRET, TestCa, hs256_token, secret_file};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path(), "cli");
    let mut args = ca.server_args();
    args.extend(["--auth", "jwt", "--jwt-secret-file"].map(String::from));
    args.push(secret_file(dir.path(), TEST_SECRET).display().to_string());
    let server = TestServer::start(args).await;
    assert!(server.url.starts_with("https://"));
    let ca_file = ca.ca_file.to_str().unwrap();

    let token = hs256_token(TEST_SECRET, "ann", 600);
    let script = format!("connect {} {token}\njoin g\nsay g over tls\nbye\n", server.url);
    let (code, lines) = run_script(&["--strict", "--ca-file", ca_file], &script).await;
    assert_eq!(code, Some(0), "{lines:#?}");
    assert_clean(&lines);
    assert!(
        lines.contains(&Line::Out(format!("connected to {} as ann", server.url))),
        "{lines:#?}"
    );

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, hs256_token(TEST_SECRET, "bob", 600)).unwrap();
    let mut bob = Cli::spawn(&[
        "--url",
        &server.url,
        "--token-file",
        token_file.to_str().unwrap(),
        "--ca-file",
        ca_file,
    ]);
    bob.expect_out(&format!("connected to {} as bob", server.url)).await;
    // Joining shows the group's history: ann's message, by ann.
    bob.send("join g").await;
    bob.expect_message("g", "ann", "over tls").await;
    bob.send("bye").await;
    bob.finish().await;

    let forged = hs256_token("not the server's secret, 32 bytes", "cy", 600);
    let script = format!("connect {} {forged}\n", server.url);
    let (code, lines) = run_script(&["--strict", "--ca-file", ca_file], &script).await;
    assert_eq!(code, Some(1), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l
            .text()
            .contains("refused the user id or token: invalid token: bad signature")),
        "{lines:#?}"
    );
}
