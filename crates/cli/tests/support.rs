//! Drives `next-chat` processes in tests: commands in on stdin, lines out of
//! stdout and stderr, each wait bounded by a timeout.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// How long a test waits for a line that should come promptly.
pub const WAIT: Duration = Duration::from_secs(15);

/// One line of output, from stdout or stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Out(String),
    Err(String),
}

impl Line {
    pub fn text(&self) -> &str {
        match self {
            Line::Out(text) | Line::Err(text) => text,
        }
    }
}

pub struct Cli {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Line>,
    /// Everything read so far, for failure messages.
    pub seen: Vec<Line>,
}

impl Cli {
    pub fn spawn(args: &[&str]) -> Cli {
        let mut child = Command::new(next_chat_testkit::binary("next-chat"))
            .args(args)
            .env_remove("NO_COLOR")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("next-chat starts");
        let (sender, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let out = sender.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = out.send(Line::Out(line));
            }
        });
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = sender.send(Line::Err(line));
            }
        });
        let stdin = child.stdin.take();
        Cli { child, stdin, lines, seen: Vec::new() }
    }

    pub async fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{command}\n").as_bytes()).await.expect("writes a command");
        stdin.flush().await.expect("flushes");
    }

    /// Waits for a line that satisfies `matches`; returns it.
    pub async fn expect(&mut self, what: &str, matches: impl Fn(&Line) -> bool) -> Line {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!("next-chat ended before {what}; output: {:#?}", self.seen),
                Err(_) => panic!("no {what} within {WAIT:?}; output: {:#?}", self.seen),
            }
        }
    }

    pub async fn expect_out(&mut self, text: &str) -> Line {
        self.expect(
            &format!("stdout containing {text:?}"),
            |l| matches!(l, Line::Out(t) if t.contains(text)),
        )
        .await
    }

    pub async fn expect_err(&mut self, text: &str) -> Line {
        self.expect(
            &format!("stderr containing {text:?}"),
            |l| matches!(l, Line::Err(t) if t.contains(text)),
        )
        .await
    }

    /// Waits for `group [time] author: text` on stdout.
    pub async fn expect_message(&mut self, group: &str, author: &str, text: &str) -> Line {
        let (prefix, suffix) = (format!("{group} ["), format!("] {author}: {text}"));
        self.expect(
            &format!("message {prefix}..{suffix}"),
            |l| matches!(l, Line::Out(t) if is_message(t, &prefix, &suffix)),
        )
        .await
    }

    /// Closes stdin and waits for the exit; returns the status code and every
    /// line not read yet.
    pub async fn finish(mut self) -> (Option<i32>, Vec<Line>) {
        self.stdin = None;
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("next-chat exits")
            .expect("waits for next-chat");
        let mut rest = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.lines.recv()).await {
            rest.push(line);
        }
        (status.code(), rest)
    }
}

/// `group [HH:MM:SS] author: text`
fn is_message(line: &str, prefix: &str, suffix: &str) -> bool {
    let Some(time) = line.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(suffix)) else {
        return false;
    };
    time.len() == 8
        && time
            .chars()
            .enumerate()
            .all(|(i, c)| if i == 2 || i == 5 { c == ':' } else { c.is_ascii_digit() })
}

/// The output of a whole scripted run: stdin given at once.
pub async fn run_script(args: &[&str], script: &str) -> (Option<i32>, Vec<Line>) {
    let mut cli = Cli::spawn(args);
    let stdin = cli.stdin.as_mut().expect("stdin is open");
    stdin.write_all(script.as_bytes()).await.expect("writes the script");
    let (code, rest) = cli.finish().await;
    (code, rest)
}

/// Fails the test if anything looks like a panic, a backtrace or a colour code.
pub fn assert_clean(lines: &[Line]) {
    for line in lines {
        let text = line.text();
        assert!(
            !text.contains("panicked")
                && !text.contains("backtrace")
                && !text.contains("RUST_BACKTRACE"),
            "a panic or backtrace: {lines:#?}"
        );
        assert!(!text.contains('\u{1b}'), "colour codes when piped: {lines:#?}");
    }
}
