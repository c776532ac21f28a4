//! `flash-sale-bench`: load generator and benchmark suite for flash-sale.
//!
//! One command runs a scenario against three targets with the same load generator, the
//! same buyers and the same concurrency:
//! 1. the HTTP ceiling: a stub server on flash-sale's stack answering the same JSON with
//!    no work behind it (a child process of this binary);
//! 2. the Redis ceiling: `lua/reserve.lua` itself (and `pay.lua` when the bench pays) by
//!    EVALSHA over one multiplexed connection;
//! 3. flash-sale: started as a child process with its own database, Redis key prefix and
//!    queue prefix (or an already running one with `--url`),
//!
//! then waits for every order to be in PostgreSQL, checks the invariants, writes the
//! report (JSON, Markdown, SVG chart) and exits non-zero on any breach.

mod chart;
mod client;
mod load;
mod plan;
mod procs;
mod report;
mod stub;
mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::client::{Conn, Endpoint};
use crate::load::{Drive, HttpTarget, RedisTarget};
use crate::plan::{Overrides, PayMode, Plan, Scenario};
use crate::procs::{Monitor, Server, Usage};
use crate::report::{Machine, PhaseReport, Report};

#[derive(Parser)]
#[command(
    name = "flash-sale-bench",
    version,
    about = "Load generator and benchmark suite for flash-sale"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    /// 20,000 seats for 20,000 buyers; the bench pays every hold.
    AllWin(RunArgs),
    /// 8 showtimes, 2 hot.
    Mixed(RunArgs),
    /// Seconds: 2 showtimes x 20 seats, 500 users x 2 attempts; checks invariants, not speed.
    Smoke(RunArgs),
    /// Several scenarios one after the other, and a summary table.
    Suite(SuiteArgs),
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
struct RunArgs {
    /// Distinct users (buyers).
    #[arg(long)]
    users: Option<u64>,
    /// Attempts of each user.
    #[arg(long)]
    attempts: Option<u32>,
    /// Seats of each showtime (of each cold showtime in `mixed`).
    #[arg(long)]
    capacity: Option<u32>,
    /// Number of showtimes.
    #[arg(long)]
    showtimes: Option<usize>,
    /// Hot showtimes (`mixed`).
    #[arg(long)]
    hot: Option<usize>,
    /// Seats of each hot showtime (`mixed`).
    #[arg(long)]
    hot_capacity: Option<u32>,
    /// Who pays the holds.
    #[arg(long, value_enum, default_value = "auto")]
    pay: PayMode,

    /// Concurrent connections (closed loop: requests in flight). Default: 64 (20 for
    /// seed-idempotent, 16 for smoke).
    #[arg(short, long)]
    concurrency: Option<usize>,
    /// Open loop: this many attempts per second (still at most --concurrency in flight).
    #[arg(long)]
    rate: Option<f64>,
    /// After the closed-loop run, run flash-sale again open loop at half its measured
    /// peak, on fresh showtimes (latency at half load).
    #[arg(long)]
    half_rate: bool,

    /// Target an already running flash-sale instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// The flash-sale binary to start (default: `flash-sale` next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// With --url: the server's pid, to read its memory and CPU.
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    services: Services,
    /// HOLD_TTL_SECS of the started server.
    #[arg(long, default_value_t = 900)]
    hold_secs: u64,
    /// MOCK_PAY_DELAY_MS of the started server (mock payment).
    #[arg(long, default_value = "10..50")]
    mock_pay_delay_ms: String,

