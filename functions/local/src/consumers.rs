//! The local event source: RabbitMQ consumers that call the queue functions' handlers
//! and settle each delivery by the handler's typed outcome:
//! - `Ok`: ack (the effect is durable by then);
//! - `Rejected` (can never succeed): reject without requeue, so the quorum queue
//!   dead-letters it to `<queue>.dlq`;
//! - `Retryable`: retried in-process with backoff for a while (a database restart), then
//!   requeued; the queue's delivery limit bounds how often.
//!
//! A consumer whose channel or connection drops reconnects on its own, with backoff.
//!
//! Told to [`Stop`] (the process is shutting down), a consumer takes no more deliveries,
//! settles every one it has begun (a retryable failure is requeued at once instead of
//! retried), and closes its channel, which hands what it had prefetched back to the
//! queue for the next consumer.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use flash_sale_adapters::Queue;
use flash_sale_runtime::App;
use flash_sale_runtime::queue::{self, QueueError};
use futures::{FutureExt as _, StreamExt, TryStreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::panic::AssertUnwindSafe;
use tokio_stream::StreamExt as _;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::health::Readiness;

/// Unacknowledged deliveries per consumer.
const PREFETCH: u16 = 512;
/// Deliveries handled at once by a per-message consumer.
const CONCURRENCY: usize = 256;
/// Most orders written in one transaction, and how long a batch waits to fill.
const ORDER_BATCH: usize = 256;
const ORDER_LINGER: Duration = Duration::from_millis(10);
/// How long a retryable failure is retried in-process before the message is requeued.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// What a consumer reads: its deliveries until the process is told to stop.
pub type Deliveries = futures::stream::TakeUntil<lapin::Consumer, WaitForCancellationFutureOwned>;

/// The process's word to its consumers to stop; see the module's documentation.
pub type Stop = CancellationToken;

/// Runs one handler call; a panic inside it is a retryable failure of that message,
/// never the end of the consumer.
async fn guarded<T>(call: impl Future<Output = Result<T, QueueError>>) -> Result<T, QueueError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result,
        Err(_) => Err(QueueError::Retryable("the handler panicked".into())),
    }
}

/// Calls `attempt` until it succeeds, fails for good, or [`RETRY_FOR`] has passed, or
/// the process is told to stop (the failure is then requeued for the next consumer).
async fn with_retries<T, F, Fut>(stop: &Stop, mut attempt: F) -> Result<T, QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, QueueError>>,
{
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match guarded(attempt()).await {
            Err(QueueError::Retryable(why))
                if started.elapsed() < RETRY_FOR && !stop.is_cancelled() =>
            {
                tracing::warn!(%why, "retrying in {pause:?}");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return Err(QueueError::Retryable(why)),
                }
                pause = (pause * 2).min(Duration::from_secs(3));
            }
            other => return other,
        }
    }
}

