//! Security tests over HTTP against the real one-process server: every refusal of issue 6
//! gets its documented 4xx in the shared JSON shape, and none of them changes stock,
//! holds or orders. One binary, a module per area.

mod abuse;
mod fuzz;
mod identity;
mod openapi;
mod sale_window;

use flash_sale_tests::{Options, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

/// A server that takes identities from bearer tokens.
pub fn jwt() -> Options {
    Options {
        auth_mode: "jwt",
        ..Options::default()
    }
}

/// Creates a showtime as an admin and returns its id.
pub async fn showtime(app: &TestApp, body: Value) -> i64 {
    let (status, answer) = app.post_as(&app.admin_token(), "/showtimes", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["id"].as_i64().unwrap()
}

/// Asserts nothing was sold, held or ordered for `showtime` of `capacity` seats.
pub async fn untouched(app: &TestApp, showtime: i64, capacity: i64) {
    assert_eq!(app.seats(showtime).await, (capacity, 0, 0));
    assert_eq!(app.orders(showtime).await, 0);
}
