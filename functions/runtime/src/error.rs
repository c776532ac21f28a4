//! The one error type of the HTTP functions. Every variant is one status and one JSON
//! shape, `{"error": "<code>", "message": "<human text>"}`; every error body any host
//! answers with (a handler's refusal, an unknown route, a wrong method, a timeout, a
//! panic) comes from here, and [`ERROR_CODES`] lists every code (`openapi.yaml`
//! documents each). A 409 `already_ordered` also names the caller's reservation and its
//! status (`reservation_id`, `status`), so a client whose first answer was lost goes on
//! with it. Failures behind us are logged with their component and answered without
//! naming it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flash_sale_core::InvalidInput;
use flash_sale_core::domain::OutsideSaleWindow;
use flash_sale_core::ports::PortError;
use flash_sale_core::sale::{CancelError, ChangeError, PayError, ReserveError};
use flash_sale_core::{ReservationId, Status};
use serde::Serialize;

use crate::rfc3339;

/// Every error an HTTP function answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: malformed JSON, a missing field, an invalid value.
    #[error("{0}")]
    BadRequest(String),
    /// 401 `unauthorized`, with `WWW-Authenticate: Bearer`: no bearer token, or one that
    /// is malformed, badly signed, expired or not yet valid.
    #[error("{0}")]
    Unauthorized(String),
    /// 408 `timeout`: the request took longer than the server allows.
    #[error("{0}")]
    Timeout(String),
    /// 429 `rate_limited`, with `Retry-After` (seconds): this user or client address sent
    /// more requests than its quota.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// 503 `overloaded`, with `Retry-After: 1`: too many requests in flight; this one was
    /// not started.
    #[error("{0}")]
    Overloaded(String),
    /// 413 `payload_too_large`: the body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 403 `forbidden`: the caller may not touch this resource.
    #[error("{0}")]
    Forbidden(String),
    /// 403 `not_admitted`: the sale goes through a waiting room and the caller showed
    /// no admission that is valid, theirs, for this showtime and unused; nothing changed.
    #[error("{0}")]
    NotAdmitted(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `sold_out`: no seat is left ("Tickets sold out", the Go reference's text). The
    /// answer a crowd gets most after the last seat, from a body built once.
    #[error("Tickets sold out")]
    SoldOut,
    /// 409 with a specific code (`expired`, `cancelled`, `already_paid`, ...):
    /// the request is valid but the sale's state refuses it.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 409 `already_ordered`: the caller already holds or bought a seat of this
    /// showtime; the body names that reservation and its status (`None`: its record is
    /// gone).
    #[error("{message}")]
    AlreadyOrdered {
        message: String,
        reservation: ReservationId,
        status: Option<Status>,
    },
    /// 409 `not_enough_seats` (fewer seats left than a group asked, `available` of them)
    /// or `too_many_seats` (more than the showtime's `max_per_user`): nothing was taken;
    /// the body carries the number that refused it.
    #[error("{message}")]
    Seats {
        code: &'static str,
        message: String,
        available: Option<u32>,
        max_per_user: Option<u32>,
    },
    /// 422 `idempotency_key_reused`: the request's `Idempotency-Key` was used before
    /// with another request (another body, or another reservation to pay); nothing was
    /// done.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// 405 `method_not_allowed`: the route exists, but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 503 `unavailable`: a service behind us failed; nothing was changed (a seat taken
    /// before the failure was given back). Safe to retry. The message never names the
    /// component: that goes to the log.
    #[error("{0}")]
    Unavailable(String),
    /// 503 `not_ready`: this process should get no traffic now (a service it needs does
    /// not answer, or it is stopping); the message says which.
    #[error("{0}")]
    NotReady(String),
    /// 500 `internal`: a handler panicked. Whatever it had done is covered as a crash at
    /// that point would be.
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    /// `already_ordered` only: the caller's reservation and its status.
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    /// `not_enough_seats` only: the seats left.
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<u32>,
    /// `too_many_seats` only: the most seats one buyer may take.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_per_user: Option<u32>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden(_) | ApiError::NotAdmitted(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::SoldOut
            | ApiError::Conflict { .. }
            | ApiError::AlreadyOrdered { .. }
            | ApiError::Seats { .. } => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyKeyReused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Timeout(_) => "timeout",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotAdmitted(_) => "not_admitted",
            ApiError::NotFound(_) => "not_found",
            ApiError::SoldOut => "sold_out",
            ApiError::Conflict { code, .. } | ApiError::Seats { code, .. } => code,
            ApiError::AlreadyOrdered { .. } => "already_ordered",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::NotReady(_) => "not_ready",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::SoldOut = self {
            return sold_out();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "answering {status}");
        }
        let extra = match &self {
            ApiError::Unauthorized(_) => Some((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"flash-sale\""),
            )),
            ApiError::TooManyRequests { retry_after, .. } => {
                Some((header::RETRY_AFTER, HeaderValue::from(*retry_after)))
            }
            ApiError::Overloaded(_) => Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
            _ => None,
        };
        let (reservation_id, reservation_status) = match &self {
            ApiError::AlreadyOrdered {
                reservation,
                status,
                ..
            } => (Some(reservation.to_string()), status.map(Status::as_str)),
            _ => (None, None),
        };
        let (available, max_per_user) = match &self {
            ApiError::Seats {
                available,
                max_per_user,
                ..
            } => (*available, *max_per_user),
            _ => (None, None),
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.into_message(),
            reservation_id,
            status: reservation_status,
            available,
            max_per_user,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The body of every `sold_out` answer, as [`ErrorBody`] writes it (a test keeps the two
/// the same).
const SOLD_OUT_BODY: &str = r#"{"error":"sold_out","message":"Tickets sold out"}"#;

/// The `sold_out` answer, its body never encoded again: nothing allocated but the
/// response and its one header.
fn sold_out() -> Response {
    let mut response = (StatusCode::CONFLICT, SOLD_OUT_BODY).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl ApiError {
    /// The human text, as `Display` shows it, moved out rather than formatted again: every
    /// refusal, sold-out ones first, is answered through here.
    fn into_message(self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Timeout(m)
            | ApiError::Overloaded(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::Forbidden(m)
            | ApiError::NotAdmitted(m)
            | ApiError::NotFound(m)
            | ApiError::MethodNotAllowed(m)
            | ApiError::IdempotencyKeyReused(m)
            | ApiError::Unavailable(m)
            | ApiError::Internal(m)
            | ApiError::NotReady(m)
            | ApiError::TooManyRequests { message: m, .. }
            | ApiError::Conflict { message: m, .. }
            | ApiError::Seats { message: m, .. }
            | ApiError::AlreadyOrdered { message: m, .. } => m,
            e @ ApiError::SoldOut => e.to_string(),
        }
    }
}

/// Every error code an HTTP function may answer with (`openapi.yaml` documents each).
pub const ERROR_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_admitted",
    "not_found",
    "timeout",
    "payload_too_large",
    "sold_out",
    "not_enough_seats",
    "too_many_seats",
    "already_ordered",
    "already_paid",
    "expired",
    "cancelled",
    "sale_not_open",
    "sale_closed",
    "sale_paused",
    "seats_in_use",
    "room_open",
    "idempotency_key_reused",
    "idempotency_key_in_progress",
    "rate_limited",
    "method_not_allowed",
    "unavailable",
    "overloaded",
    "not_ready",
    "internal",
];

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        tracing::error!(
            component = e.component,
            transient = e.transient,
            "{}",
            e.message
        );
        ApiError::Unavailable("a service is unavailable; nothing was changed, please retry".into())
    }
}

