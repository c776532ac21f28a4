//! The `flash-sale` process: configuration from the environment, the services, the
//! listener, and a clean stop on Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context as _;
use flash_sale_runtime::config::Env;
use flash_sale_runtime::{App, Config, init_tracing};
use tokio::net::{TcpListener, TcpSocket};

/// What `main` does: read the environment, connect, serve until told to stop.
pub async fn run_from_env() -> anyhow::Result<()> {
    init_tracing();
    let config = Config::from_env().context("bad configuration")?;
    let listening = Listening::from_env(config.addr).context("bad configuration")?;
    let app = App::connect(config).await?;
    let listener = listening.bind()?;
    crate::serve(app, listener, shutdown_signal()).await
}

/// How the process listens: on `ADDR`, with a listen queue of `LISTEN_BACKLOG`
/// connections (default: the system's most, `net.core.somaxconn`), so a crowd that
/// connects in the same instant is queued, not dropped (a dropped SYN costs a buyer a
/// 1-3 s retransmit). `LISTEN_REUSEPORT=true` lets several processes share `ADDR`, the
/// kernel spreading connections over them; off by default, since it also lets a stale
/// process keep a share of the port silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub addr: SocketAddr,
    pub backlog: u32,
    pub reuse_port: bool,
}

/// Where Linux keeps the most a listen queue may hold.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

impl Listening {
    pub fn from_env(addr: SocketAddr) -> anyhow::Result<Self> {
        let env = Env::process();
        let system_most = std::fs::read_to_string(SOMAXCONN)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(4096);
        Ok(Self {
            addr,
            backlog: env.number("LISTEN_BACKLOG", system_most, 1..=u64::from(u32::MAX))? as u32,
            reuse_port: env.flag_or("LISTEN_REUSEPORT", false)?,
        })
    }

    /// Binds the listener (the kernel caps the queue at `net.core.somaxconn`).
    pub fn bind(&self) -> anyhow::Result<TcpListener> {
        let addr = self.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        // As std's and tokio's own listeners do: a restarted process may bind at once.
        socket.set_reuseaddr(true)?;
        if self.reuse_port {
            socket.set_reuseport(true)?;
        }
        socket
            .bind(addr)
            .with_context(|| format!("cannot listen on ADDR={addr}"))?;
        socket
            .listen(self.backlog)
            .with_context(|| format!("cannot listen on ADDR={addr}"))
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// `flash-sale reconcile`: sweep, reconcile, print the report. Returns whether it is clean.
pub async fn reconcile_from_env(
    showtime: Option<i64>,
    repair: bool,
    json: bool,
) -> anyhow::Result<bool> {
    init_tracing();
    let config = Config::from_env().context("bad configuration")?;
    let app = App::connect(config).await?;
    let only = showtime.map(flash_sale_core::ShowtimeId::new).transpose()?;
    let report = flash_sale_reconcile::run(&app, only, repair, app.config.sweep_grace).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sweep: {} overdue holds expired, {} unrecorded orders re-sent",
            report.holds_expired_by_sweep, report.orders_resent_by_sweep
        );
        println!(
            "waiting rooms: {} advanced, {} removed (their rows have none)",
            report.waiting_rooms_advanced, report.waiting_rooms_removed
        );
        for s in &report.showtimes {
            let seats = s
                .redis
                .as_ref()
                .map_or("missing in Redis".to_string(), |r| {
                    format!("available {} held {} sold {}", r.available, r.held, r.sold)
                });
            let verdict = if s.discrepancies.is_empty() {
                "ok"
            } else {
                "DISCREPANCY"
            };
            println!(
                "showtime {}: {verdict}: capacity {}, {seats}; {} seats ordered in PostgreSQL, {} paid seats in flight, {} seats in live holds, {} refused awaiting a refund",
                s.showtime_id,
                s.capacity,
                s.orders_in_database,
                s.paid_in_flight,
                s.live_holds,
                s.refused_awaiting_refund
            );
            for d in &s.discrepancies {
                println!("  - {d}");
            }
            if let Some(r) = &s.repaired {
                println!(
                    "  repaired: available {} held {} sold {}",
                    r.available, r.held, r.sold
                );
            }
        }
        for q in &report.queues {
            // Messages, not entries: a message may carry a batch (adapters' rabbit::batch).
            println!("queue {}: {} messages ready", q.queue, q.ready);
        }
        for (what, unfinished) in [
            ("NOT SWEPT", &report.showtimes_not_swept),
            ("NOT RECONCILED", &report.showtimes_not_reconciled),
            (
                "WAITING ROOM NOT ADVANCED",
                &report.waiting_rooms_not_advanced,
            ),
        ] {
            for u in unfinished {
                println!("showtime {}: {what}: {}", u.showtime_id, u.error);
            }
        }
        for f in &report.failures {
            println!("FAILED: {f}");
        }
    }
    Ok(report.is_clean())
}

/// `flash-sale replay`: moves up to `limit` dead letters of `queue` back to work.
pub async fn replay_from_env(
    queue: flash_sale_adapters::Queue,
    limit: usize,
) -> anyhow::Result<usize> {
    init_tracing();
    let config = Config::from_env().context("bad configuration")?;
    let app = App::connect(config).await?;
    let moved = app.queues.replay_dead_letters(queue, limit).await?;
    flash_sale_runtime::metrics::replayed(queue.key(), moved);
    Ok(moved)
}
