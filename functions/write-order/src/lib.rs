//! # write-order
//!
//! Consumes the order queue: records paid reservations in PostgreSQL, a batch per
//! transaction, each order at most once however often it is delivered; the database
//! refuses more orders than the showtime's capacity. Then marks them `ORDERED` in Redis.
//!
//! [`write_orders`] is the handler every host calls; [`handle_event`] is the Lambda
//! host's side (an Amazon MQ for RabbitMQ event).

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::{Queue, wire};
use flash_sale_core::ports::OrderOutcome;
use flash_sale_runtime::App;
use flash_sale_runtime::queue::{QueueError, event_messages};
use lambda_runtime::LambdaEvent;

/// Records the orders of a batch of message bodies. The result has one entry per body,
/// in order: `Ok` once the order is durably in the database (inserted now or before),
/// `Rejected` for a body that is malformed or that the database refuses for good,
/// `Retryable` for everything else when the database or Redis failed.
pub async fn write_orders(app: &App, bodies: &[&[u8]]) -> Vec<Result<(), QueueError>> {
    let mut results: Vec<Result<(), QueueError>> = Vec::with_capacity(bodies.len());
    let mut orders = Vec::with_capacity(bodies.len());
    let mut slots = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        match wire::decode_order(body) {
            Ok(order) => {
                orders.push(order);
                slots.push(i);
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e.into())),
        }
    }
    if orders.is_empty() {
        return results;
    }
    match app.sale.write_orders(&orders).await {
        Ok(outcomes) => {
            for (slot, (order, outcome)) in slots.iter().zip(orders.iter().zip(outcomes)) {
                if let OrderOutcome::Refused(why) = outcome {
                    tracing::error!(reservation = %order.reservation, %why, "order refused by the database");
                    results[*slot] = Err(QueueError::Rejected(why));
                }
            }
        }
        Err(e) => {
            let transient = e.transient;
            for slot in slots {
                results[slot] = Err(if transient {
                    QueueError::Retryable(e.to_string())
                } else {
                    QueueError::Rejected(e.to_string())
                });
            }
        }
    }
    results
}

/// The Lambda host: the whole batch in one transaction. A retryable failure fails the
/// invocation so the event source redelivers the batch (recording is idempotent); a
/// message that can never succeed goes to the dead-letter queue.
pub async fn handle_event(
    app: &App,
    event: LambdaEvent<RabbitMqEvent>,
) -> Result<(), lambda_runtime::Error> {
    let messages = event_messages(event.payload);
    let mut bodies: Vec<&[u8]> = Vec::with_capacity(messages.len());
    let mut undecodable = vec![];
    for m in &messages {
        match &m.body {
            Ok(body) => bodies.push(body),
            Err(e) => undecodable.push(e.to_string()),
        }
    }
    let results = write_orders(app, &bodies).await;
    if let Some(Err(e)) = results
        .iter()
        .find(|r| matches!(r, Err(QueueError::Retryable(_))))
    {
        return Err(e.to_string().into());
    }
    let rejected = bodies
        .iter()
        .zip(&results)
        .filter_map(|(body, r)| match r {
            Err(QueueError::Rejected(why)) => Some((body.to_vec(), why.clone())),
            _ => None,
        })
        .chain(undecodable.into_iter().map(|why| (Vec::new(), why)));
    for (body, why) in rejected {
        tracing::error!(%why, "dead-lettering an order message");
        app.sale
            .bus()
            .dead_letter(Queue::Orders, body, &why)
            .await
            .map_err(QueueError::from)?;
    }
    Ok(())
}
