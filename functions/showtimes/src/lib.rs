//! # showtimes
//!
//! `POST /showtimes` (admins only, with `AUTH_MODE=jwt`) stores a showtime and its sale
//! window in PostgreSQL and puts its seats on sale in Redis; `GET /showtimes/{id}`
//! (public: the seat map of a sale is no secret) shows where every seat is:
//! `available + held + sold == capacity` at every moment. `GET /showtimes` lists them
//! with their seats now, a page at a time: the ones on sale for anyone, upcoming and
//! ended ones (or all) for admins. `GET /showtimes/{id}/orders` (admins) pages through
//! a showtime's orders as the database recorded them, as JSON or, with
//! `Accept: text/csv`, as CSV for export. `PATCH /showtimes/{id}` (admins) steers a live
//! sale: pause and resume it, close it early, move its window, add seats or remove
//! unsold ones.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::DateTime;
use flash_sale_core::domain::{SaleState, SaleWindow};
use flash_sale_core::waiting_room::{RoomSettings, WaitingRoomStore as _};
use flash_sale_core::{
    Capacity, CreateError, Creation, KeyedRoute, MaxPerUser, NewShowtime, PortError, SeatChange,
    SeatCounts, Showtime, ShowtimeChange, ShowtimeId, UnixMillis,
};
use flash_sale_runtime::App;
use flash_sale_runtime::error::ApiError;
use flash_sale_runtime::extract::JsonBody;
use flash_sale_runtime::guard::{AppState, Guard};
use flash_sale_runtime::idempotency::{IDEMPOTENT_REPLAYED, KeyedJson};
use flash_sale_runtime::identity::Caller;
use flash_sale_runtime::{metrics, now, rfc3339, to_the_end};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The function's routes, protected by their own [`Guard`]: what the Lambda host runs.
pub fn router(app: App) -> Router {
    let guard = Guard::new(&app.config);
    guard.protect(routes(app, &guard))
}

/// The routes with `guard` as their authenticator and rate limiter, not yet protected:
/// the local process merges these and protects them once.
pub fn routes(app: App, guard: &Guard) -> Router {
    Router::new()
        .route("/showtimes", post(create).get(list))
        .route("/showtimes/{id}", get(show).patch(change))
        .route("/showtimes/{id}/orders", get(orders))
        .with_state(AppState::new(app, guard.clone()))
}

/// The body of `POST /showtimes`, as sent. Public for the fuzz targets.
#[derive(Debug, Deserialize)]
pub struct CreateShowtime {
    pub capacity: i64,
    pub title: Option<String>,
    pub starts_at: Option<String>,
    /// RFC 3339; reservations before it are refused (`sale_not_open`).
    pub sale_opens_at: Option<String>,
    /// RFC 3339; reservations from it on are refused (`sale_closed`).
    pub sale_closes_at: Option<String>,
    /// Seats one buyer may take as one reservation: 1 (the default) to 20.
    #[serde(default)]
    pub max_per_user: Option<i64>,
    /// A waiting room in front of the sale: buyers join its line and reserve only once
    /// admitted.
    #[serde(default)]
    pub waiting_room: Option<WaitingRoom>,
}

/// A waiting room's settings as sent (`POST /showtimes`, `PATCH /showtimes/{id}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoom {
    /// RFC 3339: joiners before it are drawn by lot at it; later ones queue in arrival
    /// order. Absent: the sale's opening (`sale_opens_at`) if later than now, else now.
    pub opens_at: Option<String>,
    /// At most this many admissions a second (1..=1,000,000); absent: as many as the
    /// seats allow.
    pub admit_per_sec: Option<i64>,
    /// How far admitted buyers who have not decided may outnumber the seats left, in
    /// percent (0..=500, default 10).
    pub overbook_pct: Option<i64>,
    /// How long an admission may be used, in seconds (10..=3600, default 120).
    pub admission_secs: Option<i64>,
}

