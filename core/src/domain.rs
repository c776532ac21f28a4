//! Values the rules speak in. Every constructor validates; a value that exists is valid.

use std::fmt;
use std::str::FromStr;

use crate::waiting_room::RoomSettings;

/// Input that is not a valid domain value. Carries a human message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(i64);

        impl $name {
            /// Accepts 1 ..= i64::MAX.
            pub fn new(raw: i64) -> Result<Self, InvalidInput> {
                if raw > 0 {
                    Ok(Self(raw))
                } else {
                    Err(InvalidInput(format!(concat!($what, " must be a positive integer, got {}"), raw)))
                }
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let raw: i64 = s
                    .parse()
                    .map_err(|_| InvalidInput(format!(concat!($what, " must be a positive integer, got {:?}"), s)))?;
                Self::new(raw)
            }
        }
    };
}

positive_id!(
    /// A showtime: one screening whose seats are on sale.
    ShowtimeId,
    "showtime_id"
);
positive_id!(
    /// A buyer.
    UserId,
    "user_id"
);

/// A reservation id carries its showtime, `"<showtime>-<sequence>"` (e.g. `42-1007`), so
/// every later step finds the showtime's keys without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    showtime: ShowtimeId,
    seq: u64,
}

impl ReservationId {
    pub fn new(showtime: ShowtimeId, seq: u64) -> Result<Self, InvalidInput> {
        if seq == 0 {
            return Err(InvalidInput("reservation sequence must be positive".into()));
        }
        Ok(Self { showtime, seq })
    }

    pub fn showtime(self) -> ShowtimeId {
        self.showtime
    }

    pub fn seq(self) -> u64 {
        self.seq
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.showtime, self.seq)
    }
}

impl FromStr for ReservationId {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            InvalidInput(format!(
                "reservation id must look like <showtime>-<number>, got {s:?}"
            ))
        };
        let (showtime, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(showtime) || !digits(seq) {
            return Err(bad());
        }
        let showtime = showtime.parse::<i64>().map_err(|_| bad())?;
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        Self::new(ShowtimeId::new(showtime).map_err(|_| bad())?, seq).map_err(|_| bad())
    }
}

/// Seats a showtime has in all. Bounded so a typo cannot create a billion-seat hall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capacity(u32);

impl Capacity {
    pub const MAX: u32 = 1_000_000;

