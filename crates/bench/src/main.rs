//! `next-chat-bench`: the load generator. See `args` for the flags, `run` for
//! what a run does, `connection` for one connection's work, `report` for what
//! comes out.

mod args;
mod attack;
mod connection;
mod history;
mod payload;
mod plot;
mod procfs;
mod report;
mod run;
mod stats;
mod wire;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // One thread: a current-thread runtime, with no cross-thread wake-ups at all.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("next-chat-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(command) = args.command.clone() {
        let printed = match command {
            args::Command::LoadHistory(load) => runtime
                .block_on(history::load(load))
                .and_then(|r| serde_json::to_string_pretty(&r).map_err(|e| e.to_string())),
            args::Command::ProbeHistory(probe) => runtime
                .block_on(history::probe(probe))
                .and_then(|r| serde_json::to_string_pretty(&r).map_err(|e| e.to_string())),
            args::Command::HistoryAttack(attack) => runtime
                .block_on(attack::attack(attack))
                .and_then(|r| serde_json::to_string_pretty(&r).map_err(|e| e.to_string())),
        };
        return match printed {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("next-chat-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let json = args.json;
    let plot = args.plot.clone();
    let finished = match runtime.block_on(run::run(args, threads)) {
        Ok(finished) => finished,
        Err(e) => {
            eprintln!("next-chat-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = &finished.report;
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("next-chat-bench: cannot write the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.human());
    }
    if let Some(path) = plot {
        if let Err(e) = plot::draw(&path, report, &finished.latency) {
            eprintln!("next-chat-bench: {e}");
            return ExitCode::FAILURE;
        }
        if !json {
            println!("  plot           {}", path.display());
        }
    }
    // Lost deliveries or connections are a failed run for scripts.
    let failed = report.load.as_ref().is_some_and(|l| l.lost > 0 || l.connections_lost > 0);
    runtime.shutdown_background();
    if failed { ExitCode::from(2) } else { ExitCode::SUCCESS }
}
