//! The queue functions (and the scheduled reconcile) under `cargo lambda watch`, invoked
//! with the events Amazon MQ and EventBridge deliver, through `cargo lambda invoke`.

use std::time::Duration;

use flash_sale_runtime::queue::rabbit_event;
use flash_sale_test_support::process::workspace_root;
use flash_sale_test_support::watch::{bounded, skipped};
use flash_sale_test_support::{FunctionHarness, Isolation, Options, Watch, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{available, create_showtime, order_body, order_count, reserve, status_in_redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_functions_take_rabbitmq_events_through_cargo_lambda_invoke() {
    if skipped() {
        return;
    }
    let (iso, opts) = (Isolation::new(), Options::default());
    let h = FunctionHarness::connect(iso.clone(), &opts).await;
    let w = Watch::start(&iso, &opts).await;
    let expired_queue = h
        .adapters
        .bus
        .topology()
        .queue(flash_sale_adapters::Queue::Expiries);
    let orders_queue = h
        .adapters
        .bus
        .topology()
        .queue(flash_sale_adapters::Queue::Orders);
    bounded("the queue functions under watch", async {
        let showtime = create_showtime(&w, 3).await;
        let held = reserve(&w, 1, showtime).await;
        let paid = reserve(&w, 2, showtime).await;
        assert_eq!(available(&w, showtime).await, 1);

        // expire: the hold's expiry, as Amazon MQ would deliver it.
        let body = serde_json::to_vec(&json!({"reservation_id": held})).unwrap();
        let event = serde_json::to_value(rabbit_event(&expired_queue, &[body])).unwrap();
        w.cargo_lambda_invoke("expire", &event, &iso.prefix)
            .await
            .unwrap_or_else(|e| panic!("expire failed: {e}\n{}", w.process.tail()));
        assert_eq!(status_in_redis(&h, &held).await.as_deref(), Some("EXPIRED"));
        assert_eq!(available(&w, showtime).await, 2, "the seat is back on sale");
        // A redelivery of the same batch changes nothing.
        w.cargo_lambda_invoke("expire", &event, &iso.prefix)
            .await
            .unwrap();
        assert_eq!(available(&w, showtime).await, 2);

        // write-order: the paid reservation's order.
        let (status, p) = w
            .post(&format!("/reservations/{paid}/pay"), json!({"user_id": 2}))
            .await;
        assert_eq!(status, StatusCode::OK, "{p}");
        let event =
            serde_json::to_value(rabbit_event(&orders_queue, &[order_body(&paid, 2)])).unwrap();
        w.cargo_lambda_invoke("write-order", &event, &iso.prefix)
            .await
            .unwrap_or_else(|e| panic!("write-order failed: {e}\n{}", w.process.tail()));
        assert_eq!(
            order_count(&h, &paid).await,
            1,
            "the order is in PostgreSQL"
        );
        assert_eq!(status_in_redis(&h, &paid).await.as_deref(), Some("ORDERED"));
        w.cargo_lambda_invoke("write-order", &event, &iso.prefix)
            .await
            .unwrap();
        assert_eq!(
            order_count(&h, &paid).await,
            1,
            "a redelivery records nothing twice"
        );

        // Malformed messages: the invocation succeeds (nothing to retry), the messages go
        // to the dead-letter queue, and nothing else changes.
        let mut event = rabbit_event(&orders_queue, &[b"x".to_vec(), b"not json".to_vec()]);
        event.messages_by_queue.values_mut().next().unwrap()[0].data =
            Some("%%% not base64".into());
        let event = serde_json::to_value(event).unwrap();
        w.cargo_lambda_invoke("write-order", &event, &iso.prefix)
            .await
            .unwrap();
        let dlq = h
            .adapters
            .bus
            .topology()
            .dead_letter_queue(flash_sale_adapters::Queue::Orders);
        eventually(
            Duration::from_secs(10),
            "two dead-lettered orders",
            || async { (h.adapters.bus.ready_count(&dlq).await.unwrap() == 2).then_some(()) },
        )
        .await;
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(h.adapters.db.pool())
            .await
            .unwrap();
        assert_eq!(orders, 1);

        // reconcile, on its schedule: the scheduled event of its example.
        let scheduled: Value = serde_json::from_str(
            &std::fs::read_to_string(
                workspace_root().join("functions/reconcile/events/scheduled.json"),
            )
            .unwrap(),
        )
        .unwrap();
        w.cargo_lambda_invoke("reconcile", &scheduled, &iso.prefix)
            .await
            .unwrap_or_else(|e| panic!("reconcile failed: {e}\n{}", w.process.tail()));
        assert_eq!(order_count(&h, &paid).await, 1);
    })
    .await;
    drop(w);
    h.cleanup().await;
}
