//! Running one scenario: the ceilings, then flash-sale (started here, or already running
//! at `--url`), the verification of every phase, the wrk round (`seed-7000`, `repeat`,
//! `million`), the report, and the clean-up of what the run created (also the `clean`
//! command, for what an interrupted run left).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::ceilings;
use crate::chart;
use crate::cli::{CleanArgs, DEFAULT_HOLD_SECS, RunArgs};
use crate::client::{Conn, Endpoint};
use crate::load::{self, Drive, HttpTarget};
use crate::plan::{self, Overrides, PayMode, Plan, Scenario};
use crate::procs::{self, Monitor, Server, Usage};
use crate::report::{self, Machine, PhaseReport, Report};
use crate::room::{self, HeadStart, RoomDrive, RoomRun};
use crate::server_view;
use crate::verify;
use crate::wrk;

/// The open-loop phase at half of the closed loop's peak (`--half-rate`).
pub(crate) const HALF_RATE_PHASE: &str = "flash-sale @ 50%";
/// The crowd through the waiting room (`million-queued`), at the half-rate phase's rate.
pub(crate) const ROOM_PHASE: &str = "flash-sale through the room";

/// A run's arguments with their per-scenario defaults filled in.
pub(crate) struct RunSettings {
    /// The command line, with the smoke run's cheap choices applied.
    pub(crate) args: RunArgs,
    /// Warm-up attempts for each target (`--warmup`, or the scenario's default).
    pub(crate) warmup: u64,
}

impl RunSettings {
    pub(crate) fn new(scenario: Scenario, args: &RunArgs) -> Self {
        let mut args = args.clone();
        if scenario == Scenario::Smoke {
            // Cheap: no warm-up, no redis-benchmark (the smoke run checks invariants).
            args.warmup.get_or_insert(0);
            args.no_redis_benchmark = true;
        }
        if scenario == Scenario::MillionQueued {
            // The room is compared with million at half its peak: that phase always runs.
            args.half_rate = true;
        }
        Self {
            warmup: args.warmup.unwrap_or(1000),
            args,
        }
    }
}

