//! The HTTP endpoints: negotiate, and `GET`/`POST`/`DELETE` on the hub path, which
//! identify the caller, find its negotiated connection and hand over to the
//! transport. Every refusal is mapped to its HTTP status here and nowhere else.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::connection::{CloseRequest, Connection};
use super::hub::{Hub, Identity, Refused};
use super::inbound::{Inbound, too_large};
use super::long_polling::{self, PollState};
use super::registry::{Admission, LimitReached, Negotiated, NegotiatedState, Resumable};
use super::session::{self, Liveness};
use super::state::ServerState;
use super::{sse, websocket};
use crate::negotiate::{NegotiateResponse, Transport, answer_version, new_random_id};

/// POST bodies waiting for the session; a small bound gives back-pressure.
const INBOUND_CAPACITY: usize = 4;

type Params = Query<Vec<(String, String)>>;

/// A refusal, turned into a response in one place.
enum Refusal {
    Unauthorized(Refused),
    Forbidden,
    MissingId,
    UnknownConnection,
    Conflict,
    ChangedTransport,
    TransportDisabled(Transport),
    ShuttingDown,
    NotStarted,
    PostOnWebSocket,
    DeleteNotLongPolling,
    PostInProgress,
    Limit(LimitReached),
}

impl From<LimitReached> for Refusal {
    fn from(limit: LimitReached) -> Self {
        Refusal::Limit(limit)
    }
}

