//! The use cases. [`Sale`] is generic over its ports, so the same rules run on Redis,
//! RabbitMQ and PostgreSQL in production and on plain memory in the unit tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::domain::{OutsideSaleWindow, SaleState, SaleWindow};
use crate::messages::{Expiry, OrderRequest, PaymentRequest};
use crate::ports::{
    CancelOutcome, Catalog, ExpireOutcome, MessageBus, OrderBook, OrderOutcome, PayOutcome,
    PortError, RecordedOrder, Refusal, RefusedSeats, ReservationPage, ResizeOutcome, SeatStore,
    ShowtimeLock as _, TakeOutcome,
};
use crate::waiting_room::WaitingRoomStore;
use crate::{
    Creation, CreationKey, InvalidInput, NewShowtime, Reservation, ReservationId, SeatCounts,
    Showtime, ShowtimeChange, ShowtimeId, Status, UnixMillis, UserId,
};

/// Why creating a showtime did not end with its seats on sale.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// This call created nothing (under a key, a showtime an earlier call created is
    /// still there).
    #[error(transparent)]
    NotCreated(#[from] PortError),
    /// The showtime is on record, but the seat store did not take its seats: they go on
    /// sale at the showtime's first use.
    #[error("showtime {id} was created; its seats go on sale at its first use: {why}", id = .0.id, why = .1)]
    SeatsLater(Box<Showtime>, PortError),
}

/// A named point between two steps where the crash tests inject a failure (the `fail`
/// crate, `failpoints` feature): `return` makes the step fail as if the process had died
/// there, `panic` panics there. Compiled out otherwise.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err(
            PortError::transient("crash point", $name).into()
        ));
    };
}

/// Who pays for a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaymentMode {
    /// The buyer calls `POST /reservations/{id}/pay`.
    #[default]
    Manual,
    /// Every hold is paid by a simulated payment provider after a random delay, as the
    /// Go reference did (demos and load tests).
    Mock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleSettings {
    /// How long an unpaid hold keeps its seat.
    pub hold: Duration,
    pub payment: PaymentMode,
    /// How long this process remembers that a showtime was sold out, answering the
    /// crowd's further attempts without a Redis round trip. Forgotten at once when this
    /// process gives a seat of that showtime back; a seat another process gives back is
    /// seen at most this late. Zero turns it off.
    pub sold_out_cache: Duration,
}

/// Showtimes this process found sold out, until when it may keep saying so.
///
/// A reservation that read "sold out" from the store must not remember it if this
/// process gave a seat back after that read: the memory would then say "sold out" while
/// a seat is free. So every seat this process returns bumps `returns` before it clears
/// the memory, and a reservation remembers "sold out" only if `returns` has not moved
/// since before it asked the store ([`SoldOutFlags::observe`]). The check and the write
/// happen under the write lock the clearing also takes, so the two are ordered.
#[derive(Debug, Default)]
struct SoldOutFlags {
    until: RwLock<HashMap<ShowtimeId, Instant>>,
    returns: AtomicU64,
}

/// What [`SoldOutFlags::observe`] saw: the seats returned so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReturnsSeen(u64);

impl SoldOutFlags {
    /// What to hand to [`SoldOutFlags::sold_out`], whatever is remembered.
    fn seen(&self) -> ReturnsSeen {
        ReturnsSeen(self.returns.load(Ordering::SeqCst))
    }

    /// `None` while this process remembers `showtime` as sold out; otherwise what to hand
    /// to [`SoldOutFlags::sold_out`] should the store then say so.
    fn observe(&self, showtime: ShowtimeId) -> Option<ReturnsSeen> {
        let seen = self.seen();
        let until = self.until.read().unwrap_or_else(|e| e.into_inner());
        match until.get(&showtime) {
            Some(t) if Instant::now() < *t => None,
            _ => Some(seen),
        }
    }

    /// The store said `showtime` is sold out after `seen`: remember it for `for_`, unless
    /// this process has returned a seat since.
    fn sold_out(&self, showtime: ShowtimeId, seen: ReturnsSeen, for_: Duration) {
        if for_.is_zero() {
            return;
        }
        let mut until = self.until.write().unwrap_or_else(|e| e.into_inner());
        if self.returns.load(Ordering::SeqCst) == seen.0 {
            until.insert(showtime, Instant::now() + for_);
        }
    }

    fn seat_returned(&self, showtime: ShowtimeId) {
        self.returns.fetch_add(1, Ordering::SeqCst);
        if self
            .until
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&showtime)
        {
            self.until
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&showtime);
        }
    }
}

/// The time of day the sale windows are judged by. Holds and payments are timed by the
/// seat store's own clock (Redis's `TIME`); only the windows use this one.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's clock.
    #[default]
    System,
    /// A clock that moves only when told to (tests).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock showing `at`.
    pub fn manual(at: UnixMillis) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(at.0)))
    }

    pub fn now(&self) -> UnixMillis {
        match self {
            Clock::System => UnixMillis(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or_default(),
            ),
            Clock::Manual(at) => UnixMillis(at.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward; the system clock moves on its own.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(at) = self {
            at.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }
}

/// Showtimes' sale windows as the catalog gave them, with when they were read, so the
/// hot path stays one seat store call: a window read less than [`SALE_WINDOW_REFRESH`]
/// ago is used as is, an older one is read again (an operator may have paused the sale
/// or moved its window in any process). One request reads it again while the others go
/// on with the window they have, so a crowd never queues on the catalog, and a catalog
/// that does not answer leaves the sale on its last known window. Bounded: when full it
/// starts over.
#[derive(Debug, Default)]
struct SaleWindows(RwLock<HashMap<ShowtimeId, (SaleWindow, Instant)>>);

const SALE_WINDOWS_KEPT: usize = 65_536;

/// How old a sale window this process uses may be: a change an operator makes in any
/// process is obeyed by every process within this time and one catalog read.
pub const SALE_WINDOW_REFRESH: Duration = Duration::from_millis(500);

/// What this process knows of a showtime's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Read less than the refresh period ago (or being read again by another request).
    Fresh(SaleWindow),
    /// Older: the caller reads it again (it alone; the others see it as fresh meanwhile).
    Stale(SaleWindow),
    /// Never met.
    Unknown,
}

impl SaleWindows {
    /// The window, and whether the caller is the one to read it again.
    fn get(&self, showtime: ShowtimeId, fresh: Duration) -> Known {
        {
            let windows = self.0.read().unwrap_or_else(|e| e.into_inner());
            match windows.get(&showtime) {
                None => return Known::Unknown,
                Some((window, read)) if read.elapsed() < fresh => return Known::Fresh(*window),
                Some(_) => {}
            }
        }
        let mut windows = self.0.write().unwrap_or_else(|e| e.into_inner());
        match windows.get_mut(&showtime) {
            None => Known::Unknown,
            Some((window, read)) if read.elapsed() >= fresh => {
                // Claimed: the others use this window until the new one is read.
                *read = Instant::now();
                Known::Stale(*window)
            }
            Some((window, _)) => Known::Fresh(*window),
        }
    }

    /// The window when it was read less than `fresh` ago; never claims a read again.
    fn fresh(&self, showtime: ShowtimeId, fresh: Duration) -> Option<SaleWindow> {
        let windows = self.0.read().unwrap_or_else(|e| e.into_inner());
        windows
            .get(&showtime)
            .filter(|(_, read)| read.elapsed() < fresh)
            .map(|(window, _)| *window)
    }

    /// Whether this process has met the showtime (its stock checked) before.
    fn known(&self, showtime: ShowtimeId) -> bool {
        let windows = self.0.read().unwrap_or_else(|e| e.into_inner());
        windows.contains_key(&showtime)
    }

    fn keep(&self, showtime: ShowtimeId, window: SaleWindow) {
        let mut windows = self.0.write().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= SALE_WINDOWS_KEPT {
            windows.clear();
        }
        windows.insert(showtime, (window, Instant::now()));
    }
}

/// What a buyer showed of a waiting room's admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing: enough where the showtime has no waiting room.
    None,
    /// An admission to this showtime, checked by the caller (its signature, holder,
    /// showtime and time); whether it is still unused is the seat store's to say.
    Shown,
}

/// Why a reservation was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// No seat is left: the seat store said so, or this process remembered it
    /// (`remembered`, answered without asking the store).
    #[error("Tickets sold out")]
    SoldOut { remembered: bool },
    /// A group asked for more seats than are left (`available`, at least one): nothing
    /// was taken. Never remembered as sold out.
    #[error("Not enough seats: {available} left, {asked} asked")]
    NotEnoughSeats { asked: u32, available: u32 },
    /// More seats asked than the showtime allows one buyer (`max_per_user`).
    #[error("Too many seats: this showtime allows at most {max_per_user} per buyer, {asked} asked")]
    TooManySeats { asked: u32, max_per_user: u32 },
    /// A quantity below 1.
    #[error("quantity must be at least 1")]
    InvalidQuantity,
    /// The user already holds or bought a seat of this showtime: the reservation that did,
    /// and its status, so a client whose first answer was lost can go on with it.
    #[error("Already ordered: this user already holds or bought reservation {0}")]
    AlreadyHolds(ReservationId, Option<Status>),
    #[error("showtime {0} does not exist")]
    UnknownShowtime(ShowtimeId),
    /// Before the showtime's sale opens, or from its close on; no seat was touched.
    #[error("showtime {showtime}: {why}")]
    OutsideSaleWindow {
        showtime: ShowtimeId,
        why: OutsideSaleWindow,
    },
    /// The showtime sells through a waiting room and the caller showed no admission, or
    /// the seat store holds none unused and unexpired for them; nothing was taken.
    #[error(
        "not admitted: this sale goes through its waiting room; join the line and reserve with the admission it gives"
    )]
    NotAdmitted,
    /// A component failed; nothing is held (a seat taken before the failure was given
    /// back).
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

/// Why a payment was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("reservation not found")]
    NotFound,
    #[error("this reservation belongs to another user")]
    NotOwner,
    #[error("reservation is already {0}")]
    AlreadyPaid(Status),
    #[error("the hold expired before it was paid")]
    Expired,
    #[error("the hold was cancelled by its owner")]
    Cancelled,
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

/// Why a hold was not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("reservation not found")]
    NotFound,
    #[error("this reservation belongs to another user")]
    NotOwner,
    #[error("reservation is already {0}: too late to cancel")]
    AlreadyPaid(Status),
    #[error("the hold had already expired")]
    Expired,
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

