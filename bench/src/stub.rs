//! The HTTP ceiling: a minimal server on flash-sale's stack (tokio multi-thread runtime,
//! axum, hyper) that answers the same JSON as flash-sale's routes with no work behind
//! them. It parses the request body the same way (bytes, then serde_json) and formats an
//! RFC 3339 deadline like the real answer, so only the sale itself is missing.
//!
//! It keeps each showtime it creates (`POST /showtimes`) with its capacity and counts
//! the reserves down: once a showtime's reserves exceed its capacity it answers 409
//! `sold_out` with flash-sale's very body ([`SOLD_OUT_BODY`]), as flash-sale does. The
//! ceiling answers what flash-sale answers: a scenario that is mostly rejections
//! (`seed-7000`, `repeat`, `million`) costs the stub the cheap rejection, as it costs
//! flash-sale, instead of a full 200 RESERVED with its deadline formatted each time. The
//! count is an atomic per showtime behind a read lock (written only when a showtime is
//! created); it does not remember users (a user's second attempt takes a seat too). A
//! showtime it never created (an id from elsewhere) is answered RESERVED as before.
//!
//! It runs as a child process (`flash-sale-bench stub-server`), like flash-sale, so the
//! load generator does not share its runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// flash-sale's answer to a reserve once the seats are gone (409, `application/json`),
/// byte for byte; the nginx ceiling answers it too.
pub(crate) const SOLD_OUT_BODY: &str = r#"{"error":"sold_out","message":"Tickets sold out"}"#;

/// A showtime the stub created: its capacity and the seats left (a little below zero
/// when concurrent reserves race for the last seat).
struct Seats {
    capacity: i64,
    left: AtomicI64,
}

#[derive(Default)]
struct Counters {
    /// Showtime `id` is at index `id - 1`.
    showtimes: RwLock<Vec<Seats>>,
    seq: AtomicU64,
}

impl Counters {
    /// Takes a seat of `showtime`: whether there was one (always, for a showtime the
    /// stub did not create).
    fn take_seat(&self, showtime: i64) -> bool {
        let showtimes = self.showtimes.read().unwrap_or_else(|e| e.into_inner());
        let Some(seats) = usize::try_from(showtime - 1)
            .ok()
            .and_then(|i| showtimes.get(i))
        else {
            return true;
        };
        // Once sold out, a load is enough: the count stops going down.
        seats.left.load(Ordering::Relaxed) > 0 && seats.left.fetch_sub(1, Ordering::Relaxed) > 0
    }
}

fn sold_out() -> Response {
    (
        StatusCode::CONFLICT,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        SOLD_OUT_BODY,
    )
        .into_response()
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
    if !c.take_seat(req.showtime_id) {
        return sold_out();
    }
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
    let id = {
        let mut showtimes = c.showtimes.write().unwrap_or_else(|e| e.into_inner());
        showtimes.push(Seats {
            capacity: req.capacity,
            left: AtomicI64::new(req.capacity),
        });
        showtimes.len() as i64
    };
    let view = serde_json::json!({
        "id": id, "capacity": req.capacity, "available": req.capacity, "held": 0, "sold": 0
    });
    (StatusCode::CREATED, Json(view)).into_response()
}

async fn show(State(c): State<Arc<Counters>>, Path(id): Path<i64>) -> Response {
    let (capacity, available) = {
        let showtimes = c.showtimes.read().unwrap_or_else(|e| e.into_inner());
        usize::try_from(id - 1)
            .ok()
            .and_then(|i| showtimes.get(i))
            .map_or((0, 0), |s| {
                (s.capacity, s.left.load(Ordering::Relaxed).max(0))
            })
    };
    let held = capacity - available;
    Json(serde_json::json!({
        "id": id, "capacity": capacity, "available": available, "held": held, "sold": 0
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_showtime_sells_its_capacity_then_is_sold_out() {
        let c = Counters::default();
        c.showtimes.write().unwrap().push(Seats {
            capacity: 3,
            left: AtomicI64::new(3),
        });
        let answers: Vec<bool> = (0..5).map(|_| c.take_seat(1)).collect();
        assert_eq!(answers, [true, true, true, false, false]);
        // Once sold out the count stays put.
        assert_eq!(
            c.showtimes.read().unwrap()[0].left.load(Ordering::Relaxed),
            0
        );
        // A showtime the stub did not create is answered as held.
        assert!(c.take_seat(2) && c.take_seat(0) && c.take_seat(-5));
    }

    #[test]
    fn the_sold_out_body_is_flash_sales() {
        let v: serde_json::Value = serde_json::from_str(SOLD_OUT_BODY).unwrap();
        assert_eq!(v["error"], "sold_out");
        assert_eq!(v["message"], "Tickets sold out");
    }
}