    /// Skip the HTTP ceiling.
    #[arg(long)]
    no_http_ceiling: bool,
    /// Skip the Redis ceiling.
    #[arg(long)]
    no_redis_ceiling: bool,
    /// Skip the extra Redis number from `redis-benchmark` (run when it is installed).
    #[arg(long)]
    no_redis_benchmark: bool,
    /// Attempts sent to each target before it is measured (on a showtime of their own,
    /// so connections, script caches and channels are warm); 0 to skip. Default 1000
    /// (0 for smoke).
    #[arg(long)]
    warmup: Option<u64>,
    /// Where the reports go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Per-request timeout.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// How long to wait for every order to be in PostgreSQL.
    #[arg(long, default_value_t = 60)]
    orders_deadline_secs: u64,
    /// Record a `perf` profile of the server during flash-sale's closed-loop phase into
    /// `<out>/<scenario>-perf.txt` (build the server with symbols for names:
    /// `CARGO_PROFILE_RELEASE_STRIP=none cargo build --release -p flash-sale-local`).
    #[arg(long)]
    perf: bool,
    /// Keep the run's database, Redis keys and queues.
    #[arg(long)]
    keep: bool,
}

#[derive(Args, Clone, Debug)]
struct CleanArgs {
    /// The run id printed at the start of the run (`run 1a2b3c4d`).
    #[arg(long = "run-id", required = true)]
    run_ids: Vec<String>,
    #[command(flatten)]
    services: Services,
}

/// Where the services are: the bench's server gets a database of its own on this
/// PostgreSQL server, and key and queue prefixes of its own.
#[derive(Args, Clone, Debug)]
struct Services {
    /// PostgreSQL; the bench's server gets a database of its own on this server.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/flash_sale"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
}

/// The run's arguments with their per-scenario defaults filled in.
struct Resolved {
    args: RunArgs,
    warmup: u64,
}

impl std::ops::Deref for Resolved {
    type Target = RunArgs;
    fn deref(&self) -> &RunArgs {
        &self.args
    }
}

