//! What the rules need from the outside world. Each port is a plain trait whose methods
//! return `Send` futures, so the use cases are generic over them with no boxing; the
//! adapters crate implements them on Redis, RabbitMQ and PostgreSQL, and `fakes` on
//! plain memory for the unit tests.

use std::future::Future;
use std::time::Duration;

use crate::domain::{SaleState, SaleWindow};
use crate::idempotency::{Creation, CreationKey};
use crate::messages::{Expiry, OrderRequest, PaymentRequest};
use crate::waiting_room::RoomSettings;
use crate::{
    Capacity, NewShowtime, Reservation, ReservationId, SeatCounts, Showtime, ShowtimeId, Status,
    UnixMillis, UserId,
};

/// A failure of a component behind a port. `transient` failures (a connection refused, a
/// timeout) may succeed if tried again; the others never will.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{component}: {message}")]
pub struct PortError {
    pub component: &'static str,
    pub transient: bool,
    pub message: String,
}

impl PortError {
    pub fn transient(component: &'static str, message: impl Into<String>) -> Self {
        Self {
            component,
            transient: true,
            message: message.into(),
        }
    }

    pub fn permanent(component: &'static str, message: impl Into<String>) -> Self {
        Self {
            component,
            transient: false,
            message: message.into(),
        }
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// What the atomic take of a seat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeOutcome {
    Reserved(Reservation),
    /// No seat is left.
    SoldOut,
    /// Some seats are left, fewer than asked (`available` of them): nothing was taken.
    NotEnoughSeats {
        available: u32,
    },
    /// More seats asked than the showtime allows one buyer: nothing was taken.
    TooManySeats {
        max_per_user: u32,
    },
    /// The user already holds, or bought, a seat of this showtime: that reservation, and
    /// its status (`None` if its record is gone).
    AlreadyHolds(ReservationId, Option<Status>),
    /// The store has no stock for this showtime (never loaded, or lost).
    UnknownShowtime,
    /// The showtime sells through a waiting room and the user holds no unused,
    /// unexpired admission to it: nothing was taken.
    NotAdmitted,
}

/// What an attempt to pay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayOutcome {
    Paid {
        paid_at: UnixMillis,
        /// Seats the reservation holds, now sold.
        quantity: u32,
    },
    NotFound,
    NotOwner,
    /// Already `PAID` or `ORDERED`.
    AlreadyPaid(Status),
    /// The deadline had passed. If the hold was still `RESERVED`, the store expired it
    /// on the spot and returned its seat.
    Expired,
    /// Its owner cancelled it.
    Cancelled,
}

/// What an owner's cancellation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was `RESERVED` before its deadline: it is `CANCELLED` now, its seat back on
    /// sale.
    Cancelled,
    /// It was `CANCELLED` already (a repeated cancel): nothing changed.
    AlreadyCancelled,
    NotFound,
    NotOwner,
    /// The deadline had passed. If the hold was still `RESERVED`, the store expired it
    /// on the spot and returned its seat.
    Expired,
    /// `PAID`, `ORDERED` or `REFUSED`: too late to cancel.
    AlreadyPaid(Status),
}

/// One page of a user's reservations, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReservationPage {
    pub reservations: Vec<Reservation>,
    /// Where the next page starts (`before` of the next call), when there may be more.
    pub next: Option<u64>,
}

/// What a change of a showtime's capacity found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeOutcome {
    /// The capacity is the new one; the seats added or removed are `available`.
    Resized(SeatCounts),
    /// Fewer unsold seats than the change removes: nothing changed (the counts now).
    InUse(SeatCounts),
    /// The store has no stock for this showtime.
    UnknownShowtime,
}

/// What an expiry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireOutcome {
    /// The hold was `RESERVED`: it is `EXPIRED` now and its seat is back on sale.
    SeatReturned,
    /// Nothing to do: the reservation was already in this state.
    AlreadySettled(Status),
    NotFound,
}

/// What recording one order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    Inserted,
    /// This reservation's order was already recorded (a redelivery).
    Duplicate,
    /// The database refused it for good (over capacity, the user already has an order
    /// for this showtime under another reservation, or the reservation id is already
    /// recorded for another user). The reservation becomes `REFUSED`; a person refunds it.
    Refused(Refusal),
    /// Another copy, in the same batch, of an order refused above: nothing more to do.
    AlreadyRefused,
}

/// Why the database refused an order for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its showtime has too few seats left in the database (none, or fewer than a
    /// group asks). The seat store sold seats the database does not have (it lost
    /// writes, or the row's capacity was lowered past them), so they must not go on
    /// sale again.
    SoldOutInDatabase,
    /// Any other rule (one order per user and showtime, `max_per_user`, an id recorded
    /// for another user, an unknown showtime): the database has room, only not for
    /// this order, so its seats go back on sale.
    Other(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::SoldOutInDatabase => f.write_str("the showtime is sold out in the database"),
            Refusal::Other(why) => f.write_str(why),
        }
    }
}

