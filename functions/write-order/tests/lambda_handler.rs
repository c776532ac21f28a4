//! The `write-order` Lambda handler, called with the events Amazon MQ delivers
//! (`LambdaEvent { payload: RabbitMqEvent, context }`), on the real services.
//!
//! `Ok` acks the batch, `Err` returns it to the queue: a message that can never succeed
//! must end in `Ok` (dead-lettered by the handler) and change nothing; a transient
//! failure must end in `Err`.

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::Queue;
use flash_sale_core::UserId;
use flash_sale_runtime::queue::{QueueError, rabbit_event};
use flash_sale_test_support::isolation::POSTGRES;
use flash_sale_test_support::{Cuttable, FunctionHarness, Options};
use lambda_runtime::{Context, LambdaEvent};

fn event(queue: &str, bodies: &[&[u8]]) -> LambdaEvent<RabbitMqEvent> {
    let bodies: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    LambdaEvent {
        payload: rabbit_event(queue, &bodies),
        context: Context::default(),
    }
}

fn order(reservation: &str, user: i64) -> Vec<u8> {
    format!(r#"{{"reservation_id":"{reservation}","user_id":{user},"paid_at_ms":1795597200000}}"#)
        .into_bytes()
}

/// A hold of `user`, paid: what the pay function does before it queues the order.
async fn paid(h: &FunctionHarness, user: i64, showtime: flash_sale_core::ShowtimeId) -> String {
    let id = h.hold(user, showtime).await;
    h.app
        .sale
        .pay(id.parse().unwrap(), UserId::new(user).unwrap())
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_batch_of_orders_is_recorded_once() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(3).await;
    let a = paid(&h, 1, showtime).await;
    let b = paid(&h, 2, showtime).await;
    let queue = h.queue(Queue::Orders);

    let batch = [&order(&a, 1)[..], &order(&b, 2)[..]];
    flash_sale_write_order::handle_event(&h.app, event(&queue, &batch))
        .await
        .unwrap();
    assert_eq!(h.orders().await, 2);
    assert_eq!(
        (h.status(&a).await, h.status(&b).await),
        ("ORDERED".into(), "ORDERED".into())
    );

    // Redelivered, even twice in one batch: nothing is recorded twice.
    let again = [&order(&a, 1)[..], &order(&a, 1)[..], &order(&b, 2)[..]];
    flash_sale_write_order::handle_event(&h.app, event(&queue, &again))
        .await
        .unwrap();
    assert_eq!(h.orders().await, 2);
    assert_eq!(h.counts(showtime).await.sold, 2);
    h.cleanup().await;
}

#[tokio::test]
async fn malformed_messages_are_not_retried_are_dead_lettered_and_change_nothing() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = paid(&h, 1, showtime).await;
    let before = h.counts(showtime).await;
    let queue = h.queue(Queue::Orders);

    let bad: [&[u8]; 3] = [
        b"not json",
        br#"{"reservation_id":"1-1"}"#,
        br#"{"reservation_id":"1-1","user_id":0,"paid_at_ms":1}"#,
    ];
    for result in flash_sale_write_order::write_orders(&h.app, &bad).await {
        assert!(matches!(result, Err(QueueError::Rejected(_))), "{result:?}");
    }

    let mut batch = event(&queue, &[b"x", bad[0], bad[1], bad[2]]);
    let messages = batch.payload.messages_by_queue.values_mut().next().unwrap();
    messages[0].data = Some("%%% not base64 %%%".into());
    flash_sale_write_order::handle_event(&h.app, batch)
        .await
        .unwrap();

    assert_eq!(h.dead_letters(Queue::Orders).await, 4);
    // Each as it came, the one whose data was not base64 too (it was dead-lettered
    // empty, with nothing left to read or replay).
    let dead = h.take_dead_letters(Queue::Orders).await;
    assert!(
        dead.contains(&b"%%% not base64 %%%".to_vec()),
        "{:?}",
        dead.iter()
            .map(|b| String::from_utf8_lossy(b))
            .collect::<Vec<_>>()
    );
    assert!(dead.iter().all(|b| !b.is_empty()));
    assert_eq!(h.orders().await, 0);
    assert_eq!(h.status(&id).await, "PAID");
    assert_eq!(h.counts(showtime).await, before);
    h.cleanup().await;
}

