//! In-memory ports for the unit tests: the same semantics as the Lua scripts and the
//! SQL, on a mutex and a hand-driven clock.

use std::collections::{BTreeMap, HashMap};
use std::future::{Future, ready};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::messages::{Expiry, OrderRequest, PaymentRequest};
use crate::ports::*;
use crate::*;

#[derive(Debug, Default)]
struct SeatsState {
    counts: HashMap<ShowtimeId, SeatCounts>,
    users: HashMap<(ShowtimeId, UserId), ReservationId>,
    reservations: BTreeMap<ReservationId, Reservation>,
    by_user: HashMap<UserId, Vec<ReservationId>>,
    paid_at: HashMap<ReservationId, UnixMillis>,
    seq: HashMap<ShowtimeId, u64>,
    /// Showtimes with stock that the sweep does not walk (a lost registration).
    unswept: std::collections::HashSet<ShowtimeId>,
    /// The catalog generation each showtime's state belongs to.
    generations: HashMap<ShowtimeId, u64>,
    /// Seats one reservation may take, per showtime (as load.lua stores it).
    max_per_user: HashMap<ShowtimeId, u32>,
    /// The row capacity each showtime's stock reflects and the capacity it was written
    /// with (`row_capacity`, `row_capacity_stock` of resize.lua).
    row_capacity: HashMap<ShowtimeId, (u32, u32)>,
}

#[derive(Debug, Default)]
pub struct FakeSeats {
    state: Mutex<SeatsState>,
    pub now: AtomicU64,
}

impl FakeSeats {
    /// resize.lua: the stock moves from the row capacity it reflects (when the capacity
    /// it was written with is still the capacity; else `from`) to `to`; an undo only
    /// while it reflects `from`.
    fn resize_as_the_script_does(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
        undo: bool,
    ) -> ResizeOutcome {
        let mut st = self.state.lock().unwrap();
        let Some(c) = st.counts.get(&showtime).copied() else {
            return ResizeOutcome::UnknownShowtime;
        };
        let reflected = match st.row_capacity.get(&showtime) {
            Some((row, stock)) if *stock == c.capacity => *row,
            _ => from,
        };
        if undo && reflected != from {
            return ResizeOutcome::Resized(c);
        }
        let by = i64::from(to) - i64::from(reflected);
        let available = i64::from(c.available) + by;
        if available < 0 {
            return ResizeOutcome::InUse(c);
        }
        let after = SeatCounts {
            capacity: (i64::from(c.capacity) + by) as u32,
            available: available as u32,
            ..c
        };
        st.counts.insert(showtime, after);
        st.row_capacity.insert(showtime, (to, after.capacity));
        ResizeOutcome::Resized(after)
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    fn now(&self) -> UnixMillis {
        UnixMillis(self.now.load(Ordering::SeqCst))
    }

    /// Drops a showtime from the sweep's registry, keeping its stock and holds.
    pub fn forget_registration(&self, showtime: ShowtimeId) {
        self.state.lock().unwrap().unswept.insert(showtime);
    }

    /// Drops everything, as a Redis that restarted without persistence would.
    pub fn lose_everything(&self) {
        *self.state.lock().unwrap() = SeatsState::default();
    }

    fn return_seat(st: &mut SeatsState, id: ReservationId) {
        Self::release(st, id, Status::Expired);
    }

    /// A `RESERVED` hold ends as `status`: its seat back on sale, its user free to hold
    /// again.
    fn release(st: &mut SeatsState, id: ReservationId, status: Status) {
        let r = st.reservations.get_mut(&id).unwrap();
        r.status = status;
        let (user, quantity) = (r.user, r.quantity);
        st.users.remove(&(id.showtime(), user));
        let c = st.counts.get_mut(&id.showtime()).unwrap();
        c.held -= quantity;
        c.available += quantity;
    }
}

impl SeatStore for FakeSeats {
    fn take_seats(
        &self,
        showtime: ShowtimeId,
        user: UserId,
        quantity: u32,
        hold: Duration,
    ) -> impl Future<Output = PortResult<TakeOutcome>> + Send {
        let now = self.now();
        let mut st = self.state.lock().unwrap();
        let max_per_user = st.max_per_user.get(&showtime).copied().unwrap_or(1);
        let outcome = if !st.counts.contains_key(&showtime) {
            TakeOutcome::UnknownShowtime
        } else if let Some(id) = st.users.get(&(showtime, user)) {
            TakeOutcome::AlreadyHolds(*id, st.reservations.get(id).map(|r| r.status))
        } else if quantity > max_per_user {
            TakeOutcome::TooManySeats { max_per_user }
        } else if st.counts[&showtime].available == 0 {
            TakeOutcome::SoldOut
        } else if st.counts[&showtime].available < quantity {
            TakeOutcome::NotEnoughSeats {
                available: st.counts[&showtime].available,
            }
        } else {
            let c = st.counts.get_mut(&showtime).unwrap();
            c.available -= quantity;
            c.held += quantity;
            // As reserve.lua: the sequence never falls behind the clock in microseconds.
            let seq = st.seq.entry(showtime).or_default();
            *seq = (*seq + 1).max(now.0 * 1000);
            let id = ReservationId::new(showtime, *seq).unwrap();
            let r = Reservation {
                id,
                user,
                status: Status::Reserved,
                expires_at: UnixMillis(now.0 + hold.as_millis() as u64),
                quantity,
            };
            st.users.insert((showtime, user), id);
            st.reservations.insert(id, r.clone());
            TakeOutcome::Reserved(r)
        };
        ready(Ok(outcome))
    }

