//! The sweep, every `SWEEP_INTERVAL_SECS`: the backstop for expiry and order messages
//! that never arrived (see [`Sale::sweep`](flash_sale_core::Sale::sweep)). Not a
//! consumer: it reads the seat store's deadlines and unrecorded payments, not a queue.

use flash_sale_runtime::App;

/// Runs the sweep every `SWEEP_INTERVAL_SECS`: the backstop for expiry and order
/// messages that never arrived.
pub async fn run(app: App) {
    let mut every = tokio::time::interval(app.config.sweep_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let swept = app.sale.sweep(app.config.sweep_grace).await;
        if let Ok(report) = &swept {
            flash_sale_runtime::metrics::sweep(report.holds_expired, report.orders_resent);
        }
        match swept {
            Ok(report) if report.holds_expired + report.orders_resent > 0 => {
                tracing::warn!(?report, "the sweep found work the queues had not done");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("sweep failed: {e}"),
        }
    }
}
