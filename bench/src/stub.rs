//! The HTTP ceiling: a minimal server on flash-sale's stack (tokio multi-thread runtime,
//! axum, hyper) that answers the same JSON as flash-sale's routes with no work behind
//! them. It parses the request body the same way (bytes, then serde_json) and formats an
//! RFC 3339 deadline like the real answer, so only the sale itself is missing.
//!
//! It runs as a child process (`flash-sale-bench stub-server`), like flash-sale, so the
//! load generator does not share its runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Default)]
struct Counters {
    showtimes: AtomicI64,
    seq: AtomicU64,
}

#[derive(Deserialize)]
struct ReserveRequest {
    user_id: i64,
    showtime_id: i64,
}

#[derive(Serialize)]
struct Reserved {
    message: &'static str,
    status: &'static str,
    reservation_id: String,
    showtime_id: i64,
    user_id: i64,
    expires_at: String,
}

#[derive(Deserialize)]
struct CreateShowtime {
    capacity: i64,
}

#[derive(Deserialize)]
struct PayRequest {
    user_id: i64,
}

fn bad(e: serde_json::Error) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": "bad_request", "message": e.to_string()})),
    )
        .into_response()
}

async fn reserve(State(c): State<Arc<Counters>>, body: Bytes) -> Response {
    let req: ReserveRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let seq = c.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let expires_at =
        (Utc::now() + chrono::Duration::seconds(900)).to_rfc3339_opts(SecondsFormat::Millis, true);
    Json(Reserved {
        message: "Ticket reserved successfully",
        status: "RESERVED",
        reservation_id: format!("{}-{seq}", req.showtime_id),
        showtime_id: req.showtime_id,
        user_id: req.user_id,
        expires_at,
    })
    .into_response()
}

async fn pay(Path(id): Path<String>, body: Bytes) -> Response {
    let req: PayRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    Json(serde_json::json!({"id": id, "user_id": req.user_id, "status": "PAID"})).into_response()
}

async fn create(State(c): State<Arc<Counters>>, body: Bytes) -> Response {
    let req: CreateShowtime = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let id = c.showtimes.fetch_add(1, Ordering::Relaxed) + 1;
    let view = serde_json::json!({
        "id": id, "capacity": req.capacity, "available": req.capacity, "held": 0, "sold": 0
    });
    (StatusCode::CREATED, Json(view)).into_response()
}

async fn show(Path(id): Path<i64>) -> Response {
    Json(serde_json::json!({"id": id, "capacity": 0, "available": 0, "held": 0, "sold": 0}))
        .into_response()
}

pub(crate) fn router() -> Router {
    Router::new()
        .route("/reserve", post(reserve))
        .route("/reservations/{id}/pay", post(pay))
        .route("/showtimes", post(create))
        .route("/showtimes/{id}", get(show))
        .with_state(Arc::new(Counters::default()))
}

/// Serves until killed; prints `listening <addr>` on stdout once bound.
pub(crate) async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    axum::serve(listener, router()).await?;
    Ok(())
}
