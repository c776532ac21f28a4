//! # write-order
//!
//! Consumes the order queue: records paid reservations in PostgreSQL, a batch per
//! transaction, each order at most once however often it is delivered; the database
//! refuses more orders than the showtime's capacity. Then marks them `ORDERED` in Redis.
//!
//! [`write_orders`] is the handler every host calls; [`handle_event`] is the Lambda
//! host's side (an Amazon MQ for RabbitMQ event).

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::{Queue, trace, wire};
use flash_sale_core::OrderRequest;
use flash_sale_core::ports::OrderOutcome;
use flash_sale_runtime::App;
use flash_sale_runtime::queue::{self, QueueError};
use lambda_runtime::LambdaEvent;
use tracing::Instrument as _;
use tracing::field::{Empty, debug, display};

/// Records the orders of a batch of message bodies (each body one order, or the orders
/// of concurrent payments), all in one transaction. The result has one entry per body,
/// in order:
/// - `Ok` once every order of the body is durably in the database (inserted now or
///   before) or, when the database refuses it for good and the body holds several,
///   dead-lettered on its own: the dead-letter queue holds one refused order per
///   message, for a person to inspect and replay;
/// - `Rejected` for a body that is malformed, or whose one order the database refuses
///   for good: the host dead-letters the body;
/// - `Retryable` for everything else when the database, Redis or the broker failed.
pub async fn write_orders(app: &App, bodies: &[&[u8]]) -> Vec<Result<(), QueueError>> {
    let mut results: Vec<Result<(), QueueError>> = Vec::with_capacity(bodies.len());
    let mut orders = Vec::with_capacity(bodies.len());
    // One span per order, in the trace of the request that held its seat, open while
    // the batch is written (disabled, and free, when tracing is off).
    let mut spans = Vec::with_capacity(bodies.len());
    let mut traceparents = Vec::with_capacity(bodies.len());
    // The bodies that decoded, each with the range of its orders in `orders`.
    let mut decoded = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        match wire::decode_orders(body) {
            Ok(these) => {
                decoded.push((i, orders.len()..orders.len() + these.len()));
                for order in these {
                    spans.push(order.continue_in(tracing::info_span!(
                        target: trace::TARGET,
                        "write order",
                        otel.kind = "consumer",
                        flash_sale.reservation = %order.message.reservation,
                        flash_sale.outcome = Empty,
                    )));
                    orders.push(order.message);
                    traceparents.push(order.traceparent);
                }
                results.push(Ok(()));
            }
            Err(e) => results.push(Err(e.into())),
        }
    }
    if orders.is_empty() {
        return results;
    }
    // The batch's own work (the transaction, marking the orders in Redis) in one span
    // linked to every order's trace.
    let batch = trace::linking(
        tracing::info_span!(
            target: trace::TARGET,
            "write orders",
            otel.kind = "consumer",
            flash_sale.orders = orders.len(),
        ),
        traceparents.iter().map(Option::as_deref),
    );
    let written = app.sale.write_orders(&orders).instrument(batch).await;
    for (i, span) in spans.iter().enumerate() {
        match &written {
            Ok(outcomes) => span.record("flash_sale.outcome", debug(&outcomes[i])),
            Err(e) => span.record("flash_sale.outcome", display(e)),
        };
    }
    drop(spans);
    let outcomes = match written {
        Ok(outcomes) => {
            flash_sale_runtime::metrics::orders(&outcomes);
            outcomes
        }
        Err(e) => {
            let transient = e.transient;
            for (slot, _) in decoded {
                results[slot] = Err(if transient {
                    QueueError::Retryable(e.to_string())
                } else {
                    QueueError::Rejected(e.to_string())
                });
            }
            return results;
        }
    };
    for (slot, range) in decoded {
        let refused: Vec<(&OrderRequest, String)> = orders[range.clone()]
            .iter()
            .zip(&outcomes[range.clone()])
            .filter_map(|(order, outcome)| match outcome {
                OrderOutcome::Refused(why) => Some((order, why.to_string())),
                _ => None,
            })
            .collect();
        for (order, why) in &refused {
            tracing::error!(reservation = %order.reservation, %why, "order refused by the database");
        }
        if refused.is_empty() {
            continue;
        }
        if range.len() == 1 {
            results[slot] = Err(QueueError::Rejected(refused[0].1.clone()));
            continue;
        }
        for (order, why) in refused {
            if let Err(e) = app
                .queues
                .dead_letter(Queue::Orders, wire::encode_order(order), &why)
                .await
            {
                results[slot] = Err(e.into());
                break;
            }
            flash_sale_runtime::metrics::dead_lettered(Queue::Orders.key());
        }
    }
    results
}

/// The Lambda host: the whole batch in one transaction, then the batch is settled
/// ([`queue::handle_event`]): a retryable failure fails the invocation so the event
/// source redelivers the batch (recording is idempotent); a message that can never
/// succeed goes to the dead-letter queue.
pub async fn handle_event(
    app: &App,
    event: LambdaEvent<RabbitMqEvent>,
) -> Result<(), lambda_runtime::Error> {
    queue::handle_event(&app.queues, Queue::Orders, event, |bodies| async move {
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        write_orders(app, &bodies).await
    })
    .await
}
