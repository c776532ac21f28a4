//! `flash-sale`: every function in one local process (see the crate docs), and the
//! operator's commands.
//!
//! The process allocates on every request (bodies, answers, futures, axum's per-request
//! clones), and glibc's malloc was a visible share of its CPU under load (BENCHMARKS.md,
//! "Measurements behind design choices"): it runs on mimalloc instead, whose per-thread
//! free lists make those small allocations cheap.

use clap::{Parser, Subcommand, ValueEnum};
use flash_sale_adapters::Queue;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "flash-sale",
    version,
    about = "Sell a few seats to a crowd, all at once."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve every route on ADDR and run the queue consumers and the sweep (the default).
    Serve,
    /// Sweep, then compare Redis with PostgreSQL for every showtime and show the queues.
    /// Exits 1 when a discrepancy is left unrepaired.
    Reconcile {
        /// Rebuild Redis's counts from the database and the live holds.
        #[arg(long)]
        repair: bool,
        /// Only this showtime.
        #[arg(long)]
        showtime: Option<i64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move dead-lettered messages back to their work queue, once their cause is fixed.
    Replay {
        /// Which queue's dead letters.
        #[arg(long, value_enum)]
        queue: DeadLetters,
        /// At most this many messages.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeadLetters {
    Orders,
    Expiries,
    Payments,
}

impl From<DeadLetters> for Queue {
    fn from(d: DeadLetters) -> Self {
        match d {
            DeadLetters::Orders => Queue::Orders,
            DeadLetters::Expiries => Queue::Expiries,
            DeadLetters::Payments => Queue::Payments,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => flash_sale_local::process::run_from_env().await,
        Command::Reconcile {
            repair,
            showtime,
            json,
        } => {
            let clean =
                flash_sale_local::process::reconcile_from_env(showtime, repair, json).await?;
            std::process::exit(if clean { 0 } else { 1 });
        }
        Command::Replay { queue, limit } => {
            let moved = flash_sale_local::process::replay_from_env(queue.into(), limit).await?;
            println!("{moved} messages moved back to their work queue");
            Ok(())
        }
    }
}
