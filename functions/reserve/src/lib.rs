//! # reserve
//!
//! `POST /reserve` takes a seat for a user (the Go reference's route and answers, kept
//! so its clients work unchanged); `GET /reservations/{id}` shows a reservation.
//! The same [`router`] runs on AWS Lambda (`main.rs`) and in the local process.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use flash_sale_core::{ReservationId, ShowtimeId, UserId};
use flash_sale_runtime::App;
use flash_sale_runtime::http::{ApiError, JsonBody, ReservationView, rfc3339};
use serde::{Deserialize, Serialize};

pub fn router(app: App) -> Router {
    Router::new()
        .route("/reserve", post(reserve))
        .route("/reservations/{id}", get(reservation))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
struct ReserveRequest {
    user_id: i64,
    showtime_id: i64,
}

#[derive(Debug, Serialize)]
struct Reserved {
    message: &'static str,
    status: &'static str,
    reservation_id: String,
    showtime_id: i64,
    user_id: i64,
    expires_at: String,
}

async fn reserve(
    State(app): State<App>,
    JsonBody(req): JsonBody<ReserveRequest>,
) -> Result<Json<Reserved>, ApiError> {
    let user = UserId::new(req.user_id)?;
    let showtime = ShowtimeId::new(req.showtime_id)?;
    let r = app.sale.reserve(user, showtime).await?;
    Ok(Json(Reserved {
        message: "Ticket reserved successfully",
        status: r.status.as_str(),
        reservation_id: r.id.to_string(),
        showtime_id: showtime.get(),
        user_id: user.get(),
        expires_at: rfc3339(r.expires_at),
    }))
}

async fn reservation(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    let id: ReservationId = id.parse()?;
    match app.sale.reservation(id).await? {
        Some(r) => Ok(Json(ReservationView::from(&r))),
        None => Err(ApiError::NotFound(format!("reservation {id} not found"))),
    }
}
