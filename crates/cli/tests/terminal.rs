//! The interactive mode in a real terminal: tmux runs `next-chat`, the test
//! types with `send-keys` and reads the screen with `capture-pane`. A message
//! that arrives while a line is half typed prints above it, and the line is
//! still intact (on screen and in what is finally sent).

use std::process::{Command, Output};
use std::time::Duration;

use next_chat_client::{Client, ClientOptions, Event};
use next_chat_testkit::{TestServer, binary, eventually, eventually_ok, unique};

const WAIT: Duration = Duration::from_secs(15);

/// A screen, printed as it looks when a wait for it fails.
struct Screen(String);

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}

/// A tmux server of this test's own (`-L`), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` in a detached 120x30 session named `t`.
    fn start(command: &str) -> Tmux {
        let tmux = Tmux { socket: unique("next-chat-test-") };
        let started = tmux.run(&["new-session", "-d", "-s", "t", "-x", "120", "-y", "30", command]);
        assert!(started.status.success(), "tmux starts: {started:?}");
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (scripts/test installs it)")
    }

    fn type_text(&self, text: &str) {
        assert!(self.run(&["send-keys", "-t", "t", "-l", text]).status.success());
    }

    fn press(&self, key: &str) {
        assert!(self.run(&["send-keys", "-t", "t", key]).status.success());
    }

    /// The screen's text; with `escapes`, colour codes included.
    fn screen(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "t"];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&self.run(&args).stdout).into_owned()
    }

    fn is_running(&self) -> bool {
        self.run(&["has-session", "-t", "t"]).status.success()
    }

    /// Polls the screen until `done` holds; returns that screen.
    async fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let what = format!("the screen shows {what}");
        eventually_ok(WAIT, &what, || {
            let screen = self.screen(false);
            let shown = if done(&screen) { Ok(screen) } else { Err(Screen(screen)) };
            async move { shown }
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The last line of the screen with anything on it.
fn last_line(screen: &str) -> &str {
    screen.lines().map(str::trim_end).rfind(|l| !l.is_empty()).unwrap_or_default()
}

fn next_chat(server: &TestServer, user: &str, no_color: bool) -> String {
    let env = if no_color { "env NO_COLOR=1" } else { "env -u NO_COLOR" };
    format!("{env} {} --url {} --user {user}", binary("next-chat").display(), server.url)
}

#[tokio::test]
async fn a_message_arriving_mid_line_does_not_garble_the_line() {
    let server = TestServer::embedded().await;
    let tmux = Tmux::start(&next_chat(&server, "ann", false));
    tmux.wait_for("connected and a prompt", |s| s.contains("connected to") && last_line(s) == ">")
        .await;
    tmux.type_text("join g");
    tmux.press("Enter");
    tmux.wait_for("joined g", |s| s.contains("joined g") && last_line(s) == ">").await;

    tmux.type_text("say g half typ");
    tmux.wait_for("the half typed line", |s| last_line(s) == "> say g half typ").await;

    let (bob, mut bob_events) =
        Client::connect(ClientOptions::new(&server.url, "bob")).await.expect("bob connects");
    bob.join_group("g").await.expect("bob joins");
    bob.send_message("g", "interrupting message").await.expect("bob sends");

    let screen = tmux
        .wait_for("bob's message above the intact line", |s| {
            s.lines().any(|l| l.trim_end().ends_with("] bob: interrupting message"))
                && last_line(s) == "> say g half typ"
        })
        .await;
    let with_half_line: Vec<&str> = screen.lines().filter(|l| l.contains("half typ")).collect();
    assert_eq!(
        with_half_line,
        ["> say g half typ"],
        "the typed line appears once, whole:\n{screen}"
    );
    let message = screen.lines().position(|l| l.contains("bob: interrupting message"));
    let typed = screen.lines().position(|l| l.contains("half typ"));
    assert!(message < typed, "the message prints above the line being typed:\n{screen}");
    let colored = tmux.screen(true);
    assert!(
        colored.lines().any(|l| l.contains("interrupting message") && l.contains("\u{1b}[")),
        "messages are coloured in a terminal:\n{colored:?}"
    );

    // Finishing the line sends exactly what was typed.
    tmux.type_text("ed");
    tmux.press("Enter");
    loop {
        match tokio::time::timeout(WAIT, bob_events.recv()).await {
            Ok(Some(Event::Message(m))) if m.author_id == "ann" => {
                assert_eq!(m.text, "half typed");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("bob never got ann's message: {other:?}"),
        }
    }
    tmux.wait_for("ann's own message", |s| s.contains("] ann: half typed")).await;

    tmux.type_text("bye");
    tmux.press("Enter");
    eventually(WAIT, "next-chat exits at bye", || {
        let running = tmux.is_running();
        async move { !running }
    })
    .await;
}

#[tokio::test]
async fn no_color_turns_colours_off_in_a_terminal() {
    let server = TestServer::embedded().await;
    let tmux = Tmux::start(&next_chat(&server, "ann", true));
    tmux.wait_for("a prompt", |s| s.contains("connected to") && last_line(s) == ">").await;
    tmux.type_text("join g");
    tmux.press("Enter");
    tmux.wait_for("joined g", |s| s.contains("joined g")).await;
    tmux.type_text("say g plain");
    tmux.press("Enter");
    tmux.wait_for("the message", |s| s.contains("] ann: plain")).await;
    tmux.type_text("oops");
    tmux.press("Enter");
    tmux.wait_for("the error", |s| s.contains("unknown command `oops`")).await;
    let screen = tmux.screen(true);
    assert!(!screen.contains('\u{1b}'), "no colour codes with NO_COLOR:\n{screen:?}");
}
