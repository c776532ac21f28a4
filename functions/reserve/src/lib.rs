//! # reserve
//!
//! `POST /reserve` takes a seat for a user (the Go reference's route and answers, kept
//! so its clients work unchanged); `GET /reservations/{id}` shows a reservation to its
//! owner (or an admin); `DELETE /reservations/{id}` lets its owner release a hold before
//! its deadline (`CANCELLED`), its seat on sale again at once; `GET /me/reservations`
//! lists the caller's reservations across showtimes, newest first, a page at a time.
//! The same [`router`] runs on AWS Lambda (`main.rs`) and in the local process.
//!
//! Before any seat is touched, a reservation must pass, in order: the caller's identity
//! (401), the body's `user_id` against it (403), the user's rate limit (429), then the
//! sale's own rules in [`Sale::reserve`](flash_sale_core::Sale::reserve): the showtime
//! exists (404) and its sale window is open (409 `sale_not_open` / `sale_closed`). A
//! request sent with an `Idempotency-Key` is answered from its key, once the caller,
//! the body and the rate limit have passed, before the sale is asked at all
//! ([`flash_sale_runtime::idempotency`]).

use axum::extract::FromRequestParts;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use flash_sale_core::sale::ReserveError;
use flash_sale_core::{Admission, KeyedRoute, Reservation, ReservationId, ShowtimeId, UserId};
use flash_sale_runtime::error::ApiError;
use flash_sale_runtime::extract::JsonBody;
use flash_sale_runtime::guard::{AppState, Guard, HasGuard as _};
use flash_sale_runtime::idempotency::{self, KeyedJson};
use flash_sale_runtime::identity::Caller;
use flash_sale_runtime::{App, metrics, now, rfc3339, to_the_end};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;

/// The function's routes, protected by their own [`Guard`]: what the Lambda host runs.
pub fn router(app: App) -> Router {
    let guard = Guard::new(&app.config);
    guard.protect(routes(app, &guard))
}

/// The function's routes with `guard` as their authenticator and rate limiter, not yet
/// protected: the local process merges these and protects them once.
pub fn routes(app: App, guard: &Guard) -> Router {
    Router::new()
        .route("/reserve", post(reserve))
        .route("/reservations/{id}", get(reservation).delete(cancel))
        .route("/me/reservations", get(my_reservations))
        .with_state(AppState::new(app, guard.clone()))
}

/// The body: `user_id` is required when `AUTH_MODE=none` and optional (but must match
/// the token) with a bearer token. Public for the fuzz targets.
#[derive(Debug, Deserialize)]
pub struct ReserveRequest {
    pub user_id: Option<i64>,
    pub showtime_id: i64,
    /// Seats to take at once, as one reservation (a group): 1 when absent.
    #[serde(default)]
    pub quantity: Option<i64>,
}

impl ReserveRequest {
    /// The user this request acts for, as `caller`, and the showtime.
    pub fn parse(&self, caller: &Caller) -> Result<(UserId, ShowtimeId), ApiError> {
        let user = caller.acting_as(self.user_id)?;
        Ok((user, ShowtimeId::new(self.showtime_id)?))
    }

    /// The seats asked: 1 when absent; 400 below 1. Above the showtime's max_per_user
    /// it is the sale that refuses (409 `too_many_seats`).
    pub fn quantity(&self) -> Result<u32, ApiError> {
        match self.quantity {
            None => Ok(1),
            Some(q) if q < 1 => Err(ApiError::BadRequest(format!(
                "quantity must be at least 1, got {q}"
            ))),
            Some(q) => Ok(u32::try_from(q).unwrap_or(u32::MAX)),
        }
    }
}

#[derive(Debug, Serialize)]
struct Reserved {
    message: &'static str,
    status: &'static str,
    reservation_id: String,
    showtime_id: i64,
    user_id: i64,
    expires_at: String,
    quantity: u32,
}

/// The header that carries a waiting room's admission to `POST /reserve`.
pub const ADMISSION_TOKEN: &str = "admission-token";

