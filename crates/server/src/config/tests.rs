//! The settings' defaults, bounds, layering and the rules that span them.

use std::time::Duration;

use clap::Parser;
use next_chat_core::Rate;

use super::*;
use crate::auth::{JwksSource, KeySource};

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let mut all = vec!["next-chat-server"];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).expect("flags parse");
    Config::load(&cli.settings)
}

#[test]
fn defaults_are_the_contracts() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.listen, "0.0.0.0:5000".parse().unwrap());
    assert_eq!(config.database, Database::Sqlite("next-chat.db".into()));
    assert!(config.redis.is_none());
    assert_eq!(config.chat.max_members, 20);
    assert_eq!(config.chat.history_on_join, 100);
    assert_eq!(config.history.save_timeout, Duration::from_millis(500));
    assert_eq!(config.history.batch_interval, Duration::from_millis(5));
    assert_eq!(config.history.unsaved_max_bytes, 256 * 1024 * 1024);
    assert_eq!(config.max_message_size, 131072);
    assert!(config.migrate);
    assert_eq!(config.http_header_timeout, Duration::from_secs(10));
    assert_eq!(config.http_max_head_bytes, 65536);
    assert_eq!(config.max_http_connections, None);
    assert_eq!(config.max_connections, 200_000);
    assert_eq!(config.max_connections_per_user, 100);
    assert_eq!(config.max_connections_per_ip, None);
    assert_eq!(config.max_pending_negotiations, 100_000);
    assert_eq!(config.max_pending_negotiations_per_user, 100);
    assert_eq!(config.long_poll_max_response_bytes, 1024 * 1024);
    assert!(config.stateful_reconnect);
    assert_eq!(config.stateful_reconnect_buffer_bytes, 100_000);
    assert_eq!(config.stateful_reconnect_window, Duration::from_secs(45));
    assert_eq!(config.chat.history_page_max_bytes, 1024 * 1024);
    assert_eq!(config.chat.max_groups_per_connection, 100);
    assert_eq!(config.chat.max_connections_per_user_in_group, 10);
    assert_eq!(config.chat.user_messages, Rate::per_second(2000, 4000));
    assert_eq!(config.chat.groups_created, Rate::per_minute(60, 60));
    assert_eq!(config.chat.max_groups, 100_000);
}

#[test]
fn chat_rule_limits_are_settings() {
    let config =
        parse(&["--user-messages-per-second", "10", "--groups-created-per-minute", "3"]).unwrap();
    assert_eq!(config.chat.user_messages, Rate::per_second(10, 20), "burst defaults to 2 s");
    assert_eq!(config.chat.groups_created, Rate::per_minute(3, 3));
    let err = parse(&["--history-page-max-bytes", "100"]).unwrap_err();
    assert_eq!(err.key, "history_page_max_bytes");
    assert_eq!(parse(&["--user-messages-burst", "0"]).unwrap_err().key, "user_messages_burst");
    assert_eq!(parse(&["--max-groups", "0"]).unwrap_err().key, "max_groups");
}

#[test]
fn history_read_limits() {
    let config = parse(&[]).unwrap();
    assert_eq!(config.chat.history_read_bytes, Rate::per_second(1 << 20, 8 << 20));
    assert_eq!(config.chat.history_reads_in_flight_per_user, 2);
    let config = parse(&[
        "--history-read-bytes-per-second",
        "5000",
        "--history-read-burst-bytes",
        "20000",
        "--history-reads-in-flight-per-user",
        "1",
    ])
    .unwrap();
    assert_eq!(config.chat.history_read_bytes, Rate::per_second(5000, 20000));
    assert_eq!(config.chat.history_reads_in_flight_per_user, 1);
    for key in [
        "history_read_bytes_per_second",
        "history_read_burst_bytes",
        "history_reads_in_flight_per_user",
    ] {
        let flag = format!("--{}", key.replace('_', "-"));
        assert_eq!(parse(&[flag.as_str(), "0"]).unwrap_err().key, key);
    }
}

