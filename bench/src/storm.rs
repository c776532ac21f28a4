//! `connect-storm`: the Go reference's own client shape, one new connection per buyer,
//! all at the same moment, against flash-sale started twice in the same run: with a
//! listen queue of 128 (what the listener bound with tokio's `TcpListener::bind` showed
//! in `ss -ltn` before `LISTEN_BACKLOG`) and with its default (the system's
//! `net.core.somaxconn`). Each
//! buyer connects, reserves one seat of 100 and reads its answer on a connection of its
//! own. Reported: connect latency, answer latency, the outcomes, and the kernel's own
//! count of SYNs dropped at a full listen queue during each round
//! (`/proc/net/netstat`, `TcpExt: ListenOverflows ListenDrops`, what `netstat -s` prints
//! as "times the listen queue of a socket overflowed" and "SYNs to LISTEN sockets
//! dropped").

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::cli::ServiceUrls;
use crate::procs::{self, Server};

#[derive(Args, Clone, Debug)]
pub(crate) struct StormArgs {
    /// Buyers, each on a connection of its own, all at once.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) buyers: u64,
    /// Seats of the one showtime.
    #[arg(long, default_value_t = 100)]
    pub(crate) capacity: u32,
    /// The flash-sale binary to start (default: `flash-sale` next to this binary).
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Where the report goes.
    #[arg(long, default_value = "bench-results")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) services: ServiceUrls,
}

/// The kernel's counts of connections lost at a full listen queue.
#[derive(Debug, Clone, Copy, Default)]
struct Drops {
    overflows: u64,
    dropped: u64,
}

fn drops() -> anyhow::Result<Drops> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no TcpExt lines in /proc/net/netstat");
    };
    let value = |name: &str| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Drops {
        overflows: value("ListenOverflows"),
        dropped: value("ListenDrops"),
    })
}

struct Round {
    name: String,
    connect: Histogram<u64>,
    answer: Histogram<u64>,
    reserved: u64,
    sold_out: u64,
    failed: u64,
    drops: Drops,
}

pub(crate) async fn storm(args: StormArgs) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.out)?;
    let bin = procs::server_bin(args.server_bin.as_deref())?;
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut rounds = vec![];
    for (name, backlog) in [
        ("listen queue 128 (before)".to_string(), Some("128")),
        (format!("listen queue {somaxconn} (default)"), None),
    ] {
        rounds.push(round(&args, &bin, &name, backlog).await?);
    }
    let mut md = format!(
        "# flash-sale-bench: `connect-storm`\n\n- {} buyers, each on a new connection, all at once; one showtime of {} seats\n- `net.core.somaxconn` = {somaxconn}\n- command: `{}`\n\n",
        args.buyers,
        args.capacity,
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    md.push_str("| server | reserved | sold out | failed | connect p50 ms | connect p99 ms | connect max ms | answer p50 ms | answer p99 ms | listen queue overflows | SYNs dropped |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for r in &rounds {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
            r.name,
            r.reserved,
            r.sold_out,
            r.failed,
            ms(&r.connect, 0.5),
            ms(&r.connect, 0.99),
            r.connect.max() as f64 / 1000.0,
            ms(&r.answer, 0.5),
            ms(&r.answer, 0.99),
            r.drops.overflows,
            r.drops.dropped
        ));
    }
    let path = args.out.join("connect-storm.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    eprintln!("   report: {}", path.display());
    // Every round must sell exactly its seats: the storm may slow buyers, never oversell.
    Ok(rounds
        .iter()
        .all(|r| r.reserved == u64::from(args.capacity) && r.failed == 0))
}

async fn round(
    args: &StormArgs,
    bin: &std::path::Path,
    name: &str,
    backlog: Option<&str>,
) -> anyhow::Result<Round> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let prefix = format!("bench-storm-{run_id}");
    let db_name = format!("bench_storm_{run_id}");
    let db_url = procs::with_database(&args.services.database_url, &db_name);
    let mut env = vec![
        ("DATABASE_URL".to_string(), db_url),
        ("REDIS_URL".to_string(), args.services.redis_url.clone()),
        ("AMQP_URL".to_string(), args.services.amqp_url.clone()),
        ("REDIS_KEY_PREFIX".to_string(), prefix.clone()),
        ("QUEUE_PREFIX".to_string(), prefix.clone()),
        ("RUST_LOG".to_string(), "warn".to_string()),
        // One buyer, one connection: no per-address limit on loopback anyway.
        ("MAX_IN_FLIGHT".to_string(), "65536".to_string()),
    ];
    if let Some(b) = backlog {
        env.push(("LISTEN_BACKLOG".to_string(), b.to_string()));
    }
    let log = args.out.join(format!("connect-storm-{run_id}-server.log"));
    let server = Server::start_flash_sale(bin, &env, log).await?;
    let endpoint = server.endpoint.clone();
    let mut conn = crate::client::Conn::new(endpoint.clone(), Duration::from_secs(10));
    let created: serde_json::Value = conn
        .post_json(
            "/showtimes",
            &serde_json::json!({"capacity": args.capacity}),
        )
        .await?
        .json()?;
    let showtime = created["id"].as_i64().context("a showtime id")?;
    drop(conn);

    let before = drops()?;
    let barrier = Arc::new(Barrier::new(args.buyers as usize));
    let addr = endpoint.addr;
    let buyers: Vec<_> = (1..=args.buyers)
        .map(|user| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                buy(addr, user, showtime).await
            })
        })
        .collect();
    let mut r = Round {
        name: name.to_string(),
        connect: crate::load::histogram(),
        answer: crate::load::histogram(),
        reserved: 0,
        sold_out: 0,
        failed: 0,
        drops: Drops::default(),
    };
    for b in buyers {
        match b.await? {
            Ok((connect, answer, status)) => {
                r.connect.saturating_record(connect.as_micros() as u64);
                r.answer.saturating_record(answer.as_micros() as u64);
                match status {
                    200 => r.reserved += 1,
                    409 => r.sold_out += 1,
                    _ => r.failed += 1,
                }
            }
            Err(_) => r.failed += 1,
        }
    }
    let after = drops()?;
    r.drops = Drops {
        overflows: after.overflows - before.overflows,
        dropped: after.dropped - before.dropped,
    };
    server.stop().await;
    let _ = procs::drop_database(&args.services.database_url, &db_name).await;
    let _ = procs::delete_redis_keys(&args.services.redis_url, &prefix).await;
    let _ = procs::delete_queues(&args.services.amqp_url, &procs::topology(&prefix, 900)).await;
    eprintln!(
        "   {name}: {} reserved, {} sold out, {} failed; {} SYNs dropped",
        r.reserved, r.sold_out, r.failed, r.drops.dropped
    );
    Ok(r)
}

/// One buyer: a new connection, one reserve, its status. Connect and answer latency.
async fn buy(
    addr: std::net::SocketAddr,
    user: u64,
    showtime: i64,
) -> anyhow::Result<(Duration, Duration, u16)> {
    let started = Instant::now();
    let mut stream = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let connected = started.elapsed();
    let body = format!(r#"{{"user_id":{user},"showtime_id":{showtime}}}"#);
    let request = format!(
        "POST /reserve HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::with_capacity(512);
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .context("answer timed out")??;
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((connected, started.elapsed(), status))
}
