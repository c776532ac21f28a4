//! Reconciliation: compares what Redis says of each showtime with the database's orders,
//! reports every discrepancy, and on request rebuilds Redis from the facts. Safe to run
//! at any time during a sale: the rebuild is one atomic script and never counts fewer
//! paid seats than the store already does.

use crate::ports::{
    Catalog, MessageBus, OrderAudit, OrderBook, PortError, RecordedOrders, SeatAuditor, SeatRow,
    SeatStore, ShowtimeLock as _,
};
use crate::{Sale, SeatCounts, ShowtimeId};

/// Every showtime's reconciliation, and those that could not be reconciled, with why.
#[derive(Debug, Clone, Default)]
pub struct ReconciledAll {
    pub showtimes: Vec<Reconciliation>,
    pub failed: Vec<(ShowtimeId, String)>,
}

/// One showtime's reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub showtime: ShowtimeId,
    pub capacity: u32,
    /// Seats the database's orders hold (a group's order counts its quantity).
    pub ordered: u32,
    /// What the seat store said, if it had the showtime at all.
    pub seats: Option<SeatCounts>,
    pub live_holds: u32,
    /// Seats of the paid reservations whose order is not in the database yet (in
    /// flight).
    pub paid_unrecorded: u32,
    /// Paid orders the database refused that nobody has settled yet.
    pub refused: u32,
    pub discrepancies: Vec<String>,
    /// The counts after a repair, when one was asked for and needed.
    pub repaired: Option<SeatCounts>,
}