#[tokio::test]
async fn an_order_for_an_unknown_showtime_is_refused_for_good_and_changes_nothing() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let good = paid(&h, 1, showtime).await;
    let queue = h.queue(Queue::Orders);
    let unknown = "424242-1";

    let results = flash_sale_write_order::write_orders(&h.app, &[&order(unknown, 9)]).await;
    assert!(
        matches!(results[0], Err(QueueError::Rejected(_))),
        "{results:?}"
    );

    // In a batch, the good order is recorded and the refused one dead-lettered.
    let batch = [&order(unknown, 9)[..], &order(&good, 1)[..]];
    flash_sale_write_order::handle_event(&h.app, event(&queue, &batch))
        .await
        .unwrap();
    assert_eq!(h.orders().await, 1);
    assert_eq!(h.dead_letters(Queue::Orders).await, 1);
    let unknown_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE reservation_id = $1")
            .bind(unknown)
            .fetch_one(h.adapters.db.pool())
            .await
            .unwrap();
    assert_eq!(unknown_rows, 0);

    // One body holding several orders (as the publisher batches them): the good one is
    // recorded, the body is acknowledged, and only the refused order is dead-lettered,
    // on its own, so a person sees exactly what was refused.
    let other = paid(&h, 2, showtime).await;
    let body = format!(
        "[{},{}]",
        String::from_utf8(order(&other, 2)).unwrap(),
        String::from_utf8(order("424242-2", 8)).unwrap()
    );
    let results = flash_sale_write_order::write_orders(&h.app, &[body.as_bytes()]).await;
    assert!(matches!(results[..], [Ok(())]), "{results:?}");
    assert_eq!(h.orders().await, 2);
    assert_eq!(h.status(&other).await, "ORDERED");
    assert_eq!(h.dead_letters(Queue::Orders).await, 2);
    h.cleanup().await;
}

#[tokio::test]
async fn the_database_down_is_retryable_and_fails_the_invocation() {
    let proxy = Cuttable::start("127.0.0.1:5432").await;
    let h = FunctionHarness::start_with(Options {
        postgres_server: Some(POSTGRES.replace("127.0.0.1:5432", &proxy.addr.to_string())),
        ..Options::default()
    })
    .await;
    let showtime = h.showtime(2).await;
    let id = paid(&h, 1, showtime).await;
    let queue = h.queue(Queue::Orders);

    proxy.cut().await;
    for result in flash_sale_write_order::write_orders(&h.app, &[&order(&id, 1)]).await {
        assert!(
            matches!(result, Err(QueueError::Retryable(_))),
            "{result:?}"
        );
    }
    let failed =
        flash_sale_write_order::handle_event(&h.app, event(&queue, &[&order(&id, 1)])).await;
    assert!(
        failed.is_err(),
        "the invocation fails, so the event source redelivers the batch"
    );
    assert_eq!(
        h.dead_letters(Queue::Orders).await,
        0,
        "nothing was dead-lettered"
    );
    assert_eq!(
        h.status(&id).await,
        "PAID",
        "not marked ORDERED without its order"
    );
    h.cleanup().await;
}

/// Sets `default_transaction_read_only` for the test's database and makes every open
/// connection start again, so the function's next connection is read-only (or writable
/// again): a standby before its promotion answers 25006 to every write.
async fn read_only(h: &FunctionHarness, on: bool) {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres"))
        .await
        .unwrap();
    let setting = if on { "on" } else { "off" };
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_read_only = {setting}",
        h.iso.database
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&h.iso.database)
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_read_only_database_is_retryable_not_a_refusal() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = paid(&h, 1, showtime).await;
    let queue = h.queue(Queue::Orders);

    read_only(&h, true).await;
    let body = order(&id, 1);
    let first = flash_sale_test_support::eventually(
        std::time::Duration::from_secs(30),
        "an answer from the read-only database",
        || async {
            // The first use of a terminated connection may fail on its own; the one
            // after it meets the read-only database.
            match flash_sale_write_order::write_orders(&h.app, &[&body])
                .await
                .remove(0)
            {
                Err(QueueError::Retryable(why)) if why.contains("read-only") => Some(Ok(why)),
                Err(QueueError::Rejected(why)) => Some(Err(why)),
                _ => None,
            }
        },
    )
    .await;
    assert!(first.is_ok(), "dead-lettered as if refused: {first:?}");
    let failed = flash_sale_write_order::handle_event(&h.app, event(&queue, &[&body])).await;
    assert!(failed.is_err(), "the batch is redelivered");
    assert_eq!(h.dead_letters(Queue::Orders).await, 0);
    assert_eq!(h.status(&id).await, "PAID");

    read_only(&h, false).await;
    flash_sale_test_support::eventually(
        std::time::Duration::from_secs(30),
        "the redelivered order to land",
        || async {
            flash_sale_write_order::handle_event(&h.app, event(&queue, &[&body]))
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(h.status(&id).await, "ORDERED");
    h.cleanup().await;
}
