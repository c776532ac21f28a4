//! Property tests: any interleaving of reserve / pay / cancel / expire / write-order / redelivery
//! / lost messages / broker outages / sweeps keeps the sale's invariants, checked after
//! every step against the fakes' whole state; and once the queues are drained and the
//! sweep has run, every paid reservation is exactly one order and every other hold has
//! given its seat back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::executor::block_on;
use proptest::prelude::*;

use crate::fakes::{FakeBus, FakeDb, FakeSeats};
use crate::messages::{Expiry, OrderRequest};
use crate::ports::SeatStore;
use crate::sale::{PaymentMode, ReserveError, Sale, SaleSettings};
use crate::{
    Capacity, MaxPerUser, NewShowtime, Reservation, ReservationId, ShowtimeId, Status, UserId,
};

const HOLD: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(5);
const SHOWTIMES: i64 = 2;
const USERS: i64 = 6;
/// The most seats one reservation of showtime 1 may take.
const MAX_GROUP: u32 = 3;

#[derive(Debug, Clone)]
enum Step {
    /// Reserve `quantity` seats at once (showtime 1 allows 3 per user, showtime 2 one).
    Reserve {
        user: i64,
        showtime: i64,
        quantity: u32,
    },
    /// Pay the n-th reservation ever made, as `user` (maybe not its owner).
    Pay {
        nth: usize,
        user: i64,
    },
    /// Cancel the n-th reservation ever made, as `user` (maybe not its owner).
    Cancel {
        nth: usize,
        user: i64,
    },
    /// Deliver the oldest pending expiry message (redelivering it when `twice`).
    DeliverExpiry {
        twice: bool,
    },
    /// Deliver up to `n` pending order messages as one batch (redelivering when `twice`).
    DeliverOrders {
        n: usize,
        twice: bool,
    },
    /// A message is lost (a crash before it was published, or a broker that dropped it).
    LoseExpiry,
    LoseOrder,
    /// The broker goes down or comes back.
    Broker {
        down: bool,
    },
    Advance {
        secs: u64,
    },
    Sweep,
    /// An operator takes a seat off a showtime in the database: orders past it are
    /// refused, and their reservations end `REFUSED`.
    ShrinkCapacity {
        showtime: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..=USERS, 1..=SHOWTIMES, 1..=4u32)
            .prop_map(|(user, showtime, quantity)| Step::Reserve { user, showtime, quantity }),
        3 => (0..12usize, 1..=USERS).prop_map(|(nth, user)| Step::Pay { nth, user }),
        2 => (0..12usize, 1..=USERS).prop_map(|(nth, user)| Step::Cancel { nth, user }),
        2 => any::<bool>().prop_map(|twice| Step::DeliverExpiry { twice }),
        2 => (1..4usize, any::<bool>()).prop_map(|(n, twice)| Step::DeliverOrders { n, twice }),
        1 => Just(Step::LoseExpiry),
        1 => Just(Step::LoseOrder),
        1 => any::<bool>().prop_map(|down| Step::Broker { down }),
        2 => (1..90u64).prop_map(|secs| Step::Advance { secs }),
        1 => Just(Step::Sweep),
        1 => (1..=SHOWTIMES).prop_map(|showtime| Step::ShrinkCapacity { showtime }),
    ]
}

struct World {
    sale: Sale<FakeSeats, FakeBus, FakeDb>,
    capacities: HashMap<ShowtimeId, u32>,
    /// Showtimes whose database capacity an operator lowered.
    shrunk: HashSet<ShowtimeId>,
    made: Vec<ReservationId>,
    /// Delivery cursors into the fake bus's queues (messages before them are consumed).
    expiries_done: usize,
    orders_done: usize,
}

impl World {
    fn new(capacity: [u32; SHOWTIMES as usize]) -> Self {
        let sale = Sale::new(
            FakeSeats::default(),
            FakeBus::default(),
            FakeDb::default(),
            SaleSettings {
                hold: HOLD,
                payment: PaymentMode::Manual,
                sold_out_cache: Duration::from_secs(3600),
            },
        );
        let mut capacities = HashMap::new();
        for (i, c) in capacity.into_iter().enumerate() {
            let mut new = NewShowtime::always_on_sale(Capacity::new(c.into()).unwrap());
            // Groups of up to 3 on the first showtime; the second keeps one seat per user.
            new.max_per_user = MaxPerUser::new(if i == 0 { MAX_GROUP.into() } else { 1 }).unwrap();
            let s = block_on(sale.create_showtime(new)).unwrap();
            capacities.insert(s.id, c);
        }
        Self {
            sale,
            capacities,
            shrunk: HashSet::new(),
            made: vec![],
            expiries_done: 0,
            orders_done: 0,
        }
    }

