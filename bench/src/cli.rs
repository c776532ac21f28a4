//! The command line: subcommands, the arguments of a run, and where the services are.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::plan::{PayMode, Scenario};

/// `--hold-secs` unless told otherwise, and the hold time `clean` assumes for a run's
/// delay queue when RabbitMQ cannot list the queues.
pub(crate) const DEFAULT_HOLD_SECS: u64 = 900;

#[derive(Parser)]
#[command(
    name = "flash-sale-bench",
    version,
    about = "Load generator and benchmark suite for flash-sale"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// 7,000 distinct users, one showtime, 100 seats (the reference's first test).
    #[command(name = "seed-7000")]
    Seed7000(RunArgs),
    /// One user, 20 concurrent requests, 10 seats.
    SeedIdempotent(RunArgs),
    /// 3 showtimes x 50 seats, 1,000 users each.
    SeedMulti(RunArgs),
    /// 20,000 users, 5 attempts each, 1,000 seats.
    Repeat(RunArgs),
    /// 1,000,000 attempts by 200,000 users for 10,000 seats.
    Million(RunArgs),
    /// `million`'s crowd through a waiting room (issue 16), beside `million` on the same
    /// server: million closed loop, million open loop at half that rate, then the room with
    /// the buyers arriving at that rate before it opens, each polling its place until
    /// admitted (then reserving) or told sold out. Not in the default suite.
    MillionQueued(RunArgs),
    /// 20,000 seats for 20,000 buyers; the bench pays every hold.
    AllWin(RunArgs),
    /// 8 showtimes, 2 hot.
    Mixed(RunArgs),
    /// Seconds: 2 showtimes x 20 seats, 500 users x 2 attempts; checks invariants, not speed.
    Smoke(RunArgs),
    /// Several scenarios one after the other, and a summary table.
    Suite(SuiteArgs),
    /// One scenario (default `mixed`) on three shapes in one run: one process on one
    /// Redis node; nginx + 3 processes on that node; nginx + 3 processes on a local
    /// 6-node Redis Cluster (3 masters), started here and stopped after. Throughput and
    /// latency of each as a ratio to the first, and the script calls per master. No
    /// ceilings, no wrk round (`--no-*-ceiling`, `--no-redis-benchmark`, `--no-wrk` and
    /// `--wrk-secs` change nothing).
    Shapes(ShapesArgs),
    /// Every buyer on a new connection, all at once: connect latency and the kernel's
    /// SYN drops, with the old listen queue (128) and with flash-sale's default.
    ConnectStorm(crate::storm::StormArgs),
    /// Removes what an interrupted run left: its database, Redis keys and queues.
    Clean(CleanArgs),
    /// The HTTP-ceiling stub server (started by the bench itself).
    #[command(hide = true)]
    StubServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
    },
}

#[derive(Args, Clone, Debug)]
pub(crate) struct RunArgs {
    /// Distinct users (buyers).
    #[arg(long)]
    pub(crate) users: Option<u64>,
    /// Attempts of each user.
    #[arg(long)]
    pub(crate) attempts: Option<u32>,
    /// Seats of each showtime (of each cold showtime in `mixed`).
    #[arg(long)]
    pub(crate) capacity: Option<u32>,
    /// Number of showtimes.
    #[arg(long)]
    pub(crate) showtimes: Option<usize>,
    /// Hot showtimes (`mixed`).
    #[arg(long)]
    pub(crate) hot: Option<usize>,
    /// Seats of each hot showtime (`mixed`).
    #[arg(long)]
    pub(crate) hot_capacity: Option<u32>,
    /// Who pays the holds.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) pay: PayMode,

    /// Concurrent connections (closed loop: requests in flight). Default: 64 (20 for
    /// seed-idempotent, 16 for smoke).
    #[arg(short, long)]
    pub(crate) concurrency: Option<usize>,
    /// Open loop: this many attempts per second (still at most --concurrency in flight).
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// After the closed-loop run, run flash-sale again open loop at half its measured
    /// peak, on fresh showtimes (latency at half load).
    #[arg(long)]
    pub(crate) half_rate: bool,