#[test]
fn stateful_reconnect_settings() {
    let config = parse(&[
        "--stateful-reconnect",
        "false",
        "--stateful-reconnect-buffer-bytes",
        "5000",
        "--stateful-reconnect-window-secs",
        "10",
    ])
    .unwrap();
    assert!(!config.stateful_reconnect);
    assert_eq!(config.stateful_reconnect_buffer_bytes, 5000);
    assert_eq!(config.stateful_reconnect_window, Duration::from_secs(10));
    let err = parse(&["--stateful-reconnect-buffer-bytes", "0"]).unwrap_err();
    assert_eq!(err.key, "stateful_reconnect_buffer_bytes");
    let err = parse(&["--stateful-reconnect-window-secs", "0"]).unwrap_err();
    assert_eq!(err.key, "stateful_reconnect_window_secs");
}

#[test]
fn redis_stream_bytes_default_and_per_shard_minimum() {
    assert_eq!(parse(&[]).unwrap().redis_stream_max_bytes, 256 * 1024 * 1024);
    let config = parse(&["--redis-stream-max-bytes", "67108864"]).unwrap();
    assert_eq!(config.redis_stream_max_bytes, 64 * 1024 * 1024);
    // 64 shards by default: 63 MiB leaves less than 1 MiB each.
    let err = parse(&["--redis-stream-max-bytes", "66060288"]).unwrap_err();
    assert_eq!(err.key, "redis_stream_max_bytes");
    assert!(err.to_string().contains("at least 67108864"), "{err}");
    let two = ["--redis-stream-shards", "2", "--redis-stream-max-bytes", "3145728"];
    assert!(parse(&two).is_ok());
}

#[test]
fn a_redis_cluster_is_named_by_seed_nodes() {
    let seeds = ["--redis", "redis://a:6379, redis://b:6379"];
    let err = parse(&seeds).unwrap_err();
    assert_eq!(err.key, "redis");
    assert!(err.to_string().contains("redis_cluster"), "{err}");
    let config = parse(&[&seeds[..], &["--redis-cluster"]].concat()).unwrap();
    let redis = config.redis.unwrap();
    assert!(redis.cluster);
    assert_eq!(redis.url, "redis://a:6379,redis://b:6379");
    assert_eq!(redis.stream_shards, DEFAULT_STREAM_SHARDS);
    let bad = parse(&["--redis", "redis://a:1,http://b:2", "--redis-cluster"]).unwrap_err();
    assert_eq!(bad.key, "redis");
    let braces = parse(&["--redis", "redis://a:1", "--redis-cluster", "--redis-key-prefix", "{x}"]);
    assert_eq!(braces.unwrap_err().key, "redis_key_prefix");
    assert!(!parse(&["--redis", "redis://a:1"]).unwrap().redis.unwrap().cluster);
    assert_eq!(redact_url("redis://u:secret@a:1,redis://b:2"), "redis://u:***@a:1,redis://b:2");
}

#[test]
fn bad_values_name_the_key() {
    let err = parse(&["--listen", "nowhere"]).unwrap_err();
    assert_eq!(err.key, "listen");
    assert!(err.to_string().contains("'nowhere' is not ADDR:PORT"));
    assert_eq!(parse(&["--database", "postgres://x"]).unwrap_err().key, "database");
    assert_eq!(parse(&["--database", "mysql://root@h:3306"]).unwrap_err().key, "database");
    assert_eq!(parse(&["--max-members", "0"]).unwrap_err().key, "max_members");
    assert_eq!(parse(&["--redis", "http://x"]).unwrap_err().key, "redis");
    let scan = ["--redis", "redis://x", "--database", "mysql://root@h:3306/chat"];
    let too_many = parse(&[&scan[..], &["--redis-recent-scan-entries", "10001"]].concat());
    let err = too_many.unwrap_err();
    assert_eq!(err.key, "redis_recent_scan_entries");
    assert!(err.to_string().contains("at most 10000"), "{err}");
    let off = parse(&[&scan[..], &["--redis-recent-scan-entries", "0"]].concat()).unwrap();
    assert_eq!(off.redis.unwrap().recent_scan_entries, 0);
    assert_eq!(parse(&scan).unwrap().redis.unwrap().recent_scan_entries, 200);
    assert_eq!(parse(&["--http-max-head-bytes", "100"]).unwrap_err().key, "http_max_head_bytes");
    assert_eq!(
        parse(&["--max-connections-per-ip", "0"]).unwrap_err().key,
        "max_connections_per_ip"
    );
    assert_eq!(
        parse(&["--http-header-timeout-secs", "0"]).unwrap_err().key,
        "http_header_timeout_secs"
    );
    let small = parse(&["--history-unsaved-max-bytes", "1000"]).unwrap_err();
    assert_eq!(small.key, "history_unsaved_max_bytes");
    assert!(small.to_string().contains("at least 1048576"), "{small}");
    let set = parse(&["--history-unsaved-max-bytes", "2097152"]).unwrap();
    assert_eq!(set.history.unsaved_max_bytes, 2 * 1024 * 1024);
    let slow = parse(&["--history-batch-ms", "1001"]).unwrap_err();
    assert_eq!(slow.key, "history_batch_ms");
    assert!(slow.to_string().contains("at most 1000"), "{slow}");
    let each = parse(&["--history-batch-ms", "0"]).unwrap();
    assert_eq!(each.history.batch_interval, Duration::ZERO);
}

