//! The reservation state machine. The Lua scripts in `lua/` implement exactly these
//! transitions atomically in Redis; this module is their specification and is what the
//! property tests check the rules against.
//!
//! ```text
//!   RESERVED --pay (before the deadline)--> PAID --order recorded--> ORDERED
//!     |   \                                   \                        ^
//!     |    \                                   `--order refused--> REFUSED
//!     |     \                                                (replayed by a person)
//!     |      `--expire (deadline passed, or payment refused)--> EXPIRED
//!     `--cancel (by its owner, before the deadline)--> CANCELLED
//! ```
//!
//! `REFUSED` is a paid reservation the database refused to record (over its capacity, a
//! second order of one user, or a reservation id another user's order already has): its
//! seat no longer counted, kept for a person to refund. Nothing automatic leaves it; a
//! person who fixed the cause and replayed the dead-lettered order records it.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// A seat is held for the user until the deadline.
    Reserved,
    /// The user paid; the seat is theirs. The order may not be in the database yet.
    Paid,
    /// The order is in the database.
    Ordered,
    /// The hold ran out unpaid and its seat went back on sale.
    Expired,
    /// Paid, but the database refused the order for good: a person refunds it. Its seat
    /// no longer counts as sold.
    Refused,
    /// Its owner released the hold before its deadline; its seat went back on sale.
    Cancelled,
}

/// What can happen to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Pay,
    Expire,
    RecordOrder,
    RefuseOrder,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} reservation cannot {event:?}")]
pub struct IllegalTransition {
    pub from: Status,
    pub event: Event,
}

impl Status {
    pub fn apply(self, event: Event) -> Result<Status, IllegalTransition> {
        match (self, event) {
            (Status::Reserved, Event::Pay) => Ok(Status::Paid),
            (Status::Reserved, Event::Expire) => Ok(Status::Expired),
            (Status::Reserved, Event::Cancel) => Ok(Status::Cancelled),
            (Status::Paid, Event::RecordOrder) => Ok(Status::Ordered),
            (Status::Paid, Event::RefuseOrder) => Ok(Status::Refused),
            (Status::Refused, Event::RecordOrder) => Ok(Status::Ordered),
            (from, event) => Err(IllegalTransition { from, event }),
        }
    }

    /// Whether the seat still counts against the showtime (held or sold).
    pub fn occupies_seat(self) -> bool {
        !matches!(self, Status::Expired | Status::Refused | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Reserved => "RESERVED",
            Status::Paid => "PAID",
            Status::Ordered => "ORDERED",
            Status::Expired => "EXPIRED",
            Status::Refused => "REFUSED",
            Status::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = crate::InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RESERVED" => Ok(Status::Reserved),
            "PAID" => Ok(Status::Paid),
            "ORDERED" => Ok(Status::Ordered),
            "EXPIRED" => Ok(Status::Expired),
            "REFUSED" => Ok(Status::Refused),
            "CANCELLED" => Ok(Status::Cancelled),
            other => Err(crate::InvalidInput(format!("unknown status {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 6] = [
        Status::Reserved,
        Status::Paid,
        Status::Ordered,
        Status::Expired,
        Status::Refused,
        Status::Cancelled,
    ];
    const EVENTS: [Event; 5] = [
        Event::Pay,
        Event::Expire,
        Event::RecordOrder,
        Event::RefuseOrder,
        Event::Cancel,
    ];

    #[test]
    fn only_the_documented_transitions_exist() {
        let mut legal = vec![];
        for from in ALL {
            for event in EVENTS {
                if let Ok(to) = from.apply(event) {
                    legal.push((from, event, to));
                }
            }
        }
        assert_eq!(
            legal,
            vec![
                (Status::Reserved, Event::Pay, Status::Paid),
                (Status::Reserved, Event::Expire, Status::Expired),
                (Status::Reserved, Event::Cancel, Status::Cancelled),
                (Status::Paid, Event::RecordOrder, Status::Ordered),
                (Status::Paid, Event::RefuseOrder, Status::Refused),
                (Status::Refused, Event::RecordOrder, Status::Ordered),
            ]
        );
    }

    #[test]
    fn terminal_states_accept_nothing_and_refused_only_a_replayed_order() {
        for event in EVENTS {
            assert!(Status::Ordered.apply(event).is_err());
            assert!(Status::Expired.apply(event).is_err());
            assert!(Status::Cancelled.apply(event).is_err());
        }
        for event in [Event::Pay, Event::Expire, Event::RefuseOrder, Event::Cancel] {
            assert!(Status::Refused.apply(event).is_err(), "{event:?}");
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for s in ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("TIMEOUT".parse::<Status>().is_err());
    }
}