impl WaitingRoom {
    /// The settings, `opens_at` defaulting to `sale_opens` when later than `now`, else
    /// to `now`.
    pub fn settings(
        &self,
        sale_opens: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<RoomSettings, ApiError> {
        let opens_at = match time("waiting_room.opens_at", self.opens_at.as_deref())? {
            Some(at) => at,
            None => sale_opens.filter(|&at| at > now).unwrap_or(now),
        };
        let bounded = |field: &str, n: Option<i64>, default: u32| -> Result<u32, ApiError> {
            match n {
                None => Ok(default),
                Some(n) => u32::try_from(n).map_err(|_| {
                    ApiError::BadRequest(format!("waiting_room.{field} is out of range: {n}"))
                }),
            }
        };
        let admit_per_sec = self
            .admit_per_sec
            .map(|n| bounded("admit_per_sec", Some(n), 0))
            .transpose()?;
        let overbook_pct = bounded(
            "overbook_pct",
            self.overbook_pct,
            RoomSettings::DEFAULT_OVERBOOK_PCT,
        )?;
        let admission_secs = bounded(
            "admission_secs",
            self.admission_secs,
            RoomSettings::DEFAULT_ADMISSION.as_secs() as u32,
        )?;
        RoomSettings::new(
            opens_at,
            admit_per_sec,
            overbook_pct,
            Duration::from_secs(admission_secs.into()),
        )
        .map_err(|e| ApiError::BadRequest(format!("waiting_room: {}", e.0)))
    }
}

impl CreateShowtime {
    /// Parses the body into domain values: every rule of the route but the admin check.
    pub fn validate(self) -> Result<NewShowtime, ApiError> {
        let capacity = Capacity::new(self.capacity)?;
        let title = self
            .title
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if title.as_ref().is_some_and(|t| t.chars().count() > 200) {
            return Err(ApiError::BadRequest(
                "title must be at most 200 characters".into(),
            ));
        }
        if title
            .as_ref()
            .is_some_and(|t| t.chars().any(char::is_control))
        {
            return Err(ApiError::BadRequest(
                "title must not contain control characters".into(),
            ));
        }
        if let Some(at) = &self.starts_at {
            DateTime::parse_from_rfc3339(at).map_err(|e| {
                ApiError::BadRequest(format!(
                    "starts_at must be an RFC 3339 time such as 2026-12-01T20:00:00Z: {e}"
                ))
            })?;
        }
        let sale_window = SaleWindow::new(
            time("sale_opens_at", self.sale_opens_at.as_deref())?,
            time("sale_closes_at", self.sale_closes_at.as_deref())?,
        )?;
        let max_per_user = self
            .max_per_user
            .map(MaxPerUser::new)
            .transpose()?
            .unwrap_or_default();
        let waiting_room = self
            .waiting_room
            .map(|room| room.settings(sale_window.opens_at(), now()))
            .transpose()?;
        Ok(NewShowtime {
            capacity,
            title,
            starts_at: self.starts_at,
            sale_window,
            max_per_user,
            waiting_room,
        })
    }
}

/// Parses an optional RFC 3339 time named `field`.
fn time(field: &str, raw: Option<&str>) -> Result<Option<UnixMillis>, ApiError> {
    raw.map(|at| {
        let t = DateTime::parse_from_rfc3339(at).map_err(|e| {
            ApiError::BadRequest(format!(
                "{field} must be an RFC 3339 time such as 2026-12-01T20:00:00Z: {e}"
            ))
        })?;
        u64::try_from(t.timestamp_millis())
            .map(UnixMillis)
            .map_err(|_| ApiError::BadRequest(format!("{field} must be after 1970")))
    })
    .transpose()
}

/// The body of `PATCH /showtimes/{id}`, as sent: every field optional, at least one
/// given, unknown ones refused (a misspelt field must not pass for a change). Public for
/// the fuzz targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeShowtime {
    /// `true` pauses the sale (new holds refused, `sale_paused`), `false` resumes it.
    pub paused: Option<bool>,
    /// `true` closes the sale now.
    pub close_now: Option<bool>,
    /// RFC 3339, or `null` to remove the bound.
    #[serde(default, deserialize_with = "given")]
    pub sale_opens_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    pub sale_closes_at: Option<Option<String>>,
    /// Seats to put on sale.
    pub add_seats: Option<i64>,
    /// Unsold seats to take off sale (never held or sold ones).
    pub remove_seats: Option<i64>,
    /// A new capacity, never below the seats held and sold.
    pub capacity: Option<i64>,
    /// Opens or changes the sale's waiting room (its settings as a whole), or `null`
    /// to remove it.
    #[serde(default, deserialize_with = "given")]
    pub waiting_room: Option<Option<WaitingRoom>>,
}

