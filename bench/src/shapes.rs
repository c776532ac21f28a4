//! `shapes`: one scenario (default `mixed`, many showtimes) on the three shapes flash-sale
//! runs in, measured in one run with the same load generator, buyers and concurrency:
//!
//! 1. one process on one Redis node (`--redis-url`, the local one);
//! 2. nginx (the shipped `ops/nginx.conf`, rewritten as `scripts/run --processes N` does)
//!    in front of N processes (default 3) on that same node;
//! 3. nginx in front of N processes on a local Redis Cluster of six nodes (three masters,
//!    a replica each), started here with `scripts/redis-cluster` on ports of its own and
//!    stopped afterwards, also on an error or Ctrl-C.
//!
//! Each shape is a system of its own, isolated as the bench isolates any run: a database,
//! a Redis key prefix and a queue prefix, shared by its processes. Each round runs every
//! shape once on fresh showtimes, the order rotated from one round to the next so that no
//! shape always goes first. Only the measured shape's processes run: they are started
//! (on the shape's database and prefixes, every round the same), warmed up, measured and
//! stopped, because seven processes with a pool of 16 PostgreSQL connections each would
//! exceed PostgreSQL's default `max_connections` of 100; the cluster stays up throughout.
//! Every phase is verified as the scenarios verify theirs (`verify`). The report gives each
//! shape's median throughput and latency as ratios to the first shape's, the cluster's
//! cost over the same front on one node, and how the script calls spread over the
//! cluster's masters: `INFO commandstats` (EVALSHA and EVAL calls) of each node read
//! before and after each phase.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use sqlx::PgPool;

use crate::chart;
use crate::cli::{RunArgs, ShapesArgs};
use crate::client::Endpoint;
use crate::load::{self, Drive, HttpTarget};
use crate::plan::{self, PayMode, Plan, Scenario};
use crate::procs::{self, Monitor, Nginx, RedisCluster, Server};
use crate::report::{self, Machine, PhaseReport};
use crate::run::{self, RunSettings};
use crate::server_view::{self, ServerCounted};
use crate::verify;

/// The three shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    /// One process on one Redis node.
    Single,
    /// nginx in front of several processes on one Redis node.
    Front,
    /// nginx in front of several processes on a Redis Cluster.
    Cluster,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Single => "single",
            Kind::Front => "front",
            Kind::Cluster => "cluster",
        }
    }

    fn describe(self, processes: usize) -> String {
        match self {
            Kind::Single => "1 process, 1 Redis node".to_string(),
            Kind::Front => format!("nginx + {processes} processes, 1 Redis node"),
            Kind::Cluster => format!("nginx + {processes} processes, Redis Cluster"),
        }
    }
}

/// A Redis node the shape's scripts run on: the single node, or one master.
#[derive(Debug, Clone)]
struct Node {
    /// `127.0.0.1:7200`, or the single node's URL.
    name: String,
    url: String,
    /// A master's slot ranges (empty for a single node).
    slots: Vec<(u16, u16)>,
}