    pub fn new(raw: i64) -> Result<Self, InvalidInput> {
        if (1..=i64::from(Self::MAX)).contains(&raw) {
            Ok(Self(raw as u32))
        } else {
            Err(InvalidInput(format!(
                "capacity must be between 1 and {}, got {raw}",
                Self::MAX
            )))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// How many seats one buyer may take of a showtime, as one reservation (a group):
/// between 1 (the default: one seat per user) and [`MaxPerUser::LIMIT`]. PostgreSQL
/// enforces the same bounds on `showtimes.max_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPerUser(u32);

impl MaxPerUser {
    pub const LIMIT: u32 = 20;
    /// One seat per user: today's behaviour, and every showtime's unless set.
    pub const ONE: Self = Self(1);

    pub fn new(raw: i64) -> Result<Self, InvalidInput> {
        if (1..=i64::from(Self::LIMIT)).contains(&raw) {
            Ok(Self(raw as u32))
        } else {
            Err(InvalidInput(format!(
                "max_per_user must be between 1 and {}, got {raw}",
                Self::LIMIT
            )))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for MaxPerUser {
    fn default() -> Self {
        Self::ONE
    }
}

/// Milliseconds since the Unix epoch, on the seat store's clock (the one clock every
/// decision about a hold's deadline is taken on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UnixMillis(pub u64);

/// Where every seat of a showtime is, at one instant. `available + held + sold == capacity`
/// always: the seat store changes these only together, atomically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeatCounts {
    pub capacity: u32,
    pub available: u32,
    /// Unpaid holds.
    pub held: u32,
    /// Paid seats, whether their order is in the database yet or not.
    pub sold: u32,
}

impl SeatCounts {
    pub fn balanced(&self) -> bool {
        u64::from(self.available) + u64::from(self.held) + u64::from(self.sold)
            == u64::from(self.capacity)
    }
}

/// A showtime to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShowtime {
    pub capacity: Capacity,
    pub title: Option<String>,
    /// RFC 3339, already validated at the edge.
    pub starts_at: Option<String>,
    /// When its seats may be reserved.
    pub sale_window: SaleWindow,
    /// Seats one buyer may take (as one reservation).
    pub max_per_user: MaxPerUser,
    /// A waiting room in front of the sale, when it has one.
    pub waiting_room: Option<RoomSettings>,
}

impl NewShowtime {
    /// `capacity` seats, no title or start, on sale at any time.
    pub fn always_on_sale(capacity: Capacity) -> Self {
        Self {
            capacity,
            title: None,
            starts_at: None,
            sale_window: SaleWindow::ALWAYS,
            max_per_user: MaxPerUser::ONE,
            waiting_room: None,
        }
    }
}

/// An operator's change to a showtime on sale: each field, when set, replaces the
/// showtime's own. Seats are added or removed as a new capacity, decided while the
/// showtime's row is locked (so two changes never lose each other's seats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShowtimeChange {
    /// `Some(None)` removes the bound.
    pub sale_opens_at: Option<Option<UnixMillis>>,
    pub sale_closes_at: Option<Option<UnixMillis>>,
    pub paused: Option<bool>,
    /// Close the sale now (early): the window's close becomes the moment of the change.
    pub close_now: bool,
    pub seats: Option<SeatChange>,
    /// `Some(None)` removes the waiting room; `Some(Some(..))` opens or changes it.
    pub waiting_room: Option<Option<RoomSettings>>,
}

/// How an operator changes a showtime's seats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatChange {
    Add(u32),
    /// Unsold seats only: refused when fewer than that many are neither held nor sold.
    Remove(u32),
    /// A new capacity, never below the seats held and sold.
    Set(Capacity),
}

impl ShowtimeChange {
    /// The window after this change made at `at`, refused when it would close before
    /// it opens.
    pub fn window(&self, was: SaleWindow, at: UnixMillis) -> Result<SaleWindow, InvalidInput> {
        let opens_at = self.sale_opens_at.unwrap_or(was.opens_at);
        let closes_at = if self.close_now {
            Some(at)
        } else {
            self.sale_closes_at.unwrap_or(was.closes_at)
        };
        if self.close_now && opens_at.is_some_and(|open| open >= at) {
            return Err(InvalidInput(
                "the sale has not opened yet: move its window (sale_opens_at, sale_closes_at) instead of closing it".into(),
            ));
        }
        let queued = match self.waiting_room {
            Some(room) => room.is_some(),
            None => was.queued,
        };
        Ok(SaleWindow::new(opens_at, closes_at)?
            .paused(self.paused.unwrap_or(was.paused))
            .queued(queued))
    }

    /// The capacity after this change; refused when out of bounds.
    pub fn capacity(&self, now: Capacity) -> Result<Capacity, InvalidInput> {
        let current = i64::from(now.get());
        match self.seats {
            None => Ok(now),
            Some(SeatChange::Set(capacity)) => Ok(capacity),
            Some(SeatChange::Add(n)) => Capacity::new(current + i64::from(n)),
            Some(SeatChange::Remove(n)) => Capacity::new(current - i64::from(n)).map_err(|_| {
                InvalidInput(format!(
                    "cannot remove {n} seats: the showtime has {current} (at least one stays)"
                ))
            }),
        }
    }
}

/// A showtime as the catalog (the database) knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Showtime {
    pub id: ShowtimeId,
    pub capacity: Capacity,
    pub title: Option<String>,
    pub starts_at: Option<String>,
    pub sale_window: SaleWindow,
    /// Seats one buyer may take (as one reservation).
    pub max_per_user: MaxPerUser,
    /// Seats the database's orders hold (the sum of their quantities).
    pub ordered: u32,
    /// The waiting room in front of the sale, when it has one.
    pub waiting_room: Option<RoomSettings>,
    /// Tells this row from another database's row of the same id (its creation time in
    /// microseconds): the seat store's state carries it.
    pub generation: u64,
}

/// When a showtime's seats may be reserved: from `opens_at` (if set) until `closes_at`
/// (if set, exclusive), unless an operator paused the sale. A reservation outside the
/// window, or while paused, is refused before any seat is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SaleWindow {
    opens_at: Option<UnixMillis>,
    closes_at: Option<UnixMillis>,
    paused: bool,
    /// Buyers reserve through a waiting room (with an admission).
    queued: bool,
}

/// Where a showtime's sale stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaleState {
    /// Its window has not opened yet.
    Upcoming,
    /// Inside its window (or it has none).
    OnSale,
    /// Inside its window, but an operator paused it.
    Paused,
    /// Its window has closed.
    Ended,
}

impl SaleState {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleState::Upcoming => "upcoming",
            SaleState::OnSale => "on_sale",
            SaleState::Paused => "paused",
            SaleState::Ended => "ended",
        }
    }
}

/// Why the sale window refuses a reservation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutsideSaleWindow {
    #[error("the sale has not opened yet")]
    NotOpenYet { opens_at: UnixMillis },
    #[error("the sale is closed")]
    Closed { closed_at: UnixMillis },
    #[error("the sale is paused")]
    Paused,
}

impl SaleWindow {
    /// Always open: the behaviour of a showtime created without a window.
    pub const ALWAYS: Self = Self {
        opens_at: None,
        closes_at: None,
        paused: false,
        queued: false,
    };

