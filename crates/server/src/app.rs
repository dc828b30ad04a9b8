//! Builds the whole server from a `Config` and runs it until a shutdown signal.
//! `main` is a few lines around `App::build` and `App::run`; tests start the
//! real binary, which goes through exactly this path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backon::{BackoffBuilder, ExponentialBuilder};
use next_chat_core::{
    BackendError, ChatService, HistoryObserver, HistoryStore, HistoryWriter, LocalFanout,
    Membership, Messaging,
};
use next_chat_signalr::server::{HubConfig, HubServer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

use crate::auth::AuthConfig;
use crate::auth::Authenticator;
use crate::config::{Config, Database};
use crate::hub::ChatHub;
use crate::metrics::{HistoryMetrics, Metrics};
use crate::serve::HttpLimits;
use crate::web::WebConfig;

/// The hub's path, fixed by the contract.
pub const HUB_PATH: &str = "/next-chat";

/// How long `/readyz` waits for a backend before calling it down.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The three backends, whichever implementations the configuration chose.
pub struct Backends {
    pub messaging: Arc<dyn Messaging>,
    pub membership: Arc<dyn Membership>,
    pub history: Arc<dyn HistoryStore>,
    /// Copies into MySQL what an instance could not store (scale-out only).
    pub reconciler: Option<next_chat_storage::StreamHistoryReconciler>,
    /// What the Redis stream readers received (scale-out only).
    pub bus: Option<Arc<next_chat_storage::BusStats>>,
}

impl Backends {
    /// `observer` hears of the history reconciler's appends and refusals.
    pub async fn connect(
        config: &Config,
        fanout: &Arc<LocalFanout>,
        observer: &Arc<dyn HistoryObserver>,
    ) -> anyhow::Result<Backends> {
        crate::backends::connect(config, fanout, observer).await
    }
}

/// Connects the backends, retrying while they are unreachable for up to
/// `startup_timeout`: at a first install the database usually starts after the
/// server, and waiting is kinder than crash-looping.
async fn connect_with_retry(
    config: &Config,
    fanout: &Arc<LocalFanout>,
    observer: &Arc<dyn HistoryObserver>,
) -> anyhow::Result<Backends> {
    let deadline = Instant::now() + config.startup_timeout;
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .without_max_times()
        .build();
    loop {
        let error = match Backends::connect(config, fanout, observer).await {
            Ok(backends) => return Ok(backends),
            Err(error) => error,
        };
        match delays.next() {
            Some(delay) if Instant::now() + delay < deadline => {
                warn!(error = format!("{error:#}"), retry_in = ?delay, "backends not reachable yet");
                tokio::time::sleep(delay).await;
            }
            _ => return Err(error),
        }
    }
}

/// Applies the history database's migrations (the `migrate` subcommand).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    crate::backends::migrate(&config.database).await
}

struct Shared {
    chat: Arc<ChatService>,
    metrics: Arc<Metrics>,
    /// False once shutdown has begun, so load balancers stop sending new clients.
    accepting: AtomicBool,
}