    fn load(
        &self,
        showtime: ShowtimeId,
        capacity: u32,
        sold: u32,
        generation: u64,
        reload: bool,
        max_per_user: u32,
    ) -> impl Future<Output = PortResult<bool>> + Send {
        let mut st = self.state.lock().unwrap();
        let mut reload = reload;
        if st.counts.contains_key(&showtime)
            && st
                .generations
                .get(&showtime)
                .is_some_and(|g| *g != generation)
        {
            // Another row's state under this id: replaced, as load.lua does.
            st.counts.remove(&showtime);
            st.users.retain(|(s, _), _| *s != showtime);
            st.reservations.retain(|id, _| id.showtime() != showtime);
            reload = true;
        }
        st.generations.insert(showtime, generation);
        let loaded = !st.counts.contains_key(&showtime);
        if loaded && reload {
            let seq = st.seq.entry(showtime).or_default();
            *seq = (*seq).max(self.now.load(Ordering::SeqCst) * 1000 + 1_000_000);
        }
        if loaded {
            st.max_per_user.insert(showtime, max_per_user);
            st.row_capacity.insert(showtime, (capacity, capacity));
            st.counts.insert(
                showtime,
                SeatCounts {
                    capacity,
                    available: capacity - sold,
                    held: 0,
                    sold,
                },
            );
        }
        ready(Ok(loaded))
    }

    fn pay(
        &self,
        id: ReservationId,
        user: UserId,
    ) -> impl Future<Output = PortResult<PayOutcome>> + Send {
        let now = self.now();
        let mut st = self.state.lock().unwrap();
        let outcome = match st.reservations.get(&id).cloned() {
            None => PayOutcome::NotFound,
            Some(r) if r.user != user => PayOutcome::NotOwner,
            Some(r) if r.status == Status::Expired => PayOutcome::Expired,
            Some(r) if r.status == Status::Cancelled => PayOutcome::Cancelled,
            Some(r) if r.status != Status::Reserved => PayOutcome::AlreadyPaid(r.status),
            Some(r) if now >= r.expires_at => {
                Self::return_seat(&mut st, id);
                PayOutcome::Expired
            }
            Some(r) => {
                st.reservations.get_mut(&id).unwrap().status = Status::Paid;
                st.paid_at.insert(id, now);
                let c = st.counts.get_mut(&id.showtime()).unwrap();
                c.held -= r.quantity;
                c.sold += r.quantity;
                PayOutcome::Paid {
                    paid_at: now,
                    quantity: r.quantity,
                }
            }
        };
        ready(Ok(outcome))
    }