impl From<ReserveError> for ApiError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::SoldOut { .. } => ApiError::SoldOut,
            ReserveError::NotEnoughSeats { asked, available } => ApiError::Seats {
                code: "not_enough_seats",
                message: format!(
                    "Not enough seats: {available} left, {asked} asked; nothing was reserved"
                ),
                available: Some(available),
                max_per_user: None,
            },
            ReserveError::TooManySeats {
                asked,
                max_per_user,
            } => ApiError::Seats {
                code: "too_many_seats",
                message: format!(
                    "Too many seats: this showtime allows at most {max_per_user} per buyer, {asked} asked"
                ),
                available: None,
                max_per_user: Some(max_per_user),
            },
            ReserveError::InvalidQuantity => {
                ApiError::BadRequest("quantity must be at least 1".into())
            }
            e @ ReserveError::NotAdmitted => ApiError::NotAdmitted(e.to_string()),
            ReserveError::AlreadyHolds(id, status) => ApiError::AlreadyOrdered {
                message: format!(
                    "Already ordered: this user already holds or bought reservation {id}"
                ),
                reservation: id,
                status,
            },
            ReserveError::UnknownShowtime(id) => {
                ApiError::NotFound(format!("showtime {id} does not exist"))
            }
            ReserveError::OutsideSaleWindow { showtime, why } => match why {
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
                OutsideSaleWindow::Paused => ApiError::Conflict {
                    code: "sale_paused",
                    message: format!(
                        "the sale of showtime {showtime} is paused; try again when it resumes"
                    ),
                },
            },
            ReserveError::Unavailable(e) => e.into(),
        }
    }
}

