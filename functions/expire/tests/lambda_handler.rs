//! The `expire` Lambda handler, called with the events Amazon MQ delivers
//! (`LambdaEvent { payload: RabbitMqEvent, context }`), on the real services.
//!
//! What the event source mapping does with the answer: `Ok` acks the batch, `Err`
//! returns it to the queue. So a message that can never succeed must end in `Ok` (after
//! the handler dead-letters it) and change nothing; a transient failure must end in
//! `Err`.

use flash_sale_adapters::Queue;
use flash_sale_core::ports::ExpireOutcome;
use flash_sale_runtime::queue::rabbit_event;
use flash_sale_test_support::FunctionHarness;
use lambda_runtime::{Context, LambdaEvent};

fn event(
    queue: &str,
    bodies: &[&[u8]],
) -> LambdaEvent<aws_lambda_events::event::rabbitmq::RabbitMqEvent> {
    let bodies: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    LambdaEvent {
        payload: rabbit_event(queue, &bodies),
        context: Context::default(),
    }
}

fn expiry(reservation: &str) -> Vec<u8> {
    format!(r#"{{"reservation_id":"{reservation}"}}"#).into_bytes()
}

#[tokio::test]
async fn an_expiry_event_returns_the_seat_once() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(1, showtime).await;
    let queue = h.queue(Queue::Expiries);

    flash_sale_expire::handle_event(&h.app, event(&queue, &[&expiry(&id)]))
        .await
        .unwrap();
    assert_eq!(h.status(&id).await, "EXPIRED");
    assert_eq!(
        (
            h.counts(showtime).await.available,
            h.counts(showtime).await.held
        ),
        (2, 0)
    );

    // The same batch again (a redelivery): acknowledged, nothing changes.
    flash_sale_expire::handle_event(&h.app, event(&queue, &[&expiry(&id)]))
        .await
        .unwrap();
    assert_eq!(h.counts(showtime).await.available, 2);
    h.cleanup().await;
}

#[tokio::test]
async fn malformed_messages_are_not_retried_are_dead_lettered_and_change_nothing() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(1, showtime).await;
    let before = h.counts(showtime).await;
    let queue = h.queue(Queue::Expiries);

    // Each kind on its own: the handler's typed answer is "never retry".
    for body in [
        &b"not json"[..],
        br#"{"reservation_id":"not-an-id"}"#,
        br#"{"id":"1-1"}"#,
    ] {
        let err = flash_sale_expire::expire(&h.app, body).await.unwrap_err();
        assert!(!err.is_retryable(), "{err}");
    }

    // As one batch with a body that is not even base64: the invocation succeeds (the
    // event source acks the batch) and every message is in the dead-letter queue.
    let mut batch = event(
        &queue,
        &[b"x", b"not json", br#"{"reservation_id":"not-an-id"}"#],
    );
    let messages = batch.payload.messages_by_queue.values_mut().next().unwrap();
    messages[0].data = Some("%%% not base64 %%%".into());
    flash_sale_expire::handle_event(&h.app, batch)
        .await
        .unwrap();

    assert_eq!(h.dead_letters(Queue::Expiries).await, 3);
    assert_eq!(h.status(&id).await, "RESERVED");
    assert_eq!(h.counts(showtime).await, before);
    h.cleanup().await;
}

#[tokio::test]
async fn an_unknown_reservation_is_settled_without_retry_and_changes_nothing() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(1, showtime).await;
    let before = h.counts(showtime).await;
    let queue = h.queue(Queue::Expiries);
    let unknown = format!("{}-999999", showtime.get());

    let outcomes = flash_sale_expire::expire(&h.app, &expiry(&unknown))
        .await
        .unwrap();
    assert_eq!(outcomes, [ExpireOutcome::NotFound]);
    flash_sale_expire::handle_event(
        &h.app,
        event(&queue, &[&expiry(&unknown), &expiry("424242-1")]),
    )
    .await
    .unwrap();

    assert_eq!(h.dead_letters(Queue::Expiries).await, 0);
    assert_eq!(h.status(&id).await, "RESERVED");
    assert_eq!(h.counts(showtime).await, before);
    h.cleanup().await;
}

#[tokio::test]
async fn redis_down_is_retryable_and_fails_the_invocation() {
    let (proxy, h) = FunctionHarness::behind_cuttable_redis().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(1, showtime).await;
    let queue = h.queue(Queue::Expiries);

    proxy.cut().await;
    let err = flash_sale_expire::expire(&h.app, &expiry(&id))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let failed = flash_sale_expire::handle_event(&h.app, event(&queue, &[&expiry(&id)])).await;
    assert!(
        failed.is_err(),
        "the invocation fails, so the event source redelivers the batch"
    );
    assert_eq!(
        h.dead_letters(Queue::Expiries).await,
        0,
        "nothing was dead-lettered"
    );
    h.cleanup().await;
}
