//! Follow-up work that travels between functions through the queues. The adapters give
//! these a wire form (JSON); the rules only see these values.

use crate::{ReservationId, UnixMillis, UserId};

/// Sent to the delay queue when a hold is taken; arrives at `expire` when the hold time
/// is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub reservation: ReservationId,
}

/// Sent when a hold is taken in mock-payment mode: the mock payer pays it after a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentRequest {
    pub reservation: ReservationId,
    pub user: UserId,
}

/// Sent when a reservation is paid: `write-order` records it in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRequest {
    pub reservation: ReservationId,
    pub user: UserId,
    pub paid_at: UnixMillis,
    /// Seats the reservation holds (1 for a single seat).
    pub quantity: u32,
}