    fn pending_expiries(&self) -> Vec<Expiry> {
        self.sale.bus.expiries.lock().unwrap()[self.expiries_done..].to_vec()
    }

    fn pending_orders(&self) -> Vec<OrderRequest> {
        self.sale.bus.orders.lock().unwrap()[self.orders_done..].to_vec()
    }

    fn run(&mut self, step: &Step) {
        let sale = &self.sale;
        match *step {
            Step::Reserve {
                user,
                showtime,
                quantity,
            } => {
                let user = UserId::new(user).unwrap();
                let showtime = ShowtimeId::new(showtime).unwrap();
                let before = block_on(sale.seats.counts(showtime)).unwrap().unwrap();
                let max = if showtime.get() == 1 { MAX_GROUP } else { 1 };
                let taken = match block_on(sale.reserve_seats(user, showtime, quantity)) {
                    Ok(r) => {
                        assert_eq!(r.quantity, quantity);
                        assert!(quantity <= max && quantity <= before.available);
                        self.made.push(r.id);
                        true
                    }
                    // Sold out (remembered or not) only when no seat at all is left.
                    Err(ReserveError::SoldOut { .. }) => {
                        assert_eq!(before.available, 0);
                        false
                    }
                    Err(ReserveError::NotEnoughSeats { available, .. }) => {
                        assert!(available > 0 && available < quantity);
                        assert_eq!(available, before.available);
                        false
                    }
                    Err(ReserveError::TooManySeats { max_per_user, .. }) => {
                        assert!(quantity > max_per_user);
                        assert_eq!(max_per_user, max);
                        false
                    }
                    Err(_) => false,
                };
                let after = block_on(sale.seats.counts(showtime)).unwrap().unwrap();
                if taken {
                    // All or none: exactly `quantity` seats moved to held.
                    assert_eq!(after.held, before.held + quantity);
                    assert_eq!(after.available + quantity, before.available);
                } else {
                    assert_eq!(after, before, "a refused reservation changes nothing");
                }
            }
            Step::Pay { nth, user } => {
                if let Some(id) = self.made.get(nth) {
                    let _ = block_on(sale.pay(*id, UserId::new(user).unwrap()));
                }
            }
            Step::Cancel { nth, user } => {
                if let Some(id) = self.made.get(nth) {
                    let _ = block_on(sale.cancel(*id, UserId::new(user).unwrap()));
                }
            }
            Step::DeliverExpiry { twice } => {
                if let Some(m) = self.pending_expiries().first().copied() {
                    block_on(sale.expire(m)).unwrap();
                    if twice {
                        block_on(sale.expire(m)).unwrap();
                    }
                    self.expiries_done += 1;
                }
            }
            Step::DeliverOrders { n, twice } => {
                let batch: Vec<_> = self.pending_orders().into_iter().take(n).collect();
                if !batch.is_empty() {
                    block_on(sale.write_orders(&batch)).unwrap();
                    if twice {
                        block_on(sale.write_orders(&batch)).unwrap();
                    }
                    self.orders_done += batch.len();
                }
            }
            Step::LoseExpiry => {
                if !self.pending_expiries().is_empty() {
                    self.expiries_done += 1;
                }
            }
            Step::LoseOrder => {
                if !self.pending_orders().is_empty() {
                    self.orders_done += 1;
                }
            }
            Step::Broker { down } => sale.bus.down.store(down, Ordering::SeqCst),
            Step::Advance { secs } => sale.seats.advance(Duration::from_secs(secs)),
            Step::Sweep => {
                let _ = block_on(sale.sweep(GRACE));
            }
            Step::ShrinkCapacity { showtime } => {
                let showtime = ShowtimeId::new(showtime).unwrap();
                sale.db.shrink_capacity(showtime);
                self.shrunk.insert(showtime);
            }
        }
    }

    fn reservations(&self) -> Vec<Reservation> {
        self.made
            .iter()
            .map(|id| block_on(self.sale.reservation(*id)).unwrap().unwrap())
            .collect()
    }

