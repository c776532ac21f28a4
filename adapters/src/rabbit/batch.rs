//! Group commit for publishes: the messages that concurrent requests hand over while
//! earlier publishes await their confirms leave together, as one persistent message (a
//! JSON array, see [`crate::wire`]) and one broker confirm.
//!
//! RabbitMQ's cost is per message (routing, the quorum log, the confirm), not per byte,
//! so a hold path that published one message per hold was bound by the broker
//! (BENCHMARKS.md, "Measurements behind design choices"). Batching changes nothing a
//! caller can observe: a caller of [`Batcher::publish`] still waits until *its* message
//! is confirmed, and learns of a failure of its own batch. No batch with a waiting
//! sender in it waits to fill: it leaves as soon as the previous one of its destination
//! is confirmed, so a lone request is published at once and batches grow only while the
//! broker is busy confirming. One batch in flight per destination is the classic group
//! commit: more at once bought no throughput and cost the broker more CPU (fewer, larger
//! batches are cheaper for it; same section of BENCHMARKS.md).
//!
//! Consumers handle a batch as a unit: every handler is idempotent per entry, so a
//! redelivered batch redoes nothing that was done.
//!
//! A batch made only of handed-over messages (below) may wait a little for company
//! ([`Batcher::linger`]): nobody waits for those messages, so the wait delays no
//! answer, and a trickle of holds (a waiting room's admissions, a closed loop of buyers)
//! leaves in a few large batches instead of many small ones, which is most of what the
//! broker spends per hold. A message whose sender waits ends the wait at once.
//!
//! A message whose loss something else covers may be handed over instead
//! ([`Batcher::hand_over`]): it goes out in the next batch like any other, but its
//! sender does not wait for the confirm as long as the broker is confirming, that is
//! as long as the last batch of its destination was confirmed. After a failed batch
//! (and before the first one) every sender waits for its own confirm again, so an outage
//! is seen by the first caller after it, and the first confirm ends it. Handed-over
//! messages of a failed batch nobody waits for are retried, with a growing pause, until
//! confirmed or for [`RETRY_FOR`]; a failed sender that waits gets the error instead (and
//! gives its seat back).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flash_sale_core::ports::{PortError, PortResult};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{COMPONENT, Link};
use crate::wire;

/// Most messages in one batch: a body stays under about 10 KiB (an order is ~80 bytes of
/// JSON), so a Lambda event of a hundred such messages stays far below the 6 MB payload
/// limit. More waiting messages than this leave in several batches, one after another.
const MAX_BATCH: usize = 128;

/// How long handed-over messages of failed batches are retried: through a broker
/// restart, not a long outage (the sweep covers what is given up on).
const RETRY_FOR: Duration = Duration::from_secs(60);
/// The pause before the first retry; it doubles with every failure, up to the next.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

struct Pending {
    message: Vec<u8>,
    /// `None` for a handed-over message: nobody waits for its confirm.
    confirmed: Option<oneshot::Sender<PortResult<()>>>,
}

/// Publishes the messages for one routing key in batches. Cheap to share; the task
/// that publishes ends when the last clone of the `Batcher` is dropped.
#[derive(Debug, Clone)]
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    state: Arc<State>,
}

/// What the senders and the publishing task share.
#[derive(Debug)]
struct State {
    /// Whether the last batch was confirmed.
    confirming: AtomicBool,
    /// Handed-over messages neither confirmed nor given up on yet.
    outstanding: AtomicUsize,
    /// The most `outstanding` may reach: past it, senders wait for their confirm.
    limit: AtomicUsize,
    /// Woken when `outstanding` drops to zero.
    settled: Notify,
    /// How long a batch of handed-over messages alone waits to fill, in microseconds.
    linger_us: AtomicU64,
}

impl State {
    /// `n` handed-over messages were confirmed or given up on.
    fn settle(&self, n: usize) {
        if n > 0 {
            metrics::gauge!(super::metrics::HANDED_OVER).decrement(n as f64);
        }
        if n > 0 && self.outstanding.fetch_sub(n, Ordering::SeqCst) == n {
            self.settled.notify_waiters();
        }
    }
}

