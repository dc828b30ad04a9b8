//! The Next Chat hub: maps SignalR invocations onto `ChatService` and chat
//! values onto the wire. This is the one place where a `ChatError` becomes a
//! completion error and a `Message` becomes `OnMessage`'s argument.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use next_chat_contract::Message as WireMessage;
use next_chat_contract::{self as contract, ArgKind, Callback, JoinResult, Method};
use next_chat_core::{
    ChatError, ChatService, ConnectionId, Delivery, GroupId, JoinOutcome, Message, Recipient,
    Session,
};
use next_chat_signalr::server::{Connection, Hub, Identity, Invoked, Refused};
use next_chat_signalr::{HubMessage, Value};
use tracing::{debug, warn};

use crate::auth::Authenticator;
use crate::metrics::{ConnectionLabels, Metrics, ReconnectLabels};

pub struct ChatHub {
    chat: Arc<ChatService>,
    metrics: Arc<Metrics>,
    authenticator: Authenticator,
}

impl ChatHub {
    pub fn new(
        chat: Arc<ChatService>,
        metrics: Arc<Metrics>,
        authenticator: Authenticator,
    ) -> ChatHub {
        ChatHub { chat, metrics, authenticator }
    }
}

/// A connection's chat session and the labels it is counted under.
pub struct ChatSession {
    session: Session,
    labels: ConnectionLabels,
    /// Asked at the end whether it was closed as a slow consumer.
    connection: Connection,
}

/// A SignalR connection as the chat's fan-out sees it.
struct ConnectionRecipient {
    id: ConnectionId,
    connection: Connection,
    metrics: Arc<Metrics>,
}

fn encode_invocation(connection: &Connection, callback: Callback, argument: Value) -> Bytes {
    connection.protocol().encode(&HubMessage::Invocation {
        invocation_id: None,
        target: callback.name().to_string(),
        arguments: vec![argument],
        stream_ids: Vec::new(),
    })
}

impl Recipient for ConnectionRecipient {
    fn connection_id(&self) -> &ConnectionId {
        &self.id
    }

    fn user(&self) -> &str {
        self.connection.user()
    }

    fn deliver(&self, delivery: &Delivery) {
        let protocol = self.connection.protocol();
        let record = delivery.encoded(protocol.slot(), |message| {
            encode_invocation(&self.connection, Callback::OnMessage, message_value(message))
        });
        // A refused record has closed the connection as a slow consumer (counted
        // once, in `disconnected`) or it was closed already.
        if self.connection.send(record).is_ok() {
            self.metrics.messages_delivered.inc();
        }
    }

    fn deliver_history(&self, messages: &[Message]) {
        let record =
            encode_invocation(&self.connection, Callback::OnHistory, messages_value(messages));
        // Refused: see `deliver`.
        let _ = self.connection.send(record);
    }

    fn encoded_size(&self, message: &Message) -> usize {
        message_size_bound(message)
    }
}

/// Room a `Message` takes besides its four strings: the keys, the quoted
/// RFC 3339 `sendTime` (26 bytes), braces and commas come to 77 bytes in JSON;
/// MessagePack's map, key and string headers and its timestamp fit too.
const MESSAGE_FIXED_BYTES: usize = 128;

/// An upper bound on the bytes `message` takes in a history page, in JSON or
/// MessagePack: its strings as `serde_json` escapes them (a control character
/// is six bytes, `\u00XX`, as our JSON writer also writes it) plus the fixed
/// part. MessagePack writes each string raw after a header of at most five
/// bytes, never more than JSON's quotes and escapes.
pub fn message_size_bound(message: &Message) -> usize {
    let id = message.id.to_string();
    [id.as_str(), message.author.as_str(), message.group.as_str(), message.text.as_str()]
        .into_iter()
        .map(json_string_len)
        .sum::<usize>()
        + MESSAGE_FIXED_BYTES
}

/// Bytes `serde_json` writes for `text` as a JSON string, quotes included,
/// counted without building the string.
fn json_string_len(text: &str) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `str` to an infallible writer cannot fail; if it ever did,
    // the worst case (six bytes a character) keeps the bound an upper one.
    match serde_json::to_writer(&mut count, text) {
        Ok(()) => count.0,
        Err(_) => 2 + 6 * text.len(),
    }
}

/// `Message` as the contract shapes it (`next_chat_contract::Message`).
pub fn message_value(message: &Message) -> Value {
    WireMessage {
        id: message.id.to_string(),
        author_id: message.author.as_str().into(),
        group_id: message.group.as_str().into(),
        send_time: message.send_time,
        text: message.text.as_str().into(),
    }
    .into_value()
}

fn messages_value(messages: &[Message]) -> Value {
    Value::Array(messages.iter().map(message_value).collect())
}

