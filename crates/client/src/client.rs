//! The `Client` handle and the task behind it that owns the connection: typed
//! hub calls with timeouts, and, when asked for, reconnecting with backoff,
//! rejoining the groups the client had joined and catching up on what it missed.

use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::Stream;
use next_chat_contract::Method;
use next_chat_signalr::protocol::{Outcome, Protocol as WireProtocol};
use next_chat_signalr::value::Value;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::connection::{self, Call, ConnectionEnd, ConnectionHandle, JoinTrack, Timing};
use crate::delivery::{Delivery, missed_since};
use crate::error::ClientError;
use crate::model::{Event, JoinResult, Message};
use crate::options::{ClientOptions, ReconnectPolicy};
use crate::transport;
use crate::wire;

/// The largest page `GetMessagesAfter` accepts; catching up fetches this many at a time.
const CATCH_UP_PAGE: usize = 500;

/// Where catching up starts in a group in which nothing was delivered yet:
/// before every id, so it fetches every message sent since the join.
const BEFORE_EVERY_ID: &str = "0-0";

/// A connection to a Next Chat hub. Clones share the connection; calls may be
/// made from several tasks at once. Dropping the last clone closes it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Tells the supervisor to close: sending, or dropping it with the last clone.
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// What the handles and the supervisor task share.
struct Shared {
    options: ClientOptions,
    protocol: WireProtocol,
    next_invocation_id: AtomicU64,
    state: Mutex<State>,
    delivery: Arc<Mutex<Delivery>>,
}

struct State {
    link: Link,
    /// The groups this client has joined and not left: rejoined after a reconnect.
    joined: BTreeSet<String>,
}

enum Link {
    Up(ConnectionHandle),
    Reconnecting,
    Closed,
}