#[test]
fn file_is_overridden_by_flags_and_unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "listen: 127.0.0.1:6000\nmax_members: 5\nredis: redis://r:6379\n")
        .unwrap();
    let f = file.to_str().unwrap();
    let config = parse(&["--config", f, "--max-members", "7"]).unwrap();
    assert_eq!(config.listen.port(), 6000);
    assert_eq!(config.chat.max_members, 7);
    assert_eq!(config.redis.unwrap().key_prefix, "next-chat:");

    std::fs::write(&file, "max_memebers: 5\n").unwrap();
    let err = parse(&["--config", f]).unwrap_err();
    assert_eq!(err.key, "config");
    assert!(err.to_string().contains("max_memebers"), "{err}");
}

#[test]
fn auth_settings_name_the_key() {
    assert!(matches!(parse(&[]).unwrap().auth, AuthConfig::Header));
    assert_eq!(parse(&["--auth", "oauth"]).unwrap_err().key, "auth");
    let err = parse(&["--auth", "jwt"]).unwrap_err();
    assert_eq!(err.key, "auth");
    assert!(err.to_string().contains("jwt needs keys"), "{err}");
    let both = ["--auth", "jwt", "--jwt-public-key", "k.pem", "--jwks", "https://idp/jwks"];
    let err = parse(&both).unwrap_err();
    assert!(err.to_string().contains("not jwt_public_key and jwks"), "{err}");
    let jwks = parse(&[
        "--auth",
        "jwt",
        "--jwks",
        "https://idp/jwks",
        "--jwt-issuer",
        "i",
        "--jwt-audience",
        "chat",
    ]);
    let AuthConfig::Jwt(jwt) = jwks.unwrap().auth else { panic!("jwt") };
    assert!(matches!(&jwt.keys, KeySource::Jwks(JwksSource::Url(u)) if u == "https://idp/jwks"));
    assert_eq!(jwt.issuer.as_deref(), Some("i"));
    assert_eq!(jwt.leeway, Duration::from_secs(30));
    assert_eq!(jwt.user_claim, "sub");
    assert_eq!(
        parse(&["--auth", "jwt", "--jwks", "j.json", "--jwt-leeway-secs", "7200"]).unwrap_err().key,
        "jwt_leeway_secs"
    );
    assert_eq!(parse(&["--jwks", "j.json"]).unwrap_err().key, "jwks");
    // A provider's keys need an audience (or `any`); this server's own secret does not.
    let no_audience = parse(&["--auth", "jwt", "--jwks", "j.json"]).unwrap_err();
    assert_eq!(no_audience.key, "jwt_audience");
    assert!(no_audience.to_string().contains("`any`"), "{no_audience}");
    let pem = ["--auth", "jwt", "--jwt-public-key", "k.pem"];
    assert_eq!(parse(&pem).unwrap_err().key, "jwt_audience");
    let any = parse(&[&pem[..], &["--jwt-audience", "any"]].concat()).unwrap();
    let AuthConfig::Jwt(jwt) = any.auth else { panic!("jwt") };
    assert_eq!(jwt.audience, None, "any: not checked");
    let named = parse(&[&pem[..], &["--jwt-audience", "chat"]].concat()).unwrap();
    let AuthConfig::Jwt(jwt) = named.auth else { panic!("jwt") };
    assert_eq!(jwt.audience.as_deref(), Some("chat"));
    assert_eq!(parse(&["--tls-cert", "c.pem"]).unwrap_err().key, "tls_key");
    assert_eq!(parse(&["--tls-key", "k.pem"]).unwrap_err().key, "tls_cert");
    let tls = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap().tls;
    assert_eq!(tls, Some(TlsFiles { cert: "c.pem".into(), key: "k.pem".into() }));
}