    fn cancel(
        &self,
        id: ReservationId,
        user: UserId,
    ) -> impl Future<Output = PortResult<CancelOutcome>> + Send {
        let now = self.now();
        let mut st = self.state.lock().unwrap();
        let outcome = match st.reservations.get(&id).cloned() {
            None => CancelOutcome::NotFound,
            Some(r) if r.user != user => CancelOutcome::NotOwner,
            Some(r) if r.status == Status::Expired => CancelOutcome::Expired,
            Some(r) if r.status == Status::Cancelled => CancelOutcome::AlreadyCancelled,
            Some(r) if r.status != Status::Reserved => CancelOutcome::AlreadyPaid(r.status),
            Some(r) if now >= r.expires_at => {
                Self::return_seat(&mut st, id);
                CancelOutcome::Expired
            }
            Some(_) => {
                Self::release(&mut st, id, Status::Cancelled);
                CancelOutcome::Cancelled
            }
        };
        ready(Ok(outcome))
    }

    fn expire(&self, id: ReservationId) -> impl Future<Output = PortResult<ExpireOutcome>> + Send {
        let mut st = self.state.lock().unwrap();
        let outcome = match st.reservations.get(&id).map(|r| r.status) {
            None => ExpireOutcome::NotFound,
            Some(Status::Reserved) => {
                Self::return_seat(&mut st, id);
                ExpireOutcome::SeatReturned
            }
            Some(other) => ExpireOutcome::AlreadySettled(other),
        };
        ready(Ok(outcome))
    }

    fn mark_ordered(
        &self,
        orders: &[(ReservationId, UserId)],
    ) -> impl Future<Output = PortResult<usize>> + Send {
        let mut st = self.state.lock().unwrap();
        let mut moved = 0;
        for (id, of) in orders {
            let Some(r) = st.reservations.get_mut(id) else {
                continue;
            };
            // As mark_ordered.lua: the database's order is a sale, whatever the store
            // says (a hold whose payment the store lost included), if it is its user's.
            let (was, user, quantity) = (r.status, r.user, r.quantity);
            if user != *of || was == Status::Ordered {
                continue;
            }
            moved += 1;
            match was {
                Status::Paid | Status::Ordered => r.status = Status::Ordered,
                Status::Reserved => {
                    r.status = Status::Ordered;
                    let c = st.counts.get_mut(&id.showtime()).unwrap();
                    c.held -= quantity;
                    c.sold += quantity;
                }
                Status::Refused | Status::Expired | Status::Cancelled => {
                    r.status = Status::Ordered;
                    let c = st.counts.get_mut(&id.showtime()).unwrap();
                    c.sold += quantity;
                    c.available = c.available.saturating_sub(quantity);
                    if was != Status::Refused {
                        st.users.entry((id.showtime(), user)).or_insert(*id);
                    }
                }
            }
        }
        ready(Ok(moved))
    }

