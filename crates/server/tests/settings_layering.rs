//! The layers of the settings: the file, then the environment, then flags.
//! This file holds one test because it sets environment variables, which
//! every thread of the process shares.

use clap::Parser;
use next_chat_server::{Cli, Config};

#[test]
fn environment_wins_over_the_file_and_flags_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(&file, "max_members: 5\nhistory_on_join: 7\nweb_page: true\n").unwrap();
    // SAFETY: this is the only test of its process, so no other thread reads
    // the environment meanwhile.
    unsafe {
        std::env::set_var("NEXT_CHAT_CONFIG", &file);
        std::env::set_var("NEXT_CHAT_MAX_MEMBERS", "6");
        std::env::set_var("NEXT_CHAT_WEB_PAGE", "false");
    }
    let load = |args: &[&str]| {
        let cli = Cli::try_parse_from([&["next-chat-server"], args].concat()).unwrap();
        Config::load(&cli.settings).unwrap()
    };
    let config = load(&[]);
    assert_eq!(config.chat.max_members, 6, "the environment wins over the file");
    assert!(!config.web_page, "the environment wins over the file");
    assert_eq!(config.chat.history_on_join, 7, "the file wins over the default");
    let config = load(&["--max-members", "8", "--web-page", "true"]);
    assert_eq!(config.chat.max_members, 8, "a flag wins over the environment");
    assert!(config.web_page, "a flag wins over the environment");
    assert_eq!(config.chat.history_on_join, 7);
}
