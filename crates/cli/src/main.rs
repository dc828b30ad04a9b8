//! `next-chat`, the Next Chat console client. In a terminal it is interactive
//! (a line editor; incoming messages print above the line being typed); with
//! stdin or stdout not a terminal it reads one command per line and prints
//! plainly, for scripts.

mod command;
mod output;
mod session;
mod terminal;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use next_chat_client::Protocol;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::output::{Printer, Sink, Style};
use crate::session::{Flow, Session, Settings};
use crate::terminal::Editor;

#[derive(Debug, Parser)]
#[command(
    name = "next-chat",
    version,
    about = "The Next Chat console client. Type help for the commands."
)]
struct Args {
    /// Connect at start to this hub URL, e.g. https://chat.example.com/next-chat
    /// (with --user, --token or --token-file).
    #[arg(long)]
    url: Option<String>,
    /// Connect at start as this user (a server running --auth header).
    #[arg(long, requires = "url", conflicts_with_all = ["token", "token_file"])]
    user: Option<String>,
    /// Connect at start with this JWT (a server running --auth jwt).
    #[arg(long, env = "NEXT_CHAT_TOKEN", requires = "url", hide_env_values = true)]
    token: Option<String>,
    /// Connect at start with the JWT in this file.
    #[arg(long, requires = "url", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust besides the system's, for
    /// https:// servers with a private CA.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The hub protocol.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Json)]
    protocol: ProtocolArg,
    /// Connect straight to the WebSocket, without negotiating.
    #[arg(long)]
    skip_negotiation: bool,
    /// Exit with status 1 at the end if any command failed (scripted mode).
    #[arg(long)]
    strict: bool,
    /// Do not reconnect when the connection drops.
    #[arg(long)]
    no_reconnect: bool,
    /// The server's member limit per group, shown when a group is full.
    #[arg(long, default_value_t = 20)]
    max_members: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Json,
    Messagepack,
}

fn main() -> ExitCode {
    // A bug must still end in one line, never a backtrace.
    std::panic::set_hook(Box::new(|info| eprintln!("next-chat: internal error: {info}")));
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("next-chat: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let settings = Settings {
        protocol: match args.protocol {
            ProtocolArg::Json => Protocol::Json,
            ProtocolArg::Messagepack => Protocol::MessagePack,
        },
        skip_negotiation: args.skip_negotiation,
        max_members: args.max_members,
        reconnect: !args.no_reconnect,
        ca_file: args.ca_file.clone(),
    };
    let credential = match (&args.user, &args.token, &args.token_file) {
        (Some(user), _, _) => Some(user.clone()),
        (None, Some(token), _) => Some(token.trim().to_owned()),
        (None, None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(token) => Some(token.trim().to_owned()),
            Err(e) => {
                eprintln!("next-chat: --token-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, None, None) => None,
    };
    if args.url.is_some() && credential.is_none() {
        eprintln!("next-chat: --url needs --user, --token, --token-file or NEXT_CHAT_TOKEN");
        return ExitCode::from(2);
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let editor = if interactive { Editor::start().await.ok() } else { None };
    let (sink, style, editor) = match editor {
        Some((editor, printer)) => {
            (Sink::Terminal(printer), Style { color: wants_color() }, Some(editor))
        }
        None => (Sink::Std, Style { color: false }, None),
    };
    let printer = Printer::start(sink, style);
    let mut session = Session::new(settings, printer.clone());
    let mut failed = false;
    if let (Some(url), Some(credential)) = (args.url, credential) {
        let token_file =
            if args.user.is_none() && args.token.is_none() { args.token_file } else { None };
        failed |= session.connect(url, credential, token_file).await.is_err();
    }
    match editor {
        Some(mut editor) => {
            printer.info("type help for the commands");
            while let Some(line) = editor.next_line().await {
                let flow = session.run_line(&line).await;
                printer.flush().await;
                if flow.is_ok_and(|flow| flow == Flow::Quit) {
                    break;
                }
                editor.ready();
            }
        }
        None => {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match session.run_line(&line).await {
                    Ok(Flow::Quit) => break,
                    Ok(Flow::Continue) => {}
                    Err(_) => failed = true,
                }
            }
        }
    }
    session.disconnect().await;
    if failed && args.strict { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Colours unless NO_COLOR is set (https://no-color.org) or the terminal is dumb.
fn wants_color() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    !no_color && !dumb
}