/// The events of one client, in order; ends after [`Event::Closed`].
/// Also a [`Stream`].
pub struct Events {
    receiver: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` after `Closed`.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.receiver.poll_recv(cx)
    }
}

impl Client {
    /// Connects (negotiate, WebSocket, handshake) and returns the handle and its
    /// events. Fails if the first connection cannot be made; reconnecting, if
    /// enabled, applies to connections lost later.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let transport = transport::open(&options).await?;
        let (events, receiver) = mpsc::unbounded_channel();
        let delivery = Arc::new(Mutex::new(Delivery::new(events)));
        let protocol = wire::wire_protocol(options.protocol);
        let (handle, driver) =
            connection::spawn(transport, protocol, timing(&options), delivery.clone());
        let shared = Arc::new(Shared {
            options,
            protocol,
            next_invocation_id: AtomicU64::new(0),
            state: Mutex::new(State { link: Link::Up(handle), joined: BTreeSet::new() }),
            delivery,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(shared.clone(), driver, shutdown_rx));
        let inner = Inner { shared, shutdown, supervisor: Mutex::new(Some(supervisor)) };
        Ok((Client { inner: Arc::new(inner) }, Events { receiver }))
    }

    /// The user id this client connected as.
    pub fn user(&self) -> &str {
        &self.inner.shared.options.user
    }

    /// Whether calls can be made now (not reconnecting, not closed).
    pub fn is_connected(&self) -> bool {
        matches!(self.inner.shared.state().link, Link::Up(_))
    }

    /// Whether the client is finished: closed, or lost with no reconnecting.
    pub fn is_closed(&self) -> bool {
        matches!(self.inner.shared.state().link, Link::Closed)
    }

    /// How many incoming messages were dropped because they had already been
    /// delivered. Only a reconnect's catch-up can overlap live delivery, so on
    /// a connection that never reconnected this is 0 unless the server sent a
    /// message twice.
    pub fn duplicates_dropped(&self) -> u64 {
        self.inner.shared.delivery().duplicates_dropped()
    }

    /// The groups joined and not left, in order.
    pub fn joined_groups(&self) -> Vec<String> {
        self.inner.shared.state().joined.iter().cloned().collect()
    }

    /// Creates `group`; creating one that exists is not an error.
    pub async fn create_group(&self, group: &str) -> Result<(), ClientError> {
        wire::expect_void(self.invoke(Method::CreateGroup, vec![group.into()], None).await?)
    }

    /// Every group's id, sorted, at most 1000.
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        let outcome = self.invoke(Method::ListGroups, Vec::new(), None).await?;
        wire::group_ids(&wire::expect_result(Method::ListGroups, outcome)?)
    }

    /// The ids of at most `limit` groups after `after` (from the start if `None`), sorted.
    pub async fn list_groups_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, ClientError> {
        let arguments = vec![wire::optional_str(after), Value::Int(i64::from(limit))];
        let outcome = self.invoke(Method::ListGroupsPage, arguments, None).await?;
        wire::group_ids(&wire::expect_result(Method::ListGroupsPage, outcome)?)
    }

    /// Joins `group`. On `Joined` its history has already been delivered as
    /// [`Event::History`], and its new messages follow as [`Event::Message`].
    pub async fn join_group(&self, group: &str) -> Result<JoinResult, ClientError> {
        let track = JoinTrack { group: group.to_string(), history: None };
        let outcome = self.invoke(Method::JoinGroup, vec![group.into()], Some(track)).await?;
        let result = wire::join_result(&wire::expect_result(Method::JoinGroup, outcome)?)?;
        if result == JoinResult::Joined {
            self.inner.shared.state().joined.insert(group.to_string());
        }
        Ok(result)
    }

    /// Leaves `group`; leaving a group not joined is not an error.
    pub async fn leave_group(&self, group: &str) -> Result<(), ClientError> {
        wire::expect_void(self.invoke(Method::LeaveGroup, vec![group.into()], None).await?)?;
        self.inner.shared.state().joined.remove(group);
        self.inner.shared.delivery().forget(group);
        Ok(())
    }

    /// The user ids of `group`'s members now (on every server instance), sorted.
    /// The client must have joined the group.
    pub async fn list_members(&self, group: &str) -> Result<Vec<String>, ClientError> {
        let outcome = self.invoke(Method::ListMembers, vec![group.into()], None).await?;
        wire::strings(&wire::expect_result(Method::ListMembers, outcome)?, "members")
    }

    /// Sends `text` to `group`; returns once the server accepted it for delivery.
    pub async fn send_message(&self, group: &str, text: &str) -> Result<(), ClientError> {
        let arguments = vec![group.into(), text.into()];
        wire::expect_void(self.invoke(Method::SendMessage, arguments, None).await?)
    }

    /// At most `limit` messages of `group` before the message `before` (the
    /// latest if `None`), oldest first. The client must have joined the group.
    pub async fn get_history(
        &self,
        group: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        let handle = self.inner.shared.handle()?;
        get_history(&self.inner.shared, &handle, group, before, limit).await
    }

    /// At most `limit` messages of `group` after the message `after_id`,
    /// oldest first (`GetMessagesAfter`). The client must have joined the
    /// group. A page may be shorter than `limit` (the server caps pages in
    /// bytes); page on from the last message's id until a page is empty.
    pub async fn get_messages_after(
        &self,
        group: &str,
        after_id: &str,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        let handle = self.inner.shared.handle()?;
        get_messages_after(&self.inner.shared, &handle, group, after_id, limit).await
    }

    /// Closes the connection for every clone of this handle; `Event::Closed`
    /// (with no error) is the last event. Returns when the connection is closed.
    pub async fn close(self) {
        let _ = self.inner.shutdown.send(true);
        let supervisor = self.inner.supervisor.lock().take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    async fn invoke(
        &self,
        method: Method,
        arguments: Vec<Value>,
        join: Option<JoinTrack>,
    ) -> Result<Outcome, ClientError> {
        let handle = self.inner.shared.handle()?;
        call(&self.inner.shared, &handle, method, arguments, join).await
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn delivery(&self) -> MutexGuard<'_, Delivery> {
        self.delivery.lock()
    }

    fn handle(&self) -> Result<ConnectionHandle, ClientError> {
        match &self.state().link {
            Link::Up(handle) => Ok(handle.clone()),
            Link::Reconnecting => Err(ClientError::Disconnected),
            Link::Closed => Err(ClientError::Closed),
        }
    }

    fn set_link(&self, link: Link) {
        self.state().link = link;
    }

    fn finish(&self, error: Option<String>) {
        self.set_link(Link::Closed);
        self.delivery().finish(error);
    }
}

fn timing(options: &ClientOptions) -> Timing {
    Timing {
        keep_alive_interval: options.keep_alive_interval,
        server_timeout: options.server_timeout,
    }
}

/// One hub call on one connection, bounded by the call timeout.
async fn call(
    shared: &Shared,
    handle: &ConnectionHandle,
    method: Method,
    arguments: Vec<Value>,
    join: Option<JoinTrack>,
) -> Result<Outcome, ClientError> {
    let invocation_id = shared.next_invocation_id.fetch_add(1, Ordering::Relaxed).to_string();
    let message = wire::invocation(invocation_id.clone(), method, arguments);
    let (reply, outcome) = oneshot::channel();
    handle.send(Call { invocation_id, message, reply, join })?;
    let timeout = shared.options.call_timeout;
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(_)) => Err(ClientError::Disconnected),
        Err(_) => Err(ClientError::Timeout { method: method.name(), timeout }),
    }
}

async fn get_history(
    shared: &Shared,
    handle: &ConnectionHandle,
    group: &str,
    before: Option<&str>,
    limit: u32,
) -> Result<Vec<Message>, ClientError> {
    let arguments = vec![group.into(), wire::optional_str(before), Value::Int(i64::from(limit))];
    let outcome = call(shared, handle, Method::GetHistory, arguments, None).await?;
    wire::messages(&wire::expect_result(Method::GetHistory, outcome)?)
}

async fn get_messages_after(
    shared: &Shared,
    handle: &ConnectionHandle,
    group: &str,
    after_id: &str,
    limit: u32,
) -> Result<Vec<Message>, ClientError> {
    let arguments = vec![group.into(), after_id.into(), Value::Int(i64::from(limit))];
    let outcome = call(shared, handle, Method::GetMessagesAfter, arguments, None).await?;
    wire::messages(&wire::expect_result(Method::GetMessagesAfter, outcome)?)
}

/// Owns the connection for the client's whole life: waits for it to end, then
/// either finishes the client or reconnects.
async fn supervise(
    shared: Arc<Shared>,
    mut driver: JoinHandle<ConnectionEnd>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let end = tokio::select! {
            end = &mut driver => end.unwrap_or_else(|e| ConnectionEnd {
                error: Some(format!("the connection task failed: {e}")),
                allow_reconnect: true,
                closed_by_client: false,
                socket_lost: false,
            }),
            // A close request, or the last handle dropped.
            _ = shutdown.changed() => {
                if let Link::Up(handle) = std::mem::replace(&mut shared.state().link, Link::Closed) {
                    handle.close();
                }
                let _ = driver.await;
                shared.finish(None);
                return;
            }
        };
        if end.closed_by_client {
            shared.finish(None);
            return;
        }
        let policy = match &shared.options.reconnect {
            Some(policy) if end.allow_reconnect => policy.clone(),
            _ => {
                shared.finish(end.error);
                return;
            }
        };
        tracing::info!(error = ?end.error, "connection lost; reconnecting");
        shared.set_link(Link::Reconnecting);
        shared.delivery().event(Event::Disconnected { error: end.error.clone() });
        match reconnect(&shared, &policy, &mut shutdown, end.error).await {
            Some(next) => {
                driver = next;
                shared.delivery().event(Event::Reconnected);
            }
            None => return,
        }
    }
}

/// Connects again with backoff and rejoins. `None` when the client finished
/// instead (attempts exhausted, or closed meanwhile).
async fn reconnect(
    shared: &Arc<Shared>,
    policy: &ReconnectPolicy,
    shutdown: &mut watch::Receiver<bool>,
    mut last_error: Option<String>,
) -> Option<JoinHandle<ConnectionEnd>> {
    let mut delays = policy.delays();
    let mut attempt = 0u32;
    loop {
        let Some(delay) = delays.next() else {
            shared.finish(last_error);
            return None;
        };
        let connected = tokio::select! {
            connected = async {
                tokio::time::sleep(delay).await;
                transport::open(&shared.options).await
            } => connected,
            _ = shutdown.changed() => {
                shared.finish(None);
                return None;
            }
        };
        attempt = attempt.saturating_add(1);
        let transport = match connected {
            Ok(transport) => transport,
            Err(e) => {
                tracing::debug!(attempt, "reconnect failed: {e}");
                last_error = Some(e.to_string());
                continue;
            }
        };
        let (handle, driver) = connection::spawn(
            transport,
            shared.protocol,
            timing(&shared.options),
            shared.delivery.clone(),
        );
        let rejoined = tokio::select! {
            rejoined = rejoin(shared, &handle) => rejoined,
            _ = shutdown.changed() => {
                handle.close();
                let _ = driver.await;
                shared.finish(None);
                return None;
            }
        };
        match rejoined {
            Ok(()) => {
                shared.set_link(Link::Up(handle));
                return Some(driver);
            }
            Err(e) => {
                tracing::debug!(attempt, "rejoining failed: {e}");
                last_error = Some(e.to_string());
                handle.close();
                let _ = driver.await;
            }
        }
    }
}

/// Joins every group joined before the connection was lost and delivers what
/// was missed in each. `Err` only when this connection is unusable too.
async fn rejoin(shared: &Shared, handle: &ConnectionHandle) -> Result<(), ClientError> {
    let groups: Vec<String> = shared.state().joined.iter().cloned().collect();
    for group in &groups {
        shared.delivery().hold(group);
    }
    for group in &groups {
        let (history, history_rx) = oneshot::channel();
        let track = JoinTrack { group: group.clone(), history: Some(history) };
        let outcome =
            call(shared, handle, Method::JoinGroup, vec![group.as_str().into()], Some(track))
                .await?;
        let joined = wire::expect_result(Method::JoinGroup, outcome)
            .and_then(|value| wire::join_result(&value));
        let failure = match joined {
            Ok(JoinResult::Joined) => {
                // The history arrives before the completion, on the same task.
                let history = history_rx.await.unwrap_or_default();
                let CatchUp { messages, complete } =
                    catch_up(shared, handle, group, history).await?;
                let mut delivery = shared.delivery();
                let missed = delivery.release(group, messages);
                delivery.event(Event::CaughtUp { group: group.clone(), missed, complete });
                continue;
            }
            Ok(JoinResult::NoRoom) => "the group is full".to_string(),
            Err(ClientError::Server(error) | ClientError::Protocol(error)) => error,
            Err(other) => return Err(other),
        };
        shared.state().joined.remove(group);
        let mut delivery = shared.delivery();
        delivery.release(group, Vec::new());
        delivery.forget(group);
        delivery.event(Event::RejoinFailed { group: group.clone(), error: failure });
    }
    Ok(())
}

/// What a group missed while the client was away, oldest first.
struct CatchUp {
    messages: Vec<Message>,
    /// False when `catch_up_max_messages` cut the fetching short.
    complete: bool,
}

/// The messages of `group` after the last one delivered: from the rejoin's
/// history when it reaches back that far, else paged forward with
/// `GetMessagesAfter` from the last id until the pages meet the history (or
/// end), then the history. Live messages are held back meanwhile and merged
/// by id in `Delivery::release`.
async fn catch_up(
    shared: &Shared,
    handle: &ConnectionHandle,
    group: &str,
    history: Vec<Message>,
) -> Result<CatchUp, ClientError> {
    let last = shared.delivery().last_id(group);
    if let Some(missed) = last.as_deref().and_then(|last| missed_since(Some(last), &history)) {
        return Ok(CatchUp { messages: missed, complete: true });
    }
    let max = shared.options.catch_up_max_messages;
    let meet = history.first().map(|m| m.id.clone());
    let mut after = last.unwrap_or_else(|| BEFORE_EVERY_ID.to_string());
    let mut fetched: Vec<Message> = Vec::new();
    let mut complete = true;
    loop {
        let room = max.saturating_sub(fetched.len());
        if room == 0 {
            complete = false;
            break;
        }
        let limit = u32::try_from(room.min(CATCH_UP_PAGE)).unwrap_or(1);
        let page = match get_messages_after(shared, handle, group, &after, limit).await {
            Ok(page) => page,
            // Refused (say by a server from before GetMessagesAfter, during
            // an upgrade): go on from the history, saying the gap was not filled.
            Err(ClientError::Server(error)) => {
                tracing::warn!(group, %error, "catching up failed; going on from the history");
                complete = false;
                break;
            }
            Err(other) => return Err(other),
        };
        let Some(newest) = page.last() else { break };
        after = newest.id.clone();
        let met = meet.as_ref().and_then(|first| page.iter().position(|m| &m.id == first));
        match met {
            Some(at) => {
                fetched.extend(page.into_iter().take(at));
                break;
            }
            None => fetched.extend(page),
        }
    }
    // The history carries the group's latest messages: those not fetched
    // follow (all of it when the pages met it or were cut short).
    let have: HashSet<&str> = fetched.iter().map(|m| m.id.as_str()).collect();
    let rest: Vec<Message> =
        history.into_iter().filter(|m| !have.contains(m.id.as_str())).collect();
    fetched.extend(rest);
    Ok(CatchUp { messages: fetched, complete })
}
