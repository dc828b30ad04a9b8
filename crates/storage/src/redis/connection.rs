//! Connections to one Redis or to a Redis Cluster, behind one type, and the
//! command wrapper every backend call goes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use next_chat_core::BackendError;

use super::{BACKEND, RedisConfig};
use crate::health::Health;

/// A connection for commands: to one Redis, or to a cluster (the `redis`
/// crate routes each command to the master of its key's slot, follows
/// `MOVED`/`ASK` and finds the new master after a failover).
#[derive(Clone)]
pub(crate) enum Connection {
    /// Reconnects on its own, for ordinary commands.
    Managed(Managed),
    /// One connection of its own, for a blocking read.
    Multiplexed(::redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Managed(c) => c.req_packed_command(cmd),
            Connection::Multiplexed(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Managed(c) => c.get_db(),
            Connection::Multiplexed(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

fn client(config: &RedisConfig) -> Result<Client, BackendError> {
    Client::open(config.url.as_str()).map_err(|e| {
        BackendError::new(
            BACKEND,
            format!(
                "bad url '{}': {}",
                crate::backend_url::redact_url(&config.url),
                crate::backend_url::redact_in(&e.to_string(), &config.url)
            ),
        )
    })
}

async fn cluster(
    config: &RedisConfig,
    response_timeout: Duration,
) -> Result<Connection, BackendError> {
    let cluster = ClusterClientBuilder::new(config.urls())
        .connection_timeout(config.connect_timeout)
        .response_timeout(response_timeout)
        // Retries (MOVED, ASK, TRYAGAIN, a master gone) stay within the
        // caller's timeout, which `run` enforces.
        .retries(4)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()
        .map_err(|e| {
            BackendError::new(
                BACKEND,
                format!(
                    "bad url '{}': {}",
                    crate::backend_url::redact_url(&config.url),
                    crate::backend_url::redact_in(&e.to_string(), &config.url)
                ),
            )
        })?;
    cluster.get_async_connection().await.map(Connection::Cluster).map_err(|e| {
        let error = crate::backend_url::redact_in(&e.to_string(), &config.url);
        BackendError::new(BACKEND, format!("cannot connect to the cluster: {error}"))
    })
}

/// Fails after `connect_timeout + command_timeout` rather than hanging.
async fn within(
    config: &RedisConfig,
    connecting: impl std::future::Future<Output = Result<Connection, BackendError>>,
) -> Result<Connection, BackendError> {
    match tokio::time::timeout(config.connect_timeout + config.command_timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::new(BACKEND, "cannot connect: timed out")),
    }
}

/// A self-healing connection for ordinary commands. Reconnection is tried
/// once per failed command, so a command fails fast while Redis is away.
pub(crate) async fn commands(config: &RedisConfig) -> Result<Connection, BackendError> {
    if config.cluster {
        return within(config, cluster(config, config.command_timeout)).await;
    }
    let client = client(config)?;
    let manager = manager(config, &client).await?;
    Ok(Connection::Managed(Managed {
        inner: Arc::new(ManagedInner {
            config: config.clone(),
            client,
            current: parking_lot::Mutex::new(manager),
            replacing: AtomicBool::new(false),
        }),
    }))
}

async fn manager(config: &RedisConfig, client: &Client) -> Result<ConnectionManager, BackendError> {
    let options = ConnectionManagerConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.command_timeout)
        .set_number_of_retries(1)
        .set_max_delay(100);
    let connecting = client.get_connection_manager_with_config(options);
    match tokio::time::timeout(config.connect_timeout + config.command_timeout, connecting).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(e)) => {
            let error = crate::backend_url::redact_in(&e.to_string(), &config.url);
            Err(BackendError::new(BACKEND, format!("cannot connect: {error}")))
        }
        Err(_) => Err(BackendError::new(BACKEND, "cannot connect: timed out")),
    }
}

