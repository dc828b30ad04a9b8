//! The console's commands: parsing one typed line into a [`Command`], and the
//! help text of each. Parsing never fails; a line that is not a command is a
//! value ([`Command::Unknown`], [`Command::Usage`]) the session answers kindly.

/// One line the user typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Connect {
        url: String,
        user: String,
    },
    List,
    Create {
        group: String,
    },
    Join {
        group: String,
    },
    Leave {
        group: String,
    },
    Say {
        group: String,
        text: String,
    },
    History {
        group: String,
        count: u32,
    },
    Help {
        topic: Option<String>,
    },
    Bye,
    /// An empty line.
    Nothing,
    /// A word that names no command.
    Unknown(String),
    /// A command with missing or malformed arguments.
    Usage(&'static CommandHelp),
}

pub struct CommandHelp {
    pub name: &'static str,
    pub usage: &'static str,
    pub summary: &'static str,
}

impl std::fmt::Debug for CommandHelp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for CommandHelp {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for CommandHelp {}

/// How many messages `history GROUP` shows when no count is given.
pub const DEFAULT_HISTORY_COUNT: u32 = 20;

pub const COMMANDS: &[CommandHelp] = &[
    CommandHelp {
        name: "connect",
        usage: "connect URI USER|TOKEN",
        summary: "connect to a server as USER (or with a JWT when it runs --auth jwt), e.g. connect https://chat.example.com/next-chat ann",
    },
    CommandHelp { name: "list", usage: "list", summary: "list the groups on the server" },
    CommandHelp { name: "create", usage: "create GROUP", summary: "create a group" },
    CommandHelp {
        name: "join",
        usage: "join GROUP",
        summary: "join a group (creating it if needed): shows its recent messages, then new ones as they arrive",
    },
    CommandHelp { name: "leave", usage: "leave GROUP", summary: "leave a group" },
    CommandHelp {
        name: "say",
        usage: "say GROUP TEXT...",
        summary: "send TEXT (the rest of the line) to a group you have joined",
    },
    CommandHelp {
        name: "history",
        usage: "history GROUP [N]",
        summary: "show the last N messages of a group you have joined (default 20, at most 500)",
    },
    CommandHelp {
        name: "help",
        usage: "help [COMMAND]",
        summary: "list the commands, or explain one",
    },
    CommandHelp { name: "bye", usage: "bye", summary: "disconnect and quit" },
];

pub fn help_for(name: &str) -> Option<&'static CommandHelp> {
    COMMANDS.iter().find(|c| c.name.eq_ignore_ascii_case(name))
}

fn usage(name: &str) -> Command {
    match help_for(name) {
        Some(help) => Command::Usage(help),
        None => Command::Unknown(name.to_string()),
    }
}

/// Splits off the first whitespace-separated word.
fn next_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    if text.is_empty() {
        return None;
    }
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    Some((&text[..end], &text[end..]))
}

pub fn parse(line: &str) -> Command {
    let Some((word, rest)) = next_word(line) else {
        return Command::Nothing;
    };
    let name = word.to_lowercase();
    let args: Vec<&str> = rest.split_whitespace().collect();
    match (name.as_str(), args.as_slice()) {
        ("connect", [url, user]) => {
            Command::Connect { url: url.to_string(), user: user.to_string() }
        }
        ("list", []) => Command::List,
        ("create", [group]) => Command::Create { group: group.to_string() },
        ("join", [group]) => Command::Join { group: group.to_string() },
        ("leave", [group]) => Command::Leave { group: group.to_string() },
        ("say", [_, _, ..]) => match next_word(rest) {
            Some((group, text)) => Command::Say {
                group: group.to_string(),
                // The text as typed, inner spacing kept; only the separator goes.
                text: text.trim_start().trim_end_matches(['\r', '\n']).to_string(),
            },
            None => usage("say"),
        },
        ("history", [group]) => {
            Command::History { group: group.to_string(), count: DEFAULT_HISTORY_COUNT }
        }
        ("history", [group, count]) => match count.parse() {
            Ok(count) => Command::History { group: group.to_string(), count },
            Err(_) => usage("history"),
        },
        ("help", []) => Command::Help { topic: None },
        ("help", [topic]) => Command::Help { topic: Some(topic.to_string()) },
        ("bye" | "quit" | "exit", []) => Command::Bye,
        (other, _) => usage(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(
            parse("connect http://h:5000/next-chat ann"),
            Command::Connect { url: "http://h:5000/next-chat".into(), user: "ann".into() }
        );
        assert_eq!(parse("  list "), Command::List);
        assert_eq!(parse("create g"), Command::Create { group: "g".into() });
        assert_eq!(parse("JOIN g"), Command::Join { group: "g".into() });
        assert_eq!(parse("leave g"), Command::Leave { group: "g".into() });
        assert_eq!(
            parse("say g hello  big world"),
            Command::Say { group: "g".into(), text: "hello  big world".into() }
        );
        assert_eq!(parse("history g"), Command::History { group: "g".into(), count: 20 });
        assert_eq!(parse("history g 5"), Command::History { group: "g".into(), count: 5 });
        assert_eq!(parse("help"), Command::Help { topic: None });
        assert_eq!(parse("help say"), Command::Help { topic: Some("say".into()) });
        assert_eq!(parse("bye"), Command::Bye);
        assert_eq!(parse("   "), Command::Nothing);
    }

    #[test]
    fn wrong_arguments_and_unknown_words_are_values() {
        assert!(matches!(parse("join"), Command::Usage(h) if h.name == "join"));
        assert!(matches!(parse("say g"), Command::Usage(h) if h.name == "say"));
        assert!(matches!(parse("history g many"), Command::Usage(h) if h.name == "history"));
        assert!(matches!(parse("connect http://h"), Command::Usage(h) if h.name == "connect"));
        assert_eq!(parse("dance now"), Command::Unknown("dance".into()));
    }
}
