//! Child processes (flash-sale, the stub server), what they cost (resident memory, CPU),
//! and the clean-up of a run's database, Redis keys and queues.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use flash_sale_adapters::Topology;

use crate::client::{Conn, Endpoint};

/// A server we started; killed on drop if nobody stopped it.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) endpoint: Endpoint,
    pub(crate) log: Option<PathBuf>,
}

/// The flash-sale binary to start: `given`, or `flash-sale` next to this binary.
pub(crate) fn server_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match given {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("flash-sale"))
            .unwrap_or_else(|| PathBuf::from("flash-sale")),
    })
}

/// A free local port (bound, then released for the child to take).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Starts flash-sale with `env`, its output going to `log`, and waits until it answers.
    pub(crate) async fn start_flash_sale(
        bin: &Path,
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        if !bin.exists() {
            bail!(
                "server binary {} not found: build it with `cargo build --release -p flash-sale-local`, or pass --server-bin / --url",
                bin.display()
            );
        }
        let port = free_port()?;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADDR", addr.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("server exited at once"))?;
        let mut s = Self {
            child,
            pid,
            endpoint: Endpoint::from_addr(addr),
            log: Some(log),
        };
        s.wait_ready(Duration::from_secs(60)).await?;
        Ok(s)
    }

    /// Starts this very binary as the stub server (the HTTP ceiling).
    pub(crate) async fn start_stub() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["stub-server", "--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the stub server")?;
        let pid = child.id().ok_or_else(|| anyhow!("stub exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| anyhow!("the stub server did not start in 10 s"))??
            .ok_or_else(|| anyhow!("the stub server exited"))?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("unexpected stub output {line:?}"))?
            .parse()?;
        let mut s = Self {
            child,
            pid,
            endpoint: Endpoint::from_addr(addr),
            log: None,
        };
        s.wait_ready(Duration::from_secs(10)).await?;
        Ok(s)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited with {status} before answering{}",
                    self.log_tail()
                );
            }
            let mut c = Conn::new(self.endpoint.clone(), Duration::from_secs(2));
            if c.get("/showtimes/1").await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not answer within {within:?}{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        format!("; last lines of {}:\n  {tail}", log.display())
    }

    /// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
    pub(crate) async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `perf record` of one process while a phase runs (flat profile, no call graphs: a
/// release build has no frame pointers), summarised into a text file at the end.
pub(crate) struct Perf {
    child: Child,
    data: PathBuf,
}

impl Perf {
    pub(crate) async fn start(pid: u32, data: PathBuf) -> anyhow::Result<Self> {
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start perf (is it installed?)")?;
        // perf needs a moment to attach.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self { child, data })
    }

    /// Stops recording and writes the top of `perf report` (by thread, by library, by
    /// symbol) to `summary`.
    pub(crate) async fn finish(mut self, summary: &Path) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let mut text = String::new();
        for (sort, lines) in [("comm", 10), ("dso", 10), ("dso,symbol", 60)] {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-children", "--sort", sort, "-i"])
                .arg(&self.data)
                .output()
                .await?;
            text.push_str(&format!("## perf report --sort {sort}\n"));
            for l in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .take(lines)
            {
                // Columns padded to the terminal's width, and empty IPC columns: squeeze.
                let words: Vec<&str> = l.split_whitespace().collect();
                text.push_str(words.join(" ").trim_end_matches(" - -"));
                text.push('\n');
            }
            text.push('\n');
        }
        std::fs::write(summary, text)?;
        let _ = std::fs::remove_file(&self.data);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// /proc readings

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Resident memory of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 (index 0 here); utime 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

/// (busy, total) ticks of the whole machine.
fn system_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Groups the processes we account CPU to.
fn group_of(pid: u32, server: Option<u32>) -> Option<&'static str> {
    if Some(pid) == server {
        return Some("server");
    }
    if pid == std::process::id() {
        return Some("load generator");
    }
    match comm(pid)?.as_str() {
        "redis-server" => Some("redis"),
        "postgres" => Some("postgresql"),
        "beam.smp" | "erl_child_setup" | "inet_gethost" | "epmd" => Some("rabbitmq"),
        "flash-sale-ben" => Some("stub server"),
        _ => None,
    }
}

fn snapshot(server: Option<u32>) -> HashMap<u32, (&'static str, u64)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, (group_of(pid, server)?, cpu_ticks(pid)?))))
        .collect()
}

/// What a phase cost the machine.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Usage {
    /// Busy share of the whole machine, in percent (100% = every core busy).
    pub(crate) machine_busy_pct: f64,
    /// CPU used by each component in percent of one core (200% = two cores).
    pub(crate) cpu_pct: Vec<(String, f64)>,
    /// flash-sale's resident memory: peak and at the end, MiB.
    pub(crate) server_rss_peak_mib: Option<f64>,
    pub(crate) server_rss_end_mib: Option<f64>,
}