impl Node {
    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }

    fn slots_text(&self) -> String {
        if self.slots.is_empty() {
            return "all".to_string();
        }
        self.slots
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One shape: its own database and prefixes, and, while it is measured, its processes
/// and its front.
struct Shape {
    kind: Kind,
    name: String,
    run_id: String,
    prefix: String,
    db_name: String,
    db_url: String,
    processes: usize,
    /// The processes' environment.
    env: Vec<(String, String)>,
    /// nginx and the configuration it rewrites, for a shape behind nginx.
    front: Option<(PathBuf, PathBuf)>,
    servers: Vec<Server>,
    nginx: Option<Nginx>,
    db: Option<PgPool>,
    delay_queue: verify::DelayQueue,
    nodes: Vec<Node>,
}

impl Shape {
    /// Where the buyers go: nginx, or the one process.
    fn front(&self) -> anyhow::Result<&Endpoint> {
        match (&self.nginx, self.servers.first()) {
            (Some(n), _) => Ok(&n.endpoint),
            (None, Some(s)) => Ok(&s.endpoint),
            (None, None) => Err(anyhow!("shape {} has no process", self.name)),
        }
    }
}

/// Everything the run started, stopped and removed by [`Stack::teardown`] whatever
/// happened.
#[derive(Default)]
struct Stack {
    shapes: Vec<Shape>,
    cluster: Option<RedisCluster>,
    /// The cluster's replicas, whose CPU is accounted apart (`redis replicas`).
    replicas: Vec<(u32, &'static str)>,
    /// nginx's configurations and the cluster's nodes.
    dir: Option<PathBuf>,
}

/// The script calls one node ran during one phase, and what it holds of the phase.
#[derive(Debug, Clone, Default, Serialize)]
struct NodeCalls {
    node: String,
    slots: String,
    /// The phase's showtimes whose keys live on this node, and their buyers.
    showtimes: u64,
    buyers: u64,
    evalsha: u64,
    eval: u64,
}

/// One shape in one round.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    /// Index into the report's shapes.
    shape: usize,
    round: usize,
    phase: PhaseReport,
    script_calls: Vec<NodeCalls>,
}

#[derive(Debug, Clone, Serialize)]
struct ShapeInfo {
    kind: Kind,
    name: String,
    processes: usize,
    run_id: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
struct ShapesReport {
    scenario: String,
    plan: Plan,
    plan_text: String,
    command: String,
    revision: String,
    started_at: String,
    machine: Machine,
    concurrency: usize,
    rate: Option<f64>,
    rounds: usize,
    shapes: Vec<ShapeInfo>,
    measured: Vec<Measured>,
    ok: bool,
    notes: Vec<String>,
}

/// Runs the shapes, writes and prints the report; whether every invariant held.
pub(crate) async fn shapes(a: ShapesArgs) -> anyhow::Result<bool> {
    let r = &a.run;
    if r.url.is_some() || r.server_pid.is_some() || r.half_rate || r.perf {
        bail!(
            "shapes starts every process itself and measures each shape once a round: --url, --server-pid, --half-rate and --perf do not apply"
        );
    }
    if a.scenario == Scenario::MillionQueued {
        bail!(
            "million-queued runs on one process only: run it as `flash-sale-bench million-queued`"
        );
    }
    if a.processes == 0 || a.rounds == 0 {
        bail!("--processes and --rounds must be at least 1");
    }
    let mut stack = Stack::default();
    // Ctrl-C here, not in main: what the run started is stopped and removed either way.
    let result = tokio::select! {
        r = measure(&a, &mut stack) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let notes = stack.teardown(&a.run).await;
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            for n in &notes {
                eprintln!("   {n}");
            }
            return Err(e);
        }
    };
    report.notes.extend(notes);
    write_report(&report, &a.run.out)?;
    Ok(report.ok)
}

async fn measure(a: &ShapesArgs, stack: &mut Stack) -> anyhow::Result<ShapesReport> {
    let settings = &RunSettings::new(a.scenario, &a.run);
    let args = &settings.args;
    let plan = run::plan_of(a.scenario, args);
    let name = run::scenario_name(a.scenario);
    let concurrency = args
        .concurrency
        .unwrap_or(a.scenario.default_concurrency())
        .max(1);
    let drive = Drive {
        concurrency,
        rate: args.rate,
        pay: plan.pay == PayMode::Bench,
        label: String::new(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let bin = procs::server_bin(args.server_bin.as_deref())?;
    let mut notes = Vec::new();
    let nginx = procs::nginx_bin(args.nginx.as_deref());
    if nginx.is_none() {
        let why = "nginx is not installed (not on PATH, /usr/sbin or /sbin; --nginx names it): only shape 1 (one process, one Redis node) is measured";
        eprintln!("   {why}");
        notes.push(why.to_string());
    }
    let dir = std::env::temp_dir().join(format!(
        "flash-sale-bench-shapes-{:08x}",
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    stack.dir = Some(dir.clone());
    eprintln!(
        "== shapes, {name}: {} ({}, {} round(s))",
        plan.describe(),
        run::mode_text(&drive),
        a.rounds
    );
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let machine = Machine::read();

    let start = Start {
        args,
        plan: &plan,
        bin: &bin,
        dir: &dir,
    };
    start
        .shape(stack, Kind::Single, 1, &args.services.redis_url, None)
        .await?;
    if let Some(nginx) = &nginx {
        let template = procs::repo_file("ops/nginx.conf")?;
        let front = Some((nginx.as_path(), template.as_path()));
        start
            .shape(
                stack,
                Kind::Front,
                a.processes,
                &args.services.redis_url,
                front,
            )
            .await?;
        let script = procs::repo_file("scripts/redis-cluster")?;
        eprintln!("   a local Redis Cluster (scripts/redis-cluster start)...");
        let cluster = RedisCluster::start(&script, &dir.join("redis-cluster"), a.cluster_port)
            .await
            .context("starting the Redis Cluster")?;
        let urls = cluster.urls.clone();
        eprintln!("   the cluster's nodes: {urls}");
        stack.replicas = replicas(&urls)
            .await?
            .into_iter()
            .filter_map(|port| Some((cluster.pid(port)?, "redis replicas")))
            .collect();
        stack.cluster = Some(cluster);
        start
            .shape(stack, Kind::Cluster, a.processes, &urls, front)
            .await?;
    }

    let mut measured = Vec::new();
    let n = stack.shapes.len();
    for round in 0..a.rounds {
        for j in 0..n {
            let i = (round + j) % n;
            start
                .up(&mut stack.shapes[i], &drive, settings.warmup)
                .await?;
            let replicas = stack.replicas.clone();
            let shape = &mut stack.shapes[i];
            let m = phase(shape, i, round, &plan, &drive, settings, replicas).await;
            down(shape).await;
            measured.push(m?);
        }
    }
    let ok = measured
        .iter()
        .all(|m| m.phase.verification.as_ref().is_none_or(|v| v.ok()));
    Ok(ShapesReport {
        scenario: name,
        plan_text: plan.describe(),
        plan,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        revision: report::revision(),
        started_at,
        machine,
        concurrency,
        rate: args.rate,
        rounds: a.rounds,
        shapes: stack
            .shapes
            .iter()
            .map(|s| ShapeInfo {
                kind: s.kind,
                name: s.name.clone(),
                processes: s.processes,
                run_id: s.run_id.clone(),
            })
            .collect(),
        measured,
        ok,
        notes,
    })
}

/// What starting a shape needs.
struct Start<'a> {
    args: &'a RunArgs,
    plan: &'a Plan,
    bin: &'a Path,
    dir: &'a Path,
}

impl Start<'_> {
    /// A shape of `processes` processes on `redis_url`, behind nginx when `front` names it
    /// (binary, configuration), with a database and prefixes of its own. Nothing runs yet.
    async fn shape(
        &self,
        stack: &mut Stack,
        kind: Kind,
        processes: usize,
        redis_url: &str,
        front: Option<(&Path, &Path)>,
    ) -> anyhow::Result<()> {
        let args = self.args;
        let run_id = format!("{:08x}", rand::random::<u32>());
        let prefix = format!("bench{run_id}");
        let db_name = format!("bench_{run_id}");
        let db_url = procs::with_database(&args.services.database_url, &db_name);
        let name = kind.describe(processes);
        eprintln!("   shape {}: {name} (run {run_id})", stack.shapes.len() + 1);
        let mut env = run::server_env(args, self.plan, &db_url, redis_url, &prefix);
        if front.is_some() {
            // As scripts/run does behind nginx: the per-address limit sees the buyer.
            env.push(("TRUST_FORWARDED_FOR".to_string(), "true".to_string()));
        }
        let nodes = match kind {
            Kind::Cluster => masters(redis_url).await?,
            _ => vec![Node {
                name: redis_url.to_string(),
                url: redis_url.to_string(),
                slots: Vec::new(),
            }],
        };
        stack.shapes.push(Shape {
            kind,
            name,
            run_id,
            delay_queue: verify::DelayQueue {
                amqp_url: args.services.amqp_url.clone(),
                name: procs::topology(&prefix, args.hold_secs).delay_queue(),
            },
            prefix,
            db_name,
            db_url,
            processes,
            env,
            front: front.map(|(n, t)| (n.to_path_buf(), t.to_path_buf())),
            servers: Vec::new(),
            nginx: None,
            db: None,
            nodes,
        });
        Ok(())
    }

    /// Starts the shape's processes, then nginx in front of them, and warms them up.
    async fn up(&self, shape: &mut Shape, drive: &Drive, warmup: u64) -> anyhow::Result<()> {
        let args = self.args;
        let tag = shape.kind.tag();
        for p in 1..=shape.processes {
            let log = args.out.join(format!("shapes-{tag}-{p}-server.log"));
            let server = Server::start_flash_sale(self.bin, &shape.env, log).await?;
            shape.servers.push(server);
        }
        if let Some((nginx, template)) = &shape.front {
            let upstreams: Vec<_> = shape.servers.iter().map(|s| s.endpoint.addr).collect();
            let log = args.out.join(format!("shapes-{tag}-nginx.log"));
            let dir = self.dir.join(format!("nginx-{tag}"));
            shape.nginx = Some(Nginx::start(nginx, template, &upstreams, &dir, log).await?);
        }
        if shape.db.is_none() {
            shape.db = Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&shape.db_url)
                    .await
                    .with_context(|| {
                        format!("cannot connect to {} to verify the orders", shape.db_url)
                    })?,
            );
        }
        if warmup > 0 {
            // One showtime per planned one, so every process and (on the cluster) every
            // master's connection is warm.
            let warm = Plan {
                capacities: vec![50; self.plan.capacities.len()],
                users: warmup,
                attempts: 1,
                assign: plan::Assign::RoundRobin,
                ..self.plan.clone()
            };
            let front = shape.front()?;
            let ids = run::create_showtimes(front, &warm, "warm-up").await?;
            let target = HttpTarget {
                endpoint: front.clone(),
                timeout: Duration::from_millis(args.timeout_ms),
            };
            let d = Drive {
                label: format!("warm-up {tag}"),
                ..drive.clone()
            };
            run::warm_up(&target, &warm, &ids, &d).await?;
            // Let the warm-up's payments and orders settle.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }
}

/// Stops the shape's nginx and processes (all at once: each drains for a moment before
/// it exits); its database and prefixes stay for its next round.
async fn down(shape: &mut Shape) {
    if let Some(n) = shape.nginx.take() {
        n.stop().await;
    }
    let stopping: Vec<_> = shape
        .servers
        .drain(..)
        .map(|s| tokio::spawn(s.stop()))
        .collect();
    for s in stopping {
        let _ = s.await;
    }
}

/// One shape, one round: fresh showtimes, the load, the verification, the script calls.
async fn phase(
    shape: &Shape,
    index: usize,
    round: usize,
    plan: &Plan,
    drive: &Drive,
    settings: &RunSettings,
    replicas: Vec<(u32, &'static str)>,
) -> anyhow::Result<Measured> {
    let args = &settings.args;
    let front = shape.front()?;
    let label = format!("{} {}, round {}", index + 1, shape.kind.tag(), round + 1);
    let ids = run::create_showtimes(front, plan, &label).await?;
    let before = script_calls(&shape.nodes).await?;
    let d = Drive {
        label: label.clone(),
        ..drive.clone()
    };
    let target = HttpTarget {
        endpoint: front.clone(),
        timeout: Duration::from_millis(args.timeout_ms),
    };
    let monitor = Monitor::start_many(shape.servers.iter().map(|s| s.pid).collect(), replicas);
    // Each process's own counters (through nginx, each reading would be another's).
    let mut scrapers = Vec::new();
    for s in &shape.servers {
        scrapers.push(server_view::Scraper::start(&s.endpoint).await);
    }
    let r = load::run(&target, plan, &ids, &d).await?;
    let mut counted = Some(ServerCounted::default());
    for s in scrapers {
        let readings = s.finish().await;
        counted = match (counted, server_view::counted(&readings)) {
            (Some(sum), Some(c)) => Some(ServerCounted {
                reserved: sum.reserved + c.reserved,
                answered: sum.answered + c.answered,
                readings: sum.readings + c.readings,
            }),
            _ => None,
        };
    }
    let usage = monitor.finish().await;
    let mut p = PhaseReport::new(&shape.name, run::mode_text(&d), &r, usage, d.rate);
    if let Some(c) = &counted {
        eprintln!(
            "   the processes counted {} reservation answers and {} holds (the client saw {} and {})",
            c.answered, c.reserved, r.attempts, r.outcomes.reserved
        );
    }
    p.server_counted = counted;
    eprintln!(
        "   {label}: {:.0} attempts/s, p50 {:.2} ms, p99 {:.2} ms; verifying...",
        p.attempts_per_s, p.reserve_latency.p50_ms, p.reserve_latency.p99_ms
    );
    let deadline = Duration::from_secs(args.orders_deadline_secs);
    let db = shape
        .db
        .as_ref()
        .ok_or_else(|| anyhow!("shape {} has no database", shape.name))?;
    let mut v = verify::verify(plan, &ids, &r, front, db, deadline).await?;
    v.checks
        .push(verify::expiries_confirmed(&shape.delay_queue, &r, deadline).await?);
    for c in v.checks.iter().filter(|c| !c.ok) {
        eprintln!("   BREACH: {}: {}", c.name, c.detail);
    }
    p.verification = Some(v);
    // After the verification: every order is in PostgreSQL, so every script the phase
    // caused (reserve, pay, mark_ordered) has run.
    let after = script_calls(&shape.nodes).await?;
    let mut calls: Vec<NodeCalls> = shape
        .nodes
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(n, (b, a))| NodeCalls {
            node: n.name.clone(),
            slots: n.slots_text(),
            evalsha: a.0.saturating_sub(b.0),
            eval: a.1.saturating_sub(b.1),
            ..NodeCalls::default()
        })
        .collect();
    let buyers = plan.users_per_showtime();
    if shape.kind == Kind::Cluster {
        let url = &shape
            .nodes
            .first()
            .context("a cluster without masters")?
            .url;
        for (i, id) in ids.iter().enumerate() {
            let slot = keyslot(url, &format!("{}:{{{id}}}:seats", shape.prefix)).await?;
            if let Some(c) = shape
                .nodes
                .iter()
                .position(|n| n.serves(slot))
                .and_then(|j| calls.get_mut(j))
            {
                c.showtimes += 1;
                c.buyers += buyers[i];
            }
        }
    } else if let Some(c) = calls.first_mut() {
        c.showtimes = ids.len() as u64;
        c.buyers = plan.users;
    }
    Ok(Measured {
        shape: index,
        round,
        phase: p,
        script_calls: calls,
    })
}

impl Stack {
    /// Stops every process and the cluster, then removes each shape's database, keys and
    /// queues (unless `--keep`); what could not be done, as notes.
    async fn teardown(&mut self, args: &RunArgs) -> Vec<String> {
        let mut notes = Vec::new();
        for shape in &mut self.shapes {
            down(shape).await;
            if let Some(db) = shape.db.take() {
                db.close().await;
            }
        }
        if let Some(c) = self.cluster.take()
            && let Err(e) = c.stop().await
        {
            notes.push(format!("the Redis Cluster: {e:#}"));
        }
        for shape in &self.shapes {
            if args.keep {
                notes.push(format!(
                    "kept database {}, queues {}.*{}",
                    shape.db_name,
                    shape.prefix,
                    if shape.kind == Kind::Cluster {
                        " (the cluster, with its keys, is stopped)".to_string()
                    } else {
                        format!(", Redis keys {}:*", shape.prefix)
                    }
                ));
                continue;
            }
            let cleaned = if shape.kind == Kind::Cluster {
                // Its keys went with the cluster.
                async {
                    procs::drop_database(&args.services.database_url, &shape.db_name).await?;
                    procs::delete_queues(
                        &args.services.amqp_url,
                        &procs::topology(&shape.prefix, args.hold_secs),
                    )
                    .await?;
                    anyhow::Ok(())
                }
                .await
            } else {
                run::cleanup(args, &shape.db_name, &shape.prefix).await
            };
            if let Err(e) = cleaned {
                notes.push(format!(
                    "clean-up of {} (run {}) incomplete: {e:#}; `flash-sale-bench clean --run-id {}`",
                    shape.name, shape.run_id, shape.run_id
                ));
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        notes
    }
}

// ---------------------------------------------------------------------------------------
// Redis: the masters, where a key lives, and the script calls

async fn redis_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))
}

/// The cluster's masters, by port, as the node `urls` names first sees them.
async fn masters(urls: &str) -> anyhow::Result<Vec<Node>> {
    let first = urls.split(',').next().unwrap_or(urls).trim();
    let scheme = first.split("://").next().unwrap_or("redis");
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut redis_conn(first).await?)
        .await?;
    let masters: Vec<Node> = parse_masters(&text)
        .into_iter()
        .map(|(addr, slots)| Node {
            url: format!("{scheme}://{addr}"),
            name: addr,
            slots,
        })
        .collect();
    if masters.is_empty() {
        bail!("CLUSTER NODES at {first} lists no master serving slots");
    }
    Ok(masters)
}

/// The ports of the cluster's replicas, as the node `urls` names first sees them.
async fn replicas(urls: &str) -> anyhow::Result<Vec<u16>> {
    let first = urls.split(',').next().unwrap_or(urls).trim();
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut redis_conn(first).await?)
        .await?;
    Ok(parse_replicas(&text))
}