/// `POST /reserve`. With an `Idempotency-Key`, the key is answered from before the sale
/// is asked (and so before its sold-out memory): see [`idempotency`]. A showtime behind
/// a waiting room takes only a buyer with an `Admission-Token` (theirs, for it, not run
/// out: 403 `not_admitted` otherwise, nothing changed), which its hold or a sold-out
/// answer uses up; a replay under an `Idempotency-Key` is answered without it.
async fn reserve(
    State(state): State<AppState>,
    caller: Caller,
    AdmissionToken(pass): AdmissionToken,
    KeyedJson { body: req, key }: KeyedJson<ReserveRequest>,
) -> Result<Response, ApiError> {
    let (user, showtime) = req
        .parse(&caller)
        .inspect_err(metrics::reservation_rejected)?;
    let quantity = req.quantity().inspect_err(metrics::reservation_rejected)?;
    // What this process already knows refuses at once (the crowd after the last seat):
    // no task, no store, the body built once. Not a keyed request (its key answers
    // first) nor one showing an admission (checked first). Before the user's rate
    // limit: such a refusal costs less than the 429 would, and takes nothing from the
    // user's bucket (the per-address limit, at the front, still counts it).
    if key.is_none()
        && pass.is_none()
        && let Some(refusal) = state
            .app()
            .sale
            .refusal_at_once(showtime, quantity, Admission::None)
    {
        metrics::reservation(&Err(&refusal));
        return Err(refusal.into());
    }
    state.guard().limits().check_user(user)?;
    let keyed = key.map(|key| key.scoped(KeyedRoute::Reserve, showtime, user, ""));
    let held = state.clone();
    // Boxed: the hold's future is large, and a refusal above need not carry (and copy)
    // its room.
    Ok(
        Box::pin(idempotency::answer(state.app(), keyed, async move {
            let app = held.app();
            // A token that does not pass is shown as nothing: a showtime without a
            // waiting room ignores it (one whose room was removed, a stale header), and
            // one with a room refuses it before its stock is asked, with the reason.
            let (admission, refused) = match pass {
                None => (Admission::None, None),
                Some(pass) => match app.passes.check_admission(&pass, user, showtime, now()) {
                    Ok(_) => (Admission::Shown, None),
                    Err(e) => (Admission::None, Some(e)),
                },
            };
            let reserved = app
                .sale
                .reserve_through(user, showtime, quantity, admission)
                .await;
            metrics::reservation(&reserved.as_ref().map(|_| ()));
            if let (Err(ReserveError::NotAdmitted), Some(e)) = (&reserved, refused) {
                return Err(ApiError::NotAdmitted(format!(
                    "the Admission-Token is refused: {e}"
                )));
            }
            if admission == Admission::Shown && reserved.is_ok() {
                // An admission used: the next in line may be let in (read at most once per
                // refresh by this process).
                let _ = app.rooms.snapshot(showtime).await;
            }
            let r = reserved?;
            Ok(Json(Reserved {
                message: "Ticket reserved successfully",
                status: r.status.as_str(),
                reservation_id: r.id.to_string(),
                showtime_id: showtime.get(),
                user_id: user.get(),
                expires_at: rfc3339(r.expires_at),
                quantity: r.quantity,
            }))
        }))
        .await,
    )
}

/// The `Admission-Token` header, read alone (not a copy of every header).
struct AdmissionToken(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for AdmissionToken {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get(ADMISSION_TOKEN)
                .map(|v| v.to_str().unwrap_or_default().to_owned()),
        ))
    }
}

/// A reservation as `GET /reservations/{id}` shows it.
#[derive(Debug, Serialize)]
struct ReservationView {
    id: String,
    showtime_id: i64,
    user_id: i64,
    status: &'static str,
    expires_at: String,
    quantity: u32,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        Self {
            id: r.id.to_string(),
            showtime_id: r.showtime().get(),
            user_id: r.user.get(),
            status: r.status.as_str(),
            expires_at: rfc3339(r.expires_at),
            quantity: r.quantity,
        }
    }
}

async fn reservation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    if let Caller::Verified(me) = caller {
        state.guard().limits().check_user(me.user)?;
    }
    let id: ReservationId = id.parse()?;
    match state.app().sale.reservation(id).await? {
        Some(r) => {
            caller.may_read(r.user)?;
            Ok(Json(ReservationView::from(&r)))
        }
        None => Err(ApiError::NotFound(format!("reservation {id} not found"))),
    }
}

/// The query of `GET /me/reservations`: `user_id` as for the other routes (required
/// without a token), `limit` 1..=100 (20), `cursor` a previous page's `next_cursor`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub user_id: Option<i64>,
    pub limit: Option<usize>,
    pub cursor: Option<u64>,
}

/// The most reservations one page holds.
pub const MAX_PAGE: usize = 100;

