//! The functions as Lambda functions, under `cargo lambda watch` (docs/lambda.md).
//!
//! Each test starts its own emulator (`scripts/lambda-watch`, which installs cargo-lambda
//! from PyPI when it is missing) on a free port, with its own database, Redis key prefix
//! and queue prefix passed through the environment, so the tests run in parallel with
//! each other and with every other test. The first invocation of each function builds it
//! (`cargo run` in the shared target directory), so the first run of these tests takes a
//! few minutes; later runs only check that the builds are fresh.
//!
//! Every test is bounded (`watch::deadline`, `WATCH_TEST_TIMEOUT_SECS`, default 900 s) and
//! stops every process it started (the emulator, the functions it started, the bridge)
//! when it ends, whether it passed, failed or timed out.
//!
//! `WATCH_TESTS=skip` skips the emulator tests (not `template_passes_cfn_lint`).
//!
//! The process harness (the emulator, the bridge, the process trees, the bounds) is the
//! test kit's (`flash_sale_test_support::{watch, process}`). One binary, a module per area.

mod bridge;
mod cold_starts;
mod http;
mod queues;
mod template;

use flash_sale_test_support::{FunctionHarness, Watch};
use reqwest::StatusCode;
use serde_json::json;

/// Orders recorded for `reservation`; `None` when PostgreSQL did not answer (other
/// tests on this machine restart the services: a poll tries again).
async fn try_order_count(h: &FunctionHarness, reservation: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE reservation_id = $1")
        .bind(reservation)
        .fetch_one(h.adapters.db.pool())
        .await
        .ok()
}

async fn order_count(h: &FunctionHarness, reservation: &str) -> i64 {
    try_order_count(h, reservation)
        .await
        .expect("PostgreSQL answers")
}

/// The reservation's status in Redis; `None` when it does not exist or Redis did not
/// answer (a poll tries again).
async fn try_status(h: &FunctionHarness, reservation: &str) -> Option<String> {
    let id = reservation.parse().ok()?;
    let r = h.app.sale.reservation(id).await.ok()??;
    Some(r.status.as_str().to_string())
}

async fn status_in_redis(h: &FunctionHarness, reservation: &str) -> Option<String> {
    h.app
        .sale
        .reservation(reservation.parse().unwrap())
        .await
        .unwrap()
        .map(|r| r.status.as_str().to_string())
}

async fn available(w: &Watch, showtime: i64) -> i64 {
    let (status, s) = w.get(&format!("/showtimes/{showtime}")).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    s["available"].as_i64().unwrap()
}

async fn create_showtime(w: &Watch, capacity: u32) -> i64 {
    let (status, s) = w
        .post(
            "/showtimes",
            json!({"capacity": capacity, "title": "watch"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}\n{}", w.process.tail());
    s["id"].as_i64().unwrap()
}

async fn reserve(w: &Watch, user: i64, showtime: i64) -> String {
    let (status, r) = w
        .post(
            "/reserve",
            json!({"user_id": user, "showtime_id": showtime}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}\n{}", w.process.tail());
    r["reservation_id"].as_str().unwrap().to_string()
}

fn order_body(reservation: &str, user: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"reservation_id": reservation, "user_id": user, "paid_at_ms": 1_795_597_200_000u64}))
        .unwrap()
}
