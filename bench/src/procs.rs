//! Child processes (flash-sale, the stub server, nginx in front of several flash-sale
//! processes or alone as the nginx ceiling, a local Redis Cluster), what they cost
//! (resident memory, CPU), and the clean-up of a run's database, Redis keys and queues.

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
        self.log.as_deref().map(log_tail).unwrap_or_default()
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

/// The last lines of a log file, to quote in an error.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
    format!("; last lines of {}:\n  {tail}", log.display())
}

/// A program on `PATH`, or in the sbin directories a non-login shell may leave off it
/// (where nginx lives).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A file of this repository (`ops/nginx.conf`, `scripts/redis-cluster`): under the
/// current directory, or else where this binary was built from.
pub(crate) fn repo_file(relative: &str) -> anyhow::Result<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [PathBuf::from(relative), built_from.join(relative)]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "{relative} not found under the current directory nor under {}",
                built_from.display()
            )
        })
}

/// Sends `signal` to `pid` with kill(1), without waiting (for `Drop`).
fn signal_now(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------
// nginx: in front of several processes, or alone as the nginx ceiling

/// nginx in front of flash-sale processes, configured from the shipped `ops/nginx.conf`
/// as `scripts/run --processes N` does, or alone as the nginx ceiling. Stopped on drop if nobody stopped it (SIGTERM:
/// its workers outlive a SIGKILLed master).
pub(crate) struct Nginx {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) endpoint: Endpoint,
    stopped: bool,
}

