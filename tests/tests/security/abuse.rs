//! Abuse controls: a burst over the per-user and per-address limits, an oversized body,
//! junk ids and junk bodies. Each gets its documented 4xx and changes nothing.

use flash_sale_tests::{Options, TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{jwt, showtime, untouched};

#[tokio::test]
async fn a_burst_over_the_user_limit_gets_429_with_retry_after_and_holds_one_seat() {
    let app = TestApp::spawn(Options {
        rate_user: Some((1, 5)),
        ..jwt()
    })
    .await;
    let st = showtime(&app, json!({"capacity": 10})).await;
    let me = app.token(7);
    let mut answers = vec![];
    let started = std::time::Instant::now();
    for _ in 0..12 {
        let (status, headers, body) = app
            .send(
                app.http
                    .post(app.url("/reserve"))
                    .json(&json!({"showtime_id": st})),
                Some(&me),
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 1);
            assert_eq!(body["error"], "rate_limited");
        }
        answers.push(status);
    }
    let limited = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // A burst of 5, then 1 a second over the time the 12 took (well under a second, more
    // on a loaded machine).
    let allowed = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(12 - limited <= allowed, "{allowed} may pass: {answers:?}");
    assert_eq!(answers[0], StatusCode::OK);
    assert_eq!(app.seats(st).await, (9, 1, 0));
    // Someone else is not held back by user 7's burst.
    let (status, _) = app
        .post_as(&app.token(8), "/reserve", json!({"showtime_id": st}))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.finish().await;
}