    fn mark_refused(
        &self,
        ids: &[ReservationId],
        seats: RefusedSeats,
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send {
        let mut st = self.state.lock().unwrap();
        let mut moved = vec![];
        for id in ids {
            if let Some(r) = st.reservations.get_mut(id)
                && r.status == Status::Paid
            {
                r.status = Status::Refused;
                let quantity = r.quantity;
                let c = st.counts.get_mut(&id.showtime()).unwrap();
                c.sold -= quantity;
                match seats {
                    RefusedSeats::BackOnSale => c.available += quantity,
                    RefusedSeats::OutOfStock => c.capacity -= quantity,
                }
                if matches!(seats, RefusedSeats::OutOfStock)
                    && let Some((_, stock)) = st.row_capacity.get_mut(&id.showtime())
                {
                    *stock -= quantity;
                }
                moved.push(*id);
            }
        }
        ready(Ok(moved))
    }

    fn list_for_user(
        &self,
        reservation: &Reservation,
    ) -> impl Future<Output = PortResult<()>> + Send {
        let mut st = self.state.lock().unwrap();
        st.by_user
            .entry(reservation.user)
            .or_default()
            .push(reservation.id);
        ready(Ok(()))
    }

    fn user_reservations(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = PortResult<ReservationPage>> + Send {
        let st = self.state.lock().unwrap();
        let mut ids: Vec<ReservationId> = st.by_user.get(&user).cloned().unwrap_or_default();
        ids.sort_by_key(|id| std::cmp::Reverse(id.seq()));
        let older: Vec<ReservationId> = ids
            .into_iter()
            .filter(|id| before.is_none_or(|b| id.seq() < b))
            .collect();
        let page: Vec<Reservation> = older
            .iter()
            .take(limit)
            .filter_map(|id| st.reservations.get(id).cloned())
            .collect();
        let next = (older.len() > limit).then(|| older[limit - 1].seq());
        ready(Ok(ReservationPage {
            reservations: page,
            next,
        }))
    }

    fn reservation(
        &self,
        id: ReservationId,
    ) -> impl Future<Output = PortResult<Option<Reservation>>> + Send {
        ready(Ok(self
            .state
            .lock()
            .unwrap()
            .reservations
            .get(&id)
            .cloned()))
    }

    fn counts(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<SeatCounts>>> + Send {
        ready(Ok(self
            .state
            .lock()
            .unwrap()
            .counts
            .get(&showtime)
            .copied()))
    }

    fn resize(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
    ) -> impl Future<Output = PortResult<ResizeOutcome>> + Send {
        ready(Ok(self.resize_as_the_script_does(showtime, from, to, false)))
    }

    fn undo_resize(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
    ) -> impl Future<Output = PortResult<ResizeOutcome>> + Send {
        ready(Ok(self.resize_as_the_script_does(showtime, to, from, true)))
    }

    fn swept_showtimes(&self) -> impl Future<Output = PortResult<Vec<ShowtimeId>>> + Send {
        let st = self.state.lock().unwrap();
        let ids = st
            .counts
            .keys()
            .filter(|id| !st.unswept.contains(id))
            .copied()
            .collect();
        ready(Ok(ids))
    }

    fn overdue_holds(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send {
        let now = self.now().0;
        let grace = grace.as_millis() as u64;
        let st = self.state.lock().unwrap();
        let ids = st
            .reservations
            .values()
            .filter(|r| r.showtime() == showtime)
            .filter(|r| r.status == Status::Reserved && r.expires_at.0 + grace <= now)
            .map(|r| r.id)
            .collect();
        ready(Ok(ids))
    }

    fn unrecorded_payments(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
    ) -> impl Future<Output = PortResult<Vec<OrderRequest>>> + Send {
        let now = self.now().0;
        let grace = grace.as_millis() as u64;
        let st = self.state.lock().unwrap();
        let orders = st
            .reservations
            .values()
            .filter(|r| r.showtime() == showtime)
            .filter(|r| r.status == Status::Paid && st.paid_at[&r.id].0 + grace <= now)
            .map(|r| OrderRequest {
                reservation: r.id,
                user: r.user,
                paid_at: st.paid_at[&r.id],
                quantity: r.quantity,
            })
            .collect();
        ready(Ok(orders))
    }
}

#[derive(Debug, Default)]
pub struct FakeBus {
    pub down: AtomicBool,
    pub expiries: Mutex<Vec<Expiry>>,
    pub payments: Mutex<Vec<PaymentRequest>>,
    pub orders: Mutex<Vec<OrderRequest>>,
}

impl FakeBus {
    fn check(&self) -> PortResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(PortError::transient("message bus", "broker unreachable"))
        } else {
            Ok(())
        }
    }
}

impl MessageBus for FakeBus {
    fn publish_hold(
        &self,
        expiry: Expiry,
        payment: Option<PaymentRequest>,
    ) -> impl Future<Output = PortResult<()>> + Send {
        ready(self.check().map(|()| {
            self.expiries.lock().unwrap().push(expiry);
            self.payments.lock().unwrap().extend(payment);
        }))
    }

    fn publish_orders(
        &self,
        orders: &[OrderRequest],
    ) -> impl Future<Output = PortResult<()>> + Send {
        ready(self.check().map(|()| {
            self.orders.lock().unwrap().extend_from_slice(orders);
        }))
    }
}

/// Whose creation key it is, and the key.
type CreationKeyOf = (Option<UserId>, IdempotencyKey);

#[derive(Debug, Default)]
pub struct FakeDb {
    showtimes: Mutex<BTreeMap<ShowtimeId, Showtime>>,
    /// The catalog does not answer (`showtime` fails).
    pub catalog_down: AtomicBool,
    /// The order book does not answer lookups (`has_order` fails).
    pub orders_down: AtomicBool,
    pub orders: Mutex<BTreeMap<ReservationId, OrderRequest>>,
    pub refusals: Mutex<BTreeMap<ReservationId, (OrderRequest, String)>>,
    /// The showtimes created under a key: (whose, key) -> (fingerprint, showtime).
    creation_keys: Mutex<HashMap<CreationKeyOf, (String, ShowtimeId)>>,
}

impl FakeDb {
    fn insert_showtime(&self, new: NewShowtime) -> Showtime {
        let mut all = self.showtimes.lock().unwrap();
        let id = ShowtimeId::new(all.len() as i64 + 1).unwrap();
        let showtime = Showtime {
            id,
            capacity: new.capacity,
            title: new.title,
            starts_at: new.starts_at,
            sale_window: new.sale_window.queued(new.waiting_room.is_some()),
            max_per_user: new.max_per_user,
            ordered: 0,
            generation: id.get() as u64,
            waiting_room: new.waiting_room,
        };
        all.insert(id, showtime.clone());
        showtime
    }

    /// Takes a seat away from a showtime's capacity, as an operator editing the row
    /// would: orders past the new capacity are refused.
    pub fn shrink_capacity(&self, showtime: ShowtimeId) {
        let mut all = self.showtimes.lock().unwrap();
        let s = all.get_mut(&showtime).unwrap();
        // The database's own CHECK (sold <= capacity) forbids shrinking below the orders.
        if s.ordered < s.capacity.get()
            && let Ok(smaller) = Capacity::new(i64::from(s.capacity.get()) - 1)
        {
            s.capacity = smaller;
        }
    }
}

/// A showtime row of the fake catalog held for a change (no real locking: the unit
/// tests drive one step at a time).
#[derive(Debug)]
pub struct FakeLock<'a> {
    db: &'a FakeDb,
    row: Showtime,
}

impl ShowtimeLock for FakeLock<'_> {
    fn showtime(&self) -> &Showtime {
        &self.row
    }