/// Why an operator's change of a showtime was not made. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("showtime {0} does not exist")]
    UnknownShowtime(ShowtimeId),
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
    /// Removing that many seats would take held or sold ones.
    #[error(
        "only {} of the {} seats are neither held nor sold; the capacity cannot go below {}",
        .counts.available, .counts.capacity, .counts.held + .counts.sold
    )]
    SeatsInUse { counts: SeatCounts },
    /// The room's opening cannot move once it has come: the lottery has placed the early
    /// joiners, later ones queue by arrival, and the line is being admitted. Moving it
    /// would let new joiners draw places among those already served.
    #[error(
        "the waiting room opened at {} (unix ms) and its line is being admitted: its opens_at \
         cannot change (remove the room, or leave opens_at out)",
        .opened_at.0
    )]
    RoomOpened { opened_at: UnixMillis },
    #[error(transparent)]
    Unavailable(#[from] PortError),
}

/// A payment that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayReceipt {
    pub order: OrderRequest,
    /// `false` when the order message could not be published yet. The payment stands
    /// either way: the sweep re-sends orders that were paid but never recorded.
    pub order_queued: bool,
}

/// What a sweep found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SweepReport {
    pub holds_expired: usize,
    pub orders_resent: usize,
    /// Showtimes the sweep could not finish, with why: the others were swept.
    pub failed: Vec<(ShowtimeId, String)>,
    /// Why the orders of unrecorded payments could not be re-sent (the next sweep tries
    /// again); the holds the sweep expired before are counted all the same.
    pub orders_not_resent: Option<String>,
}

/// The flash sale: its rules over its ports.
#[derive(Debug, Clone)]
pub struct Sale<S, B, D> {
    pub(crate) seats: S,
    pub(crate) bus: B,
    pub(crate) db: D,
    settings: SaleSettings,
    clock: Clock,
    sold_out: Arc<SoldOutFlags>,
    windows: Arc<SaleWindows>,
    window_refresh: Duration,
}