#[test]
fn the_secret_comes_from_the_environment_or_a_file_never_a_flag() {
    assert!(Cli::try_parse_from(["s", "--jwt-secret", "x"]).is_err(), "no such flag");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let args = ["--auth", "jwt", "--jwt-secret-file", file.to_str().unwrap()];
    let AuthConfig::Jwt(jwt) = parse(&args).unwrap().auth else { panic!("jwt") };
    assert!(
        matches!(&jwt.keys, KeySource::Secret(s) if s == b"0123456789abcdef0123456789abcdef"),
        "the trailing newline is not part of the secret"
    );
    std::fs::write(&file, "short").unwrap();
    assert_eq!(parse(&args).unwrap_err().key, "jwt_secret_file");
    // The environment's secret (set here on the settings, as `load` does).
    let mut settings = Cli::try_parse_from(["s", "--auth", "jwt"]).unwrap().settings;
    settings.jwt_secret = Some("0123456789abcdef0123456789abcdef".into());
    assert!(Config::from_settings(&settings).is_ok());
    settings.jwt_secret = Some("short".into());
    assert_eq!(Config::from_settings(&settings).unwrap_err().key, "NEXT_CHAT_JWT_SECRET");
}

#[test]
fn migrate_flag_and_subcommand() {
    let cli = Cli::try_parse_from(["s", "migrate", "--database", "mysql://u:p@h:3306/db"]).unwrap();
    assert!(matches!(cli.command, Some(Command::Migrate)));
    let config = Config::load(&cli.settings).unwrap();
    assert_eq!(config.database.redacted(), "mysql://u:***@h:3306/db");
    assert!(!config.migrate);
    assert!(parse(&["--database", "mysql://u@h/db", "--migrate"]).unwrap().migrate);
}