/// A field that is present, even as `null` (`Some(None)`), told from an absent one
/// (`None`, by `#[serde(default)]`).
fn given<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl ChangeShowtime {
    /// Parses the body into a change: every rule of the route but the admin check and
    /// the seats held and sold. A waiting room without `opens_at` opens at `was`'s
    /// (the showtime before the change) when it has one, else at the sale's opening
    /// when later than now, else now.
    pub fn validate(self, was: Option<&Showtime>) -> Result<ShowtimeChange, ApiError> {
        let count = |field: &str, n: i64| {
            if (1..=i64::from(Capacity::MAX)).contains(&n) {
                Ok(n as u32)
            } else {
                Err(ApiError::BadRequest(format!(
                    "{field} must be 1 to {}, got {n}",
                    Capacity::MAX
                )))
            }
        };
        let seats = match (self.add_seats, self.remove_seats, self.capacity) {
            (None, None, None) => None,
            (Some(n), None, None) => Some(SeatChange::Add(count("add_seats", n)?)),
            (None, Some(n), None) => Some(SeatChange::Remove(count("remove_seats", n)?)),
            (None, None, Some(c)) => Some(SeatChange::Set(Capacity::new(c)?)),
            _ => {
                return Err(ApiError::BadRequest(
                    "give one of add_seats, remove_seats and capacity".into(),
                ));
            }
        };
        let given = self.paused.is_some()
            || self.close_now.is_some()
            || self.sale_opens_at.is_some()
            || self.sale_closes_at.is_some()
            || self.waiting_room.is_some()
            || seats.is_some();
        let close_now = self.close_now.unwrap_or(false);
        if close_now && self.sale_closes_at.is_some() {
            return Err(ApiError::BadRequest(
                "give close_now or sale_closes_at, not both".into(),
            ));
        }
        let bound = |field: &str, raw: Option<Option<String>>| {
            raw.map(|at| time(field, at.as_deref())).transpose()
        };
        let sale_opens_at = bound("sale_opens_at", self.sale_opens_at)?;
        let waiting_room = match self.waiting_room {
            None => None,
            Some(None) => Some(None),
            Some(Some(room)) => {
                let kept = was.and_then(|s| s.waiting_room).map(|r| r.opens_at);
                let sale_opens =
                    sale_opens_at.unwrap_or_else(|| was.and_then(|s| s.sale_window.opens_at()));
                let mut settings = room.settings(sale_opens, now())?;
                if room.opens_at.is_none()
                    && let Some(kept) = kept
                {
                    settings.opens_at = kept;
                }
                Some(Some(settings))
            }
        };
        let change = ShowtimeChange {
            sale_opens_at,
            sale_closes_at: bound("sale_closes_at", self.sale_closes_at)?,
            paused: self.paused,
            close_now,
            seats,
            waiting_room,
        };
        if !given {
            return Err(ApiError::BadRequest(
                "nothing to change: give paused, close_now, sale_opens_at, sale_closes_at, add_seats, remove_seats, capacity or waiting_room".into(),
            ));
        }
        Ok(change)
    }
}

/// The query of `GET /showtimes`: `state` one of `on_sale` (the default), `upcoming`,
/// `ended`, `all`; `limit` 1..=100 (20); `cursor` a previous page's `next_cursor`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub state: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<i64>,
}

/// The most showtimes one page holds.
pub const MAX_PAGE: usize = 100;

#[derive(Debug, Serialize)]
struct ListedShowtime {
    #[serde(flatten)]
    showtime: ShowtimeView,
    /// `upcoming`, `on_sale`, `paused` or `ended`, now.
    sale_state: &'static str,
}