pub struct App {
    config: Config,
    listener: TcpListener,
    router: Router,
    http: HttpLimits,
    tls: Option<TlsAcceptor>,
    hub: Arc<HubServer<ChatHub>>,
    shared: Arc<Shared>,
    reconciler: Option<next_chat_storage::StreamHistoryReconciler>,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::new());
        let fanout = Arc::new(LocalFanout::new());
        let observer: Arc<dyn HistoryObserver> = Arc::new(HistoryMetrics(Arc::clone(&metrics)));
        let backends = connect_with_retry(&config, &fanout, &observer).await?;
        let history =
            HistoryWriter::start(Arc::clone(&backends.history), config.history.clone(), observer);
        let reconciler = backends.reconciler;
        if let Some(bus) = backends.bus {
            metrics.observe_bus(bus);
        }
        let chat = Arc::new(ChatService::new(
            config.chat.clone(),
            backends.messaging,
            backends.membership,
            history,
            fanout,
        ));
        let hub_config = HubConfig {
            keep_alive_interval: config.keep_alive,
            client_timeout: config.client_timeout,
            max_message_size: config.max_message_size,
            // Stock clients batch records; each record is held to the limit.
            max_batch_size: config.max_message_size.saturating_mul(8),
            outbound_queue_capacity: config.outbound_queue,
            outbound_queue_bytes: config.outbound_queue_bytes,
            max_queued_invocations: config.max_queued_invocations,
            max_queued_invocation_bytes: config.max_queued_invocation_bytes,
            invocations_per_second: config.invocations_per_second,
            invocation_burst: config.invocation_burst,
            max_connections: Some(config.max_connections),
            max_connections_per_user: Some(config.max_connections_per_user),
            max_connections_per_ip: config.max_connections_per_ip,
            max_pending_negotiations: Some(config.max_pending_negotiations),
            max_pending_negotiations_per_user: Some(config.max_pending_negotiations_per_user),
            long_poll_max_response_bytes: config.long_poll_max_response_bytes,
            stateful_reconnect: config.stateful_reconnect,
            stateful_reconnect_buffer_bytes: config.stateful_reconnect_buffer_bytes,
            stateful_reconnect_window: config.stateful_reconnect_window,
            ..HubConfig::default()
        };
        let authenticator = Authenticator::start(&config.auth).await?;
        // Header mode answers loopback clients only, unless opted in.
        let loopback_only =
            matches!(authenticator, Authenticator::Header) && !config.allow_remote_header_auth;
        if matches!(authenticator, Authenticator::Header) && !config.listen.ip().is_loopback() {
            if loopback_only {
                warn!(
                    listen = %config.listen,
                    "auth is header: answering clients on loopback only (others get 403); use \
                     --auth jwt, or allow_remote_header_auth behind an authenticating proxy"
                );
            } else {
                warn!(
                    listen = %config.listen,
                    "auth is header and allow_remote_header_auth is on: the Authorization header \
                     (or access_token) is trusted as the user id, so any client that reaches \
                     this address can be any user; only a proxy that authenticates should"
                );
            }
        }
        let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let hub = Arc::new(HubServer::new(
            Arc::new(ChatHub::new(Arc::clone(&chat), Arc::clone(&metrics), authenticator)),
            hub_config,
        ));
        let remote_refused = metrics.remote_header_auth_refused.clone();
        let unauthenticated_refused = metrics.unauthenticated_connections_refused.clone();
        let shared = Arc::new(Shared { chat, metrics, accepting: AtomicBool::new(true) });
        let protect = |router: Router| {
            if loopback_only {
                crate::auth::protected::loopback_only(router, remote_refused.clone())
            } else {
                router
            }
        };
        let mut router = protect(hub.router(HUB_PATH)).merge(
            Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics_text))
                .with_state(Arc::clone(&shared)),
        );
        if config.web_page {
            let (auth, user_claim) = match &config.auth {
                AuthConfig::Header => ("header", "sub".to_string()),
                AuthConfig::Jwt(jwt) => ("jwt", jwt.user_claim.clone()),
            };
            router = router.merge(protect(crate::web::router(WebConfig {
                auth,
                user_claim,
                max_text_chars: config.chat.limits.text_max_chars,
                max_members: config.chat.max_members,
            })));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?;
        let http = http_limits(&config, unauthenticated_refused);
        Ok(App { config, listener, router, http, tls, hub, shared, reconciler })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// `http://ADDR`, or `https://ADDR` when the server serves TLS.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr())
    }

    /// Serves until `shutdown` resolves, then closes every connection with
    /// Close(allowReconnect), stores the history still queued and returns,
    /// all within the configured shutdown timeout.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App { config, listener, router, http, tls, hub, shared, reconciler } = self;
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = crate::serve::serve(listener, router, http, tls, async move {
            let _ = http_stopped.await;
        });
        let mut server = tokio::spawn(server);

        tokio::select! {
            () = shutdown => {}
            result = &mut server => {
                result.context("http server task")?;
                anyhow::bail!("the HTTP server stopped by itself");
            }
        }
        let started = Instant::now();
        let deadline = started + config.shutdown_timeout;
        info!(connections = hub.connection_count(), "shutting down");
        shared.accepting.store(false, Ordering::SeqCst);
        let _ = stop_http.send(());

        // A third of the time for clients to take what is queued for them, the
        // rest for history; whatever is left bounds the HTTP server's own exit.
        hub.shutdown(config.shutdown_timeout / 3).await;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(Duration::from_millis(500));
        let unsaved = shared.chat.flush_history(left).await;
        if unsaved > 0 {
            error!(unsaved, "shutdown timeout reached with messages not yet stored in history");
        }
        if let Some(reconciler) = &reconciler {
            reconciler.shutdown();
        }
        shared.chat.messaging().shutdown().await;
        shared.chat.membership().shutdown().await;
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, server).await.is_err() {
            warn!("some HTTP connections were still open at the shutdown deadline");
        }
        info!(took = ?started.elapsed(), "stopped");
        Ok(())
    }
}

