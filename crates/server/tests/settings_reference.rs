//! The settings schema against what is written about it elsewhere: the
//! reference docs/settings.md (generated from the schema) and the Helm
//! chart's values.yaml and templates.

use std::path::PathBuf;

use next_chat_server::config::{DefaultValue, SETTINGS, settings_reference};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// docs/settings.md is what the schema makes of itself; with
/// UPDATE_SETTINGS_DOC=1 this test writes it.
#[test]
fn settings_doc_is_current() {
    let path = repository().join("docs/settings.md");
    let expected = settings_reference();
    if std::env::var_os("UPDATE_SETTINGS_DOC").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "docs/settings.md differs from the settings schema \
         (crates/server/src/config/schema.rs); update it with\n    \
         UPDATE_SETTINGS_DOC=1 cargo test -p next-chat-server settings_doc"
    );
}

#[test]
fn settings_doc_has_a_row_per_setting() {
    let reference = settings_reference();
    for info in SETTINGS {
        let row = format!("| `{}` | `{}` | `{}", info.name, info.env, info.flag());
        assert!(reference.contains(&row), "no row for {}", info.name);
    }
}

/// Keys of the chart's `config:` whose value deliberately differs from the
/// server's default, with the reason. None today.
const CHART_DIFFERS: &[(&str, &str)] = &[];

/// The chart's `config:` is written to the server's config file: every key
/// must be a setting, and its value the server's default unless listed above
/// (the chart shows the defaults an operator is likely to change).
#[test]
fn chart_config_keys_are_settings_with_their_defaults() {
    let text = std::fs::read_to_string(repository().join("deploy/helm/next-chat/values.yaml"))
        .expect("values.yaml");
    let values: yaml_serde::Value = yaml_serde::from_str(&text).expect("values.yaml parses");
    let config = values.get("config").and_then(|c| c.as_mapping()).expect("a config: mapping");
    assert!(!config.is_empty());
    for (key, value) in config {
        let key = key.as_str().expect("string keys");
        let info = SETTINGS
            .iter()
            .find(|info| info.name == key)
            .unwrap_or_else(|| panic!("values.yaml config.{key} is not a server setting"));
        if CHART_DIFFERS.iter().any(|(name, _)| *name == key) {
            continue;
        }
        let DefaultValue::Value(default) = info.default else {
            panic!("config.{key} has no default to compare with; list it in CHART_DIFFERS")
        };
        let value = match value {
            yaml_serde::Value::String(text) => text.clone(),
            yaml_serde::Value::Number(number) => number.to_string(),
            yaml_serde::Value::Bool(switch) => switch.to_string(),
            other => panic!("config.{key}: unexpected {other:?}"),
        };
        assert_eq!(
            value,
            default.to_string(),
            "values.yaml config.{key} differs from the server's default; \
             change one, or list it in CHART_DIFFERS with the reason"
        );
    }
}

/// Every NEXT_CHAT_* variable the chart's templates set is a setting's.
#[test]
fn chart_templates_set_only_settings_env_vars() {
    let dir = repository().join("deploy/helm/next-chat/templates");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("templates") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (start, _) in text.match_indices("NEXT_CHAT_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let known = ["NEXT_CHAT_JWT_SECRET", "NEXT_CHAT_CONFIG"].contains(&name.as_str())
                || SETTINGS.iter().any(|info| info.env == name);
            assert!(known, "{} sets {name}, which is no setting", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no NEXT_CHAT_ variable in {}", dir.display());
}
