//! A waiting room in front of a sale: arrivals get a place in line, the line is admitted
//! at the rate the seats allow, and the line learns at once when nothing is left.
//!
//! - **The lottery.** Everyone who joins before the room opens gets a random place among
//!   the early joiners, decided when they join by a number the server draws (never the
//!   client), so being first to the page, or a bot's speed, gives nothing. Everyone who
//!   joins later queues behind every early joiner, in arrival order.
//! - **Admission.** From the opening on, the line is admitted in order: at most as many
//!   admitted buyers may be undecided (admitted, not yet held or refused) as there are
//!   seats available, plus an overbooking margin for those who never come
//!   ([`RoomSettings::overbook_pct`]); at most `admit_per_sec` a second when set. An
//!   admission lasts [`RoomSettings::admission`]; one unused by then is dropped, and its
//!   room goes to the next in line, as do seats that come back (an expiry, a cancel).
//! - **Sold out.** When no seat is available or held, the room closes: everyone still
//!   waiting learns `sold_out`.
//!
//! Admission advances lazily, whenever anyone joins or asks (and on the sweep's tick):
//! from the time elapsed and the stock, in one atomic step in the seat store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::domain::SaleWindow;
use crate::ports::PortResult;
use crate::{InvalidInput, ShowtimeId, UnixMillis, UserId};

/// How a showtime's waiting room admits its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomSettings {
    /// From when the line is admitted; joiners before it are drawn by lot.
    pub opens_at: UnixMillis,
    /// At most this many admissions a second (`None`: as many as the stock allows).
    pub admit_per_sec: Option<u32>,
    /// Admitted buyers who have not decided yet may exceed the available seats by this
    /// many percent (some never come back to buy).
    pub overbook_pct: u32,
    /// How long an admission may be used.
    pub admission: Duration,
}

impl RoomSettings {
    pub const MAX_OVERBOOK_PCT: u32 = 500;
    pub const MAX_ADMIT_PER_SEC: u32 = 1_000_000;
    pub const DEFAULT_OVERBOOK_PCT: u32 = 10;
    pub const DEFAULT_ADMISSION: Duration = Duration::from_secs(120);

    /// Checks the bounds: a rate of 1 to a million a second, an overbooking of 0 to
    /// 500%, an admission of 10 s to 1 h.
    pub fn new(
        opens_at: UnixMillis,
        admit_per_sec: Option<u32>,
        overbook_pct: u32,
        admission: Duration,
    ) -> Result<Self, InvalidInput> {
        if let Some(rate) = admit_per_sec
            && !(1..=Self::MAX_ADMIT_PER_SEC).contains(&rate)
        {
            return Err(InvalidInput(format!(
                "admit_per_sec must be 1 to {}, got {rate}",
                Self::MAX_ADMIT_PER_SEC
            )));
        }
        if overbook_pct > Self::MAX_OVERBOOK_PCT {
            return Err(InvalidInput(format!(
                "overbook_pct must be 0 to {}, got {overbook_pct}",
                Self::MAX_OVERBOOK_PCT
            )));
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&admission) {
            return Err(InvalidInput(format!(
                "admission_secs must be 10 to 3600, got {}",
                admission.as_secs()
            )));
        }
        Ok(Self {
            opens_at,
            admit_per_sec,
            overbook_pct,
            admission,
        })
    }

    /// Undecided admissions the stock allows with `available` seats on sale.
    pub fn admissions_allowed(&self, available: u32) -> u64 {
        (u64::from(available) * u64::from(100 + self.overbook_pct)).div_ceil(100)
    }
}

/// Where the room stands, as one process last read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomSnapshot {
    /// Places admitted so far: places `0..served` have had their turn.
    pub served: u64,
    /// Places in the line in all.
    pub joined: u64,
    /// Nothing is left to sell: everyone still waiting is told `sold_out`.
    pub closed: bool,
    /// The room is open (its `opens_at` has passed): places exist.
    pub open: bool,
    /// When the room opens (or opened).
    pub opens_at: UnixMillis,
    /// The room's lottery salt, drawn once when it was set up: an early joiner's number
    /// depends on it, so every room draws its own order.
    pub salt: u64,
    /// The front of the line the stock reaches as it stands: places `0..front` have had
    /// their turn or have it as soon as the pace allows (`served` plus the undecided
    /// admissions the available seats allow, [`RoomSettings::admissions_allowed`]). Behind
    /// it, a turn comes only when seats or admissions come back. Before the opening, the
    /// early joiners the seats on sale will admit.
    pub front: u64,
    /// The room's `admit_per_sec`, when set.
    pub admit_per_sec: Option<u32>,
}

impl RoomSnapshot {
    /// What this snapshot alone says of `asker`'s standing: before the opening, `waiting`
    /// to one who shows a ticket (nothing moves before it, and the ticket proves their
    /// join: without one, only the store knows whether they are in line); their place in
    /// line while it is not reached; `sold_out` once the room is closed to one whose
    /// place is not reached or who knows of none (a closed room has no seat left, held
    /// or free, so whatever the lottery gave them, `sold_out` is all there is to say).
    /// `None`: only the store can tell (their turn may have come).
    pub fn answers(self, asker: Asker) -> Option<Standing> {
        match asker.place {
            _ if !self.open => asker.ticket.then_some(Standing::Waiting),
            Some(place) if place >= self.served && self.closed => Some(Standing::SoldOut),
            None if self.closed => Some(Standing::SoldOut),
            Some(place) if place >= self.served => Some(Standing::InLine {
                place,
                ahead: place - self.served,
            }),
            _ => None,
        }
    }

    /// This snapshot, moved on by what a standing just read from the store proves: a
    /// place admitted, passed or in line means the room is open, the line is at least
    /// that long, and (for a place admitted or passed) its turn has come; a place in line
    /// gives how far the line has been served; `sold_out` means the room is closed. Never
    /// moves back: the store's counts only grow.
    pub fn knowing(self, standing: Standing) -> Self {
        let (served, joined) = match standing {
            Standing::Admitted { place, .. } | Standing::Passed { place } => {
                (place.saturating_add(1), place.saturating_add(1))
            }
            Standing::InLine { place, ahead } => {
                (place.saturating_sub(ahead), place.saturating_add(1))
            }
            Standing::SoldOut => {
                return Self {
                    closed: true,
                    ..self
                };
            }
            Standing::Waiting | Standing::NotInLine => return self,
        };
        let served = self.served.max(served);
        Self {
            served,
            joined: self.joined.max(joined),
            front: self.front.max(served),
            open: true,
            ..self
        }
    }
}