#[derive(Args, Clone, Debug)]
struct SuiteArgs {
    /// Scenarios, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "seed-7000,seed-idempotent,seed-multi,repeat,mixed,all-win,million"
    )]
    scenarios: Vec<Scenario>,
    #[command(flatten)]
    run: RunArgs,
}

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
        tokio::select! {
            r = dispatch(cli.cmd) => r,
            _ = tokio::signal::ctrl_c() => bail!(
                "interrupted; remove what the run left with `flash-sale-bench clean --run-id <the run id printed above>`"
            ),
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

async fn dispatch(cmd: Cmd) -> anyhow::Result<bool> {
    let (scenario, args) = match cmd {
        Cmd::StubServer { addr } => {
            stub::serve(addr).await?;
            return Ok(true);
        }
        Cmd::Suite(s) => return suite(s).await,
        Cmd::Clean(c) => {
            for id in &c.run_ids {
                let prefix = format!("bench{id}");
                procs::drop_database(&c.services.database_url, &format!("bench_{id}")).await?;
                let mut keys = 0;
                for p in [
                    prefix.clone(),
                    format!("{prefix}ceil"),
                    format!("{prefix}rb"),
                ] {
                    keys += procs::delete_redis_keys(&c.services.redis_url, &p).await?;
                }
                let queues = procs::delete_queues(&c.services.amqp_url, &prefix, 900).await?;
                eprintln!(
                    "run {id}: dropped database bench_{id}, {keys} Redis keys, {queues} queues"
                );
            }
            return Ok(true);
        }
        Cmd::Seed7000(a) => (Scenario::Seed7000, a),
        Cmd::SeedIdempotent(a) => (Scenario::SeedIdempotent, a),
        Cmd::SeedMulti(a) => (Scenario::SeedMulti, a),
        Cmd::Repeat(a) => (Scenario::Repeat, a),
        Cmd::Million(a) => (Scenario::Million, a),
        Cmd::AllWin(a) => (Scenario::AllWin, a),
        Cmd::Mixed(a) => (Scenario::Mixed, a),
        Cmd::Smoke(a) => (Scenario::Smoke, a),
    };
    let report = run(scenario, &args).await?;
    Ok(report.ok)
}

async fn suite(s: SuiteArgs) -> anyhow::Result<bool> {
    let mut reports = Vec::new();
    for &scenario in &s.scenarios {
        reports.push(run(scenario, &s.run).await?);
    }
    let mut md = String::from(
        "| scenario | requests | HTTP ceiling /s | Redis ceiling /s | flash-sale /s | vs HTTP | vs Redis | p50 ms | p99 ms | p99.9 ms | max ms | p99 @ 50% (2nd half) ms | errors | orders in PG after | peak RSS MiB | other load, % of a core | invariants |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n",
    );
    for r in &reports {
        md.push_str(&summary_row(r));
    }
    std::fs::write(s.run.out.join("summary.md"), &md)?;
    println!("\n{md}");
    Ok(reports.iter().all(|r| r.ok))
}

fn summary_row(r: &Report) -> String {
    let rate = |n: &str| {
        r.phase(n)
            .map(|p| format!("{:.0}", p.attempts_per_s))
            .unwrap_or_else(|| "-".into())
    };
    let pct = |x: Option<f64>| {
        x.map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let Some(fs) = r.phase("flash-sale") else {
        return format!("| {} | - |\n", r.scenario);
    };
    let l = &fs.reserve_latency;
    let landed = fs
        .verification
        .as_ref()
        .and_then(|v| v.orders_landed_after_ms)
        .map(|ms| format!("{ms:.0} ms"))
        .unwrap_or_else(|| "not all".into());
    let half = r
        .phase("flash-sale @ 50%")
        .map(|h| {
            let after = h
                .latency_second_half
                .as_ref()
                .map(|l| l.p99_ms)
                .unwrap_or(0.0);
            format!("{:.2} ({after:.2})", h.reserve_latency.p99_ms)
        })
        .unwrap_or_else(|| "-".into());
    // CPU taken by processes outside the run, least and most over the phases: a wide
    // spread means the phases were not measured under the same conditions.
    let others: Vec<f64> = r
        .phases
        .iter()
        .map(|p| {
            p.usage
                .cpu_pct
                .iter()
                .find(|(g, _)| g == "everything else")
                .map(|(_, v)| *v)
                .unwrap_or(0.0)
        })
        .collect();
    let other = format!(
        "{:.0}-{:.0}",
        others.iter().copied().fold(f64::INFINITY, f64::min),
        others.iter().copied().fold(0.0, f64::max)
    );
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {half} | {} | {} | {} | {other} | {} |\n",
        r.scenario,
        fs.attempts,
        rate("http-ceiling"),
        rate("redis-ceiling"),
        rate("flash-sale"),
        pct(r.ratios.vs_http_ceiling),
        pct(r.ratios.vs_redis_ceiling),
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        fs.outcomes.errors + fs.outcomes.pay_failed,
        landed,
        fs.usage
            .server_rss_peak_mib
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into()),
        if r.ok { "hold" } else { "BREACHED" }
    )
}

fn scenario_name(s: Scenario) -> String {
    clap::ValueEnum::to_possible_value(&s)
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| format!("{s:?}"))
}

fn mode_text(drive: &Drive) -> String {
    match drive.rate {
        Some(r) => format!("open loop {r:.0}/s, ≤{} conns", drive.concurrency),
        None => format!("closed loop, {} conns", drive.concurrency),
    }
}

/// A small plan of its own to warm a target up: `n` users once each, 50 seats.
fn warm_plan(plan: &Plan, n: u64) -> Plan {
    Plan {
        capacities: vec![n.clamp(1, 50) as u32],
        users: n.max(1),
        attempts: 1,
        assign: plan::Assign::RoundRobin,
        ..plan.clone()
    }
}

/// Sends the warm-up attempts; they are not measured.
async fn warm_up<T: load::Target>(
    target: &T,
    warm: &Plan,
    ids: &[i64],
    drive: &Drive,
) -> anyhow::Result<()> {
    let d = Drive {
        rate: None,
        label: "warm-up".into(),
        ..drive.clone()
    };
    let r = load::run(target, warm, ids, &d).await?;
    if r.outcomes.errors > 0 {
        eprintln!(
            "   warm-up: {} errors, e.g. {}",
            r.outcomes.errors,
            r.error_examples.first().map(String::as_str).unwrap_or("")
        );
    }
    Ok(())
}