#[derive(Debug, Serialize)]
struct ShowtimeList {
    showtimes: Vec<ListedShowtime>,
    /// The `cursor` of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ShowtimeList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let wanted = match query.state.as_deref().unwrap_or("on_sale") {
        "on_sale" => Some(SaleState::OnSale),
        "upcoming" => Some(SaleState::Upcoming),
        "paused" => Some(SaleState::Paused),
        "ended" => Some(SaleState::Ended),
        "all" => None,
        other => {
            return Err(ApiError::BadRequest(format!(
                "state must be on_sale, upcoming, paused, ended or all, not {other:?}"
            )));
        }
    };
    if wanted != Some(SaleState::OnSale) {
        caller.require_admin()?;
    }
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE}, not {limit}"
        )));
    }
    let after = query.cursor.map(ShowtimeId::new).transpose()?;
    let sale = &state.app().sale;
    // One more than asked: whether there is a next page.
    let mut listed = sale.showtimes(wanted, after, limit + 1).await?;
    let more = listed.len() > limit;
    listed.truncate(limit);
    Ok(Json(ShowtimeList {
        next_cursor: more
            .then(|| listed.last().map(|(s, _, _)| s.id.get().to_string()))
            .flatten(),
        showtimes: listed
            .iter()
            .map(|(s, c, sale_state)| ListedShowtime {
                showtime: ShowtimeView::new(s, *c),
                sale_state: sale_state.as_str(),
            })
            .collect(),
    }))
}

/// The query of `GET /showtimes/{id}/orders`: `limit` 1..=1000 (100), `cursor` a
/// previous page's `next_cursor`.
#[derive(Debug, Deserialize)]
pub struct OrdersQuery {
    pub limit: Option<usize>,
    pub cursor: Option<u64>,
}

/// The most orders one page holds.
pub const MAX_ORDERS_PAGE: usize = 1000;

#[derive(Debug, Serialize)]
struct OrderView {
    number: u64,
    reservation_id: String,
    showtime_id: i64,
    user_id: i64,
    paid_at: String,
    recorded_at: String,
    /// Seats the order holds (a group's; 1 for a single seat).
    quantity: u32,
}

#[derive(Debug, Serialize)]
struct OrderList {
    orders: Vec<OrderView>,
    /// The `cursor` of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// A showtime's orders, a page at a time: JSON, or CSV when the client accepts
/// `text/csv` (then the next page, if any, is in a `Link: <...>; rel="next"` header).
async fn orders(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    caller.require_admin()?;
    let id: ShowtimeId = id.parse()?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_ORDERS_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_ORDERS_PAGE}, not {limit}"
        )));
    }
    // One more than asked: whether there is a next page.
    let Some(mut page) = state.app().sale.orders(id, query.cursor, limit + 1).await? else {
        return Err(ApiError::NotFound(format!("showtime {id} does not exist")));
    };
    let more = page.len() > limit;
    page.truncate(limit);
    let next = more.then(|| page.last().map(|o| o.number)).flatten();
    let views: Vec<OrderView> = page
        .iter()
        .map(|o| OrderView {
            number: o.number,
            reservation_id: o.order.reservation.to_string(),
            showtime_id: id.get(),
            user_id: o.order.user.get(),
            paid_at: rfc3339(o.order.paid_at),
            recorded_at: rfc3339(o.recorded_at),
            quantity: o.order.quantity,
        })
        .collect();
    let wants_csv = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/csv"));
    if !wants_csv {
        return Ok(Json(OrderList {
            orders: views,
            next_cursor: next.map(|n| n.to_string()),
        })
        .into_response());
    }
    let mut csv = csv::Writer::from_writer(vec![]);
    if views.is_empty() {
        // The header alone (it is written with the first row otherwise).
        csv.write_record([
            "number",
            "reservation_id",
            "showtime_id",
            "user_id",
            "paid_at",
            "recorded_at",
            "quantity",
        ])
        .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?;
    }
    for o in &views {
        csv.serialize(o)
            .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?;
    }
    let csv = csv
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?;
    let mut response = (
        [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        csv,
    )
        .into_response();
    if let Some(n) = next
        && let Ok(link) = axum::http::HeaderValue::from_str(&format!(
            "</showtimes/{id}/orders?limit={limit}&cursor={n}>; rel=\"next\""
        ))
    {
        response
            .headers_mut()
            .insert(axum::http::header::LINK, link);
    }
    Ok(response)
}

