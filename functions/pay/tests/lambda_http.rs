//! The `pay` function as Lambda runs it: its example API Gateway HTTP API event parsed
//! into a `lambda_http::Request` and sent through the router `main.rs` hands to
//! `lambda_http::run`, on the real services.

use axum::http::StatusCode;
use flash_sale_test_support::FunctionHarness;
use flash_sale_test_support::api;
use serde_json::{Value, json};

/// `events/pay.json` for reservation `id`, with `body`.
fn pay_request(id: &str, body: &str) -> lambda_http::Request {
    api::request(env!("CARGO_MANIFEST_DIR"), "pay.json", |event| {
        api::at_path(event, &format!("/reservations/{id}/pay"), id);
        event["body"] = json!(body);
    })
}

async fn call(h: &FunctionHarness, request: lambda_http::Request) -> (StatusCode, Value) {
    api::call(flash_sale_pay::router(h.app.clone()), request).await
}

#[tokio::test]
async fn the_example_event_pays_a_hold() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(7, showtime).await;

    let (status, p) = call(&h, pay_request(&id, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["status"].as_str()),
        (StatusCode::OK, Some("PAID")),
        "{p}"
    );
    assert_eq!(h.status(&id).await, "PAID");
    let (status, p) = call(&h, pay_request(&id, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_paid")),
        "{p}"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn malformed_or_unknown_payments_change_nothing() {
    let h = FunctionHarness::start().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(7, showtime).await;
    let before = h.counts(showtime).await;

    for body in ["not json", r#"{"user_id":"seven"}"#, "{}"] {
        let (status, p) = call(&h, pay_request(&id, body)).await;
        assert_eq!(
            (status, p["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{p}"
        );
    }
    let unknown = format!("{}-999999", showtime.get());
    let (status, p) = call(&h, pay_request(&unknown, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{p}"
    );
    assert_eq!(h.status(&id).await, "RESERVED");
    assert_eq!(h.counts(showtime).await, before);
    h.cleanup().await;
}

#[tokio::test]
async fn redis_down_is_a_503_the_client_may_retry() {
    let (proxy, h) = FunctionHarness::behind_cuttable_redis().await;
    let showtime = h.showtime(2).await;
    let id = h.hold(7, showtime).await;

    proxy.cut().await;
    let (status, p) = call(&h, pay_request(&id, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{p}"
    );
    h.cleanup().await;
}