/// Creates the plan's showtimes through the API; their ids by plan index.
async fn create_showtimes(
    endpoint: &Endpoint,
    plan: &Plan,
    label: &str,
) -> anyhow::Result<Vec<i64>> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: i64,
    }
    let mut conn = Conn::new(endpoint.clone(), Duration::from_secs(10));
    let starts_at = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut ids = Vec::with_capacity(plan.capacities.len());
    for (i, &capacity) in plan.capacities.iter().enumerate() {
        let body = serde_json::json!({
            "capacity": capacity,
            "title": format!("bench {label} #{i}"),
            "starts_at": starts_at,
        });
        let a = conn.post_json("/showtimes", &body).await?;
        if a.status != hyper::StatusCode::CREATED {
            bail!(
                "POST /showtimes answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        ids.push(a.json::<Created>()?.id);
    }
    Ok(ids)
}

/// Runs one scenario against every target and writes its report.
async fn run(scenario: Scenario, args: &RunArgs) -> anyhow::Result<Report> {
    let mut args = args.clone();
    if scenario == Scenario::Smoke {
        // Cheap: no warm-up, no redis-benchmark (the smoke run checks invariants).
        args.warmup.get_or_insert(0);
        args.no_redis_benchmark = true;
    }
    let args = &Resolved {
        warmup: args.warmup.unwrap_or(1000),
        args,
    };
    let overrides = Overrides {
        users: args.users,
        attempts: args.attempts,
        capacity: args.capacity,
        showtimes: args.showtimes,
        hot: args.hot,
        hot_capacity: args.hot_capacity,
        pay: Some(args.pay),
    };
    let plan = Plan::new(scenario, &overrides);
    let name = scenario_name(scenario);
    let concurrency = args
        .concurrency
        .unwrap_or(scenario.default_concurrency())
        .max(1);
    let drive = Drive {
        concurrency,
        rate: args.rate,
        pay: plan.pay == PayMode::Bench,
        label: String::new(),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let prefix = format!("bench{run_id}");
    eprintln!(
        "== {name}: {} ({}, run {run_id})",
        plan.describe(),
        mode_text(&drive)
    );

    let mut report = Report {
        scenario: name.clone(),
        plan: plan.clone(),
        plan_text: plan.describe(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        revision: report::revision(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: Machine::read(),
        concurrency,
        rate: args.rate,
        phases: Vec::new(),
        ratios: Default::default(),
        redis_benchmark: None,
        ok: true,
        notes: Vec::new(),
    };

    // 1. The HTTP ceiling.
    if !args.no_http_ceiling {
        let stub = Server::start_stub().await?;
        let target = HttpTarget {
            endpoint: stub.endpoint.clone(),
            timeout,
        };
        if args.warmup > 0 {
            let warm = warm_plan(&plan, args.warmup);
            let ids = create_showtimes(&target.endpoint, &warm, "warm-up").await?;
            warm_up(&target, &warm, &ids, &drive).await?;
        }
        let ids = create_showtimes(&target.endpoint, &plan, "ceiling").await?;
        let d = Drive {
            label: "http ceiling".into(),
            ..drive.clone()
        };
        let monitor = Monitor::start(Some(stub.pid));
        let r = load::run(&target, &plan, &ids, &d).await?;
        let usage = monitor.finish().await;
        stub.stop().await;
        let p = PhaseReport::new("http-ceiling", mode_text(&d), &r, usage, d.rate);
        eprintln!("   http-ceiling: {:.0} attempts/s", p.attempts_per_s);
        report.phases.push(p);
    }

    // 2. The Redis ceiling.
    if !args.no_redis_ceiling {
        let ceil_prefix = format!("{prefix}ceil");
        let r = redis_ceiling(&plan, &drive, args, &ceil_prefix).await;
        if let Err(e) = procs::delete_redis_keys(&args.services.redis_url, &ceil_prefix).await {
            report
                .notes
                .push(format!("could not delete the Redis ceiling's keys: {e:#}"));
        }
        let p = r?;
        eprintln!("   redis-ceiling: {:.0} attempts/s", p.attempts_per_s);
        report.phases.push(p);
    }
    if !args.no_redis_benchmark {
        let rb_prefix = format!("{prefix}rb");
        match redis_benchmark(
            &plan,
            concurrency,
            &args.services.redis_url,
            &rb_prefix,
            args.hold_secs,
        )
        .await
        {
            Ok(Some(rb)) => {
                eprintln!("   redis-benchmark: {:.0} EVALSHA/s", rb.rps);
                report.redis_benchmark = Some(rb);
            }
            Ok(None) => {}
            Err(e) => report.notes.push(format!("redis-benchmark failed: {e:#}")),
        }
        let _ = procs::delete_redis_keys(&args.services.redis_url, &rb_prefix).await;
    }

    // 3. flash-sale.
    let db_name = format!("bench_{run_id}");
    let (server, endpoint, db_url) = match &args.url {
        Some(url) => (
            None,
            Endpoint::parse(url)?,
            args.services.database_url.clone(),
        ),
        None => {
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .map(|d| d.join("flash-sale"))
                    .unwrap_or_else(|| PathBuf::from("flash-sale")),
            };
            let db_url = procs::with_database(&args.services.database_url, &db_name);
            let payment = if plan.pay == PayMode::Mock {
                "mock"
            } else {
                "manual"
            };
            let env = vec![
                ("DATABASE_URL".to_string(), db_url.clone()),
                ("REDIS_URL".to_string(), args.services.redis_url.clone()),
                ("AMQP_URL".to_string(), args.services.amqp_url.clone()),
                ("HOLD_TTL_SECS".to_string(), args.hold_secs.to_string()),
                ("PAYMENT_MODE".to_string(), payment.to_string()),
                (
                    "MOCK_PAY_DELAY_MS".to_string(),
                    args.mock_pay_delay_ms.clone(),
                ),
                ("REDIS_KEY_PREFIX".to_string(), prefix.clone()),
                ("QUEUE_PREFIX".to_string(), prefix.clone()),
            ];
            let log = args.out.join(format!("{name}-server.log"));
            let s = Server::start_flash_sale(&bin, &env, log).await?;
            let e = s.endpoint.clone();
            (Some(s), e, db_url)
        }
    };
    let server_pid = server.as_ref().map(|s| s.pid).or(args.server_pid);
    // A kept run keeps its expiries: only a run cleaned afterwards drains them to check.
    let delay_queue = (server.is_some() && !args.keep).then(|| verify::DelayQueue {
        amqp_url: args.services.amqp_url.clone(),
        name: format!("{prefix}.expiries.delay.{}s", args.hold_secs),
    });
    let outcome = flash_sale_phases(
        &plan,
        &drive,
        args,
        &endpoint,
        &db_url,
        Observed {
            pid: server_pid,
            delay_queue: delay_queue.as_ref(),
        },
        &mut report,
    )
    .await;

    // Clean up whatever happened.
    if let Some(s) = server {
        s.stop().await;
        if !args.keep {
            if let Err(e) = cleanup(args, &db_name, &prefix).await {
                report.notes.push(format!("clean-up incomplete: {e:#}"));
            }
        } else {
            report.notes.push(format!(
                "kept database {db_name}, Redis keys {prefix}:*, queues {prefix}.*"
            ));
        }
    }
    outcome?;

    report.compute_ratios();
    write_report(&report, &args.out, &name)?;
    Ok(report)
}

/// What the bench can see of the flash-sale server besides its answers.
struct Observed<'a> {
    /// Its process, for memory and CPU (and `perf`).
    pid: Option<u32>,
    /// Its delay queue, when the bench started it and cleans up after it.
    delay_queue: Option<&'a verify::DelayQueue>,
}

async fn flash_sale_phases(
    plan: &Plan,
    drive: &Drive,
    args: &Resolved,
    endpoint: &Endpoint,
    db_url: &str,
    server: Observed<'_>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Observed {
        pid: server_pid,
        delay_queue,
    } = server;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(db_url)
        .await
        .with_context(|| format!("cannot connect to {db_url} to verify the orders"))?;
    let target = HttpTarget {
        endpoint: endpoint.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let deadline = Duration::from_secs(args.orders_deadline_secs);
    if args.warmup > 0 {
        let warm = warm_plan(plan, args.warmup);
        let ids = create_showtimes(endpoint, &warm, "warm-up").await?;
        warm_up(&target, &warm, &ids, drive).await?;
        // Let the warm-up's payments and orders settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut passes = vec![("flash-sale".to_string(), drive.clone())];
    if args.half_rate {
        passes.push(("flash-sale @ 50%".to_string(), drive.clone()));
    }
    for (i, (name, mut d)) in passes.into_iter().enumerate() {
        if i == 1 {
            let peak = report
                .phase("flash-sale")
                .map(|p| p.attempts_per_s)
                .unwrap_or(1.0);
            d.rate = Some((peak / 2.0).max(1.0));
        }
        d.label = name.clone();
        let ids = create_showtimes(endpoint, plan, &name).await?;
        let perf = match (args.perf && i == 0, server_pid) {
            (true, Some(pid)) => {
                let data = args.out.join(format!("{}.perf.data", report.scenario));
                Some(procs::Perf::start(pid, data).await?)
            }
            _ => None,
        };
        let monitor = Monitor::start(server_pid);
        let r = load::run(&target, plan, &ids, &d).await?;
        let usage: Usage = monitor.finish().await;
        if let Some(perf) = perf {
            let file = args.out.join(format!("{}-perf.txt", report.scenario));
            match perf.finish(&file).await {
                Ok(()) => report
                    .notes
                    .push(format!("perf profile of the server: {}", file.display())),
                Err(e) => report.notes.push(format!("perf failed: {e:#}")),
            }
        }
        let mut p = PhaseReport::new(&name, mode_text(&d), &r, usage, d.rate);
        eprintln!(
            "   {name}: {:.0} attempts/s, p99 {:.2} ms; verifying...",
            p.attempts_per_s, p.reserve_latency.p99_ms
        );
        let mut v = verify::verify(plan, &ids, &r, endpoint, &db, deadline).await?;
        if let Some(queue) = delay_queue {
            v.checks
                .push(verify::expiries_confirmed(queue, &r, deadline).await?);
        }
        if let Some(ms) = v.orders_landed_after_ms {
            eprintln!("   every order in PostgreSQL {ms:.0} ms after the last answer");
        }
        for c in v.checks.iter().filter(|c| !c.ok) {
            eprintln!("   BREACH: {}: {}", c.name, c.detail);
        }
        p.verification = Some(v);
        report.phases.push(p);
    }
    db.close().await;
    Ok(())
}

async fn redis_ceiling(
    plan: &Plan,
    drive: &Drive,
    args: &Resolved,
    prefix: &str,
) -> anyhow::Result<PhaseReport> {
    let client = redis::Client::open(args.services.redis_url.as_str())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("Redis (--redis-url) is not reachable")?;
    let ids: Vec<i64> = (1..=plan.capacities.len() as i64).collect();
    let warm = warm_plan(plan, args.warmup);
    let warm_id = ids.len() as i64 + 1;
    let seats = plan
        .capacities
        .iter()
        .zip(&ids)
        .chain([(&warm.capacities[0], &warm_id)]);
    for (&c, id) in seats {
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}:{{{id}}}:seats"))
            .arg(&[("capacity", c), ("available", c), ("held", 0), ("sold", 0)])
            .query_async(&mut conn)
            .await?;
    }
    let target = RedisTarget::new(conn, prefix.to_string(), args.hold_secs * 1000);
    if args.warmup > 0 {
        warm_up(&target, &warm, &[warm_id], drive).await?;
    }
    let d = Drive {
        label: "redis ceiling".into(),
        ..drive.clone()
    };
    let monitor = Monitor::start(None);
    let r = load::run(&target, plan, &ids, &d).await?;
    let usage = monitor.finish().await;
    Ok(PhaseReport::new(
        "redis-ceiling",
        mode_text(&d),
        &r,
        usage,
        d.rate,
    ))
}

/// The reserve script by SHA from `redis-benchmark` (C client, no Rust in the loop), on
/// the plan's first showtime, as many requests, the same concurrency, random users among
/// as many as the plan has. `None` when redis-benchmark is not installed.
async fn redis_benchmark(
    plan: &Plan,
    concurrency: usize,
    redis_url: &str,
    prefix: &str,
    hold_secs: u64,
) -> anyhow::Result<Option<report::RedisBenchmark>> {
    let Some(hostport) = redis_url
        .strip_prefix("redis://")
        .map(|r| r.split('/').next().unwrap_or_default())
        .filter(|h| !h.contains('@'))
    else {
        return Ok(None);
    };
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "6379"));
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(include_str!("../../lua/reserve.lua"))
        .query_async(&mut conn)
        .await?;
    let c = plan.capacities[0];
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{{1}}:seats"))
        .arg(&[("capacity", c), ("available", c), ("held", 0), ("sold", 0)])
        .query_async(&mut conn)
        .await?;
    let key = |k: &str| format!("{prefix}:{{1}}:{k}");
    let out = match tokio::process::Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "--csv"])
        .args(["-n", &plan.total().to_string()])
        .args(["-c", &concurrency.to_string()])
        .args(["-r", &plan.users.to_string()])
        .args(["EVALSHA", &sha, "4"])
        .args([key("seats"), key("users"), key("seq"), key("deadlines")])
        .args([
            "__rand_int__".to_string(),
            (hold_secs * 1000).to_string(),
            key("r:"),
        ])
        .output()
        .await
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("\"EVALSHA"))
        .ok_or_else(|| anyhow::anyhow!("unexpected redis-benchmark output: {text}"))?;
    let cols: Vec<f64> = row
        .rsplitn(8, ',')
        .take(7)
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .collect();
    // rsplitn yields the columns backwards: max, p99, p95, p50, min, avg, rps.
    if cols.len() != 7 {
        bail!("unexpected redis-benchmark row: {row}");
    }
    Ok(Some(report::RedisBenchmark {
        requests: plan.total(),
        concurrency,
        rps: cols[6],
        p50_ms: cols[3],
        p99_ms: cols[1],
        max_ms: cols[0],
    }))
}

