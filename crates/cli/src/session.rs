//! What each console command does: one connection at most, each command's
//! result or a one-line friendly error, printed through the [`Printer`].

use std::path::PathBuf;
use std::time::Duration;

use next_chat_client::{Client, ClientError, ClientOptions, JoinResult, Protocol, ReconnectPolicy};

use crate::command::{COMMANDS, Command, help_for};
use crate::output::Printer;

/// How the session connects; from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub protocol: Protocol,
    pub skip_negotiation: bool,
    /// The server's per-group member limit, for the "group is full" message
    /// (the hub's NoRoom answer does not carry it).
    pub max_members: u32,
    pub reconnect: bool,
    /// `--ca-file`: trusted besides the system's roots for https:// servers.
    pub ca_file: Option<PathBuf>,
}

/// Whether to read another command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// A command that could not do what it was asked; already reported.
#[derive(Debug)]
pub struct Failed;

pub struct Session {
    settings: Settings,
    printer: Printer,
    client: Option<Client>,
}

impl Session {
    pub fn new(settings: Settings, printer: Printer) -> Session {
        Session { settings, printer, client: None }
    }

    pub async fn run_line(&mut self, line: &str) -> Result<Flow, Failed> {
        self.run(crate::command::parse(line)).await
    }

    pub async fn run(&mut self, command: Command) -> Result<Flow, Failed> {
        match command {
            Command::Nothing => Ok(Flow::Continue),
            Command::Bye => {
                self.disconnect().await;
                Ok(Flow::Quit)
            }
            Command::Help { topic } => self.help(topic.as_deref()).map(|()| Flow::Continue),
            Command::Unknown(word) => {
                self.fail(&format!("unknown command `{word}`; type help for the list of commands"))
            }
            Command::Usage(help) => {
                self.fail(&format!("usage: {} (type help {} for more)", help.usage, help.name))
            }
            Command::Connect { url, user } => {
                self.connect(url, user, None).await.map(|()| Flow::Continue)
            }
            other => {
                let client = self.connected()?;
                self.call(&client, other).await.map(|()| Flow::Continue)
            }
        }
    }

    /// Closes the connection, if any, and waits until everything is printed.
    pub async fn disconnect(&mut self) {
        if let Some(client) = self.client.take() {
            client.close().await;
        }
        self.printer.flush().await;
    }

    /// Connects with `credential`: a user id, or a JWT (read from `token_file`,
    /// when given, at this and every later reconnect).
    pub async fn connect(
        &mut self,
        url: String,
        credential: String,
        token_file: Option<PathBuf>,
    ) -> Result<(), Failed> {
        if let Some(client) = self.client.as_ref().filter(|c| !c.is_closed()) {
            return self.fail(&format!(
                "you are connected already, as {}; type bye to quit first",
                display_user(client.user())
            ));
        }
        let user = display_user(&credential);
        let mut options = ClientOptions::new(url.clone(), credential);
        options.ca_file = self.settings.ca_file.clone();
        // Read again at every reconnect, so that a renewed token is used.
        options.token_file = token_file;
        options.protocol = self.settings.protocol;
        options.skip_negotiation = self.settings.skip_negotiation;
        if self.settings.reconnect {
            options.reconnect = Some(ReconnectPolicy {
                initial_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(10),
                max_attempts: None,
            });
        }
        match Client::connect(options).await {
            Ok((client, events)) => {
                self.printer.follow(client.clone(), events);
                self.client = Some(client);
                self.printer.info(&format!("connected to {url} as {user}"));
                Ok(())
            }
            Err(error) => self.fail(&format!("cannot connect to {url}: {}", connect_error(&error))),
        }
    }

    fn connected(&self) -> Result<Client, Failed> {
        match &self.client {
            Some(client) if !client.is_closed() => Ok(client.clone()),
            _ => self.fail("not connected: connect first with connect URI USER"),
        }
    }

    async fn call(&self, client: &Client, command: Command) -> Result<(), Failed> {
        match command {
            Command::List => {
                let groups = client.list_groups().await.or_else(|e| self.call_failed(e))?;
                if groups.is_empty() {
                    self.printer.info("no groups yet; create one with create GROUP");
                }
                for group in groups {
                    self.printer.line(group);
                }
            }
            Command::Create { group } => {
                client.create_group(&group).await.or_else(|e| self.call_failed(e))?;
                self.printer.info(&format!("created {group}"));
            }
            Command::Join { group } => {
                match client.join_group(&group).await.or_else(|e| self.call_failed(e))? {
                    JoinResult::Joined => self.printer.info(&format!("joined {group}")),
                    JoinResult::NoRoom => {
                        let n = self.settings.max_members;
                        return self.fail(&format!("group {group} is full ({n} of {n})"));
                    }
                }
            }
            Command::Leave { group } => {
                client.leave_group(&group).await.or_else(|e| self.call_failed(e))?;
                self.printer.info(&format!("left {group}"));
            }
            Command::Say { group, text } => {
                // Printed when it comes back from the server, like everyone's.
                client.send_message(&group, &text).await.or_else(|e| self.call_failed(e))?;
            }
            Command::History { group, count } => {
                let messages = client
                    .get_history(&group, None, count)
                    .await
                    .or_else(|e| self.call_failed(e))?;
                if messages.is_empty() {
                    self.printer.info(&format!("no messages in {group} yet"));
                }
                for message in &messages {
                    self.printer.line(self.printer.style.message(message));
                }
            }
            // Handled before a connection is needed.
            Command::Connect { .. }
            | Command::Help { .. }
            | Command::Bye
            | Command::Nothing
            | Command::Unknown(_)
            | Command::Usage(_) => {}
        }
        Ok(())
    }

    fn help(&self, topic: Option<&str>) -> Result<(), Failed> {
        match topic {
            None => {
                self.printer.line("commands:");
                for command in COMMANDS {
                    self.printer.line(format!("  {:<20} {}", command.usage, command.summary));
                }
                Ok(())
            }
            Some(topic) => match help_for(topic) {
                Some(command) => {
                    self.printer.line(format!("{}: {}", command.usage, command.summary));
                    Ok(())
                }
                None => self.fail(&format!(
                    "there is no command `{topic}`; type help for the list of commands"
                )),
            },
        }
    }

    fn call_failed<T>(&self, error: ClientError) -> Result<T, Failed> {
        let text = match error {
            ClientError::Server(message) => format!("the server says: {message}"),
            ClientError::Disconnected => {
                "not connected right now (reconnecting); try again in a moment".to_string()
            }
            ClientError::Closed => "not connected: connect first with connect URI USER".into(),
            other => other.to_string(),
        };
        self.fail(&text)
    }

    fn fail<T>(&self, text: &str) -> Result<T, Failed> {
        self.printer.error(text);
        Err(Failed)
    }
}

fn connect_error(error: &ClientError) -> String {
    match error {
        ClientError::Http { status: 401, message } => {
            format!("the server refused the user id or token: {message}")
        }
        other => other.to_string(),
    }
}

/// Who a credential names, for messages: a JWT's `sub` (read, not verified:
/// the server does that), else the credential itself, a user id.
fn display_user(credential: &str) -> String {
    use base64::Engine;
    let mut parts = credential.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return credential.to_owned();
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims.get("sub").and_then(|sub| sub.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "the token's user".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_is_shown_as_its_sub() {
        // {"alg":"HS256"} . {"sub":"ann","exp":1} . signature
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4iLCJleHAiOjF9.c2ln";
        assert_eq!(display_user(token), "ann");
        assert_eq!(display_user("bob"), "bob");
        assert_eq!(display_user("a.b.c"), "the token's user");
    }
}
