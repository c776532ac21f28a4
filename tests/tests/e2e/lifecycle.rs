//! A reservation's life beyond the happy path: expiry, late payment, redelivery, a
//! broker that refuses a message, a restart.

use std::time::Duration;

use flash_sale_adapters::wire;
use flash_sale_core::ports::ExpireOutcome;
use flash_sale_core::{OrderRequest, ReservationId, Status, UnixMillis, UserId};
use flash_sale_tests::{Options, TestApp, eventually};
use reqwest::StatusCode;

fn short_holds() -> Options {
    Options {
        hold_secs: 1,
        ..Options::default()
    }
}

async fn reserved_id(app: &TestApp, user: i64, showtime: i64) -> String {
    let (status, body) = app.reserve(user, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "RESERVED");
    body["reservation_id"].as_str().unwrap().to_string()
}

async fn until_status(app: &TestApp, id: &str, wanted: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("{id} to become {wanted}"),
        || async { (app.status_of(id).await == wanted).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_unpaid_hold_expires_and_its_seat_can_be_reserved_again() {
    let app = TestApp::spawn(short_holds()).await;
    let showtime = app.create_showtime(1).await;
    let first = reserved_id(&app, 1, showtime).await;
    let (status, body) = app.reserve(2, showtime).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("sold_out"))
    );

    // The delay queue dead-letters the hold after 1 s; the expiry consumer returns the
    // seat. (The sweep is configured not to run, so this is the queue's doing.)
    until_status(&app, &first, "EXPIRED").await;
    assert_eq!(app.seats(showtime).await, (1, 0, 0));

    // The same user may try again: the expired hold no longer counts against them.
    let again = reserved_id(&app, 1, showtime).await;
    assert_ne!(again, first);
    assert_eq!(app.seats(showtime).await, (0, 1, 0));
    app.finish().await;
}