async fn cleanup(args: &RunArgs, db_name: &str, prefix: &str) -> anyhow::Result<()> {
    procs::drop_database(&args.services.database_url, db_name)
        .await
        .context("dropping the database")?;
    procs::delete_redis_keys(&args.services.redis_url, prefix)
        .await
        .context("deleting the Redis keys")?;
    procs::delete_queues(&args.services.amqp_url, prefix, args.hold_secs)
        .await
        .context("deleting the queues")?;
    Ok(())
}

fn write_report(report: &Report, out: &Path, name: &str) -> anyhow::Result<()> {
    let svg = format!("{name}.svg");
    let phases: Vec<(String, Vec<chart::Point>)> = report
        .phases
        .iter()
        .map(|p| (p.name.clone(), p.series.clone()))
        .collect();
    let chart_ok = match chart::draw(
        &out.join(&svg),
        &format!("flash-sale-bench {name}"),
        &phases,
    ) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("   could not draw the chart: {e:#}");
            false
        }
    };
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_vec_pretty(report)?,
    )?;
    let md = report.markdown(chart_ok.then_some(svg.as_str()));
    std::fs::write(out.join(format!("{name}.md")), &md)?;
    println!("{md}");
    eprintln!("   report: {}", out.join(format!("{name}.md")).display());
    Ok(())
}
