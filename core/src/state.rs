//! The reservation state machine. The Lua scripts in `lua/` implement exactly these
//! transitions atomically in Redis; this module is their specification and is what the
//! property tests check the rules against.
//!
//! ```text
//!   RESERVED --pay (before the deadline)--> PAID --order recorded--> ORDERED
//!       \
//!        `--expire (deadline passed, or payment refused)--> EXPIRED
//! ```

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
}

/// What can happen to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Pay,
    Expire,
    RecordOrder,
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
            (Status::Paid, Event::RecordOrder) => Ok(Status::Ordered),
            (from, event) => Err(IllegalTransition { from, event }),
        }
    }

    /// Whether the seat still counts against the showtime (held or sold).
    pub fn occupies_seat(self) -> bool {
        !matches!(self, Status::Expired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Reserved => "RESERVED",
            Status::Paid => "PAID",
            Status::Ordered => "ORDERED",
            Status::Expired => "EXPIRED",
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
            other => Err(crate::InvalidInput(format!("unknown status {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 4] = [
        Status::Reserved,
        Status::Paid,
        Status::Ordered,
        Status::Expired,
    ];
    const EVENTS: [Event; 3] = [Event::Pay, Event::Expire, Event::RecordOrder];

    #[test]
    fn only_the_four_documented_transitions_exist() {
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
                (Status::Paid, Event::RecordOrder, Status::Ordered),
            ]
        );
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for event in EVENTS {
            assert!(Status::Ordered.apply(event).is_err());
            assert!(Status::Expired.apply(event).is_err());
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
