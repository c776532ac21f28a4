//! The `Idempotency-Key` header on `POST /reserve` and `POST /reservations/{id}/pay`
//! (and, kept on the row it creates, `POST /showtimes`: see the end), after the IETF
//! draft (draft-ietf-httpapi-idempotency-key-header).
//!
//! A request sent with a key is answered from the key before anything else is consulted
//! (the seat store, the process's sold-out memory):
//! - the first request under the key claims it (atomically, for [`LEASE`]), recording a
//!   fingerprint of what it asks (the route, the reservation paid, the JSON body, key
//!   order and spacing aside), does the work, and records its answer for
//!   `IDEMPOTENCY_KEY_TTL_SECS`. Every answer below 500 but 403 is final and recorded (a
//!   reservation, `sold_out`, `already_ordered`, `sale_not_open`, `expired`, ...); a 5xx
//!   (a service behind us failed, nothing was changed) or a 403 (a credential refused,
//!   such as a waiting room's admission: nothing was changed) releases the claim, so a
//!   retry runs again;
//! - a later request with the same fingerprint gets the recorded status and body again,
//!   with `Idempotent-Replayed: true`; while the first is still at work it gets 409
//!   `idempotency_key_in_progress` (retry shortly);
//! - a request with another fingerprint under the key gets 422 `idempotency_key_reused`,
//!   and nothing is done.
//!
//! A key is the caller's (the user the request acts for), the route's and the
//! showtime's ([`KeyScope`]): another user's identical key, or the same key sent for
//! another showtime, is another key. A malformed key is a 400 before anything is done.
//!
//! `POST /showtimes` reads its key with [`KeyedJson`] too, but keeps it on the row it
//! creates ([`SentKey::for_creation`], the catalog's `create_showtime_once`): there is
//! no showtime to keep it beside before the request.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flash_sale_core::idempotency::{
    Claim, ClaimToken, CreationKey, Fingerprint, IdempotencyKey, IdempotencyStore, KeyScope,
    KeyedRoute, RecordedAnswer,
};
use flash_sale_core::{ShowtimeId, UserId};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::extract::parse_json;
use crate::{App, metrics, to_the_end};

/// The request header that carries a key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The answer header that marks a replayed answer.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a claim holds its key while its request is at work: longer than any
/// request runs (the request timeout is 10 s), so that it only ends early for a process
/// that died at work. Until it ends, a retry under the key answers 409
/// `idempotency_key_in_progress`; then it runs again.
pub const LEASE: Duration = Duration::from_secs(30);

/// A JSON body (as [`JsonBody`](crate::extract::JsonBody) reads it) and the
/// `Idempotency-Key` the request carried, if any, with the body as sent.
#[derive(Debug)]
pub struct KeyedJson<T> {
    pub body: T,
    pub key: Option<SentKey>,
}

/// A request's key and the body it came with, not yet placed in its scope.
#[derive(Debug, Clone)]
pub struct SentKey {
    key: IdempotencyKey,
    raw: Bytes,
}

/// A key in its scope, with the fingerprint of the request that sent it.
#[derive(Debug, Clone)]
pub struct Keyed {
    pub scope: KeyScope,
    pub fingerprint: Fingerprint,
}

impl SentKey {
    /// The key of `user` on `route` in `showtime`; `target` names what the path names
    /// (the reservation paid; empty for reserve), which is part of the fingerprint.
    pub fn scoped(
        self,
        route: KeyedRoute,
        showtime: ShowtimeId,
        user: UserId,
        target: &str,
    ) -> Keyed {
        Keyed {
            fingerprint: fingerprint(route, target, &self.raw),
            scope: KeyScope {
                showtime,
                user,
                route,
                key: self.key,
            },
        }
    }
}

impl SentKey {
    /// The key of an operator's `POST /showtimes` (`by`: the verified operator, `None`
    /// where nobody is verified), with the fingerprint of the body it came with.
    pub fn for_creation(self, by: Option<UserId>) -> CreationKey {
        CreationKey {
            by,
            fingerprint: fingerprint(KeyedRoute::CreateShowtime, "", &self.raw),
            key: self.key,
        }
    }
}

/// The key from a request's headers: `None` without one; a 400 for a malformed one or
/// for more than one.
pub fn key_of(headers: &axum::http::HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "send one Idempotency-Key header, not several".into(),
        ));
    }
    Ok(Some(IdempotencyKey::parse(value.as_bytes())?))
}

impl<S, T> FromRequest<S> for KeyedJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = key_of(req.headers())?;
        let raw = match Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::PayloadTooLarge(rejection.body_text()));
            }
            Err(rejection) => return Err(ApiError::BadRequest(rejection.body_text())),
        };
        let body = parse_json(&raw)?;
        Ok(Self {
            body,
            key: key.map(|key| SentKey { key, raw }),
        })
    }
}