/// The ports of the replicas in `CLUSTER NODES` output.
fn parse_replicas(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.get(2)?
                .split(',')
                .any(|x| x == "slave" || x == "replica")
                .then_some(())?;
            f.get(1)?
                .split(['@', ','])
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Masters serving slots in `CLUSTER NODES` output: (`ip:port`, slot ranges), by port.
fn parse_masters(text: &str) -> Vec<(String, Vec<(u16, u16)>)> {
    let mut out: Vec<(String, Vec<(u16, u16)>)> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?.split(',').collect::<Vec<_>>();
            if !flags.contains(&"master") || flags.iter().any(|x| x.starts_with("fail")) {
                return None;
            }
            // ip:port@cport[,hostname]
            let addr = f.get(1)?.split(['@', ',']).next()?.to_string();
            let slots: Vec<(u16, u16)> = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            (!slots.is_empty()).then_some((addr, slots))
        })
        .collect();
    out.sort_by_key(|(addr, _)| {
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(0)
    });
    out
}

async fn keyslot(url: &str, key: &str) -> anyhow::Result<u16> {
    Ok(redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut redis_conn(url).await?)
        .await?)
}

/// (EVALSHA, EVAL) calls so far on each node (`INFO commandstats`).
async fn script_calls(nodes: &[Node]) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis_conn(&n.url).await?)
            .await?;
        out.push(parse_script_calls(&info));
    }
    Ok(out)
}

