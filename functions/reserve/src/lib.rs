//! # reserve
//!
//! `POST /reserve` takes a seat for a user (the Go reference's route and answers, kept
//! so its clients work unchanged); `GET /reservations/{id}` shows a reservation to its
//! owner (or an admin).
//! The same [`router`] runs on AWS Lambda (`main.rs`) and in the local process.
//!
//! Before any seat is touched, a reservation must pass, in order: the caller's identity
//! (401), the body's `user_id` against it (403), the user's rate limit (429), and the
//! showtime's sale window (409 `sale_not_open` / `sale_closed`). Sale windows never
//! change once a showtime is created, so each process reads a showtime's window from
//! PostgreSQL once and keeps it: the hot path stays one Redis script.
//!
//! `POST /reserve` is the route a crowd hammers, and once a showtime is sold out most of
//! its answers come from the process's sold-out memory without any I/O, so what axum does
//! per request counts: the handlers' state is one `Arc` (axum clones it for every
//! request), holding the [`Guard`] the [`Caller`] extractor authenticates with.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use flash_sale_core::domain::{OutsideSaleWindow, SaleWindow};
use flash_sale_core::{ReservationId, ShowtimeId, UnixMillis, UserId};
use flash_sale_runtime::App;
use flash_sale_runtime::auth::{Caller, Guard, HasGuard};
use flash_sale_runtime::http::{ApiError, JsonBody, ReservationView, rfc3339};
use serde::{Deserialize, Serialize};

/// The function's routes, protected by their own [`Guard`]: what the Lambda host runs.
pub fn router(app: App) -> Router {
    let guard = Guard::new(&app.config);
    guard.protect(routes(app, &guard))
}

/// The function's routes with `guard` as their authenticator and rate limiter, not yet
/// protected: the local process merges these and protects them once.
pub fn routes(app: App, guard: &Guard) -> Router {
    let state = Reserve(Arc::new(Shared {
        app,
        guard: guard.clone(),
        windows: Windows::default(),
    }));
    Router::new()
        .route("/reserve", post(reserve))
        .route("/reservations/{id}", get(reservation))
        .with_state(state)
}

/// The handlers' state: one reference count to touch per request.
#[derive(Clone)]
struct Reserve(Arc<Shared>);

struct Shared {
    app: App,
    guard: Guard,
    windows: Windows,
}

impl std::ops::Deref for Reserve {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl HasGuard for Reserve {
    fn guard(&self) -> &Guard {
        &self.0.guard
    }
}

/// Showtimes' sale windows as read from PostgreSQL, kept for the life of the process
/// (they never change). Bounded: when full it starts over.
#[derive(Default)]
struct Windows(RwLock<HashMap<ShowtimeId, SaleWindow>>);

const WINDOWS_KEPT: usize = 65_536;

impl Windows {
    /// The showtime's window, or `None` when there is no such showtime.
    async fn of(&self, app: &App, showtime: ShowtimeId) -> Result<Option<SaleWindow>, ApiError> {
        if let Some(w) = self.0.read().ok().and_then(|m| m.get(&showtime).copied()) {
            return Ok(Some(w));
        }
        let Some(window) = app.sale.db().sale_window(showtime).await? else {
            return Ok(None);
        };
        if let Ok(mut m) = self.0.write() {
            if m.len() >= WINDOWS_KEPT {
                m.clear();
            }
            m.insert(showtime, window);
        }
        Ok(Some(window))
    }
}

fn now() -> UnixMillis {
    UnixMillis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default(),
    )
}

/// The refusal for a reservation outside its showtime's sale window.
fn outside(showtime: ShowtimeId, why: OutsideSaleWindow) -> ApiError {
    match why {
        OutsideSaleWindow::NotOpenYet { opens_at } => ApiError::Conflict {
            code: "sale_not_open",
            message: format!(
                "the sale of showtime {showtime} opens at {}",
                rfc3339(opens_at)
            ),
        },
        OutsideSaleWindow::Closed { closed_at } => ApiError::Conflict {
            code: "sale_closed",
            message: format!(
                "the sale of showtime {showtime} closed at {}",
                rfc3339(closed_at)
            ),
        },
    }
}

/// The body: `user_id` is required when `AUTH_MODE=none` and optional (but must match
/// the token) with a bearer token. Public for the fuzz targets.
#[derive(Debug, Deserialize)]
pub struct ReserveRequest {
    pub user_id: Option<i64>,
    pub showtime_id: i64,
}

impl ReserveRequest {
    /// The user this request acts for, as `caller`, and the showtime.
    pub fn parse(&self, caller: &Caller) -> Result<(UserId, ShowtimeId), ApiError> {
        let user = caller.acting_as(self.user_id)?;
        Ok((user, ShowtimeId::new(self.showtime_id)?))
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
}

async fn reserve(
    State(s): State<Reserve>,
    caller: Caller,
    JsonBody(req): JsonBody<ReserveRequest>,
) -> Result<Json<Reserved>, ApiError> {
    let (user, showtime) = req.parse(&caller)?;
    s.guard.limits().check_user(user)?;
    match s.windows.of(&s.app, showtime).await? {
        None => {
            return Err(ApiError::NotFound(format!(
                "showtime {showtime} does not exist"
            )));
        }
        Some(window) => window.admits(now()).map_err(|why| outside(showtime, why))?,
    }
    let r = s.app.sale.reserve(user, showtime).await?;
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
    State(s): State<Reserve>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ReservationView>, ApiError> {
    if let Caller::Verified(me) = caller {
        s.guard.limits().check_user(me.user)?;
    }
    let id: ReservationId = id.parse()?;
    match s.app.sale.reservation(id).await? {
        Some(r) => {
            caller.may_read(r.user)?;
            Ok(Json(ReservationView::from(&r)))
        }
        None => Err(ApiError::NotFound(format!("reservation {id} not found"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flash_sale_runtime::auth::Identity;
    use flash_sale_runtime::http::parse_json;
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