    fn commit(
        self,
        capacity: Capacity,
        window: domain::SaleWindow,
        waiting_room: Option<crate::waiting_room::RoomSettings>,
    ) -> impl Future<Output = PortResult<Showtime>> + Send {
        let mut all = self.db.showtimes.lock().unwrap();
        let row = all.get_mut(&self.row.id).unwrap();
        row.capacity = capacity;
        row.sale_window = window;
        row.waiting_room = waiting_room;
        ready(Ok(row.clone()))
    }
}

impl Catalog for FakeDb {
    type Lock<'a> = FakeLock<'a>;

    fn lock_showtime(
        &self,
        id: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<FakeLock<'_>>>> + Send {
        let row = self.showtimes.lock().unwrap().get(&id).cloned();
        ready(Ok(row.map(|row| FakeLock { db: self, row })))
    }

    fn create_showtime(
        &self,
        new: NewShowtime,
    ) -> impl Future<Output = PortResult<Showtime>> + Send {
        ready(Ok(self.insert_showtime(new)))
    }

    fn create_showtime_once(
        &self,
        new: NewShowtime,
        key: CreationKey,
    ) -> impl Future<Output = PortResult<Creation>> + Send {
        let mut keys = self.creation_keys.lock().unwrap();
        let creation = match keys.get(&(key.by, key.key.clone())) {
            Some((fingerprint, id)) if *fingerprint == key.fingerprint.0 => {
                Creation::Again(self.showtimes.lock().unwrap()[id].clone())
            }
            Some(_) => Creation::KeyReused,
            None => {
                let showtime = self.insert_showtime(new);
                keys.insert((key.by, key.key), (key.fingerprint.0, showtime.id));
                Creation::Created(showtime)
            }
        };
        ready(Ok(creation))
    }