/// Each bounded setting refuses the value just past each bound, naming itself.
#[test]
fn every_bound_names_its_key() {
    let mut checked = 0;
    for info in SETTINGS {
        let outside = [
            info.bounds.min.filter(|min| *min > 0).map(|min| min - 1),
            info.bounds.max.map(|max| max + 1),
        ];
        for value in outside.into_iter().flatten() {
            let flag = info.flag();
            let err = parse(&[&flag, &value.to_string()]).unwrap_err();
            assert_eq!(err.key, info.name, "{flag} {value}: {err}");
            assert!(err.to_string().contains("must be at"), "{err}");
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} bounds");
}

/// Each setting's default is within its bounds, and its three spellings
/// follow its name.
#[test]
fn every_setting_follows_the_naming_rules() {
    for info in SETTINGS {
        assert_eq!(info.env, format!("NEXT_CHAT_{}", info.name.to_uppercase()), "{}", info.name);
        assert!(info.flag().starts_with("--") && !info.flag().contains('_'));
        assert!(!info.help().is_empty() && !info.help().contains("[default"), "{}", info.name);
        if let (DefaultValue::Value(value), Some(min)) = (info.default, info.bounds.min) {
            assert!(value.to_string().parse::<u64>().unwrap() >= min, "{}", info.name);
        }
        if let (DefaultValue::Value(value), Some(max)) = (info.default, info.bounds.max) {
            assert!(value.to_string().parse::<u64>().unwrap() <= max, "{}", info.name);
        }
    }
    let names: std::collections::BTreeSet<_> = SETTINGS.iter().map(|info| info.name).collect();
    assert_eq!(names.len(), SETTINGS.len(), "a setting is declared twice");
    assert!(!names.contains("config") && !names.contains("jwt_secret"));
}

/// `--help` shows each setting's help with its default.
#[test]
fn help_shows_each_setting_with_its_default() {
    use clap::CommandFactory;
    let help = Cli::command().render_long_help().to_string();
    for info in SETTINGS {
        assert!(help.contains(&info.flag()), "{} is missing from --help", info.flag());
    }
    assert!(help.contains("Most distinct users in one group [default: 20]"), "{help}");
    assert!(help.contains("[default: the open-file limit less 256]"), "{help}");
    assert!(help.contains("NEXT_CHAT_MAX_MEMBERS"), "{help}");
}

/// A switch given alone means true; the others take a value.
#[test]
fn switches_may_be_given_alone() {
    assert!(!parse(&["--web-page", "false"]).unwrap().web_page);
    assert!(parse(&["--redis", "redis://a:1", "--redis-cluster"]).unwrap().redis.unwrap().cluster);
    assert!(Cli::try_parse_from(["s", "--max-members"]).is_err());
}

/// Every setting with a default value is a file key: a file holding them all
/// loads, and a flag still wins over it.
#[test]
fn every_setting_is_a_file_key() {
    let yaml: String = SETTINGS
        .iter()
        // Set alone, jwt_user_claim asks for --auth jwt.
        .filter(|info| info.name != "jwt_user_claim")
        .filter_map(|info| match info.default {
            DefaultValue::Value(value) => Some((info.name, value.to_string())),
            _ => None,
        })
        .map(|(name, value)| match value.parse::<u64>().is_ok() || value.parse::<bool>().is_ok() {
            true => format!("{name}: {value}\n"),
            false => format!("{name}: {value:?}\n"),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, yaml).unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(parse(&["--config", f]).unwrap().chat.max_members, 20);
    assert_eq!(parse(&["--config", f, "--max-members", "3"]).unwrap().chat.max_members, 3);
}

#[test]
fn edge_settings_default_to_safe_values() {
    let config = parse(&[]).unwrap();
    assert!(!config.allow_remote_header_auth, "header mode answers loopback only");
    assert_eq!(config.max_unauthenticated_connections_per_ip, 64);
    let set =
        parse(&["--allow-remote-header-auth", "--max-unauthenticated-connections-per-ip", "3"])
            .unwrap();
    assert!(set.allow_remote_header_auth);
    assert_eq!(set.max_unauthenticated_connections_per_ip, 3);
    let zero = parse(&["--max-unauthenticated-connections-per-ip", "0"]).unwrap_err();
    assert_eq!(zero.key, "max_unauthenticated_connections_per_ip");
}

#[test]
fn malformed_backend_urls_are_configuration_errors_without_the_password() {
    let err = parse(&["--redis", "redis://user:secret@[bad:1/0"]).unwrap_err();
    assert_eq!(err.key, "redis");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(err.to_string().contains("redis://user:***@[bad:1/0"), "{err}");
    let seeds = ["--redis", "redis://a:1,redis://u:secret@b:x", "--redis-cluster"];
    let err = parse(&seeds).unwrap_err();
    assert_eq!(err.key, "redis");
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = parse(&["--database", "mysql://u:secret@[h:1/chat"]).unwrap_err();
    assert_eq!(err.key, "database");
    assert!(!err.to_string().contains("secret"), "{err}");
    let err = parse(&["--database", "postgres://u:secret@h/chat"]).unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn redis_wait_replicas_is_off_by_default_and_bounded() {
    let redis = |args: &[&str]| {
        let mut all = vec!["--redis", "redis://127.0.0.1:6379"];
        all.extend_from_slice(args);
        parse(&all)
    };
    assert_eq!(redis(&[]).unwrap().redis.unwrap().wait_replicas, 0);
    assert_eq!(redis(&["--redis-wait-replicas", "2"]).unwrap().redis.unwrap().wait_replicas, 2);
    let err = redis(&["--redis-wait-replicas", "17"]).unwrap_err();
    assert_eq!(err.key, "redis_wait_replicas");
    assert!(err.to_string().contains("at most 16"), "{err}");
}
