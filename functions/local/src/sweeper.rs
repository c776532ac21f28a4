//! The sweep, every `SWEEP_INTERVAL_SECS`: the backstop for expiry and order messages
//! that never arrived (see [`Sale::sweep`](flash_sale_core::Sale::sweep)). Not a
//! consumer: it reads the seat store's deadlines and unrecorded payments, not a queue.

use flash_sale_runtime::{App, metrics};

/// Runs the sweep every `SWEEP_INTERVAL_SECS`: the backstop for expiry and order
/// messages that never arrived; then advances the waiting rooms on sale.
pub async fn run(app: App) {
    let mut every = tokio::time::interval(app.config.sweep_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let swept = app.sale.sweep(app.config.sweep_grace).await;
        if let Ok(report) = &swept {
            metrics::sweep(report.holds_expired, report.orders_resent);
        }
        match swept {
            Ok(report) => {
                for (showtime, error) in &report.failed {
                    tracing::warn!(
                        showtime = showtime.get(),
                        "the sweep could not sweep this showtime (it swept the others): {error}"
                    );
                }
                if let Some(error) = &report.orders_not_resent {
                    tracing::warn!("the sweep will try again: {error}");
                }
                if report.holds_expired + report.orders_resent > 0 {
                    tracing::warn!(?report, "the sweep found work the queues had not done");
                }
            }
            Err(e) => tracing::warn!("sweep failed: {e}"),
        }
        match app.advance_rooms().await {
            Ok(round) => {
                if round.removed > 0 {
                    tracing::warn!(
                        removed = round.removed,
                        "the timer removed waiting rooms their rows no longer have (a removal had been lost)"
                    );
                }
                for (showtime, error) in &round.failed {
                    tracing::warn!(
                        showtime = showtime.get(),
                        "the timer could not set or advance this waiting room (it did the others): {error}"
                    );
                }
            }
            Err(e) => tracing::warn!("advancing the waiting rooms failed: {e}"),
        }
    }
}

/// Reconciles every `RECONCILE_INTERVAL_SECS` for the metrics: each showtime on sale's
/// seats, discrepancies and refunds awaiting, and every queue's depth. Reports only:
/// repairing stays a person's decision (`flash-sale reconcile --repair`).
pub async fn reconcile_for_metrics(app: App) {
    if app.config.reconcile_interval.is_zero() {
        return;
    }
    let mut every = tokio::time::interval(app.config.reconcile_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The showtimes shown last round: one that stops needing a person's eye is shown once
    // more, so its gauges end on its last seats (none held, every seat sold) and no
    // discrepancy, instead of keeping the last values it had on sale until they idle out.
    let mut shown = std::collections::HashSet::new();
    loop {
        every.tick().await;
        match app.sale.reconcile_all(false).await {
            Ok(all) => {
                for (showtime, error) in &all.failed {
                    tracing::warn!(
                        showtime = showtime.get(),
                        "reconciling this showtime for the metrics failed: {error}"
                    );
                }
                // A showtime whose reconciliation failed this round keeps its place.
                let mut showing: std::collections::HashSet<_> = all
                    .failed
                    .iter()
                    .map(|(showtime, _)| *showtime)
                    .filter(|showtime| shown.contains(showtime))
                    .collect();
                for r in all.showtimes {
                    let on_sale = r.seats.is_some_and(|c| c.available + c.held > 0);
                    // A refund awaiting comes most often once a showtime is sold out.
                    let watched = on_sale || !r.discrepancies.is_empty() || r.refused > 0;
                    if watched || shown.contains(&r.showtime) {
                        metrics::showtime(
                            r.showtime.get(),
                            r.seats.map(|c| (c.available, c.held, c.sold)),
                            r.discrepancies.len(),
                            r.refused,
                        );
                    }
                    if watched {
                        showing.insert(r.showtime);
                    }
                }
                shown = showing;
            }
            Err(e) => tracing::warn!("reconciling for the metrics failed: {e}"),
        }
        match app.queues.depths().await {
            Ok(depths) => {
                for (queue, ready) in depths {
                    metrics::queue_ready(&queue, ready);
                }
            }
            Err(e) => tracing::warn!("reading the queue depths failed: {e}"),
        }
    }
}
