//! Group reservations: a showtime allowing `max_per_user` seats per buyer sells a group
//! as one reservation (one id, one payment, one expiry, one order row carrying its
//! quantity), all or none, never past its seats; a default showtime (one per user)
//! behaves exactly as before.

use std::time::Duration;

use flash_sale_tests::{
    Options, TestApp, assert_error, eventually, one_user_pressing_buy_twenty_times, tally,
};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn group_showtime(app: &TestApp, capacity: u32, max_per_user: u32) -> i64 {
    let (status, body) = app
        .post(
            "/showtimes",
            json!({"capacity": capacity, "max_per_user": max_per_user}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["max_per_user"], max_per_user, "{body}");
    body["id"].as_i64().unwrap()
}

async fn reserve_seats(
    app: &TestApp,
    user: i64,
    showtime: i64,
    quantity: Value,
) -> (StatusCode, Value) {
    app.post(
        "/reserve",
        json!({"user_id": user, "showtime_id": showtime, "quantity": quantity}),
    )
    .await
}

/// Orders' rows, quantities summed, and the database's `sold`, for a showtime.
async fn recorded(app: &TestApp, showtime: i64) -> (i64, i64, i64) {
    let (rows, seats, sold): (i64, Option<i64>, i32) = sqlx::query_as(
        "SELECT count(*), sum(quantity), (SELECT sold FROM showtimes WHERE id = $1)
         FROM orders WHERE showtime_id = $1",
    )
    .bind(showtime)
    .fetch_one(&app.db)
    .await
    .unwrap();
    (rows, seats.unwrap_or(0), i64::from(sold))
}

#[tokio::test]
async fn a_group_of_four_is_held_paid_and_ordered_as_one_order_row() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = group_showtime(&app, 10, 4).await;

    let (status, r) = reserve_seats(&app, 7, showtime, json!(4)).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["quantity"], 4, "{r}");
    let id = r["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(app.seats(showtime).await, (6, 4, 0));
    let (_, view) = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(
        (view["quantity"].clone(), view["status"].clone()),
        (json!(4), json!("RESERVED"))
    );
    let (status, mine) = app.get("/me/reservations?user_id=7").await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["reservations"][0]["quantity"], 4, "{mine}");
    // One reservation per user and showtime: a second group of the same user is refused.
    let (status, again) = reserve_seats(&app, 7, showtime, json!(2)).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_ordered"))
    );
    assert_eq!(again["reservation_id"], id.as_str());
    assert_eq!(app.seats(showtime).await, (6, 4, 0));

    let (status, paid) = app.pay(&id, 7).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(app.seats(showtime).await, (6, 0, 4));
    eventually(Duration::from_secs(30), "the group's one order", || async {
        (app.status_of(&id).await == "ORDERED").then_some(())
    })
    .await;
    assert_eq!(
        recorded(&app, showtime).await,
        (1, 4, 4),
        "one row of 4 seats"
    );
    assert_eq!(app.seats(showtime).await, (6, 0, 4));
    let (status, shown) = app.get(&format!("/showtimes/{showtime}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["max_per_user"], 4, "{shown}");

    let (status, orders) = app.get(&format!("/showtimes/{showtime}/orders")).await;
    assert_eq!(status, StatusCode::OK, "{orders}");
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1, "{orders}");
    assert_eq!(orders["orders"][0]["quantity"], 4, "{orders}");
    assert_eq!(orders["orders"][0]["reservation_id"], id.as_str());
    let csv = app
        .http
        .get(app.url(&format!("/showtimes/{showtime}/orders")))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = header
        .iter()
        .position(|h| *h == "quantity")
        .expect("a quantity column");
    assert_eq!(row[at], "4", "{csv}");
    app.finish().await;
}