/// One caller's standing in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The room has not opened: no places yet (the lottery runs at the opening).
    Waiting,
    /// In line at `place` (0 is the first), `ahead` places before it not yet admitted.
    InLine { place: u64, ahead: u64 },
    /// Admitted: may reserve until `until`.
    Admitted { place: u64, until: UnixMillis },
    /// Had its turn: the admission was used or ran out.
    Passed { place: u64 },
    /// Nothing is left to sell.
    SoldOut,
    /// Not in this room's line.
    NotInLine,
}

/// What joining found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// A new place, or the caller's own from an earlier join.
    Standing(Standing),
    /// This showtime has no waiting room.
    NoRoom,
}

/// Waiting rooms, in the seat store beside each showtime's seats (one Redis Cluster
/// slot), so admission can read the stock in the same atomic step.
pub trait WaitingRoomStore: Send + Sync + 'static {
    /// Opens (or changes) a showtime's room; places and admissions stay. `sale` is the
    /// showtime's sale window: while it does not sell (paused, not open yet, closed),
    /// nobody is admitted, so the front of the line does not spend its admissions on
    /// refusals; set again whenever the window changes.
    fn configure(
        &self,
        showtime: ShowtimeId,
        settings: RoomSettings,
        sale: SaleWindow,
    ) -> impl Future<Output = PortResult<()>> + Send;

    /// Puts `user` in line (once: a second join finds the first place, except that a
    /// user who passed, their admission used or run out, and who holds no seat now joins
    /// again at the back, as a new arrival, nobody else's place moving). `draw` is the
    /// lottery number for a join before the opening, below [`LOTTERY_RANGE`]: uniform,
    /// drawn by the server, never the client.
    fn join(
        &self,
        showtime: ShowtimeId,
        user: UserId,
        draw: u64,
    ) -> impl Future<Output = PortResult<Joined>> + Send;

    /// Advances admission from the time elapsed and the stock, and returns where the
    /// room stands; `None` when the showtime has no room.
    fn advance(
        &self,
        showtime: ShowtimeId,
    ) -> impl Future<Output = PortResult<Option<RoomSnapshot>>> + Send;

    /// Advances admission, then `user`'s standing, with where the room stands after
    /// that step (`None` when the showtime has no room): one call, so that a poll the
    /// store answers refreshes the process's view of the room too.
    fn standing(
        &self,
        showtime: ShowtimeId,
        user: UserId,
    ) -> impl Future<Output = PortResult<(Standing, Option<RoomSnapshot>)>> + Send;

    /// Closes a showtime's room: its places and admissions are gone, and its seats are
    /// sold to anyone again. (Admissions are used by the seat store's take, which
    /// refuses a user without one in a showtime that has a room.)
    /// Returns whether there was anything to remove.
    fn remove(&self, showtime: ShowtimeId) -> impl Future<Output = PortResult<bool>> + Send;
}

/// A process's view of its showtimes' rooms, so that a crowd polling its place costs
/// the seat store nothing between refreshes: each room's [`RoomSnapshot`] is read (and
/// admission advanced) at most once per `refresh`, and a caller whose place is known (it
/// is in the caller's ticket) and not reached yet is answered from it. A caller whose
/// turn may have come, or whose place is not known yet, costs one call.
///
/// Every answer also says when to ask again ([`Status::poll_after`]), so that a room's
/// whole line asks about `polls_per_sec` times a second however long it is, and in the
/// order of its places: before the opening each early joiner is told to come back at the
/// opening plus a delay that grows with their lottery number. The front of the line the
/// stock reaches ([`RoomSnapshot::front`]) comes back first, at `holds_per_sec` (each of
/// them brings a hold); everyone behind it once the front has had its turn, at
/// `polls_per_sec`, when their answer is most likely `sold_out` from memory.
#[derive(Debug)]
pub struct Rooms<R> {
    store: R,
    refresh: Duration,
    polls_per_sec: f64,
    holds_per_sec: f64,
    seen: RwLock<HashMap<ShowtimeId, Seen>>,
    /// The rooms being read again now, and since when: one read per room at a time.
    refreshing: Mutex<HashMap<ShowtimeId, Instant>>,
}

/// A read of a room older than this is taken as lost (its caller gone without a
/// trace), and the next caller reads the room again.
const REFRESH_GIVEN_UP: Duration = Duration::from_secs(2);

/// One caller's read of a room in progress (see [`Rooms::read_again`]).
struct Reading<'a> {
    refreshing: &'a Mutex<HashMap<ShowtimeId, Instant>>,
    showtime: ShowtimeId,
    since: Instant,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        // Still this read's: one that outlived REFRESH_GIVEN_UP leaves its successor's.
        if refreshing.get(&self.showtime) == Some(&self.since) {
            refreshing.remove(&self.showtime);
        }
    }
}

/// The last snapshot of a room, when it was read, and how fast its line moved.
#[derive(Debug, Clone, Copy)]
struct Seen {
    snapshot: RoomSnapshot,
    at: Instant,
    /// Admissions a second, smoothed over the recent reads.
    rate: f64,
    /// Joins a second, smoothed the same way.
    join_rate: f64,
    /// The snapshot the rates were last measured from, and when: at least
    /// [`RATE_WINDOW`] apart.
    measured: RoomSnapshot,
    measured_at: Instant,
}

/// The shortest interval a rate of admissions or joins is measured over.
pub const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The most rooms a process keeps snapshots of; when full it starts over.
const ROOMS_KEPT: usize = 4_096;

/// A caller's standing with what a waiting page shows beside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    pub standing: Standing,
    /// Seconds until the caller's turn at the pace the line moves now, when it moves.
    pub estimated_wait_secs: Option<f64>,
    /// When to ask again: `None` when there is nothing left to wait for (admitted,
    /// passed, sold out, not in line).
    pub poll_after: Option<Duration>,
    /// The view of the room the answer came from.
    pub room: RoomSnapshot,
}

/// How many polls a second a room's whole line is paced to, unless set.
pub const DEFAULT_POLLS_PER_SEC: u32 = 10_000;

