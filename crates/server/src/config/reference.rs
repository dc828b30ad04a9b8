//! docs/settings.md, made from `SETTINGS` (a test keeps the committed file
//! equal to it).

use super::{DefaultValue, SETTINGS};

/// The settings reference in Markdown: one table row per setting.
pub fn settings_reference() -> String {
    let mut text = String::from(
        "# Settings reference\n\
         \n\
         <!-- Generated from crates/server/src/config/schema.rs; do not edit. Update with\n\
         UPDATE_SETTINGS_DOC=1 cargo test -p next-chat-server settings_doc -->\n\
         \n\
         Every setting of next-chat-server. Each has three spellings: a key of the YAML\n\
         file named by `--config` (or `NEXT_CHAT_CONFIG`), an environment variable and a\n\
         flag. A flag wins over the environment, which wins over the file. A value out of\n\
         bounds stops the server at start with `configuration: KEY: message`.\n\
         \n\
         The HS256 secret of `--auth jwt` is read only from the environment variable\n\
         `NEXT_CHAT_JWT_SECRET` (or from the file `jwt_secret_file` names): never from a\n\
         flag, which `ps` would show, nor from the YAML file.\n\
         \n\
         | Setting | Environment variable | Flag | Default | Bounds | Description |\n\
         |---|---|---|---|---|---|\n",
    );
    for info in SETTINGS {
        let default = match info.default {
            DefaultValue::Value(value) => format!("`{value}`"),
            DefaultValue::Derived(text) => text.to_owned(),
            DefaultValue::Unset => "unset".to_owned(),
        };
        let row = [
            format!("`{}`", info.name),
            format!("`{}`", info.env),
            format!("`{} {}`", info.flag(), info.value_name),
            default,
            info.bounds_text(),
            info.help(),
        ];
        let cells: Vec<String> = row.iter().map(|cell| cell.replace('|', "\\|")).collect();
        text.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    text
}