impl<S, B, D> Sale<S, B, D>
where
    S: SeatStore,
    B: MessageBus,
    D: Catalog + OrderBook,
{
    pub fn new(seats: S, bus: B, db: D, settings: SaleSettings) -> Self {
        Self {
            seats,
            bus,
            db,
            settings,
            clock: Clock::System,
            sold_out: Arc::default(),
            windows: Arc::default(),
            window_refresh: SALE_WINDOW_REFRESH,
        }
    }

    /// The same sale judging its sale windows by `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// The same sale re-reading a showtime's window once it is `refresh` old (the
    /// default is [`SALE_WINDOW_REFRESH`]).
    pub fn with_window_refresh(self, refresh: Duration) -> Self {
        Self {
            window_refresh: refresh,
            ..self
        }
    }

    pub fn settings(&self) -> SaleSettings {
        self.settings
    }

    /// Stores the showtime with its sale window, then puts its seats on sale. Once the
    /// row is written the showtime exists: should the seat store not take its seats now,
    /// the answer says so ([`CreateError::SeatsLater`]) and they go on sale at the
    /// showtime's first use, as for a showtime Redis lost.
    pub async fn create_showtime(&self, new: NewShowtime) -> Result<Showtime, CreateError> {
        let showtime = self.db.create_showtime(new).await?;
        self.put_on_sale(showtime).await
    }

    /// A showtime just written: its seats on sale, all of them, and its window known;
    /// [`CreateError::SeatsLater`] when the seat store does not take them.
    async fn put_on_sale(&self, showtime: Showtime) -> Result<Showtime, CreateError> {
        let loaded = self
            .seats
            .load(
                showtime.id,
                showtime.capacity.get(),
                0,
                showtime.generation,
                false,
                showtime.max_per_user.get(),
            )
            .await;
        match loaded {
            Ok(_) => {
                self.windows.keep(showtime.id, showtime.sale_window);
                Ok(showtime)
            }
            Err(e) => Err(CreateError::SeatsLater(Box::new(showtime), e)),
        }
    }

    /// Creates a showtime once per operator's key (see [`Catalog::create_showtime_once`]).
    /// As with [`Sale::create_showtime`], a showtime this call wrote is created even when
    /// the seat store does not take its seats ([`CreateError::SeatsLater`]). Under a key
    /// that created it before, the showtime's seats are put on sale unless they already
    /// are, so a retry after a first try that stopped between the row and the seat store
    /// finishes that try; should that fail, this call changed nothing
    /// ([`CreateError::NotCreated`]).
    pub async fn create_showtime_once(
        &self,
        new: NewShowtime,
        key: CreationKey,
    ) -> Result<Creation, CreateError> {
        let creation = self.db.create_showtime_once(new, key).await?;
        match creation {
            Creation::Created(showtime) => self.put_on_sale(showtime).await.map(Creation::Created),
            Creation::Again(showtime) => {
                self.first_use(&showtime).await?;
                Ok(Creation::Again(showtime))
            }
            Creation::KeyReused => Ok(Creation::KeyReused),
        }
    }

    /// The showtime's sale window, from this process's memory while fresh, else from
    /// the catalog; `None` when there is no such showtime.
    async fn sale_window(&self, showtime: ShowtimeId) -> Result<Option<SaleWindow>, PortError> {
        match self.windows.get(showtime, self.window_refresh) {
            Known::Fresh(window) => Ok(Some(window)),
            Known::Stale(window) => match self.db.showtime(showtime).await {
                Ok(Some(known)) => {
                    self.windows.keep(showtime, known.sale_window);
                    Ok(Some(known.sale_window))
                }
                Ok(None) => Ok(None),
                // The catalog does not answer: the sale goes on with the window it had
                // (read again after another refresh period).
                Err(_) => Ok(Some(window)),
            },
            Known::Unknown => {
                let Some(known) = self.db.showtime(showtime).await? else {
                    return Ok(None);
                };
                self.first_use(&known).await?;
                Ok(Some(known.sale_window))
            }
        }
    }

    /// Sets up `id`'s waiting room in `rooms` from its row, with the row locked
    /// meanwhile: an operator's change or removal of the room takes the same lock to
    /// write the row and changes Redis after, so a room set from a row read before that
    /// change never lands after it (a removed room brought back would refuse every
    /// buyer `not_admitted` while nobody can join it). Returns the showtime as locked
    /// (as read, without the lock, when its row has no room: nothing to set), `None`
    /// when there is no such showtime.
    pub async fn set_room_its_row_has<R: WaitingRoomStore>(
        &self,
        id: ShowtimeId,
        rooms: &R,
    ) -> Result<Option<Showtime>, PortError> {
        // A showtime without a room (or none at all, or one whose room an operator has
        // just removed: its crowd still polls) has nothing to set: a plain read answers,
        // and a crowd polling it never queues on its row's lock.
        match self.db.showtime(id).await? {
            None => return Ok(None),
            Some(showtime) if showtime.waiting_room.is_none() => return Ok(Some(showtime)),
            Some(_) => {}
        }
        let Some(lock) = self.db.lock_showtime(id).await? else {
            return Ok(None);
        };
        let showtime = lock.showtime().clone();
        if let Some(settings) = showtime.waiting_room {
            rooms.configure(id, settings, showtime.sale_window).await?;
        }
        // The row was only read: the lock is released unchanged.
        drop(lock);
        Ok(Some(showtime))
    }

    /// Removes a waiting room from `rooms` if the showtime's row has none (a removal
    /// whose room step was lost after the row was written); returns whether there was
    /// one. The row is locked meanwhile: an operator adding a room takes the same lock to
    /// write the row and sets the room after, so a room just added is never taken away.
    pub async fn remove_room_its_row_lacks<R: WaitingRoomStore>(
        &self,
        id: ShowtimeId,
        rooms: &R,
    ) -> Result<bool, PortError> {
        let Some(lock) = self.db.lock_showtime(id).await? else {
            return Ok(false);
        };
        if lock.showtime().waiting_room.is_some() {
            return Ok(false);
        }
        let removed = rooms.remove(id).await?;
        // The row was only read: the lock is released unchanged.
        drop(lock);
        Ok(removed)
    }

    /// An operator's change of a live showtime: pause or resume its sale, move or close
    /// its window, add seats or remove unsold ones. The showtime's row stays locked
    /// while its seats are changed in the seat store, so two changes (or a change and
    /// a `reconcile --repair`) never undo each other. Seats removed must be available
    /// (never held or sold); seats added go on sale at once. This process obeys the new
    /// window at once, every other within [`SALE_WINDOW_REFRESH`]. Holds made before a
    /// pause or close can still be paid until their deadline.
    ///
    /// Once the row is written the change is saved: the seat counts read after it are
    /// an `Err` of their own, never the change's (an error would tell the operator
    /// nothing was changed, and a retry would add or remove the seats twice).
    pub async fn change_showtime(
        &self,
        id: ShowtimeId,
        change: ShowtimeChange,
    ) -> Result<(Showtime, Result<SeatCounts, PortError>, SaleState), ChangeError> {
        let Some(lock) = self.db.lock_showtime(id).await? else {
            return Err(ChangeError::UnknownShowtime(id));
        };
        let before = lock.showtime().clone();
        let now = self.clock.now();
        if let (Some(Some(room)), Some(was)) = (change.waiting_room, before.waiting_room)
            && was.opens_at <= now
            && room.opens_at != was.opens_at
        {
            return Err(ChangeError::RoomOpened {
                opened_at: was.opens_at,
            });
        }
        let window = change.window(before.sale_window, now)?;
        let capacity = change.capacity(before.capacity)?;
        // Seats added or removed: the stock follows the row's capacity (by a difference
        // it computes itself, so a resize that already reached it moves nothing again).
        let (from, to) = (before.capacity.get(), capacity.get());
        if from != to {
            self.load_from_catalog(&before).await?;
            match self.seats.resize(id, from, to).await? {
                ResizeOutcome::Resized(_) => {}
                ResizeOutcome::InUse(counts) => return Err(ChangeError::SeatsInUse { counts }),
                ResizeOutcome::UnknownShowtime => {
                    return Err(PortError::transient(
                        "seat store",
                        format!("showtime {id} vanished while its seats were changed"),
                    )
                    .into());
                }
            }
        }
        crash_point!("change.before_commit");
        let waiting_room = change.waiting_room.unwrap_or(before.waiting_room);
        let after = match lock.commit(capacity, window, waiting_room).await {
            Ok(after) => after,
            Err(e) => {
                // The row keeps its capacity: so does the stock (should this fail too,
                // `reconcile` reports the difference and `--repair` rebuilds from the row;
                // an operator's retry of the change then finds the stock already moved).
                if from != to {
                    let _ = self.seats.undo_resize(id, from, to).await;
                }
                return Err(e.into());
            }
        };
        self.windows.keep(id, after.sale_window);
        if to > from {
            self.sold_out.seat_returned(id);
        }
        let counts = self.counts_after_change(&after).await;
        let state = after.sale_window.state_at(self.clock.now());
        Ok((after, counts, state))
    }

    /// The seats of a showtime just changed, loaded from its row if the store lacks them.
    async fn counts_after_change(&self, after: &Showtime) -> Result<SeatCounts, PortError> {
        if let Some(counts) = self.seats.counts(after.id).await? {
            return Ok(counts);
        }
        self.load_from_catalog(after).await?;
        Ok(self.seats.counts(after.id).await?.unwrap_or_default())
    }

    /// The first time this process meets a showtime: its seat store state is checked to
    /// be this row's (loaded if missing, replaced if another database left it), and its
    /// window is kept.
    async fn first_use(&self, showtime: &Showtime) -> Result<(), PortError> {
        self.load_from_catalog(showtime).await?;
        self.windows.keep(showtime.id, showtime.sale_window);
        Ok(())
    }

    /// A showtime and where its seats are. Reloads the stock from the database when the
    /// seat store does not have it.
    /// A showtime's orders as the database recorded them, a page at a time (after
    /// `after`, a previous order's number; at most `limit`); `None` for an unknown
    /// showtime.
    pub async fn orders(
        &self,
        showtime: ShowtimeId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Option<Vec<RecordedOrder>>, PortError> {
        if self.db.showtime(showtime).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(
            self.db.orders_of(showtime, after, limit.max(1)).await?,
        ))
    }

    /// Showtimes by id as the catalog has them (no seat counts, so nothing is read from
    /// the seat store), those after `after`, at most `limit`, only those whose sale is in
    /// `state` now when a state is given.
    pub async fn catalog_page(
        &self,
        state: Option<SaleState>,
        after: Option<ShowtimeId>,
        limit: usize,
    ) -> Result<Vec<Showtime>, PortError> {
        self.db
            .showtimes(state, self.clock.now(), after, limit.max(1))
            .await
    }

    /// Showtimes by id with their seats and sale state now, a page at a time (after `after`, at most
    /// `limit`), those whose sale is in `state` now when one is given. A showtime no
    /// process has put on sale yet shows its database counts (nothing held).
    pub async fn showtimes(
        &self,
        state: Option<SaleState>,
        after: Option<ShowtimeId>,
        limit: usize,
    ) -> Result<Vec<(Showtime, SeatCounts, SaleState)>, PortError> {
        let now = self.clock.now();
        let listed = self.db.showtimes(state, now, after, limit.max(1)).await?;
        let mut out = Vec::with_capacity(listed.len());
        for showtime in listed {
            let counts = match self.seats.counts(showtime.id).await? {
                Some(counts) => counts,
                None => {
                    let capacity = showtime.capacity.get();
                    SeatCounts {
                        capacity,
                        available: capacity.saturating_sub(showtime.ordered),
                        held: 0,
                        sold: showtime.ordered.min(capacity),
                    }
                }
            };
            let sale_state = showtime.sale_window.state_at(now);
            out.push((showtime, counts, sale_state));
        }
        Ok(out)
    }

    pub async fn showtime(
        &self,
        id: ShowtimeId,
    ) -> Result<Option<(Showtime, SeatCounts)>, PortError> {
        let Some(showtime) = self.db.showtime(id).await? else {
            return Ok(None);
        };
        if !self.windows.known(id) {
            self.first_use(&showtime).await?;
        }
        if let Some(counts) = self.seats.counts(id).await? {
            return Ok(Some((showtime, counts)));
        }
        self.load_from_catalog(&showtime).await?;
        let counts = self.seats.counts(id).await?.ok_or_else(|| {
            PortError::transient(
                "seat store",
                format!("showtime {id} vanished while loading"),
            )
        })?;
        Ok(Some((showtime, counts)))
    }

    /// The refusal [`Sale::reserve_through`] would answer without any I/O, from what this
    /// process remembers: the showtime's sale window read less than the refresh period
    /// ago and its sold-out memory. `None` when it does not know (the window is not
    /// fresh, or nothing refuses): then only `reserve_through` can tell. The crowd's
    /// answer after the last seat, so it costs no task, no store and no catalog.
    pub fn refusal_at_once(
        &self,
        showtime: ShowtimeId,
        quantity: u32,
        admission: Admission,
    ) -> Option<ReserveError> {
        if quantity == 0 {
            return Some(ReserveError::InvalidQuantity);
        }
        let window = self.windows.fresh(showtime, self.window_refresh)?;
        self.refusal_by(showtime, window, admission).err()
    }

    /// The rules a request meets once its sale window is known, in order: the window
    /// is open, a waiting room's admission is shown, the showtime is not remembered as
    /// sold out; `Ok` with what the sold-out memory saw, to hand back should the store
    /// say sold out.
    fn refusal_by(
        &self,
        showtime: ShowtimeId,
        window: SaleWindow,
        admission: Admission,
    ) -> Result<ReturnsSeen, ReserveError> {
        window
            .admits(self.clock.now())
            .map_err(|why| ReserveError::OutsideSaleWindow { showtime, why })?;
        if window.is_queued() && admission == Admission::None {
            return Err(ReserveError::NotAdmitted);
        }
        if admission == Admission::Shown {
            // A room's `sold_out` answer uses the admission up, and only the store can
            // use it: a buyer with an admission is never answered from this memory
            // (they are as many as the room admits, not the crowd).
            return Ok(self.sold_out.seen());
        }
        self.sold_out
            .observe(showtime)
            .ok_or(ReserveError::SoldOut { remembered: true })
    }

    /// Holds one seat of `showtime` for `user`, then publishes the hold's expiry (and,
    /// in mock-payment mode, its payment request). Refused without touching a seat for
    /// an unknown showtime and outside its sale window. If the publish fails the seat is
    /// given back before answering, so a broker outage never strands a seat; a message
    /// lost after it was handed over (see [`MessageBus::publish_hold`]) leaves the hold
    /// to the sweep.
    pub async fn reserve(
        &self,
        user: UserId,
        showtime: ShowtimeId,
    ) -> Result<Reservation, ReserveError> {
        self.reserve_seats(user, showtime, 1).await
    }

    /// [`Sale::reserve`] of `quantity` seats at once, as one reservation (a group): all
    /// or none, refused above the showtime's `max_per_user` (`TooManySeats`) and when
    /// fewer are left (`NotEnoughSeats`, or `SoldOut` when none is: only then does this
    /// process remember the showtime as sold out).
    pub async fn reserve_seats(
        &self,
        user: UserId,
        showtime: ShowtimeId,
        quantity: u32,
    ) -> Result<Reservation, ReserveError> {
        self.reserve_through(user, showtime, quantity, Admission::None)
            .await
    }

    /// [`Sale::reserve_seats`] for a showtime that may sell through a waiting room:
    /// there, a buyer without an [`Admission::Shown`] is refused (`NotAdmitted`) before
    /// the store is asked, and the store takes seats only for a user whose admission is
    /// unused and unexpired, using it up with a hold or a sold-out answer (never with
    /// a failure, nor with `NotEnoughSeats` / `TooManySeats`, which the buyer may retry
    /// with fewer seats).
    pub async fn reserve_through(
        &self,
        user: UserId,
        showtime: ShowtimeId,
        quantity: u32,
        admission: Admission,
    ) -> Result<Reservation, ReserveError> {
        if quantity == 0 {
            return Err(ReserveError::InvalidQuantity);
        }
        let Some(window) = self.sale_window(showtime).await? else {
            return Err(ReserveError::UnknownShowtime(showtime));
        };
        let seen = self.refusal_by(showtime, window, admission)?;
        let reservation = match self.take(user, showtime, quantity).await? {
            TakeOutcome::UnknownShowtime => {
                let Some(known) = self.db.showtime(showtime).await? else {
                    return Err(ReserveError::UnknownShowtime(showtime));
                };
                self.load_from_catalog(&known).await?;
                match self.take(user, showtime, quantity).await? {
                    TakeOutcome::UnknownShowtime => {
                        return Err(PortError::transient(
                            "seat store",
                            format!("showtime {showtime} could not be loaded"),
                        )
                        .into());
                    }
                    other => self.reserved(showtime, quantity, seen, other)?,
                }
            }
            other => self.reserved(showtime, quantity, seen, other)?,
        };
        crash_point!("reserve.after_take");

        let expiry = Expiry {
            reservation: reservation.id,
        };
        let payment = (self.settings.payment == PaymentMode::Mock).then_some(PaymentRequest {
            reservation: reservation.id,
            user,
        });
        if let Err(publish) = self.bus.publish_hold(expiry, payment).await {
            // Give the seat (and an admission it used) back now. Should this fail too,
            // the hold's deadline is in the seat store and the sweep will return it.
            if self.seats.give_back(reservation.id).await.is_ok() {
                self.sold_out.seat_returned(showtime);
            }
            return Err(publish.into());
        }
        crash_point!("reserve.after_publish");
        // The user's list is best effort (the adapter reports a failure): the hold stands,
        // and the user's next press finds it as `already_ordered`.
        let _ = self.seats.list_for_user(&reservation).await;
        Ok(reservation)
    }

    /// The user's reservations across showtimes, newest first, in pages of at most
    /// `limit` (from `before`, a previous page's `next`).
    pub async fn user_reservations(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<ReservationPage, PortError> {
        self.seats
            .user_reservations(user, before, limit.max(1))
            .await
    }

    async fn take(
        &self,
        user: UserId,
        showtime: ShowtimeId,
        quantity: u32,
    ) -> Result<TakeOutcome, PortError> {
        self.seats
            .take_seats(showtime, user, quantity, self.settings.hold)
            .await
    }

    fn reserved(
        &self,
        showtime: ShowtimeId,
        asked: u32,
        seen: ReturnsSeen,
        outcome: TakeOutcome,
    ) -> Result<Reservation, ReserveError> {
        match outcome {
            TakeOutcome::Reserved(r) => Ok(r),
            TakeOutcome::SoldOut => {
                crash_point!("reserve.before_remembering_sold_out");
                self.sold_out
                    .sold_out(showtime, seen, self.settings.sold_out_cache);
                Err(ReserveError::SoldOut { remembered: false })
            }
            // Seats are left: nothing to remember.
            TakeOutcome::NotEnoughSeats { available } => {
                Err(ReserveError::NotEnoughSeats { asked, available })
            }
            TakeOutcome::TooManySeats { max_per_user } => Err(ReserveError::TooManySeats {
                asked,
                max_per_user,
            }),
            TakeOutcome::AlreadyHolds(id, status) => Err(ReserveError::AlreadyHolds(id, status)),
            TakeOutcome::NotAdmitted => Err(ReserveError::NotAdmitted),
            TakeOutcome::UnknownShowtime => unreachable!("handled by the caller"),
        }
    }

    async fn load_from_catalog(&self, showtime: &Showtime) -> Result<(), PortError> {
        self.seats
            .load(
                showtime.id,
                showtime.capacity.get(),
                showtime.ordered,
                showtime.generation,
                true,
                showtime.max_per_user.get(),
            )
            .await?;
        Ok(())
    }

    /// `RESERVED -> PAID` for the owner before the deadline, then publishes the order.
    pub async fn pay(&self, id: ReservationId, user: UserId) -> Result<PayReceipt, PayError> {
        let (paid_at, quantity) = match self.seats.pay(id, user).await? {
            PayOutcome::Paid { paid_at, quantity } => (paid_at, quantity),
            PayOutcome::NotFound => return Err(PayError::NotFound),
            PayOutcome::NotOwner => return Err(PayError::NotOwner),
            PayOutcome::AlreadyPaid(status) => return Err(PayError::AlreadyPaid(status)),
            PayOutcome::Expired => {
                self.sold_out.seat_returned(id.showtime());
                return Err(PayError::Expired);
            }
            PayOutcome::Cancelled => return Err(PayError::Cancelled),
        };
        crash_point!("pay.after_pay");
        let order = OrderRequest {
            reservation: id,
            user,
            paid_at,
            quantity,
        };
        let order_queued = self.bus.publish_orders(&[order]).await.is_ok();
        Ok(PayReceipt {
            order,
            order_queued,
        })
    }

    /// `RESERVED -> CANCELLED` for the owner before the deadline: the seat is on sale
    /// again at once (this process's sold-out memory forgets the showtime; another
    /// process's within `sold_out_cache`), and the user may hold again. Cancelling a
    /// cancelled hold again answers the same and changes nothing. The hold's expiry,
    /// arriving later, finds it settled.
    pub async fn cancel(&self, id: ReservationId, user: UserId) -> Result<(), CancelError> {
        match self.seats.cancel(id, user).await? {
            CancelOutcome::Cancelled => {
                self.sold_out.seat_returned(id.showtime());
                Ok(())
            }
            CancelOutcome::AlreadyCancelled => Ok(()),
            CancelOutcome::NotFound => Err(CancelError::NotFound),
            CancelOutcome::NotOwner => Err(CancelError::NotOwner),
            CancelOutcome::AlreadyPaid(status) => Err(CancelError::AlreadyPaid(status)),
            CancelOutcome::Expired => {
                self.sold_out.seat_returned(id.showtime());
                Err(CancelError::Expired)
            }
        }
    }

    /// The mock payment provider's side of a payment request. A request that can no
    /// longer be paid (expired, already paid, gone) is settled, not an error.
    pub async fn settle_payment_request(
        &self,
        request: PaymentRequest,
    ) -> Result<Option<PayReceipt>, PortError> {
        match self.pay(request.reservation, request.user).await {
            Ok(receipt) => Ok(Some(receipt)),
            Err(PayError::Unavailable(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// `RESERVED -> EXPIRED`, returning the seat exactly once; any other state is left
    /// alone.
    pub async fn expire(&self, message: Expiry) -> Result<ExpireOutcome, PortError> {
        let (outcome, checked) = self.expire_hold(message.reservation).await?;
        crash_point!("expire.after_expire");
        checked?;
        Ok(outcome)
    }

    /// Expires a hold (the expiry message's and the sweep's step). A hold whose seats
    /// came back is checked against the database, which has the last word: should it
    /// hold the hold's order (its payment and marking lost with Redis's last writes,
    /// the order committed before), the hold is marked `ORDERED` at once and its seats
    /// sold again, instead of staying on sale while the database counts them sold. The
    /// check costs one lookup per hold that really expires, none for a paid one. Should
    /// it fail (the database down), the seats stay returned and the lookup's error comes
    /// beside the outcome, for the caller to report without stopping: holds keep
    /// expiring while the database is away (a retry finds the hold expired already;
    /// `reconcile` reports a difference the lookup would have prevented).
    async fn expire_hold(
        &self,
        id: ReservationId,
    ) -> Result<(ExpireOutcome, Result<(), PortError>), PortError> {
        let outcome = self.seats.expire(id).await?;
        if outcome != ExpireOutcome::SeatReturned {
            return Ok((outcome, Ok(())));
        }
        let checked = match self.db.order_user(id).await {
            Ok(Some(user)) => {
                if self.seats.mark_ordered(&[(id, user)]).await? == 1 {
                    return Ok((ExpireOutcome::AlreadySettled(Status::Ordered), Ok(())));
                }
                // The order is another user's (an id handed out twice): the hold is not it.
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        self.sold_out.seat_returned(id.showtime());
        Ok((outcome, checked))
    }

    /// Records orders in the database, each at most once, then marks them `ORDERED`. An
    /// order the database refuses for good is kept on record for a refund, once, and
    /// marked `REFUSED` (its seat back on sale, never re-sent by the sweep); its outcome
    /// is [`OrderOutcome::Refused`] for the first copy in the batch and
    /// [`OrderOutcome::AlreadyRefused`] for any other, so a host dead-letters it once.
    pub async fn write_orders(
        &self,
        orders: &[OrderRequest],
    ) -> Result<Vec<OrderOutcome>, PortError> {
        let mut outcomes = self.db.record_orders(orders).await?;
        crash_point!("write_order.after_commit");
        let refused: Vec<(OrderRequest, &Refusal)> = orders
            .iter()
            .zip(&outcomes)
            .filter_map(|(order, outcome)| match outcome {
                OrderOutcome::Refused(why) => Some((*order, why)),
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            let on_record: Vec<(OrderRequest, String)> = refused
                .iter()
                .map(|(order, why)| (*order, why.to_string()))
                .collect();
            self.db.record_refusals(&on_record).await?;
            // A seat the database has no room for leaves the stock instead of going on
            // sale again, where the next buyer would pay for it and be refused in turn.
            // Refusals are rare: one store call each.
            for (order, why) in &refused {
                let id = order.reservation;
                let moved = self.seats.mark_refused(&[id], why.seats()).await?;
                if !moved.is_empty() && why.seats() == RefusedSeats::BackOnSale {
                    self.sold_out.seat_returned(id.showtime());
                }
            }
            // Each refusal is reported once per delivery: where a batch names the same
            // refused reservation twice, the later copies are settled. (A redelivery,
            // which only follows a failure, reports it again: a dead letter may be
            // repeated, never lost.)
            let mut reported = vec![];
            for (order, outcome) in orders.iter().zip(outcomes.iter_mut()) {
                if matches!(outcome, OrderOutcome::Refused(_)) {
                    if reported.contains(&order.reservation) {
                        *outcome = OrderOutcome::AlreadyRefused;
                    } else {
                        reported.push(order.reservation);
                    }
                }
            }
        }
        let recorded: Vec<(ReservationId, UserId)> = orders
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| {
                matches!(outcome, OrderOutcome::Inserted | OrderOutcome::Duplicate)
            })
            .map(|(order, _)| (order.reservation, order.user))
            .collect();
        if !recorded.is_empty() {
            self.seats.mark_ordered(&recorded).await?;
        }
        crash_point!("write_order.before_ack");
        Ok(outcomes)
    }

    pub async fn reservation(&self, id: ReservationId) -> Result<Option<Reservation>, PortError> {
        self.seats.reservation(id).await
    }

    /// The backstop for lost messages: expires holds whose deadline passed `grace` ago
    /// (their delayed expiry never came), and re-sends orders paid `grace` ago that never
    /// reached the database. Idempotent; safe at any time.
    ///
    /// Showtime by showtime: one that fails (a broken key, a Redis Cluster shard down)
    /// is named in the report, and the others are swept all the same.
    pub async fn sweep(&self, grace: Duration) -> Result<SweepReport, PortError> {
        let mut report = SweepReport::default();
        let mut unrecorded = vec![];
        for showtime in self.seats.swept_showtimes().await? {
            if let Err(e) = self
                .sweep_showtime(showtime, grace, &mut report, &mut unrecorded)
                .await
            {
                report.failed.push((showtime, e.to_string()));
            }
        }
        if !unrecorded.is_empty() {
            match self.bus.publish_orders(&unrecorded).await {
                Ok(()) => report.orders_resent = unrecorded.len(),
                Err(e) => {
                    report.orders_not_resent =
                        Some(format!("{} orders not re-sent: {e}", unrecorded.len()));
                }
            }
        }
        Ok(report)
    }

    async fn sweep_showtime(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
        report: &mut SweepReport,
        unrecorded: &mut Vec<OrderRequest>,
    ) -> Result<(), PortError> {
        for id in self.seats.overdue_holds(showtime, grace).await? {
            let (outcome, checked) = self.expire_hold(id).await?;
            if outcome == ExpireOutcome::SeatReturned {
                report.holds_expired += 1;
            }
            if let Err(e) = checked {
                report.failed.push((
                    showtime,
                    format!("hold {id} expired without its order lookup: {e}"),
                ));
            }
        }
        unrecorded.extend(self.seats.unrecorded_payments(showtime, grace).await?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeBus, FakeDb, FakeSeats};
    use crate::{Capacity, UnixMillis};
    use futures::executor::block_on;
    use std::sync::atomic::Ordering;

    const HOLD: Duration = Duration::from_secs(900);

    fn sale(payment: PaymentMode) -> Sale<FakeSeats, FakeBus, FakeDb> {
        Sale::new(
            FakeSeats::default(),
            FakeBus::default(),
            FakeDb::default(),
            SaleSettings {
                hold: HOLD,
                payment,
                sold_out_cache: Duration::ZERO,
            },
        )
    }

    fn showtime(sale: &Sale<FakeSeats, FakeBus, FakeDb>, capacity: i64) -> ShowtimeId {
        showtime_on_sale(sale, capacity, SaleWindow::ALWAYS)
    }

    fn showtime_on_sale(
        sale: &Sale<FakeSeats, FakeBus, FakeDb>,
        capacity: i64,
        sale_window: SaleWindow,
    ) -> ShowtimeId {
        block_on(sale.create_showtime(NewShowtime {
            capacity: Capacity::new(capacity).unwrap(),
            title: None,
            starts_at: None,
            sale_window,
            max_per_user: crate::MaxPerUser::ONE,
            waiting_room: None,
        }))
        .unwrap()
        .id
    }

    fn user(n: i64) -> UserId {
        UserId::new(n).unwrap()
    }

    fn counts(sale: &Sale<FakeSeats, FakeBus, FakeDb>, id: ShowtimeId) -> SeatCounts {
        block_on(sale.showtime(id)).unwrap().unwrap().1
    }

    #[test]
    fn one_key_creates_one_showtime_and_finds_it_again() {
        let sale = sale(PaymentMode::Manual);
        let key = |by: i64, key: &str, fingerprint: &str| CreationKey {
            by: (by > 0).then(|| user(by)),
            key: crate::IdempotencyKey::parse(key.as_bytes()).unwrap(),
            fingerprint: crate::idempotency::Fingerprint(fingerprint.into()),
        };
        let new = || NewShowtime::always_on_sale(Capacity::new(3).unwrap());
        let Creation::Created(first) =
            block_on(sale.create_showtime_once(new(), key(7, "k", "a"))).unwrap()
        else {
            panic!("the first request under a key creates");
        };
        assert_eq!(counts(&sale, first.id).available, 3, "its seats on sale");
        let again = block_on(sale.create_showtime_once(new(), key(7, "k", "a"))).unwrap();
        assert_eq!(again, Creation::Again(first.clone()));
        assert_eq!(
            block_on(sale.create_showtime_once(new(), key(7, "k", "b"))).unwrap(),
            Creation::KeyReused
        );
        // Another operator's key, and no verified operator's, are other keys.
        for by in [8, 0] {
            let Creation::Created(other) =
                block_on(sale.create_showtime_once(new(), key(by, "k", "a"))).unwrap()
            else {
                panic!("operator {by}'s key is their own");
            };
            assert_ne!(other.id, first.id);
        }
    }

    #[test]
    fn a_retry_under_its_key_puts_the_seats_on_sale_a_first_try_left_out() {
        let sale = sale(PaymentMode::Manual);
        let key = CreationKey {
            by: None,
            key: crate::IdempotencyKey::parse(b"k").unwrap(),
            fingerprint: crate::idempotency::Fingerprint("a".into()),
        };
        let new = || NewShowtime::always_on_sale(Capacity::new(2).unwrap());
        let Creation::Created(first) =
            block_on(sale.create_showtime_once(new(), key.clone())).unwrap()
        else {
            panic!("the first request under a key creates");
        };
        // As if the first try had stopped between the row and the seat store.
        sale.seats.lose_everything();
        let Creation::Again(showtime) = block_on(sale.create_showtime_once(new(), key)).unwrap()
        else {
            panic!("the row was written by the first try");
        };
        assert_eq!(showtime.id, first.id);
        let seats = block_on(sale.seats.counts(showtime.id)).unwrap();
        assert_eq!(seats.map(|c| c.available), Some(2), "on sale again");
    }

    #[test]
    fn a_reservation_holds_a_seat_and_schedules_its_expiry() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        let r = block_on(sale.reserve(user(7), st)).unwrap();
        assert_eq!(r.status, Status::Reserved);
        assert_eq!(r.expires_at, UnixMillis(900_000));
        assert_eq!(
            *sale.bus.expiries.lock().unwrap(),
            vec![Expiry { reservation: r.id }]
        );
        assert!(sale.bus.payments.lock().unwrap().is_empty());
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (1, 1, 0));
    }

    #[test]
    fn mock_payment_mode_also_requests_a_payment() {
        let sale = sale(PaymentMode::Mock);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(7), st)).unwrap();
        assert_eq!(
            *sale.bus.payments.lock().unwrap(),
            vec![PaymentRequest {
                reservation: r.id,
                user: user(7)
            }]
        );
    }

    #[test]
    fn a_reservation_outside_the_sale_window_is_refused_without_touching_a_seat() {
        let clock = Clock::manual(UnixMillis(1_000_000));
        let sale = sale(PaymentMode::Manual).with_clock(clock.clone());
        let window =
            SaleWindow::new(Some(UnixMillis(2_000_000)), Some(UnixMillis(3_000_000))).unwrap();
        let st = showtime_on_sale(&sale, 1, window);
        match block_on(sale.reserve(user(1), st)) {
            Err(ReserveError::OutsideSaleWindow { showtime, why }) => {
                assert_eq!(showtime, st);
                assert_eq!(
                    why,
                    OutsideSaleWindow::NotOpenYet {
                        opens_at: UnixMillis(2_000_000)
                    }
                );
            }
            other => panic!("expected the sale not to be open, got {other:?}"),
        }
        assert_eq!(counts(&sale, st).available, 1);
        assert!(sale.bus.expiries.lock().unwrap().is_empty());

        clock.advance(Duration::from_secs(1_000));
        block_on(sale.reserve(user(1), st)).expect("open from its opening on");

        clock.advance(Duration::from_secs(1_000));
        assert!(matches!(
            block_on(sale.reserve(user(2), st)),
            Err(ReserveError::OutsideSaleWindow {
                why: OutsideSaleWindow::Closed { .. },
                ..
            })
        ));
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held), (0, 1));
    }

    #[test]
    fn one_request_reads_a_stale_window_again_while_the_others_use_the_one_they_have() {
        let windows = SaleWindows::default();
        let st = ShowtimeId::new(1).unwrap();
        assert_eq!(windows.get(st, Duration::MAX), Known::Unknown);
        windows.keep(st, SaleWindow::ALWAYS);
        let refresh = Duration::from_secs(1);
        assert_eq!(windows.get(st, refresh), Known::Fresh(SaleWindow::ALWAYS));
        // Read two seconds ago: stale.
        let long_ago = Instant::now()
            .checked_sub(2 * refresh)
            .expect("the machine has been up two seconds");
        windows
            .0
            .write()
            .unwrap()
            .insert(st, (SaleWindow::ALWAYS, long_ago));
        assert_eq!(windows.get(st, refresh), Known::Stale(SaleWindow::ALWAYS));
        for _ in 0..100 {
            assert_eq!(
                windows.get(st, refresh),
                Known::Fresh(SaleWindow::ALWAYS),
                "claimed by the first"
            );
        }
    }

    #[test]
    fn a_catalog_that_does_not_answer_leaves_the_sale_on_its_last_window() {
        let sale = sale(PaymentMode::Manual).with_window_refresh(Duration::ZERO);
        let st = showtime(&sale, 3);
        block_on(sale.reserve(user(1), st)).unwrap();
        sale.db.catalog_down.store(true, Ordering::SeqCst);
        block_on(sale.reserve(user(2), st)).expect("the sale goes on without the catalog");
        sale.db.catalog_down.store(false, Ordering::SeqCst);
        let pause = ShowtimeChange {
            paused: Some(true),
            ..ShowtimeChange::default()
        };
        block_on(sale.change_showtime(st, pause))
            .unwrap()
            .1
            .unwrap();
        assert!(block_on(sale.reserve(user(3), st)).is_err());
    }

    #[test]
    fn a_paused_sale_refuses_holds_without_touching_a_seat_and_resumes() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 3);
        let held = block_on(sale.reserve(user(1), st)).unwrap();
        let pause = ShowtimeChange {
            paused: Some(true),
            ..ShowtimeChange::default()
        };
        let (_, _, state) = block_on(sale.change_showtime(st, pause)).unwrap();
        assert_eq!(state, SaleState::Paused);
        assert!(matches!(
            block_on(sale.reserve(user(2), st)),
            Err(ReserveError::OutsideSaleWindow {
                why: OutsideSaleWindow::Paused,
                ..
            })
        ));
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held), (2, 1));
        block_on(sale.pay(held.id, user(1))).expect("a hold made before the pause is paid");
        let resume = ShowtimeChange {
            paused: Some(false),
            ..ShowtimeChange::default()
        };
        block_on(sale.change_showtime(st, resume))
            .unwrap()
            .1
            .unwrap();
        block_on(sale.reserve(user(2), st)).expect("on sale again");
    }

    #[test]
    fn a_rooms_opening_moves_until_it_comes_and_never_after() {
        let clock = Clock::manual(UnixMillis(1_000_000));
        let sale = sale(PaymentMode::Manual).with_clock(clock.clone());
        let st = showtime(&sale, 3);
        let room_at = |ms| {
            let room = crate::waiting_room::RoomSettings::new(
                UnixMillis(ms),
                None,
                0,
                Duration::from_secs(60),
            )
            .unwrap();
            ShowtimeChange {
                waiting_room: Some(Some(room)),
                ..ShowtimeChange::default()
            }
        };
        block_on(sale.change_showtime(st, room_at(2_000_000)))
            .unwrap()
            .1
            .unwrap();
        // Not open yet: its opening may move, later or earlier.
        block_on(sale.change_showtime(st, room_at(3_000_000)))
            .unwrap()
            .1
            .unwrap();
        block_on(sale.change_showtime(st, room_at(1_500_000)))
            .unwrap()
            .1
            .unwrap();
        clock.advance(Duration::from_millis(500_000));
        match block_on(sale.change_showtime(st, room_at(4_000_000))) {
            Err(ChangeError::RoomOpened { opened_at }) => {
                assert_eq!(opened_at, UnixMillis(1_500_000));
            }
            other => panic!("expected the room to be open, got {other:?}"),
        }
        let row = block_on(sale.db.showtime(st)).unwrap().unwrap();
        assert_eq!(row.waiting_room.unwrap().opens_at, UnixMillis(1_500_000));
        // The same opening with other settings, or no room at all, is a change it takes.
        block_on(sale.change_showtime(st, room_at(1_500_000)))
            .unwrap()
            .1
            .unwrap();
        let removed = ShowtimeChange {
            waiting_room: Some(None),
            ..ShowtimeChange::default()
        };
        let (row, _, _) = block_on(sale.change_showtime(st, removed)).unwrap();
        assert_eq!(row.waiting_room, None);
    }

    #[test]
    fn a_sale_behind_a_waiting_room_refuses_buyers_who_show_no_admission() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 3);
        let room =
            crate::waiting_room::RoomSettings::new(UnixMillis(0), None, 0, Duration::from_secs(60))
                .unwrap();
        let queue = ShowtimeChange {
            waiting_room: Some(Some(room)),
            ..ShowtimeChange::default()
        };
        let (after, _, _) = block_on(sale.change_showtime(st, queue)).unwrap();
        assert_eq!(after.waiting_room, Some(room));
        assert!(after.sale_window.is_queued());
        assert!(matches!(
            block_on(sale.reserve(user(1), st)),
            Err(ReserveError::NotAdmitted)
        ));
        assert_eq!(counts(&sale, st).available, 3, "nothing taken");
        block_on(sale.reserve_through(user(1), st, 1, Admission::Shown))
            .expect("an admission shown is taken to the store");
        // A change that leaves the room alone keeps it; removing it opens the sale.
        let pause = ShowtimeChange {
            paused: Some(false),
            ..ShowtimeChange::default()
        };
        let (after, _, _) = block_on(sale.change_showtime(st, pause)).unwrap();
        assert!(after.sale_window.is_queued());
        let open = ShowtimeChange {
            waiting_room: Some(None),
            ..ShowtimeChange::default()
        };
        let (after, _, _) = block_on(sale.change_showtime(st, open)).unwrap();
        assert_eq!(after.waiting_room, None);
        block_on(sale.reserve(user(2), st)).expect("no room: no admission needed");
    }

    #[test]
    fn seats_are_added_to_a_sold_out_sale_and_only_unsold_ones_removed() {
        let mut sale = sale(PaymentMode::Manual);
        sale.settings.sold_out_cache = Duration::from_secs(3600);
        let st = showtime(&sale, 2);
        block_on(sale.reserve(user(1), st)).unwrap();
        block_on(sale.reserve(user(2), st)).unwrap();
        assert!(matches!(
            block_on(sale.reserve(user(3), st)),
            Err(ReserveError::SoldOut { .. })
        ));
        let add = |n| ShowtimeChange {
            seats: Some(crate::SeatChange::Add(n)),
            ..ShowtimeChange::default()
        };
        let (row, c, _) = block_on(sale.change_showtime(st, add(1))).unwrap();
        let c = c.unwrap();
        assert_eq!((row.capacity.get(), c.capacity, c.available), (3, 3, 1));
        block_on(sale.reserve(user(3), st)).expect("the seat added is on sale");
        let remove = ShowtimeChange {
            seats: Some(crate::SeatChange::Remove(1)),
            ..ShowtimeChange::default()
        };
        match block_on(sale.change_showtime(st, remove)) {
            Err(ChangeError::SeatsInUse { counts }) => assert_eq!(counts.available, 0),
            other => panic!("expected the seats to be in use, got {other:?}"),
        }
        let row = block_on(sale.db.showtime(st)).unwrap().unwrap();
        assert_eq!(row.capacity.get(), 3, "the row is unchanged");
        assert_eq!(counts(&sale, st).capacity, 3);
    }

    #[test]
    fn closing_a_sale_early_closes_it_now_and_a_window_that_closes_before_it_opens_is_refused() {
        let clock = Clock::manual(UnixMillis(1_000_000));
        let sale = sale(PaymentMode::Manual).with_clock(clock.clone());
        let st = showtime(&sale, 2);
        let close = ShowtimeChange {
            close_now: true,
            ..ShowtimeChange::default()
        };
        let (row, _, state) = block_on(sale.change_showtime(st, close)).unwrap();
        assert_eq!(row.sale_window.closes_at(), Some(UnixMillis(1_000_000)));
        assert_eq!(state, SaleState::Ended);
        let backwards = ShowtimeChange {
            sale_opens_at: Some(Some(UnixMillis(2_000_000))),
            ..ShowtimeChange::default()
        };
        assert!(matches!(
            block_on(sale.change_showtime(st, backwards)),
            Err(ChangeError::Invalid(_))
        ));
    }

    #[test]
    fn a_showtime_another_process_created_is_held_to_its_window_from_the_catalog() {
        let clock = Clock::manual(UnixMillis(0));
        let sale = sale(PaymentMode::Manual).with_clock(clock.clone());
        let window = SaleWindow::new(Some(UnixMillis(10)), None).unwrap();
        // Created behind this process's back: only the catalog knows its window.
        let st = block_on(sale.db.create_showtime(NewShowtime {
            capacity: Capacity::new(5).unwrap(),
            title: None,
            starts_at: None,
            sale_window: window,
            max_per_user: crate::MaxPerUser::ONE,
            waiting_room: None,
        }))
        .unwrap()
        .id;
        assert!(matches!(
            block_on(sale.reserve(user(1), st)),
            Err(ReserveError::OutsideSaleWindow { .. })
        ));
        assert_eq!(
            sale.windows.get(st, Duration::MAX),
            Known::Fresh(window),
            "kept once read"
        );
        clock.advance(Duration::from_millis(10));
        block_on(sale.reserve(user(1), st)).expect("its stock is loaded on first use");
    }

    fn group_showtime(
        sale: &Sale<FakeSeats, FakeBus, FakeDb>,
        capacity: i64,
        max: i64,
    ) -> ShowtimeId {
        let mut new = NewShowtime::always_on_sale(Capacity::new(capacity).unwrap());
        new.max_per_user = crate::MaxPerUser::new(max).unwrap();
        block_on(sale.create_showtime(new)).unwrap().id
    }

    #[test]
    fn a_group_is_one_reservation_paid_and_ordered_once_with_its_quantity() {
        let sale = sale(PaymentMode::Manual);
        let st = group_showtime(&sale, 10, 4);
        let r = block_on(sale.reserve_seats(user(1), st, 4)).unwrap();
        assert_eq!(r.quantity, 4);
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (6, 4, 0));
        let receipt = block_on(sale.pay(r.id, user(1))).unwrap();
        assert_eq!(receipt.order.quantity, 4);
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (6, 0, 4));
        block_on(sale.write_orders(&[receipt.order, receipt.order])).unwrap();
        let orders = sale.db.orders.lock().unwrap().clone();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[&r.id].quantity, 4);
        let showtime = block_on(sale.db.showtime(st)).unwrap().unwrap();
        assert_eq!(showtime.ordered, 4, "the database counts seats, not orders");
        // One reservation per user: a second group of the same user is refused.
        assert!(matches!(
            block_on(sale.reserve_seats(user(1), st, 1)),
            Err(ReserveError::AlreadyHolds(..))
        ));
    }

    #[test]
    fn a_group_that_does_not_fit_changes_nothing_and_is_not_remembered_as_sold_out() {
        let mut sale = sale(PaymentMode::Manual);
        sale.settings.sold_out_cache = Duration::from_secs(3600);
        let st = group_showtime(&sale, 3, 4);
        block_on(sale.reserve_seats(user(1), st, 2)).unwrap();
        let before = counts(&sale, st);
        assert!(matches!(
            block_on(sale.reserve_seats(user(2), st, 2)),
            Err(ReserveError::NotEnoughSeats {
                asked: 2,
                available: 1
            })
        ));
        assert_eq!(counts(&sale, st), before, "all or none");
        assert!(matches!(
            block_on(sale.reserve_seats(user(2), st, 5)),
            Err(ReserveError::TooManySeats {
                asked: 5,
                max_per_user: 4
            })
        ));
        assert!(matches!(
            block_on(sale.reserve_seats(user(2), st, 0)),
            Err(ReserveError::InvalidQuantity)
        ));
        assert_eq!(counts(&sale, st), before);
        // The last seat still goes: the failed group left no sold-out memory.
        let last = block_on(sale.reserve_seats(user(2), st, 1)).unwrap();
        assert_eq!(last.quantity, 1);
        assert!(matches!(
            block_on(sale.reserve_seats(user(3), st, 1)),
            Err(ReserveError::SoldOut { remembered: false })
        ));
    }

    #[test]
    fn a_group_expired_or_cancelled_returns_all_its_seats_once() {
        let sale = sale(PaymentMode::Manual);
        let st = group_showtime(&sale, 5, 3);
        let a = block_on(sale.reserve_seats(user(1), st, 3)).unwrap();
        let b = block_on(sale.reserve_seats(user(2), st, 2)).unwrap();
        block_on(sale.cancel(a.id, user(1))).unwrap();
        block_on(sale.cancel(a.id, user(1))).unwrap();
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (3, 2, 0));
        let msg = Expiry { reservation: b.id };
        assert_eq!(
            block_on(sale.expire(msg)).unwrap(),
            ExpireOutcome::SeatReturned
        );
        assert!(matches!(
            block_on(sale.expire(msg)).unwrap(),
            ExpireOutcome::AlreadySettled(_)
        ));
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (5, 0, 0));
    }

    #[test]
    fn a_default_showtime_refuses_groups() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 5);
        assert!(matches!(
            block_on(sale.reserve_seats(user(1), st, 2)),
            Err(ReserveError::TooManySeats {
                asked: 2,
                max_per_user: 1
            })
        ));
        assert_eq!(block_on(sale.reserve(user(1), st)).unwrap().quantity, 1);
    }

    #[test]
    fn the_last_seat_goes_once_and_then_it_is_sold_out() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        block_on(sale.reserve(user(1), st)).unwrap();
        assert!(matches!(
            block_on(sale.reserve(user(2), st)),
            Err(ReserveError::SoldOut { .. })
        ));
    }

    #[test]
    fn a_sold_out_showtime_is_answered_from_memory_until_this_process_returns_a_seat() {
        let mut sale = sale(PaymentMode::Manual);
        sale.settings.sold_out_cache = Duration::from_secs(3600);
        let st = showtime(&sale, 1);
        let first = block_on(sale.reserve(user(1), st)).unwrap();
        assert!(matches!(
            block_on(sale.reserve(user(2), st)),
            Err(ReserveError::SoldOut { .. })
        ));
        // A seat this process returns clears the memory at once.
        let msg = Expiry {
            reservation: first.id,
        };
        assert_eq!(
            block_on(sale.expire(msg)).unwrap(),
            ExpireOutcome::SeatReturned
        );
        let second = block_on(sale.reserve(user(2), st)).expect("the returned seat is on sale");
        assert!(matches!(
            block_on(sale.reserve(user(3), st)),
            Err(ReserveError::SoldOut { .. })
        ));
        // Another process returns a seat behind this one's back: this process keeps
        // answering from memory (for at most `sold_out_cache`), without the store.
        block_on(sale.seats.expire(second.id)).unwrap();
        assert!(matches!(
            block_on(sale.reserve(user(3), st)),
            Err(ReserveError::SoldOut { .. })
        ));
        assert_eq!(
            counts(&sale, st).available,
            1,
            "memory, not the store, said sold out"
        );
    }

    #[test]
    fn a_refusal_at_once_is_only_what_this_process_knows_and_what_the_full_path_answers() {
        let mut sale = sale(PaymentMode::Manual);
        sale.settings.sold_out_cache = Duration::from_secs(3600);
        let st = showtime(&sale, 1);
        let never_met = ShowtimeId::new(999).unwrap();
        // Nothing known: only the full path can tell (an unknown showtime included).
        assert!(
            sale.refusal_at_once(never_met, 1, Admission::None)
                .is_none()
        );
        assert!(sale.refusal_at_once(st, 1, Admission::None).is_none());
        let first = block_on(sale.reserve(user(1), st)).unwrap();
        // Seats were left when last asked: nothing refuses before the store.
        assert!(sale.refusal_at_once(st, 1, Admission::None).is_none());
        assert!(matches!(
            block_on(sale.reserve(user(2), st)),
            Err(ReserveError::SoldOut { remembered: false })
        ));
        // Remembered sold out: both paths refuse the same way, the store untouched.
        assert!(matches!(
            sale.refusal_at_once(st, 1, Admission::None),
            Some(ReserveError::SoldOut { remembered: true })
        ));
        assert!(matches!(
            block_on(sale.reserve(user(3), st)),
            Err(ReserveError::SoldOut { remembered: true })
        ));
        assert!(matches!(
            sale.refusal_at_once(st, 0, Admission::None),
            Some(ReserveError::InvalidQuantity)
        ));
        // A seat this process returns ends the refusal at once.
        block_on(sale.expire(Expiry {
            reservation: first.id,
        }))
        .unwrap();
        assert!(sale.refusal_at_once(st, 1, Admission::None).is_none());
    }

    #[test]
    fn a_sold_out_answer_read_before_a_seat_came_back_is_not_remembered() {
        let flags = SoldOutFlags::default();
        let st = ShowtimeId::new(1).unwrap();
        let long = Duration::from_secs(3600);
        // A reservation asks the store; meanwhile this process returns a seat; then the
        // store's "sold out" (read before the return) arrives.
        let seen = flags.observe(st).unwrap();
        flags.seat_returned(st);
        flags.sold_out(st, seen, long);
        assert!(
            flags.observe(st).is_some(),
            "a seat is free: not remembered"
        );
        // Read after the return, it is remembered.
        let seen = flags.observe(st).unwrap();
        flags.sold_out(st, seen, long);
        assert!(flags.observe(st).is_none());
        flags.seat_returned(st);
        assert!(flags.observe(st).is_some());
    }

    #[test]
    fn one_user_gets_one_seat_per_showtime() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 5);
        let first = block_on(sale.reserve(user(1), st)).unwrap();
        match block_on(sale.reserve(user(1), st)) {
            Err(ReserveError::AlreadyHolds(id, status)) => {
                assert_eq!((id, status), (first.id, Some(Status::Reserved)));
            }
            other => panic!("expected AlreadyHolds, got {other:?}"),
        }
        assert_eq!(counts(&sale, st).held, 1);
    }

    #[test]
    fn an_unknown_showtime_is_reported_as_such() {
        let sale = sale(PaymentMode::Manual);
        let missing = ShowtimeId::new(99).unwrap();
        assert!(matches!(
            block_on(sale.reserve(user(1), missing)),
            Err(ReserveError::UnknownShowtime(id)) if id == missing
        ));
    }

    #[test]
    fn a_failed_publish_gives_the_seat_back() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        sale.bus.down.store(true, Ordering::SeqCst);
        assert!(matches!(
            block_on(sale.reserve(user(1), st)),
            Err(ReserveError::Unavailable(_))
        ));
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held), (1, 0));
        sale.bus.down.store(false, Ordering::SeqCst);
        block_on(sale.reserve(user(1), st)).expect("the user may try again");
    }

    #[test]
    fn paying_in_time_sells_the_seat_and_queues_the_order() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        let receipt = block_on(sale.pay(r.id, user(1))).unwrap();
        assert!(receipt.order_queued);
        assert_eq!(*sale.bus.orders.lock().unwrap(), vec![receipt.order]);
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (0, 0, 1));
        assert!(matches!(
            block_on(sale.pay(r.id, user(1))),
            Err(PayError::AlreadyPaid(Status::Paid))
        ));
    }

    #[test]
    fn only_the_owner_may_pay() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        assert!(matches!(
            block_on(sale.pay(r.id, user(2))),
            Err(PayError::NotOwner)
        ));
        assert_eq!(counts(&sale, st).held, 1);
    }

    #[test]
    fn paying_after_the_deadline_is_refused_and_returns_the_seat() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        sale.seats.advance(HOLD);
        assert!(matches!(
            block_on(sale.pay(r.id, user(1))),
            Err(PayError::Expired)
        ));
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (1, 0, 0));
        // The delayed expiry arriving afterwards changes nothing.
        assert_eq!(
            block_on(sale.expire(Expiry { reservation: r.id })).unwrap(),
            ExpireOutcome::AlreadySettled(Status::Expired)
        );
        assert_eq!(counts(&sale, st).available, 1);
    }

    #[test]
    fn a_cancel_returns_the_seat_once_and_nothing_can_follow_it() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        assert!(matches!(
            block_on(sale.cancel(r.id, user(2))),
            Err(CancelError::NotOwner)
        ));
        block_on(sale.cancel(r.id, user(1))).unwrap();
        assert_eq!(counts(&sale, st).available, 1);
        // Again: the same answer, no second seat.
        block_on(sale.cancel(r.id, user(1))).unwrap();
        assert_eq!(counts(&sale, st).available, 1);
        assert!(matches!(
            block_on(sale.pay(r.id, user(1))),
            Err(PayError::Cancelled)
        ));
        assert_eq!(
            block_on(sale.expire(Expiry { reservation: r.id })).unwrap(),
            ExpireOutcome::AlreadySettled(Status::Cancelled)
        );
        assert_eq!(counts(&sale, st).available, 1);
        // The seat, and the user, are free: the same user holds again, then pays, and a
        // paid hold cannot be cancelled.
        let again = block_on(sale.reserve(user(1), st)).unwrap();
        block_on(sale.pay(again.id, user(1))).unwrap();
        assert!(matches!(
            block_on(sale.cancel(again.id, user(1))),
            Err(CancelError::AlreadyPaid(Status::Paid))
        ));
        assert_eq!(counts(&sale, st).sold, 1);
    }

    #[test]
    fn a_users_reservations_are_listed_newest_first_in_pages() {
        let sale = sale(PaymentMode::Manual);
        let mut made = vec![];
        for capacity in 1..=5 {
            let st = showtime(&sale, capacity);
            sale.seats.advance(Duration::from_millis(1));
            made.push(block_on(sale.reserve(user(1), st)).unwrap().id);
        }
        block_on(sale.reserve(user(2), ShowtimeId::new(5).unwrap())).unwrap();
        let first = block_on(sale.user_reservations(user(1), None, 2)).unwrap();
        let ids = |p: &ReservationPage| p.reservations.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(&first), vec![made[4], made[3]]);
        let second = block_on(sale.user_reservations(user(1), first.next, 2)).unwrap();
        assert_eq!(ids(&second), vec![made[2], made[1]]);
        let last = block_on(sale.user_reservations(user(1), second.next, 2)).unwrap();
        assert_eq!((ids(&last), last.next), (vec![made[0]], None));
    }

    #[test]
    fn a_cancel_after_the_deadline_expires_the_hold_instead() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        sale.seats.advance(Duration::from_secs(3600));
        assert!(matches!(
            block_on(sale.cancel(r.id, user(1))),
            Err(CancelError::Expired)
        ));
        assert_eq!(counts(&sale, st).available, 1);
        assert!(matches!(
            block_on(sale.cancel(r.id, user(1))),
            Err(CancelError::Expired)
        ));
    }

    #[test]
    fn expiry_returns_the_seat_exactly_once_and_lets_the_user_try_again() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        let msg = Expiry { reservation: r.id };
        assert_eq!(
            block_on(sale.expire(msg)).unwrap(),
            ExpireOutcome::SeatReturned
        );
        assert_eq!(
            block_on(sale.expire(msg)).unwrap(),
            ExpireOutcome::AlreadySettled(Status::Expired)
        );
        assert_eq!(counts(&sale, st).available, 1);
        let again = block_on(sale.reserve(user(1), st)).unwrap();
        assert_ne!(again.id, r.id);
    }

    #[test]
    fn a_paid_reservations_expiry_changes_nothing() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        block_on(sale.pay(r.id, user(1))).unwrap();
        assert_eq!(
            block_on(sale.expire(Expiry { reservation: r.id })).unwrap(),
            ExpireOutcome::AlreadySettled(Status::Paid)
        );
        let c = counts(&sale, st);
        assert_eq!((c.available, c.sold), (0, 1));
    }

    #[test]
    fn a_redelivered_order_is_recorded_once() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 1);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        let order = block_on(sale.pay(r.id, user(1))).unwrap().order;
        assert_eq!(
            block_on(sale.write_orders(&[order])).unwrap(),
            vec![OrderOutcome::Inserted]
        );
        assert_eq!(
            block_on(sale.write_orders(&[order])).unwrap(),
            vec![OrderOutcome::Duplicate]
        );
        assert_eq!(sale.db.orders.lock().unwrap().len(), 1);
        let stored = block_on(sale.reservation(r.id)).unwrap().unwrap();
        assert_eq!(stored.status, Status::Ordered);
    }

    #[test]
    fn an_order_the_database_refuses_ends_refused_once_and_is_never_resent() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        let order = block_on(sale.pay(r.id, user(1))).unwrap().order;
        let other = block_on(sale.reserve(user(2), st)).unwrap();
        let first = block_on(sale.pay(other.id, user(2))).unwrap().order;
        block_on(sale.write_orders(&[first])).unwrap();
        sale.db.shrink_capacity(st);
        // The same refused order twice in one batch: one refusal, nothing ORDERED.
        let outcomes = block_on(sale.write_orders(&[order, order])).unwrap();
        assert!(
            matches!(outcomes[0], OrderOutcome::Refused(_)),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], OrderOutcome::AlreadyRefused);
        let stored = block_on(sale.reservation(r.id)).unwrap().unwrap();
        assert_eq!(stored.status, Status::Refused);
        assert_eq!(sale.db.refusals.lock().unwrap().len(), 1);
        let c = counts(&sale, st);
        assert_eq!(
            (c.capacity, c.available, c.held, c.sold),
            (1, 0, 0, 1),
            "its seat is out of the stock: the database has no room for it"
        );
        assert!(matches!(
            block_on(sale.reserve(user(3), st)),
            Err(ReserveError::SoldOut { .. })
        ));
        // A redelivery (after a failure) reports it again; it stays on record once, and
        // the sweep has nothing to re-send.
        assert!(matches!(
            block_on(sale.write_orders(&[order])).unwrap()[0],
            OrderOutcome::Refused(_)
        ));
        assert_eq!(sale.db.refusals.lock().unwrap().len(), 1);
        sale.seats.advance(HOLD);
        assert_eq!(
            block_on(sale.sweep(Duration::ZERO)).unwrap(),
            SweepReport::default()
        );
        let report = block_on(sale.reconcile(st, false)).unwrap().unwrap();
        assert_eq!(report.refused, 1);
        assert!(!report.is_clean());
    }

    /// Redis lost a hold's payment (and its order's marking) while the order reached the
    /// database: the hold reads RESERVED again. Its expiry, or the sweep's, must not put
    /// a seat the database counts sold back on sale.
    #[test]
    fn an_expiring_hold_whose_order_the_database_holds_is_sold_not_returned() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 3);
        let held: Vec<Reservation> = (1..=3)
            .map(|u| block_on(sale.reserve(user(u), st)).unwrap())
            .collect();
        let on_record = |r: &Reservation| OrderRequest {
            reservation: r.id,
            user: r.user,
            paid_at: UnixMillis(1),
            quantity: 1,
        };
        // The third hold's id is on record for someone else (an id handed out twice).
        let someone_else = OrderRequest {
            user: user(9),
            ..on_record(&held[2])
        };
        block_on(
            sale.db
                .record_orders(&[on_record(&held[0]), on_record(&held[1]), someone_else]),
        )
        .unwrap();
        sale.seats.advance(HOLD);
        assert_eq!(
            block_on(sale.expire(Expiry {
                reservation: held[0].id
            }))
            .unwrap(),
            ExpireOutcome::AlreadySettled(Status::Ordered)
        );
        let report = block_on(sale.sweep(Duration::ZERO)).unwrap();
        assert_eq!(
            report.holds_expired, 1,
            "only the hold whose order is not its own"
        );
        let c = counts(&sale, st);
        assert_eq!((c.available, c.held, c.sold), (1, 0, 2));
        for r in &held[..2] {
            let now = block_on(sale.reservation(r.id)).unwrap().unwrap();
            assert_eq!(now.status, Status::Ordered);
        }
    }

    /// The order lookup of an expiry is no reason to stop expiring: with the database
    /// away, the sweep returns every overdue hold's seats and reports each lookup it
    /// could not make.
    #[test]
    fn the_sweep_expires_every_overdue_hold_while_the_database_is_away() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 3);
        for u in 1..=3 {
            block_on(sale.reserve(user(u), st)).unwrap();
        }
        sale.seats.advance(HOLD);
        sale.db.orders_down.store(true, Ordering::SeqCst);
        let report = block_on(sale.sweep(Duration::ZERO)).unwrap();
        assert_eq!(report.holds_expired, 3);
        assert_eq!(report.failed.len(), 3, "{report:?}");
        assert_eq!(counts(&sale, st).available, 3);
    }

    /// A seat change that reached the store but not the row (its answer lost, or the
    /// process gone between the two steps) is made right by the next change, which
    /// moves the stock to the row it writes: before, each change moved the stock by its
    /// own difference, so a lost +3 followed by a +1 left the store selling 6 seats for a
    /// row of 3; and the lost change's retry finds its seats already there.
    #[test]
    fn a_change_that_reached_only_the_store_is_made_right_by_the_next() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        block_on(sale.seats.resize(st, 2, 5)).unwrap();
        let add = |n| ShowtimeChange {
            seats: Some(crate::SeatChange::Add(n)),
            ..ShowtimeChange::default()
        };
        let (row, c, _) = block_on(sale.change_showtime(st, add(1))).unwrap();
        let c = c.unwrap();
        assert_eq!((row.capacity.get(), c.capacity, c.available), (3, 3, 3));

        block_on(sale.seats.resize(st, 3, 6)).unwrap();
        let (row, c, _) = block_on(sale.change_showtime(st, add(3))).unwrap();
        let c = c.unwrap();
        assert_eq!((row.capacity.get(), c.capacity, c.available), (6, 6, 6));
    }

    /// The undo of a change whose row's commit failed runs once the row is unlocked, so
    /// another change can come first: it moved the stock to its own row already, and the
    /// undo leaves it there (an unconditional move back left 6 seats for a row of 7).
    #[test]
    fn an_undo_after_another_change_leaves_that_change_alone() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 6);
        // A change 6 -> 9 reached the store; its commit failed.
        block_on(sale.seats.resize(st, 6, 9)).unwrap();
        // Another change, 6 -> 7, before the first one's undo.
        let change = ShowtimeChange {
            seats: Some(crate::SeatChange::Add(1)),
            ..ShowtimeChange::default()
        };
        let (row, _, _) = block_on(sale.change_showtime(st, change)).unwrap();
        assert_eq!(row.capacity.get(), 7);
        block_on(sale.seats.undo_resize(st, 6, 9)).unwrap();
        assert_eq!(counts(&sale, st).capacity, 7);
        // An undo whose change is the last one the stock reflects does move it back.
        block_on(sale.seats.resize(st, 7, 8)).unwrap();
        block_on(sale.seats.undo_resize(st, 7, 8)).unwrap();
        assert_eq!(counts(&sale, st).capacity, 7);
    }

    /// A sweep that expired holds and then could not re-send the orders of unrecorded
    /// payments (the broker away) still reports the holds it expired: before, the whole
    /// report was an error, and the seats it returned were never counted (the holds were
    /// no longer RESERVED for the next sweep to count), exactly while the broker was away.
    #[test]
    fn a_sweep_whose_order_resend_fails_still_reports_the_holds_it_expired() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        let paid = block_on(sale.reserve(user(1), st)).unwrap();
        block_on(sale.pay(paid.id, user(1))).unwrap();
        block_on(sale.reserve(user(2), st)).unwrap();
        sale.seats.advance(HOLD);
        sale.bus.down.store(true, Ordering::SeqCst);
        let report = block_on(sale.sweep(Duration::ZERO)).unwrap();
        assert_eq!(report.holds_expired, 1, "{report:?}");
        assert_eq!(report.orders_resent, 0, "{report:?}");
        assert!(
            report
                .orders_not_resent
                .as_deref()
                .is_some_and(|why| why.starts_with("1 orders not re-sent")),
            "{report:?}"
        );
        assert_eq!(counts(&sale, st).available, 1);
    }

    /// A seat an order refused as sold out took out of the stock stays out through the
    /// operator's seat changes: they move the stock by their difference, not to the
    /// row's capacity, which would put it back on sale (a refusal, then another).
    #[test]
    fn seats_added_after_a_sold_out_refusal_are_exactly_those_added() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        // An order the seat store does not know of (it lost the hold's writes).
        let unknown = OrderRequest {
            reservation: ReservationId::new(st, 999_999).unwrap(),
            user: user(9),
            paid_at: UnixMillis(1),
            quantity: 1,
        };
        block_on(sale.write_orders(&[unknown])).unwrap();
        let paid = |u| {
            let r = block_on(sale.reserve(user(u), st)).unwrap();
            block_on(sale.pay(r.id, user(u))).unwrap().order
        };
        let (first, second) = (paid(1), paid(2));
        assert_eq!(
            block_on(sale.write_orders(&[first, second])).unwrap(),
            vec![
                OrderOutcome::Inserted,
                OrderOutcome::Refused(Refusal::SoldOutInDatabase)
            ]
        );
        let c = counts(&sale, st);
        assert_eq!(
            (c.capacity, c.available, c.sold),
            (1, 0, 1),
            "out of the stock"
        );
        let add = ShowtimeChange {
            seats: Some(crate::SeatChange::Add(1)),
            ..ShowtimeChange::default()
        };
        let (row, c, _) = block_on(sale.change_showtime(st, add)).unwrap();
        let c = c.unwrap();
        assert_eq!((row.capacity.get(), c.capacity, c.available), (3, 2, 1));
        assert_eq!(
            block_on(sale.write_orders(&[paid(3)])).unwrap(),
            vec![OrderOutcome::Inserted],
            "the one seat added is one the database has"
        );
        assert!(matches!(
            block_on(sale.reserve(user(4), st)),
            Err(ReserveError::SoldOut { .. })
        ));
    }

    #[test]
    fn an_order_is_no_duplicate_of_another_users_row_under_the_same_id() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        let mine = block_on(sale.pay(r.id, user(1))).unwrap().order;
        block_on(sale.write_orders(&[mine])).unwrap();
        // The same id paid by someone else (a store that forgot and handed it out again).
        let theirs = OrderRequest {
            user: user(2),
            ..mine
        };
        assert!(matches!(
            block_on(sale.write_orders(&[theirs])).unwrap()[0],
            OrderOutcome::Refused(Refusal::Other(ref why)) if why.contains("another user")
        ));
    }

    #[test]
    fn the_sweep_expires_holds_whose_message_never_came_and_resends_lost_orders() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        let held = block_on(sale.reserve(user(1), st)).unwrap();
        let paid = block_on(sale.reserve(user(2), st)).unwrap();
        sale.bus.down.store(true, Ordering::SeqCst);
        let receipt = block_on(sale.pay(paid.id, user(2))).unwrap();
        assert!(
            !receipt.order_queued,
            "the payment stands even when the order is not queued"
        );
        sale.bus.down.store(false, Ordering::SeqCst);

        let grace = Duration::from_secs(30);
        assert_eq!(block_on(sale.sweep(grace)).unwrap(), SweepReport::default());
        sale.seats.advance(HOLD + grace);
        let report = block_on(sale.sweep(grace)).unwrap();
        assert_eq!(
            report,
            SweepReport {
                holds_expired: 1,
                orders_resent: 1,
                failed: vec![],
                orders_not_resent: None,
            }
        );
        assert_eq!(sale.bus.orders.lock().unwrap().as_slice(), &[receipt.order]);
        assert_eq!(
            block_on(sale.reservation(held.id)).unwrap().unwrap().status,
            Status::Expired
        );
        // Once the order is recorded, nothing is re-sent.
        block_on(sale.write_orders(&[receipt.order])).unwrap();
        assert_eq!(block_on(sale.sweep(grace)).unwrap(), SweepReport::default());
    }

    #[test]
    fn a_lost_seat_store_is_reloaded_from_the_database() {
        let sale = sale(PaymentMode::Manual);
        let st = showtime(&sale, 2);
        let r = block_on(sale.reserve(user(1), st)).unwrap();
        let order = block_on(sale.pay(r.id, user(1))).unwrap().order;
        block_on(sale.write_orders(&[order])).unwrap();
        sale.seats.lose_everything();
        let c = counts(&sale, st);
        assert_eq!((c.capacity, c.available, c.sold), (2, 1, 1));
        block_on(sale.reserve(user(2), st)).unwrap();
        assert!(matches!(
            block_on(sale.reserve(user(3), st)),
            Err(ReserveError::SoldOut { .. })
        ));
    }
}