/// A hub method's arguments, checked against the contract's list by number
/// and, as each is read, by kind.
struct Arguments<'a> {
    method: Method,
    values: &'a [Value],
}

impl<'a> Arguments<'a> {
    fn new(method: Method, values: &'a [Value]) -> Result<Arguments<'a>, String> {
        let names: Vec<&str> = method.arguments().iter().map(|a| a.name).collect();
        if values.len() != names.len() {
            return Err(format!(
                "{} takes {} argument{} ({}), not {}",
                method.name(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                values.len()
            ));
        }
        Ok(Arguments { method, values })
    }

    /// The name of argument `index`, which the contract says is a `kind`.
    fn name(&self, index: usize, kind: ArgKind) -> &'static str {
        let argument = self.method.arguments()[index];
        debug_assert_eq!(argument.kind, kind, "{:?} argument {index}", self.method);
        argument.name
    }

    fn string(&self, index: usize) -> Result<&'a str, String> {
        let name = self.name(index, ArgKind::String);
        self.values[index]
            .as_str()
            .ok_or_else(|| format!("{}: {name} must be a string", self.method.name()))
    }

    fn optional_string(&self, index: usize) -> Result<Option<&'a str>, String> {
        let name = self.name(index, ArgKind::OptionalString);
        match &self.values[index] {
            value if value.is_null() => Ok(None),
            value => value
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{}: {name} must be a string or null", self.method.name())),
        }
    }

    fn integer(&self, index: usize) -> Result<i64, String> {
        let name = self.name(index, ArgKind::Integer);
        self.values[index]
            .as_i64()
            .ok_or_else(|| format!("{}: {name} must be an integer", self.method.name()))
    }
}