/// A reached cap as a status and a text naming the setting: 503 when the server
/// as a whole is full (another instance, or later, may do), 429 when it is this
/// user's or address's own share.
fn limit_refusal(limit: LimitReached) -> (StatusCode, String) {
    match limit {
        LimitReached::Connections(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server has as many connections open as it allows (max_connections = {n}); try again later"
            ),
        ),
        LimitReached::ConnectionsPerUser(n) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this user has as many connections open as one user may (max_connections_per_user = {n}); close one first"
            ),
        ),
        LimitReached::ConnectionsPerIp(n) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this address has as many connections open as one address may (max_connections_per_ip = {n}); close one first"
            ),
        ),
        LimitReached::PendingNegotiations(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server holds as many negotiated connections not yet started as it allows (max_pending_negotiations = {n}); try again shortly"
            ),
        ),
        LimitReached::PendingNegotiationsPerUser(n) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this user has as many negotiated connections not yet started as one user may (max_pending_negotiations_per_user = {n}); start them or wait until they expire"
            ),
        ),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Refusal::Unauthorized(Refused { reason, challenge: Some(challenge) }) => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [
                        (header::CONTENT_TYPE, "text/plain".to_owned()),
                        (header::WWW_AUTHENTICATE, challenge),
                    ],
                    reason,
                )
                    .into_response();
            }
            Refusal::Unauthorized(Refused { reason, challenge: None }) => {
                (StatusCode::UNAUTHORIZED, reason)
            }
            Refusal::Forbidden => {
                (StatusCode::FORBIDDEN, "this connection was negotiated by another user".to_owned())
            }
            Refusal::MissingId => (StatusCode::BAD_REQUEST, "Connection ID required".to_owned()),
            Refusal::UnknownConnection => {
                (StatusCode::NOT_FOUND, "No Connection with that ID".to_owned())
            }
            Refusal::Conflict => (
                StatusCode::CONFLICT,
                "the connection already has a request of this transport in progress".to_owned(),
            ),
            Refusal::ChangedTransport => {
                (StatusCode::BAD_REQUEST, "Cannot change transports mid-connection".to_owned())
            }
            Refusal::TransportDisabled(transport) => (
                StatusCode::NOT_FOUND,
                format!("{transport} transport not supported by this end point type"),
            ),
            Refusal::ShuttingDown => {
                (StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down".to_owned())
            }
            Refusal::NotStarted => (
                StatusCode::BAD_REQUEST,
                "the connection has not started a transport yet".to_owned(),
            ),
            Refusal::PostOnWebSocket => (
                StatusCode::METHOD_NOT_ALLOWED,
                "POST requests are not allowed for WebSocket connections.".to_owned(),
            ),
            Refusal::DeleteNotLongPolling => (
                StatusCode::BAD_REQUEST,
                "Cannot terminate this connection using the DELETE endpoint.".to_owned(),
            ),
            Refusal::PostInProgress => (
                StatusCode::CONFLICT,
                "another POST to this connection is still in progress: send one at a time"
                    .to_owned(),
            ),
            Refusal::Limit(limit) => limit_refusal(limit),
        };
        (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

/// The credential: the `Authorization` header (less a leading `Bearer `), else the
/// `access_token` query parameter.
fn credential<'a>(headers: &'a HeaderMap, params: &'a [(String, String)]) -> Option<&'a str> {
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = std::str::from_utf8(value.as_bytes())
    {
        return Some(value.strip_prefix("Bearer ").unwrap_or(value));
    }
    param(params, "access_token")
}

async fn identify<H: Hub>(
    server: &ServerState<H>,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Identity, Refusal> {
    let token = credential(headers, params)
        .ok_or_else(|| Refusal::Unauthorized(server.hub.unauthenticated()))?;
    server.hub.authenticate(token).await.map_err(|refused| {
        debug!(reason = %refused.reason, "credential refused");
        Refusal::Unauthorized(refused)
    })
}

/// The client's address, when the server was started with it (axum's
/// `ConnectInfo`); without it the per-address cap does not apply.
fn client_ip(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// The negotiated connection `?id=` names, if `user` negotiated it.
fn find<H: Hub>(
    server: &ServerState<H>,
    params: &[(String, String)],
    user: &str,
) -> Result<Arc<Negotiated>, Refusal> {
    let token = param(params, "id").filter(|id| !id.is_empty()).ok_or(Refusal::MissingId)?;
    let negotiated = server.registry.negotiated(token).ok_or(Refusal::UnknownConnection)?;
    if negotiated.user != user {
        warn!(
            connection_id = %negotiated.connection_id,
            negotiated_by = %negotiated.user,
            requested_by = %user,
            "transport request by another user refused"
        );
        return Err(Refusal::Forbidden);
    }
    Ok(negotiated)
}

/// During shutdown no connection starts; existing ones may still poll and post so
/// that they receive their Close message.
fn ensure_not_shutting_down<H: Hub>(server: &ServerState<H>) -> Result<(), Refusal> {
    if server.registry.is_shutting_down() { Err(Refusal::ShuttingDown) } else { Ok(()) }
}

fn ensure_enabled<H: Hub>(server: &ServerState<H>, transport: Transport) -> Result<(), Refusal> {
    if server.config.transports.contains(&transport) {
        Ok(())
    } else {
        Err(Refusal::TransportDisabled(transport))
    }
}

/// `POST {path}/negotiate`
pub(crate) async fn negotiate<H: Hub>(
    State(server): State<Arc<ServerState<H>>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = ensure_not_shutting_down(&server) {
        return refusal.into_response();
    }
    let user = match identify(&server, &headers, &params).await {
        Ok(identity) => identity.user,
        Err(refusal) => return refusal.into_response(),
    };
    let body = match answer_version(param(&params, "negotiateVersion")) {
        Err(error) => NegotiateResponse::error(error),
        Ok(version) => {
            // A user at the connection cap could not start the connection anyway:
            // say so now rather than after the transport request.
            let slot = match server
                .registry
                .check_room(&user, None)
                .and_then(|()| server.registry.reserve_pending(&user))
            {
                Ok(slot) => slot,
                Err(limit) => {
                    debug!(%user, ?limit, "negotiate refused at a cap");
                    return Refusal::Limit(limit).into_response();
                }
            };
            let connection_id = new_random_id();
            let token = if version >= 1 { new_random_id() } else { connection_id.clone() };
            let transports = &server.config.transports;
            let mut body = if version >= 1 {
                NegotiateResponse::v1(connection_id.clone(), token.clone(), transports)
            } else {
                NegotiateResponse::v0(connection_id.clone(), transports)
            };
            // Only when asked: a client that did not ask refuses the answer.
            let stateful = server.config.stateful_reconnect
                && transports.contains(&Transport::WebSockets)
                && param(&params, "useStatefulReconnect")
                    .is_some_and(|value| value.eq_ignore_ascii_case("true"));
            if stateful {
                body.use_stateful_reconnect = Some(true);
            }
            debug!(%connection_id, %user, version, "negotiated");
            server.registry.add_negotiated(
                Negotiated {
                    connection_id,
                    token,
                    user,
                    state: parking_lot::Mutex::new(NegotiatedState::Pending { _slot: slot }),
                    stateful,
                    posting: std::sync::atomic::AtomicBool::new(false),
                },
                server.config.negotiate_timeout,
            );
            body
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], body.to_json()).into_response()
}

/// `GET {path}`: a WebSocket upgrade, an SSE stream, or a long poll.
pub(crate) async fn connect<H: Hub>(
    State(server): State<Arc<ServerState<H>>>,
    Query(params): Params,
    request: Request,
) -> Response {
    let headers = request.headers();
    let identity = match identify(&server, headers, &params).await {
        Ok(identity) => identity,
        Err(refusal) => return refusal.into_response(),
    };
    let ip = client_ip(&request);
    let result = if is_websocket(headers) {
        connect_websocket(server, params, identity, ip, request).await
    } else if accepts_event_stream(headers) {
        connect_sse(server, &params, identity, ip)
    } else {
        long_poll(server, &params, identity, ip).await
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

async fn connect_websocket<H: Hub>(
    server: Arc<ServerState<H>>,
    params: Vec<(String, String)>,
    identity: Identity,
    ip: Option<IpAddr>,
    request: Request,
) -> Result<Response, Refusal> {
    let Identity { user, expires_at } = identity;
    ensure_enabled(&server, Transport::WebSockets)?;
    ensure_not_shutting_down(&server)?;
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let negotiated =
        if param(&params, "id").is_some() { Some(find(&server, &params, &user)?) } else { None };
    if let Some(handover) = negotiated.as_deref().and_then(resumable) {
        return Ok(websocket::resume(server, upgrade, handover));
    }
    let admission = admit(&server, &user, ip)?;
    let connection_id = match &negotiated {
        Some(negotiated) => {
            activate(negotiated, Transport::WebSockets, || NegotiatedState::WebSockets {
                handover: None,
            })?;
            negotiated.connection_id.clone()
        }
        // skipNegotiation: the connection starts here.
        None => new_random_id(),
    };
    let started = websocket::Started { connection_id, user, expires_at, negotiated, admission };
    Ok(websocket::upgrade(server, upgrade, started))
}

/// The connection's handover when a new WebSocket may take it over (stateful
/// reconnect).
fn resumable(negotiated: &Negotiated) -> Option<Arc<dyn Resumable>> {
    match &*negotiated.state.lock() {
        NegotiatedState::WebSockets { handover: Some(handover) } if handover.accepts() => {
            Some(handover.clone())
        }
        _ => None,
    }
}

/// A place under the connection caps, taken before the transport starts so that
/// the client gets an HTTP status, not a connection that closes at once.
fn admit<H: Hub>(
    server: &Arc<ServerState<H>>,
    user: &str,
    ip: Option<IpAddr>,
) -> Result<Admission, Refusal> {
    server.registry.admit(user, ip).map_err(|limit| {
        debug!(%user, ?ip, ?limit, "connection refused at a cap");
        Refusal::Limit(limit)
    })
}

/// Binds a pending negotiated connection to `transport`.
fn activate(
    negotiated: &Negotiated,
    transport: Transport,
    state: impl FnOnce() -> NegotiatedState,
) -> Result<(), Refusal> {
    let mut current = negotiated.state.lock();
    match current.transport() {
        None => {
            *current = state();
            Ok(())
        }
        Some(active) if active == transport => Err(Refusal::Conflict),
        Some(_) => Err(Refusal::ChangedTransport),
    }
}

/// The session's inbound stream for transports whose client sends by POST.
fn posted_bodies(rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Inbound> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|body| (Inbound::Data(body), rx))
    })
}

fn connect_sse<H: Hub>(
    server: Arc<ServerState<H>>,
    params: &[(String, String)],
    identity: Identity,
    ip: Option<IpAddr>,
) -> Result<Response, Refusal> {
    let Identity { user, expires_at } = identity;
    ensure_enabled(&server, Transport::ServerSentEvents)?;
    ensure_not_shutting_down(&server)?;
    let negotiated = find(&server, params, &user)?;
    // A refused activation below drops the admission, giving the place back.
    let admission = admit(&server, &user, ip)?;
    let config = &server.config;
    let (connection, outbound) = Connection::new(
        negotiated.connection_id.clone(),
        user,
        Transport::ServerSentEvents,
        config,
        Some(config.keep_alive_interval),
    );
    let (inbound, rx) = mpsc::channel(INBOUND_CAPACITY);
    activate(&negotiated, Transport::ServerSentEvents, || NegotiatedState::ServerSentEvents {
        inbound,
        connection: connection.clone(),
    })?;
    let live = server.registry.register_live(&connection, admission);
    let response = sse::response(outbound, live.clone());
    let liveness = Liveness::ClientTimeout(config.client_timeout);
    tokio::spawn(async move {
        session::run(
            server.clone(),
            connection,
            posted_bodies(rx),
            liveness,
            live,
            expires_at,
            None,
        )
        .await;
        server.registry.remove_negotiated(&negotiated.token);
    });
    Ok(response)
}

async fn long_poll<H: Hub>(
    server: Arc<ServerState<H>>,
    params: &[(String, String)],
    identity: Identity,
    ip: Option<IpAddr>,
) -> Result<Response, Refusal> {
    let Identity { user, expires_at } = identity;
    ensure_enabled(&server, Transport::LongPolling)?;
    let negotiated = find(&server, params, &user)?;
    let existing = match &*negotiated.state.lock() {
        NegotiatedState::LongPolling { polls, .. } => Some(polls.clone()),
        NegotiatedState::Pending { .. } => None,
        _ => return Err(Refusal::ChangedTransport),
    };
    let config = &server.config;
    if let Some(polls) = existing {
        let (timeout, max_bytes) = (config.long_poll_timeout, config.long_poll_max_response_bytes);
        return Ok(polls.poll(timeout, max_bytes).await);
    }
    ensure_not_shutting_down(&server)?;
    let admission = admit(&server, &user, ip)?;
    let (connection, outbound) = Connection::new(
        negotiated.connection_id.clone(),
        user,
        Transport::LongPolling,
        config,
        None,
    );
    let polls = Arc::new(PollState::new(outbound));
    let (inbound, rx) = mpsc::channel(INBOUND_CAPACITY);
    activate(&negotiated, Transport::LongPolling, || NegotiatedState::LongPolling {
        inbound,
        connection: connection.clone(),
        polls: polls.clone(),
    })?;
    let live = server.registry.register_live(&connection, admission);
    let disconnect_timeout = config.long_poll_disconnect_timeout;
    let liveness = Liveness::Polling(polls.clone(), disconnect_timeout);
    tokio::spawn(async move {
        let inbound = posted_bodies(rx);
        session::run(
            server.clone(),
            connection.clone(),
            inbound,
            liveness,
            live.clone(),
            expires_at,
            None,
        )
        .await;
        // Let the client fetch what is left (the Close message); the connection is
        // no longer live once it has. Its id is kept until a poll has been told 204
        // (as ASP.NET does), so one more poll ends cleanly rather than with 404.
        let undelivered = connection
            .close_request()
            .is_none_or(|request| request.send_close_message || request.drain);
        if undelivered {
            polls.wait_delivered(disconnect_timeout).await;
        }
        drop(live);
        if undelivered {
            polls.wait_finished(disconnect_timeout).await;
        }
        server.registry.remove_negotiated(&negotiated.token);
    });
    Ok(long_polling::started())
}

/// `POST {path}?id=`: the client's messages over SSE or long polling.
pub(crate) async fn send<H: Hub>(
    State(server): State<Arc<ServerState<H>>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let user = identify(&server, &headers, &params).await?.user;
        let negotiated = find(&server, &params, &user)?;
        let (inbound, connection) = match &*negotiated.state.lock() {
            NegotiatedState::Pending { .. } => return Err(Refusal::NotStarted),
            NegotiatedState::WebSockets { .. } => return Err(Refusal::PostOnWebSocket),
            NegotiatedState::ServerSentEvents { inbound, connection }
            | NegotiatedState::LongPolling { inbound, connection, .. } => {
                (inbound.clone(), connection.clone())
            }
        };
        // One POST at a time, so a connection holds at most one body being read
        // (plus the few queued for the session), however many requests its
        // client opens. Stock clients never overlap their sends.
        let _posting = PostingGuard::take(&negotiated).ok_or(Refusal::PostInProgress)?;
        let limit = server.config.max_batch_size;
        let body = match read_body(body, limit).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                let error = too_large(None, limit);
                warn!(connection_id = %connection.id(), %error, "incoming message too large");
                connection.request_close(CloseRequest::with_error(error.clone()));
                return Ok((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    [(header::CONTENT_TYPE, "text/plain")],
                    error,
                )
                    .into_response());
            }
            // The client broke off (or its body was malformed): nothing of it
            // reached the session, which goes on; as ASP.NET Core, 400.
            Err(BodyError::Unreadable) => {
                debug!(connection_id = %connection.id(), "a POST body could not be read");
                return Ok((
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, "text/plain")],
                    "the request body could not be read",
                )
                    .into_response());
            }
        };
        if inbound.send(body).await.is_err() {
            return Err(Refusal::UnknownConnection);
        }
        Ok(([(header::CONTENT_TYPE, "text/plain")], "").into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Marks a POST to one connection as in progress until dropped, however the
/// request ends (the client may go away while its body is read).
struct PostingGuard(Arc<Negotiated>);

impl PostingGuard {
    fn take(negotiated: &Arc<Negotiated>) -> Option<PostingGuard> {
        let busy = negotiated.posting.swap(true, Ordering::AcqRel);
        (!busy).then(|| PostingGuard(negotiated.clone()))
    }
}

impl Drop for PostingGuard {
    fn drop(&mut self) {
        self.0.posting.store(false, Ordering::Release);
    }
}

/// Why a POST body was not taken.
enum BodyError {
    TooLarge,
    Unreadable,
}

/// The whole body, unless it exceeds `limit` or cannot be read (the client
/// broke off).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut collected: Vec<u8> = Vec::new();
    let mut first: Option<Bytes> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        let size = first.as_ref().map_or(0, Bytes::len) + collected.len() + chunk.len();
        if size > limit {
            return Err(BodyError::TooLarge);
        }
        match first.take() {
            // The common case, one chunk: no copy.
            None if collected.is_empty() => first = Some(chunk),
            Some(previous) => {
                collected.extend_from_slice(&previous);
                collected.extend_from_slice(&chunk);
            }
            None => collected.extend_from_slice(&chunk),
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(collected)))
}

