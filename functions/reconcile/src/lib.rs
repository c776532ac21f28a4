//! # reconcile
//!
//! The sale's audit, safe to run at any moment of a sale: first the sweep (holds past
//! their deadline whose expiry never came are expired; paid orders that never reached the
//! database are re-sent), then, per showtime, Redis's counts against PostgreSQL's orders
//! and the live holds, with every discrepancy named, and the queues' in-flight and
//! dead-lettered work. With `repair`, Redis is rebuilt from the facts.
//!
//! Runs as a scheduled Lambda function and as `flash-sale reconcile`.

use std::time::Duration;

use flash_sale_core::reconcile::{ReconciledAll, Reconciliation};
use flash_sale_core::sale::SweepReport;
use flash_sale_runtime::{App, RoomsAdvanced};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct SeatsView {
    pub capacity: u32,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
}

#[derive(Debug, Serialize)]
pub struct ShowtimeReport {
    pub showtime_id: i64,
    pub capacity: u32,
    /// Seats, not rows: a group's order counts its quantity (so do the next two).
    pub orders_in_database: u32,
    pub paid_in_flight: u32,
    pub live_holds: u32,
    /// Paid orders the database refused that await a refund (`refused_orders`).
    pub refused_awaiting_refund: u32,
    pub redis: Option<SeatsView>,
    pub discrepancies: Vec<String>,
    pub repaired: Option<SeatsView>,
}

/// A showtime the sweep or the reconciliation could not finish, and why.
#[derive(Debug, Serialize)]
pub struct Unfinished {
    pub showtime_id: i64,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    /// Messages ready for a consumer. A message may carry several holds, payment requests
    /// or orders (they are published in batches), so this counts messages, not entries.
    pub ready: u32,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub holds_expired_by_sweep: usize,
    pub orders_resent_by_sweep: usize,
    /// Showtimes the sweep could not finish (the others were swept).
    pub showtimes_not_swept: Vec<Unfinished>,
    /// Waiting rooms of showtimes on sale whose line was advanced.
    pub waiting_rooms_advanced: usize,
    /// Waiting rooms left in Redis whose row has none (a removal that was lost), removed.
    pub waiting_rooms_removed: usize,
    /// Waiting rooms that could not be set from their row or advanced (the others were).
    pub waiting_rooms_not_advanced: Vec<Unfinished>,
    pub showtimes: Vec<ShowtimeReport>,
    /// Showtimes that could not be reconciled (the others were).
    pub showtimes_not_reconciled: Vec<Unfinished>,
    pub queues: Vec<QueueDepth>,
    /// Steps that failed as a whole, and why (the others ran).
    pub failures: Vec<String>,
}

impl Report {
    /// Whether every step ran and every showtime was swept and reconciled without a
    /// discrepancy (or was repaired), with no refused order awaiting a refund (no repair settles those: a
    /// person does).
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
            && self.showtimes_not_swept.is_empty()
            && self.showtimes_not_reconciled.is_empty()
            && self.waiting_rooms_not_advanced.is_empty()
            && self.showtimes.iter().all(|s| {
                s.refused_awaiting_refund == 0
                    && (s.discrepancies.is_empty() || s.repaired.is_some())
            })
    }
}

fn view(c: flash_sale_core::SeatCounts) -> SeatsView {
    SeatsView {
        capacity: c.capacity,
        available: c.available,
        held: c.held,
        sold: c.sold,
    }
}

fn showtime_report(r: Reconciliation) -> ShowtimeReport {
    ShowtimeReport {
        showtime_id: r.showtime.get(),
        capacity: r.capacity,
        orders_in_database: r.ordered,
        paid_in_flight: r.paid_unrecorded,
        live_holds: r.live_holds,
        refused_awaiting_refund: r.refused,
        redis: r.seats.map(view),
        discrepancies: r.discrepancies,
        repaired: r.repaired.map(view),
    }
}

/// Sweeps (with `sweep_grace`), advances the waiting rooms, reconciles `only` one showtime
/// or all of them, and reads the queues' depths. Each step runs whatever the one before
/// met: a step that fails (the broker refusing the sweep's re-sent orders, the database
/// not answering) is named in the report's `failures`, which make it unclean, so the
/// audit still reports what it could read and the scheduled function still logs it.
pub async fn run(
    app: &App,
    only: Option<flash_sale_core::ShowtimeId>,
    repair: bool,
    sweep_grace: Duration,
) -> Result<Report, flash_sale_core::PortError> {
    let mut failures = vec![];
    let mut step = |name: &str, e: &dyn std::fmt::Display| {
        failures.push(format!("{name}: {e}"));
    };
    let SweepReport {
        holds_expired,
        orders_resent,
        failed,
        orders_not_resent,
    } = app.sale.sweep(sweep_grace).await.unwrap_or_else(|e| {
        step("the sweep", &e);
        SweepReport::default()
    });
    if let Some(why) = orders_not_resent {
        step("the sweep", &why);
    }
    // The waiting rooms' timer on Lambda (this function's schedule): joins, polls and
    // reserves advance them too, lazily.
    let rooms = app.advance_rooms().await.unwrap_or_else(|e| {
        step("advancing the waiting rooms", &e);
        RoomsAdvanced::default()
    });
    let reconciled = match only {
        Some(id) => app
            .sale
            .reconcile(id, repair)
            .await
            .map(|one| ReconciledAll {
                showtimes: one.into_iter().collect(),
                failed: vec![],
            }),
        None => app.sale.reconcile_all(repair).await,
    }
    .unwrap_or_else(|e| {
        step("the reconciliation", &e);
        ReconciledAll::default()
    });
    let queues = match app.queues.depths().await {
        Ok(depths) => depths
            .into_iter()
            .map(|(queue, ready)| QueueDepth { queue, ready })
            .collect(),
        Err(e) => {
            step("reading the queues' depths", &e);
            vec![]
        }
    };
    let unfinished = |failed: Vec<(flash_sale_core::ShowtimeId, String)>| {
        failed
            .into_iter()
            .map(|(showtime, error)| Unfinished {
                showtime_id: showtime.get(),
                error,
            })
            .collect()
    };
    Ok(Report {
        holds_expired_by_sweep: holds_expired,
        orders_resent_by_sweep: orders_resent,
        showtimes_not_swept: unfinished(failed),
        waiting_rooms_advanced: rooms.advanced,
        waiting_rooms_removed: rooms.removed,
        waiting_rooms_not_advanced: unfinished(rooms.failed),
        showtimes: reconciled
            .showtimes
            .into_iter()
            .map(showtime_report)
            .collect(),
        showtimes_not_reconciled: unfinished(reconciled.failed),
        queues,
        failures,
    })
}
