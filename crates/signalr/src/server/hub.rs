//! What the server serves: the [`Hub`] trait an application implements, the
//! identity it vouches for, and what an invocation returns.

use std::future::Future;
use std::time::SystemTime;

use futures_util::future::BoxFuture;

use super::connection::Connection;
use crate::value::Value;

/// What a SignalR server serves: identity, connection lifetime and invocations.
pub trait Hub: Send + Sync + 'static {
    /// Per-connection state, created by [`Hub::connected`].
    type Session: Send + Sync + 'static;

    /// Maps a credential to a user. The token is the `Authorization` header value
    /// with a leading `Bearer ` removed, else the `access_token` query parameter (the
    /// header wins). `Err` answers 401 with the reason (and its challenge, if any).
    /// Called on negotiate and on every transport request.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Identity, Refused>> + Send;

    /// The refusal (401) of a request that carries no credential at all.
    fn unauthenticated(&self) -> Refused {
        Refused::from(
            "no identity: send an Authorization header or an access_token query parameter"
                .to_owned(),
        )
    }

    /// A connection completed its handshake. `Err` closes it with that error.
    fn connected(
        &self,
        connection: Connection,
    ) -> impl Future<Output = Result<Self::Session, String>> + Send;

    /// One invocation, `target` exactly as received. Invocations of one connection
    /// start one at a time, in order: the next starts when this future resolves.
    /// See [`Invoked`] for how it completes.
    fn invoke(
        &self,
        session: &Self::Session,
        target: &str,
        arguments: Vec<Value>,
    ) -> impl Future<Output = Invoked> + Send;

    /// Stateful reconnect: a new socket took the connection over after its socket
    /// dropped; nothing was lost. Called from the connection's session task.
    fn resumed(&self, _session: &Self::Session) {}

    /// The connection is gone; called exactly once for every successful `connected`.
    fn disconnected(&self, session: Self::Session) -> impl Future<Output = ()> + Send;
}

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// When the credential stops being valid. A connection started with it is
    /// closed then, with an error saying so and `allowReconnect: true`, so that a
    /// stock client reconnects with a fresh one.
    pub expires_at: Option<SystemTime>,
}

impl From<String> for Identity {
    /// A credential that does not expire.
    fn from(user: String) -> Self {
        Identity { user, expires_at: None }
    }
}

/// Why a credential was refused: answered 401 with `reason` as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    /// The `WWW-Authenticate` header value, e.g. `Bearer error="invalid_token"`.
    pub challenge: Option<String>,
}

impl From<String> for Refused {
    fn from(reason: String) -> Self {
        Refused { reason, challenge: None }
    }
}

/// What an invocation returns. A result is `Ok(None)` to complete without a
/// value, `Ok(Some(value))`, or `Err(text)` to complete with that error.
pub enum Invoked {
    /// Completes now with this result.
    Done(Result<Option<Value>, String>),
    /// The part that must happen in order is done (say, a message is accepted and
    /// delivered); what is left (say, waiting for it to be stored) runs while the
    /// connection's next invocations start. The completion is sent when the future
    /// resolves. Completions still go out in invocation order, so a client sees
    /// them as if the calls had run one after another.
    Finishing(BoxFuture<'static, Result<Option<Value>, String>>),
}

impl From<Result<Option<Value>, String>> for Invoked {
    fn from(result: Result<Option<Value>, String>) -> Self {
        Invoked::Done(result)
    }
}