    /// Target an already running flash-sale instead of starting one.
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// The flash-sale binary to start (default: `flash-sale` next to this binary).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// With --url: the server's pid, to read its memory and CPU.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    #[command(flatten)]
    pub(crate) services: ServiceUrls,
    /// HOLD_TTL_SECS of the started server.
    #[arg(long, default_value_t = DEFAULT_HOLD_SECS)]
    pub(crate) hold_secs: u64,
    /// MOCK_PAY_DELAY_MS of the started server (mock payment).
    #[arg(long, default_value = "10..50")]
    pub(crate) mock_pay_delay_ms: String,
    /// RUST_LOG of the started server (its output goes to `<out>/<scenario>-server.log`).
    #[arg(long, env = "BENCH_SERVER_LOG", default_value = "warn")]
    pub(crate) server_log: String,

    /// Skip the HTTP ceiling.
    #[arg(long)]
    pub(crate) no_http_ceiling: bool,
    /// Skip the nginx ceiling (run when nginx is installed).
    #[arg(long)]
    pub(crate) no_nginx_ceiling: bool,
    /// The nginx binary (default: `nginx` on PATH or in /usr/sbin, /sbin): the nginx
    /// ceiling, and the shapes behind nginx (without nginx only the first shape runs).
    #[arg(long)]
    pub(crate) nginx: Option<PathBuf>,
    /// Skip the Redis ceiling.
    #[arg(long)]
    pub(crate) no_redis_ceiling: bool,
    /// Skip the extra Redis number from `redis-benchmark` (run when it is installed).
    #[arg(long)]
    pub(crate) no_redis_benchmark: bool,
    /// Skip the wrk round (seed-7000, repeat and million, when wrk is installed): the
    /// stub, the nginx ceiling and flash-sale driven by wrk, 100 seats then sold out.
    #[arg(long)]
    pub(crate) no_wrk: bool,
    /// How long each wrk run lasts, seconds (each target runs twice).
    #[arg(long, default_value_t = 10)]
    pub(crate) wrk_secs: u64,
    /// Attempts sent to each target before it is measured (on a showtime of their own,
    /// so connections, script caches and channels are warm); 0 to skip. Default 1000
    /// (0 for smoke).
    #[arg(long)]
    pub(crate) warmup: Option<u64>,
    /// Where the reports go.
    #[arg(long, default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) timeout_ms: u64,
    /// How long to wait for every order to be in PostgreSQL.
    #[arg(long, default_value_t = 60)]
    pub(crate) orders_deadline_secs: u64,
    /// Record a `perf` profile of the server during flash-sale's closed-loop phase into
    /// `<out>/<scenario>-perf.txt` (build the server with symbols for names:
    /// `CARGO_PROFILE_RELEASE_STRIP=none cargo build --release -p flash-sale-local`).
    #[arg(long)]
    pub(crate) perf: bool,
    /// Keep the run's database, Redis keys and queues.
    #[arg(long)]
    pub(crate) keep: bool,
    #[command(flatten)]
    pub(crate) room: RoomArgs,
}

