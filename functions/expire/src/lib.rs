//! # expire
//!
//! Consumes the expiry queue: when a hold's time is over, `RESERVED -> EXPIRED` returns
//! its seat exactly once and lets that user try again. Any other state (paid, ordered,
//! already expired) is acknowledged and left alone, so a redelivery is harmless. An
//! expiry that finds no reservation at all names a hold Redis lost (logged with its id
//! and counted in `flashsale_holds_lost_total`).
//!
//! [`expire`] is the handler every host calls; [`handle_event`] is the Lambda host's
//! side (an Amazon MQ for RabbitMQ event).

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::{Queue, trace, wire};
use flash_sale_core::ports::ExpireOutcome;
use flash_sale_runtime::App;
use flash_sale_runtime::queue::{self, QueueError};
use lambda_runtime::LambdaEvent;
use tracing::Instrument as _;

/// Expires the holds named in one message body (one hold, or the holds of a batch),
/// concurrently; their outcomes in the body's order. A retryable failure of any fails
/// the message: redoing the others is harmless (they are settled by then, and counted
/// now: a redelivery finds them expired and counts nothing).
pub async fn expire(app: &App, body: &[u8]) -> Result<Vec<ExpireOutcome>, QueueError> {
    let holds = wire::decode_expiries(body)?;
    let results = futures::future::join_all(holds.iter().map(|hold| {
        // The expiry continues the trace of the request that held the seat.
        let span = hold.continue_in(tracing::info_span!(
            target: trace::TARGET,
            "expire",
            otel.kind = "consumer",
            flash_sale.reservation = %hold.message.reservation,
        ));
        app.sale.expire(hold.message).instrument(span)
    }))
    .await;
    let failed = results.iter().find_map(|r| r.as_ref().err());
    // The seats returned are counted now (a redelivery finds their holds expired); a
    // lost hold only once its message succeeds, since every redelivery finds it lost
    // again.
    let outcomes: Vec<ExpireOutcome> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .filter(|o| failed.is_none() || *o == ExpireOutcome::SeatReturned)
        .collect();
    flash_sale_runtime::metrics::expiries(&outcomes);
    for (hold, outcome) in holds.iter().zip(&results) {
        if matches!(outcome, Ok(ExpireOutcome::NotFound)) {
            // Every hold has a reservation until it is settled, so only a Redis that
            // lost writes after answering them (a failover to a lagging replica, a
            // restart from an older snapshot) leaves an expiry with none: the hold was
            // answered and is gone. Named, never dropped silently.
            tracing::warn!(
                reservation = %hold.message.reservation,
                "hold lost: its expiry found no reservation in Redis (Redis lost the write that made it)"
            );
        }
    }
    if let Some(e) = failed {
        return Err(e.clone().into());
    }
    tracing::debug!(holds = holds.len(), ?outcomes, "expiries handled");
    Ok(outcomes)
}

/// The Lambda host: every message of the batch at once, then the batch is settled
/// ([`queue::handle_event`]): a retryable failure fails the invocation so the event
/// source redelivers the batch (expiry is idempotent); a message that can never succeed
/// goes to the dead-letter queue.
pub async fn handle_event(
    app: &App,
    event: LambdaEvent<RabbitMqEvent>,
) -> Result<(), lambda_runtime::Error> {
    queue::handle_event(&app.queues, Queue::Expiries, event, |bodies| async move {
        futures::future::join_all(
            bodies
                .iter()
                .map(|body| async move { expire(app, body).await.map(|_| ()) }),
        )
        .await
    })
    .await
}
