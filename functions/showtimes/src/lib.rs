//! # showtimes
//!
//! `POST /showtimes` stores a showtime in PostgreSQL and puts its seats on sale in Redis;
//! `GET /showtimes/{id}` shows where every seat is: `available + held + sold ==
//! capacity` at every moment.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::DateTime;
use flash_sale_core::{Capacity, NewShowtime, SeatCounts, Showtime, ShowtimeId};
use flash_sale_runtime::App;
use flash_sale_runtime::http::{ApiError, JsonBody};
use serde::{Deserialize, Serialize};

pub fn router(app: App) -> Router {
    Router::new()
        .route("/showtimes", post(create))
        .route("/showtimes/{id}", get(show))
        .with_state(app)
}

#[derive(Debug, Deserialize)]
struct CreateShowtime {
    capacity: i64,
    title: Option<String>,
    starts_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct ShowtimeView {
    id: i64,
    title: Option<String>,
    starts_at: Option<String>,
    capacity: u32,
    available: u32,
    held: u32,
    sold: u32,
}

impl ShowtimeView {
    fn new(s: &Showtime, c: SeatCounts) -> Self {
        Self {
            id: s.id.get(),
            title: s.title.clone(),
            starts_at: s.starts_at.clone(),
            capacity: c.capacity,
            available: c.available,
            held: c.held,
            sold: c.sold,
        }
    }
}

async fn create(
    State(app): State<App>,
    JsonBody(req): JsonBody<CreateShowtime>,
) -> Result<(StatusCode, Json<ShowtimeView>), ApiError> {
    let capacity = Capacity::new(req.capacity)?;
    let title = req
        .title
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if title.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(ApiError::BadRequest(
            "title must be at most 200 characters".into(),
        ));
    }
    if let Some(at) = &req.starts_at {
        DateTime::parse_from_rfc3339(at).map_err(|e| {
            ApiError::BadRequest(format!(
                "starts_at must be an RFC 3339 time such as 2026-12-01T20:00:00Z: {e}"
            ))
        })?;
    }
    let showtime = app
        .sale
        .create_showtime(NewShowtime {
            capacity,
            title,
            starts_at: req.starts_at,
        })
        .await?;
    let counts = SeatCounts {
        capacity: capacity.get(),
        available: capacity.get(),
        held: 0,
        sold: 0,
    };
    Ok((
        StatusCode::CREATED,
        Json(ShowtimeView::new(&showtime, counts)),
    ))
}

async fn show(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<ShowtimeView>, ApiError> {
    let id: ShowtimeId = id.parse()?;
    match app.sale.showtime(id).await? {
        Some((showtime, counts)) => Ok(Json(ShowtimeView::new(&showtime, counts))),
        None => Err(ApiError::NotFound(format!("showtime {id} does not exist"))),
    }
}