/// (EVALSHA, EVAL) calls in `INFO commandstats` output
/// (`cmdstat_evalsha:calls=12,usec=...`).
fn parse_script_calls(info: &str) -> (u64, u64) {
    let calls = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("cmdstat_{name}:")))
            .and_then(|rest| {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (calls("evalsha"), calls("eval"))
}

// ---------------------------------------------------------------------------------------
// The report

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Thousands separated by commas, as the tables in BENCHMARKS.md write them.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A shape's medians over its rounds.
struct Summary {
    attempts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    calls_per_attempt: f64,
    cpu: Vec<(String, f64)>,
    /// CPU time of each group per reserve attempt, µs, over every round.
    cpu_us_per_attempt: Vec<(String, f64)>,
    rss_mib: Option<f64>,
    ok: bool,
}

/// The groups of the CPU-per-attempt table, in its order (`procs`' names).
const CPU_GROUPS: [&str; 7] = [
    "server",
    "nginx",
    "redis",
    "redis replicas",
    "rabbitmq",
    "postgresql",
    "load generator",
];

impl ShapesReport {
    fn of_shape(&self, shape: usize) -> impl Iterator<Item = &Measured> {
        self.measured.iter().filter(move |m| m.shape == shape)
    }

    fn summary(&self, shape: usize) -> Summary {
        let ms: Vec<&Measured> = self.of_shape(shape).collect();
        let med = |f: &dyn Fn(&Measured) -> f64| median(ms.iter().map(|m| f(m)).collect());
        // CPU: each group's mean over the rounds.
        let mut cpu: Vec<(String, f64)> = Vec::new();
        for m in &ms {
            for (g, v) in &m.phase.usage.cpu_pct {
                match cpu.iter_mut().find(|(x, _)| x == g) {
                    Some((_, sum)) => *sum += v,
                    None => cpu.push((g.clone(), *v)),
                }
            }
        }
        for (_, v) in &mut cpu {
            *v /= ms.len().max(1) as f64;
        }
        cpu.sort_by(|a, b| b.1.total_cmp(&a.1));
        let attempts: u64 = ms.iter().map(|m| m.phase.attempts).sum();
        let cpu_us_per_attempt = CPU_GROUPS
            .iter()
            .map(|g| {
                let secs: f64 = ms
                    .iter()
                    .map(|m| {
                        let pct = m
                            .phase
                            .usage
                            .cpu_pct
                            .iter()
                            .find(|(x, _)| x == g)
                            .map_or(0.0, |(_, v)| *v);
                        pct / 100.0 * m.phase.duration_s
                    })
                    .sum();
                (g.to_string(), secs * 1e6 / attempts.max(1) as f64)
            })
            .collect();
        Summary {
            attempts_per_s: med(&|m| m.phase.attempts_per_s),
            p50_ms: med(&|m| m.phase.reserve_latency.p50_ms),
            p99_ms: med(&|m| m.phase.reserve_latency.p99_ms),
            errors: ms
                .iter()
                .map(|m| m.phase.outcomes.errors + m.phase.outcomes.pay_failed)
                .sum(),
            calls_per_attempt: med(&|m| {
                let calls: u64 = m.script_calls.iter().map(|c| c.evalsha + c.eval).sum();
                calls as f64 / m.phase.attempts.max(1) as f64
            }),
            cpu,
            cpu_us_per_attempt,
            rss_mib: ms
                .iter()
                .filter_map(|m| m.phase.usage.server_rss_peak_mib)
                .reduce(f64::max),
            ok: ms
                .iter()
                .all(|m| m.phase.verification.as_ref().is_none_or(|v| v.ok())),
        }
    }

    fn markdown(&self, chart_file: Option<&str>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# flash-sale-bench: `shapes` (`{}`)\n", self.scenario);
        let _ = writeln!(s, "- plan: {}", self.plan_text);
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(
            s,
            "- started: {} (revision {})",
            self.started_at, self.revision
        );
        let m = &self.machine;
        let _ = writeln!(
            s,
            "- machine: {} cores ({}), {:.1} GiB, Linux {}, load average {:.2} at start",
            m.cores, m.cpu_model, m.memory_gib, m.kernel, m.load_avg_at_start
        );
        let mode = match self.rate {
            Some(r) => format!("open loop {r:.0}/s, at most {} in flight", self.concurrency),
            None => format!("closed loop, {} connections", self.concurrency),
        };
        let _ = writeln!(
            s,
            "- {mode}; {} round(s), each running every shape once on fresh showtimes (the order rotated each round); the figures are the medians of the rounds",
            self.rounds
        );
        let _ = writeln!(
            s,
            "- verdict: **{}**\n",
            if self.ok {
                "all invariants hold"
            } else {
                "INVARIANT BREACHED"
            }
        );

        let sums: Vec<Summary> = (0..self.shapes.len()).map(|i| self.summary(i)).collect();
        let Some(first) = sums.first() else {
            return s;
        };
        let ratio = |x: f64, base: f64| {
            if base > 0.0 {
                format!("{:.2}", x / base)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            s,
            "| shape | attempts/s | vs 1 | p50 ms | vs 1 | p99 ms | vs 1 | errors | script calls per attempt | CPU, % of one core (mean) | peak RSS per process MiB | invariants |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|---|");
        for (i, (info, x)) in self.shapes.iter().zip(&sums).enumerate() {
            let cpu: Vec<String> = x
                .cpu
                .iter()
                .filter(|(_, v)| *v >= 0.5)
                .map(|(g, v)| format!("{g} {v:.0}"))
                .collect();
            let _ = writeln!(
                s,
                "| {}. {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {:.2} | {} | {} | {} |",
                i + 1,
                info.name,
                thousands(x.attempts_per_s),
                ratio(x.attempts_per_s, first.attempts_per_s),
                x.p50_ms,
                ratio(x.p50_ms, first.p50_ms),
                x.p99_ms,
                ratio(x.p99_ms, first.p99_ms),
                x.errors,
                x.calls_per_attempt,
                cpu.join(", "),
                x.rss_mib
                    .map(|m| format!("{m:.0}"))
                    .unwrap_or_else(|| "-".into()),
                if x.ok { "hold" } else { "BREACHED" }
            );
        }
        let front = self.shapes.iter().position(|x| x.kind == Kind::Front);
        let cluster = self.shapes.iter().position(|x| x.kind == Kind::Cluster);
        if let (Some(f), Some(c)) = (front, cluster)
            && sums[c].attempts_per_s > 0.0
        {
            let cost = sums[f].attempts_per_s / sums[c].attempts_per_s - 1.0;
            let _ = writeln!(
                s,
                "\nThe cluster against the same front on one node: {} against {} attempts/s, so **{:+.0}%** time per attempt (target: under +25%): **{}**.",
                thousands(sums[c].attempts_per_s),
                thousands(sums[f].attempts_per_s),
                cost * 100.0,
                if cost < 0.25 { "met" } else { "not met" }
            );
        }
        let _ = writeln!(
            s,
            "\nCPU time per reserve attempt, µs (each process's own CPU time from `/proc` over the phase, every round; it does not depend on what else ran as much as throughput does):\n"
        );
        let _ = writeln!(s, "| shape | {} | all of these |", CPU_GROUPS.join(" | "));
        let _ = writeln!(s, "|---|{}--:|", "--:|".repeat(CPU_GROUPS.len()));
        for (i, (info, x)) in self.shapes.iter().zip(&sums).enumerate() {
            let cells: Vec<String> = x
                .cpu_us_per_attempt
                .iter()
                .map(|(_, v)| format!("{v:.1}"))
                .collect();
            let all: f64 = x.cpu_us_per_attempt.iter().map(|(_, v)| v).sum();
            let _ = writeln!(
                s,
                "| {}. {} | {} | {all:.1} |",
                i + 1,
                info.name,
                cells.join(" | ")
            );
        }
        let _ = writeln!(
            s,
            "\nScript calls are EVALSHA and EVAL from `INFO commandstats` of each node the shape's scripts run on, read before each phase and after its verification (every order in PostgreSQL); the single node is the machine's shared Redis, so other clients' calls during a phase would count too."
        );

        if self.rounds > 1 {
            let _ = writeln!(s, "\n## Each round (attempts/s)\n");
            let mut head = String::from("| round |");
            let mut rule = String::from("|--:|");
            for (i, _) in self.shapes.iter().enumerate() {
                let _ = write!(head, " {} |", i + 1);
                rule.push_str("--:|");
            }
            for i in 1..self.shapes.len() {
                let _ = write!(head, " {} vs 1 |", i + 1);
                rule.push_str("--:|");
            }
            if let (Some(f), Some(c)) = (front, cluster) {
                let _ = write!(head, " {} vs {} |", c + 1, f + 1);
                rule.push_str("--:|");
            }
            let _ = writeln!(s, "{head}\n{rule}");
            for round in 0..self.rounds {
                let rate = |shape: usize| {
                    self.measured
                        .iter()
                        .find(|m| m.shape == shape && m.round == round)
                        .map(|m| m.phase.attempts_per_s)
                        .unwrap_or(0.0)
                };
                let mut row = format!("| {} |", round + 1);
                for i in 0..self.shapes.len() {
                    let _ = write!(row, " {} |", thousands(rate(i)));
                }
                for i in 1..self.shapes.len() {
                    let _ = write!(row, " {} |", ratio(rate(i), rate(0)));
                }
                if let (Some(f), Some(c)) = (front, cluster) {
                    let _ = write!(row, " {} |", ratio(rate(c), rate(f)));
                }
                let _ = writeln!(s, "{row}");
            }
        }

        if let Some(c) = cluster {
            let mut per: Vec<NodeCalls> = Vec::new();
            for m in self.of_shape(c) {
                for n in &m.script_calls {
                    match per.iter_mut().find(|x| x.node == n.node) {
                        Some(x) => {
                            x.showtimes += n.showtimes;
                            x.buyers += n.buyers;
                            x.evalsha += n.evalsha;
                            x.eval += n.eval;
                        }
                        None => per.push(n.clone()),
                    }
                }
            }
            let total: u64 = per.iter().map(|x| x.evalsha + x.eval).sum();
            let buyers: u64 = per.iter().map(|x| x.buyers).sum();
            let _ = writeln!(
                s,
                "\n## Script calls per master ({}, all {} round(s))\n",
                self.shapes[c].name, self.rounds
            );
            let _ = writeln!(
                s,
                "| master | slots | showtimes | buyers | EVALSHA | EVAL | share of the calls |"
            );
            let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|");
            for x in &per {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} ({:.0}%) | {} | {} | {:.1}% |",
                    x.node,
                    x.slots,
                    x.showtimes,
                    thousands(x.buyers as f64),
                    x.buyers as f64 * 100.0 / buyers.max(1) as f64,
                    thousands(x.evalsha as f64),
                    thousands(x.eval as f64),
                    (x.evalsha + x.eval) as f64 * 100.0 / total.max(1) as f64
                );
            }
        }

        let _ = writeln!(s, "\n## Each phase\n");
        for m in &self.measured {
            let _ = writeln!(
                s,
                "### round {}: {}. {}\n",
                m.round + 1,
                m.shape + 1,
                self.shapes[m.shape].name
            );
            s.push_str(&report::phase_details(&m.phase));
        }
        for info in &self.shapes {
            let _ = writeln!(s, "- {}: run {}", info.name, info.run_id);
        }
        for n in &self.notes {
            let _ = writeln!(s, "- note: {n}");
        }
        if let Some(c) = chart_file {
            let _ = writeln!(s, "\n![throughput and latency over time, round 1]({c})");
        }
        s
    }
}

