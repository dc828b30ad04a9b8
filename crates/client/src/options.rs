//! What a caller decides before connecting: where, as whom, in which encoding,
//! how long calls may take, and whether and how to reconnect.

use std::path::PathBuf;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The hub protocol encoding the connection speaks after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Json,
    MessagePack,
}

/// How a client connects. Build one with [`ClientOptions::new`] and change the
/// fields that differ from the defaults.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The hub URL, `http(s)://host:port/next-chat` or `ws(s)://host:port/next-chat`.
    pub url: String,
    /// The credential, sent as `Authorization: Bearer …`: the user id itself when
    /// the server runs `--auth header`, a JWT when it runs `--auth jwt`.
    pub user: String,
    /// A file holding the credential (a JWT), read at every connect and
    /// reconnect instead of `user`, so that a token renewed in the file is used
    /// when the server closes a connection whose token expired.
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates trusted besides the system's, for
    /// `https://`/`wss://` servers with a private CA.
    pub ca_file: Option<PathBuf>,
    pub protocol: Protocol,
    /// Connect straight to the WebSocket, without `POST .../negotiate` first.
    pub skip_negotiation: bool,
    /// How long any hub call may wait for its completion.
    pub call_timeout: Duration,
    /// How long connecting (negotiate, WebSocket upgrade, handshake) may take.
    pub connect_timeout: Duration,
    /// The client sends a Ping whenever it has sent nothing for this long, so the
    /// server (which closes a connection silent for 30 s) keeps it open.
    pub keep_alive_interval: Duration,
    /// The server is taken for dead when nothing at all arrived for this long
    /// (it pings every 15 s when idle).
    pub server_timeout: Duration,
    /// `None`: a lost connection ends the client with [`crate::Event::Closed`].
    pub reconnect: Option<ReconnectPolicy>,
    /// After a reconnect, the most messages one group's catch-up fetches with
    /// `GetMessagesAfter` (in pages of 500). Past it the rest of the gap is
    /// skipped, said by [`crate::Event::CaughtUp`] with `complete: false`, and
    /// delivery goes on from the group's latest messages: a client that was
    /// away for a very long time does not fetch without end.
    pub catch_up_max_messages: usize,
    /// Ask for SignalR stateful reconnect (negotiate `useStatefulReconnect`,
    /// hub protocol 2): when the socket drops, a new one resumes the same
    /// connection at once, and nothing is lost or repeated, with no
    /// [`crate::Event::Disconnected`]. Only when that fails does `reconnect`
    /// apply. Needs negotiation (not `skip_negotiation`).
    pub stateful_reconnect: bool,
}

impl ClientOptions {
    /// JSON, negotiate first, 10 s calls, stateful reconnect, no automatic
    /// full reconnect.
    pub fn new(url: impl Into<String>, user: impl Into<String>) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            user: user.into(),
            protocol: Protocol::Json,
            skip_negotiation: false,
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(15),
            server_timeout: Duration::from_secs(30),
            reconnect: None,
            ca_file: None,
            catch_up_max_messages: 100_000,
            token_file: None,
            stateful_reconnect: true,
        }
    }
}

/// Exponential backoff between reconnect attempts: `initial_delay`, doubling up to
/// `max_delay`, for at most `max_attempts` attempts (`None`: forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The waits before each attempt, in order; the iterator ends when the
    /// attempts do.
    pub fn delays(&self) -> ExponentialBackoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0);
        match self.max_attempts {
            Some(max) => builder.with_max_times(max as usize),
            None => builder.without_max_times(),
        }
        .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(700),
            max_attempts: None,
        };
        let delays: Vec<u64> = policy.delays().take(5).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(policy.delays().nth(10_000), Some(Duration::from_millis(700)));
    }

    #[test]
    fn backoff_ends_with_the_attempts() {
        let policy = ReconnectPolicy { max_attempts: Some(3), ..ReconnectPolicy::default() };
        assert_eq!(policy.delays().count(), 3);
        let never = ReconnectPolicy { max_attempts: Some(0), ..ReconnectPolicy::default() };
        assert_eq!(never.delays().next(), None);
    }
}
