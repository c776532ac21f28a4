//! `Idempotency-Key` on `POST /reserve` and `POST /reservations/{id}/pay`: the first
//! answer under a key is replayed (status and body) to the same caller, a key reused for
//! another request is refused, and the key is answered before the sold-out memory. On
//! `POST /showtimes`: one showtime per key, however its retries race.

use std::time::Duration;

use flash_sale_core::{IdempotencyKey, KeyScope, KeyedRoute, ShowtimeId, UserId};
use flash_sale_tests::{Options, TestApp, assert_error, eventually};
use futures::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// An answer with whether it was a replay.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
    replayed: bool,
    retry_after: Option<String>,
}

impl Answer {
    fn pair(&self) -> (StatusCode, Value) {
        (self.status, self.body.clone())
    }
}

/// `POST path` with `body` (raw text, sent as it is) and `Idempotency-Key: key`.
async fn keyed_raw(app: &TestApp, path: &str, key: HeaderValue, body: String) -> Answer {
    let (status, headers, body) = app
        .send(
            app.http
                .post(app.url(path))
                .header("Idempotency-Key", key)
                .header("Content-Type", "application/json")
                .body(body),
            None,
        )
        .await;
    Answer {
        status,
        body,
        replayed: replayed(&headers),
        retry_after: headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string()),
    }
}

fn replayed(headers: &HeaderMap) -> bool {
    match headers.get("idempotent-replayed") {
        None => false,
        Some(v) => {
            assert_eq!(v, "true");
            true
        }
    }
}

async fn keyed(app: &TestApp, path: &str, key: &str, body: Value) -> Answer {
    keyed_raw(
        app,
        path,
        HeaderValue::from_str(key).unwrap(),
        body.to_string(),
    )
    .await
}

async fn reserve_keyed(app: &TestApp, key: &str, user: i64, showtime: i64) -> Answer {
    keyed(
        app,
        "/reserve",
        key,
        json!({"user_id": user, "showtime_id": showtime}),
    )
    .await
}

async fn pay_keyed(app: &TestApp, key: &str, reservation: &str, user: i64) -> Answer {
    keyed(
        app,
        &format!("/reservations/{reservation}/pay"),
        key,
        json!({"user_id": user}),
    )
    .await
}