/// How many holds a second a deployment sells, unless set: the pace the front of the
/// line (the buyers the stock admits) comes back at when the room opens, each of them
/// bringing a hold. Faster than the deployment sells, their holds queue behind each
/// other; on one 2-core machine (BENCHMARKS.md, "The line's pace at the opening") a front
/// at 10,000 a second made opening to sold out 2.4x-2.9x `million`'s, at 5,000 1.9x-2.1x.
/// A larger deployment raises it.
pub const DEFAULT_HOLDS_PER_SEC: u32 = 5_000;

/// How long after the front of the line has come back the rest of it starts to: time for
/// the front's holds to be made, so that the rest's first polls do not share the selling
/// seconds and, once the seats are gone, are answered `sold_out` from memory.
pub const FRONT_SETTLES: Duration = Duration::from_secs(1);

/// The soonest a caller in line is told to ask again.
pub const MIN_POLL: Duration = Duration::from_secs(1);
/// The latest a caller in line is told to ask again.
pub const MAX_POLL: Duration = Duration::from_secs(60);
/// Early joiners asking more than this before the opening are told to come back within
/// it (when the line's size is better known), spread over its first half.
const PREVIEW: Duration = Duration::from_secs(60);
/// How far ahead joins still coming at their present pace are counted in the line an
/// early joiner is paced against.
const JOINS_AHEAD: Duration = Duration::from_secs(10);
/// Early joiners are told to come back at most this far ahead.
const MAX_WAITING_POLL: Duration = Duration::from_secs(300);

/// Who asks: whether they showed a ticket of this room (which only a join gives), their
/// place when their ticket carries it, and their lottery number (below
/// [`LOTTERY_RANGE`]), which orders their polls at the opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asker {
    pub user: UserId,
    pub ticket: bool,
    pub place: Option<u64>,
    pub lot: u64,
}

impl<R: WaitingRoomStore> Rooms<R> {
    /// Rooms read at most once per `refresh`, each line paced to
    /// [`DEFAULT_POLLS_PER_SEC`] polls a second and its front to
    /// [`DEFAULT_HOLDS_PER_SEC`].
    pub fn new(store: R, refresh: Duration) -> Self {
        Self {
            store,
            refresh,
            polls_per_sec: f64::from(DEFAULT_POLLS_PER_SEC),
            holds_per_sec: f64::from(DEFAULT_HOLDS_PER_SEC),
            seen: RwLock::default(),
            refreshing: Mutex::default(),
        }
    }

    /// Paces each room's whole line (across every process sharing the seat store) to
    /// about `polls_per_sec` polls a second.
    pub fn with_polls_per_sec(mut self, polls_per_sec: u32) -> Self {
        self.polls_per_sec = f64::from(polls_per_sec.max(1));
        self
    }

    /// Paces the front of each room's line, the buyers its stock admits, to about
    /// `holds_per_sec` when the room opens: what the deployment sells (a room's own
    /// `admit_per_sec`, or the line's polls, when slower, pace it instead).
    pub fn with_holds_per_sec(mut self, holds_per_sec: u32) -> Self {
        self.holds_per_sec = f64::from(holds_per_sec.max(1));
        self
    }

    pub fn store(&self) -> &R {
        &self.store
    }

    /// Forgets this process's view of `showtime`'s room, so that the next answer reads
    /// it from the store: after this process changed the room (removed it, set up
    /// another), which other processes learn at their next refresh.
    pub fn forget(&self, showtime: ShowtimeId) {
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        seen.remove(&showtime);
    }

    /// The room's snapshot, read again (admission advanced) when older than `refresh`;
    /// `None` when the showtime has no room.
    pub async fn snapshot(&self, showtime: ShowtimeId) -> PortResult<Option<RoomSnapshot>> {
        Ok(self.seen(showtime).await?.map(|seen| seen.snapshot))
    }

    /// The room's lottery salt from this process's view, however old (a room removed
    /// and set up again draws another, which the view learns at its next read), read
    /// from the store only when there is no view; `None` when the showtime has no room.
    /// A poll takes it from here, so that its one call to the store, if any, is the one
    /// [`Rooms::status`] makes.
    pub async fn salt(&self, showtime: ShowtimeId) -> PortResult<Option<u64>> {
        if let (Some(seen), _) = self.last_seen(showtime) {
            return Ok(Some(seen.snapshot.salt));
        }
        Ok(self.seen(showtime).await?.map(|seen| seen.snapshot.salt))
    }

    /// The room as last seen, read again when older than `refresh`, with its rates.
    /// One caller at a time reads a stale room again; those who ask meanwhile are
    /// answered from the view before (at most one read's time older than `refresh`), so
    /// a crowd in flight when the view goes stale makes one read, not one each.
    async fn seen(&self, showtime: ShowtimeId) -> PortResult<Option<Seen>> {
        let (last, fresh) = self.last_seen(showtime);
        if fresh {
            return Ok(last);
        }
        let _reading = match last {
            Some(stale) => match self.read_again(showtime) {
                Some(reading) => Some(reading),
                None => return Ok(Some(stale)),
            },
            // Nothing to answer from: every caller reads.
            None => None,
        };
        let Some(snapshot) = self.store.advance(showtime).await? else {
            return Ok(None);
        };
        Ok(Some(self.keep(showtime, snapshot)))
    }

    /// The room as last seen, and whether it is younger than `refresh`.
    fn last_seen(&self, showtime: ShowtimeId) -> (Option<Seen>, bool) {
        let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
        match seen.get(&showtime) {
            Some(s) => (Some(*s), s.at.elapsed() < self.refresh),
            None => (None, false),
        }
    }