/// What identifies a request under a key: SHA-256 of the route, the path's target and
/// the JSON body in a canonical form (object keys sorted, no spacing), so the same JSON
/// sent again matches however it is laid out; an empty body reads as `{}`.
pub fn fingerprint(route: KeyedRoute, target: &str, raw: &[u8]) -> Fingerprint {
    let mut canonical = String::new();
    match serde_json::from_slice::<Value>(raw) {
        Ok(value) => write_canonical(&value, &mut canonical),
        // Only bodies that parsed as the route's object get here; an empty one is `{}`.
        Err(_) if raw.iter().all(u8::is_ascii_whitespace) => canonical.push_str("{}"),
        Err(_) => canonical.push_str(&String::from_utf8_lossy(raw)),
    }
    let mut hash = Sha256::new();
    for part in [route.as_str(), target, &canonical] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    Fingerprint(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Answers a request: without a key, `work`'s answer; with one, as the module says.
/// `work` runs to its end even if the client goes away ([`to_the_end`]), and so does
/// recording its answer.
pub async fn answer<T, W>(app: &App, keyed: Option<Keyed>, work: W) -> Response
where
    T: IntoResponse + Send + 'static,
    W: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    answer_with(
        &app.idempotency,
        app.config.idempotency_key_ttl,
        keyed,
        work,
    )
    .await
}

/// [`answer`] on any store, keeping answers for `ttl`.
pub async fn answer_with<S, T, W>(
    store: &S,
    ttl: Duration,
    keyed: Option<Keyed>,
    work: W,
) -> Response
where
    S: IdempotencyStore + Clone,
    T: IntoResponse + Send + 'static,
    W: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let Some(Keyed { scope, fingerprint }) = keyed else {
        return to_the_end(work).await.into_response();
    };
    let claim = store.claim(&scope, &fingerprint, LEASE).await;
    let route = scope.route.as_str();
    let token = match claim {
        Ok(Claim::Claimed(token)) => {
            metrics::idempotency_key(route, "claimed");
            token
        }
        Ok(Claim::Answered(answer)) => {
            metrics::idempotency_key(route, "replayed");
            return replay(answer);
        }
        Ok(Claim::InProgress) => {
            metrics::idempotency_key(route, "in_progress");
            let mut response = ApiError::Conflict {
                code: "idempotency_key_in_progress",
                message: "a request with this Idempotency-Key is still being answered; \
                          retry shortly to get its answer"
                    .into(),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Ok(Claim::Reused) => {
            metrics::idempotency_key(route, "reused");
            return ApiError::IdempotencyKeyReused(
                "this Idempotency-Key was used for another request (another body or \
                 reservation); nothing was done: send a new key for a new request"
                    .into(),
            )
            .into_response();
        }
        Err(e) => {
            metrics::idempotency_key(route, "unavailable");
            return ApiError::from(e).into_response();
        }
    };
    let (at_work, scope_at_work, token_at_work) = (store.clone(), scope.clone(), token.clone());
    let done = to_the_end(async move {
        let response = work.await.into_response();
        Ok::<_, ApiError>(settle(&at_work, ttl, &scope_at_work, &token_at_work, response).await)
    })
    .await;
    match done {
        Ok(response) => response,
        // The work panicked: nothing was recorded; the key is free again for a retry.
        Err(e) => {
            release(store, &scope, &token).await;
            e.into_response()
        }
    }
}

/// Records a final answer under the key, or releases the key after a 5xx or a 403 (a
/// refused credential, such as a waiting room's admission, changed nothing and is not
/// the body's answer: the same request with a good one must be able to go through);
/// hands the answer on.
async fn settle<S: IdempotencyStore>(
    store: &S,
    ttl: Duration,
    scope: &KeyScope,
    token: &ClaimToken,
    response: Response,
) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!("an answer's body could not be read to record it: {e}");
            release(store, scope, token).await;
            return ApiError::Internal("internal error, please retry".into()).into_response();
        }
    };
    if parts.status.is_server_error() || parts.status == StatusCode::FORBIDDEN {
        release(store, scope, token).await;
    } else {
        let answer = RecordedAnswer {
            status: parts.status.as_u16(),
            body: bytes.to_vec(),
        };
        match store.record(scope, token, &answer, ttl).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                key = %scope.key,
                "the claim of an Idempotency-Key ran out before its answer was recorded; \
                 a retry under it runs again"
            ),
            Err(e) => tracing::error!(
                component = e.component,
                key = %scope.key,
                "the answer under an Idempotency-Key could not be recorded (a retry under \
                 it answers in progress until its claim runs out, then runs again): {}",
                e.message
            ),
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