    fn showtime(
        &self,
        id: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<Showtime>>> + Send {
        if self.catalog_down.load(Ordering::SeqCst) {
            return ready(Err(PortError::transient("database", "down")));
        }
        ready(Ok(self.showtimes.lock().unwrap().get(&id).cloned()))
    }

    fn showtimes(
        &self,
        state: Option<crate::domain::SaleState>,
        now: UnixMillis,
        after: Option<ShowtimeId>,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<Showtime>>> + Send {
        ready(Ok(self
            .showtimes
            .lock()
            .unwrap()
            .values()
            .filter(|s| after.is_none_or(|a| s.id > a))
            .filter(|s| state.is_none_or(|st| s.sale_window.state_at(now) == st))
            .take(limit)
            .cloned()
            .collect()))
    }
}

impl OrderBook for FakeDb {
    fn order_user(
        &self,
        reservation: ReservationId,
    ) -> impl Future<Output = PortResult<Option<UserId>>> + Send {
        if self.orders_down.load(Ordering::SeqCst) {
            return ready(Err(PortError::transient(
                "database",
                "the order book is down",
            )));
        }
        ready(Ok(self
            .orders
            .lock()
            .unwrap()
            .get(&reservation)
            .map(|o| o.user)))
    }

    fn orders_of(
        &self,
        showtime: ShowtimeId,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<RecordedOrder>>> + Send {
        // Numbered by reservation id: the fake keeps no insertion order.
        let book = self.orders.lock().unwrap();
        ready(Ok(book
            .values()
            .enumerate()
            .map(|(i, o)| RecordedOrder {
                number: i as u64 + 1,
                order: *o,
                recorded_at: o.paid_at,
            })
            .filter(|r| r.order.reservation.showtime() == showtime)
            .filter(|r| after.is_none_or(|a| r.number > a))
            .take(limit)
            .collect()))
    }

    fn record_orders(
        &self,
        orders: &[OrderRequest],
    ) -> impl Future<Output = PortResult<Vec<OrderOutcome>>> + Send {
        let mut showtimes = self.showtimes.lock().unwrap();
        let mut book = self.orders.lock().unwrap();
        let outcomes = orders
            .iter()
            .map(|order| {
                let showtime = showtimes.get_mut(&order.reservation.showtime()).unwrap();
                if let Some(existing) = book.get(&order.reservation) {
                    if existing.user == order.user {
                        OrderOutcome::Duplicate
                    } else {
                        OrderOutcome::Refused(Refusal::Other(
                            "this reservation id is already recorded for another user".into(),
                        ))
                    }
                } else if book
                    .values()
                    .any(|o| o.user == order.user && o.reservation.showtime() == showtime.id)
                {
                    OrderOutcome::Refused(Refusal::Other(
                        "user already has an order for this showtime".into(),
                    ))
                } else if order.quantity == 0 || order.quantity > showtime.max_per_user.get() {
                    OrderOutcome::Refused(Refusal::Other(
                        "the order's quantity is above the showtime's max_per_user".into(),
                    ))
                } else if showtime.ordered + order.quantity > showtime.capacity.get() {
                    OrderOutcome::Refused(Refusal::SoldOutInDatabase)
                } else {
                    showtime.ordered += order.quantity;
                    book.insert(order.reservation, *order);
                    OrderOutcome::Inserted
                }
            })
            .collect();
        ready(Ok(outcomes))
    }

    fn record_refusals(
        &self,
        refusals: &[(OrderRequest, String)],
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send {
        let mut on_record = self.refusals.lock().unwrap();
        let mut new = vec![];
        for (order, why) in refusals {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                on_record.entry(order.reservation)
            {
                slot.insert((*order, why.clone()));
                new.push(order.reservation);
            }
        }
        ready(Ok(new))
    }
}

impl SeatAuditor for FakeSeats {
    fn audit(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<SeatAudit>>> + Send {
        let st = self.state.lock().unwrap();
        let audit = st.counts.get(&showtime).map(|counts| {
            let mine = st
                .reservations
                .values()
                .filter(|r| r.showtime() == showtime);
            SeatAudit {
                counts: *counts,
                live_holds: mine
                    .clone()
                    .filter(|r| r.status == Status::Reserved)
                    .map(|r| r.quantity)
                    .sum(),
                unrecorded: mine
                    .clone()
                    .filter(|r| r.status == Status::Paid)
                    .map(|r| r.id)
                    .collect(),
                unrecorded_seats: mine
                    .filter(|r| r.status == Status::Paid)
                    .map(|r| r.quantity)
                    .collect(),
                swept: !st.unswept.contains(&showtime),
            }
        });
        ready(Ok(audit))
    }

    fn rebuild(
        &self,
        showtime: ShowtimeId,
        row: SeatRow,
        ordered: u32,
        recorded: &[ReservationId],
    ) -> impl Future<Output = PortResult<SeatCounts>> + Send {
        let mut st = self.state.lock().unwrap();
        let mine: Vec<_> = st
            .reservations
            .values()
            .filter(|r| r.showtime() == showtime)
            .cloned()
            .collect();
        let held = mine
            .iter()
            .filter(|r| r.status == Status::Reserved)
            .map(|r| r.quantity)
            .sum::<u32>();
        let pending = mine
            .iter()
            .filter(|r| r.status == Status::Paid && !recorded.contains(&r.id))
            .map(|r| r.quantity)
            .sum::<u32>();
        st.unswept.remove(&showtime);
        let current = st.counts.get(&showtime).map_or(0, |c| c.sold);
        let sold = (ordered + pending).max(current);
        let capacity = row.capacity;
        let counts = SeatCounts {
            capacity,
            available: capacity.saturating_sub(held + sold),
            held,
            sold,
        };
        st.counts.insert(showtime, counts);
        st.row_capacity.insert(showtime, (capacity, capacity));
        ready(Ok(counts))
    }
}

impl OrderAudit for FakeDb {
    fn showtime_ids(&self) -> impl Future<Output = PortResult<Vec<ShowtimeId>>> + Send {
        ready(Ok(self.showtimes.lock().unwrap().keys().copied().collect()))
    }

    fn recorded(
        &self,
        showtime: ShowtimeId,
        ids: &[ReservationId],
    ) -> impl Future<Output = PortResult<RecordedOrders>> + Send {
        let book = self.orders.lock().unwrap();
        let ordered = self
            .showtimes
            .lock()
            .unwrap()
            .get(&showtime)
            .map_or(0, |s| s.ordered);
        ready(Ok(RecordedOrders {
            ordered,
            recorded: ids
                .iter()
                .filter(|id| book.contains_key(id))
                .copied()
                .collect(),
        }))
    }

    fn unresolved_refusals(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send {
        let on_record = self.refusals.lock().unwrap();
        ready(Ok(on_record
            .keys()
            .filter(|id| id.showtime() == showtime)
            .copied()
            .collect()))
    }
}
