//! Connections to one Redis or to a Redis Cluster, behind one type, and the
//! command wrapper every backend call goes through.

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
    Managed(ConnectionManager),
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
    let options = ConnectionManagerConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.command_timeout)
        .set_number_of_retries(1)
        .set_max_delay(100);
    let client = client(config)?;
    within(config, async {
        client.get_connection_manager_with_config(options).await.map(Connection::Managed).map_err(
            |e| {
                let error = crate::backend_url::redact_in(&e.to_string(), &config.url);
                BackendError::new(BACKEND, format!("cannot connect: {error}"))
            },
        )
    })
    .await
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

/// Runs a command with the configured timeout, turning every failure into a
/// `BackendError` and recording the backend's health.
pub(crate) async fn run<T: FromRedisValue>(
    config: &RedisConfig,
    health: &Health,
    what: &str,
    command: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, BackendError> {
    let result = match tokio::time::timeout(config.command_timeout, command).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if is_out_of_memory(&e) => Err(BackendError::new(
            BACKEND,
            format!("message bus full: Redis is out of memory (maxmemory); {what} refused"),
        )),
        Ok(Err(e)) => Err(BackendError::new(BACKEND, format!("{what}: {e}"))),
        Err(_) => Err(BackendError::new(
            BACKEND,
            format!("{what}: no answer within {:?}", config.command_timeout),
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
