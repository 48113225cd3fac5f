//! The `manifold` binary: parses the command line and runs a subcommand. It wires the crates
//! together and holds no protocol or storage logic.
//!
//! Today: `manifold inspect`. `manifold serve` arrives with the engine.

mod inspect;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// One durable, replicated message log with MQTT, Redis Streams and HTTP front ends.
#[derive(Debug, Parser)]
#[command(name = "manifold", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify and summarise a data directory, read-only; exits 1 if anything does not verify.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("manifold: {e:#}");
            ExitCode::from(2)
        }
    }
}
