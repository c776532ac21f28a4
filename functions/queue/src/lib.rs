//! # queue
//!
//! A showtime's waiting room, for buyers: `POST /showtimes/{id}/queue` puts the caller in
//! line (once: joining again finds the same place, unless the caller passed and holds
//! no seat: then at the back, as a new arrival) and `GET /showtimes/{id}/queue/me`
//! says where they stand: `waiting` before the room opens (everyone who joined by then
//! is drawn by lot at the opening), `in_line` with their place, how many are ahead and
//! an estimated wait, `admitted` with an admission to send to `POST /reserve` as its
//! `Admission-Token`, `passed` once the admission was used or ran out, or `sold_out`
//! as soon as nothing is left to wait for.
//!
//! Both answers carry a signed ticket naming the caller's place once it is known; sent
//! back in `Queue-Ticket`, it lets this process answer a poll from its snapshot of the
//! room (read from Redis at most once per `WAITING_ROOM_REFRESH_MS`) until the caller's
//! turn may have come. The same [`router`] runs on AWS Lambda (`main.rs`) and in the
//! local process.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use flash_sale_core::waiting_room::{Asker, Joined, Standing, Status, WaitingRoomStore as _};
use flash_sale_core::{ShowtimeId, UnixMillis, UserId};
use flash_sale_runtime::error::ApiError;
use flash_sale_runtime::extract::JsonBody;
use flash_sale_runtime::guard::{AppState, Guard, HasGuard as _};
use flash_sale_runtime::identity::Caller;
use flash_sale_runtime::room_passes::Ticket;
use flash_sale_runtime::{App, metrics, now, rfc3339};
use serde::{Deserialize, Serialize};

/// The header a poll sends its ticket back in.
pub const QUEUE_TICKET: &str = "queue-ticket";

/// How long a ticket lasts: long enough for any line.
const TICKET_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A poll's ticket is sent back as it came while it names the caller's place as the
/// answer does, was signed under the current secret and has at least this much of its
/// lifetime left; otherwise the answer carries one signed anew. A crowd polling its place
/// costs no signature per poll.
const TICKET_KEPT_WHILE: Duration = Duration::from_secs(12 * 3600);

/// The function's routes, protected by their own [`Guard`]: what the Lambda host runs.
pub fn router(app: App) -> Router {
    let guard = Guard::new(&app.config);
    guard.protect(routes(app, &guard))
}

/// The routes with `guard` as their authenticator and rate limiter, not yet protected:
/// the local process merges these and protects them once.
pub fn routes(app: App, guard: &Guard) -> Router {
    Router::new()
        .route("/showtimes/{id}/queue", post(join))
        .route("/showtimes/{id}/queue/me", get(me))
        .with_state(AppState::new(app, guard.clone()))
}

/// The body of `POST /showtimes/{id}/queue`: `user_id` is required when
/// `AUTH_MODE=none` and optional (but must match the token) with a bearer token.
#[derive(Debug, Deserialize)]
pub struct JoinRequest {
    pub user_id: Option<i64>,
}

/// The query of `GET /showtimes/{id}/queue/me`: `user_id` as for the body of a join.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    pub user_id: Option<i64>,
}

/// Where a caller stands, as both routes answer it.
#[derive(Debug, Serialize)]
pub struct QueueStatus {
    showtime_id: i64,
    user_id: i64,
    /// `waiting`, `in_line`, `admitted`, `passed`, `sold_out` or `not_in_line`.
    status: &'static str,
    /// Send it back in `Queue-Ticket` when polling; `null` when not in line.
    ticket: Option<String>,
    /// The caller's place (0 is the first), once the room is open.
    place: Option<u64>,
    /// Places before the caller's not yet admitted.
    ahead: Option<u64>,
    /// At the pace the line moves now, when it moves.
    estimated_wait_secs: Option<f64>,
    /// Ask again in this many milliseconds (`null`: nothing left to wait for). The
    /// room paces its whole line with it: before the opening, early joiners are told to
    /// come back at the opening, in the order the lottery is likely to give them.
    poll_after_ms: Option<u64>,
    /// For `POST /reserve`'s `Admission-Token`, while admitted.
    admission: Option<String>,
    admitted_until: Option<String>,
}