    /// The right to read `showtime`'s room again, unless another caller is reading it
    /// (for less than [`REFRESH_GIVEN_UP`]); given back when dropped, whatever the read
    /// became (an answer, an error, a caller gone).
    fn read_again(&self, showtime: ShowtimeId) -> Option<Reading<'_>> {
        let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if refreshing
            .get(&showtime)
            .is_some_and(|since| now.duration_since(*since) < REFRESH_GIVEN_UP)
        {
            return None;
        }
        refreshing.insert(showtime, now);
        Some(Reading {
            refreshing: &self.refreshing,
            showtime,
            since: now,
        })
    }

    fn keep(&self, showtime: ShowtimeId, snapshot: RoomSnapshot) -> Seen {
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let next = match seen.get(&showtime) {
            // A read of the same room older than the view (reads in flight at once may
            // come back in any order; the room's counts only grow): the view stays.
            Some(before)
                if snapshot.salt == before.snapshot.salt
                    && (snapshot.served < before.snapshot.served
                        || snapshot.joined < before.snapshot.joined) =>
            {
                return *before;
            }
            // The same room (another, set up after this one was removed, draws another
            // salt and starts its counts again).
            Some(before)
                if snapshot.salt == before.measured.salt
                    && snapshot.served >= before.measured.served
                    && snapshot.joined >= before.measured.joined =>
            {
                let secs = now.duration_since(before.measured_at).as_secs_f64();
                if secs < RATE_WINDOW.as_secs_f64() {
                    // Reads a crowd makes at once are too close together to tell a rate
                    // (50 joins in 0.1 ms are not 500,000 a second): keep the last one.
                    Seen {
                        snapshot,
                        at: now,
                        ..*before
                    }
                } else {
                    let m = before.measured;
                    let per_sec = |was: u64, is: u64| (is - was) as f64 / secs;
                    // Joins come in bursts: once none came over a window, the line is
                    // taken as it is.
                    let join_rate = if snapshot.joined == m.joined {
                        0.0
                    } else {
                        0.7 * before.join_rate + 0.3 * per_sec(m.joined, snapshot.joined)
                    };
                    Seen {
                        snapshot,
                        at: now,
                        rate: 0.7 * before.rate + 0.3 * per_sec(m.served, snapshot.served),
                        join_rate,
                        measured: snapshot,
                        measured_at: now,
                    }
                }
            }
            _ => Seen {
                snapshot,
                at: now,
                rate: 0.0,
                join_rate: 0.0,
                measured: snapshot,
                measured_at: now,
            },
        };
        if seen.len() >= ROOMS_KEPT && !seen.contains_key(&showtime) {
            seen.clear();
        }
        seen.insert(showtime, next);
        next
    }

    /// What a standing just read from the store proves about the room, kept in this
    /// process's snapshot ([`RoomSnapshot::knowing`]), so that a poll answered from the
    /// snapshot never tells a caller less than the store has already told them (a join
    /// admitted, then a poll saying "in line" until the next read). Only a snapshot the
    /// standing moves is written.
    fn learn(&self, showtime: ShowtimeId, seen: Seen, standing: Standing) -> Seen {
        if seen.snapshot.knowing(standing) == seen.snapshot {
            return seen;
        }
        let mut kept = self.seen.write().unwrap_or_else(|e| e.into_inner());
        match kept.get_mut(&showtime) {
            Some(s) => {
                s.snapshot = s.snapshot.knowing(standing);
                *s
            }
            None => Seen {
                snapshot: seen.snapshot.knowing(standing),
                ..seen
            },
        }
    }

    /// The asker's standing: from this process's view of the room where the view
    /// answers it ([`RoomSnapshot::answers`]: at the opening most of a crowd polls for
    /// the first time after the seats are gone, and hears `sold_out` from it), else from
    /// the store. `now` is the wall clock.
    ///
    /// At most one call to the store per poll: the store's answer carries the room as
    /// well, so the caller who reads a stale view again (one at a time, as
    /// [`Rooms::snapshot`] does; the others are answered from the view before) reads it
    /// with their own standing, and a poll the store answers refreshes the view too.
    pub async fn status(
        &self,
        showtime: ShowtimeId,
        asker: Asker,
        now: UnixMillis,
    ) -> PortResult<Option<Status>> {
        let (last, fresh) = self.last_seen(showtime);
        let mut _reading = None;
        if let Some(seen) = last
            && let Some(standing) = seen.snapshot.answers(asker)
        {
            if fresh {
                return Ok(Some(self.describe(&seen, standing, asker.lot, now)));
            }
            match self.read_again(showtime) {
                Some(reading) => _reading = Some(reading),
                None => return Ok(Some(self.describe(&seen, standing, asker.lot, now))),
            }
        }
        let (standing, room) = self.store.standing(showtime, asker.user).await?;
        let Some(room) = room else {
            self.forget(showtime);
            return Ok(None);
        };
        let seen = self.keep(showtime, room);
        let seen = self.learn(showtime, seen, standing);
        Ok(Some(self.describe(&seen, standing, asker.lot, now)))
    }

    /// A standing the store has just given (a join's, newer than any snapshot), with the
    /// estimate and the pacing of this process's view of the room; `None` when the
    /// showtime has no room.
    pub async fn status_of(
        &self,
        showtime: ShowtimeId,
        standing: Standing,
        lot: u64,
        now: UnixMillis,
    ) -> PortResult<Option<Status>> {
        let Some(seen) = self.seen(showtime).await? else {
            return Ok(None);
        };
        let seen = self.learn(showtime, seen, standing);
        Ok(Some(self.describe(&seen, standing, lot, now)))
    }

    fn describe(&self, seen: &Seen, standing: Standing, lot: u64, now: UnixMillis) -> Status {
        let estimated_wait_secs = match standing {
            Standing::InLine { ahead, .. } if seen.rate > 0.0 => {
                Some(ahead as f64 / seen.rate).filter(|w| w.is_finite())
            }
            _ => None,
        };
        let pace = Pace {
            snapshot: seen.snapshot,
            join_rate: seen.join_rate,
            polls_per_sec: self.polls_per_sec,
            holds_per_sec: self.holds_per_sec,
            lot,
            now,
        };
        Status {
            standing,
            estimated_wait_secs,
            poll_after: pace.poll_after(standing, estimated_wait_secs),
            room: seen.snapshot,
        }
    }
}

/// `x` seconds, saturating: a line's arithmetic never panics, whatever its numbers.
fn secs(x: f64) -> Duration {
    Duration::try_from_secs_f64(x).unwrap_or(if x > 0.0 {
        MAX_WAITING_POLL
    } else {
        Duration::ZERO
    })
}

/// What decides when one asker should ask again.
#[derive(Debug, Clone, Copy)]
struct Pace {
    snapshot: RoomSnapshot,
    join_rate: f64,
    polls_per_sec: f64,
    holds_per_sec: f64,
    lot: u64,
    now: UnixMillis,
}

impl Pace {
    /// The asker's lottery number as a fraction of the range, in `[0, 1)`.
    fn fraction(&self) -> f64 {
        (self.lot % LOTTERY_RANGE) as f64 / LOTTERY_RANGE as f64
    }

