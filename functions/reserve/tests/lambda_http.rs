//! The `reserve` function as Lambda runs it: an API Gateway HTTP API (payload 2.0) event,
//! the function's own example in `events/`, parsed into a `lambda_http::Request` and sent
//! through the same router `main.rs` hands to `lambda_http::run`, on the real services.

#[path = "../../expire/tests/support/mod.rs"]
mod support;

use axum::http::StatusCode;
use flash_sale_runtime::http::no_such_route;
use serde_json::{Value, json};
use support::{Cuttable, Overrides, Services};
use tower::ServiceExt as _;

/// `events/<file>`, changed by `patch`, as the `lambda_http::Request` Lambda would hand over.
fn request(file: &str, patch: impl FnOnce(&mut Value)) -> lambda_http::Request {
    let path = format!("{}/events/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    patch(&mut event);
    lambda_http::request::from_str(&event.to_string()).expect("an API Gateway v2 event")
}

fn at_path(event: &mut Value, path: &str, id: &str) {
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["pathParameters"] = json!({ "id": id });
}

async fn call(s: &Services, request: lambda_http::Request) -> (StatusCode, Value) {
    let router = reserve::router(s.app.clone()).fallback(no_such_route);
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_example_events_reserve_a_seat_and_show_the_reservation() {
    let s = Services::start(Overrides::default()).await;
    let showtime = s.showtime(2).await;

    let (status, r) = call(
        &s,
        request("reserve.json", |e| {
            e["body"] = json!(json!({"user_id": 7, "showtime_id": showtime.get()}).to_string());
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let id = r["reservation_id"].as_str().unwrap().to_string();
    assert_eq!(s.status(&id).await, "RESERVED");
    assert_eq!(s.counts(showtime).await.held, 1);

    let (status, r) = call(
        &s,
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
    s.cleanup().await;
}

#[tokio::test]
async fn a_malformed_body_is_a_400_and_takes_no_seat() {
    let s = Services::start(Overrides::default()).await;
    let showtime = s.showtime(2).await;
    let before = s.counts(showtime).await;

    for body in [
        "not json",
        r#"{"user_id":"seven","showtime_id":1}"#,
        r#"{"user_id":7}"#,
    ] {
        let (status, r) = call(&s, request("reserve.json", |e| e["body"] = json!(body))).await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{r}"
        );
    }
    let (status, r) = call(
        &s,
        request("show-reservation.json", |e| {
            at_path(e, "/reservations/nope", "nope")
        }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{r}");
    assert_eq!(s.counts(showtime).await, before);
    s.cleanup().await;
}

#[tokio::test]
async fn redis_down_is_a_503_the_client_may_retry() {
    let proxy = Cuttable::start("127.0.0.1:6379").await;
    let s = Services::start(Overrides {
        redis_url: Some(format!("redis://{}", proxy.addr)),
        ..Overrides::default()
    })
    .await;
    let showtime = s.showtime(2).await;

    proxy.cut().await;
    let (status, r) = call(
        &s,
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
    s.cleanup().await;
}