impl Reconciliation {
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

impl<S, B, D> Sale<S, B, D>
where
    S: SeatStore + SeatAuditor,
    B: MessageBus,
    D: Catalog + OrderBook + OrderAudit,
{
    /// Reconciles one showtime; `None` if the database does not know it.
    pub async fn reconcile(
        &self,
        id: ShowtimeId,
        repair: bool,
    ) -> Result<Option<Reconciliation>, PortError> {
        // Redis first, the database second, and the database in one snapshot: an order
        // is committed before Redis marks it ORDERED (dropping it from the unrecorded
        // payments), so whenever that happens, a paid seat is either still unrecorded in
        // the audit, or in the database's count; and the count and the recorded ids,
        // read together, agree on every order committed meanwhile. (Read at different
        // moments, an order written in between is counted twice or not at all, and a
        // consistent sale shows a discrepancy.)
        let Some(showtime) = self.db.showtime(id).await? else {
            return Ok(None);
        };
        let capacity = showtime.capacity.get();
        let audit = self.seats.audit(id).await?;
        let unrecorded = audit.as_ref().map_or(&[][..], |a| a.unrecorded.as_slice());
        let RecordedOrders { ordered, recorded } = self.db.recorded(id, unrecorded).await?;
        // Seats, not reservations: a group's payment counts its quantity.
        let paid_unrecorded = audit.as_ref().map_or(0, |a| {
            a.unrecorded
                .iter()
                .zip(a.unrecorded_seats.iter().chain(std::iter::repeat(&1)))
                .filter(|(r, _)| !recorded.contains(r))
                .map(|(_, seats)| *seats)
                .sum::<u32>()
        });
        let mut discrepancies = vec![];
        match &audit {
            None => discrepancies.push("Redis has no stock for this showtime".to_string()),
            Some(a) => {
                let c = a.counts;
                if !c.balanced() {
                    discrepancies.push(format!(
                        "available {} + held {} + sold {} != capacity {}",
                        c.available, c.held, c.sold, c.capacity
                    ));
                }
                if c.capacity != capacity {
                    discrepancies.push(format!(
                        "Redis capacity {} != database capacity {capacity}",
                        c.capacity
                    ));
                }
                if c.held != a.live_holds {
                    discrepancies.push(format!(
                        "Redis counts {} held seats but has {} live holds",
                        c.held, a.live_holds
                    ));
                }
                if !a.swept {
                    discrepancies.push(
                        "the sweep does not walk this showtime (it is missing from the seat store's registry), so its lost expiries and unsent orders would never be recovered"
                            .to_string(),
                    );
                }
                if c.sold != ordered + paid_unrecorded {
                    discrepancies.push(format!(
                        "Redis counts {} sold seats but the database has {} seats ordered and {} paid seats are in flight",
                        c.sold, ordered, paid_unrecorded
                    ));
                }
            }
        }
        let repaired = if repair && !discrepancies.is_empty() {
            // The capacity it rebuilds from is read with the row locked: an operator's
            // change in flight (its seats changed in the store, its row not yet
            // written) finishes first, and its capacity is the one rebuilt, never undone.
            let Some(lock) = self.db.lock_showtime(id).await? else {
                return Ok(None);
            };
            // The orders are read again under the lock. Read before it, an order
            // committed (and marked ORDERED in the store) in between would be counted
            // neither as ordered nor as pending; paid after the audit and committed
            // before the lock, it would be counted as both. No order of this showtime
            // commits while the row is locked (its trigger updates the row), so these
            // reads agree with the store's unrecorded set whenever the rebuild runs.
            let now = self.seats.audit(id).await?;
            let unrecorded = now.as_ref().map_or(&[][..], |a| a.unrecorded.as_slice());
            let RecordedOrders { ordered, recorded } = self.db.recorded(id, unrecorded).await?;
            let row = SeatRow::from(lock.showtime());
            let rebuilt = self.seats.rebuild(id, row, ordered, &recorded).await?;
            drop(lock);
            Some(rebuilt)
        } else {
            None
        };
        // Not a store to repair but people to refund: reported until a person settles
        // them (`refused_orders.resolved_at` in PostgreSQL).
        let refused = self.db.unresolved_refusals(id).await?;
        if !refused.is_empty() {
            let ids: Vec<String> = refused.iter().map(ToString::to_string).collect();
            discrepancies.push(format!(
                "{} paid orders were refused by the database and await a refund: {}",
                refused.len(),
                ids.join(", ")
            ));
        }

        Ok(Some(Reconciliation {
            showtime: id,
            capacity,
            ordered,
            seats: audit.as_ref().map(|a| a.counts),
            live_holds: audit.as_ref().map_or(0, |a| a.live_holds),
            paid_unrecorded,
            refused: refused.len() as u32,
            discrepancies,
            repaired,
        }))
    }

    /// Reconciles every showtime the database knows. One that cannot be read (a broken
    /// key, a Redis Cluster shard down) is named in `failed`, and the others are
    /// reconciled all the same.
    pub async fn reconcile_all(&self, repair: bool) -> Result<ReconciledAll, PortError> {
        let mut all = ReconciledAll::default();
        for id in self.db.showtime_ids().await? {
            match self.reconcile(id, repair).await {
                Ok(reconciled) => all.showtimes.extend(reconciled),
                Err(e) => all.failed.push((id, e.to_string())),
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeBus, FakeDb, FakeSeats};
    use crate::{Capacity, NewShowtime, PaymentMode, SaleSettings, Status, UserId};
    use futures::executor::block_on;
    use std::time::Duration;

    fn sale() -> Sale<FakeSeats, FakeBus, FakeDb> {
        Sale::new(
            FakeSeats::default(),
            FakeBus::default(),
            FakeDb::default(),
            SaleSettings {
                hold: Duration::from_secs(60),
                payment: PaymentMode::Manual,
                sold_out_cache: Duration::ZERO,
            },
        )
    }

    #[test]
    fn a_consistent_sale_reconciles_clean_mid_flight() {
        let sale = sale();
        let st =
            block_on(sale.create_showtime(NewShowtime::always_on_sale(Capacity::new(4).unwrap())))
                .unwrap()
                .id;
        let user = |n| UserId::new(n).unwrap();
        block_on(sale.reserve(user(1), st)).unwrap();
        let paid = block_on(sale.reserve(user(2), st)).unwrap();
        let ordered = block_on(sale.reserve(user(3), st)).unwrap();
        block_on(sale.pay(paid.id, user(2))).unwrap();
        let order = block_on(sale.pay(ordered.id, user(3))).unwrap().order;
        block_on(sale.write_orders(&[order])).unwrap();

        let r = block_on(sale.reconcile(st, true)).unwrap().unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!((r.ordered, r.live_holds, r.paid_unrecorded), (1, 1, 1));
        assert_eq!(r.repaired, None, "nothing to repair");
    }

    #[test]
    fn lost_stock_is_reported_and_rebuilt_from_the_database() {
        let sale = sale();
        let st =
            block_on(sale.create_showtime(NewShowtime::always_on_sale(Capacity::new(3).unwrap())))
                .unwrap()
                .id;
        let user = UserId::new(1).unwrap();
        let r = block_on(sale.reserve(user, st)).unwrap();
        let order = block_on(sale.pay(r.id, user)).unwrap().order;
        block_on(sale.write_orders(&[order])).unwrap();
        sale.seats.lose_everything();

        let report = block_on(sale.reconcile(st, false)).unwrap().unwrap();
        assert_eq!(
            report.discrepancies,
            vec!["Redis has no stock for this showtime"]
        );
        assert_eq!(report.repaired, None);

        let report = block_on(sale.reconcile(st, true)).unwrap().unwrap();
        let rebuilt = report.repaired.unwrap();
        assert_eq!((rebuilt.available, rebuilt.held, rebuilt.sold), (2, 0, 1));
        assert!(
            block_on(sale.reconcile(st, false))
                .unwrap()
                .unwrap()
                .is_clean()
        );
        assert_eq!(
            block_on(sale.reconcile_all(false)).unwrap().showtimes.len(),
            1
        );
    }

    #[test]
    fn a_showtime_the_sweep_does_not_walk_is_reported_and_registered_again() {
        let sale = sale();
        let st =
            block_on(sale.create_showtime(NewShowtime::always_on_sale(Capacity::new(2).unwrap())))
                .unwrap()
                .id;
        let held = block_on(sale.reserve(UserId::new(1).unwrap(), st)).unwrap();
        sale.seats.forget_registration(st);
        sale.seats.advance(Duration::from_secs(3600));
        assert_eq!(
            block_on(sale.sweep(Duration::ZERO)).unwrap().holds_expired,
            0,
            "the sweep cannot see it"
        );

        let report = block_on(sale.reconcile(st, false)).unwrap().unwrap();
        assert!(!report.is_clean());
        assert!(
            report.discrepancies[0].contains("the sweep does not walk"),
            "{report:?}"
        );
        block_on(sale.reconcile(st, true)).unwrap().unwrap();
        assert!(
            block_on(sale.reconcile(st, false))
                .unwrap()
                .unwrap()
                .is_clean()
        );
        assert_eq!(
            block_on(sale.sweep(Duration::ZERO)).unwrap().holds_expired,
            1
        );
        assert_eq!(
            block_on(sale.reservation(held.id)).unwrap().unwrap().status,
            Status::Expired
        );
    }
}
