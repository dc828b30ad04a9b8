//! Protected mode, as Redis has it: with `auth: header` the credential *is* the
//! user id, so anyone who can reach the server can be anyone. Unless the
//! operator opts in (`allow_remote_header_auth`, for a proxy that authenticates
//! its users and sets the header), the hub and the web page then answer only
//! clients on loopback addresses; every other client gets 403 with a body that
//! says how to let it in. `/healthz`, `/readyz` and `/metrics` carry no identity
//! and stay open to probes and scrapers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use tracing::debug;

/// What a refused client reads: the reason, and both ways out.
pub const REFUSAL: &str = "this server runs with auth: header, which takes the Authorization \
header (or access_token) as the user id, so that anyone could be anyone: it answers only \
clients on its own machine (loopback). To let others in, sign their tokens and start it with \
--auth jwt (NEXT_CHAT_AUTH=jwt); or, behind a proxy that authenticates its users and sets the \
header, set allow_remote_header_auth: true (NEXT_CHAT_ALLOW_REMOTE_HEADER_AUTH=true).\n";

/// `router` answering loopback clients only; `refused` counts the others.
pub fn loopback_only(router: Router, refused: Counter) -> Router {
    router.layer(axum::middleware::from_fn_with_state(Arc::new(refused), refuse_remote))
}

async fn refuse_remote(
    State(refused): State<Arc<Counter>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0);
    // Without the client's address (never the case behind `serve`) nothing
    // proves the client local: refused too.
    if peer.is_some_and(|peer| peer.ip().to_canonical().is_loopback()) {
        return next.run(request).await;
    }
    refused.inc();
    debug!(?peer, path = %request.uri().path(), "auth is header: a client off loopback refused");
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], REFUSAL)
        .into_response()
}
