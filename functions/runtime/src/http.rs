//! HTTP pieces every HTTP function shares: one error type whose every variant is one
//! status and one JSON shape, `{"error": "<code>", "message": "<human text>"}`, the JSON
//! body extractor that answers malformed bodies with that shape, the answers' forms, and
//! the abuse controls in front of every handler: per-user and per-address rate limits
//! ([`RateLimits`]), the bound on in-flight requests and the client address.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flash_sale_core::ports::PortError;
use flash_sale_core::sale::{PayError, ReserveError};
use flash_sale_core::{InvalidInput, Reservation, UnixMillis};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as GovernorQuota};
use lambda_http::RequestExt as _;
use lambda_http::request::RequestContext;
use serde::Serialize;
use serde::de::DeserializeOwned;

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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Timeout(_) => "timeout",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Overloaded(_) => "overloaded",
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
        let body = ErrorBody {
            error: self.code(),
            message: self.into_message(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some((name, value)) = extra {
            response.headers_mut().insert(name, value);
        }
        response
    }
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
            | ApiError::NotFound(m)
            | ApiError::Unavailable(m)
            | ApiError::TooManyRequests { message: m, .. }
            | ApiError::Conflict { message: m, .. } => m,
        }
    }
}

/// Every error code an HTTP function may answer with (`openapi.yaml` documents each).
pub const ERROR_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "timeout",
    "payload_too_large",
    "sold_out",
    "already_ordered",
    "already_paid",
    "expired",
    "sale_not_open",
    "sale_closed",
    "rate_limited",
    "unavailable",
    "overloaded",
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
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a request body as `T`, which must be a JSON object (serde would also take an
/// array for a struct). An empty body reads as `{}`, so a route whose fields are
/// all optional (paying with a bearer token) needs no body; a route with a required
/// field still answers 400 naming it. Public for the fuzz targets.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => bytes,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "request body is not the expected JSON: expected an object".into(),
            ));
        }
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not the expected JSON: {e}")))
}

/// Largest request body accepted; anything bigger is a 413.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// The client's address: the TCP peer (when the host serves with `ConnectInfo`), the
/// source IP API Gateway saw (on Lambda), or, only when `trust_forwarded_for` is set
/// because a proxy of ours appends it, the last `X-Forwarded-For` entry.
pub fn client_address(parts: &Parts, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return Some(ip);
    }
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        return Some(peer.ip());
    }
    let source = match parts.extensions.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.as_deref(),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    source.and_then(|ip| ip.parse().ok())
}

/// Token buckets per user and per client address (`governor`, in this process only: on
/// Lambda each instance keeps its own, so API Gateway's throttling is the real bound
/// there; see docs/security.md). A check is a hash lookup and an atomic update.
pub struct RateLimits {
    per_user: Option<DefaultKeyedRateLimiter<i64>>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    limit_loopback: bool,
    trust_forwarded_for: bool,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("per_user", &self.per_user.is_some())
            .field("per_address", &self.per_address.is_some())
            .finish_non_exhaustive()
    }
}

/// Every this many checks on a thread, buckets that are full again are dropped, so the
/// maps hold only recently active keys.
const FORGET_EVERY: u64 = 1 << 16;