#[tokio::test]
async fn paying_after_the_hold_expired_is_refused() {
    let app = TestApp::spawn(short_holds()).await;
    let showtime = app.create_showtime(1).await;
    let id = reserved_id(&app, 1, showtime).await;
    until_status(&app, &id, "EXPIRED").await;

    let (status, body) = app.pay(&id, 1).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("expired"))
    );
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    assert_eq!(app.orders(showtime).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_paid_reservations_expiry_changes_nothing() {
    let app = TestApp::spawn(short_holds()).await;
    let showtime = app.create_showtime(2).await;
    let id = reserved_id(&app, 1, showtime).await;
    let (status, body) = app.pay(&id, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "PAID");
    until_status(&app, &id, "ORDERED").await;

    // The hold's own expiry message comes through the delay queue after 1 s and must be
    // acknowledged without effect (the Go reference requeued it forever). Deliver one
    // more, as a redelivery would, straight to the handler.
    let reservation: ReservationId = id.parse().unwrap();
    let body = wire::encode_expiry(&flash_sale_core::Expiry { reservation });
    let outcomes = flash_sale_expire::expire(&app.app, &body).await.unwrap();
    assert_eq!(outcomes, [ExpireOutcome::AlreadySettled(Status::Ordered)]);
    let delay_queue = app.adapters.bus.topology().delay_queue();
    eventually(
        Duration::from_secs(30),
        "the delay queue to hand over the expiry",
        || async { (app.adapters.bus.ready_count(&delay_queue).await.unwrap() == 0).then_some(()) },
    )
    .await;
    app.until_drained(flash_sale_adapters::Queue::Expiries)
        .await;

    assert_eq!(app.status_of(&id).await, "ORDERED");
    assert_eq!(app.seats(showtime).await, (1, 0, 1));
    assert_eq!(app.orders(showtime).await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_redelivered_order_message_makes_no_second_row() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(3).await;
    let first = reserved_id(&app, 1, showtime).await;
    app.pay(&first, 1).await;
    until_status(&app, &first, "ORDERED").await;

    // Redeliver the first order twice through the queue, then pay a second reservation
    // whose order queues behind them: once it is in, the redeliveries were consumed.
    let paid_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT paid_at FROM orders WHERE reservation_id = $1")
            .bind(&first)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let again = OrderRequest {
        reservation: first.parse().unwrap(),
        user: UserId::new(1).unwrap(),
        paid_at: UnixMillis(paid_at.timestamp_millis() as u64),
        quantity: 1,
    };
    let body = wire::encode_order(&again);
    app.adapters
        .bus
        .publish(&[("orders", body.clone()), ("orders", body.clone())])
        .await
        .unwrap();
    let second = reserved_id(&app, 2, showtime).await;
    app.pay(&second, 2).await;
    until_status(&app, &second, "ORDERED").await;

    // And once more straight through the handler.
    let results = flash_sale_write_order::write_orders(&app.app, &[&body]).await;
    assert!(results.iter().all(Result::is_ok));

    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reservation_id, user_id FROM orders WHERE showtime_id = $1 ORDER BY reservation_id",
    )
    .bind(showtime)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows, vec![(first, 1), (second, 2)]);
    assert_eq!(app.seats(showtime).await, (1, 0, 2));
    let recorded: i32 = sqlx::query_scalar("SELECT sold FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, 2);
    app.finish().await;
}

/// A hold whose expiry the broker returns (its delay queue deleted under the live
/// connections, by hand or by a broker's policy) gives its seat back before the 503. The
/// returned expiry declares the delay queue again: it has no consumer for the broker to
/// cancel and none declares it, so before, every reserve failed 503 until a restart. The
/// retry holds, nobody else declaring anything.
#[tokio::test]
async fn a_failed_publish_leaks_no_seat() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(1).await;
    app.break_expiry_queue().await;

    let (status, body) = app.reserve(1, showtime).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{body}"
    );
    assert_eq!(app.seats(showtime).await, (1, 0, 0), "the seat went back");

    let id = reserved_id(&app, 1, showtime).await;
    assert_eq!(app.seats(showtime).await, (0, 1, 0));
    // Its expiry waits in the delay queue declared again, as any other.
    let bus = &app.adapters.bus;
    let ch = bus.channel().await.unwrap();
    let waiting = ch
        .queue_declare(
            bus.topology().delay_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("the delay queue is there");
    assert_eq!(waiting.message_count(), 1, "{id}'s expiry");
    app.finish().await;
}

#[tokio::test]
async fn the_sweep_returns_a_hold_whose_expiry_message_was_lost() {
    let app = TestApp::spawn(Options {
        hold_secs: 1,
        sweep_interval_secs: 1,
        sweep_grace_secs: 0,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(1).await;
    let bus = &app.adapters.bus;
    let ch = bus.channel().await.unwrap();
    let id = reserved_id(&app, 1, showtime).await;
    // Lose the expiry message, as a crash between the take and the publish would.
    ch.queue_purge(
        bus.topology().delay_queue().as_str().into(),
        Default::default(),
    )
    .await
    .unwrap();

    until_status(&app, &id, "EXPIRED").await;
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    app.finish().await;
}

#[tokio::test]
async fn a_restart_keeps_every_live_hold() {
    let mut app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(5).await;
    let held = reserved_id(&app, 1, showtime).await;
    let paid = reserved_id(&app, 2, showtime).await;
    app.pay(&paid, 2).await;
    until_status(&app, &paid, "ORDERED").await;
    app.stop().await;

    let restarted = TestApp::spawn_on(app.iso.clone(), app.opts.clone()).await;
    assert_eq!(restarted.status_of(&held).await, "RESERVED");
    assert_eq!(restarted.seats(showtime).await, (3, 1, 1));
    let (status, body) = restarted.reserve(1, showtime).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_ordered"))
    );
    drop(app);
    restarted.finish().await;
}

#[tokio::test]
async fn a_message_that_can_never_succeed_is_dead_lettered_not_looped() {
    let app = TestApp::spawn(Options::default()).await;
    let bus = &app.adapters.bus;
    bus.publish(&[
        ("orders", b"{not an order".to_vec()),
        ("expiries", b"[]".to_vec()),
    ])
    .await
    .unwrap();
    for q in [
        flash_sale_adapters::Queue::Orders,
        flash_sale_adapters::Queue::Expiries,
    ] {
        let dlq = bus.topology().dead_letter_queue(q);
        eventually(
            Duration::from_secs(30),
            &format!("the poison message in {dlq}"),
            || async { (bus.ready_count(&dlq).await.unwrap() == 1).then_some(()) },
        )
        .await;
    }
    app.finish().await;
}

#[tokio::test]
async fn the_expire_handler_returns_a_seat_exactly_once_under_concurrent_redelivery() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(1).await;
    let id = reserved_id(&app, 1, showtime).await;
    let body = wire::encode_expiry(&flash_sale_core::Expiry {
        reservation: id.parse().unwrap(),
    });
    let outcomes =
        futures::future::join_all((0..20).map(|_| flash_sale_expire::expire(&app.app, &body)))
            .await;
    let returned = outcomes
        .iter()
        .filter(|o| matches!(o.as_deref(), Ok([ExpireOutcome::SeatReturned])))
        .count();
    assert_eq!(returned, 1);
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    app.finish().await;
}