    fn poll_after(&self, standing: Standing, estimated_wait_secs: Option<f64>) -> Option<Duration> {
        let q = self.fraction();
        match standing {
            Standing::Waiting => {
                let to_open =
                    Duration::from_millis(self.snapshot.opens_at.0.saturating_sub(self.now.0));
                if to_open > PREVIEW {
                    // Come back within the last minute, when the line's size is better known.
                    let back = to_open - PREVIEW + PREVIEW.mul_f64(q / 2.0);
                    return Some(back.min(MAX_WAITING_POLL));
                }
                // The line as it will be at the opening, at the pace joins come now, asks
                // in lottery order, so those admitted first ask first.
                let expected = self.snapshot.joined as f64
                    + self.join_rate * to_open.min(JOINS_AHEAD).as_secs_f64();
                Some(to_open + self.after_opening(q * expected))
            }
            Standing::InLine { .. } => {
                let waiting = self.snapshot.joined.saturating_sub(self.snapshot.served);
                let spread = secs(waiting as f64 / self.polls_per_sec).clamp(MIN_POLL, MAX_POLL);
                let soonest = estimated_wait_secs
                    .map(secs)
                    .map_or(spread, |wait| wait.clamp(MIN_POLL, spread));
                // +-20% by lottery number, so a line told at once does not come back at once.
                Some(soonest.mul_f64(0.8 + 0.4 * q).clamp(MIN_POLL, MAX_POLL))
            }
            Standing::Admitted { .. }
            | Standing::Passed { .. }
            | Standing::SoldOut
            | Standing::NotInLine => None,
        }
    }

    /// When the early joiner at `rank` (of the lottery's order) asks first after the
    /// opening: the front the stock admits at the pace holds are sold (the room's
    /// `admit_per_sec`, or the line's polls, when slower), then, [`FRONT_SETTLES`] after
    /// the front's last, the rest at the line's pace.
    fn after_opening(&self, rank: f64) -> Duration {
        let admits = self.snapshot.admit_per_sec.map_or(f64::INFINITY, f64::from);
        let front_pace = self.holds_per_sec.min(admits).min(self.polls_per_sec);
        let front = self.snapshot.front as f64;
        if rank < front {
            return secs(rank / front_pace);
        }
        let front_done = if front > 0.0 {
            secs(front / front_pace) + FRONT_SETTLES
        } else {
            Duration::ZERO
        };
        front_done + secs((rank - front) / self.polls_per_sec)
    }
}

