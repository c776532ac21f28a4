//! Crash points at every step, and kill -9 of the real server in the middle of a sale:
//! whatever dies where, no seat is sold twice, no user gets two seats, every paid
//! reservation becomes exactly one order and every unpaid hold gives its seat back once.
//!
//! The in-process tests configure the `fail` crate's named points in `core` (compiled in
//! through the `failpoints` feature); `FailScenario` serializes them, since the points are
//! process-wide. The kill -9 test runs the server as a child process.

mod kill;

use std::time::Duration;

use fail::FailScenario;
use flash_sale_tests::{Options, TestApp, eventually};
use reqwest::StatusCode;

/// Sweeps every second with no grace: a hold past its deadline, or a payment whose
/// order never came, is picked up at once.
fn sweeping(hold_secs: u64) -> Options {
    Options {
        hold_secs,
        sweep_interval_secs: 1,
        sweep_grace_secs: 0,
        ..Options::default()
    }
}

async fn settles_to(app: &TestApp, showtime: i64, seats: (i64, i64, i64)) {
    eventually(
        Duration::from_secs(30),
        &format!("seats to settle at {seats:?}"),
        || async { (app.seats(showtime).await == seats).then_some(()) },
    )
    .await;
}

/// A reserve whose server may die mid-request: `None` when no answer came.
async fn try_reserve(app: &TestApp, user: i64, showtime: i64) -> Option<StatusCode> {
    let res = app
        .http
        .post(app.url("/reserve"))
        .json(&serde_json::json!({"user_id": user, "showtime_id": showtime}))
        .send()
        .await
        .ok()?;
    Some(res.status())
}

