//! # flash-sale-core
//!
//! The rules of a flash sale, with no I/O of any kind.
//!
//! - [`domain`]: the values the rules speak in (showtimes, users, reservation ids, seat
//!   counts), each parsed once at the edge so the rules only ever see valid values.
//! - [`state`]: the one reservation state machine, `RESERVED -> PAID -> ORDERED` and
//!   `RESERVED -> EXPIRED`, and nothing else.
//! - [`ports`]: what the rules need from the outside world (a seat store, a message bus,
//!   an order book and a showtime catalog), as plain traits the adapters implement.
//! - [`sale`]: the use cases (reserve, pay, expire, write orders, sweep), generic over
//!   the ports.
//! - [`messages`]: the follow-up work that travels between functions through the queues.
//! - [`idempotency`]: idempotency keys, the first answer under a key replayed, and the
//!   port that keeps them.
//! - [`waiting_room`]: a fair line in front of a sale (a lottery for early joiners,
//!   admission as the stock allows), and the port that keeps it.
//!
//! Unit tests run the use cases against in-memory fakes ([`sale`]'s tests); the adapters
//! and the functions are tested against real Redis, RabbitMQ and PostgreSQL elsewhere.

pub mod domain;
pub mod idempotency;
pub mod messages;
pub mod ports;
pub mod reconcile;
pub mod sale;
pub mod state;
pub mod waiting_room;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod model_tests;

pub use domain::{
    Capacity, InvalidInput, MaxPerUser, NewShowtime, Reservation, ReservationId, SeatChange,
    SeatCounts, Showtime, ShowtimeChange, ShowtimeId, UnixMillis, UserId,
};
pub use idempotency::{
    Creation, CreationKey, IdempotencyKey, IdempotencyStore, KeyScope, KeyedRoute,
};
pub use messages::{Expiry, OrderRequest, PaymentRequest};
pub use ports::{Catalog, MessageBus, OrderBook, PortError, Refusal, RefusedSeats, SeatStore};
pub use sale::{Admission, CreateError, PaymentMode, Sale, SaleSettings};
pub use state::{Event, IllegalTransition, Status};
