//! Verified identity: missing, expired, badly signed and forged tokens, a body user that
//! disagrees with the token, another user's reservation, and admin routes as a user.

use flash_sale_runtime::Config;
use flash_sale_runtime::identity::{Audience, Claims, sign_hs256};
use flash_sale_tests::{
    Options, TEST_JWT_AUDIENCE, TEST_JWT_ISSUER, TEST_JWT_SECRET, TestApp, assert_error,
    test_claims,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::{jwt, showtime, untouched};

#[tokio::test]
async fn the_owner_reserves_reads_and_pays_with_a_token_alone() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 3})).await;
    let me = app.token(7);

    let (status, r) = app
        .post_as(&me, "/reserve", json!({"showtime_id": st}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["user_id"], 7);
    let id = r["reservation_id"].as_str().unwrap().to_string();

    let (status, view) = app.get_as(&me, &format!("/reservations/{id}")).await;
    assert_eq!(
        (status, view["user_id"].as_i64()),
        (StatusCode::OK, Some(7))
    );
    // An empty body is fine when the token says who pays.
    let (status, _, paid) = app
        .send(
            app.http.post(app.url(&format!("/reservations/{id}/pay"))),
            Some(&me),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "PAID");
    app.finish().await;
}

#[tokio::test]
async fn missing_expired_and_badly_signed_tokens_get_a_401_and_take_no_seat() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 2})).await;
    let body = json!({"user_id": 7, "showtime_id": st});

    let expired = sign_hs256(
        TEST_JWT_SECRET.as_bytes(),
        &Claims {
            exp: 1_000_000_000,
            ..test_claims(7, 0)
        },
    );
    let forged = sign_hs256(
        b"not-the-server-secret-but-just-as-long!!",
        &test_claims(7, 3600),
    );
    let mut tampered = app.token(7);
    tampered.replace_range(tampered.len() - 4.., "AAAA");

    for token in [
        None,
        Some(expired),
        Some(forged),
        Some(tampered),
        Some("junk".into()),
    ] {
        let (status, headers, answer) = app
            .send(
                app.http.post(app.url("/reserve")).json(&body),
                token.as_deref(),
            )
            .await;
        assert_error(&(status, answer), StatusCode::UNAUTHORIZED, "unauthorized");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    // A Basic header is no bearer token either.
    let (status, _, answer) = app
        .send(
            app.http
                .post(app.url("/reserve"))
                .basic_auth("7", Some("x"))
                .json(&body),
            None,
        )
        .await;
    assert_error(&(status, answer), StatusCode::UNAUTHORIZED, "unauthorized");
    untouched(&app, st, 2).await;
    app.finish().await;
}

#[tokio::test]
async fn a_body_user_that_disagrees_with_the_token_is_a_403_and_takes_no_seat() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 2})).await;
    let answer = app
        .post_as(
            &app.token(7),
            "/reserve",
            json!({"user_id": 8, "showtime_id": st}),
        )
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    untouched(&app, st, 2).await;
    app.finish().await;
}

