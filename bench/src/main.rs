//! `flash-sale-bench`: load generator and benchmark suite for flash-sale.
//!
//! One command runs a scenario against four targets with the same load generator, the
//! same buyers and the same concurrency:
//! 1. the HTTP ceiling: a stub server on flash-sale's stack answering the same JSON with
//!    no work behind it, sold out once a showtime's seats are counted down (a child
//!    process of this binary);
//! 2. the nginx ceiling (the C ceiling): nginx with one worker answering every reserve
//!    with flash-sale's sold-out 409, when nginx is installed;
//! 3. the Redis ceiling: `lua/reserve.lua` itself (and `pay.lua` when the bench pays) by
//!    EVALSHA over one multiplexed connection;
//! 4. flash-sale: started as a child process with its own database, Redis key prefix and
//!    queue prefix (or an already running one with `--url`),
//!
//! then waits for every order to be in PostgreSQL, checks the invariants, and, for the
//! scenarios that are mostly rejections (`seed-7000`, `repeat`, `million`), drives the
//! stub, nginx and flash-sale with a second load generator, wrk (the wrk round), before
//! writing the report (JSON, Markdown, SVG chart); it exits non-zero on any breach.
//!
//! Modules:
//! - `cli`: the command line (subcommands, a run's arguments, the service URLs);
//! - `run`: one scenario from start to report, its clean-up, and the `clean` command;
//! - `suite`: several scenarios in a row and their summary table;
//! - `shapes`: one scenario on one process, on nginx + N processes, and on nginx + N
//!   processes over a local Redis Cluster, with ratios to the first and the script calls
//!   per master;
//! - `ceilings`: the HTTP ceiling, the nginx ceiling, the Redis ceiling and
//!   `redis-benchmark`;
//! - `wrk`: the wrk round (stub, nginx and flash-sale under wrk, each run twice);
//! - `plan`: the scenarios, as a pure function from attempt index to buyer;
//! - `load`: the load driver (closed or open loop) and the targets it drives;
//! - `client`: one keep-alive HTTP/1.1 connection per worker;
//! - `stub`: the stub server behind the HTTP ceiling (it sells each showtime's seats,
//!   then answers sold out as flash-sale does);
//! - `procs`: child processes (flash-sale, the stub, nginx in front of processes or as
//!   the nginx ceiling, a local Redis Cluster), their CPU and memory, and removing a
//!   run's leftovers;
//! - `room`: the crowd through a waiting room (`million-queued`): joins, paced polls,
//!   reserves with admissions, through the same bounded pool of connections;
//! - `verify`: the invariants, checked after each flash-sale phase;
//! - `report`: the report, as JSON and Markdown;
//! - `chart`: throughput and latency over time, as SVG.

mod ceilings;
mod chart;
mod cli;
mod client;
mod load;
mod plan;
mod procs;
mod report;
mod room;
mod run;
mod server_view;
mod shapes;
mod storm;
mod stub;
mod suite;
mod verify;
mod wrk;

use std::process::ExitCode;

use anyhow::bail;
use clap::Parser as _;

use crate::cli::{Cli, Cmd};
use crate::plan::Scenario;

/// The allocator flash-sale runs on: the stub, the HTTP ceiling, is the same stack down
/// to it, and the load generator's own allocations (a request, an answer, a timer per
/// buyer) cost less of the two cores it shares with the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flash-sale-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.cmd {
            // Handles Ctrl-C itself: it stops the cluster and nginx it started and removes
            // what every shape created.
            Cmd::Shapes(s) => shapes::shapes(s).await,
            cmd => tokio::select! {
                r = dispatch(cmd) => r,
                _ = tokio::signal::ctrl_c() => bail!(
                    "interrupted; remove what the run left with `flash-sale-bench clean --run-id <the run id printed above>`"
                ),
            },
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("flash-sale-bench: an invariant was breached (see the report)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("flash-sale-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; whether every invariant held.
async fn dispatch(cmd: Cmd) -> anyhow::Result<bool> {
    let (scenario, args) = match cmd {
        Cmd::StubServer { addr } => {
            stub::serve(addr).await?;
            return Ok(true);
        }
        Cmd::Suite(s) => return suite::suite(s).await,
        Cmd::Shapes(s) => return shapes::shapes(s).await,
        Cmd::ConnectStorm(s) => return storm::storm(s).await,
        Cmd::Clean(c) => {
            run::clean(&c).await?;
            return Ok(true);
        }
        Cmd::Seed7000(a) => (Scenario::Seed7000, a),
        Cmd::SeedIdempotent(a) => (Scenario::SeedIdempotent, a),
        Cmd::SeedMulti(a) => (Scenario::SeedMulti, a),
        Cmd::Repeat(a) => (Scenario::Repeat, a),
        Cmd::Million(a) => (Scenario::Million, a),
        Cmd::MillionQueued(a) => (Scenario::MillionQueued, a),
        Cmd::AllWin(a) => (Scenario::AllWin, a),
        Cmd::Mixed(a) => (Scenario::Mixed, a),
        Cmd::Smoke(a) => (Scenario::Smoke, a),
    };
    let report = run::run(scenario, &args).await?;
    Ok(report.ok)
}
