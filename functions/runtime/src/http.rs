//! HTTP pieces every HTTP function shares: one error type whose every variant is one
//! status and one JSON shape, `{"error": "<code>", "message": "<human text>"}`, the JSON
//! body extractor that answers malformed bodies with that shape, and the answers' forms.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flash_sale_core::ports::PortError;
use flash_sale_core::sale::{PayError, ReserveError};
use flash_sale_core::{InvalidInput, Reservation, UnixMillis};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every error an HTTP function answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `bad_request`: malformed JSON, a missing field, an invalid value.
    #[error("{0}")]
    BadRequest(String),
    /// 413 `payload_too_large`: the body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 403 `forbidden`: the caller may not touch this resource.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 with a specific code (`sold_out`, `already_ordered`, `expired`,
    /// `already_paid`): the request is valid but the sale's state refuses it.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 503 `unavailable`: a service behind us failed; nothing was changed (a seat taken
    /// before the failure was given back). Safe to retry.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { code, .. } => code,
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "answering {status}");
        }
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
        };
        (status, axum::Json(body)).into_response()
    }
}

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
        ApiError::Unavailable(format!("{} is unavailable, please retry", e.component))
    }
}

impl From<ReserveError> for ApiError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::SoldOut => ApiError::Conflict {
                code: "sold_out",
                message: "Tickets sold out".into(),
            },
            ReserveError::AlreadyHolds(id) => ApiError::Conflict {
                code: "already_ordered",
                message: format!(
                    "Already ordered: this user already holds or bought reservation {id}"
                ),
            },
            ReserveError::UnknownShowtime(id) => {
                ApiError::NotFound(format!("showtime {id} does not exist"))
            }
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
            PayError::Unavailable(e) => e.into(),
        }
    }
}

/// A JSON body. Like the Go reference (Gin's `ShouldBindJSON`), a body is read as JSON
/// whatever its `Content-Type`, so old clients work unchanged; anything that is not the
/// expected JSON object is a 400 in the shared error shape, and a body over the limit a
/// 413, never axum's plain-text rejections.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(rejection.body_text()));
            }
            Err(rejection) => return Err(ApiError::BadRequest(rejection.body_text())),
        };
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::BadRequest(format!("request body is not the expected JSON: {e}"))
        })
    }
}

/// RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(ms: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms.0 as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A reservation as `GET /reservations/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct ReservationView {
    pub id: String,
    pub showtime_id: i64,
    pub user_id: i64,
    pub status: &'static str,
    pub expires_at: String,
}

impl From<&Reservation> for ReservationView {
    fn from(r: &Reservation) -> Self {
        Self {
            id: r.id.to_string(),
            showtime_id: r.showtime().get(),
            user_id: r.user.get(),
            status: r.status.as_str(),
            expires_at: rfc3339(r.expires_at),
        }
    }
}

/// Fallback for unknown routes: the shared JSON shape, not an empty 404.
pub async fn no_such_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}