    /// What must hold after every step.
    fn check(&self) -> Result<(), TestCaseError> {
        let all = self.reservations();
        let orders = self.sale.db.orders.lock().unwrap().clone();
        for (showtime, capacity) in &self.capacities {
            let counts = block_on(self.sale.seats.counts(*showtime))
                .unwrap()
                .unwrap();
            let mine: Vec<_> = all.iter().filter(|r| r.showtime() == *showtime).collect();
            let held = mine
                .iter()
                .filter(|r| r.status == Status::Reserved)
                .map(|r| r.quantity)
                .sum::<u32>();
            let sold = mine
                .iter()
                .filter(|r| matches!(r.status, Status::Paid | Status::Ordered))
                .map(|r| r.quantity)
                .sum::<u32>();
            prop_assert!(counts.balanced(), "{counts:?}");
            // An order the database refuses as sold out (here only where an operator
            // lowered its capacity in the database) takes its seats out of the stock.
            let out_of_stock = if self.shrunk.contains(showtime) {
                mine.iter()
                    .filter(|r| r.status == Status::Refused)
                    .map(|r| r.quantity)
                    .sum::<u32>()
            } else {
                0
            };
            prop_assert_eq!(counts.capacity + out_of_stock, *capacity);
            prop_assert_eq!(counts.held, held, "held seats are the RESERVED holds");
            prop_assert_eq!(
                counts.sold,
                sold,
                "sold seats are the PAID and ORDERED ones"
            );
            let mut users = HashSet::new();
            for r in mine.iter().filter(|r| r.status.occupies_seat()) {
                prop_assert!(
                    users.insert(r.user),
                    "user {} holds two seats of {showtime}",
                    r.user
                );
            }
            let ordered: u32 = orders
                .values()
                .filter(|o| o.reservation.showtime() == *showtime)
                .map(|o| o.quantity)
                .sum();
            prop_assert!(
                ordered <= *capacity,
                "more seats ordered than the showtime has"
            );
            let report = block_on(self.sale.reconcile(*showtime, false))
                .unwrap()
                .unwrap();
            let refused = mine.iter().filter(|r| r.status == Status::Refused).count() as u32;
            prop_assert_eq!(report.refused, refused, "every REFUSED awaits a refund");
            // What reconciliation may report: the refunds, and the capacity an operator
            // changed in the database. Nothing else.
            let unexpected: Vec<_> = report
                .discrepancies
                .iter()
                .filter(|d| !d.contains("await a refund"))
                .filter(|d| !(self.shrunk.contains(showtime) && d.starts_with("Redis capacity")))
                .collect();
            prop_assert!(unexpected.is_empty(), "reconciliation found {unexpected:?}");
        }
        let refusals = self.sale.db.refusals.lock().unwrap().clone();
        for r in &all {
            prop_assert_eq!(
                r.status == Status::Refused,
                refusals.contains_key(&r.id),
                "{} is {} and a refusal is on record: {}",
                r.id,
                r.status,
                refusals.contains_key(&r.id)
            );
        }
        for (id, order) in &orders {
            let r = all
                .iter()
                .find(|r| r.id == *id)
                .expect("an order has a reservation");
            prop_assert!(
                matches!(r.status, Status::Paid | Status::Ordered),
                "order for a {} hold",
                r.status
            );
            prop_assert_eq!(order.user, r.user);
            prop_assert_eq!(
                order.quantity,
                r.quantity,
                "an order carries its hold's seats"
            );
        }
        Ok(())
    }

    /// The broker comes back, the hold time passes, the sweep runs, every queue drains.
    fn settle(&mut self) {
        self.sale.bus.down.store(false, Ordering::SeqCst);
        self.sale.seats.advance(HOLD + GRACE);
        block_on(self.sale.sweep(GRACE)).unwrap();
        while !self.pending_expiries().is_empty() {
            self.run(&Step::DeliverExpiry { twice: false });
        }
        let rest = self.pending_orders();
        block_on(self.sale.write_orders(&rest)).unwrap();
        self.orders_done += rest.len();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_interleaving_keeps_the_invariants_and_settles_exactly_once(
        capacity in [1u32..7, 1u32..4],
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut world = World::new(capacity);
        for step in &steps {
            world.run(step);
            world.check()?;
        }
        world.settle();
        world.check()?;
        let orders = world.sale.db.orders.lock().unwrap().clone();
        for r in world.reservations() {
            match r.status {
                Status::Ordered => prop_assert!(orders.contains_key(&r.id)),
                Status::Expired | Status::Refused | Status::Cancelled => {
                    prop_assert!(!orders.contains_key(&r.id))
                }
                other => prop_assert!(false, "{} is still {other} after settling", r.id),
            }
        }
        let all = world.reservations();
        for (showtime, capacity) in &world.capacities {
            let c = block_on(world.sale.seats.counts(*showtime)).unwrap().unwrap();
            let ordered: u32 = orders
                .values()
                .filter(|o| o.reservation.showtime() == *showtime)
                .map(|o| o.quantity)
                .sum();
            // Refused as sold out where the database's capacity was lowered: out of the
            // stock, not on sale.
            let out_of_stock: u32 = if world.shrunk.contains(showtime) {
                all.iter()
                    .filter(|r| r.showtime() == *showtime && r.status == Status::Refused)
                    .map(|r| r.quantity)
                    .sum()
            } else {
                0
            };
            prop_assert_eq!(
                (c.held, c.sold, c.available),
                (0, ordered, capacity - ordered - out_of_stock)
            );
        }
    }
}