thread_local! {
    /// Checks made on this thread. Counted per thread, not in the limits: one counter for
    /// the process would be a cache line every core writes on every request. Over all
    /// threads, the maps are still pruned about once every [`FORGET_EVERY`] checks.
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

fn governor_quota(q: crate::config::Quota) -> Option<GovernorQuota> {
    let rate = NonZeroU32::new(q.per_sec)?;
    let burst = NonZeroU32::new(q.burst)?;
    Some(GovernorQuota::per_second(rate).allow_burst(burst))
}

impl RateLimits {
    pub fn new(config: &crate::config::LimitsConfig) -> Self {
        Self {
            per_user: config
                .per_user
                .and_then(governor_quota)
                .map(governor::RateLimiter::dashmap),
            per_address: config
                .per_address
                .and_then(governor_quota)
                .map(governor::RateLimiter::dashmap),
            limit_loopback: config.limit_loopback,
            trust_forwarded_for: config.trust_forwarded_for,
            clock: DefaultClock::default(),
        }
    }

    fn refused(&self, wait: Duration, who: &str) -> ApiError {
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::TooManyRequests {
            message: format!("too many requests from this {who}; retry after {retry_after} s"),
            retry_after: retry_after.max(1),
        }
    }

    fn tick(&self) {
        let checks = CHECKS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if checks.is_multiple_of(FORGET_EVERY) {
            if let Some(l) = &self.per_user {
                l.retain_recent();
            }
            if let Some(l) = &self.per_address {
                l.retain_recent();
            }
        }
    }

    /// Takes one request from `user`'s bucket, or answers 429.
    pub fn check_user(&self, user: flash_sale_core::UserId) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_user else {
            return Ok(());
        };
        self.tick();
        limiter
            .check_key(&user.get())
            .map_err(|not_until| self.refused(not_until.wait_time_from(self.clock.now()), "user"))
    }

    /// Takes one request from the client address's bucket, or answers 429. Requests
    /// whose address is unknown, or loopback (unless `RATE_LIMIT_LOOPBACK`), pass.
    pub fn check_address(&self, parts: &Parts) -> Result<(), ApiError> {
        let Some(limiter) = &self.per_address else {
            return Ok(());
        };
        let Some(ip) = client_address(parts, self.trust_forwarded_for) else {
            return Ok(());
        };
        if ip.is_loopback() && !self.limit_loopback {
            return Ok(());
        }
        self.tick();
        limiter.check_key(&ip).map_err(|not_until| {
            self.refused(not_until.wait_time_from(self.clock.now()), "address")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitsConfig, Quota};
    use flash_sale_core::UserId;

    fn limits(user: Option<Quota>, address: Option<Quota>) -> RateLimits {
        RateLimits::new(&LimitsConfig {
            per_user: user,
            per_address: address,
            limit_loopback: false,
            trust_forwarded_for: true,
            max_in_flight: 10,
            in_flight_wait: Duration::from_millis(10),
        })
    }

    fn parts(forwarded: &str) -> Parts {
        let req = axum::http::Request::builder()
            .header("x-forwarded-for", forwarded)
            .body(())
            .unwrap();
        req.into_parts().0
    }

    #[test]
    fn a_user_over_the_burst_gets_a_429_with_retry_after() {
        let l = limits(
            Some(Quota {
                per_sec: 1,
                burst: 3,
            }),
            None,
        );
        let u = UserId::new(7).unwrap();
        for _ in 0..3 {
            l.check_user(u).unwrap();
        }
        let refused = l.check_user(u).unwrap_err();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let response = refused.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // Another user has a bucket of their own.
        l.check_user(UserId::new(8).unwrap()).unwrap();
    }

    #[test]
    fn addresses_are_limited_but_loopback_is_exempt_by_default() {
        let l = limits(
            None,
            Some(Quota {
                per_sec: 1,
                burst: 1,
            }),
        );
        l.check_address(&parts("203.0.113.9")).unwrap();
        assert!(l.check_address(&parts("203.0.113.9")).is_err());
        assert!(l.check_address(&parts("10.0.0.1, 203.0.113.10")).is_ok());
        for _ in 0..10 {
            l.check_address(&parts("127.0.0.1")).unwrap();
        }
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

    #[test]
    fn an_empty_body_reads_as_an_empty_object() {
        #[derive(serde::Deserialize)]
        struct Optional {
            #[allow(dead_code)]
            user_id: Option<i64>,
        }
        #[derive(Debug, serde::Deserialize)]
        struct Required {
            #[allow(dead_code)]
            user_id: i64,
        }
        assert!(parse_json::<Optional>(b"").is_ok());
        assert!(parse_json::<Optional>(b"  \n").is_ok());
        let err = parse_json::<Required>(b"").unwrap_err();
        assert!(err.to_string().contains("user_id"), "{err}");
        assert!(parse_json::<Required>(b"[1]").is_err());
    }
}