/// How the crowd goes through the waiting room (`million-queued`).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Waiting room (million-queued)")]
pub(crate) struct RoomArgs {
    /// How long a waiting buyer waits between polls of its place, ms: its estimated wait
    /// (+-20%) kept within this range, or uniformly in it while there is no estimate.
    #[arg(long, default_value = "250..1000", value_parser = parse_ms_range)]
    pub(crate) poll_ms: (u64, u64),
    /// How long a buyer with a head start (a bot) waits between polls, ms, whatever its
    /// estimated wait.
    #[arg(long, default_value_t = 50)]
    pub(crate) bot_poll_ms: u64,
    /// Percent of the buyers with a head start: they press first in `million`, and join
    /// first and poll fastest through the room.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) head_start_pct: f64,
    /// The room opens this long after the last buyer's join is due, ms (every buyer
    /// joins before the opening, so the line is drawn by lot).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) open_margin_ms: u64,
    /// The room's `admit_per_sec` (default: none, as many as the stock allows).
    #[arg(long)]
    pub(crate) admit_per_sec: Option<u32>,
    /// The room's `overbook_pct` (default: the server's, 10).
    #[arg(long)]
    pub(crate) overbook_pct: Option<u32>,
    /// The room's `admission_secs` (default: the server's, 120).
    #[arg(long)]
    pub(crate) admission_secs: Option<u32>,
    /// The server's `WAITING_ROOM_POLLS_PER_SEC`: the polls a second each room's line is
    /// paced to (default: the server's, 10,000).
    #[arg(long)]
    pub(crate) polls_per_sec: Option<u32>,
    /// The server's `WAITING_ROOM_HOLDS_PER_SEC`: the pace the front of the line (the
    /// buyers the stock admits) comes back at when the room opens (default: the
    /// server's, 5,000).
    #[arg(long)]
    pub(crate) holds_per_sec: Option<u32>,
    /// Joins a second (default: half of the closed loop's peak measured in the same run,
    /// issue 16's rate). A fixed rate compares servers or settings across runs whose
    /// closed-loop peaks differ with the machine's noise.
    #[arg(long, value_parser = parse_rate)]
    pub(crate) join_rate: Option<f64>,
}

/// A rate a second: finite and at least 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("expected a rate of at least 1 a second, got {s:?}")),
    }
}

/// `250..1000` (or `500`): a range of milliseconds.
fn parse_ms_range(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("expected MIN..MAX or MS in milliseconds, got {s:?}");
    let (lo, hi) = s.split_once("..").unwrap_or((s, s));
    let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_range_is_read_as_min_and_max_milliseconds() {
        assert_eq!(parse_ms_range("250..1000"), Ok((250, 1000)));
        assert_eq!(parse_ms_range("500"), Ok((500, 500)));
        assert!(parse_ms_range("1000..250").is_err());
        assert!(parse_ms_range("0..10").is_err());
        assert!(parse_ms_range("fast").is_err());
    }

    #[test]
    fn a_join_rate_is_a_positive_finite_number() {
        assert_eq!(parse_rate("17000"), Ok(17_000.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        for bad in ["0", "0.5", "-3", "inf", "NaN", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Args, Clone, Debug)]
pub(crate) struct CleanArgs {
    /// The run id printed at the start of the run (`run 1a2b3c4d`).
    #[arg(long = "run-id", required = true)]
    pub(crate) run_ids: Vec<String>,
    #[command(flatten)]
    pub(crate) services: ServiceUrls,
}

/// Where the services are: the bench's server gets a database of its own on this
/// PostgreSQL server, and key and queue prefixes of its own.
#[derive(Args, Clone, Debug)]
pub(crate) struct ServiceUrls {
    /// PostgreSQL; the bench's server gets a database of its own on this server.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flash_sale"
    )]
    pub(crate) database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub(crate) amqp_url: String,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct SuiteArgs {
    /// Scenarios, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "seed-7000,seed-idempotent,seed-multi,repeat,mixed,all-win,million"
    )]
    pub(crate) scenarios: Vec<Scenario>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct ShapesArgs {
    /// The scenario each shape runs.
    #[arg(long, default_value = "mixed")]
    pub(crate) scenario: Scenario,
    /// flash-sale processes behind nginx in the second and third shapes.
    #[arg(long, default_value_t = 3)]
    pub(crate) processes: usize,
    /// Rounds: each runs every shape once on fresh showtimes (in turn, the order rotated
    /// from one round to the next); the tables give the median of the rounds.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// The cluster's first port (its nodes take it and the next five, their cluster bus
    /// ports 10000 above). Default: the first free range of 7200, 7210, ...
    #[arg(long)]
    pub(crate) cluster_port: Option<u16>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}