/// The lottery's range: an early joiner's draw is below it, every later arrival's place
/// above it (exact in a Redis score, a double, up to 2^53).
pub const LOTTERY_RANGE: u64 = 1 << 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_bounded() {
        let at = UnixMillis(1);
        let two_min = RoomSettings::DEFAULT_ADMISSION;
        assert!(RoomSettings::new(at, Some(0), 10, two_min).is_err());
        assert!(RoomSettings::new(at, Some(1_000_001), 10, two_min).is_err());
        assert!(RoomSettings::new(at, None, 501, two_min).is_err());
        assert!(RoomSettings::new(at, None, 10, Duration::from_secs(9)).is_err());
        assert!(RoomSettings::new(at, None, 10, Duration::from_secs(3601)).is_err());
        assert!(RoomSettings::new(at, Some(100), 0, two_min).is_ok());
    }

    /// A room store that answers from fixed values and counts its calls; its reads wait
    /// while a test holds `gate`.
    #[derive(Debug, Default)]
    struct Counting {
        gate: futures::lock::Mutex<()>,
        snapshot: std::sync::Mutex<RoomSnapshot>,
        advances: std::sync::atomic::AtomicUsize,
        standings: std::sync::atomic::AtomicUsize,
    }

    impl WaitingRoomStore for Counting {
        fn configure(
            &self,
            _: ShowtimeId,
            _: RoomSettings,
            _: SaleWindow,
        ) -> impl Future<Output = PortResult<()>> + Send {
            std::future::ready(Ok(()))
        }

        fn join(
            &self,
            _: ShowtimeId,
            _: UserId,
            _: u64,
        ) -> impl Future<Output = PortResult<Joined>> + Send {
            std::future::ready(Ok(Joined::Standing(Standing::Waiting)))
        }

        fn advance(
            &self,
            _: ShowtimeId,
        ) -> impl Future<Output = PortResult<Option<RoomSnapshot>>> + Send {
            self.advances
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let _open = self.gate.lock().await;
                Ok(Some(*self.snapshot.lock().unwrap()))
            }
        }

        fn standing(
            &self,
            _: ShowtimeId,
            _: UserId,
        ) -> impl Future<Output = PortResult<(Standing, Option<RoomSnapshot>)>> + Send {
            self.standings
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The asker is in line, and admitted once their place could have come.
            let room = *self.snapshot.lock().unwrap();
            let in_line = Asker {
                user: UserId::new(1).unwrap(),
                ticket: true,
                place: None,
                lot: 0,
            };
            let standing = room.answers(in_line).unwrap_or(Standing::Admitted {
                place: 1,
                until: UnixMillis(9),
            });
            std::future::ready(Ok((standing, Some(room))))
        }

        fn remove(&self, _: ShowtimeId) -> impl Future<Output = PortResult<bool>> + Send {
            std::future::ready(Ok(false))
        }
    }

    const NOW: UnixMillis = UnixMillis(1_800_000_000_000);

    fn asker(user: UserId, place: Option<u64>) -> Asker {
        Asker {
            user,
            ticket: true,
            place,
            lot: 0,
        }
    }

    /// Rooms over a store that reads `snapshot`, kept an hour, and the showtime whose
    /// snapshot they have read once.
    fn rooms_seeing(snapshot: RoomSnapshot) -> (Rooms<Counting>, ShowtimeId) {
        let store = Counting::default();
        *store.snapshot.lock().unwrap() = snapshot;
        let rooms = Rooms::new(store, Duration::from_secs(3600));
        let st = ShowtimeId::new(1).unwrap();
        futures::executor::block_on(rooms.snapshot(st)).unwrap();
        (rooms, st)
    }

    fn calls(store: &Counting) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        (store.advances.load(SeqCst), store.standings.load(SeqCst))
    }

    #[test]
    fn before_the_opening_only_a_ticket_is_answered_from_the_snapshot() {
        use futures::executor::block_on;
        let (rooms, st) = rooms_seeing(RoomSnapshot {
            opens_at: UnixMillis(NOW.0 + 60_000),
            ..RoomSnapshot::default()
        });
        let user = UserId::new(7).unwrap();
        let with_ticket = block_on(rooms.status(st, asker(user, None), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(with_ticket.standing, Standing::Waiting);
        assert_eq!(calls(rooms.store()), (1, 0), "a ticket proves the join");
        // Without a ticket, only the store knows whether the asker joined: one call.
        let without = Asker {
            ticket: false,
            ..asker(user, None)
        };
        block_on(rooms.status(st, without, NOW)).unwrap().unwrap();
        assert_eq!(calls(rooms.store()), (1, 1));
    }

    #[test]
    fn a_poll_calls_the_store_at_most_once_even_when_it_reads_a_stale_view_again() {
        use futures::executor::block_on;
        let room = RoomSnapshot {
            served: 10,
            joined: 1_000,
            open: true,
            opens_at: UnixMillis(0),
            ..RoomSnapshot::default()
        };
        // Every view is stale at once: each poll reads the room again.
        let store = Counting::default();
        *store.snapshot.lock().unwrap() = room;
        let rooms = Rooms::new(store, Duration::ZERO);
        let st = ShowtimeId::new(1).unwrap();
        let me = UserId::new(9).unwrap();
        for (polls, place) in [None, Some(3), Some(20), None, Some(20)]
            .into_iter()
            .enumerate()
        {
            block_on(rooms.status(st, asker(me, place), NOW)).unwrap();
            let (advances, standings) = calls(rooms.store());
            assert_eq!(advances + standings, polls + 1, "one call for each poll");
        }
        // The store's answer kept the view: with it fresh, a place not reached costs
        // nothing.
        let rooms = Rooms::new(Counting::default(), Duration::from_secs(3600));
        *rooms.store().snapshot.lock().unwrap() = room;
        block_on(rooms.status(st, asker(me, Some(3)), NOW)).unwrap();
        let status = block_on(rooms.status(st, asker(me, Some(20)), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(
            status.standing,
            Standing::InLine {
                place: 20,
                ahead: 10
            }
        );
        assert_eq!(calls(rooms.store()), (0, 1));
    }

    #[test]
    fn a_polling_crowd_is_answered_from_the_snapshot_until_its_turn_may_have_come() {
        use futures::executor::block_on;
        let (rooms, st) = rooms_seeing(RoomSnapshot {
            served: 10,
            joined: 1_000,
            closed: false,
            open: true,
            opens_at: UnixMillis(0),
            ..RoomSnapshot::default()
        });
        for n in 1..=500 {
            let user = UserId::new(n).unwrap();
            let status = block_on(rooms.status(st, asker(user, Some(n as u64 + 10)), NOW))
                .unwrap()
                .unwrap();
            assert_eq!(
                status.standing,
                Standing::InLine {
                    place: n as u64 + 10,
                    ahead: n as u64
                }
            );
        }
        assert_eq!(calls(rooms.store()), (1, 0), "one read for 500 polls");
        // A place already reached, or unknown: one call to find out.
        let me = UserId::new(9).unwrap();
        let status = block_on(rooms.status(st, asker(me, Some(3)), NOW))
            .unwrap()
            .unwrap();
        assert!(matches!(status.standing, Standing::Admitted { .. }));
        assert_eq!(status.poll_after, None, "nothing to wait for");
        block_on(rooms.status(st, asker(me, None), NOW)).unwrap();
        assert_eq!(calls(rooms.store()), (1, 2));
    }

    #[test]
    fn a_closed_room_tells_those_still_waiting_sold_out_and_before_the_opening_nobody_has_a_place()
    {
        use futures::executor::block_on;
        let (rooms, st) = rooms_seeing(RoomSnapshot {
            served: 10,
            joined: 50,
            closed: true,
            open: true,
            opens_at: UnixMillis(0),
            ..RoomSnapshot::default()
        });
        let me = UserId::new(1).unwrap();
        let status = block_on(rooms.status(st, asker(me, Some(20)), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(status.standing, Standing::SoldOut);
        assert_eq!(status.poll_after, None);
        // A ticket from before the opening knows no place: nothing is left for it either.
        let status = block_on(rooms.status(st, asker(UserId::new(2).unwrap(), None), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(status.standing, Standing::SoldOut);
        assert_eq!(calls(rooms.store()).1, 0, "no store read for either");
        // One that knows it was admitted asks the store (admitted, or passed).
        block_on(rooms.status(st, asker(me, Some(3)), NOW)).unwrap();
        assert_eq!(calls(rooms.store()).1, 1);
        *rooms.store().snapshot.lock().unwrap() = RoomSnapshot::default();
        rooms.forget(st);
        block_on(rooms.snapshot(st)).unwrap();
        let status = block_on(rooms.status(st, asker(me, None), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(status.standing, Standing::Waiting);
        assert_eq!(calls(rooms.store()).1, 1);
    }

    /// When `lot`'s holder is told to ask again, with the room in `snapshot`.
    fn pace(snapshot: RoomSnapshot, lot: u64, standing: Standing, wait: Option<f64>) -> Duration {
        Pace {
            snapshot,
            join_rate: 0.0,
            polls_per_sec: 10_000.0,
            holds_per_sec: 10_000.0,
            lot,
            now: NOW,
        }
        .poll_after(standing, wait)
        .expect("a poll is due")
    }

    #[test]
    fn early_joiners_come_back_at_the_opening_in_lottery_order_spread_over_the_polls_budget() {
        let opens_at = UnixMillis(NOW.0 + 10_000);
        let line = RoomSnapshot {
            served: 0,
            joined: 100_000,
            closed: false,
            open: false,
            opens_at,
            ..RoomSnapshot::default()
        };
        // 100,000 joiners at 10,000 polls a second: the line asks over 10 s from the
        // opening, the lowest number first.
        let first = pace(line, 0, Standing::Waiting, None);
        let middle = pace(line, LOTTERY_RANGE / 2, Standing::Waiting, None);
        let last = pace(line, LOTTERY_RANGE - 1, Standing::Waiting, None);
        assert_eq!(first, Duration::from_secs(10));
        assert_eq!(middle, Duration::from_secs(15));
        assert!(last > Duration::from_millis(19_999) && last <= Duration::from_secs(20));
        // Joins still coming count at their pace: 1,000 a second for the 10 s left.
        let growing = Pace {
            snapshot: line,
            join_rate: 1_000.0,
            polls_per_sec: 10_000.0,
            holds_per_sec: 10_000.0,
            lot: LOTTERY_RANGE / 2,
            now: NOW,
        };
        let told = growing.poll_after(Standing::Waiting, None).unwrap();
        assert_eq!(told, Duration::from_millis(10_000 + 5_500));
        // An hour before the opening: come back within its last minute.
        let early = RoomSnapshot {
            opens_at: UnixMillis(NOW.0 + 90_000),
            ..line
        };
        assert_eq!(
            pace(early, 0, Standing::Waiting, None),
            Duration::from_secs(30)
        );
        assert_eq!(
            pace(early, LOTTERY_RANGE / 2, Standing::Waiting, None),
            Duration::from_secs(45)
        );
        let far = RoomSnapshot {
            opens_at: UnixMillis(NOW.0 + 3_600_000),
            ..line
        };
        assert_eq!(pace(far, 0, Standing::Waiting, None), MAX_WAITING_POLL);
    }

    #[test]
    fn the_front_the_stock_admits_comes_back_at_the_selling_pace_and_the_rest_after_it() {
        let opens_at = UnixMillis(NOW.0 + 10_000);
        // 100,000 joiners, 11,000 of them admitted by the stock; holds sell at 5,000 a
        // second, polls at 20,000.
        let line = RoomSnapshot {
            joined: 100_000,
            opens_at,
            front: 11_000,
            ..RoomSnapshot::default()
        };
        let told = |snapshot: RoomSnapshot, rank: u64| {
            let pace = Pace {
                snapshot,
                join_rate: 0.0,
                polls_per_sec: 20_000.0,
                holds_per_sec: 5_000.0,
                lot: rank * (LOTTERY_RANGE / 100_000),
                now: NOW,
            };
            let after = pace.poll_after(Standing::Waiting, None).unwrap() - Duration::from_secs(10);
            // In ms, the lottery number's fraction of a rank aside.
            (after.as_secs_f64() * 1_000.0).round() as u64
        };
        // The front over 11,000 / 5,000 = 2.2 s, in lottery order.
        assert_eq!(told(line, 0), 0);
        assert_eq!(told(line, 5_500), 1_100);
        assert_eq!(told(line, 10_999), 2_200);
        // The rest a second after the front's last, at 20,000 a second: 89,000 over 4.45 s.
        assert_eq!(told(line, 11_020), 3_201);
        assert_eq!(told(line, 99_999), 7_650);
        // A room's own admit_per_sec, slower, paces the front instead.
        let capped = RoomSnapshot {
            admit_per_sec: Some(1_000),
            ..line
        };
        assert_eq!(told(capped, 5_500), 5_500);
        assert_eq!(told(capped, 11_020), 12_001);
        // A stock that admits the whole line: all of it at the selling pace.
        let small_line = RoomSnapshot {
            front: 200_000,
            ..line
        };
        assert_eq!(told(small_line, 99_999), 20_000);
        // Nothing to sell: nobody has a front to wait for.
        let none = RoomSnapshot { front: 0, ..line };
        assert_eq!(told(none, 20_000), 1_000);
    }

    #[test]
    fn a_line_asks_about_its_polls_budget_a_second_and_sooner_when_its_turn_is_near() {
        let line = RoomSnapshot {
            served: 1_000,
            joined: 201_000,
            closed: false,
            open: true,
            opens_at: UnixMillis(0),
            ..RoomSnapshot::default()
        };
        let at = Standing::InLine {
            place: 50_000,
            ahead: 49_000,
        };
        // 200,000 waiting at 10,000 a second: every 20 s (+-20% by lottery number).
        assert_eq!(
            pace(line, LOTTERY_RANGE / 2, at, None),
            Duration::from_secs(20)
        );
        assert_eq!(pace(line, 0, at, None), Duration::from_secs(16));
        // A turn expected in 5 s: ask then. Never sooner than a second, never later than
        // a minute.
        assert_eq!(
            pace(line, LOTTERY_RANGE / 2, at, Some(5.0)),
            Duration::from_secs(5)
        );
        assert_eq!(pace(line, LOTTERY_RANGE / 2, at, Some(0.01)), MIN_POLL);
        let short = RoomSnapshot {
            joined: 1_010,
            ..line
        };
        assert_eq!(pace(short, LOTTERY_RANGE / 2, at, None), MIN_POLL);
        let huge = RoomSnapshot {
            joined: 10_000_000,
            ..line
        };
        assert_eq!(pace(huge, LOTTERY_RANGE / 2, at, None), MAX_POLL);
        // A line that barely moves never breaks the arithmetic.
        assert_eq!(
            pace(line, 0, at, Some(f64::INFINITY)),
            Duration::from_secs(16)
        );
        assert_eq!(pace(line, 0, at, Some(1e300)), Duration::from_secs(16));
    }

    #[test]
    fn a_stale_room_is_read_again_by_one_caller_while_the_others_answer_from_the_view_before() {
        use futures::FutureExt as _;
        use std::sync::atomic::Ordering::SeqCst;
        let rooms = Rooms::new(Counting::default(), Duration::ZERO);
        let served = |n| {
            *rooms.store().snapshot.lock().unwrap() = RoomSnapshot {
                served: n,
                joined: 100,
                open: true,
                ..RoomSnapshot::default()
            }
        };
        let st = ShowtimeId::new(1).unwrap();
        // Nothing seen yet: the first read goes to the store.
        served(0);
        let first = rooms.snapshot(st).now_or_never().unwrap().unwrap().unwrap();
        assert_eq!(first.served, 0);
        // Stale at once (refresh zero). Held at the gate, one caller reads again...
        let gate = rooms.store().gate.try_lock().unwrap();
        served(1);
        let mut reading = Box::pin(rooms.snapshot(st));
        assert!((&mut reading).now_or_never().is_none());
        // ... and a crowd asking meanwhile is answered from the view before, at once,
        // without a read of its own.
        for _ in 0..50 {
            let answer = rooms.snapshot(st).now_or_never().expect("answered at once");
            assert_eq!(answer.unwrap().unwrap().served, 0);
        }
        assert_eq!(rooms.store().advances.load(SeqCst), 2);
        drop(gate);
        let read = (&mut reading).now_or_never().unwrap().unwrap().unwrap();
        assert_eq!(read.served, 1);
        // A reader that gave up (its caller gone mid-read) hands the right on.
        let gate = rooms.store().gate.try_lock().unwrap();
        served(3);
        let mut abandoned = Box::pin(rooms.snapshot(st));
        assert!((&mut abandoned).now_or_never().is_none());
        drop(abandoned);
        let mut next = Box::pin(rooms.snapshot(st));
        assert!((&mut next).now_or_never().is_none(), "reads again itself");
        assert_eq!(rooms.store().advances.load(SeqCst), 4);
        drop(gate);
        assert_eq!(
            (&mut next).now_or_never().unwrap().unwrap().unwrap().served,
            3
        );
    }

    #[test]
    fn reads_a_crowd_makes_at_once_do_not_make_a_rate_of_joins() {
        use futures::executor::block_on;
        let before = RoomSnapshot {
            opens_at: UnixMillis(NOW.0 + 10_000),
            ..RoomSnapshot::default()
        };
        let st = ShowtimeId::new(1).unwrap();
        let me = Asker {
            user: UserId::new(1).unwrap(),
            ticket: true,
            place: None,
            lot: LOTTERY_RANGE / 2,
        };
        // The two reads must fall within RATE_WINDOW of each other on the real clock
        // the rooms keep; a machine that stalls the test between them tries again.
        for _ in 0..20 {
            let store = Counting::default();
            *store.snapshot.lock().unwrap() = before;
            let rooms = Rooms::new(store, Duration::ZERO).with_polls_per_sec(10_000);
            let first = Instant::now();
            block_on(rooms.status(st, me, NOW)).unwrap();
            // 1,000 joins seen a moment later (microseconds): no rate of joins is read
            // from them, so the line is paced as it is: 1,000 at 10,000 polls a second
            // is 0.1 s, half of it for the middle of the lottery.
            *rooms.store().snapshot.lock().unwrap() = RoomSnapshot {
                joined: 1_000,
                ..before
            };
            let status = block_on(rooms.status(st, me, NOW)).unwrap().unwrap();
            if first.elapsed() < RATE_WINDOW {
                assert_eq!(status.poll_after, Some(Duration::from_millis(10_050)));
                return;
            }
        }
        panic!("no two reads came within {RATE_WINDOW:?} of each other in 20 tries");
    }

    #[test]
    fn a_joins_own_standing_is_not_overruled_by_an_older_snapshot() {
        use futures::executor::block_on;
        let (rooms, st) = rooms_seeing(RoomSnapshot {
            served: 0,
            joined: 0,
            closed: false,
            open: true,
            opens_at: UnixMillis(0),
            ..RoomSnapshot::default()
        });
        // The join admitted its caller at place 0; the snapshot, read before, has served 0.
        let admitted = Standing::Admitted {
            place: 0,
            until: UnixMillis(NOW.0 + 60_000),
        };
        let status = block_on(rooms.status_of(st, admitted, 0, NOW))
            .unwrap()
            .unwrap();
        assert_eq!(status.standing, admitted);
        assert_eq!(status.poll_after, None);
        assert_eq!(calls(rooms.store()), (1, 0), "no call to the store");
        // Nor by the polls that follow with the join's ticket (place 0): its turn has come
        // in this process's view too, so the store is asked, never "in line" from the
        // snapshot read before the join.
        let me = UserId::new(7).unwrap();
        let status = block_on(rooms.status(st, asker(me, Some(0)), NOW))
            .unwrap()
            .unwrap();
        assert!(
            matches!(status.standing, Standing::Admitted { .. }),
            "{status:?}"
        );
        assert_eq!(calls(rooms.store()), (1, 1));
        assert_eq!(
            status.room.served, 2,
            "the store's answer (place 1) is kept too"
        );
    }

    #[test]
    fn a_join_after_the_opening_is_not_told_waiting_by_a_snapshot_from_before_it() {
        use futures::executor::block_on;
        let (rooms, st) = rooms_seeing(RoomSnapshot {
            served: 0,
            joined: 50,
            closed: false,
            open: false,
            opens_at: UnixMillis(NOW.0),
            ..RoomSnapshot::default()
        });
        // The room opened; a join placed its caller 60th with 40 ahead.
        let in_line = Standing::InLine {
            place: 60,
            ahead: 40,
        };
        block_on(rooms.status_of(st, in_line, 0, NOW)).unwrap();
        let me = UserId::new(7).unwrap();
        let status = block_on(rooms.status(st, asker(me, Some(60)), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(status.standing, in_line, "not waiting: the room is open");
        assert_eq!(
            (status.room.served, status.room.joined, status.room.open),
            (20, 61, true)
        );
        // And sold out, once a read said so, for the whole line.
        block_on(rooms.status_of(st, Standing::SoldOut, 0, NOW)).unwrap();
        let status = block_on(rooms.status(st, asker(me, Some(60)), NOW))
            .unwrap()
            .unwrap();
        assert_eq!(status.standing, Standing::SoldOut);
        assert_eq!(calls(rooms.store()), (1, 0), "all from the snapshot");
    }

    #[test]
    fn what_a_standing_proves_moves_a_snapshot_forward_only() {
        let s = RoomSnapshot {
            served: 10,
            joined: 100,
            front: 30,
            closed: false,
            open: true,
            opens_at: UnixMillis(0),
            ..RoomSnapshot::default()
        };
        let until = UnixMillis(1);
        assert_eq!(s.knowing(Standing::Admitted { place: 3, until }), s);
        assert_eq!(
            s.knowing(Standing::InLine {
                place: 50,
                ahead: 45
            }),
            s
        );
        assert_eq!(s.knowing(Standing::Waiting), s);
        assert_eq!(s.knowing(Standing::NotInLine), s);
        assert_eq!(s.knowing(Standing::Passed { place: 11 }).served, 12);
        // A turn that came proves the front is at least that far.
        assert_eq!(s.knowing(Standing::Passed { place: 40 }).front, 41);
        assert_eq!(
            s.knowing(Standing::InLine {
                place: 150,
                ahead: 130
            }),
            RoomSnapshot {
                served: 20,
                joined: 151,
                ..s
            }
        );
        assert!(s.knowing(Standing::SoldOut).closed);
    }

    #[test]
    fn the_stock_bounds_undecided_admissions_rounding_up() {
        let room = RoomSettings::new(UnixMillis(0), None, 10, Duration::from_secs(60)).unwrap();
        assert_eq!(room.admissions_allowed(0), 0);
        assert_eq!(room.admissions_allowed(1), 2);
        assert_eq!(room.admissions_allowed(100), 110);
        let exact = RoomSettings {
            overbook_pct: 0,
            ..room
        };
        assert_eq!(exact.admissions_allowed(100), 100);
    }
}