#[tokio::test]
async fn a_group_that_does_not_fit_or_is_too_big_is_refused_and_changes_nothing() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = group_showtime(&app, 5, 4).await;
    assert_eq!(
        reserve_seats(&app, 1, showtime, json!(3)).await.0,
        StatusCode::OK
    );
    let before = app.seats(showtime).await;
    assert_eq!(before, (2, 3, 0));

    let (status, body) = reserve_seats(&app, 2, showtime, json!(3)).await;
    assert_error(
        &(status, body.clone()),
        StatusCode::CONFLICT,
        "not_enough_seats",
    );
    assert_eq!(body["available"], 2, "{body}");
    let (status, body) = reserve_seats(&app, 2, showtime, json!(5)).await;
    assert_error(
        &(status, body.clone()),
        StatusCode::CONFLICT,
        "too_many_seats",
    );
    assert_eq!(body["max_per_user"], 4, "{body}");
    for bad in [json!(0), json!(-1), json!(1.5), json!("2"), json!(true)] {
        let answer = reserve_seats(&app, 2, showtime, bad.clone()).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(app.seats(showtime).await, before, "nothing changed");
    let holds: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(holds, 0);

    // The group that did not fit left no sold-out memory: the last two seats still go,
    // and only then is the showtime sold out.
    let (status, body) = reserve_seats(&app, 2, showtime, json!(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.seats(showtime).await, (0, 5, 0));
    assert_error(
        &reserve_seats(&app, 3, showtime, json!(1)).await,
        StatusCode::CONFLICT,
        "sold_out",
    );
    assert_error(
        &reserve_seats(&app, 3, showtime, json!(2)).await,
        StatusCode::CONFLICT,
        "sold_out",
    );
    app.finish().await;
}

#[tokio::test]
async fn a_default_showtime_allows_one_seat_per_user_exactly_as_before() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(5).await;
    let (_, shown) = app.get(&format!("/showtimes/{showtime}")).await;
    assert_eq!(shown["max_per_user"], 1, "{shown}");
    let (status, body) = reserve_seats(&app, 1, showtime, json!(2)).await;
    assert_error(
        &(status, body.clone()),
        StatusCode::CONFLICT,
        "too_many_seats",
    );
    assert_eq!(body["max_per_user"], 1);
    assert_eq!(app.seats(showtime).await, (5, 0, 0));
    let (status, r) = app.reserve(1, showtime).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["quantity"], 1);
    let (status, r) = reserve_seats(&app, 2, showtime, json!(1)).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(app.seats(showtime).await, (3, 2, 0));
    // max_per_user outside 1..=20 is a bad request, and creates nothing.
    let made = app.showtimes_in_db().await;
    for bad in [json!(0), json!(21), json!(-3), json!("4"), json!(2.5)] {
        let answer = app
            .post("/showtimes", json!({"capacity": 10, "max_per_user": bad}))
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(app.showtimes_in_db().await, made);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_pressing_buy_twenty_times_still_gets_one_hold() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    // The Go reference's scenario, on a default showtime.
    let showtime = app.create_showtime(10).await;
    one_user_pressing_buy_twenty_times(&app, showtime).await;
    // And on a group showtime, twenty presses for 3 seats: one hold of 3.
    let groups = group_showtime(&app, 10, 4).await;
    let answers: Vec<(StatusCode, Value)> = futures::stream::iter(0..20)
        .map(|_| reserve_seats(&app, 42, groups, json!(3)))
        .buffer_unordered(20)
        .collect()
        .await;
    let counts = tally(&answers);
    assert_eq!(counts.get(&(200, "ok".into())), Some(&1), "{counts:?}");
    assert_eq!(
        counts.get(&(409, "already_ordered".into())),
        Some(&19),
        "{counts:?}"
    );
    eventually(Duration::from_secs(30), "the one group order", || async {
        (recorded(&app, groups).await == (1, 3, 3)).then_some(())
    })
    .await;
    assert_eq!(app.seats(groups).await, (7, 0, 3));
    app.finish().await;
}