/// Runs one scenario against every target and writes its report.
pub(crate) async fn run(scenario: Scenario, args: &RunArgs) -> anyhow::Result<Report> {
    let settings = &RunSettings::new(scenario, args);
    let args = &settings.args;
    let plan = plan_of(scenario, args);
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
        room: None,
        wrk: None,
        ok: true,
        notes: Vec::new(),
    };

    // 1. The HTTP ceiling.
    if !args.no_http_ceiling {
        let p = ceilings::http_ceiling(&plan, &drive, settings).await?;
        eprintln!("   http-ceiling: {:.0} attempts/s", p.attempts_per_s);
        report.phases.push(p);
    }

    // 2. The nginx ceiling.
    if !args.no_nginx_ceiling {
        match procs::nginx_bin(args.nginx.as_deref()) {
            Some(bin) => {
                let log = args.out.join(format!("{name}-nginx.log"));
                let p = ceilings::nginx_ceiling(&bin, &plan, &drive, settings, log).await?;
                eprintln!("   nginx-ceiling: {:.0} attempts/s", p.attempts_per_s);
                report.phases.push(p);
                report.notes.push(
                    "the nginx ceiling answers every reserve 409 sold_out (one worker, no holds): the C ceiling of flash-sale's cheapest answer".into(),
                );
            }
            None => report.notes.push(
                "nginx is not installed (not on PATH, /usr/sbin or /sbin; --nginx names it): no nginx ceiling".into(),
            ),
        }
    }

    // 3. The Redis ceiling.
    if !args.no_redis_ceiling {
        let ceil_prefix = format!("{prefix}ceil");
        let r = ceilings::redis_ceiling(&plan, &drive, settings, &ceil_prefix).await;
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
        match ceilings::redis_benchmark(
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

    // 4. flash-sale.
    let db_name = format!("bench_{run_id}");
    let (server, endpoint, db_url) = match &args.url {
        Some(url) => (
            None,
            Endpoint::parse(url)?,
            args.services.database_url.clone(),
        ),
        None => {
            let bin = procs::server_bin(args.server_bin.as_deref())?;
            let db_url = procs::with_database(&args.services.database_url, &db_name);
            let env = server_env(args, &plan, &db_url, &args.services.redis_url, &prefix);
            let log = args.out.join(format!("{name}-server.log"));
            let s = Server::start_flash_sale(&bin, &env, log).await?;
            let e = s.endpoint.clone();
            (Some(s), e, db_url)
        }
    };
    let server_pid = server.as_ref().map(|s| s.pid).or(args.server_pid);
    let topology = procs::topology(&prefix, args.hold_secs);
    // A kept run keeps its expiries: only a run cleaned afterwards drains them to check.
    let delay_queue = (server.is_some() && !args.keep).then(|| verify::DelayQueue {
        amqp_url: args.services.amqp_url.clone(),
        name: topology.delay_queue(),
    });
    let outcome = flash_sale_phases(
        &plan,
        &drive,
        settings,
        &endpoint,
        &db_url,
        Observed {
            pid: server_pid,
            delay_queue: delay_queue.as_ref(),
        },
        &mut report,
    )
    .await;

    // 5. The wrk round, on the same server, before it stops.
    if outcome.is_ok() && !args.no_wrk && wrk::applies(scenario) {
        let mut notes = Vec::new();
        match wrk::round(
            &endpoint,
            &plan,
            concurrency,
            settings,
            args.out.join(format!("{name}-wrk-nginx.log")),
            &mut notes,
        )
        .await
        {
            Ok(w) => report.wrk = w,
            Err(e) => notes.push(format!("the wrk round failed: {e:#}")),
        }
        report.notes.extend(notes);
    }

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

/// The plan of `scenario` with the command line's sizes and payment.
pub(crate) fn plan_of(scenario: Scenario, args: &RunArgs) -> Plan {
    let overrides = Overrides {
        users: args.users,
        attempts: args.attempts,
        capacity: args.capacity,
        showtimes: args.showtimes,
        hot: args.hot,
        hot_capacity: args.hot_capacity,
        pay: Some(args.pay),
    };
    Plan::new(scenario, &overrides)
}

/// The environment of a flash-sale process the bench starts: the run's own database
/// (`db_url`), Redis key prefix and queue prefix (`prefix`), on `redis_url`.
pub(crate) fn server_env(
    args: &RunArgs,
    plan: &Plan,
    db_url: &str,
    redis_url: &str,
    prefix: &str,
) -> Vec<(String, String)> {
    let payment = if plan.pay == PayMode::Mock {
        "mock"
    } else {
        "manual"
    };
    [
        ("DATABASE_URL", db_url),
        ("REDIS_URL", redis_url),
        ("AMQP_URL", &args.services.amqp_url),
        ("HOLD_TTL_SECS", &args.hold_secs.to_string()),
        ("PAYMENT_MODE", payment),
        ("MOCK_PAY_DELAY_MS", &args.mock_pay_delay_ms),
        ("REDIS_KEY_PREFIX", prefix),
        ("QUEUE_PREFIX", prefix),
        ("RUST_LOG", &args.server_log),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(
        [
            ("WAITING_ROOM_POLLS_PER_SEC", args.room.polls_per_sec),
            ("WAITING_ROOM_HOLDS_PER_SEC", args.room.holds_per_sec),
        ]
        .into_iter()
        .filter_map(|(name, n)| Some((name.to_string(), n?.to_string()))),
    )
    .collect()
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
    settings: &RunSettings,
    endpoint: &Endpoint,
    db_url: &str,
    server: Observed<'_>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Observed {
        pid: server_pid,
        delay_queue,
    } = server;
    let args = &settings.args;
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
    if settings.warmup > 0 {
        let warm = warm_plan(plan, settings.warmup);
        let ids = create_showtimes(endpoint, &warm, "warm-up").await?;
        warm_up(&target, &warm, &ids, drive).await?;
        // Let the warm-up's payments and orders settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut passes = vec![("flash-sale".to_string(), drive.clone())];
    if args.half_rate {
        passes.push((HALF_RATE_PHASE.to_string(), drive.clone()));
    }
    let queued = plan.scenario == Scenario::MillionQueued;
    let head_start = plan.head_start(args.room.head_start_pct);
    let mut half_rate = None;
    for (i, (name, mut d)) in passes.into_iter().enumerate() {
        if i == 1 {
            let peak = report
                .phase("flash-sale")
                .map(|p| p.attempts_per_s)
                .unwrap_or(1.0);
            d.rate = Some((peak / 2.0).max(1.0));
            half_rate = d.rate;
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
        let scraper = server_view::Scraper::start(endpoint).await;
        let r = load::run(&target, plan, &ids, &d).await?;
        let readings = scraper.finish().await;
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
        if queued {
            p.head_start = Some(HeadStart::of(&r.won, head_start));
        }
        if let Some(counted) = server_view::counted(&readings) {
            p.series = chart::series(&r.samples, p.duration_s, Some((&readings, r.started)));
            eprintln!(
                "   the server counted {} reservation answers and {} holds (the client saw {} and {})",
                counted.answered, counted.reserved, r.attempts, r.outcomes.reserved
            );
            p.server_counted = Some(counted);
        }
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
    if queued {
        let rate = match args.room.join_rate {
            Some(r) => r,
            None => half_rate.context("the half-rate phase runs before the room")?,
        };
        let drive = RoomDrive {
            rate,
            concurrency: drive.concurrency,
            timeout: target.timeout,
            pay: drive.pay,
            head_start,
            room: args.room.clone(),
        };
        room_phase(
            plan,
            &drive,
            endpoint,
            &db,
            Observed {
                pid: server_pid,
                delay_queue,
            },
            deadline,
            report,
        )
        .await?;
    }
    db.close().await;
    Ok(())
}

/// The crowd through the waiting room, verified like every flash-sale phase, and the
/// room's own checks.
async fn room_phase(
    plan: &Plan,
    drive: &RoomDrive,
    endpoint: &Endpoint,
    db: &sqlx::PgPool,
    server: Observed<'_>,
    deadline: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("   {}", drive.describe());
    let monitor = Monitor::start(server.pid);
    let scraper = server_view::Scraper::start(endpoint).await;
    let run = room::run(endpoint, plan, drive).await?;
    let readings = scraper.finish().await;
    let usage: Usage = monitor.finish().await;
    let RoomRun {
        phase: r,
        ids,
        mut summary,
        used_admissions,
    } = run;
    for used in &used_admissions {
        summary
            .probes
            .push(room::probe_used_admission(endpoint, used).await?);
    }
    let mut p = PhaseReport::new(ROOM_PHASE, drive.describe(), &r, usage, None);
    p.head_start = Some(summary.head_start.clone());
    if let Some(counted) = server_view::counted(&readings) {
        p.series = chart::series(&r.samples, p.duration_s, Some((&readings, r.started)));
        eprintln!(
            "   the server counted {} reservation answers and {} holds (the client sent {} reserves and got {} holds)",
            counted.answered, counted.reserved, summary.reserves, r.outcomes.reserved
        );
        p.server_counted = Some(counted);
    }
    eprintln!(
        "   {ROOM_PHASE}: {} requests ({} joins, {} polls, {} reserves) in {:.2} s, p99 of every answer {:.2} ms; sold out {} after the opening; head start {} of {} seats; verifying...",
        r.attempts,
        summary.joins,
        summary.polls,
        summary.reserves,
        p.duration_s,
        summary.latency_all.p99_ms,
        summary
            .sold_out_after_opening_s
            .map_or_else(|| "never".into(), |t| format!("{t:.2} s")),
        summary.head_start.seats,
        summary.head_start.of_seats
    );
    let mut v = verify::verify(plan, &ids, &r, endpoint, db, deadline).await?;
    if let Some(queue) = server.delay_queue {
        v.checks
            .push(verify::expiries_confirmed(queue, &r, deadline).await?);
    }
    for c in v.checks.iter().chain(&summary.probes).filter(|c| !c.ok) {
        eprintln!("   BREACH: {}: {}", c.name, c.detail);
    }
    p.verification = Some(v);
    report.phases.push(p);
    report.room = Some(summary);
    Ok(())
}

pub(crate) fn scenario_name(s: Scenario) -> String {
    clap::ValueEnum::to_possible_value(&s)
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| format!("{s:?}"))
}

pub(crate) fn mode_text(drive: &Drive) -> String {
    match drive.rate {
        Some(r) => format!("open loop {r:.0}/s, ≤{} conns", drive.concurrency),
        None => format!("closed loop, {} conns", drive.concurrency),
    }
}

/// A small plan of its own to warm a target up: `n` users once each, 50 seats.
pub(crate) fn warm_plan(plan: &Plan, n: u64) -> Plan {
    Plan {
        capacities: vec![n.clamp(1, 50) as u32],
        users: n.max(1),
        attempts: 1,
        assign: plan::Assign::RoundRobin,
        ..plan.clone()
    }
}

/// Sends the warm-up attempts; they are not measured.
pub(crate) async fn warm_up<T: load::Target>(
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
pub(crate) async fn create_showtimes(
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

/// Removes the run's database, Redis keys and queues.
pub(crate) async fn cleanup(args: &RunArgs, db_name: &str, prefix: &str) -> anyhow::Result<()> {
    procs::drop_database(&args.services.database_url, db_name)
        .await
        .context("dropping the database")?;
    procs::delete_redis_keys(&args.services.redis_url, prefix)
        .await
        .context("deleting the Redis keys")?;
    procs::delete_queues(
        &args.services.amqp_url,
        &procs::topology(prefix, args.hold_secs),
    )
    .await
    .context("deleting the queues")?;
    Ok(())
}

/// The `clean` command: removes what interrupted runs left, by run id.
pub(crate) async fn clean(c: &CleanArgs) -> anyhow::Result<()> {
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
        let topology = procs::topology(&prefix, DEFAULT_HOLD_SECS);
        let queues = procs::delete_queues(&c.services.amqp_url, &topology).await?;
        eprintln!("run {id}: dropped database bench_{id}, {keys} Redis keys, {queues} queues");
    }
    Ok(())
}

/// Writes the report as JSON, Markdown and an SVG chart into `out`, and prints the
/// Markdown.
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