async fn release<S: IdempotencyStore>(store: &S, scope: &KeyScope, token: &ClaimToken) {
    match store.release(scope, token).await {
        Ok(_) => {}
        Err(e) => tracing::error!(
            component = e.component,
            key = %scope.key,
            "the claim of an Idempotency-Key could not be released (a retry under it \
             answers in progress until it runs out): {}",
            e.message
        ),
    }
}

/// A recorded answer, as it was, marked as a replay.
fn replay(answer: RecordedAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use flash_sale_core::ports::{PortError, PortResult};

    use super::*;

    /// A key's record: its fingerprint, its claim's token, its answer once recorded.
    type Record = (Fingerprint, String, Option<RecordedAnswer>);

    /// Keys in memory.
    #[derive(Clone, Default)]
    struct Memory {
        records: Arc<Mutex<HashMap<KeyScope, Record>>>,
        claims: Arc<AtomicUsize>,
        down: Arc<std::sync::atomic::AtomicBool>,
    }

    impl IdempotencyStore for Memory {
        async fn claim(
            &self,
            scope: &KeyScope,
            fingerprint: &Fingerprint,
            _lease: Duration,
        ) -> PortResult<Claim> {
            if self.down.load(Ordering::SeqCst) {
                return Err(PortError::transient("redis", "down"));
            }
            let mut records = self.records.lock().unwrap();
            Ok(match records.get(scope) {
                None => {
                    let token = format!("t{}", self.claims.fetch_add(1, Ordering::SeqCst));
                    records.insert(scope.clone(), (fingerprint.clone(), token.clone(), None));
                    Claim::Claimed(ClaimToken(token))
                }
                Some((fp, _, _)) if fp != fingerprint => Claim::Reused,
                Some((_, _, Some(answer))) => Claim::Answered(answer.clone()),
                Some((_, _, None)) => Claim::InProgress,
            })
        }

        async fn record(
            &self,
            scope: &KeyScope,
            token: &ClaimToken,
            answer: &RecordedAnswer,
            _ttl: Duration,
        ) -> PortResult<bool> {
            let mut records = self.records.lock().unwrap();
            match records.get_mut(scope) {
                Some((_, t, recorded @ None)) if *t == token.0 => {
                    *recorded = Some(answer.clone());
                    Ok(true)
                }
                _ => Ok(false),
            }
        }

        async fn release(&self, scope: &KeyScope, token: &ClaimToken) -> PortResult<bool> {
            let mut records = self.records.lock().unwrap();
            let mine = matches!(records.get(scope), Some((_, t, None)) if *t == token.0);
            if mine {
                records.remove(scope);
            }
            Ok(mine)
        }
    }

    fn keyed(key: &str, user: i64, body: &str) -> Option<Keyed> {
        Some(
            SentKey {
                key: IdempotencyKey::parse(key.as_bytes()).unwrap(),
                raw: Bytes::from(body.to_string()),
            }
            .scoped(
                KeyedRoute::Reserve,
                ShowtimeId::new(1).unwrap(),
                UserId::new(user).unwrap(),
                "",
            ),
        )
    }

    async fn run(
        store: &Memory,
        keyed: Option<Keyed>,
        runs: &Arc<AtomicUsize>,
        result: Result<u64, ApiError>,
    ) -> (StatusCode, Option<String>, String) {
        let runs = runs.clone();
        let response = answer_with(store, Duration::from_secs(60), keyed, async move {
            runs.fetch_add(1, Ordering::SeqCst);
            result.map(|n| Json(serde_json::json!({ "n": n })))
        })
        .await;
        let status = response.status();
        let replayed = response
            .headers()
            .get(&IDEMPOTENT_REPLAYED)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, replayed, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_first_answer_under_a_key_is_replayed_and_the_work_runs_once() {
        let (store, runs) = (Memory::default(), Arc::new(AtomicUsize::new(0)));
        let body = r#"{"user_id": 7, "showtime_id": 1}"#;
        let first = run(&store, keyed("k", 7, body), &runs, Ok(1)).await;
        assert_eq!(first, (StatusCode::OK, None, r#"{"n":1}"#.to_string()));
        // The same JSON laid out otherwise is the same request.
        let again = run(
            &store,
            keyed("k", 7, r#"{ "showtime_id":1,"user_id":7 }"#),
            &runs,
            Ok(2),
        )
        .await;
        assert_eq!(
            again,
            (
                StatusCode::OK,
                Some("true".into()),
                r#"{"n":1}"#.to_string()
            )
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another user's identical key, or no key, is another request.
        assert_eq!(run(&store, keyed("k", 8, body), &runs, Ok(3)).await.1, None);
        assert_eq!(run(&store, None, &runs, Ok(4)).await.2, r#"{"n":4}"#);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_final_refusal_is_replayed_but_a_failure_behind_us_runs_again() {
        let (store, runs) = (Memory::default(), Arc::new(AtomicUsize::new(0)));
        let sold_out = || ApiError::SoldOut;
        let first = run(&store, keyed("a", 7, "{}"), &runs, Err(sold_out())).await;
        assert_eq!(first.0, StatusCode::CONFLICT);
        let again = run(&store, keyed("a", 7, "{}"), &runs, Ok(1)).await;
        assert_eq!((again.0, again.2), (first.0, first.2));
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        let down = ApiError::Unavailable("retry".into());
        let failed = run(&store, keyed("b", 7, "{}"), &runs, Err(down)).await;
        assert_eq!(failed.0, StatusCode::SERVICE_UNAVAILABLE);
        let retried = run(&store, keyed("b", 7, "{}"), &runs, Ok(5)).await;
        assert_eq!(retried, (StatusCode::OK, None, r#"{"n":5}"#.to_string()));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_key_reused_for_another_body_or_still_at_work_is_refused_without_work() {
        let (store, runs) = (Memory::default(), Arc::new(AtomicUsize::new(0)));
        run(&store, keyed("k", 7, r#"{"showtime_id": 1}"#), &runs, Ok(1)).await;
        let reused = run(&store, keyed("k", 7, r#"{"showtime_id": 2}"#), &runs, Ok(2)).await;
        assert_eq!(reused.0, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(reused.2.contains("idempotency_key_reused"), "{}", reused.2);

        let pending = keyed("p", 7, "{}").unwrap();
        let claimed = store
            .claim(&pending.scope, &pending.fingerprint, LEASE)
            .await
            .unwrap();
        assert!(matches!(claimed, Claim::Claimed(_)));
        let busy = run(&store, Some(pending), &runs, Ok(3)).await;
        assert_eq!(busy.0, StatusCode::CONFLICT);
        assert!(busy.2.contains("idempotency_key_in_progress"), "{}", busy.2);
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        store.down.store(true, Ordering::SeqCst);
        let down = run(&store, keyed("q", 7, "{}"), &runs, Ok(4)).await;
        assert_eq!(down.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panic_at_work_frees_the_key() {
        let store = Memory::default();
        let response = answer_with(
            &store,
            Duration::from_secs(60),
            keyed("k", 7, "{}"),
            async move {
                if std::hint::black_box(true) {
                    panic!("at work");
                }
                Ok::<_, ApiError>(Json(1))
            },
        )
        .await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(store.records.lock().unwrap().is_empty());
    }

    #[test]
    fn malformed_or_repeated_keys_are_400s() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(key_of(&headers).unwrap().is_none());
        headers.insert(&IDEMPOTENCY_KEY, HeaderValue::from_static("a b"));
        assert_eq!(key_of(&headers).unwrap_err().code(), "bad_request");
        headers.insert(&IDEMPOTENCY_KEY, HeaderValue::from_static("ok-1"));
        assert_eq!(key_of(&headers).unwrap().unwrap().as_str(), "ok-1");
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("ok-2"));
        assert_eq!(key_of(&headers).unwrap_err().code(), "bad_request");
    }

    #[test]
    fn the_fingerprint_names_the_route_the_target_and_the_json() {
        let f = |route, target, body: &str| fingerprint(route, target, body.as_bytes());
        let reserve = f(KeyedRoute::Reserve, "", r#"{"a":1,"b":[1,{"c":2,"d":3}]}"#);
        assert_eq!(
            reserve,
            f(
                KeyedRoute::Reserve,
                "",
                r#" {"b":[1,{"d":3,"c":2}], "a":1} "#
            )
        );
        assert_ne!(
            reserve,
            f(KeyedRoute::Reserve, "", r#"{"a":2,"b":[1,{"c":2,"d":3}]}"#)
        );
        assert_ne!(
            reserve,
            f(KeyedRoute::Pay, "", r#"{"a":1,"b":[1,{"c":2,"d":3}]}"#)
        );
        assert_eq!(
            f(KeyedRoute::Pay, "1-2", ""),
            f(KeyedRoute::Pay, "1-2", "{}")
        );
        assert_ne!(
            f(KeyedRoute::Pay, "1-2", "{}"),
            f(KeyedRoute::Pay, "1-3", "{}")
        );
    }
}
