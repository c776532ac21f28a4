//! End-to-end tests over HTTP against the real one-process server, real PostgreSQL,
//! Redis and RabbitMQ. One binary, a module per area.

mod cancel;
mod contract;
mod failure_windows;
mod go_reference;
mod groups;
mod idempotency;
mod lifecycle;
mod me;
mod operations;
mod recovery;
mod showtimes;
mod steer;
mod traces;
mod waiting_room;