#[derive(Debug, Serialize)]
struct ReservationList {
    reservations: Vec<ReservationView>,
    /// The `cursor` of the next page; `null` on the last one.
    next_cursor: Option<String>,
}

/// The caller's reservations (holds, paid, ordered, expired, cancelled) across
/// showtimes, newest first. On a single Redis the list is written with each hold, in
/// the reserve call; on Redis Cluster just after it, so a hold whose process stopped in
/// between is missing from it.
async fn my_reservations(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ReservationList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    if query.user_id.is_none() && caller == Caller::Trusted {
        return Err(ApiError::BadRequest(
            "without a bearer token, say whose reservations: ?user_id=...".into(),
        ));
    }
    let user = caller.acting_as(query.user_id)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_PAGE}, not {limit}"
        )));
    }
    state.guard().limits().check_user(user)?;
    let page = state
        .app()
        .sale
        .user_reservations(user, query.cursor, limit)
        .await?;
    Ok(Json(ReservationList {
        reservations: page
            .reservations
            .iter()
            .map(ReservationView::from)
            .collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

/// The body of `DELETE /reservations/{id}`: as `POST /reservations/{id}/pay`'s, `user_id`
/// is required when `AUTH_MODE=none`, optional (but must match) with a bearer token.
#[derive(Debug, Deserialize)]
pub struct CancelRequest {
    pub user_id: Option<i64>,
}

/// `RESERVED -> CANCELLED` for the owner: 200 with the reservation as it is now (a
/// repeated cancel answers the same), 409 `already_paid` / `expired` when it is too late.
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CancelRequest>,
) -> Result<Json<ReservationView>, ApiError> {
    let user = caller.acting_as(req.user_id)?;
    let id: ReservationId = id.parse()?;
    state.guard().limits().check_user(user)?;
    let sale = state.app().sale.clone();
    to_the_end(async move {
        let cancelled = sale.cancel(id, user).await;
        metrics::cancellation(&cancelled.as_ref().map(|_| ()));
        cancelled?;
        // Cancelled by now: a failed read says so, not that nothing was changed.
        let read = sale.reservation(id).await.map_err(|_| {
            ApiError::Unavailable(format!(
                "reservation {id} is cancelled, but could not be read back; \
                 GET /reservations/{id} shows it (a second cancel answers it too)"
            ))
        })?;
        match read {
            Some(r) => Ok(Json(ReservationView::from(&r))),
            None => Err(ApiError::NotFound(format!("reservation {id} not found"))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use flash_sale_runtime::extract::parse_json;
    use flash_sale_runtime::identity::Identity;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `fuzz/fuzz_targets/request_bodies.rs` under proptest: a body and a path id
        /// give values or a 4xx, never a panic.
        #[test]
        fn arbitrary_bodies_and_ids_give_values_or_4xx(
            raw in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "\\{(\"user_id\": ?(-?[0-9]{1,22}|null|\"7\")(, )?)?(\"showtime_id\": ?-?[0-9.e]{1,25})?\\}"
                    .prop_map(String::into_bytes),
            ],
            id in "[0-9+-]{0,25}|[ -~]{0,30}",
        ) {
            let me = Caller::Verified(Identity { user: UserId::new(7).unwrap(), admin: false });
            match parse_json::<ReserveRequest>(&raw) {
                Ok(r) => for caller in [Caller::Trusted, me] {
                    if let Ok((user, showtime)) = r.parse(&caller) {
                        prop_assert!(user.get() > 0 && showtime.get() > 0);
                    }
                },
                Err(e) => prop_assert_eq!(e.code(), "bad_request"),
            }
            if let Ok(parsed) = id.parse::<ReservationId>() {
                prop_assert_eq!(parsed.to_string().parse::<ReservationId>().unwrap(), parsed);
            }
        }
    }

    #[test]
    fn with_a_token_the_body_user_may_be_left_out_but_not_contradict_it() {
        let me = Caller::Verified(Identity {
            user: UserId::new(7).unwrap(),
            admin: false,
        });
        let r: ReserveRequest = parse_json(br#"{"showtime_id": 3}"#).unwrap();
        assert_eq!(r.parse(&me).unwrap().0.get(), 7);
        assert_eq!(r.parse(&Caller::Trusted).unwrap_err().code(), "bad_request");
        let r: ReserveRequest = parse_json(br#"{"user_id": 8, "showtime_id": 3}"#).unwrap();
        assert_eq!(r.parse(&me).unwrap_err().code(), "forbidden");
    }
}