/// `template` (ops/nginx.conf) with `upstreams` as its servers, listening on `listen`,
/// its pid and temporary files in `dir`: the rewrite `scripts/run` makes with awk.
pub(crate) fn nginx_config(
    template: &str,
    upstreams: &[std::net::SocketAddr],
    listen: std::net::SocketAddr,
    dir: &Path,
) -> anyhow::Result<String> {
    let dir = dir.display();
    let mut out = String::new();
    let (mut servers, mut listens) = (false, false);
    for line in template.lines() {
        let indented = line.trim_start_matches(' ');
        if indented.starts_with("server 127.0.0.1:") {
            if !servers {
                for u in upstreams {
                    out.push_str(&format!(
                        "        server {u} max_fails=1 fail_timeout=2s;\n"
                    ));
                }
                servers = true;
            }
            continue;
        }
        if indented.starts_with("listen ") {
            out.push_str(&format!("        listen {listen} backlog=65535;\n"));
            listens = true;
            continue;
        }
        if line.starts_with("pid ") {
            out.push_str(&format!("pid {dir}/nginx.pid;\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("http {") {
            out.push_str(&format!("    client_body_temp_path {dir}/body;\n"));
            out.push_str(&format!("    proxy_temp_path {dir}/proxy;\n"));
        }
    }
    if !servers || !listens {
        bail!(
            "the nginx configuration has no `server 127.0.0.1:...` upstream or no `listen` line to replace"
        );
    }
    Ok(out)
}

/// The nginx binary: `given` (`--nginx`), or `nginx` on PATH or in the sbin directories.
pub(crate) fn nginx_bin(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| find_program("nginx"))
}

/// The nginx ceiling's configuration: ONE worker process, no access log, listening on
/// `listen`, its pid and temporary files in `dir`; `POST /showtimes` answered 201 with a
/// showtime (always id 1: the ceiling keeps nothing), every other request 409 with
/// flash-sale's sold-out body ([`crate::stub::SOLD_OUT_BODY`]), as JSON. What a C server
/// does for the cheapest answer flash-sale gives, with no work behind it.
pub(crate) fn nginx_ceiling_config(listen: std::net::SocketAddr, dir: &Path) -> String {
    let dir = dir.display();
    let sold_out = crate::stub::SOLD_OUT_BODY;
    let created = r#"{"id":1,"capacity":0,"available":0,"held":0,"sold":0}"#;
    format!(
        r#"worker_processes 1;
pid {dir}/nginx.pid;

events {{
    worker_connections 16384;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/json;
    keepalive_requests 100000000;
    keepalive_timeout 75s;

    server {{
        listen {listen} backlog=65535;

        location = /showtimes {{
            if ($request_method = POST) {{
                return 201 '{created}';
            }}
            return 409 '{sold_out}';
        }}

        location / {{
            return 409 '{sold_out}';
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts `bin` in front of `upstreams` with `template` rewritten into `dir`, its
    /// output going to `log`, and waits until it answers.
    pub(crate) async fn start(
        bin: &Path,
        template: &Path,
        upstreams: &[std::net::SocketAddr],
        dir: &Path,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let template_text = std::fs::read_to_string(template)
            .with_context(|| format!("cannot read {}", template.display()))?;
        let conf = nginx_config(&template_text, upstreams, listen, dir)?;
        Self::spawn(bin, &conf, listen, dir, log).await
    }

    /// Starts `bin` as the nginx ceiling (one worker answering flash-sale's JSON with no
    /// upstream: see [`nginx_ceiling_config`]), its files in `dir`, its output going to
    /// `log`, and waits until it answers.
    pub(crate) async fn start_ceiling(
        bin: &Path,
        dir: &Path,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let conf = nginx_ceiling_config(listen, dir);
        Self::spawn(bin, &conf, listen, dir, log).await
    }

    /// Writes `conf` into `dir`, starts `bin` on it in the foreground (`daemon off`) and
    /// waits until `listen` answers.
    async fn spawn(
        bin: &Path,
        conf: &str,
        listen: std::net::SocketAddr,
        dir: &Path,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conf_file = dir.join("nginx.conf");
        std::fs::write(&conf_file, conf)?;
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_file)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("nginx exited at once"))?;
        let mut n = Self {
            child,
            pid,
            endpoint: Endpoint::from_addr(listen),
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = n.child.try_wait()? {
                n.stopped = true;
                bail!("nginx exited with {status}{}", log_tail(&log));
            }
            let mut c = Conn::new(n.endpoint.clone(), Duration::from_secs(2));
            if c.get("/showtimes/1").await.is_ok() {
                return Ok(n);
            }
            if Instant::now() > deadline {
                bail!("nginx did not answer within 10 s{}", log_tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker processes (the master's children), for their CPU and memory.
    pub(crate) fn workers(&self) -> Vec<u32> {
        all_pids()
            .into_iter()
            .filter(|&pid| parent(pid) == Some(self.pid))
            .collect()
    }

    /// SIGTERM (nginx's fast shutdown), then SIGKILL after 10 s.
    pub(crate) async fn stop(mut self) {
        self.stopped = true;
        signal_now(self.pid, "-TERM");
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !self.stopped {
            signal_now(self.pid, "-TERM");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A local Redis Cluster

/// A local Redis Cluster of six nodes (three masters, a replica each), started and
/// stopped by `scripts/redis-cluster`; stopped on drop if nobody stopped it (its nodes
/// are daemons: nothing else would).
pub(crate) struct RedisCluster {
    script: PathBuf,
    dir: PathBuf,
    /// The node URLs, comma-separated: `REDIS_URL` for the processes.
    pub(crate) urls: String,
    stopped: bool,
}

/// Whether 127.0.0.1's ports `base..base+5` and their cluster bus ports (+10000) are free.
fn cluster_ports_free(base: u16) -> bool {
    (base..base + 6)
        .chain(base + 10_000..base + 10_006)
        .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

impl RedisCluster {
    /// Starts a cluster in `dir` on ports `base..base+5`, or, without `base`, on the
    /// first free range of 7200, 7210, ... (the script refuses ports in use: exit 3).
    pub(crate) async fn start(
        script: &Path,
        dir: &Path,
        base: Option<u16>,
    ) -> anyhow::Result<Self> {
        // The guard exists before the first node does: whatever happens, they are stopped.
        let mut cluster = Self {
            script: script.to_path_buf(),
            dir: dir.to_path_buf(),
            urls: String::new(),
            stopped: false,
        };
        let candidates: Vec<u16> = match base {
            Some(b) => vec![b],
            None => (0..30)
                .map(|i| 7200 + 10 * i)
                .filter(|&b| cluster_ports_free(b))
                .take(5)
                .collect(),
        };
        let mut refused = Vec::new();
        for b in candidates {
            let out = Command::new(script)
                .arg("start")
                .arg(dir)
                .args(["--base-port", &b.to_string()])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .with_context(|| format!("cannot run {}", script.display()))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => {
                    cluster.urls = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    if cluster.urls.is_empty() {
                        bail!("{} start printed no node URLs", script.display());
                    }
                    return Ok(cluster);
                }
                Some(3) => refused.push(format!("{b}: {}", stderr.trim())),
                _ => bail!(
                    "{} start {} --base-port {b} failed ({}):\n{}",
                    script.display(),
                    dir.display(),
                    out.status,
                    stderr.trim_end()
                ),
            }
        }
        bail!(
            "no free ports for a local Redis Cluster (pass --cluster-port): {}",
            if refused.is_empty() {
                "none of 7200, 7210, ... 7490 was free".to_string()
            } else {
                refused.join("; ")
            }
        )
    }

    /// The pid of the node on `port` (`<dir>/<port>/redis.pid`).
    pub(crate) fn pid(&self, port: u16) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `scripts/redis-cluster stop`: every node, then its directory.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        let status = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!(
                "{} stop {} failed ({status})",
                self.script.display(),
                self.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = std::process::Command::new(&self.script)
                .arg("stop")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .status();
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

/// The parent of a process.
fn parent(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command: state, then the parent's pid.
    s[s.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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

/// Groups the processes we account CPU to: flash-sale's processes, processes the caller
/// named, then the others by their name.
fn group_of(pid: u32, servers: &[u32], named: &[(u32, &'static str)]) -> Option<&'static str> {
    if servers.contains(&pid) {
        return Some("server");
    }
    if let Some((_, group)) = named.iter().find(|(p, _)| *p == pid) {
        return Some(group);
    }
    if pid == std::process::id() {
        return Some("load generator");
    }
    match comm(pid)?.as_str() {
        "redis-server" => Some("redis"),
        "postgres" => Some("postgresql"),
        "beam.smp" | "erl_child_setup" | "inet_gethost" | "epmd" => Some("rabbitmq"),
        "flash-sale-ben" => Some("stub server"),
        "nginx" => Some("nginx"),
        _ => None,
    }
}

fn snapshot(servers: &[u32], named: &[(u32, &'static str)]) -> HashMap<u32, (&'static str, u64)> {
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, (group_of(pid, servers, named)?, cpu_ticks(pid)?))))
        .collect()
}

/// What a phase cost the machine.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Usage {
    /// Busy share of the whole machine, in percent (100% = every core busy).
    pub(crate) machine_busy_pct: f64,
    /// CPU used by each component in percent of one core (200% = two cores); `server`
    /// is every flash-sale process of the phase together.
    pub(crate) cpu_pct: Vec<(String, f64)>,
    /// flash-sale's resident memory: peak and at the end, MiB (of the largest process,
    /// when there are several).
    pub(crate) server_rss_peak_mib: Option<f64>,
    pub(crate) server_rss_end_mib: Option<f64>,
}

/// Samples CPU and memory while a phase runs.
pub(crate) struct Monitor {
    servers: Vec<u32>,
    named: Vec<(u32, &'static str)>,
    start: Instant,
    sys: Option<(u64, u64)>,
    procs: HashMap<u32, (&'static str, u64)>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn start(server: Option<u32>) -> Self {
        Self::start_many(server.into_iter().collect(), Vec::new())
    }

    /// With several flash-sale processes (`servers`), all counted as `server`, and
    /// processes accounted to groups of the caller's (`named`: pid, group).
    pub(crate) fn start_many(servers: Vec<u32>, named: Vec<(u32, &'static str)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = (!servers.is_empty()).then(|| {
            let stop = stop.clone();
            let peak = peak.clone();
            let pids = servers.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for kib in pids.iter().filter_map(|&pid| rss_kib(pid)) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        Self {
            procs: snapshot(&servers, &named),
            servers,
            named,
            start: Instant::now(),
            sys: system_ticks(),
            stop,
            peak,
            sampler,
        }
    }

    pub(crate) async fn finish(mut self) -> Usage {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-3);
        let hz = clock_ticks() as f64;
        let end = snapshot(&self.servers, &self.named);
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
        let end_rss = self.servers.iter().filter_map(|&pid| rss_kib(pid)).max();
        if let Some(e) = end_rss {
            self.peak.fetch_max(e, Ordering::Relaxed);
        }
        Usage {
            machine_busy_pct,
            cpu_pct,
            server_rss_peak_mib: (!self.servers.is_empty())
                .then(|| self.peak.load(Ordering::Relaxed) as f64 / 1024.0),
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
    fn the_shipped_nginx_configuration_is_rewritten_for_the_run() {
        let template = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/nginx.conf"));
        let ups: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:5001".parse().unwrap(),
            "127.0.0.1:5002".parse().unwrap(),
        ];
        let conf = nginx_config(
            template,
            &ups,
            "127.0.0.1:5000".parse().unwrap(),
            Path::new("/tmp/x"),
        )
        .unwrap();
        assert!(conf.contains("server 127.0.0.1:5001 max_fails=1"), "{conf}");
        assert!(conf.contains("server 127.0.0.1:5002 max_fails=1"), "{conf}");
        assert!(!conf.contains(":4001") && !conf.contains(":4000"), "{conf}");
        assert!(
            conf.contains("listen 127.0.0.1:5000 backlog=65535;"),
            "{conf}"
        );
        assert!(conf.contains("pid /tmp/x/nginx.pid;"), "{conf}");
        assert!(conf.contains("proxy_temp_path /tmp/x/proxy;"), "{conf}");
        // Everything else is kept: keep-alive to the processes, the body limit.
        assert!(conf.contains("keepalive 256;") && conf.contains("client_max_body_size 16k;"));
        assert!(
            nginx_config(
                "http {\n}\n",
                &ups,
                "127.0.0.1:1".parse().unwrap(),
                Path::new("/")
            )
            .is_err()
        );
    }

    #[test]
    fn the_nginx_ceiling_has_one_worker_and_answers_flash_sales_sold_out() {
        let conf = nginx_ceiling_config("127.0.0.1:5000".parse().unwrap(), Path::new("/tmp/x"));
        for line in [
            "worker_processes 1;",
            "pid /tmp/x/nginx.pid;",
            "access_log off;",
            "client_body_temp_path /tmp/x/body;",
            "default_type application/json;",
            "listen 127.0.0.1:5000 backlog=65535;",
            r#"return 201 '{"id":1,"#,
            r#"return 409 '{"error":"sold_out","message":"Tickets sold out"}';"#,
        ] {
            assert!(conf.contains(line), "{line} missing from:\n{conf}");
        }
        // `daemon off` is given on the command line: twice would be an error.
        assert!(!conf.contains("daemon"), "{conf}");
    }

    #[test]
    fn this_process_has_memory_and_cpu() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(system_ticks().is_some());
    }
}