/// `DELETE {path}?id=`: a long-polling client stops.
pub(crate) async fn delete<H: Hub>(
    State(server): State<Arc<ServerState<H>>>,
    Query(params): Params,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let user = identify(&server, &headers, &params).await?.user;
        let negotiated = find(&server, &params, &user)?;
        match &*negotiated.state.lock() {
            NegotiatedState::LongPolling { connection, .. } => {
                connection.request_close(CloseRequest::peer_gone(
                    "the client ended long polling (DELETE)",
                ));
                Ok((StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "text/plain")], "")
                    .into_response())
            }
            _ => Err(Refusal::DeleteNotLongPolling),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("valid header value"));
        }
        map
    }

    #[test]
    fn header_wins_over_query_and_loses_one_bearer() {
        let query = vec![("access_token".to_owned(), "bob".to_owned())];
        assert_eq!(credential(&headers(&[("authorization", "alice")]), &query), Some("alice"));
        assert_eq!(credential(&headers(&[("authorization", "Bearer alice")]), &[]), Some("alice"));
        assert_eq!(
            credential(&headers(&[("authorization", "Bearer Bearer x")]), &[]),
            Some("Bearer x")
        );
        assert_eq!(credential(&HeaderMap::new(), &query), Some("bob"));
        assert_eq!(credential(&HeaderMap::new(), &[]), None);
    }

    #[test]
    fn recognises_event_stream_requests() {
        assert!(accepts_event_stream(&headers(&[("accept", "text/event-stream")])));
        assert!(accepts_event_stream(&headers(&[(
            "accept",
            "text/html, text/event-stream;q=0.9"
        )])));
        assert!(!accepts_event_stream(&headers(&[("accept", "*/*")])));
    }
}
