//! Group commit for publishes: the messages that concurrent requests hand over while
//! earlier publishes await their confirms leave together, as one persistent message (a
//! JSON array, see [`crate::wire`]) and one broker confirm.
//!
//! RabbitMQ's cost is per message (routing, the quorum log, the confirm), not per byte,
//! so a hold path that published one message per hold was bound by the broker (about
//! 70% of a core at 5,000 holds/s). Batching changes nothing a caller can observe: each
//! caller still waits until *its* message is confirmed, and learns of a failure of its
//! own batch. Nothing waits to fill a batch either: a batch leaves as soon as the
//! previous one of its destination is confirmed ([`IN_FLIGHT`]), so a lone request is
//! published at once and batches grow only while the broker is busy confirming.
//!
//! Consumers handle a batch as a unit: every handler is idempotent per entry, so a
//! redelivered batch redoes nothing that was done.

use std::sync::Arc;

use flash_sale_core::ports::{PortError, PortResult};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{COMPONENT, Link};
use crate::wire;

/// Batches of one destination being published and confirmed at the same time. One is
/// the classic group commit; measured on `all-win` (64 connections), 1, 2, 4 and 8 gave
/// the same throughput within noise, and RabbitMQ's CPU rose with each (38% to 57% of a
/// core): fewer, larger batches are cheaper for the broker.
const IN_FLIGHT: usize = 1;
/// Most messages in one batch: a body stays under about 10 KiB (an order is ~80 bytes of
/// JSON), so a Lambda event of a hundred such messages stays far below the 6 MB payload
/// limit. More waiting messages than this leave in several batches, one after another.
const MAX_BATCH: usize = 128;

struct Pending {
    message: Vec<u8>,
    confirmed: oneshot::Sender<PortResult<()>>,
}

/// Publishes the messages for one routing key in batches. Cheap to share; the task
/// that publishes ends when the `Batcher` is dropped.
#[derive(Debug)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the publishing task on the current tokio runtime.
    pub(super) fn start(link: Arc<Link>, exchange: String, key: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_batches(link, exchange, key, rx));
        Self { tx }
    }

    /// Publishes `message` (one JSON object) and waits until the broker confirmed the
    /// batch it went out in.
    pub(super) async fn publish(&self, message: Vec<u8>) -> PortResult<()> {
        let (confirmed, done) = oneshot::channel();
        self.tx
            .send(Pending { message, confirmed })
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}

fn stopped() -> PortError {
    PortError::transient(COMPONENT, "the publisher stopped")
}

async fn publish_batches(
    link: Arc<Link>,
    exchange: String,
    key: String,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for a free slot first: while every slot is busy, messages pile up in the
        // channel and leave together in the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (link, exchange, key) = (link.clone(), exchange.clone(), key.clone());
        tokio::spawn(async move {
            let body = wire::encode_batch(batch.iter().map(|p| p.message.as_slice()));
            let result = link
                .publish_to(&exchange, &[(key.as_str(), body)], Default::default())
                .await;
            for pending in batch {
                // A caller that stopped waiting (its request was cancelled) is fine: the
                // message is out either way and covered like any published hold.
                let _ = pending.confirmed.send(result.clone());
            }
            drop(slot);
        });
    }
}