/// `POST /showtimes/{id}/queue`: a place in line (the caller's own if they joined
/// before). 404 when the showtime has no waiting room.
async fn join(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> Result<Json<QueueStatus>, ApiError> {
    let user = caller.acting_as(req.user_id)?;
    let showtime: ShowtimeId = id.parse()?;
    state.guard().limits().check_user(user)?;
    let app = state.app();
    // The lottery's number: the server's, never taken from the client.
    let room = room_salt(app, showtime).await?;
    let lot = app.passes.lot(user, showtime, room);
    let standing = match app.rooms.store().join(showtime, user, lot).await? {
        Joined::Standing(standing) => standing,
        Joined::NoRoom => {
            open_room(app, showtime).await?;
            match app.rooms.store().join(showtime, user, lot).await? {
                Joined::Standing(standing) => standing,
                Joined::NoRoom => return Err(no_room(showtime)),
            }
        }
    };
    let status = app
        .rooms
        .status_of(showtime, standing, lot, now())
        .await?
        .ok_or_else(|| no_room(showtime))?;
    Ok(Json(answer(app, "join", showtime, user, status, None)))
}

/// `GET /showtimes/{id}/queue/me`: the caller's standing, from this process's snapshot
/// of the room when the `Queue-Ticket` names a place whose turn has not come.
async fn me(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<QueueStatus>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    if query.user_id.is_none() && caller == Caller::Trusted {
        return Err(ApiError::BadRequest(
            "without a bearer token, say whose place: ?user_id=...".into(),
        ));
    }
    let user = caller.acting_as(query.user_id)?;
    let showtime: ShowtimeId = id.parse()?;
    state.guard().limits().check_user(user)?;
    let app = state.app();
    let presented = match headers.get(QUEUE_TICKET) {
        None => None,
        Some(raw) => {
            let raw = raw.to_str().unwrap_or_default();
            let ticket = app
                .passes
                .check_ticket(raw, user, showtime, now())
                .map_err(|e| ApiError::Forbidden(format!("the Queue-Ticket is refused: {e}")))?;
            Some((raw, ticket))
        }
    };
    // From this process's view of the room, however old; then from the store once it
    // is found gone there (the room set up again from the catalog, or 404).
    let mut room = app.rooms.salt(showtime).await?;
    let (presented, status) = loop {
        let salt = match room {
            Some(salt) => salt,
            None => room_salt(app, showtime).await?,
        };
        // A place in another room (one removed and set up again since) means nothing
        // here: such a ticket is answered from the store, as if none had come.
        let presented = presented.filter(|(_, ticket)| ticket.room.is_none_or(|r| r == salt));
        let asker = Asker {
            user,
            ticket: presented.is_some(),
            place: presented.and_then(|(_, ticket)| ticket.place),
            lot: app.passes.lot(user, showtime, salt),
        };
        match app.rooms.status(showtime, asker, now()).await? {
            Some(status) => break (presented, status),
            None if room.is_some() => room = None,
            None => return Err(no_room(showtime)),
        }
    };
    Ok(Json(answer(
        app, "status", showtime, user, status, presented,
    )))
}

/// The lottery salt of a showtime's room, from this process's snapshot (the room set up
/// again from the catalog where Redis has none); 404 when the showtime has no room.
async fn room_salt(app: &App, showtime: ShowtimeId) -> Result<u64, ApiError> {
    if let Some(room) = app.rooms.snapshot(showtime).await? {
        return Ok(room.salt);
    }
    open_room(app, showtime).await?;
    match app.rooms.snapshot(showtime).await? {
        Some(room) => Ok(room.salt),
        None => Err(no_room(showtime)),
    }
}

/// Sets up a showtime's room in Redis from the catalog, where Redis has none (its
/// set-up at creation failed, or Redis lost it): 404 when the showtime has no room.
async fn open_room(app: &App, showtime: ShowtimeId) -> Result<(), ApiError> {
    // Under the row's lock: an operator removing the room meanwhile is not undone.
    let Some(known) = app
        .sale
        .set_room_its_row_has(showtime, app.rooms.store())
        .await?
    else {
        return Err(ApiError::NotFound(format!(
            "showtime {showtime} does not exist"
        )));
    };
    if known.waiting_room.is_none() {
        return Err(no_room(showtime));
    }
    tracing::warn!(
        showtime = showtime.get(),
        "the waiting room was missing in Redis: set up again from the catalog"
    );
    Ok(())
}

fn no_room(showtime: ShowtimeId) -> ApiError {
    ApiError::NotFound(format!(
        "showtime {showtime} has no waiting room: reserve directly"
    ))
}

fn place_of(standing: Standing) -> Option<u64> {
    match standing {
        Standing::InLine { place, .. }
        | Standing::Admitted { place, .. }
        | Standing::Passed { place } => Some(place),
        Standing::Waiting | Standing::SoldOut | Standing::NotInLine => None,
    }
}

/// The answer to a join or a poll, with the ticket the poll came with (`presented`, as
/// sent and as checked), sent back when it still says all a new one would: its place, in
/// the room the answer came from.
fn answer(
    app: &App,
    route: &'static str,
    showtime: ShowtimeId,
    user: UserId,
    status: Status,
    presented: Option<(&str, Ticket)>,
) -> QueueStatus {
    let standing = status.standing;
    metrics::room_line(showtime.get(), status.room.joined, status.room.served);
    let place = place_of(standing);
    let room = status.room.salt;
    let now = now();
    let ticket = (standing != Standing::NotInLine).then(|| match presented {
        Some((raw, ticket))
            if ticket.place == place
                && ticket.room == Some(room)
                && ticket.under_current_secret
                && ticket.until.0 >= now.0 + TICKET_KEPT_WHILE.as_millis() as u64 =>
        {
            raw.to_owned()
        }
        _ => {
            let until = UnixMillis(now.0 + TICKET_LIFETIME.as_millis() as u64);
            app.passes.ticket(user, showtime, place, Some(room), until)
        }
    });
    let (kind, ahead, admission, admitted_until) = match standing {
        Standing::Waiting => ("waiting", None, None, None),
        Standing::InLine { ahead, .. } => ("in_line", Some(ahead), None, None),
        Standing::Admitted { place, until } => (
            "admitted",
            Some(0),
            Some(app.passes.admission(user, showtime, place, until)),
            Some(rfc3339(until)),
        ),
        Standing::Passed { .. } => ("passed", Some(0), None, None),
        Standing::SoldOut => ("sold_out", None, None, None),
        Standing::NotInLine => ("not_in_line", None, None, None),
    };
    metrics::room_answer(route, kind);
    QueueStatus {
        showtime_id: showtime.get(),
        user_id: user.get(),
        status: kind,
        ticket,
        place,
        ahead,
        estimated_wait_secs: status.estimated_wait_secs,
        poll_after_ms: status.poll_after.map(|d| d.as_millis() as u64),
        admission,
        admitted_until,
    }
}
