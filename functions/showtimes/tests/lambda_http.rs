//! The `showtimes` function as Lambda runs it: its example API Gateway HTTP API events
//! parsed into `lambda_http::Request`s and sent through the router `main.rs` hands to
//! `lambda_http::run`, on the real services.

#[path = "../../expire/tests/support/api.rs"]
mod api;
#[path = "../../expire/tests/support/mod.rs"]
mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Overrides, Services};

fn request(file: &str, patch: impl FnOnce(&mut Value)) -> lambda_http::Request {
    api::request(env!("CARGO_MANIFEST_DIR"), file, patch)
}

async fn call(s: &Services, request: lambda_http::Request) -> (StatusCode, Value) {
    api::call(flash_sale_showtimes::router(s.app.clone()), request).await
}

async fn showtimes_in_db(s: &Services) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM showtimes")
        .fetch_one(s.app.sale.db().pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_example_events_create_and_show_a_showtime() {
    let s = Services::start(Overrides::default()).await;

    let (status, created) = call(&s, request("create-showtime.json", |_| {})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(showtimes_in_db(&s).await, 1);

    let path = format!("/showtimes/{id}");
    let (status, shown) = call(
        &s,
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
    s.cleanup().await;
}

#[tokio::test]
async fn a_malformed_showtime_is_a_400_and_stores_nothing() {
    let s = Services::start(Overrides::default()).await;
    for body in [
        "not json",
        r#"{"capacity":0}"#,
        r#"{"capacity":5,"starts_at":"tomorrow"}"#,
    ] {
        let (status, r) = call(
            &s,
            request("create-showtime.json", |e| e["body"] = json!(body)),
        )
        .await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{r}"
        );
    }
    assert_eq!(showtimes_in_db(&s).await, 0);
    s.cleanup().await;
}
