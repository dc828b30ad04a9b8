use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use next_chat_server::config::Command;
use next_chat_server::{App, Cli, Config, app};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files or pods.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let config = match Config::load(&cli.settings) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("next-chat-server: {error}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("next-chat-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Option<Command>, config: Config) -> anyhow::Result<()> {
    match command {
        Some(Command::Migrate) => {
            app::migrate(&config).await?;
            eprintln!("next-chat-server: migrations applied to {}", config.database.redacted());
            return Ok(());
        }
        Some(Command::MintToken { user, valid_for_secs }) => {
            println!(
                "{}",
                next_chat_server::auth::mint_token(&config.auth, &user, valid_for_secs)?
            );
            return Ok(());
        }
        None => {}
    }
    tracing::info!("{}", app::describe(&config));
    let app = App::build(config).await?;
    // Tests and scripts wait for this line to know the port (the address may be :0).
    println!("listening on {}", app.base_url());
    std::io::stdout().flush()?;
    app.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
