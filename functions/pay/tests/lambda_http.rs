//! The `pay` function as Lambda runs it: its example API Gateway HTTP API event parsed
//! into a `lambda_http::Request` and sent through the router `main.rs` hands to
//! `lambda_http::run`, on the real services.

#[path = "../../expire/tests/support/api.rs"]
mod api;
#[path = "../../expire/tests/support/mod.rs"]
mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Overrides, Services};

/// `events/pay.json` for reservation `id`, with `body`.
fn pay_request(id: &str, body: &str) -> lambda_http::Request {
    api::request(env!("CARGO_MANIFEST_DIR"), "pay.json", |event| {
        api::at_path(event, &format!("/reservations/{id}/pay"), id);
        event["body"] = json!(body);
    })
}

async fn call(s: &Services, request: lambda_http::Request) -> (StatusCode, Value) {
    api::call(flash_sale_pay::router(s.app.clone()), request).await
}

#[tokio::test]
async fn the_example_event_pays_a_hold() {
    let s = Services::start(Overrides::default()).await;
    let showtime = s.showtime(2).await;
    let id = s.hold(7, showtime).await;

    let (status, p) = call(&s, pay_request(&id, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["status"].as_str()),
        (StatusCode::OK, Some("PAID")),
        "{p}"
    );
    assert_eq!(s.status(&id).await, "PAID");
    let (status, p) = call(&s, pay_request(&id, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_paid")),
        "{p}"
    );
    s.cleanup().await;
}

#[tokio::test]
async fn malformed_or_unknown_payments_change_nothing() {
    let s = Services::start(Overrides::default()).await;
    let showtime = s.showtime(2).await;
    let id = s.hold(7, showtime).await;
    let before = s.counts(showtime).await;

    for body in ["not json", r#"{"user_id":"seven"}"#, "{}"] {
        let (status, p) = call(&s, pay_request(&id, body)).await;
        assert_eq!(
            (status, p["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{p}"
        );
    }
    let unknown = format!("{}-999999", showtime.get());
    let (status, p) = call(&s, pay_request(&unknown, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{p}"
    );
    assert_eq!(s.status(&id).await, "RESERVED");
    assert_eq!(s.counts(showtime).await, before);
    s.cleanup().await;
}

#[tokio::test]
async fn redis_down_is_a_503_the_client_may_retry() {
    let (proxy, s) = Services::behind_cuttable_redis().await;
    let showtime = s.showtime(2).await;
    let id = s.hold(7, showtime).await;

    proxy.cut().await;
    let (status, p) = call(&s, pay_request(&id, r#"{"user_id":7}"#)).await;
    assert_eq!(
        (status, p["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{p}"
    );
    s.cleanup().await;
}