    /// Refuses a window that closes before (or when) it opens.
    pub fn new(
        opens_at: Option<UnixMillis>,
        closes_at: Option<UnixMillis>,
    ) -> Result<Self, InvalidInput> {
        if let (Some(open), Some(close)) = (opens_at, closes_at)
            && close <= open
        {
            return Err(InvalidInput(
                "sale_closes_at must be later than sale_opens_at".into(),
            ));
        }
        Ok(Self {
            opens_at,
            closes_at,
            paused: false,
            queued: false,
        })
    }

    /// The same window, paused or resumed.
    pub fn paused(self, paused: bool) -> Self {
        Self { paused, ..self }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The same window, with buyers reserving through a waiting room or not.
    pub fn queued(self, queued: bool) -> Self {
        Self { queued, ..self }
    }

    /// Whether buyers need an admission from the waiting room to reserve.
    pub fn is_queued(&self) -> bool {
        self.queued
    }

    pub fn opens_at(&self) -> Option<UnixMillis> {
        self.opens_at
    }

    pub fn closes_at(&self) -> Option<UnixMillis> {
        self.closes_at
    }

    /// Where the sale stands at `now`.
    pub fn state_at(&self, now: UnixMillis) -> SaleState {
        match self.admits(now) {
            Ok(()) => SaleState::OnSale,
            Err(OutsideSaleWindow::NotOpenYet { .. }) => SaleState::Upcoming,
            Err(OutsideSaleWindow::Closed { .. }) => SaleState::Ended,
            Err(OutsideSaleWindow::Paused) => SaleState::Paused,
        }
    }

    /// Whether a reservation at `now` is inside the window.
    pub fn admits(&self, now: UnixMillis) -> Result<(), OutsideSaleWindow> {
        if let Some(opens_at) = self.opens_at
            && now < opens_at
        {
            return Err(OutsideSaleWindow::NotOpenYet { opens_at });
        }
        if let Some(closed_at) = self.closes_at
            && now >= closed_at
        {
            return Err(OutsideSaleWindow::Closed { closed_at });
        }
        if self.paused {
            return Err(OutsideSaleWindow::Paused);
        }
        Ok(())
    }
}

/// A reservation as the seat store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub user: UserId,
    pub status: crate::Status,
    pub expires_at: UnixMillis,
    /// Seats it holds (a group takes them all or none): 1..=the showtime's max_per_user.
    pub quantity: u32,
}

impl Reservation {
    pub fn showtime(&self) -> ShowtimeId {
        self.id.showtime()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_round_trip_through_text() {
        let id = ReservationId::new(ShowtimeId::new(42).unwrap(), 1007).unwrap();
        assert_eq!(id.to_string(), "42-1007");
        assert_eq!("42-1007".parse::<ReservationId>().unwrap(), id);
    }

    #[test]
    fn malformed_reservation_ids_are_refused() {
        for junk in [
            "",
            "-",
            "42",
            "42-",
            "-7",
            "0-1",
            "42-0",
            "a-1",
            "1-b",
            "+1-2",
            "1--2",
            "1-2-3",
            " 1-2",
            "99999999999999999999-1",
        ] {
            assert!(
                junk.parse::<ReservationId>().is_err(),
                "{junk:?} was accepted"
            );
        }
    }

    #[test]
    fn ids_must_be_positive() {
        assert!(UserId::new(0).is_err());
        assert!(UserId::new(-3).is_err());
        assert!(ShowtimeId::new(1).is_ok());
        assert!("12x".parse::<UserId>().is_err());
    }

    #[test]
    fn a_sale_window_admits_from_its_opening_until_its_close() {
        let ms = UnixMillis;
        let w = SaleWindow::new(Some(ms(1_000)), Some(ms(2_000))).unwrap();
        assert_eq!(
            w.admits(ms(999)),
            Err(OutsideSaleWindow::NotOpenYet {
                opens_at: ms(1_000)
            })
        );
        assert_eq!(w.admits(ms(1_000)), Ok(()));
        assert_eq!(w.admits(ms(1_999)), Ok(()));
        assert_eq!(
            w.admits(ms(2_000)),
            Err(OutsideSaleWindow::Closed {
                closed_at: ms(2_000)
            })
        );
        assert_eq!(SaleWindow::ALWAYS.admits(ms(0)), Ok(()));
        assert!(SaleWindow::new(Some(ms(5)), Some(ms(5))).is_err());
        assert!(
            SaleWindow::new(None, Some(ms(5)))
                .unwrap()
                .admits(ms(4))
                .is_ok()
        );
    }

    #[test]
    fn capacity_is_bounded() {
        assert!(Capacity::new(0).is_err());
        assert!(Capacity::new(1).is_ok());
        assert!(Capacity::new(1_000_000).is_ok());
        assert!(Capacity::new(1_000_001).is_err());
    }
}
