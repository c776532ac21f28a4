//! What the publishers record (through the `metrics` facade: a no-op where the process
//! installed no recorder). Named like the runtime's metrics: the `flashsale_` prefix,
//! base units, `_total` counters.

use std::time::Duration;

use metrics::{counter, histogram};

/// Batches published, by `destination` (routing key) and `result` (`confirmed`,
/// `failed`).
pub const BATCHES: &str = "flashsale_publish_batches_total";
/// Entries per batch, by `destination`.
pub const BATCH_SIZE: &str = "flashsale_publish_batch_entries";
/// From publishing a batch to its confirm (or failure), by `destination`.
pub const CONFIRM: &str = "flashsale_publish_confirm_seconds";
/// Hold messages handed over and not confirmed (or given up on) yet.
pub const HANDED_OVER: &str = "flashsale_handed_over_messages";

pub(super) fn batch_published(destination: &str, entries: usize, took: Duration, confirmed: bool) {
    let destination = destination.to_string();
    let result = if confirmed { "confirmed" } else { "failed" };
    counter!(BATCHES, "destination" => destination.clone(), "result" => result).increment(1);
    histogram!(BATCH_SIZE, "destination" => destination.clone()).record(entries as f64);
    histogram!(CONFIRM, "destination" => destination).record(took.as_secs_f64());
}