#[derive(Debug, Serialize)]
struct ShowtimeView {
    id: i64,
    title: Option<String>,
    starts_at: Option<String>,
    capacity: u32,
    /// `None` only where the seats could not be read ([`ShowtimeView::seats_unknown`]).
    available: Option<u32>,
    held: Option<u32>,
    sold: Option<u32>,
    sale_opens_at: Option<String>,
    sale_closes_at: Option<String>,
    /// An operator paused the sale: holds are refused until it is resumed.
    sale_paused: bool,
    /// Seats one buyer may take as one reservation.
    max_per_user: u32,
    /// The waiting room in front of the sale, if any.
    waiting_room: Option<RoomView>,
}

#[derive(Debug, Serialize)]
struct RoomView {
    opens_at: String,
    admit_per_sec: Option<u32>,
    overbook_pct: u32,
    admission_secs: u64,
}

impl From<RoomSettings> for RoomView {
    fn from(r: RoomSettings) -> Self {
        Self {
            opens_at: rfc3339(r.opens_at),
            admit_per_sec: r.admit_per_sec,
            overbook_pct: r.overbook_pct,
            admission_secs: r.admission.as_secs(),
        }
    }
}

impl ShowtimeView {
    fn new(s: &Showtime, c: SeatCounts) -> Self {
        let w = s.sale_window;
        Self {
            id: s.id.get(),
            title: s.title.clone(),
            starts_at: s.starts_at.clone(),
            sale_opens_at: w.opens_at().map(rfc3339),
            sale_closes_at: w.closes_at().map(rfc3339),
            sale_paused: w.is_paused(),
            max_per_user: s.max_per_user.get(),
            waiting_room: s.waiting_room.map(RoomView::from),
            capacity: c.capacity,
            available: Some(c.available),
            held: Some(c.held),
            sold: Some(c.sold),
        }
    }

    /// A showtime whose seats could not be read: its counts are `null` (only in the
    /// answer to an operator's change saved while the seat store was out of reach).
    fn seats_unknown(s: &Showtime) -> Self {
        let capacity = s.capacity.get();
        Self {
            available: None,
            held: None,
            sold: None,
            ..Self::new(
                s,
                SeatCounts {
                    capacity,
                    ..SeatCounts::default()
                },
            )
        }
    }
}

/// A showtime on record whose seats the seat store did not take: created all the same
/// (they go on sale at its first use), since a 503 would invite a retry that puts a
/// second showtime with the same seats on sale, or tell an operator whose retry never
/// comes that nothing was created.
fn seats_later(showtime: Showtime, e: &PortError) -> Showtime {
    tracing::warn!(
        showtime = showtime.id.get(),
        "showtime created; the seat store did not take its seats, which go on sale at its first use: {e}"
    );
    showtime
}