impl From<PayError> for ApiError {
    fn from(e: PayError) -> Self {
        match e {
            PayError::NotFound => ApiError::NotFound("reservation not found".into()),
            PayError::NotOwner => {
                ApiError::Forbidden("this reservation belongs to another user".into())
            }
            PayError::AlreadyPaid(status) => ApiError::Conflict {
                code: "already_paid",
                message: format!("reservation is already {status}"),
            },
            PayError::Expired => ApiError::Conflict {
                code: "expired",
                message: "the hold expired before it was paid; its seat went back on sale".into(),
            },
            PayError::Cancelled => ApiError::Conflict {
                code: "cancelled",
                message: "the hold was cancelled by its owner; its seat went back on sale".into(),
            },
            PayError::Unavailable(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        match e {
            CancelError::NotFound => ApiError::NotFound("reservation not found".into()),
            CancelError::NotOwner => {
                ApiError::Forbidden("this reservation belongs to another user".into())
            }
            CancelError::AlreadyPaid(status) => ApiError::Conflict {
                code: "already_paid",
                message: format!("reservation is already {status}: too late to cancel"),
            },
            CancelError::Expired => ApiError::Conflict {
                code: "expired",
                message: "the hold had already expired; its seat went back on sale".into(),
            },
            CancelError::Unavailable(e) => e.into(),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::UnknownShowtime(id) => {
                ApiError::NotFound(format!("showtime {id} does not exist"))
            }
            ChangeError::Invalid(e) => e.into(),
            e @ ChangeError::SeatsInUse { .. } => ApiError::Conflict {
                code: "seats_in_use",
                message: e.to_string(),
            },
            e @ ChangeError::RoomOpened { .. } => ApiError::Conflict {
                code: "room_open",
                message: e.to_string(),
            },
            ChangeError::Unavailable(e) => e.into(),
        }
    }
}

/// Fallback for unknown routes: the shared JSON shape, not an empty 404.
pub async fn no_such_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// 405 for a route that exists with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this route does not take that method".into())
}

/// The answer for a handler that panicked (`tower_http`'s `CatchPanicLayer`); the
/// connection and the process carry on.
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    ApiError::Internal("internal error, please retry".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_component_is_logged_not_named_to_the_client() {
        let answer = ApiError::from(PortError::transient("redis", "connection refused"));
        assert_eq!(answer.code(), "unavailable");
        assert!(!answer.to_string().contains("redis"), "{answer}");
    }

    #[test]
    fn the_built_sold_out_body_is_the_one_every_error_body_has() {
        let encoded = serde_json::to_string(&ErrorBody {
            error: ApiError::SoldOut.code(),
            message: ApiError::SoldOut.to_string(),
            reservation_id: None,
            status: None,
            available: None,
            max_per_user: None,
        })
        .unwrap();
        assert_eq!(SOLD_OUT_BODY, encoded);
        let answer = ApiError::from(ReserveError::SoldOut { remembered: true }).into_response();
        assert_eq!(answer.status(), StatusCode::CONFLICT);
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn every_variant_answers_a_listed_code() {
        for e in [
            ApiError::BadRequest(String::new()),
            ApiError::Unauthorized(String::new()),
            ApiError::Timeout(String::new()),
            ApiError::Overloaded(String::new()),
            ApiError::PayloadTooLarge(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::NotAdmitted(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed(String::new()),
            ApiError::IdempotencyKeyReused(String::new()),
            ApiError::Unavailable(String::new()),
            ApiError::Internal(String::new()),
            ApiError::NotReady(String::new()),
            ApiError::SoldOut,
            ApiError::from(ReserveError::NotEnoughSeats {
                asked: 3,
                available: 2,
            }),
            ApiError::from(ReserveError::TooManySeats {
                asked: 3,
                max_per_user: 2,
            }),
        ] {
            assert!(ERROR_CODES.contains(&e.code()), "{}", e.code());
        }
    }

    #[tokio::test]
    async fn a_group_refusal_names_the_number_that_refused_it() {
        let body = |e: ReserveError| async {
            let response = ApiError::from(e).into_response();
            assert_eq!(response.status(), StatusCode::CONFLICT);
            let bytes = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let short = body(ReserveError::NotEnoughSeats {
            asked: 3,
            available: 2,
        })
        .await;
        assert_eq!(
            (&short["error"], &short["available"]),
            (
                &serde_json::json!("not_enough_seats"),
                &serde_json::json!(2)
            )
        );
        assert!(short.get("max_per_user").is_none(), "{short}");
        let big = body(ReserveError::TooManySeats {
            asked: 5,
            max_per_user: 4,
        })
        .await;
        assert_eq!(
            (&big["error"], &big["max_per_user"]),
            (&serde_json::json!("too_many_seats"), &serde_json::json!(4))
        );
        assert!(big.get("available").is_none(), "{big}");
    }

    #[test]
    fn unauthorized_answers_carry_www_authenticate() {
        let response = ApiError::Unauthorized("no token".into()).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }
}