/// What a hub method gives back: its value now, or no value once `Later` resolves.
enum Reply {
    Now(Option<Value>),
    Later(Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// A `Group[]` result.
fn groups_reply(groups: Result<Vec<GroupId>, ChatError>) -> Result<Reply, String> {
    let groups = groups.map_err(chat_error)?;
    Ok(Reply::Now(Some(contract::groups_value(groups.iter().map(GroupId::as_str)))))
}

fn chat_error(error: ChatError) -> String {
    if let ChatError::Backend(backend) = &error {
        warn!(backend = backend.backend, detail = ?backend.detail, "backend error");
    }
    error.to_string()
}

impl ChatHub {
    /// Runs `method`; each arm reads the arguments the contract lists for it.
    async fn dispatch(
        &self,
        session: &Session,
        method: Method,
        values: &[Value],
    ) -> Result<Reply, String> {
        let args = Arguments::new(method, values)?;
        let chat = &self.chat;
        match method {
            Method::CreateGroup => {
                chat.create_group(session, args.string(0)?).await.map_err(chat_error)?;
                Ok(Reply::Now(None))
            }
            Method::ListGroups => groups_reply(chat.list_groups().await),
            Method::ListGroupsPage => groups_reply(
                chat.list_groups_page(args.optional_string(0)?, args.integer(1)?).await,
            ),
            Method::JoinGroup => {
                let outcome =
                    chat.join_group(session, args.string(0)?).await.map_err(chat_error)?;
                let result = match outcome {
                    JoinOutcome::Joined => JoinResult::Ok,
                    JoinOutcome::NoRoom => JoinResult::NoRoom,
                };
                Ok(Reply::Now(Some(Value::Int(result.wire()))))
            }
            Method::LeaveGroup => {
                chat.leave_group(session, args.string(0)?).await.map_err(chat_error)?;
                Ok(Reply::Now(None))
            }
            Method::ListMembers => {
                let members =
                    chat.list_members(session, args.string(0)?).await.map_err(chat_error)?;
                let members = members.iter().map(|user| Value::Str(user.as_str().into()));
                Ok(Reply::Now(Some(Value::Array(members.collect()))))
            }
            Method::SendMessage => {
                let accepted = chat
                    .accept_message(session, args.string(0)?, args.string(1)?)
                    .await
                    .map_err(chat_error)?;
                // Delivered: the connection's next call may start while this
                // one waits for history to store the message.
                Ok(Reply::Later(accepted.saved))
            }
            Method::GetHistory | Method::GetMessagesAfter => {
                self.read_messages(session, method, &args).await
            }
        }
    }

    /// `GetHistory` (back from `before`) or `GetMessagesAfter` (on from `afterId`).
    async fn read_messages(
        &self,
        session: &Session,
        method: Method,
        args: &Arguments<'_>,
    ) -> Result<Reply, String> {
        let group = args.string(0)?;
        let messages = if method == Method::GetHistory {
            self.chat.get_history(session, group, args.optional_string(1)?, args.integer(2)?).await
        } else {
            self.chat.get_messages_after(session, group, args.string(1)?, args.integer(2)?).await
        };
        Ok(Reply::Now(Some(messages_value(&messages.map_err(chat_error)?))))
    }
}

impl Hub for ChatHub {
    type Session = ChatSession;

    async fn authenticate(&self, token: &str) -> Result<Identity, Refused> {
        let identity = self.authenticator.authenticate(token).await?;
        // The same user-id rules whoever vouches for the id.
        let user = self
            .chat
            .parse_user(&identity.user)
            .map_err(|e| self.authenticator.refuse_user(e.to_string()))?;
        Ok(Identity { user: user.as_str().to_owned(), ..identity })
    }

    fn unauthenticated(&self) -> Refused {
        self.authenticator.unauthenticated()
    }

    async fn connected(&self, connection: Connection) -> Result<ChatSession, String> {
        let user = self.chat.parse_user(connection.user()).map_err(|e| e.to_string())?;
        let labels = ConnectionLabels {
            transport: connection.transport().name(),
            protocol: connection.protocol().name(),
        };
        self.metrics.connections.get_or_create(&labels).inc();
        let recipient = ConnectionRecipient {
            id: ConnectionId::new(connection.id()),
            connection: connection.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        let session = self.chat.open_session(user, Arc::new(recipient));
        Ok(ChatSession { session, labels, connection })
    }

    async fn invoke(&self, session: &ChatSession, target: &str, arguments: Vec<Value>) -> Invoked {
        let Some(method) = Method::parse(target) else {
            self.metrics.invocation("unknown", "error");
            let known: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
            return Invoked::Done(Err(format!(
                "unknown hub method '{target}'; the methods are {}",
                known.join(", ")
            )));
        };
        let result = self.dispatch(&session.session, method, &arguments).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.invocation(method.name(), outcome);
        if let Err(error) = &result {
            debug!(method = method.name(), user = ?session.session.user(), ?error, "invocation failed");
        }
        match result {
            Ok(Reply::Now(value)) => Invoked::Done(Ok(value)),
            Ok(Reply::Later(done)) => Invoked::Finishing(Box::pin(async move {
                done.await;
                Ok(None)
            })),
            Err(error) => Invoked::Done(Err(error)),
        }
    }

    fn resumed(&self, _session: &ChatSession) {
        self.metrics
            .stateful_reconnects
            .get_or_create(&ReconnectLabels { outcome: "resumed" })
            .inc();
    }

    async fn disconnected(&self, session: ChatSession) {
        self.chat.close_session(&session.session).await;
        self.metrics.connections.get_or_create(&session.labels).dec();
        // Whichever record overflowed its queue (a delivery, OnHistory, or a
        // completion such as a GetHistory page), the connection counts once.
        if session.connection.closed_as_slow_consumer() {
            self.metrics.slow_consumers_closed.inc();
        }
        let reconnect_end = if session.connection.closed_as_reconnect_expired() {
            Some("expired")
        } else if session.connection.closed_as_reconnect_overflow() {
            Some("overflowed")
        } else {
            None
        };
        if let Some(outcome) = reconnect_end {
            self.metrics.stateful_reconnects.get_or_create(&ReconnectLabels { outcome }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use next_chat_core::{MessageId, MessageText, UserId};
    use next_chat_signalr::{Outcome, Protocol};

    use super::*;

    fn page_record(protocol: Protocol, messages: &[Message]) -> usize {
        let page = messages_value(messages);
        protocol
            .encode(&HubMessage::Completion {
                invocation_id: "1".into(),
                outcome: Outcome::Result(page),
            })
            .len()
    }

    #[test]
    fn the_size_bound_holds_for_both_protocols_whatever_the_text() {
        let texts = [
            "hi".to_string(),
            (0..16_384).map(|i| char::from(1 + (i % 30) as u8)).collect(),
            "😀".repeat(16_384),
            "\"\\".repeat(8_192),
            "é".repeat(16_384),
        ];
        for text in texts {
            let message = Message {
                id: MessageId::new(1_732_776_000_000, 12),
                author: UserId::from_trusted(&"\u{1}".repeat(64)),
                group: GroupId::from_trusted("off-topic"),
                send_time: SystemTime::now(),
                text: MessageText::from_trusted(&text),
            };
            let bound = message_size_bound(&message);
            let messages = vec![message.clone(), message];
            for protocol in Protocol::ALL {
                let record = page_record(protocol, &messages);
                assert!(
                    record <= 2 * bound + next_chat_core::PAGE_ENVELOPE_BYTES,
                    "{protocol:?}: {record} bytes > 2 × {bound} + envelope"
                );
            }
            // Tight enough to be useful: JSON is within the fixed part of the bound.
            let json = page_record(Protocol::Json, &messages[..1]);
            assert!(bound <= json + MESSAGE_FIXED_BYTES, "{bound} vs {json}");
        }
    }
}
