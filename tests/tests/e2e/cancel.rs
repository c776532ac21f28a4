//! `DELETE /reservations/{id}`: an owner releases a hold; its seat is on sale again at
//! once and comes back exactly once, whatever races the cancel.

use std::time::Duration;

use flash_sale_tests::{Options, TestApp, assert_error, eventually};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::json;

async fn held(app: &TestApp, user: i64, showtime: i64) -> String {
    let (status, body) = app.reserve(user, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reservation_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_owner_cancels_a_hold_and_the_seat_sells_again_at_once() {
    // Holds long enough that the steps before the last one's expiry all come first,
    // on a loaded machine too.
    let app = TestApp::spawn(Options {
        hold_secs: 4,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(1).await;
    let id = held(&app, 1, showtime).await;
    // The process now remembers the showtime as sold out.
    assert_eq!(app.reserve(2, showtime).await.1["error"], "sold_out");

    let (status, body) = app.cancel(&id, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    // Again: the same answer, no second seat.
    let (status, again) = app.cancel(&id, 1).await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("CANCELLED"))
    );
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    assert_error(&app.pay(&id, 1).await, StatusCode::CONFLICT, "cancelled");

    // On sale again at once, for the next buyer and for the one who cancelled.
    let next = held(&app, 2, showtime).await;
    assert_eq!(app.seats(showtime).await, (0, 1, 0));
    assert_eq!(app.cancel(&next, 2).await.0, StatusCode::OK);
    let last = held(&app, 1, showtime).await;

    // The expiries of the cancelled holds arrive (before the last hold's, which goes
    // through the same delay queue) and change nothing: one seat, on sale once.
    eventually(
        Duration::from_secs(30),
        "the last hold to expire",
        || async { (app.status_of(&last).await == "EXPIRED").then_some(()) },
    )
    .await;
    assert_eq!(app.status_of(&next).await, "CANCELLED");
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    assert_eq!(app.status_of(&id).await, "CANCELLED");
    app.finish().await;
}

#[tokio::test]
async fn a_cancel_is_refused_when_it_is_too_late_or_not_the_owners_and_changes_nothing() {
    // Long enough for the payment and the refused cancels to come before the expiry.
    let app = TestApp::spawn(Options {
        hold_secs: 4,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(5).await;
    let mine = held(&app, 1, showtime).await;
    let paid = held(&app, 2, showtime).await;
    assert_eq!(app.pay(&paid, 2).await.0, StatusCode::OK);
    let before = app.seats(showtime).await;

    assert_error(
        &app.cancel(&mine, 9).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.cancel(&paid, 2).await,
        StatusCode::CONFLICT,
        "already_paid",
    );
    assert_error(
        &app.cancel(&format!("{showtime}-1"), 1).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.cancel("not-an-id", 1).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let (status, _, body) = app
        .send(
            app.http
                .delete(app.url(&format!("/reservations/{mine}")))
                .body("{not json"),
            None,
        )
        .await;
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(app.seats(showtime).await, before);
    assert_eq!(app.status_of(&mine).await, "RESERVED");

    // Once expired, a cancel says so and gives nothing back a second time.
    eventually(Duration::from_secs(30), "the hold to expire", || async {
        (app.status_of(&mine).await == "EXPIRED").then_some(())
    })
    .await;
    assert_error(&app.cancel(&mine, 1).await, StatusCode::CONFLICT, "expired");
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!((available, held), (5 - sold, 0));
    app.finish().await;
}

#[tokio::test]
async fn with_tokens_only_the_owner_cancels() {
    let app = TestApp::spawn(Options {
        auth_mode: "jwt",
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime_as_admin(2).await;
    let (status, body) = app
        .post_as(&app.token(7), "/reserve", json!({"showtime_id": showtime}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["reservation_id"].as_str().unwrap();
    let delete = || app.http.delete(app.url(&format!("/reservations/{id}")));

    let (status, _, body) = app.send(delete(), None).await;
    assert_error(&(status, body), StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, _, body) = app.send(delete(), Some(&app.token(8))).await;
    assert_error(&(status, body), StatusCode::FORBIDDEN, "forbidden");
    let (status, _, body) = app
        .send(delete().json(&json!({"user_id": 8})), Some(&app.token(7)))
        .await;
    assert_error(&(status, body), StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.seats(showtime).await, (1, 1, 0));

    let (status, _, body) = app.send(delete(), Some(&app.token(7))).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("CANCELLED")),
        "{body}"
    );
    assert_eq!(app.seats(showtime).await, (2, 0, 0));
    app.finish().await;
}

/// Each of 60 holds is paid and cancelled at the same moment: exactly one of the two
/// succeeds, and the hold ends as that one says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_payment_ends_as_exactly_one_of_them() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(60).await;
    let mut ids = vec![];
    for user in 1..=60 {
        ids.push((user, held(&app, user, showtime).await));
    }
    let app_ref = &app;
    let outcomes: Vec<(String, StatusCode, StatusCode)> = futures::stream::iter(ids)
        .map(|(user, id)| async move {
            let (paid, cancelled) = tokio::join!(app_ref.pay(&id, user), app_ref.cancel(&id, user));
            (id, paid.0, cancelled.0)
        })
        .buffer_unordered(30)
        .collect()
        .await;
    let mut paid = 0;
    for (id, pay, cancel) in &outcomes {
        let status = app.status_of(id).await;
        match (*pay, *cancel) {
            (StatusCode::OK, StatusCode::CONFLICT) => {
                paid += 1;
                assert!(
                    matches!(status.as_str(), "PAID" | "ORDERED"),
                    "{id}: {status}"
                );
            }
            (StatusCode::CONFLICT, StatusCode::OK) => assert_eq!(status, "CANCELLED", "{id}"),
            other => panic!("{id}: pay and cancel answered {other:?}"),
        }
    }
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!((available, held, sold), (60 - paid, 0, paid));
    app.finish().await;
}

/// 1,000 buyers for 100 seats each reserve, cancel what they got and reserve again, all
/// at once: in the end every seat is held once or on sale, and the holds are exactly the
/// buyers whose last answer was a hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_buyers_reserving_cancelling_and_reserving_again_account_for_every_seat() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(100).await;
    let app_ref = &app;
    let last: Vec<Option<String>> = futures::stream::iter(1..=1000)
        .map(|user| async move {
            let (status, body) = app_ref.reserve(user, showtime).await;
            if status != StatusCode::OK {
                return None;
            }
            let id = body["reservation_id"].as_str().unwrap().to_string();
            let (status, body) = app_ref.cancel(&id, user).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let (status, body) = app_ref.reserve(user, showtime).await;
            (status == StatusCode::OK).then(|| body["reservation_id"].as_str().unwrap().to_string())
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let holding: Vec<String> = last.into_iter().flatten().collect();
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!(held as usize, holding.len());
    assert_eq!((available, sold), (100 - held, 0));
    for id in &holding {
        assert_eq!(app.status_of(id).await, "RESERVED", "{id}");
    }
    app.finish().await;
}