/// A refusal the process answers from memory (a showtime it knows is sold out) comes
/// before the per-user limit and takes nothing from the user's bucket: it costs less than
/// the 429 would. The user's next real attempt is still served, and a burst of real
/// attempts is still limited (the test above).
#[tokio::test]
async fn sold_out_answers_from_memory_take_nothing_from_the_users_bucket() {
    let app = TestApp::spawn(Options {
        rate_user: Some((1, 3)),
        sold_out_cache_ms: Some(60_000),
        ..jwt()
    })
    .await;
    let gone = showtime(&app, json!({"capacity": 1})).await;
    let open = showtime(&app, json!({"capacity": 1})).await;
    let (status, _) = app
        .post_as(&app.token(1), "/reserve", json!({"showtime_id": gone}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let me = app.token(7);
    for _ in 0..10 {
        let (status, body) = app
            .post_as(&me, "/reserve", json!({"showtime_id": gone}))
            .await;
        assert_error(&(status, body), StatusCode::CONFLICT, "sold_out");
    }
    let (status, body) = app
        .post_as(&me, "/reserve", json!({"showtime_id": open}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.finish().await;
}

/// A server that limits each client address to a burst of 3 and 1 a second, taking the
/// address from `X-Forwarded-For`, and a showtime of 100 seats on it.
async fn behind_an_address_limit() -> (TestApp, i64) {
    let app = TestApp::spawn(Options {
        rate_addr: Some((1, 3)),
        trust_forwarded_for: true,
        ..Options::default()
    })
    .await;
    let st = app.create_showtime(100).await;
    (app, st)
}

/// `POST /reserve` for `user` as if from the client address `ip`.
fn reserve_from(app: &TestApp, st: i64, ip: &str, user: i64) -> reqwest::RequestBuilder {
    app.http
        .post(app.url("/reserve"))
        .header("x-forwarded-for", ip)
        .json(&json!({"user_id": user, "showtime_id": st}))
}

#[tokio::test]
async fn a_burst_over_the_address_limit_gets_429_and_other_addresses_pass() {
    let (app, st) = behind_an_address_limit().await;
    let from = |ip: &str, user: i64| reserve_from(&app, st, ip, user);
    let mut limited = 0;
    let started = std::time::Instant::now();
    for user in 1..=10 {
        let (status, headers, body) = app.send(from("203.0.113.7", user), None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert!(headers.contains_key("retry-after"));
            assert_eq!(body["error"], "rate_limited");
        }
    }
    // A burst of 3, then 1 a second over the time the 10 took.
    let allowed = 3 + started.elapsed().as_secs() as i64 + 1;
    assert!(
        10 - limited <= allowed,
        "only {limited} of 10 were limited, at most {allowed} may pass"
    );
    let (available, held, _) = app.seats(st).await;
    assert_eq!(held, 10 - limited);
    assert_eq!(available, 100 - held);
    let (status, _, _) = app.send(from("198.51.100.2", 99), None).await;
    assert_eq!(status, StatusCode::OK);
    app.finish().await;
}

#[tokio::test]
async fn an_oversized_body_is_a_413_and_takes_no_seat() {
    let app = TestApp::spawn(Options::default()).await;
    let st = app.create_showtime(3).await;
    let padding = "x".repeat(64 * 1024);
    let body = json!({"user_id": 1, "showtime_id": st, "padding": padding});
    for path in ["/reserve", "/showtimes", "/reservations/1-1/pay"] {
        assert_error(
            &app.post(path, body.clone()).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        );
    }
    untouched(&app, st, 3).await;
    app.finish().await;
}

#[tokio::test]
async fn junk_ids_and_junk_bodies_are_400s_or_404s_and_change_nothing() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 3})).await;
    let me = app.token(7);
    for path in [
        "/reservations/abc",
        "/reservations/1-0",
        "/reservations/0-1",
        "/reservations/-1-1",
        "/reservations/1-1-1",
        "/reservations/99999999999999999999-1",
        "/reservations/%00",
        "/showtimes/-1",
        "/showtimes/0",
        "/showtimes/1.5",
        "/showtimes/99999999999999999999",
    ] {
        let answer = app.get_as(&me, path).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    let bodies: Vec<Value> = vec![
        json!([st]),
        json!("reserve"),
        json!(null),
        json!({"showtime_id": "1"}),
        json!({"showtime_id": -1}),
        json!({"showtime_id": 0}),
        json!({"showtime_id": 1.5}),
        json!({"showtime_id": 1e300}),
        json!({"showtime_id": u64::MAX}),
        json!({"showtime_id": st, "user_id": "7"}),
    ];
    for body in bodies {
        let answer = app.post_as(&me, "/reserve", body.clone()).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_error(
        &app.post_as(&me, "/reserve", json!({"showtime_id": 999_999}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.post_as(&me, "/reservations/junk/pay", json!({})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.post_as(&me, &format!("/reservations/{st}-999/pay"), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    untouched(&app, st, 3).await;
    app.finish().await;
}

#[tokio::test]
async fn an_ipv6_client_rotating_through_its_64_meets_one_address_limit() {
    let (app, st) = behind_an_address_limit().await;
    let from = |ip: String, user: i64| reserve_from(&app, st, &ip, user);
    // Twenty addresses of one /64, one request each: a client that owns the /64. One
    // bucket of 3 refilled at 1/s lets through the burst and what refilled meanwhile;
    // a bucket per address would let every one through.
    let started = std::time::Instant::now();
    let mut passed: i64 = 0;
    for user in 1..=20 {
        let ip = format!("2001:db8:7:7:{user:x}::{:x}", (user * 7919) % 0xffff);
        let (status, _, body) = app.send(from(ip, user), None).await;
        match status {
            StatusCode::OK => passed += 1,
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(body["error"], "rate_limited"),
            other => panic!("{other}: {body}"),
        }
    }
    let allowed = 3 + started.elapsed().as_secs() as i64 + 1;
    assert!(
        passed <= allowed,
        "{passed} of 20 passed, at most {allowed} may"
    );
    let (_, held, _) = app.seats(st).await;
    assert_eq!(held, passed);
    // The next /64 is another client.
    let (status, _, _) = app
        .send(from("2001:db8:7:8::1".to_string(), 99), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    app.finish().await;
}