/// Samples CPU and memory while a phase runs.
pub(crate) struct Monitor {
    server: Option<u32>,
    start: Instant,
    sys: Option<(u64, u64)>,
    procs: HashMap<u32, (&'static str, u64)>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn start(server: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = server.map(|pid| {
            let stop = stop.clone();
            let peak = peak.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        Self {
            server,
            start: Instant::now(),
            sys: system_ticks(),
            procs: snapshot(server),
            stop,
            peak,
            sampler,
        }
    }

    pub(crate) async fn finish(mut self) -> Usage {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-3);
        let hz = clock_ticks() as f64;
        let end = snapshot(self.server);
        let mut by_group: HashMap<&'static str, u64> = HashMap::new();
        for (pid, (group, ticks)) in &end {
            let before = self.procs.get(pid).map(|p| p.1).unwrap_or(0);
            *by_group.entry(group).or_default() += ticks.saturating_sub(before);
        }
        let mut cpu_pct: Vec<(String, f64)> = by_group
            .into_iter()
            .map(|(g, t)| (g.to_string(), t as f64 / hz / elapsed * 100.0))
            .collect();
        cpu_pct.sort_by(|a, b| b.1.total_cmp(&a.1));
        let machine_busy_pct = match (self.sys, system_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0
            }
            _ => 0.0,
        };
        // Whatever the machine did besides the components above: other builds, tests...
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let ours: f64 = cpu_pct.iter().map(|(_, v)| v).sum();
        let others = machine_busy_pct * cores - ours;
        if others >= 0.5 {
            cpu_pct.push(("everything else".to_string(), others));
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.await;
        }
        let end_rss = self.server.and_then(rss_kib);
        if let Some(e) = end_rss {
            self.peak.fetch_max(e, Ordering::Relaxed);
        }
        Usage {
            machine_busy_pct,
            cpu_pct,
            server_rss_peak_mib: self
                .server
                .map(|_| self.peak.load(Ordering::Relaxed) as f64 / 1024.0),
            server_rss_end_mib: end_rss.map(|k| k as f64 / 1024.0),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clean-up

/// The same URL with another database name.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

pub(crate) async fn drop_database(admin_url: &str, db: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&with_database(admin_url, "postgres")).await?;
    sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{db}" WITH (FORCE)"#))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Deletes every key starting with `<prefix>:`.
pub(crate) async fn delete_redis_keys(redis_url: &str, prefix: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
            deleted += n;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(deleted)
}

/// The names of a run's exchanges and queues: the server's own topology for queue prefix
/// `prefix` and a hold of `hold_secs` (the delivery limit is the server's default and names
/// nothing).
pub(crate) fn topology(prefix: &str, hold_secs: u64) -> Topology {
    Topology {
        prefix: prefix.to_string(),
        hold: Duration::from_secs(hold_secs),
        delivery_limit: 10,
    }
}

/// Deletes the queues `<prefix>.*` and the exchanges `<prefix>`, `<prefix>.*` of
/// `topology`'s prefix: whatever RabbitMQ lists, or else the topology's own.
pub(crate) async fn delete_queues(amqp_url: &str, topology: &Topology) -> anyhow::Result<usize> {
    let prefix = topology.prefix.as_str();
    // Both listings at once: each rabbitmqctl call is slow (it starts an Erlang node).
    let listed = |what: &'static str| async move {
        let out = Command::new("rabbitmqctl")
            .args(["-q", what, "name"])
            .output()
            .await
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|n| {
                    n.strip_prefix(prefix)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
                })
                .collect::<Vec<_>>(),
        )
    };
    let (queues, exchanges) = tokio::join!(listed("list_queues"), listed("list_exchanges"));
    let queues = queues.unwrap_or_else(|| topology.queue_names());
    let exchanges =
        exchanges.unwrap_or_else(|| vec![topology.exchange(), topology.dead_letter_exchange()]);
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let mut n = 0;
    for q in &queues {
        let ch = conn.create_channel().await?;
        if ch
            .queue_delete(
                q.as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await
            .is_ok()
        {
            n += 1;
        }
    }
    for x in &exchanges {
        let ch = conn.create_channel().await?;
        let _ = ch
            .exchange_delete(
                x.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "bench done".into()).await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/flash_sale", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(
            with_database("postgres://h:1/x?sslmode=disable", "b"),
            "postgres://h:1/b?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "b"), "postgres://h:1/b");
    }

    #[test]
    fn this_process_has_memory_and_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(system_ticks().is_some());
    }
}
