//! `GET /me/reservations`: a buyer's reservations across showtimes, newest first, a page
//! at a time, each as it is now.

use flash_sale_tests::{Options, TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn held(app: &TestApp, user: i64, showtime: i64) -> String {
    let (status, body) = app.reserve(user, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reservation_id"].as_str().unwrap().to_string()
}

fn ids_and_statuses(page: &Value) -> Vec<(String, String)> {
    page["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_buyer_lists_their_reservations_across_showtimes_newest_first_in_pages() {
    let app = TestApp::spawn(Options::default()).await;
    let mut showtimes = vec![];
    for _ in 0..3 {
        showtimes.push(app.create_showtime(5).await);
    }
    let first = held(&app, 7, showtimes[0]).await;
    let second = held(&app, 7, showtimes[1]).await;
    let third = held(&app, 7, showtimes[2]).await;
    held(&app, 8, showtimes[0]).await;
    assert_eq!(app.pay(&second, 7).await.0, StatusCode::OK);
    assert_eq!(app.cancel(&third, 7).await.0, StatusCode::OK);

    let (status, page) = app.get("/me/reservations?user_id=7&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = ids_and_statuses(&page);
    assert_eq!(listed[0], (third.clone(), "CANCELLED".into()));
    assert_eq!(listed[1].0, second);
    assert!(matches!(listed[1].1.as_str(), "PAID" | "ORDERED"), "{page}");
    let cursor = page["next_cursor"].as_str().expect("a next page");

    let (status, page) = app
        .get(&format!(
            "/me/reservations?user_id=7&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids_and_statuses(&page), vec![(first, "RESERVED".into())]);
    assert_eq!(page["next_cursor"], Value::Null);

    // Another buyer sees only their own.
    let (_, page) = app.get("/me/reservations?user_id=8").await;
    assert_eq!(ids_and_statuses(&page).len(), 1);
    // Nobody's list is empty, not an error.
    let (status, page) = app.get("/me/reservations?user_id=9").await;
    assert_eq!(
        (status, page),
        (
            StatusCode::OK,
            json!({"reservations": [], "next_cursor": null})
        )
    );
    app.finish().await;
}

#[tokio::test]
async fn a_bad_page_request_is_a_400() {
    let app = TestApp::spawn(Options::default()).await;
    for query in [
        "user_id=7&limit=0",
        "user_id=7&limit=101",
        "user_id=7&limit=x",
        "user_id=7&cursor=abc",
        "user_id=0",
        "user_id=seven",
        "",
    ] {
        assert_error(
            &app.get(&format!("/me/reservations?{query}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn with_tokens_a_buyer_lists_only_their_own() {
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

    let (status, page) = app.get_as(&app.token(7), "/me/reservations").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["reservations"][0]["id"], body["reservation_id"]);
    assert_error(
        &app.get_as(&app.token(7), "/me/reservations?user_id=8")
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.get("/me/reservations").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    app.finish().await;
}