/// The `redis` crate's `ConnectionManager` reconnects when its connection
/// fails (reset, closed), but not when it merely stops answering: a
/// connection whose peer went silent (a dead NAT entry, a pulled cable, a
/// hung proxy) keeps timing every command out, for as long as the kernel
/// keeps it open, which can be forever. So a command that got no answer
/// within the command timeout replaces the manager with a new one (in the
/// background, one attempt at a time); commands already sent on the old one
/// end as they would have.
#[derive(Clone)]
pub(crate) struct Managed {
    inner: Arc<ManagedInner>,
}

struct ManagedInner {
    config: RedisConfig,
    client: Client,
    current: parking_lot::Mutex<ConnectionManager>,
    /// Set while a replacement is being connected.
    replacing: AtomicBool,
}

impl Managed {
    fn current(&self) -> ConnectionManager {
        self.inner.current.lock().clone()
    }

    /// Notes how a command ended: one that timed out replaces the manager.
    fn ended<T>(&self, result: &::redis::RedisResult<T>) {
        if let Err(e) = result
            && e.is_timeout()
        {
            self.replace();
        }
    }

    fn replace(&self) {
        if self.inner.replacing.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            match manager(&inner.config, &inner.client).await {
                Ok(manager) => {
                    *inner.current.lock() = manager;
                    tracing::info!("redis: replaced a connection that stopped answering");
                }
                // The next command that times out tries again.
                Err(error) => tracing::debug!(%error, "redis: no new connection yet"),
            }
            inner.replacing.store(false, Ordering::SeqCst);
        });
    }

    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut manager = self.current();
        Box::pin(async move {
            let result = manager.req_packed_command(cmd).await;
            self.ended(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut manager = self.current();
        Box::pin(async move {
            let result = manager.req_packed_commands(cmd, offset, count).await;
            self.ended(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().get_db()
    }
}

/// A connection of its own for one stream reader: a blocking XREAD holds
/// its connection until it returns, so it shares it with nothing. Its
/// response timeout outlasts the blocking read itself.
pub(crate) async fn blocking(config: &RedisConfig) -> Result<Connection, BackendError> {
    let response_timeout = config.read_block + config.command_timeout;
    if config.cluster {
        return within(config, cluster(config, response_timeout)).await;
    }
    let options = AsyncConnectionConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(response_timeout);
    let client = client(config)?;
    within(config, async {
        client
            .get_multiplexed_async_connection_with_config(&options)
            .await
            .map(Connection::Multiplexed)
            .map_err(|e| {
                let error = crate::backend_url::redact_in(&e.to_string(), &config.url);
                BackendError::new(BACKEND, format!("cannot connect: {error}"))
            })
    })
    .await
}

/// How much longer than the command timeout `run` waits: a `Managed`
/// connection's own deadline (the command timeout) ends the command first,
/// so that it sees the timeout and replaces its connection.
const RUN_GRACE: Duration = Duration::from_millis(250);

/// Runs a command with the configured timeout, turning every failure into a
/// `BackendError` and recording the backend's health.
pub(crate) async fn run<T: FromRedisValue>(
    config: &RedisConfig,
    health: &Health,
    what: &str,
    command: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    let result = match tokio::time::timeout(config.command_timeout + RUN_GRACE, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if is_out_of_memory(&e) => Err(BackendError::new(
            BACKEND,
            format!("message bus full: Redis is out of memory (maxmemory); {what} refused"),
        )),
        Ok(Err(e)) => Err(BackendError::new(BACKEND, format!("{what}: {e}"))),
        Err(_) => Err(BackendError::new(
            BACKEND,
            format!("{what}: no answer within {:?}", config.command_timeout + RUN_GRACE),
        )),
    };
    match &result {
        Ok(_) => health.succeeded(),
        Err(error) => health.failed(&error.detail),
    }
    result
}

/// Redis refused a write because `used_memory` is over `maxmemory` and the
/// policy (`noeviction`) frees nothing. Reads and deletes still work, so the
/// streams drain as readers and trimming move on.
fn is_out_of_memory(error: &::redis::RedisError) -> bool {
    error.code() == Some("OOM")
}
