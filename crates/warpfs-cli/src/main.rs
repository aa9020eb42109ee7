//! `warpfs`: benchmark and inspect warpfs from the command line.

mod backend;
mod baseline;
mod bench;
mod cli;
mod error;
mod expected;
mod graph;
mod latency;
mod load;
mod pattern;
mod plot;
mod progress;
mod stat;
mod system;
mod testfile;
mod units;

use clap::Parser;
use cli::{Cli, Command};

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match &cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Stat(args) => stat::run(args),
        Command::Load(args) => load::run(args),
        Command::Graph(args) => graph::run(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warpfs: error: {e}");
            error::EXIT_ERROR
        }
    };
    std::process::exit(code);
}
