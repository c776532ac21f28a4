//! # flash-sale-adapters
//!
//! The core's ports on real infrastructure:
//! - [`redis_seats`]: the [`SeatStore`](flash_sale_core::SeatStore) on Redis, one Lua
//!   script per transition (from `lua/`), run by SHA with a NOSCRIPT fallback.
//! - [`redis_idempotency`]: the [`IdempotencyStore`](flash_sale_core::IdempotencyStore)
//!   on Redis, each key's record in its showtime's slot.
//! - [`redis_connection`]: one connection to a single Redis or a Redis Cluster, chosen
//!   by what `REDIS_URL` names.
//! - [`rabbit`]: the [`MessageBus`](flash_sale_core::MessageBus) on RabbitMQ, with the
//!   queue topology, publisher confirms and the consumers' side.
//! - [`postgres`]: the [`Catalog`](flash_sale_core::Catalog) and
//!   [`OrderBook`](flash_sale_core::OrderBook) on PostgreSQL, schema from `migrations/`.
//! - [`tls`]: what a connection trusts (the system's roots plus a [`CaFile`] per
//!   service) and the message for a certificate that did not verify.
//! - [`wire`]: the JSON form of the queue messages, shared by every host.
//! - [`trace`]: the trace context a message entry carries from publisher to consumer.

pub mod postgres;
mod postgres_audit;
pub mod rabbit;
pub mod redis_connection;
pub mod redis_idempotency;
pub mod redis_room;
pub mod redis_seats;
pub mod tls;
pub mod trace;
pub mod wire;

pub use postgres::Postgres;
pub use rabbit::{Broker, Queue, Topology};
pub use redis_connection::RedisConnection;
pub use redis_idempotency::RedisIdempotency;
pub use redis_room::RedisRoom;
pub use redis_seats::RedisSeats;
pub use tls::{CaFile, Trust};
