//! Recovery from lost state: Redis losing a sale's keys, and reconciliation.

use std::collections::HashSet;
use std::time::Duration;

use flash_sale_core::ports::MessageBus;
use flash_sale_tests::{Options, TestApp, eventually};
use futures::StreamExt;
use reqwest::StatusCode;

async fn lose_redis_data(app: &TestApp) {
    // What a Redis restart without persistence does, to this test's keys only (a
    // FLUSHALL would wipe the tests running beside it).
    let mut conn = app.adapters.seats.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", app.iso.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

async fn buy(app: &TestApp, user: i64, showtime: i64) -> bool {
    let (status, body) = app.reserve(user, showtime).await;
    if status != StatusCode::OK {
        return false;
    }
    let id = body["reservation_id"].as_str().unwrap();
    app.pay(id, user).await.0 == StatusCode::OK
}

#[tokio::test]
async fn a_consistent_sale_reconciles_clean_while_in_flight() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(5).await;
    app.reserve(1, showtime).await;
    assert!(buy(&app, 2, showtime).await);
    let report = flash_sale_reconcile::run(&app.app, None, false, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    let s = &report.showtimes[0];
    assert_eq!((s.live_holds, s.capacity), (1, 5));
    assert_eq!(s.orders_in_database + s.paid_in_flight, 1);
    app.finish().await;
}

#[tokio::test]
async fn losing_redis_mid_sale_is_rebuilt_from_the_database_and_never_oversells() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(10).await;
    for user in 1..=4 {
        assert!(buy(&app, user, showtime).await);
    }
    eventually(Duration::from_secs(30), "four orders", || async {
        (app.orders(showtime).await == 4).then_some(())
    })
    .await;

    lose_redis_data(&app).await;
    let report = flash_sale_reconcile::run(&app.app, None, false, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        report.showtimes[0].discrepancies,
        vec!["Redis has no stock for this showtime"]
    );

    // The next request notices, reloads the stock from PostgreSQL (capacity - orders) and
    // only then serves; the showtime reads the same.
    assert_eq!(app.seats(showtime).await, (6, 0, 4));

    // A crowd, including the four who already bought (Redis forgot them), buys the rest.
    let app_ref = &app;
    let bought: Vec<(i64, bool)> = futures::stream::iter(1..=30)
        .map(|user| async move { (user, buy(app_ref, user, showtime).await) })
        .buffer_unordered(10)
        .collect()
        .await;
    let rebought = bought.iter().filter(|(u, b)| *b && *u <= 4).count() as i64;
    let newcomers = bought.iter().filter(|(u, b)| *b && *u > 4).count() as i64;
    assert_eq!(
        rebought + newcomers,
        6,
        "Redis sold exactly the six seats it had"
    );

    // The database has the last word: a buyer Redis forgot may pay twice, but that second
    // order is refused (one order per user and showtime) and dead-lettered for a person.
    let dlq = app
        .adapters
        .bus
        .topology()
        .dead_letter_queue(flash_sale_adapters::Queue::Orders);
    eventually(
        Duration::from_secs(30),
        "every order recorded or refused",
        || async {
            let refused = i64::from(app.adapters.bus.ready_count(&dlq).await.unwrap());
            (app.orders(showtime).await == 4 + newcomers && refused == rebought).then_some(())
        },
    )
    .await;
    let rows: Vec<i64> = sqlx::query_scalar("SELECT user_id FROM orders WHERE showtime_id = $1")
        .bind(showtime)
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(rows.len() <= 10);
    assert_eq!(
        rows.iter().collect::<HashSet<_>>().len(),
        rows.len(),
        "no user twice"
    );

    // After a repair, Redis agrees with the database; what is left is a person's: the
    // refused payments, each REFUSED with its seat back on sale, awaiting a refund.
    flash_sale_reconcile::run(&app.app, None, true, Duration::from_secs(3600))
        .await
        .unwrap();
    let after = flash_sale_reconcile::run(&app.app, None, false, Duration::from_secs(3600))
        .await
        .unwrap();
    let s = &after.showtimes[0];
    assert_eq!(i64::from(s.refused_awaiting_refund), rebought, "{after:?}");
    assert!(
        s.discrepancies.iter().all(|d| d.contains("await a refund")),
        "{after:?}"
    );
    let seats = s.redis.as_ref().unwrap();
    assert_eq!(
        (seats.sold, seats.held, seats.available),
        (rows.len() as u32, 0, 10 - rows.len() as u32),
        "Redis agrees with the database"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_dead_lettered_order_is_replayed_once_its_cause_is_fixed() {
    let app = TestApp::spawn(Options::default()).await;
    let first = app.create_showtime(1).await;
    // An order for a showtime the database does not have yet: refused, dead-lettered.
    let order = flash_sale_core::OrderRequest {
        reservation: format!("{}-1", first + 1).parse().unwrap(),
        user: flash_sale_core::UserId::new(5).unwrap(),
        paid_at: flash_sale_core::UnixMillis(1_764_000_000_000),
        quantity: 1,
    };
    let bus = &app.adapters.bus;
    bus.publish_orders(&[order]).await.unwrap();
    let dlq = bus
        .topology()
        .dead_letter_queue(flash_sale_adapters::Queue::Orders);
    eventually(
        Duration::from_secs(30),
        "the refused order in the dead-letter queue",
        || async { (bus.ready_count(&dlq).await.unwrap() == 1).then_some(()) },
    )
    .await;

    // The cause is fixed (the showtime now exists); replay moves it back and it lands.
    let second = app.create_showtime(1).await;
    assert_eq!(second, first + 1);
    assert_eq!(
        bus.replay_dead_letters(flash_sale_adapters::Queue::Orders, 100)
            .await
            .unwrap(),
        1
    );
    eventually(Duration::from_secs(30), "the replayed order", || async {
        (app.orders(second).await == 1).then_some(())
    })
    .await;
    assert_eq!(bus.ready_count(&dlq).await.unwrap(), 0);
    app.finish().await;
}
