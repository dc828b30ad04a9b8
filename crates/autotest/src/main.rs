//! `next-chat-autotest`, the black-box test runner: runs the original
//! project's end-to-end scenarios and a short load phase against a running
//! Next Chat hub through the client library, prints one line per scenario and
//! a closing `N passed, N failed` line, and exits 0 only if every scenario
//! passed. `helm test` runs it against the chart's Service; the crate's tests
//! run it against servers the test suite starts.

mod load;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use next_chat_client::Protocol;

use crate::scenarios::{Credentials, Run, Scenario};

#[derive(Debug, Parser)]
#[command(
    name = "next-chat-autotest",
    version,
    about = "Black-box tests of a running Next Chat hub: exits 0 when every scenario passes."
)]
struct Args {
    /// The hub URL, e.g. http://127.0.0.1:5000/next-chat or https://….
    #[arg(long)]
    url: String,
    /// The hub URL of another instance of the same deployment (scale-out):
    /// the cross-instance scenarios run too, with users on both instances.
    #[arg(long, value_name = "URL")]
    peer_url: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (https://).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The server runs --auth jwt with the HS256 secret in this file: each test
    /// user's token is minted with it. Or set NEXT_CHAT_JWT_SECRET.
    #[arg(long, env = "NEXT_CHAT_JWT_SECRET_FILE", value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// The `iss` the server checks, put in each minted token.
    #[arg(long, env = "NEXT_CHAT_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The `aud` the server checks, put in each minted token.
    #[arg(long, env = "NEXT_CHAT_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// The hub protocol the test clients speak.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Json)]
    protocol: ProtocolArg,
    /// The server's max_members: that many users join, the next gets NoRoom.
    #[arg(long, default_value_t = 20)]
    max_members: usize,
    /// Skip the load phase (the scenarios alone take a few seconds).
    #[arg(long)]
    skip_load: bool,
    /// Messages per second in the load phase.
    #[arg(long, default_value_t = 50)]
    load_rate: u32,
    /// Seconds the load phase sends for.
    #[arg(long, default_value_t = 20)]
    load_seconds: u64,
    /// Characters of each load-phase message.
    #[arg(long, default_value_t = 1000)]
    load_message_chars: usize,
    /// The load phase fails when the mean send-to-receive latency is higher.
    #[arg(long, default_value_t = 200)]
    max_mean_latency_ms: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Json,
    Messagepack,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("next-chat-autotest: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

/// The secret from `--jwt-secret-file`, else `NEXT_CHAT_JWT_SECRET`; none: `--auth header`.
fn credentials(args: &Args) -> Result<Credentials, String> {
    let secret = match &args.jwt_secret_file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))?;
            let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
            Some(bytes[..end].to_vec())
        }
        None => std::env::var("NEXT_CHAT_JWT_SECRET").ok().map(String::into_bytes),
    };
    Ok(match secret {
        None => Credentials::UserId,
        Some(secret) => Credentials::Jwt {
            secret,
            issuer: args.jwt_issuer.clone(),
            audience: args.jwt_audience.clone(),
        },
    })
}

async fn run(args: Args) -> ExitCode {
    let credentials = match credentials(&args) {
        Ok(credentials) => credentials,
        Err(error) => {
            eprintln!("next-chat-autotest: {error}");
            return ExitCode::from(2);
        }
    };
    let run = Run::new(
        args.url.clone(),
        args.peer_url.clone(),
        match args.protocol {
            ProtocolArg::Json => Protocol::Json,
            ProtocolArg::Messagepack => Protocol::MessagePack,
        },
        credentials,
        args.ca_file.clone(),
    );
    let mut scenarios = scenarios::all(args.max_members);
    if args.peer_url.is_some() {
        scenarios.extend(scenarios::cross_instance(args.max_members));
    }
    if !args.skip_load {
        let load = load::LoadSpec {
            rate: args.load_rate,
            duration: Duration::from_secs(args.load_seconds),
            message_chars: args.load_message_chars,
            max_mean_latency: Duration::from_millis(args.max_mean_latency_ms),
        };
        scenarios.push(load::scenario(load));
    }
    match &args.peer_url {
        None => println!("next-chat-autotest: {} scenarios against {}", scenarios.len(), args.url),
        Some(peer) => println!(
            "next-chat-autotest: {} scenarios against {} and {peer}",
            scenarios.len(),
            args.url
        ),
    }
    let (mut passed, mut failed) = (0, 0);
    for scenario in scenarios {
        if run_one(&run, scenario).await {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs one scenario within its time limit and prints its outcome.
async fn run_one(run: &Run, scenario: Scenario) -> bool {
    let started = Instant::now();
    let outcome = tokio::time::timeout(scenario.time_limit, (scenario.body)(run.clone())).await;
    let took = started.elapsed();
    match outcome {
        Ok(Ok(note)) => {
            let note = if note.is_empty() { String::new() } else { format!(": {note}") };
            println!("PASS  {} ({} ms){note}", scenario.name, took.as_millis());
            true
        }
        Ok(Err(error)) => {
            println!("FAIL  {} ({} ms): {error:#}", scenario.name, took.as_millis());
            false
        }
        Err(_) => {
            println!("FAIL  {}: did not finish within {:?}", scenario.name, scenario.time_limit);
            false
        }
    }
}
