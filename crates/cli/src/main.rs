//! `next-chat`, the Next Chat console client. In a terminal it is interactive
//! (a line editor; incoming messages print above the line being typed); with
//! stdin or stdout not a terminal it reads one command per line and prints
//! plainly, for scripts.

mod command;
mod output;
mod session;
mod terminal;

use std::io::IsTerminal;
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
    /// Connect at start to this hub URL, e.g. http://127.0.0.1:5000/next-chat.
    #[arg(long, requires = "user")]
    url: Option<String>,
    /// Connect at start as this user.
    #[arg(long, requires = "url")]
    user: Option<String>,
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
    };
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
    if let (Some(url), Some(user)) = (args.url, args.user) {
        failed |= session.connect(url, user).await.is_err();
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