/// Writes the report as JSON, Markdown and an SVG chart (round 1's phases) into `out`,
/// and prints the Markdown.
fn write_report(report: &ShapesReport, out: &Path) -> anyhow::Result<()> {
    let name = format!("shapes-{}", report.scenario);
    let svg = format!("{name}.svg");
    let phases: Vec<(String, Vec<chart::Point>)> = report
        .measured
        .iter()
        .filter(|m| m.round == 0)
        .map(|m| {
            (
                format!("{}. {}", m.shape + 1, report.shapes[m.shape].name),
                m.phase.series.clone(),
            )
        })
        .collect();
    let title = format!("flash-sale-bench shapes ({}), round 1", report.scenario);
    let chart_ok = match chart::draw(&out.join(&svg), &title, &phases) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let text = "\
e7d1 127.0.0.1:7201@17201 master - 0 1426238316232 2 connected 5461-10922
07c3 127.0.0.1:7204@17204,host4 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:7200@17200 myself,master - 0 0 1 connected 0-5460 [5461->-e7d1]
2921 127.0.0.1:7202@17202 master - 0 1426238316232 3 connected 10923-16383
aaaa 127.0.0.1:7205@17205 master,fail - 0 0 5 disconnected
bbbb 127.0.0.1:7203@17203 master - 0 0 6 connected
";
        let m = parse_masters(text);
        assert_eq!(
            m,
            vec![
                ("127.0.0.1:7200".to_string(), vec![(0, 5460)]),
                ("127.0.0.1:7201".to_string(), vec![(5461, 10922)]),
                ("127.0.0.1:7202".to_string(), vec![(10923, 16383)]),
            ]
        );
        let node = Node {
            name: m[1].0.clone(),
            url: String::new(),
            slots: vec![(5461, 10922), (12, 12)],
        };
        assert!(node.serves(5461) && node.serves(12) && !node.serves(13));
        assert_eq!(parse_replicas(text), vec![7204]);
        assert_eq!(node.slots_text(), "5461-10922, 12");
    }

    #[test]
    fn script_calls_are_read_from_commandstats() {
        let info = "# Commandstats\r\ncmdstat_evalsha_ro:calls=9,usec=1\r\ncmdstat_evalsha:calls=1234,usec=5678,usec_per_call=4.60,rejected_calls=0,failed_calls=0\r\ncmdstat_eval:calls=3,usec=10\r\ncmdstat_hset:calls=99,usec=1\r\n";
        assert_eq!(parse_script_calls(info), (1234, 3));
        assert_eq!(parse_script_calls("# Commandstats\r\n"), (0, 0));
    }

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(thousands(52_219.4), "52,219");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.0), "999");
    }
}