#[tokio::test]
async fn expiry_and_cancel_return_all_of_a_groups_seats_exactly_once() {
    // Long enough for both holds and the cancels to come before the other group expires.
    let app = TestApp::spawn(Options {
        hold_secs: 3,
        ..Options::default()
    })
    .await;
    let showtime = group_showtime(&app, 6, 3).await;
    let (_, a) = reserve_seats(&app, 1, showtime, json!(3)).await;
    let a = a["reservation_id"].as_str().unwrap().to_string();
    let (_, b) = reserve_seats(&app, 2, showtime, json!(3)).await;
    let b = b["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(app.seats(showtime).await, (0, 6, 0));
    // Sold out now; the cancel gives all three seats back at once, and only once.
    assert_error(
        &reserve_seats(&app, 3, showtime, json!(1)).await,
        StatusCode::CONFLICT,
        "sold_out",
    );
    assert_eq!(app.cancel(&a, 1).await.0, StatusCode::OK);
    assert_eq!(app.cancel(&a, 1).await.0, StatusCode::OK);
    assert_eq!(app.seats(showtime).await, (3, 3, 0));
    // The other group expires: its three seats come back once, however many expiries
    // (the delayed message, the sweep) reach it.
    eventually(Duration::from_secs(30), "the group to expire", || async {
        (app.status_of(&b).await == "EXPIRED").then_some(())
    })
    .await;
    assert_eq!(app.seats(showtime).await, (6, 0, 0));
    app.app.sale.sweep(Duration::ZERO).await.unwrap();
    let _ = app
        .app
        .sale
        .expire(flash_sale_core::Expiry {
            reservation: b.parse().unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(app.seats(showtime).await, (6, 0, 0));
    assert_eq!(app.pay(&b, 2).await.1["error"], "expired");
    assert_eq!(app.seats(showtime).await, (6, 0, 0));
    // Both users may hold again, the whole hall.
    assert_eq!(
        reserve_seats(&app, 1, showtime, json!(3)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        reserve_seats(&app, 2, showtime, json!(3)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.seats(showtime).await, (0, 6, 0));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_groups_never_oversells_and_ends_balanced() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    let showtime = group_showtime(&app, 100, 4).await;
    let asked = |user: i64| 1 + user % 4;
    let answers: Vec<(i64, (StatusCode, Value))> = futures::stream::iter(1..=300)
        .map(|user| {
            let app = &app;
            async move {
                (
                    user,
                    reserve_seats(app, user, showtime, json!(asked(user))).await,
                )
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut taken = 0;
    for (user, (status, body)) in &answers {
        match (status.as_u16(), body["error"].as_str()) {
            (200, _) => {
                assert_eq!(body["quantity"], asked(*user), "{body}");
                taken += asked(*user);
            }
            (409, Some("sold_out" | "not_enough_seats")) => {}
            other => panic!("unexpected answer {other:?}: {body}"),
        }
    }
    assert!(taken <= 100, "{taken} seats handed out of 100");
    // Every hold is paid by the mock payer (or expires); the counts settle balanced,
    // and the database's orders hold exactly the seats sold.
    eventually(
        Duration::from_secs(60),
        "every group to be paid and ordered",
        || async {
            let (_, held, sold) = app.seats(showtime).await;
            let (_, seats, db_sold) = recorded(&app, showtime).await;
            (held == 0 && seats == sold && db_sold == sold).then_some(())
        },
    )
    .await;
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!(available + held + sold, 100);
    assert!(sold <= 100);
    let (rows, seats, db_sold) = recorded(&app, showtime).await;
    assert_eq!((seats, db_sold), (sold, sold));
    let buyers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT user_id) FROM orders WHERE showtime_id = $1")
            .bind(showtime)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(buyers, rows, "one order per buyer");
    // With 750 seats asked for 100, the hall sells until no group fits.
    assert!(available < 4, "{available} seats left unsold");
    // What reconciliation sees agrees.
    let id = flash_sale_core::ShowtimeId::new(showtime).unwrap();
    let report = app.app.sale.reconcile(id, false).await.unwrap().unwrap();
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    app.finish().await;
}