#[tokio::test]
async fn a_crash_between_the_take_and_the_publish_leaks_no_seat() {
    let scenario = FailScenario::setup();
    let app = TestApp::spawn(sweeping(1)).await;
    let showtime = app.create_showtime(2).await;
    for (action, expected) in [
        ("1*return", StatusCode::SERVICE_UNAVAILABLE),
        // A panicking handler answers a JSON 500; the server carries on.
        ("1*panic", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        fail::cfg("reserve.after_take", action).unwrap();
        assert_eq!(
            try_reserve(&app, 1, showtime).await,
            Some(expected),
            "{action}"
        );
        // The seat is held by a hold nobody will hear of: no expiry was published.
        assert_eq!(app.seats(showtime).await.1, 1, "{action}");
        // The sweep finds it past its deadline and gives the seat back.
        settles_to(&app, showtime, (2, 0, 0)).await;
    }
    assert_eq!(
        app.reserve(1, showtime).await.0,
        StatusCode::OK,
        "the user may try again"
    );
    app.finish().await;
    scenario.teardown();
}

#[tokio::test]
async fn a_crash_after_the_publish_is_undone_by_the_delayed_expiry() {
    let scenario = FailScenario::setup();
    // No sweep: this hold must come back through the delay queue alone.
    let app = TestApp::spawn(Options {
        hold_secs: 1,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(1).await;
    fail::cfg("reserve.after_publish", "1*return").unwrap();
    assert_eq!(
        try_reserve(&app, 1, showtime).await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    settles_to(&app, showtime, (1, 0, 0)).await;
    app.finish().await;
    scenario.teardown();
}

#[tokio::test]
async fn a_crash_between_payment_and_order_publish_still_ends_as_one_order() {
    let scenario = FailScenario::setup();
    let app = TestApp::spawn(sweeping(30)).await;
    let showtime = app.create_showtime(1).await;
    let (_, body) = app.reserve(1, showtime).await;
    let id = body["reservation_id"].as_str().unwrap().to_string();
    fail::cfg("pay.after_pay", "1*return").unwrap();
    assert_eq!(app.pay(&id, 1).await.0, StatusCode::SERVICE_UNAVAILABLE);
    // The payment stands; the order message was never sent; the sweep re-sends it.
    eventually(Duration::from_secs(30), "the order", || async {
        (app.orders(showtime).await == 1 && app.status_of(&id).await == "ORDERED").then_some(())
    })
    .await;
    assert_eq!(app.seats(showtime).await, (0, 0, 1));
    app.finish().await;
    scenario.teardown();
}

#[tokio::test]
async fn a_crash_after_the_order_commit_before_the_ack_writes_no_second_row() {
    let scenario = FailScenario::setup();
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(3).await;
    for (user, point, action) in [
        (1, "write_order.after_commit", "1*return"),
        (2, "write_order.after_commit", "1*panic"),
        (3, "write_order.before_ack", "1*panic"),
    ] {
        let (_, body) = app.reserve(user, showtime).await;
        let id = body["reservation_id"].as_str().unwrap().to_string();
        fail::cfg(point, action).unwrap();
        assert_eq!(app.pay(&id, user).await.0, StatusCode::OK);
        eventually(
            Duration::from_secs(30),
            &format!("{id} ordered after {point}={action}"),
            || async { (app.status_of(&id).await == "ORDERED").then_some(()) },
        )
        .await;
        assert_eq!(
            app.orders(showtime).await,
            user,
            "one row per paid reservation"
        );
    }
    let sold: i32 = sqlx::query_scalar("SELECT sold FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sold, 3);
    app.finish().await;
    scenario.teardown();
}

#[tokio::test]
async fn a_crash_after_the_expiry_before_the_ack_returns_the_seat_once() {
    let scenario = FailScenario::setup();
    let app = TestApp::spawn(Options {
        hold_secs: 1,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(2).await;
    for (user, action) in [(1, "1*return"), (2, "1*panic")] {
        fail::cfg("expire.after_expire", action).unwrap();
        let (_, body) = app.reserve(user, showtime).await;
        let id = body["reservation_id"].as_str().unwrap().to_string();
        eventually(Duration::from_secs(30), "the expiry", || async {
            (app.status_of(&id).await == "EXPIRED").then_some(())
        })
        .await;
        // The redelivered expiry finds it EXPIRED and changes nothing.
        app.until_drained(flash_sale_adapters::Queue::Expiries)
            .await;
        settles_to(&app, showtime, (2, 0, 0)).await;
    }
    app.finish().await;
    scenario.teardown();
}

/// A reservation that read "sold out" just before this process gave a seat back must not
/// leave the process remembering "sold out" while the seat is free. The crash point
/// between the store's answer and the memory's write holds the request there while the
/// seat comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sold_out_answer_read_before_a_seat_came_back_is_not_remembered() {
    use std::sync::{Mutex, mpsc};

    let scenario = FailScenario::setup();
    let app = TestApp::spawn(Options {
        sold_out_cache_ms: Some(60_000),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(1).await;
    let (status, body) = app.reserve(1, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let held: flash_sale_core::ReservationId =
        body["reservation_id"].as_str().unwrap().parse().unwrap();

    let (reached, at_point) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let (reached, released) = (Mutex::new(reached), Mutex::new(released));
    fail::cfg_callback("reserve.before_remembering_sold_out", move || {
        let _ = reached.lock().unwrap().send(());
        let _ = released
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30));
    })
    .unwrap();
    let late = {
        let (http, url) = (app.http.clone(), app.url("/reserve"));
        tokio::spawn(async move {
            http.post(url)
                .json(&serde_json::json!({"user_id": 2, "showtime_id": showtime}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::task::spawn_blocking(move || at_point.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the second buyer reached the sold-out memory");

    // The first hold expires in this process while the second buyer's "sold out" waits.
    let body =
        flash_sale_adapters::wire::encode_expiry(&flash_sale_core::Expiry { reservation: held });
    let outcomes = flash_sale_expire::expire(&app.app, &body).await.unwrap();
    assert_eq!(
        outcomes,
        [flash_sale_core::ports::ExpireOutcome::SeatReturned]
    );
    release.send(()).unwrap();
    assert_eq!(
        late.await.unwrap(),
        StatusCode::CONFLICT,
        "it read sold out"
    );
    fail::remove("reserve.before_remembering_sold_out");

    let (status, body) = app.reserve(3, showtime).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a seat is free, but the process remembered sold out: {body}"
    );
    app.finish().await;
    scenario.teardown();
}

/// `reconcile --repair` racing an operator's change: the change has put 50 more seats
/// on sale in Redis and has not written its row yet (held there by a crash point), so
/// the repair finds Redis's capacity and the database's apart. It rebuilds from the
/// row, which it reads under the row's lock, only once the change has written it: the
/// seats added are never undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_racing_an_operators_change_never_undoes_it() {
    let scenario = FailScenario::setup();
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(100).await;
    let id = flash_sale_core::ShowtimeId::new(showtime).unwrap();
    fail::cfg("change.before_commit", "1*sleep(1500)").unwrap();
    let change = app.change_showtime(showtime, serde_json::json!({"add_seats": 50}), None);
    let repair = async {
        eventually(
            Duration::from_secs(10),
            "the change to put its seats on sale in Redis",
            || async { (app.seats(showtime).await.0 == 150).then_some(()) },
        )
        .await;
        flash_sale_reconcile::run(&app.app, Some(id), true, Duration::from_secs(3600))
            .await
            .unwrap()
    };
    let ((status, body), report) = tokio::join!(change, repair);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["capacity"], 150, "{body}");
    let capacity: i32 = sqlx::query_scalar("SELECT capacity FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(capacity, 150);
    assert_eq!(app.seats(showtime).await, (150, 0, 0), "{report:?}");
    let after = flash_sale_reconcile::run(&app.app, Some(id), false, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(after.is_clean(), "{after:?}");
    app.finish().await;
    scenario.teardown();
}