/// What becomes of the seats of an order the database refused ([`Refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedSeats {
    /// Back on sale: `sold -> available`.
    BackOnSale,
    /// Out of the stock: `sold` and `capacity` both lower, never on sale again (the
    /// database has no seat for them; a group refused for lack of fewer seats than it
    /// asks under-sells the difference until `reconcile --repair`). Capacity changes
    /// are by a difference ([`SeatStore::resize`]), so they stay out.
    OutOfStock,
}

impl Refusal {
    /// What becomes of the refused order's seats.
    pub fn seats(&self) -> RefusedSeats {
        match self {
            Refusal::SoldOutInDatabase => RefusedSeats::OutOfStock,
            Refusal::Other(_) => RefusedSeats::BackOnSale,
        }
    }
}

/// The live state of the sale: stock, holds, reservations. Every method is atomic.
pub trait SeatStore: Send + Sync + 'static {
    /// Refuse a user who already holds or bought this showtime, refuse a `quantity`
    /// above the showtime's max_per_user, refuse when fewer than `quantity` seats are
    /// available (sold out when none is), else take `quantity` seats at once and create
    /// one `RESERVED` reservation of them due at now + `hold`.
    fn take_seats(
        &self,
        showtime: ShowtimeId,
        user: UserId,
        quantity: u32,
        hold: Duration,
    ) -> impl Future<Output = PortResult<TakeOutcome>> + Send;

    /// [`SeatStore::take_seats`] of one seat.
    fn take(
        &self,
        showtime: ShowtimeId,
        user: UserId,
        hold: Duration,
    ) -> impl Future<Output = PortResult<TakeOutcome>> + Send {
        self.take_seats(showtime, user, 1, hold)
    }

    /// Load a showtime's stock unless it is already there: `capacity` seats of which
    /// `sold` are already sold. `reload` says the store lost the showtime: its
    /// reservation numbers then jump past any a lost copy may have handed out, so an id
    /// still travelling in a queue can never name a new hold. The stock is tagged with
    /// the catalog row's `generation`: stock of another generation (left by another
    /// database under the same id) is replaced, never adopted. `max_per_user` is the
    /// most seats one reservation may take (stored with the stock). Returns whether it
    /// loaded (or replaced).
    fn load(
        &self,
        showtime: ShowtimeId,
        capacity: u32,
        sold: u32,
        generation: u64,
        reload: bool,
        max_per_user: u32,
    ) -> impl Future<Output = PortResult<bool>> + Send;

    /// `RESERVED -> PAID` for its owner, before the deadline only.
    fn pay(
        &self,
        reservation: ReservationId,
        user: UserId,
    ) -> impl Future<Output = PortResult<PayOutcome>> + Send;

    /// `RESERVED -> CANCELLED` for its owner, before the deadline only, returning the
    /// seat and letting the user hold again.
    fn cancel(
        &self,
        reservation: ReservationId,
        user: UserId,
    ) -> impl Future<Output = PortResult<CancelOutcome>> + Send;

    /// `RESERVED -> EXPIRED`, returning the seat; anything else is left alone.
    fn expire(
        &self,
        reservation: ReservationId,
    ) -> impl Future<Output = PortResult<ExpireOutcome>> + Send;

    /// Undoes a hold whose follow-up messages could not be published: as
    /// [`SeatStore::expire`], and behind a waiting room the admission the hold used is
    /// the buyer's again until its own deadline (a failure never uses an admission up).
    /// A store without waiting rooms has nothing more to give back.
    fn give_back(
        &self,
        reservation: ReservationId,
    ) -> impl Future<Output = PortResult<ExpireOutcome>> + Send {
        self.expire(reservation)
    }

    /// `PAID -> ORDERED` once the order is in the database.
    ///
    /// Each reservation comes with the user its order is for: a hold of anyone else
    /// under the same id (one a store that lost writes handed out again) is left alone.
    /// Returns how many it moved.
    fn mark_ordered(
        &self,
        orders: &[(ReservationId, UserId)],
    ) -> impl Future<Output = PortResult<usize>> + Send;

    /// `PAID -> REFUSED` once the database's refusal is on record: the seats stop counting
    /// as sold, back on sale or out of the stock (`seats`), and the sweep stops re-sending
    /// the order. Returns the reservations it moved (not those already refused).
    fn mark_refused(
        &self,
        reservations: &[ReservationId],
        seats: RefusedSeats,
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send;

    fn reservation(
        &self,
        reservation: ReservationId,
    ) -> impl Future<Output = PortResult<Option<Reservation>>> + Send;

    /// Adds a new hold to its user's list of reservations, which
    /// [`SeatStore::user_reservations`] reads, unless the take listed it already. Where
    /// the list lives apart from the showtime (another cluster slot) it is written after
    /// the take, not inside it: a hold whose process stops in between is missing from the
    /// list, never from the sale. A store that lists in the take (one step) lists a hold
    /// that is then undone too, which the list shows as it ended (`EXPIRED`).
    fn list_for_user(
        &self,
        reservation: &Reservation,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// A user's reservations across showtimes, newest first (by reservation number),
    /// those older than `before` (a [`ReservationPage::next`] cursor) when given, at most
    /// `limit`, each as it is now.
    fn user_reservations(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = PortResult<ReservationPage>> + Send;

    fn counts(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<SeatCounts>>> + Send;

    /// Changes a showtime's stock for its row's capacity going from `from` to `to`,
    /// moving seats in or out of `available` atomically; refused (nothing changed) when
    /// that would leave `available` below zero, that is fewer seats unsold than removed.
    /// The store remembers the row capacity its stock reflects and moves by the
    /// difference to `to`: seats it took out of its stock (an order the database refused
    /// as sold out, [`RefusedSeats::OutOfStock`]) stay out, and a resize that already
    /// reached it (run twice, or again after an answer that was lost) moves nothing.
    fn resize(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
    ) -> impl Future<Output = PortResult<ResizeOutcome>> + Send;

    /// Undoes [`SeatStore::resize`]`(showtime, from, to)` whose row was not written: the
    /// stock goes back to `from` only while it still reflects `to` (nothing to undo when
    /// the change never reached the store, or when another change, made once the row
    /// was unlocked, has moved the stock to its own row since).
    fn undo_resize(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
    ) -> impl Future<Output = PortResult<ResizeOutcome>> + Send;

    /// The showtimes the sweep walks: every showtime whose stock the store has loaded.
    fn swept_showtimes(&self) -> impl Future<Output = PortResult<Vec<ShowtimeId>>> + Send;

    /// `showtime`'s holds still `RESERVED` whose deadline passed more than `grace` ago.
    fn overdue_holds(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send;

    /// `showtime`'s reservations `PAID` more than `grace` ago whose order is not recorded
    /// yet.
    fn unrecorded_payments(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
    ) -> impl Future<Output = PortResult<Vec<OrderRequest>>> + Send;
}

/// The queues between functions. A publish returns once the broker confirmed it has the
/// message, or fails; the one exception is a hold's messages, below.
pub trait MessageBus: Send + Sync + 'static {
    /// The follow-ups of a new hold: its expiry (delivered when the hold time is over)
    /// and, in mock-payment mode, a payment request. An implementation may return while
    /// they are merely on their way, when the broker is known to be confirming: their
    /// loss is covered, because the hold's deadline is in the seat store and the sweep
    /// returns any hold past it (a lost payment request leaves the hold unpaid, and it
    /// expires). When the broker is not known to be confirming, they are confirmed
    /// first and a failure is returned.
    fn publish_hold(
        &self,
        expiry: Expiry,
        payment: Option<PaymentRequest>,
    ) -> impl Future<Output = PortResult<()>> + Send;

    fn publish_orders(
        &self,
        orders: &[OrderRequest],
    ) -> impl Future<Output = PortResult<()>> + Send;
}

/// A showtime's row, locked for a change: no other change, nor a repair that rebuilds
/// the seat store from the row, proceeds until [`ShowtimeLock::commit`] writes it or the
/// lock is dropped (which changes nothing). Orders of the showtime wait too, so a
/// capacity the seat store already has is never refused by the database for lack of the
/// row's.
pub trait ShowtimeLock: Send {
    /// The row as it is while locked.
    fn showtime(&self) -> &Showtime;

    /// Writes the new capacity, sale window and waiting room and releases the row.
    fn commit(
        self,
        capacity: Capacity,
        window: SaleWindow,
        waiting_room: Option<RoomSettings>,
    ) -> impl Future<Output = PortResult<Showtime>> + Send;
}

/// Showtimes, in the database.
pub trait Catalog: Send + Sync + 'static {
    type Lock<'a>: ShowtimeLock + 'a
    where
        Self: 'a;

    /// Locks a showtime's row (waiting for another holder); `None` for an unknown one.
    fn lock_showtime(
        &self,
        id: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<Self::Lock<'_>>>> + Send;

    fn create_showtime(
        &self,
        showtime: NewShowtime,
    ) -> impl Future<Output = PortResult<Showtime>> + Send;

    /// Creates a showtime once per key: the first request under `key` creates it; a
    /// later one with the same fingerprint finds it ([`Creation::Again`]), one with
    /// another fingerprint is refused ([`Creation::KeyReused`]). Two at once create one.
    fn create_showtime_once(
        &self,
        showtime: NewShowtime,
        key: CreationKey,
    ) -> impl Future<Output = PortResult<Creation>> + Send;

    fn showtime(&self, id: ShowtimeId)
    -> impl Future<Output = PortResult<Option<Showtime>>> + Send;

    /// Showtimes by id, those after `after` when given, at most `limit`, only those
    /// whose sale is in `state` at `now` when a state is given.
    fn showtimes(
        &self,
        state: Option<SaleState>,
        now: UnixMillis,
        after: Option<ShowtimeId>,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<Showtime>>> + Send;
}

/// Orders, in the database: the last word on what was sold.
pub trait OrderBook: Send + Sync + 'static {
    /// Records each order at most once, in one transaction per call where it can; the
    /// outcomes are in the order of `orders`. An order is a duplicate only of a row of
    /// the same reservation, user and showtime; a row of the same reservation id for
    /// anyone else makes it a refusal.
    fn record_orders(
        &self,
        orders: &[OrderRequest],
    ) -> impl Future<Output = PortResult<Vec<OrderOutcome>>> + Send;

    /// Keeps refused orders on record, each once, for a person to refund. Returns the
    /// reservations recorded now (not those already on record).
    fn record_refusals(
        &self,
        refusals: &[(OrderRequest, String)],
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send;

    /// The user of the reservation's order, if it has one on record (one lookup by its
    /// id).
    fn order_user(
        &self,
        reservation: ReservationId,
    ) -> impl Future<Output = PortResult<Option<UserId>>> + Send;

    /// A showtime's orders in the order they were recorded, those after `after` (a
    /// [`RecordedOrder::number`]) when given, at most `limit`.
    fn orders_of(
        &self,
        showtime: ShowtimeId,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = PortResult<Vec<RecordedOrder>>> + Send;
}

/// An order as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOrder {
    /// Its place in the database's record (increasing with time).
    pub number: u64,
    pub order: OrderRequest,
    pub recorded_at: UnixMillis,
}

/// What the seat store knows of one showtime, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatAudit {
    pub counts: SeatCounts,
    /// Seats of the holds still `RESERVED` (the deadline set), a group counting its
    /// quantity.
    pub live_holds: u32,
    /// Reservations `PAID` whose order is not marked recorded yet.
    pub unrecorded: Vec<ReservationId>,
    /// The seats of each of `unrecorded`, in the same order (1 for a single seat).
    pub unrecorded_seats: Vec<u32>,
    /// Whether the sweep walks this showtime (it is in the store's registry).
    pub swept: bool,
}

/// What reconciliation needs from the seat store beyond the sale's own steps.
pub trait SeatAuditor: Send + Sync + 'static {
    fn audit(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<SeatAudit>>> + Send;

    /// Rewrites a showtime's counts from the facts, atomically, and registers it for
    /// the sweep: `held` from the live
    /// holds, `sold` from the `ordered` seats in the database plus the paid reservations
    /// not among `recorded` (never less than the store already counts, so a race with a
    /// payment can only under-sell, never oversell), `available` the rest. The row's
    /// capacity and seats per buyer are written as they are; its generation tags state
    /// the rebuild creates (Redis had lost it).
    fn rebuild(
        &self,
        showtime: ShowtimeId,
        row: SeatRow,
        ordered: u32,
        recorded: &[ReservationId],
    ) -> impl Future<Output = PortResult<SeatCounts>> + Send;
}

/// What a rebuild of a showtime's seats takes from its database row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatRow {
    pub capacity: u32,
    /// Seats one buyer may take (as one reservation).
    pub max_per_user: u32,
    /// The row's generation (see [`Showtime::generation`]).
    pub generation: u64,
}

impl From<&Showtime> for SeatRow {
    fn from(row: &Showtime) -> Self {
        Self {
            capacity: row.capacity.get(),
            max_per_user: row.max_per_user.get(),
            generation: row.generation,
        }
    }
}

/// What reconciliation needs from the database beyond the sale's own steps.
/// What the database holds of a showtime's orders at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedOrders {
    /// Seats the showtime's orders hold (the sum of their quantities).
    pub ordered: u32,
    /// Those of the reservations asked about that have an order.
    pub recorded: Vec<ReservationId>,
}

pub trait OrderAudit: Send + Sync + 'static {
    /// Every showtime the database knows.
    fn showtime_ids(&self) -> impl Future<Output = PortResult<Vec<ShowtimeId>>> + Send;

    /// How many orders `showtime` has and which of `reservations` have one, read at one
    /// moment (one snapshot), so that an order committed meanwhile is in both or in
    /// neither.
    fn recorded(
        &self,
        showtime: ShowtimeId,
        reservations: &[ReservationId],
    ) -> impl Future<Output = PortResult<RecordedOrders>> + Send;

    /// Refused orders of a showtime nobody has settled yet (refunded and marked resolved).
    fn unresolved_refusals(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Vec<ReservationId>>> + Send;
}