async fn settle(queue: Queue, delivery: &Delivery, result: Result<(), QueueError>) {
    let settled = match result {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(QueueError::Rejected(why)) => {
            tracing::error!(queue = queue.key(), %why, "dead-lettering a message that can never succeed");
            let rejected = delivery
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await;
            if rejected.is_ok() {
                flash_sale_runtime::metrics::dead_lettered(queue.key());
            }
            rejected
        }
        Err(QueueError::Retryable(why)) => {
            tracing::warn!(queue = queue.key(), %why, "requeueing");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = settled {
        // The channel is gone: the broker redelivers the message to the next consumer.
        tracing::warn!(queue = queue.key(), "could not settle a delivery: {e}");
    }
}

/// Keeps one consumer of `queue` running, reconnecting with backoff, until `stop`.
async fn keep_consuming<F, Fut>(
    app: App,
    readiness: Arc<Readiness>,
    queue: Queue,
    stop: Stop,
    run: F,
) where
    F: Fn(App, Deliveries, Stop) -> Fut,
    Fut: Future<Output = Result<(), lapin::Error>>,
{
    let mut pause = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let consumed = tokio::select! {
            consumed = app.queues.consume(queue, PREFETCH) => consumed,
            () = stop.cancelled() => return,
        };
        match consumed {
            Ok((channel, consumer)) => {
                tracing::info!(queue = queue.key(), "consuming");
                readiness.consuming(queue, true);
                pause = Duration::from_millis(100);
                let deliveries =
                    futures::StreamExt::take_until(consumer, stop.clone().cancelled_owned());
                let ended = run(app.clone(), deliveries, stop.clone()).await;
                readiness.consuming(queue, false);
                if stop.is_cancelled() {
                    // Everything begun is settled: what is left prefetched goes back to
                    // the queue now.
                    if let Err(e) = channel.close(200, "stopping".into()).await {
                        tracing::debug!(queue = queue.key(), "closing the channel: {e}");
                    }
                    tracing::info!(queue = queue.key(), "stopped consuming");
                    return;
                }
                match ended {
                    Ok(()) => tracing::warn!(queue = queue.key(), "consumer ended; reconnecting"),
                    Err(e) => {
                        tracing::warn!(queue = queue.key(), "consumer failed: {e}; reconnecting")
                    }
                }
            }
            Err(e) => tracing::warn!(
                queue = queue.key(),
                "cannot consume: {e}; retrying in {pause:?}"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Feeds the expiry queue to the `expire` handler.
pub async fn expiries(app: App, readiness: Arc<Readiness>, stop: Stop) {
    keep_consuming(
        app,
        readiness,
        Queue::Expiries,
        stop,
        |app, deliveries, stop| async move {
            deliveries
                .try_for_each_concurrent(CONCURRENCY, |delivery| {
                    let (app, stop) = (app.clone(), stop.clone());
                    async move {
                        let result = with_retries(&stop, || async {
                            flash_sale_expire::expire(&app, &delivery.data)
                                .await
                                .map(|_| ())
                        })
                        .await;
                        settle(Queue::Expiries, &delivery, result).await;
                        Ok(())
                    }
                })
                .await
        },
    )
    .await
}

/// Feeds the payment queue to the mock payer (mock-payment mode only).
pub async fn payments(app: App, readiness: Arc<Readiness>, stop: Stop) {
    keep_consuming(
        app,
        readiness,
        Queue::Payments,
        stop,
        |app, deliveries, stop| async move {
            deliveries
                .try_for_each_concurrent(PREFETCH as usize, |delivery| {
                    let (app, stop) = (app.clone(), stop.clone());
                    async move {
                        let delay = app.config.mock_pay_delay_ms.clone();
                        let result = with_retries(&stop, || {
                            flash_sale_pay::settle_payment_request(
                                &app,
                                &delivery.data,
                                delay.clone(),
                            )
                        })
                        .await;
                        settle(Queue::Payments, &delivery, result).await;
                        Ok(())
                    }
                })
                .await
        },
    )
    .await
}

/// Feeds the order queue to the `write-order` handler, in batches of up to
/// [`ORDER_BATCH`] collected for at most [`ORDER_LINGER`].
pub async fn orders(app: App, readiness: Arc<Readiness>, stop: Stop) {
    let consume = |app: App, deliveries: Deliveries, stop: Stop| async move {
        let batches = deliveries.chunks_timeout(ORDER_BATCH, ORDER_LINGER);
        tokio::pin!(batches);
        while let Some(batch) = StreamExt::next(&mut batches).await {
            let mut deliveries = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(d) => deliveries.push(d),
                    Err(e) => failure = Some(e),
                }
            }
            let bodies: Vec<&[u8]> = deliveries.iter().map(|d| d.data.as_slice()).collect();
            // Settled as the Lambda host settles a batch: a retryable failure anywhere
            // retries the whole batch; otherwise each delivery gets its own outcome.
            let results = with_retries(&stop, || async {
                let results = flash_sale_write_order::write_orders(&app, &bodies).await;
                match queue::settle(&results) {
                    Err(retryable) => Err(QueueError::Retryable(retryable.to_string())),
                    Ok(_) => Ok(results),
                }
            })
            .await;
            match results {
                Ok(results) => {
                    for (delivery, result) in deliveries.iter().zip(results) {
                        settle(Queue::Orders, delivery, result).await;
                    }
                }
                Err(e) => {
                    for delivery in &deliveries {
                        settle(
                            Queue::Orders,
                            delivery,
                            Err(QueueError::Retryable(e.to_string())),
                        )
                        .await;
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    };
    keep_consuming(app, readiness, Queue::Orders, stop, consume).await
}
