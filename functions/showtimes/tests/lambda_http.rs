//! The `showtimes` function as Lambda runs it: its example API Gateway HTTP API events
//! parsed into `lambda_http::Request`s and sent through the router `main.rs` hands to
//! `lambda_http::run`, on the real services.

use axum::http::StatusCode;
use flash_sale_test_support::FunctionHarness;
use flash_sale_test_support::api;
use serde_json::{Value, json};

fn request(file: &str, patch: impl FnOnce(&mut Value)) -> lambda_http::Request {
    api::request(env!("CARGO_MANIFEST_DIR"), file, patch)
}

async fn call(h: &FunctionHarness, request: lambda_http::Request) -> (StatusCode, Value) {
    api::call(flash_sale_showtimes::router(h.app.clone()), request).await
}

async fn showtimes_in_db(h: &FunctionHarness) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM showtimes")
        .fetch_one(h.adapters.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_example_events_create_and_show_a_showtime() {
    let h = FunctionHarness::start().await;

    let (status, created) = call(&h, request("create-showtime.json", |_| {})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(showtimes_in_db(&h).await, 1);

    let path = format!("/showtimes/{id}");
    let (status, shown) = call(
        &h,
        request("show-showtime.json", |e| {
            api::at_path(e, &path, &id.to_string())
        }),
    )
    .await;
    assert_eq!(
        (status, shown["available"].as_i64()),
        (StatusCode::OK, Some(100)),
        "{shown}"
    );
    h.cleanup().await;
}

#[tokio::test]
async fn a_malformed_showtime_is_a_400_and_stores_nothing() {
    let h = FunctionHarness::start().await;
    for body in [
        "not json",
        r#"{"capacity":0}"#,
        r#"{"capacity":5,"starts_at":"tomorrow"}"#,
    ] {
        let (status, r) = call(
            &h,
            request("create-showtime.json", |e| e["body"] = json!(body)),
        )
        .await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{r}"
        );
    }
    assert_eq!(showtimes_in_db(&h).await, 0);
    h.cleanup().await;
}