/// The HTTP bounds; the TCP connection cap defaults to what the open-file
/// limit allows.
fn http_limits(config: &Config, unauthenticated_refused: Counter) -> HttpLimits {
    let default_cap = crate::serve::default_max_connections();
    let max_connections = match config.max_http_connections {
        Some(cap) => {
            if cap > default_cap {
                warn!(
                    max_http_connections = cap,
                    open_file_limit = crate::serve::open_file_limit(),
                    "max_http_connections is above what the open-file limit leaves; \
                     accepting may fail for want of file descriptors before the cap is reached"
                );
            }
            cap
        }
        None => default_cap,
    };
    info!(
        max_http_connections = max_connections,
        max_unauthenticated_connections_per_ip = config.max_unauthenticated_connections_per_ip,
        http_header_timeout = ?config.http_header_timeout,
        "HTTP limits"
    );
    HttpLimits {
        header_timeout: config.http_header_timeout,
        max_head_bytes: config.http_max_head_bytes,
        max_connections,
        max_unauthenticated_per_ip: config.max_unauthenticated_connections_per_ip,
        unauthenticated_refused,
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.accepting.load(Ordering::SeqCst) {
        return unavailable("server", "shutting down".into());
    }
    let chat = &shared.chat;
    let (messaging, membership, history) = tokio::join!(
        checked("messaging", chat.messaging().check()),
        checked("membership", chat.membership().check()),
        checked("history", chat.history().store().check()),
    );
    for result in [messaging, membership, history] {
        if let Err((backend, detail)) = result {
            return unavailable(backend, detail);
        }
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"status\":\"ready\"}\n")
        .into_response()
}

/// A backend's check, bounded in time; the error names the backend.
async fn checked(
    name: &'static str,
    check: impl Future<Output = Result<(), BackendError>>,
) -> Result<(), (&'static str, String)> {
    match tokio::time::timeout(READY_CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err((e.backend, e.detail)),
        Err(_) => Err((name, format!("no answer within {READY_CHECK_TIMEOUT:?}"))),
    }
}

fn unavailable(backend: &str, detail: String) -> Response {
    let body = serde_json::json!({ "status": "unavailable", "backend": backend, "detail": detail });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let unsaved = shared.chat.history().unsaved_len();
    shared.metrics.history_unsaved.set(i64::try_from(unsaved).unwrap_or(i64::MAX));
    let unsaved_bytes = shared.chat.history().unsaved_bytes();
    shared.metrics.history_unsaved_bytes.set(i64::try_from(unsaved_bytes).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        shared.metrics.render(),
    )
        .into_response()
}

/// What `main` logs about the configuration at start (no passwords).
pub fn describe(config: &Config) -> String {
    let history = match &config.database {
        Database::Sqlite(_) => "sqlite",
        Database::MySql(_) => "mysql",
    };
    let messaging = if config.redis.is_some() { "redis" } else { "in-process" };
    let auth = match &config.auth {
        crate::auth::AuthConfig::Header => "header".to_owned(),
        crate::auth::AuthConfig::Jwt(jwt) => format!("jwt ({:?})", jwt.keys),
    };
    let tls = if config.tls.is_some() { "on" } else { "off" };
    format!(
        "history={history} ({}), messaging and membership={messaging}, auth={auth}, tls={tls}",
        config.database.redacted()
    )
}