impl Batcher {
    /// Starts the publishing task on the current tokio runtime.
    pub(super) fn start(link: Arc<Link>, exchange: String, key: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            confirming: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
            settled: Notify::new(),
            linger_us: AtomicU64::new(0),
        });
        tokio::spawn(publish_batches(link, exchange, key, rx, state.clone()));
        Self { tx, state }
    }

    /// Bounds the handed-over messages not confirmed yet (see [`Batcher::hand_over`]).
    pub(super) fn hand_over_at_most(&self, limit: usize) {
        self.state.limit.store(limit, Ordering::Relaxed);
    }

    /// Lets a batch made only of handed-over messages wait up to `linger` for more (up to
    /// a full batch) before it leaves; a message whose sender waits ends the wait. Zero
    /// (the default) sends every batch as soon as the previous one is confirmed.
    pub(super) fn linger(&self, linger: Duration) {
        let us = u64::try_from(linger.as_micros()).unwrap_or(u64::MAX);
        self.state.linger_us.store(us, Ordering::Relaxed);
    }

    /// Waits until every message handed over so far is confirmed (or given up on), at
    /// most `within`. Returns how many are still outstanding.
    pub(super) async fn flush(&self, within: Duration) -> usize {
        let all_settled = async {
            loop {
                // Registered before the check, so a wake-up in between is not missed.
                let settled = self.state.settled.notified();
                if self.state.outstanding.load(Ordering::SeqCst) == 0 {
                    return;
                }
                settled.await;
            }
        };
        let _ = tokio::time::timeout(within, all_settled).await;
        self.state.outstanding.load(Ordering::SeqCst)
    }

    /// Publishes `message` (one JSON object) and waits until the broker confirmed the
    /// batch it went out in, at most `within` (which should allow for the batch before
    /// it, in flight when this one was queued).
    pub(super) async fn publish(&self, message: Vec<u8>, within: Duration) -> PortResult<()> {
        let (confirmed, done) = oneshot::channel();
        self.tx
            .send(Pending {
                message,
                confirmed: Some(confirmed),
            })
            .map_err(|_| stopped())?;
        match tokio::time::timeout(within, done).await {
            Ok(answer) => answer.map_err(|_| stopped())?,
            Err(_) => Err(PortError::transient(
                COMPONENT,
                format!("no confirm within {} ms", within.as_millis()),
            )),
        }
    }

    /// Publishes `message` like [`Batcher::publish`], but returns as soon as it is
    /// queued for the next batch while the broker is confirming and fewer than the limit
    /// are handed over and unconfirmed; otherwise waits for its confirm. For messages
    /// whose loss is covered elsewhere (a hold's messages: its deadline is in the seat
    /// store, which the sweep walks).
    pub(super) async fn hand_over(&self, message: Vec<u8>, within: Duration) -> PortResult<()> {
        if !self.state.confirming.load(Ordering::Relaxed)
            || self.state.outstanding.load(Ordering::Relaxed)
                >= self.state.limit.load(Ordering::Relaxed)
        {
            return self.publish(message, within).await;
        }
        self.state.outstanding.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(super::metrics::HANDED_OVER).increment(1.0);
        self.tx
            .send(Pending {
                message,
                confirmed: None,
            })
            .map_err(|_| {
                self.state.settle(1);
                stopped()
            })
    }
}

/// Adds to `batch` what arrives within `linger`, while nobody waits for any of it and
/// it is not full.
async fn fill(
    rx: &mut mpsc::UnboundedReceiver<Pending>,
    batch: &mut Vec<Pending>,
    linger: Duration,
) {
    let until = tokio::time::Instant::now() + linger;
    // Only what arrived since the last look is checked for a waiting sender.
    let mut seen = 0;
    while batch.len() < MAX_BATCH && batch[seen..].iter().all(|p| p.confirmed.is_none()) {
        seen = batch.len();
        let room = MAX_BATCH - batch.len();
        match tokio::time::timeout_at(until, rx.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
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
    state: Arc<State>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Handed-over messages of failed batches, with when to give up on each.
    let mut retry: VecDeque<(Vec<u8>, Instant)> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let retried = retry.len().min(MAX_BATCH);
        if retried == 0 {
            // Everything that arrived while the previous batch was being confirmed
            // leaves now.
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let linger = Duration::from_micros(state.linger_us.load(Ordering::Relaxed));
            if !linger.is_zero() {
                fill(&mut rx, &mut batch, linger).await;
            }
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            while batch.len() < MAX_BATCH - retried {
                let Ok(pending) = rx.try_recv() else { break };
                batch.push(pending);
            }
        }
        let retrying: Vec<(Vec<u8>, Instant)> = retry.drain(..retried).collect();
        let body = wire::encode_batch(
            retrying
                .iter()
                .map(|(message, _)| message.as_slice())
                .chain(batch.iter().map(|p| p.message.as_slice())),
        );
        let entries = retrying.len() + batch.len();
        let started = Instant::now();
        let result = link
            .publish_to(&exchange, &[(key.as_str(), body)], Default::default())
            .await;
        state.confirming.store(result.is_ok(), Ordering::Relaxed);
        super::metrics::batch_published(&key, entries, started.elapsed(), result.is_ok());
        let Err(e) = &result else {
            backoff = FIRST_BACKOFF;
            let mut settled = retrying.len();
            for pending in batch.drain(..) {
                match pending.confirmed {
                    // A caller that stopped waiting (its request was cancelled) is
                    // fine: the message is out either way.
                    Some(waiting) => drop(waiting.send(Ok(()))),
                    None => settled += 1,
                }
            }
            state.settle(settled);
            continue;
        };
        let now = Instant::now();
        let mut unheard = retrying;
        for pending in batch.drain(..) {
            match pending.confirmed {
                Some(waiting) => drop(waiting.send(Err(e.clone()))),
                None => unheard.push((pending.message, now + RETRY_FOR)),
            }
        }
        let mut dropped = 0;
        for (message, until) in unheard {
            if now < until {
                retry.push_back((message, until));
            } else {
                dropped += 1;
            }
        }
        if !retry.is_empty() {
            tracing::warn!(
                routing_key = %key,
                messages = retry.len(),
                "handed-over messages were not confirmed; retrying in {backoff:?}: {e}"
            );
        }
        state.settle(dropped);
        if dropped > 0 {
            tracing::warn!(
                routing_key = %key,
                messages = dropped,
                "gave up on handed-over messages after {RETRY_FOR:?}; the sweep covers them"
            );
        }
    }
}
