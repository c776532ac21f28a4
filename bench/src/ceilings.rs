//! The ceilings flash-sale is measured against, driven like flash-sale itself: the HTTP
//! ceiling (the stub server, a child process of this binary), the nginx ceiling (nginx
//! with one worker answering flash-sale's sold-out JSON: the C ceiling), the Redis
//! ceiling (the reserve script by EVALSHA over one multiplexed connection), and the same
//! script from `redis-benchmark` when it is installed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::client::Endpoint;
use crate::load::{self, Drive, HttpTarget, PhaseResult, RedisTarget};
use crate::plan::Plan;
use crate::procs::{Monitor, Nginx, Server, Usage};
use crate::report::{self, PhaseReport};
use crate::run::{RunSettings, create_showtimes, mode_text, warm_plan, warm_up};

/// The stub server: flash-sale's stack answering the same JSON with no work behind it.
pub(crate) async fn http_ceiling(
    plan: &Plan,
    drive: &Drive,
    settings: &RunSettings,
) -> anyhow::Result<PhaseReport> {
    let stub = Server::start_stub().await?;
    let r = drive_http(
        &stub.endpoint,
        vec![stub.pid],
        plan,
        drive,
        settings,
        "http ceiling",
    )
    .await;
    stub.stop().await;
    let (r, d, usage) = r?;
    Ok(PhaseReport::new(
        "http-ceiling",
        mode_text(&d),
        &r,
        usage,
        d.rate,
    ))
}

/// nginx (`bin`) with one worker answering `POST /showtimes` 201 and everything else
/// flash-sale's sold-out 409 (`procs::nginx_ceiling_config`): what a C server costs for
/// the cheapest answer flash-sale gives. Its output goes to `log`.
pub(crate) async fn nginx_ceiling(
    bin: &Path,
    plan: &Plan,
    drive: &Drive,
    settings: &RunSettings,
    log: PathBuf,
) -> anyhow::Result<PhaseReport> {
    let dir = nginx_dir();
    let r = async {
        let nginx = Nginx::start_ceiling(bin, &dir, log).await?;
        let r = drive_http(
            &nginx.endpoint,
            nginx.workers(),
            plan,
            drive,
            settings,
            "nginx ceiling",
        )
        .await;
        nginx.stop().await;
        r
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let (r, d, usage) = r?;
    Ok(PhaseReport::new(
        NGINX_CEILING,
        mode_text(&d),
        &r,
        usage,
        d.rate,
    ))
}

/// The nginx ceiling's phase.
pub(crate) const NGINX_CEILING: &str = "nginx-ceiling";

/// A directory of its own for an nginx ceiling's configuration, pid and temporary files.
pub(crate) fn nginx_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "flash-sale-bench-nginx-{:08x}",
        rand::random::<u32>()
    ))
}

/// Warms an HTTP ceiling at `endpoint` up, then drives the plan at it, watching the
/// CPU and memory of `pids`.
async fn drive_http(
    endpoint: &Endpoint,
    pids: Vec<u32>,
    plan: &Plan,
    drive: &Drive,
    settings: &RunSettings,
    label: &str,
) -> anyhow::Result<(PhaseResult, Drive, Usage)> {
    let target = HttpTarget {
        endpoint: endpoint.clone(),
        timeout: Duration::from_millis(settings.args.timeout_ms),
    };
    if settings.warmup > 0 {
        let warm = warm_plan(plan, settings.warmup);
        let ids = create_showtimes(&target.endpoint, &warm, "warm-up").await?;
        warm_up(&target, &warm, &ids, drive).await?;
    }
    let ids = create_showtimes(&target.endpoint, plan, "ceiling").await?;
    let d = Drive {
        label: label.into(),
        ..drive.clone()
    };
    let monitor = Monitor::start_many(pids, Vec::new());
    let r = load::run(&target, plan, &ids, &d).await?;
    let usage = monitor.finish().await;
    Ok((r, d, usage))
}

/// The reserve script (and the pay script when the bench pays) by EVALSHA, on seats of
/// its own under `prefix`.
pub(crate) async fn redis_ceiling(
    plan: &Plan,
    drive: &Drive,
    settings: &RunSettings,
    prefix: &str,
) -> anyhow::Result<PhaseReport> {
    let client = redis::Client::open(settings.args.services.redis_url.as_str())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("Redis (--redis-url) is not reachable")?;
    let ids: Vec<i64> = (1..=plan.capacities.len() as i64).collect();
    let warm = warm_plan(plan, settings.warmup);
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
    let target = RedisTarget::new(conn, prefix.to_string(), settings.args.hold_secs * 1000);
    if settings.warmup > 0 {
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
pub(crate) async fn redis_benchmark(
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
        .args(["EVALSHA", &sha, "5"])
        .args([
            key("seats"),
            key("users"),
            key("seq"),
            key("deadlines"),
            key("reservations"),
        ])
        .args([
            "__rand_int__".to_string(),
            (hold_secs * 1000).to_string(),
            String::new(),
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
