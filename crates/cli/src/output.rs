//! Everything the console prints goes through one [`Printer`] task, so that
//! command results and incoming events come out in the order they happened and
//! whole lines at a time. In a terminal the lines go to the line editor's
//! external printer, which prints them above the line being typed; otherwise
//! to stdout (and errors to stderr), plainly.

use std::io::Write;
use std::time::SystemTime;

use chrono::{DateTime, Local};
use next_chat_client::{Client, Event, Events, Message};
use tokio::sync::{mpsc, oneshot};

/// Where finished lines go.
pub enum Sink {
    /// stdout, and stderr for errors.
    Std,
    /// The line editor's external printer, on a thread of its own (it blocks
    /// until the editor has taken the line).
    Terminal(std::sync::mpsc::Sender<String>),
}

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }

    /// `group [local time] author: text`
    pub fn message(self, message: &Message) -> String {
        format!(
            "{} {} {}: {}",
            self.paint("1;36", &message.group_id),
            self.paint("2", &format!("[{}]", local_time(message.send_time))),
            self.paint("1;32", &message.author_id),
            message.text
        )
    }

    pub fn info(self, text: &str) -> String {
        self.paint("33", text)
    }

    pub fn error(self, text: &str) -> String {
        self.paint("31", text)
    }
}

/// The time of day in the local time zone, to the second.
pub fn local_time(time: SystemTime) -> String {
    DateTime::<Local>::from(time).format("%H:%M:%S").to_string()
}

enum Job {
    Line {
        text: String,
        error: bool,
    },
    /// Print this client's events from now on.
    Follow {
        client: Client,
        events: Events,
    },
    /// Answers once every line before it has been written.
    Flush(oneshot::Sender<()>),
}

/// A handle to the printing task; cheap to clone.
#[derive(Clone)]
pub struct Printer {
    jobs: mpsc::UnboundedSender<Job>,
    pub style: Style,
}

impl Printer {
    pub fn start(sink: Sink, style: Style) -> Printer {
        let (jobs, receiver) = mpsc::unbounded_channel();
        tokio::spawn(print_loop(receiver, sink, style));
        Printer { jobs, style }
    }

    pub fn line(&self, text: impl Into<String>) {
        let _ = self.jobs.send(Job::Line { text: text.into(), error: false });
    }

    pub fn info(&self, text: &str) {
        self.line(self.style.info(text));
    }

    pub fn error(&self, text: &str) {
        let _ = self.jobs.send(Job::Line { text: self.style.error(text), error: true });
    }

    pub fn follow(&self, client: Client, events: Events) {
        let _ = self.jobs.send(Job::Follow { client, events });
    }

    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn print_loop(mut jobs: mpsc::UnboundedReceiver<Job>, sink: Sink, style: Style) {
    let mut followed: Option<(Client, Events)> = None;
    loop {
        // Events first: an event already queued when a command's result is
        // printed happened before it (a join's history before "joined").
        let job = tokio::select! {
            biased;
            event = async {
                match followed.as_mut() {
                    Some((_, events)) => events.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match event {
                    Some(event) => {
                        let client = followed.as_ref().map(|(client, _)| client);
                        for (text, error) in describe(style, client, event) {
                            write(&sink, text, error);
                        }
                    }
                    None => followed = None,
                }
                continue;
            }
            job = jobs.recv() => job,
        };
        match job {
            None => return,
            Some(Job::Line { text, error }) => write(&sink, text, error),
            Some(Job::Follow { client, events }) => followed = Some((client, events)),
            Some(Job::Flush(done)) => {
                if let Sink::Std = sink {
                    let _ = std::io::stdout().flush();
                    let _ = std::io::stderr().flush();
                }
                let _ = done.send(());
            }
        }
    }
}

fn write(sink: &Sink, text: String, error: bool) {
    match sink {
        Sink::Std if error => {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
        Sink::Std => {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
        Sink::Terminal(printer) => {
            let _ = printer.send(text + "\n");
        }
    }
}

/// The lines an event prints, each marked as an error or not.
fn describe(style: Style, client: Option<&Client>, event: Event) -> Vec<(String, bool)> {
    match event {
        Event::Message(message) => vec![(style.message(&message), false)],
        Event::History { messages, .. } => {
            messages.iter().map(|m| (style.message(m), false)).collect()
        }
        Event::Disconnected { error } => {
            let reason = error.map(|e| format!(" ({e})")).unwrap_or_default();
            vec![(style.error(&format!("connection lost{reason}; reconnecting...")), true)]
        }
        Event::RejoinFailed { group, error } => {
            vec![(style.error(&format!("could not rejoin {group}: {error}")), true)]
        }
        Event::CaughtUp { group, missed, complete } => caught_up(style, &group, missed, complete),
        Event::Reconnected => {
            let groups = client.map(Client::joined_groups).unwrap_or_default();
            let rejoined = if groups.is_empty() {
                String::new()
            } else {
                format!("; rejoined {}", groups.join(", "))
            };
            vec![(style.info(&format!("reconnected{rejoined}")), false)]
        }
        Event::Closed { error: Some(error) } => vec![(
            style.error(&format!("disconnected: {error}; connect again with connect URI USER")),
            true,
        )],
        Event::Closed { error: None } => Vec::new(),
    }
}

/// After a reconnect: how many messages of `group` were missed and are shown
/// now (nothing when none were).
fn caught_up(style: Style, group: &str, missed: usize, complete: bool) -> Vec<(String, bool)> {
    let messages = if missed == 1 { "message" } else { "messages" };
    let line = format!("caught up on {missed} missed {messages} in {group}");
    match (missed, complete) {
        (0, true) => Vec::new(),
        (_, true) => vec![(style.info(&line), false)],
        (_, false) => vec![(
            style.error(&format!(
                "{line}; more were missed than the client fetches, the rest were skipped"
            )),
            true,
        )],
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn messages_print_as_group_time_author_text() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_846_674);
        let message = Message {
            id: "1-0".into(),
            author_id: "ann".into(),
            group_id: "g".into(),
            send_time: time,
            text: "hi there".into(),
        };
        let plain = Style { color: false }.message(&message);
        assert_eq!(plain, format!("g [{}] ann: hi there", local_time(time)));
        let colored = Style { color: true }.message(&message);
        assert!(colored.contains("\x1b[") && colored.ends_with(": hi there"));
    }

    #[test]
    fn a_catch_up_says_how_many_were_missed() {
        let plain = Style { color: false };
        let lines = |missed, complete| caught_up(plain, "g", missed, complete);
        assert_eq!(
            lines(137, true),
            [("caught up on 137 missed messages in g".to_string(), false)]
        );
        assert_eq!(lines(1, true), [("caught up on 1 missed message in g".to_string(), false)]);
        assert!(lines(0, true).is_empty());
        let (text, error) = &lines(5, false)[0];
        assert!(*error && text.contains("the rest were skipped"), "{text}");
    }
}