/// Creates a showtime (admins): 201 with it. Under an `Idempotency-Key` (the operator's,
/// kept on the row), a retry of the same request finds the showtime the first created
/// and answers it as it is now, with `Idempotent-Replayed: true`, finishing the first's
/// work if it stopped early (its seats, its room); the key sent with another request is
/// a 422 `idempotency_key_reused`, and nothing is created.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    KeyedJson { body: req, key }: KeyedJson<CreateShowtime>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let new = req.validate()?;
    let app = state.app();
    let (showtime, replayed) = match key {
        None => match app.sale.create_showtime(new).await {
            Ok(showtime) => (showtime, false),
            Err(CreateError::SeatsLater(showtime, e)) => (seats_later(*showtime, &e), false),
            Err(CreateError::NotCreated(e)) => return Err(e.into()),
        },
        Some(key) => {
            let by = match caller {
                Caller::Verified(id) => Some(id.user),
                Caller::Trusted => None,
            };
            let route = KeyedRoute::CreateShowtime.as_str();
            match app
                .sale
                .create_showtime_once(new, key.for_creation(by))
                .await
            {
                Ok(Creation::Created(showtime)) => {
                    metrics::idempotency_key(route, "claimed");
                    (showtime, false)
                }
                Err(CreateError::SeatsLater(showtime, e)) => {
                    metrics::idempotency_key(route, "claimed");
                    (seats_later(*showtime, &e), false)
                }
                Ok(Creation::Again(showtime)) => {
                    metrics::idempotency_key(route, "replayed");
                    (showtime, true)
                }
                Ok(Creation::KeyReused) => {
                    metrics::idempotency_key(route, "reused");
                    return Err(ApiError::IdempotencyKeyReused(
                        "this Idempotency-Key created a showtime for another request; \
                         send a new key for a new showtime"
                            .into(),
                    ));
                }
                Err(CreateError::NotCreated(e)) => {
                    metrics::idempotency_key(route, "unavailable");
                    return Err(e.into());
                }
            }
        }
    };
    if showtime.waiting_room.is_some() {
        // From the row as it is now, under its lock: a replay's row was read before
        // this, and an operator may have removed or changed the room since (a room
        // removed and set again from the older read would refuse every buyer
        // `not_admitted` while nobody can join it). Should this fail, the showtime
        // still refuses buyers without an admission, and the room is set up by the
        // first join.
        if let Err(e) = app
            .sale
            .set_room_its_row_has(showtime.id, app.rooms.store())
            .await
        {
            tracing::warn!(
                showtime = showtime.id.get(),
                "opening the waiting room failed: {e}"
            );
        }
    }
    let (showtime, counts) = if replayed {
        // The showtime and its seats as they are now, from one read.
        app.sale
            .showtime(showtime.id)
            .await?
            .ok_or_else(|| ApiError::NotFound("showtime not found".into()))?
    } else {
        let capacity = showtime.capacity.get();
        let counts = SeatCounts {
            capacity,
            available: capacity,
            held: 0,
            sold: 0,
        };
        (showtime, counts)
    };
    let answer = (
        StatusCode::CREATED,
        Json(ShowtimeView::new(&showtime, counts)),
    );
    Ok(if replayed {
        (
            [(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"))],
            answer,
        )
            .into_response()
    } else {
        answer.into_response()
    })
}

/// An operator's change of a live sale (admins): 200 with the showtime as it is now and
/// its sale state; 409 `seats_in_use` when fewer seats are unsold than removed, 409
/// `room_open` when a waiting room's opening would move after it has come (nothing
/// changed). Every process obeys a new window or pause within a second; holds made
/// before a pause or close can still be paid until their deadline.
async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ChangeShowtime>,
) -> Result<Json<ListedShowtime>, ApiError> {
    caller.require_admin()?;
    let id: ShowtimeId = id.parse()?;
    let was = match &req.waiting_room {
        Some(Some(room)) if room.opens_at.is_none() => state.app().sale.showtime(id).await?,
        _ => None,
    };
    let change = req.validate(was.as_ref().map(|(s, _)| s))?;
    // To its end even if the operator's client goes away or the request times out: a
    // change dropped between the seat store's resize and the row's commit would leave
    // Redis selling seats the database does not have.
    let app = state.app().clone();
    let (showtime, counts, sale_state) = to_the_end(async move {
        let changed = app.sale.change_showtime(id, change).await?;
        let showtime = &changed.0;
        let rooms = app.rooms.store();
        let window_moved = change.sale_opens_at.is_some()
            || change.sale_closes_at.is_some()
            || change.paused.is_some()
            || change.close_now;
        let room = match (change.waiting_room, showtime.waiting_room) {
            (Some(None), _) => rooms.remove(id).await.map(drop),
            // A room opened or changed, or the window moved (the room admits only while
            // the sale sells). Seats added need nothing here: the room's next advance
            // opens a closed room again once seats are available.
            (_, Some(settings)) if change.waiting_room.is_some() || window_moved => {
                rooms.configure(id, settings, showtime.sale_window).await
            }
            _ => Ok(()),
        };
        if change.waiting_room.is_some() {
            // This process reads the room anew; the others at their next refresh.
            app.rooms.forget(id);
        }
        // The change is saved by now: answering an error would invite a retry that adds
        // the seats again. The room follows its row at the next timer (advance_rooms).
        if let Err(e) = room {
            tracing::error!(
                showtime = id.get(),
                "the waiting room was not updated (it follows its row at the next sweep): {e}"
            );
        }
        Ok::<_, ApiError>(changed)
    })
    .await?;
    tracing::info!(
        showtime = id.get(),
        change = ?change,
        capacity = showtime.capacity.get(),
        sale_state = sale_state.as_str(),
        "an operator changed a showtime"
    );
    let showtime = match counts {
        Ok(counts) => ShowtimeView::new(&showtime, counts),
        Err(e) => {
            // Saved all the same: the answer says so, with the seats left unknown.
            tracing::warn!(
                showtime = id.get(),
                "the change is saved; its seats could not be read after it: {e}"
            );
            ShowtimeView::seats_unknown(&showtime)
        }
    };
    Ok(Json(ListedShowtime {
        showtime,
        sale_state: sale_state.as_str(),
    }))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ShowtimeView>, ApiError> {
    let id: ShowtimeId = id.parse()?;
    match state.app().sale.showtime(id).await? {
        Some((showtime, counts)) => Ok(Json(ShowtimeView::new(&showtime, counts))),
        None => Err(ApiError::NotFound(format!("showtime {id} does not exist"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flash_sale_runtime::extract::parse_json;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `fuzz/fuzz_targets/request_bodies.rs` under proptest: a showtime body gives
        /// a showtime and its window, or a 400, never a panic.
        #[test]
        fn arbitrary_showtime_bodies_give_values_or_400(
            raw in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                ("-?[0-9]{1,12}", "[ -~\\x00-\\x1f\\x7f]{0,20}", "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})", "[ -~]{0,30}")
                    .prop_map(|(c, t, open, close)| format!(
                        r#"{{"capacity": {c}, "title": {t:?}, "sale_opens_at": {open:?}, "sale_closes_at": {close:?}}}"#
                    ).into_bytes()),
            ],
        ) {
            match parse_json::<CreateShowtime>(&raw).and_then(CreateShowtime::validate) {
                Ok(new) => {
                    prop_assert!(new.capacity.get() >= 1);
                    prop_assert!(!new.title.iter().flat_map(|t| t.chars()).any(char::is_control));
                    let window = new.sale_window;
                    if let (Some(o), Some(c)) = (window.opens_at(), window.closes_at()) {
                        prop_assert!(c > o);
                    }
                }
                Err(e) => prop_assert_eq!(e.code(), "bad_request"),
            }
        }

        /// An operator's change body gives a change with at most one seat change, or a
        /// 400, never a panic.
        #[test]
        fn arbitrary_change_bodies_give_a_change_or_400(
            raw in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                (
                    proptest::option::of(any::<bool>()),
                    proptest::option::of(any::<bool>()),
                    proptest::option::of(-5i64..2_000_000),
                    proptest::option::of(-5i64..2_000_000),
                    proptest::option::of(-5i64..2_000_000),
                    proptest::option::of(prop_oneof![Just("null".to_string()), "\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\"", "\"[ -~]{0,12}\""]),
                )
                    .prop_map(|(paused, close, add, remove, capacity, closes)| {
                        let mut fields = vec![];
                        if let Some(p) = paused { fields.push(format!(r#""paused": {p}"#)); }
                        if let Some(c) = close { fields.push(format!(r#""close_now": {c}"#)); }
                        if let Some(n) = add { fields.push(format!(r#""add_seats": {n}"#)); }
                        if let Some(n) = remove { fields.push(format!(r#""remove_seats": {n}"#)); }
                        if let Some(n) = capacity { fields.push(format!(r#""capacity": {n}"#)); }
                        if let Some(t) = closes { fields.push(format!(r#""sale_closes_at": {t}"#)); }
                        format!("{{{}}}", fields.join(", ")).into_bytes()
                    }),
            ],
        ) {
            match parse_json::<ChangeShowtime>(&raw).and_then(|c| c.validate(None)) {
                Ok(change) => {
                    prop_assert!(!(change.close_now && change.sale_closes_at.is_some()));
                    match change.seats {
                        Some(SeatChange::Add(n) | SeatChange::Remove(n)) => prop_assert!((1..=Capacity::MAX).contains(&n)),
                        Some(SeatChange::Set(c)) => prop_assert!(c.get() >= 1),
                        None => {}
                    }
                }
                Err(e) => prop_assert_eq!(e.code(), "bad_request"),
            }
        }
    }
}
