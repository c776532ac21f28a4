//! The HTTP functions' events (used by the `pay`, `reserve` and `showtimes` tests; the
//! queue functions' tests need none of it): a function's example API Gateway HTTP API
//! event, patched, as the `lambda_http::Request` Lambda would hand over, and one call
//! through the router the function's `main.rs` runs.

use axum::Router;
use axum::http::StatusCode;
use flash_sale_runtime::error::no_such_route;
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// `<crate>/events/<file>` (`crate_dir` is the calling crate's `CARGO_MANIFEST_DIR`),
/// changed by `patch`.
pub fn request(
    crate_dir: &str,
    file: &str,
    patch: impl FnOnce(&mut Value),
) -> lambda_http::Request {
    let path = format!("{crate_dir}/events/{file}");
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    patch(&mut event);
    lambda_http::request::from_str(&event.to_string()).expect("an API Gateway v2 event")
}

/// Points an event at `path`, whose `{id}` parameter is `id`.
pub fn at_path(event: &mut Value, path: &str, id: &str) {
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event["pathParameters"] = json!({ "id": id });
}

/// The answer of `router` (with the shared 404 for unknown routes) to `request`: its
/// status and its JSON body (`null` when the body is not JSON).
pub async fn call(router: Router, request: lambda_http::Request) -> (StatusCode, Value) {
    let response = router
        .fallback(no_such_route)
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}