#[tokio::test]
async fn the_lambda_mock_payer_pays_a_batch_and_dead_letters_what_it_cannot_read() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let id = reserved_id(&app, 1, showtime).await;
    let request = flash_sale_core::PaymentRequest {
        reservation: id.parse().unwrap(),
        user: UserId::new(1).unwrap(),
    };
    let queue = app
        .adapters
        .bus
        .topology()
        .queue(flash_sale_adapters::Queue::Payments);
    let event = flash_sale_runtime::queue::rabbit_event(
        &queue,
        &[wire::encode_payment(&request), b"not a payment".to_vec()],
    );
    flash_sale_pay::handle_payment_event(
        &app.app,
        lambda_runtime::LambdaEvent::new(event, lambda_runtime::Context::default()),
    )
    .await
    .unwrap();

    assert_ne!(app.status_of(&id).await, "RESERVED", "the hold was paid");
    let dlq = app
        .adapters
        .bus
        .topology()
        .dead_letter_queue(flash_sale_adapters::Queue::Payments);
    eventually(
        Duration::from_secs(10),
        "the unreadable request in the dead-letter queue",
        || async { (app.adapters.bus.ready_count(&dlq).await.unwrap() == 1).then_some(()) },
    )
    .await;
    until_status(&app, &id, "ORDERED").await;
    app.finish().await;
}

/// A client whose first answer was lost presses again: the 409 `already_ordered` names
/// the reservation it made and its status, and the client goes on with it (pays it).
#[tokio::test]
async fn already_ordered_names_the_callers_reservation_and_its_status() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(3).await;
    let id = reserved_id(&app, 7, showtime).await;

    let (status, again) = app.reserve(7, showtime).await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"], "already_ordered");
    assert_eq!(again["reservation_id"], id.as_str());
    assert_eq!(again["status"], "RESERVED");

    let (status, paid) = app.pay(again["reservation_id"].as_str().unwrap(), 7).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    let (_, after) = app.reserve(7, showtime).await;
    assert_eq!(after["reservation_id"], id.as_str());
    assert!(
        matches!(after["status"].as_str(), Some("PAID" | "ORDERED")),
        "{after}"
    );
    // Other refusals carry no such fields.
    let one = app.create_showtime(1).await;
    reserved_id(&app, 9, one).await;
    let (_, sold_out) = app.reserve(8, one).await;
    assert_eq!(sold_out["error"], "sold_out");
    assert!(sold_out.get("reservation_id").is_none(), "{sold_out}");
    app.finish().await;
}