#[tokio::test]
async fn another_users_reservation_can_be_neither_read_nor_paid() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 2})).await;
    let (_, r) = app
        .post_as(&app.token(7), "/reserve", json!({"showtime_id": st}))
        .await;
    let id = r["reservation_id"].as_str().unwrap().to_string();
    let thief = app.token(8);

    assert_error(
        &app.get_as(&thief, &format!("/reservations/{id}")).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.post_as(&thief, &format!("/reservations/{id}/pay"), json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Claiming to be the owner in the body does not help.
    assert_error(
        &app.post_as(
            &thief,
            &format!("/reservations/{id}/pay"),
            json!({"user_id": 7}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Without a token at all: 401.
    let (status, _, answer) = app
        .send(app.http.get(app.url(&format!("/reservations/{id}"))), None)
        .await;
    assert_error(&(status, answer), StatusCode::UNAUTHORIZED, "unauthorized");

    assert_eq!(app.seats(st).await, (1, 1, 0), "still one unpaid hold");
    let (status, view) = app
        .get_as(&app.admin_token(), &format!("/reservations/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "an admin may read it");
    assert_eq!(view["status"], "RESERVED");
    assert_eq!(app.orders(st).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn creating_a_showtime_as_a_user_is_a_403_and_creates_nothing() {
    let app = TestApp::spawn(jwt()).await;
    let answer = app
        .post_as(&app.token(7), "/showtimes", json!({"capacity": 10}))
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    let (status, _, answer) = app
        .send(
            app.http
                .post(app.url("/showtimes"))
                .json(&json!({"capacity": 10})),
            None,
        )
        .await;
    assert_error(&(status, answer), StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(app.showtimes_in_db().await, 0);
    app.finish().await;
}

#[test]
fn the_server_refuses_to_start_open_on_a_public_address_and_says_so() {
    let vars = |addr: &'static str, mode: &'static str| {
        move |k: &str| match k {
            "ADDR" => Some(addr.to_string()),
            "AUTH_MODE" => Some(mode.to_string()),
            _ => None,
        }
    };
    let err = Config::from_lookup(vars("0.0.0.0:4000", "none")).unwrap_err();
    assert_eq!(err.name, "AUTH_MODE");
    assert!(err.to_string().contains("AUTH_MODE=none"), "{err}");
    // The default is none, so the default on a public address is refused too.
    let err = Config::from_lookup(|k| (k == "ADDR").then(|| "0.0.0.0:4000".into())).unwrap_err();
    assert_eq!(err.name, "AUTH_MODE");
    assert!(Config::from_lookup(vars("127.0.0.1:4000", "none")).is_ok());
}

#[tokio::test]
async fn the_go_references_clients_still_work_on_loopback_without_tokens() {
    let app = TestApp::spawn(Options::default()).await;
    let st = app.create_showtime(1).await;
    let (status, r) = app.reserve(7, st).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let (status, _) = app.pay(r["reservation_id"].as_str().unwrap(), 7).await;
    assert_eq!(status, StatusCode::OK);
    app.finish().await;
}

#[tokio::test]
async fn a_token_whose_audience_is_an_array_naming_ours_is_accepted_and_others_are_not() {
    let app = TestApp::spawn(jwt()).await;
    let st = showtime(&app, json!({"capacity": 2})).await;
    let token = |aud: Audience| {
        sign_hs256(
            TEST_JWT_SECRET.as_bytes(),
            &Claims {
                aud: Some(aud),
                ..test_claims(7, 3600)
            },
        )
    };
    let ours = token(Audience::Many(vec![
        "another-app".into(),
        TEST_JWT_AUDIENCE.into(),
    ]));
    let (status, r) = app
        .post_as(&ours, "/reserve", json!({"showtime_id": st}))
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");

    // Minted by the same identity provider for another application: refused.
    for other in [
        Audience::Many(vec!["another-app".into()]),
        Audience::One("another-app".into()),
    ] {
        let (status, _, answer) = app
            .send(
                app.http
                    .post(app.url("/reserve"))
                    .json(&json!({"showtime_id": st})),
                Some(&token(other)),
            )
            .await;
        assert_error(&(status, answer), StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(app.seats(st).await, (1, 1, 0));
    app.finish().await;
}

#[tokio::test]
async fn a_jwt_server_without_issuer_and_audience_does_not_start_unless_told_to_accept_any() {
    let env = |extra: &[(&str, &str)]| {
        let mut vars: Vec<(String, String)> = vec![
            ("AUTH_MODE".into(), "jwt".into()),
            ("JWT_HS256_SECRET".into(), TEST_JWT_SECRET.into()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let err = Config::from_lookup(env(&[])).unwrap_err();
    assert_eq!(err.name, "JWT_ISSUER", "{err}");
    let err = Config::from_lookup(env(&[("JWT_ISSUER", TEST_JWT_ISSUER)])).unwrap_err();
    assert_eq!(err.name, "JWT_AUDIENCE", "{err}");
    assert!(Config::from_lookup(env(&[("JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE", "true")])).is_ok());
}
