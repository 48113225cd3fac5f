//! The `manifold` binary: parses the command line and runs a subcommand. It wires the crates
//! together and holds no protocol or storage logic.
//!
//! `manifold serve` runs a node; `manifold inspect` verifies a data directory; `manifold
//! cluster` asks a running node about its Raft group.

/// mimalloc, not glibc's malloc: what a connection thread allocates the applier frees, and
/// glibc's thread caches miss on both sides of that hand-off (Cargo.toml says more).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster;
mod inspect;
mod serve;
mod tls;

use std::io::Write;
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
    /// Run a node (single node: data in ./data unless --data-dir or the config file says).
    Serve(Box<serve::ServeArgs>),
    /// Verify and summarise a data directory, read-only; exits 1 if anything does not verify.
    Inspect(inspect::InspectArgs),
    /// Ask a running node (its HTTP listener) about its Raft group, or change who leads.
    Cluster(cluster::ClusterArgs),
}

/// Logs to stderr; `RUST_LOG` sets the level (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // A closed stderr (a supervisor gone) must not kill the node: no error report about
        // failing to log, which would itself go to stderr and panic.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging();
            serve::run(&args)
        }
        Command::Inspect(args) => inspect::run(&args),
        Command::Cluster(args) => cluster::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn an error exit into a panic.
            let _ = writeln!(std::io::stderr(), "manifold: {e:#}");
            ExitCode::from(2)
        }
    }
}
