//! The `reserve` function as Lambda runs it: an API Gateway HTTP API (payload 2.0) event,
//! the function's own example in `events/`, parsed into a `lambda_http::Request` and sent
//! through the same router `main.rs` hands to `lambda_http::run`, on the real services.

use axum::http::StatusCode;
use flash_sale_test_support::FunctionHarness;
use flash_sale_test_support::api;
use flash_sale_test_support::api::at_path;
use serde_json::{Value, json};

/// `events/<file>`, changed by `patch`, as the `lambda_http::Request` Lambda would hand over.
fn request(file: &str, patch: impl FnOnce(&mut Value)) -> lambda_http::Request {
    api::request(env!("CARGO_MANIFEST_DIR"), file, patch)
}

async fn call(h: &FunctionHarness, request: lambda_http::Request) -> (StatusCode, Value) {
    api::call(flash_sale_reserve::router(h.app.clone()), request).await
}

#[tokio::test]
async fn the_example_events_reserve_a_seat_and_show_the_reservation() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;

    let (status, r) = call(
        &h,
        request("reserve.json", |e| {
            e["body"] = json!(json!({"user_id": 7, "showtime_id": showtime.get()}).to_string());
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let id = r["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(h.status(&id).await, "RESERVED");
    assert_eq!(h.counts(showtime).await.held, 1);

    let (status, r) = call(
        &h,
        request("show-reservation.json", |e| {
            at_path(e, &format!("/reservations/{id}"), &id)
        }),
    )
    .await;
    assert_eq!(
        (status, r["status"].as_str()),
        (StatusCode::OK, Some("RESERVED")),
        "{r}"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn a_malformed_body_is_a_400_and_takes_no_seat() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let before = h.counts(showtime).await;

    for body in [
        "not json",
        r#"{"user_id":"seven","showtime_id":1}"#,
        r#"{"user_id":7}"#,
    ] {
        let (status, r) = call(&h, request("reserve.json", |e| e["body"] = json!(body))).await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{r}"
        );
    }
    let (status, r) = call(
        &h,
        request("show-reservation.json", |e| {
            at_path(e, "/reservations/nope", "nope")
        }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{r}");
    assert_eq!(h.counts(showtime).await, before);
    h.cleanup().await;
}

#[tokio::test]
async fn redis_down_is_a_503_the_client_may_retry() {
    let (proxy, h) = FunctionHarness::behind_cuttable_redis().await;
    let showtime = h.showtime(2).await;

    proxy.cut().await;
    let (status, r) = call(
        &h,
        request("reserve.json", |e| {
            e["body"] = json!(json!({"user_id": 7, "showtime_id": showtime.get()}).to_string());
        }),
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{r}"
    );
    h.cleanup().await;
}
