//! The `flash-sale` process: configuration from the environment, the services, the
//! listener, and a clean stop on Ctrl-C or SIGTERM.

use anyhow::Context as _;
use flash_sale_runtime::{App, Config, init_tracing};

/// What `main` does: read the environment, connect, serve until told to stop.
pub async fn run_from_env() -> anyhow::Result<()> {
    init_tracing();
    let config = Config::from_env().context("bad configuration")?;
    let addr = config.addr;
    let app = App::connect(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on ADDR={addr}"))?;
    crate::serve(app, listener, shutdown_signal()).await
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
                "showtime {}: {verdict}: capacity {}, {seats}; {} orders in PostgreSQL, {} paid in flight, {} live holds, {} refused awaiting a refund",
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