async fn held(app: &TestApp, user: i64, showtime: i64) -> String {
    let (status, body) = app.reserve(user, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reservation_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_reserve_sent_again_with_its_key_replays_the_first_answer_for_that_user_only() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(3).await;

    let first = reserve_keyed(&app, "order-7", 1, showtime).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first);
    assert!(!first.replayed);
    let id = first.body["reservation_id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let again = reserve_keyed(&app, "order-7", 1, showtime).await;
        assert!(again.replayed, "{again:?}");
        assert_eq!(again.pair(), first.pair());
    }
    // The same JSON laid out otherwise is the same request.
    let relaid = keyed_raw(
        &app,
        "/reserve",
        HeaderValue::from_static("\"order-7\""),
        format!("{{ \"showtime_id\" : {showtime},\n \"user_id\": 1 }}"),
    )
    .await;
    assert!(relaid.replayed, "{relaid:?}");
    assert_eq!(relaid.pair(), first.pair());
    assert_eq!(app.seats(showtime).await, (2, 1, 0));

    // Another user's identical key is another key.
    let other = reserve_keyed(&app, "order-7", 2, showtime).await;
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    assert!(!other.replayed);
    assert_ne!(other.body["reservation_id"], id.as_str());
    assert_eq!(app.seats(showtime).await, (1, 2, 0));

    // Without a key, the same user is told what they hold, as before.
    let unkeyed = app.reserve(1, showtime).await;
    assert_error(&unkeyed, StatusCode::CONFLICT, "already_ordered");
    assert_eq!(unkeyed.1["reservation_id"], id.as_str());
    // Operators see keys replayed (the recorder is the test process's, shared).
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("flashsale_idempotency_keys_total{")
                && l.contains(r#"route="reserve""#)
                && l.contains(r#"outcome="replayed""#)
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_sold_out_answer_is_replayed_even_after_a_seat_came_back() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(1).await;
    let taken = held(&app, 1, showtime).await;

    let first = reserve_keyed(&app, "try-1", 2, showtime).await;
    assert_error(&first.pair(), StatusCode::CONFLICT, "sold_out");
    assert_eq!(app.cancel(&taken, 1).await.0, StatusCode::OK);
    assert_eq!(app.seats(showtime).await, (1, 0, 0));

    // The first answer is the answer under the key, whatever happened since.
    let again = reserve_keyed(&app, "try-1", 2, showtime).await;
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.pair(), first.pair());
    assert_eq!(app.seats(showtime).await, (1, 0, 0));
    // A new key is a new request.
    let fresh = reserve_keyed(&app, "try-2", 2, showtime).await;
    assert_eq!(fresh.status, StatusCode::OK, "{fresh:?}");
    assert_eq!(app.seats(showtime).await, (0, 1, 0));
    app.finish().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused_and_changes_nothing() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(5).await;
    let first = reserve_keyed(&app, "k", 1, showtime).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let before = app.seats(showtime).await;

    let reused = keyed(
        &app,
        "/reserve",
        "k",
        json!({"user_id": 1, "showtime_id": showtime, "seats": 2}),
    )
    .await;
    assert_error(
        &reused.pair(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert!(!reused.replayed);
    assert_eq!(app.seats(showtime).await, before);
    // The key still answers its own request.
    assert_eq!(
        reserve_keyed(&app, "k", 1, showtime).await.pair(),
        first.pair()
    );

    // On pay, the reservation is part of the request: the key of a payment of one
    // reservation cannot pay another.
    let cancelled = held(&app, 3, showtime).await;
    assert_eq!(app.cancel(&cancelled, 3).await.0, StatusCode::OK);
    let live = held(&app, 3, showtime).await;
    let refused = pay_keyed(&app, "pay-1", &cancelled, 3).await;
    assert_error(&refused.pair(), StatusCode::CONFLICT, "cancelled");
    let before = app.seats(showtime).await;
    let reused = pay_keyed(&app, "pay-1", &live, 3).await;
    assert_error(
        &reused.pair(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(app.status_of(&live).await, "RESERVED");
    assert_eq!(app.seats(showtime).await, before);
    let paid = pay_keyed(&app, "pay-2", &live, 3).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_payment_sent_again_with_its_key_replays_paid() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let id = held(&app, 1, showtime).await;

    let first = pay_keyed(&app, "pay-once", &id, 1).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body["status"], "PAID");
    assert!(!first.replayed);
    let again = pay_keyed(&app, "pay-once", &id, 1).await;
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.pair(), first.pair());
    // Without the key, the second press is told it is paid already.
    assert_error(&app.pay(&id, 1).await, StatusCode::CONFLICT, "already_paid");
    // Another user's identical key is theirs, and pays nothing of ours.
    let stranger = pay_keyed(&app, "pay-once", &id, 2).await;
    assert!(!stranger.replayed);
    assert_error(&stranger.pair(), StatusCode::FORBIDDEN, "forbidden");

    eventually(
        Duration::from_secs(20),
        "the order to be recorded",
        || async { (app.orders(showtime).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(app.seats(showtime).await, (1, 0, 1));
    app.finish().await;
}

#[tokio::test]
async fn a_key_is_answered_before_the_sold_out_memory() {
    let app = TestApp::spawn(Options {
        // The process remembers "sold out" for the whole test.
        sold_out_cache_ms: Some(60_000),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(1).await;
    let first = reserve_keyed(&app, "press", 1, showtime).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    // Another buyer finds it sold out, and the process now remembers it.
    assert_error(
        &app.reserve(2, showtime).await,
        StatusCode::CONFLICT,
        "sold_out",
    );
    // Without a key, the memory answers the holder too (documented: both 409, the hold
    // untouched, found in "my reservations").
    assert_error(
        &app.reserve(1, showtime).await,
        StatusCode::CONFLICT,
        "sold_out",
    );
    // With the key, the holder gets their reservation again.
    let again = reserve_keyed(&app, "press", 1, showtime).await;
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.pair(), first.pair());
    assert_eq!(app.seats(showtime).await, (0, 1, 0));
    app.finish().await;
}

#[tokio::test]
async fn a_malformed_key_is_a_400_and_changes_nothing() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let id = held(&app, 1, showtime).await;
    let body = json!({"user_id": 2, "showtime_id": showtime}).to_string();
    let bad = [
        HeaderValue::from_static(""),
        HeaderValue::from_static("\"\""),
        HeaderValue::from_static("two words"),
        HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    ];
    for key in bad {
        let answer = keyed_raw(&app, "/reserve", key.clone(), body.clone()).await;
        assert_error(&answer.pair(), StatusCode::BAD_REQUEST, "bad_request");
        let path = format!("/reservations/{id}/pay");
        let answer = keyed_raw(&app, &path, key, json!({"user_id": 1}).to_string()).await;
        assert_error(&answer.pair(), StatusCode::BAD_REQUEST, "bad_request");
    }
    // Two keys on one request.
    let (status, _, answer) = app
        .send(
            app.http
                .post(app.url("/reserve"))
                .header("Idempotency-Key", "a")
                .header("Idempotency-Key", "b")
                .body(body.clone()),
            None,
        )
        .await;
    assert_error(&(status, answer), StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(app.seats(showtime).await, (1, 1, 0));
    assert_eq!(app.status_of(&id).await, "RESERVED");
    // The longest key accepted.
    let longest = reserve_keyed(&app, &"k".repeat(255), 2, showtime).await;
    assert_eq!(longest.status, StatusCode::OK, "{longest:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_key_expires_after_the_configured_time() {
    let app = TestApp::spawn(Options {
        extra_env: vec![("IDEMPOTENCY_KEY_TTL_SECS", "4".into())],
        // Replays count against the user's rate limit; this test polls.
        rate_user: Some((1000, 1000)),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(2).await;
    let first = reserve_keyed(&app, "again-later", 1, showtime).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let id = first.body["reservation_id"].as_str().unwrap().to_string();
    // The answer is kept in the showtime's slot for the configured time.
    let record = app.app.idempotency.key(&KeyScope {
        showtime: ShowtimeId::new(showtime).unwrap(),
        user: UserId::new(1).unwrap(),
        route: KeyedRoute::Reserve,
        key: IdempotencyKey::parse(b"again-later").unwrap(),
    });
    assert!(record.contains(&format!(":{{{showtime}}}:")), "{record}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&record)
        .query_async(&mut app.adapters.seats.connection())
        .await
        .unwrap();
    assert!((1..=4000).contains(&ttl), "{record} expires in {ttl} ms");
    assert_eq!(app.cancel(&id, 1).await.0, StatusCode::OK);
    let again = reserve_keyed(&app, "again-later", 1, showtime).await;
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.pair(), first.pair());

    // Replayed while the key lives; once it expired, the same request runs again and
    // holds a new seat.
    let fresh = eventually(Duration::from_secs(10), "the key to expire", || async {
        let answer = reserve_keyed(&app, "again-later", 1, showtime).await;
        if answer.replayed {
            assert_eq!(answer.pair(), first.pair());
            None
        } else {
            Some(answer)
        }
    })
    .await;
    assert_eq!(fresh.status, StatusCode::OK, "{fresh:?}");
    assert_ne!(fresh.body["reservation_id"], id.as_str());
    assert_eq!(app.seats(showtime).await, (1, 1, 0));
    app.finish().await;
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_make_one_hold() {
    let app = TestApp::spawn(Options {
        rate_user: Some((1000, 1000)),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(10).await;
    let answers: Vec<Answer> = futures::stream::iter(0..50)
        .map(|_| reserve_keyed(&app, "one-press", 1, showtime))
        .buffer_unordered(50)
        .collect()
        .await;
    let mut reservations = std::collections::HashSet::new();
    let mut fresh = 0;
    for answer in &answers {
        match answer.status {
            StatusCode::OK => {
                fresh += usize::from(!answer.replayed);
                reservations.insert(answer.body["reservation_id"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => {
                assert_error(
                    &answer.pair(),
                    StatusCode::CONFLICT,
                    "idempotency_key_in_progress",
                );
                assert_eq!(answer.retry_after.as_deref(), Some("1"));
            }
            _ => panic!("unexpected answer {answer:?}"),
        }
    }
    assert_eq!(fresh, 1, "{answers:?}");
    assert_eq!(reservations.len(), 1, "{answers:?}");
    assert_eq!(app.seats(showtime).await, (9, 1, 0));
    // Once answered, every retry gets that one hold.
    let after = reserve_keyed(&app, "one-press", 1, showtime).await;
    assert!(after.replayed, "{after:?}");
    assert_eq!(
        after.body["reservation_id"].as_str().unwrap(),
        reservations.iter().next().unwrap()
    );
    app.finish().await;
}

/// An operator's retried `POST /showtimes` (its answer lost, a timeout) must not put a
/// second showtime with the same seats on sale: under its key it finds the first one,
/// however the retries race and however the JSON is laid out; the key sent with another
/// request is refused and creates nothing.
#[tokio::test]
async fn a_showtime_created_again_under_its_key_is_created_once() {
    let app = TestApp::spawn(Options::default()).await;
    let body = json!({"capacity": 4, "title": "Premiere", "max_per_user": 2});
    let before = app.showtimes_in_db().await;

    // Eight at once under one key: one showtime, the others told it again.
    let answers = futures::future::join_all(
        (0..8).map(|_| keyed(&app, "/showtimes", "premiere-1", body.clone())),
    )
    .await;
    let first = &answers[0].body;
    for a in &answers {
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.body["id"], first["id"], "one showtime: {}", a.body);
    }
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "only the one that created it is not a replay"
    );
    assert_eq!(app.showtimes_in_db().await, before + 1);

    // Sold from since: a retry shows the showtime as it is now.
    let id = first["id"].as_i64().unwrap();
    let (status, body_held) = app.reserve(1, id).await;
    assert_eq!(status, StatusCode::OK, "{body_held}");
    let again = keyed_raw(
        &app,
        "/showtimes",
        HeaderValue::from_static("premiere-1"),
        r#"{ "max_per_user": 2, "title": "Premiere",  "capacity": 4 }"#.into(),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert!(again.replayed);
    assert_eq!(again.body["id"], id);
    assert_eq!(
        (
            again.body["available"].as_u64(),
            again.body["held"].as_u64()
        ),
        (Some(3), Some(1))
    );

    // The key with another request: refused, nothing created.
    let other = keyed(&app, "/showtimes", "premiere-1", json!({"capacity": 5})).await;
    assert_error(
        &other.pair(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(app.showtimes_in_db().await, before + 1);

    // Another key, or none, is another showtime.
    let second = keyed(&app, "/showtimes", "premiere-2", body.clone()).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_ne!(second.body["id"], id);
    assert!(!second.replayed);
    assert_ne!(app.create_showtime(4).await, app.create_showtime(4).await);
    assert_eq!(app.showtimes_in_db().await, before + 4);
    app.finish().await;
}

/// A malformed key on `POST /showtimes` is a 400 and creates nothing.
#[tokio::test]
async fn a_malformed_key_creates_no_showtime() {
    let app = TestApp::spawn(Options::default()).await;
    let before = app.showtimes_in_db().await;
    let bad = keyed_raw(
        &app,
        "/showtimes",
        HeaderValue::from_static("has space"),
        json!({"capacity": 1}).to_string(),
    )
    .await;
    assert_error(&bad.pair(), StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(app.showtimes_in_db().await, before);
    app.finish().await;
}
