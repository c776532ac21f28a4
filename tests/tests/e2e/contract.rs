//! The HTTP contract outside clients rely on: answers, status codes, the one JSON error
//! shape, and that bad input changes nothing.

use flash_sale_tests::{Options, TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn a_reservation_answers_like_the_go_reference_and_can_be_read_back() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(10).await;
    let (status, body) = app.reserve(7, showtime).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "RESERVED");
    assert_eq!(body["message"], "Ticket reserved successfully");
    let id = body["reservation_id"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).is_ok());

    let (status, r) = app.get(&format!("/reservations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["id"], id);
    assert_eq!(r["showtime_id"], showtime);
    assert_eq!(r["user_id"], 7);
    assert_eq!(r["status"], "RESERVED");
    assert_eq!(r["expires_at"], body["expires_at"]);
    app.finish().await;
}

#[tokio::test]
async fn creating_a_showtime_stores_it_and_puts_its_seats_on_sale() {
    let app = TestApp::spawn(Options::default()).await;
    let (status, body) = app
        .post(
            "/showtimes",
            json!({"capacity": 100, "title": "Dune", "starts_at": "2026-12-01T20:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["capacity"], 100);
    assert_eq!(body["title"], "Dune");
    let id = body["id"].as_i64().unwrap();
    assert_eq!(app.seats(id).await, (100, 0, 0));
    let stored: (i32, i32) = sqlx::query_as("SELECT capacity, sold FROM showtimes WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, (100, 0));
    app.finish().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let held = app.reserve(1, showtime).await.1["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();

    let raw = |path: &str, body: &str| {
        let req = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    use StatusCode as S;
    assert_error(
        &raw("/reserve", "{not json").await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(&raw("/reserve", "").await, S::BAD_REQUEST, "bad_request");
    assert_error(
        &raw("/reserve", r#"{"user_id": 1}"#).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &raw("/reserve", r#"{"user_id": "1", "showtime_id": 1}"#).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &raw("/reserve", r#"{"user_id": 1.5, "showtime_id": 1}"#).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.reserve(0, showtime).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.reserve(-5, showtime).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(&app.reserve(3, -1).await, S::BAD_REQUEST, "bad_request");
    assert_error(&app.reserve(3, 999_999).await, S::NOT_FOUND, "not_found");
    let huge = format!(
        r#"{{"user_id": 3, "showtime_id": {showtime}, "pad": "{}"}}"#,
        "x".repeat(64 * 1024)
    );
    assert_error(
        &raw("/reserve", &huge).await,
        S::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    assert_error(
        &app.get("/reservations/junk").await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.get("/reservations/1-0").await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.get(&format!("/reservations/{showtime}-999")).await,
        S::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.get("/showtimes/abc").await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.get("/showtimes/424242").await,
        S::NOT_FOUND,
        "not_found",
    );
    assert_error(&app.get("/no/such/route").await, S::NOT_FOUND, "not_found");

    assert_error(
        &app.post("/showtimes", json!({"capacity": 0})).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.post("/showtimes", json!({"capacity": -3})).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.post("/showtimes", json!({"capacity": 5_000_000})).await,
        S::BAD_REQUEST,
        "bad_request",
    );
    assert_error(
        &app.post(
            "/showtimes",
            json!({"capacity": 5, "starts_at": "tomorrow"}),
        )
        .await,
        S::BAD_REQUEST,
        "bad_request",
    );

    assert_error(&app.pay(&held, 2).await, S::FORBIDDEN, "forbidden");
    assert_error(
        &app.pay(&format!("{showtime}-999"), 1).await,
        S::NOT_FOUND,
        "not_found",
    );
    assert_error(&app.pay("1-x", 1).await, S::BAD_REQUEST, "bad_request");
    assert_error(
        &raw(&format!("/reservations/{held}/pay"), "{}").await,
        S::BAD_REQUEST,
        "bad_request",
    );

    let wrong_method = app.http.delete(app.url("/reserve")).send().await.unwrap();
    assert_eq!(wrong_method.status(), S::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    // The routes outside the guard answer in the same shape.
    let wrong_method = app.http.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(wrong_method.status(), S::METHOD_NOT_ALLOWED);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );

    // None of it touched the sale.
    assert_eq!(app.seats(showtime).await, (1, 1, 0));
    assert_eq!(app.status_of(&held).await, "RESERVED");
    assert_eq!(app.showtimes_in_db().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_body_without_a_content_type_is_still_read_as_json_like_gin_did() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(1).await;
    let res = app
        .http
        .post(app.url("/reserve"))
        .body(format!(r#"{{"user_id": 9, "showtime_id": {showtime}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.finish().await;
}

#[tokio::test]
async fn paying_twice_is_a_conflict_and_sells_one_seat() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let id = app.reserve(1, showtime).await.1["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (first, second) = tokio::join!(app.pay(&id, 1), app.pay(&id, 1));
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let conflict = if first.0 == StatusCode::CONFLICT {
        &first
    } else {
        &second
    };
    assert_error(conflict, StatusCode::CONFLICT, "already_paid");
    let (_, held, sold) = app.seats(showtime).await;
    assert_eq!((held, sold), (0, 1));
    app.finish().await;
}

#[tokio::test]
async fn a_service_that_is_down_is_named_at_start_up() {
    let iso = flash_sale_tests::Isolation::new();
    let mut config = flash_sale_tests::config(&iso, &Options::default());
    config.redis_url = "redis://127.0.0.1:1".into();
    let err = flash_sale_runtime::App::connect(config).await.unwrap_err();
    assert!(format!("{err:#}").contains("Redis (REDIS_URL)"), "{err:#}");

    let mut config = flash_sale_tests::config(&iso, &Options::default());
    config.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let err = flash_sale_runtime::App::connect(config).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("RabbitMQ (AMQP_URL)"),
        "{err:#}"
    );
    // Each start-up got as far as the services that answered: the empty database, the
    // key layout, the queues. All of it goes.
    let (_app, adapters) =
        flash_sale_tests::wire(flash_sale_tests::config(&iso, &Options::default())).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}
