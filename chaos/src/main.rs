//! `authsync-chaos`: the chaos harness's command.
//!
//! `authsync-chaos node --config FILE` runs one region's node exactly as
//! `authsync node` does; the harness starts its nodes this way, inside their network
//! namespaces, so that one `cargo run -p authsync-chaos` builds everything it runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "authsync-chaos",
    version,
    about = "Fault injection for authsync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one region's node (what the harness starts in each region's namespace).
    Node {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    authsync::process::keep_large_allocations_mapped();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    authsync::process::init_logging();
    match cli.command {
        Command::Node { config } => runtime.block_on(authsync::process::run_node(&config)),
    }
}
