//! Chooses and connects the backends the configuration names: in process and
//! SQLite by default, Redis for messaging and membership with `redis`, MySQL
//! for history with a `mysql://` database.

use std::sync::Arc;

use anyhow::Context;
use next_chat_core::{HistoryObserver, LocalFanout, Membership, MessageId, Messaging};
use next_chat_storage::{
    BusStats, EmbeddedMembership, InProcessMessaging, MarkStoredHistory, MySqlHistory,
    ReconcilerConfig, RedisConfig, RedisMembership, RedisMessaging, SqliteStore, StoredMarks,
    StreamHistoryReconciler, mysql,
};

use crate::app::Backends;
use crate::config::{Config, Database, RedisSettings, redact_url};

fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

fn redis_config(settings: &RedisSettings, config: &Config) -> RedisConfig {
    RedisConfig {
        url: settings.url.clone(),
        cluster: settings.cluster,
        key_prefix: settings.key_prefix.clone(),
        stream_shards: settings.stream_shards,
        stream_maxlen: settings.stream_maxlen,
        recent_scan_entries: settings.recent_scan_entries,
        stream_max_bytes: config.redis_stream_max_bytes,
        // Only a shared history database has a reconciler and writers that
        // report what they stored; with SQLite the streams trim as before.
        keep_unstored: matches!(config.database, Database::MySql(_)),
        wait_replicas: settings.wait_replicas,
        ..RedisConfig::default()
    }
}

pub async fn connect(
    config: &Config,
    fanout: &Arc<LocalFanout>,
    observer: &Arc<dyn HistoryObserver>,
) -> anyhow::Result<Backends> {
    match (&config.database, &config.redis) {
        (Database::Sqlite(path), None) => {
            let store = SqliteStore::open(&sqlite_url(path))
                .await
                .with_context(|| format!("database: cannot open {}", path.display()))?;
            // Ids keep increasing across restarts: never below the newest stored.
            let floor = store.latest_id().await?.unwrap_or(MessageId::MIN);
            Ok(Backends {
                messaging: Arc::new(InProcessMessaging::new(Arc::clone(fanout), floor)),
                membership: Arc::new(EmbeddedMembership::new(store.clone())),
                history: Arc::new(store),
                reconciler: None,
                bus: None,
            })
        }
        (Database::Sqlite(path), Some(redis)) => {
            let store = SqliteStore::open(&sqlite_url(path))
                .await
                .with_context(|| format!("database: cannot open {}", path.display()))?;
            let (messaging, membership, bus) = connect_redis(redis, config, fanout).await?;
            Ok(Backends {
                messaging,
                membership,
                history: Arc::new(store),
                reconciler: None,
                bus: Some(bus),
            })
        }
        (Database::MySql(url), Some(redis)) => {
            let history = Arc::new(
                MySqlHistory::connect(url, config.migrate)
                    .await
                    .with_context(|| format!("database: {}", redact_url(url)))?,
            );
            let (messaging, membership, bus) = connect_redis(redis, config, fanout).await?;
            // The history writer reports what it stored, so the streams may trim it.
            let marks = StoredMarks::connect(redis_config(redis, config))
                .await
                .context("redis: cannot connect for the stored watermark")?;
            let writer_store = MarkStoredHistory::new(Arc::clone(&history) as _, marks);
            let reconciler = StreamHistoryReconciler::start(
                redis_config(redis, config),
                ReconcilerConfig::default(),
                Arc::clone(&history) as _,
                Arc::clone(observer),
            )
            .await
            .context("redis: cannot start the history reconciler")?;
            Ok(Backends {
                messaging,
                membership,
                history: Arc::new(writer_store),
                reconciler: Some(reconciler),
                bus: Some(bus),
            })
        }
        (Database::MySql(_), None) => anyhow::bail!(
            "database: mysql:// history is for scaled-out instances and needs redis \
             (groups and members live there); set redis, or use sqlite://"
        ),
    }
}

async fn connect_redis(
    settings: &RedisSettings,
    config: &Config,
    fanout: &Arc<LocalFanout>,
) -> anyhow::Result<(Arc<dyn Messaging>, Arc<dyn Membership>, Arc<BusStats>)> {
    let shown = redact_url(&settings.url);
    // One config, so messaging and membership name this instance the same way.
    let config = redis_config(settings, config);
    let messaging = RedisMessaging::start(config.clone(), Arc::clone(fanout))
        .await
        .with_context(|| format!("redis: cannot start messaging on {shown}"))?;
    let membership = RedisMembership::start(config)
        .await
        .with_context(|| format!("redis: cannot start membership on {shown}"))?;
    let bus = messaging.stats();
    Ok((Arc::new(messaging), Arc::new(membership), bus))
}

pub async fn migrate(database: &Database) -> anyhow::Result<()> {
    match database {
        Database::Sqlite(path) => {
            SqliteStore::open(&sqlite_url(path)).await?;
        }
        Database::MySql(url) => {
            mysql::migrate(url).await.with_context(|| format!("database: {}", redact_url(url)))?;
        }
    }
    Ok(())
}
