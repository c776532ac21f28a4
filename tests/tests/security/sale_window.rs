//! Sale windows: a reservation before the sale opens, or after it closes, is refused
//! before any seat is touched.

use chrono::{Duration, SecondsFormat, Utc};
use flash_sale_tests::{Options, TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::json;

use crate::{showtime, untouched};

fn at(offset: Duration) -> String {
    (Utc::now() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[tokio::test]
async fn a_reservation_before_the_sale_opens_is_refused_and_takes_no_seat() {
    let app = TestApp::spawn(Options::default()).await;
    let opens = at(Duration::hours(1));
    let st = showtime(
        &app,
        json!({"capacity": 5, "title": "Premiere", "sale_opens_at": opens}),
    )
    .await;
    for user in 1..=20 {
        assert_error(
            &app.reserve(user, st).await,
            StatusCode::CONFLICT,
            "sale_not_open",
        );
    }
    untouched(&app, st, 5).await;
    let (_, view) = app.get(&format!("/showtimes/{st}")).await;
    assert!(view["sale_opens_at"].as_str().is_some(), "{view}");
    assert!(view["sale_closes_at"].is_null(), "{view}");
    app.finish().await;
}

#[tokio::test]
async fn a_reservation_after_the_sale_closes_is_refused_and_takes_no_seat() {
    let app = TestApp::spawn(Options::default()).await;
    let st = showtime(
        &app,
        json!({
            "capacity": 5,
            "sale_opens_at": at(Duration::hours(-2)),
            "sale_closes_at": at(Duration::hours(-1)),
        }),
    )
    .await;
    assert_error(
        &app.reserve(1, st).await,
        StatusCode::CONFLICT,
        "sale_closed",
    );
    untouched(&app, st, 5).await;
    app.finish().await;
}

#[tokio::test]
async fn inside_the_window_the_sale_goes_on_as_usual() {
    let app = TestApp::spawn(Options::default()).await;
    let st = showtime(
        &app,
        json!({
            "capacity": 1,
            "sale_opens_at": at(Duration::minutes(-1)),
            "sale_closes_at": at(Duration::hours(1)),
        }),
    )
    .await;
    assert_eq!(app.reserve(1, st).await.0, StatusCode::OK);
    assert_error(&app.reserve(2, st).await, StatusCode::CONFLICT, "sold_out");
    app.finish().await;
}

#[tokio::test]
async fn a_window_that_closes_before_it_opens_or_is_no_time_is_a_400() {
    let app = TestApp::spawn(Options::default()).await;
    for body in [
        json!({"capacity": 5, "sale_opens_at": at(Duration::hours(2)), "sale_closes_at": at(Duration::hours(1))}),
        json!({"capacity": 5, "sale_opens_at": "tomorrow"}),
        json!({"capacity": 5, "sale_closes_at": 12}),
    ] {
        assert_error(
            &app.post("/showtimes", body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert_eq!(app.showtimes_in_db().await, 0);
    app.finish().await;
}
