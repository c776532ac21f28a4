//! `PATCH /showtimes/{id}`: an operator steers a live sale (pause and resume, close
//! early, move the window, add seats, remove unsold ones) and every process obeys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flash_sale_tests::{
    DoorGate, Options, TestApp, assert_error, eventually, promptly, reserve_all, tally,
    until_one_waits,
};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn changed(app: &TestApp, showtime: i64, body: Value) -> Value {
    let (status, answer) = app.change_showtime(showtime, body.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{body} -> {answer}");
    answer
}

async fn hold(app: &TestApp, user: i64, showtime: i64) -> String {
    let (status, body) = app.reserve(user, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reservation_id"].as_str().unwrap().to_string()
}

/// The showtime's row as `GET /showtimes/{id}` shows it.
async fn shown(app: &TestApp, showtime: i64) -> Value {
    let (status, body) = app.get(&format!("/showtimes/{showtime}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// `POST /reserve` for each user of `users`, as `reserve_all` does, counting the answers
/// in `answered` as they come.
async fn counted_reserves(
    app: &TestApp,
    users: std::ops::RangeInclusive<i64>,
    showtime: i64,
    answered: &AtomicUsize,
) -> Vec<(StatusCode, Value)> {
    futures::stream::iter(users)
        .map(|user| async move {
            let answer = app.reserve(user, showtime).await;
            answered.fetch_add(1, Ordering::SeqCst);
            answer
        })
        .buffer_unordered(flash_sale_tests::IN_FLIGHT)
        .collect()
        .await
}

/// Waits until `answered` reaches `n`.
async fn until_answered(answered: &AtomicUsize, n: usize) {
    eventually(
        Duration::from_secs(60),
        &format!("{n} answers of the crowd"),
        || async { (answered.load(Ordering::SeqCst) >= n).then_some(()) },
    )
    .await;
}

async fn capacity_in_db(app: &TestApp, showtime: i64) -> i64 {
    sqlx::query_scalar::<_, i32>("SELECT capacity FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap()
        .into()
}

#[tokio::test]
async fn a_paused_sale_refuses_holds_without_touching_stock_and_its_holds_can_still_be_paid() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(10).await;
    let mine = hold(&app, 1, showtime).await;

    let answer = changed(&app, showtime, json!({"paused": true})).await;
    assert_eq!(answer["sale_state"], "paused", "{answer}");
    assert_eq!(answer["sale_paused"], true, "{answer}");
    assert_error(
        &app.reserve(2, showtime).await,
        StatusCode::CONFLICT,
        "sale_paused",
    );
    assert_eq!(app.seats(showtime).await, (9, 1, 0), "stock untouched");
    // A hold made before the pause is paid as usual.
    assert_eq!(app.pay(&mine, 1).await.0, StatusCode::OK);
    let (status, listed) = app.get("/showtimes?state=paused").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["showtimes"][0]["id"], showtime, "{listed}");
    let (_, on_sale) = app.get("/showtimes").await;
    assert_eq!(
        on_sale["showtimes"],
        json!([]),
        "a paused sale is not on sale"
    );

    let answer = changed(&app, showtime, json!({"paused": false})).await;
    assert_eq!(answer["sale_state"], "on_sale", "{answer}");
    hold(&app, 2, showtime).await;
    assert_eq!(app.seats(showtime).await, (8, 1, 1));
    app.finish().await;
}

#[tokio::test]
async fn an_operator_closes_a_sale_early_and_moves_its_window() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(10).await;
    hold(&app, 1, showtime).await;

    let answer = changed(&app, showtime, json!({"close_now": true})).await;
    assert_eq!(answer["sale_state"], "ended", "{answer}");
    assert!(answer["sale_closes_at"].is_string(), "{answer}");
    assert_error(
        &app.reserve(2, showtime).await,
        StatusCode::CONFLICT,
        "sale_closed",
    );

    // Reopened, then moved to a later opening: refused as not open yet.
    changed(&app, showtime, json!({"sale_closes_at": null})).await;
    hold(&app, 2, showtime).await;
    let answer = changed(
        &app,
        showtime,
        json!({"sale_opens_at": "2099-01-01T10:00:00Z", "sale_closes_at": "2099-01-01T12:00:00Z"}),
    )
    .await;
    assert_eq!(answer["sale_state"], "upcoming", "{answer}");
    assert_error(
        &app.reserve(3, showtime).await,
        StatusCode::CONFLICT,
        "sale_not_open",
    );
    // Closing a sale that has not opened is refused: its window is moved instead.
    let (status, body) = app
        .change_showtime(showtime, json!({"close_now": true}), None)
        .await;
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "bad_request");
    changed(
        &app,
        showtime,
        json!({"sale_opens_at": null, "sale_closes_at": null}),
    )
    .await;
    hold(&app, 3, showtime).await;
    assert_eq!(app.seats(showtime).await, (7, 3, 0));
    app.finish().await;
}

/// Two processes on one sale: a change made through one is obeyed by the other within
/// a second (each keeps a showtime's window for half a second at most).
#[tokio::test]
async fn every_process_obeys_a_change_made_in_another_within_a_second() {
    let app = TestApp::spawn(Options::default()).await;
    let mut other = TestApp::spawn_on(app.iso.clone(), app.opts.clone()).await;
    let showtime = app.create_showtime(1000).await;
    // The other process has met the showtime and keeps its window.
    hold(&other, 1, showtime).await;
    // A new buyer at each attempt (one buyer's retries would meet the rate limit).
    let buyers = std::sync::atomic::AtomicI64::new(1);
    let next_buyer = || buyers.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;

    // Every attempt that leaves a second or more after the change obeys it.
    let attempt = || async {
        let (status, body) = other.reserve(next_buyer(), showtime).await;
        if status != StatusCode::OK {
            assert_eq!(body["error"], "sale_paused", "{body}");
        }
        status
    };
    changed(&app, showtime, json!({"paused": true})).await;
    // A hold is made until the other process reads the window again.
    let ((), seen_after) = promptly(
        Instant::now(),
        Duration::from_secs(1),
        "the other process refusing holds of the paused sale",
        || async { (attempt().await != StatusCode::OK).then_some(()) },
    )
    .await;

    changed(&app, showtime, json!({"paused": false})).await;
    promptly(
        Instant::now(),
        Duration::from_secs(1),
        "the other process selling again once resumed",
        || async { (attempt().await == StatusCode::OK).then_some(()) },
    )
    .await;
    eprintln!("the other process obeyed the pause after {seen_after:?}");
    other.stop().await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_adding_fifty_seats_in_the_middle_of_a_sale_sells_exactly_fifty_more() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(100).await;
    let first = reserve_all(&app, (1..=200).map(|u| (u, showtime)).collect()).await;
    assert_eq!(
        tally(&first)[&(200, "ok".to_string())],
        100,
        "{:?}",
        tally(&first)
    );
    // The process now remembers the showtime as sold out.
    assert_error(
        &app.reserve(1000, showtime).await,
        StatusCode::CONFLICT,
        "sold_out",
    );

    // The addition lands while a second crowd presses buy: once 100 of its 400 have
    // been answered (sold out, from memory).
    let answered = AtomicUsize::new(0);
    let crowd = counted_reserves(&app, 201..=600, showtime, &answered);
    let add = async {
        until_answered(&answered, 100).await;
        changed(&app, showtime, json!({"add_seats": 50})).await
    };
    let (second, answer) = tokio::join!(crowd, add);
    assert_eq!(answer["capacity"], 150, "{answer}");
    let late = reserve_all(&app, (601..=700).map(|u| (u, showtime)).collect()).await;
    let won: usize = [&second, &late]
        .iter()
        .map(|answers| {
            answers
                .iter()
                .filter(|(status, _)| *status == StatusCode::OK)
                .count()
        })
        .sum();
    assert_eq!(won, 50, "exactly the seats added were sold");
    assert_eq!(app.seats(showtime).await, (0, 150, 0));

    // Every hold is paid and ordered: the database takes all 150.
    let holds: Vec<(i64, String)> = first
        .iter()
        .chain(&second)
        .chain(&late)
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, b)| {
            (
                b["user_id"].as_i64().unwrap(),
                b["reservation_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let app_ref = &app;
    futures::stream::iter(holds)
        .for_each_concurrent(50, |(user, id)| async move {
            assert_eq!(app_ref.pay(&id, user).await.0, StatusCode::OK);
        })
        .await;
    flash_sale_tests::wait_for_orders(&app, showtime, 150).await;
    assert_eq!(capacity_in_db(&app, showtime).await, 150);
    assert_eq!(app.seats(showtime).await, (0, 0, 150));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_seats_during_a_sale_never_oversells() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(100).await;
    let answered = AtomicUsize::new(0);
    let crowd = counted_reserves(&app, 1..=300, showtime, &answered);
    let removals = async {
        let mut accepted = 0;
        // One removal after every 20 answers, spread over the sale.
        for n in 1..=10 {
            until_answered(&answered, 20 * n).await;
            let (status, body) = app
                .change_showtime(showtime, json!({"remove_seats": 5}), None)
                .await;
            match status {
                StatusCode::OK => accepted += 1,
                StatusCode::CONFLICT => assert_eq!(body["error"], "seats_in_use", "{body}"),
                other => panic!("a removal answered {other}: {body}"),
            }
        }
        accepted
    };
    let (answers, accepted) = tokio::join!(crowd, removals);
    let capacity = 100 - 5 * accepted;
    let holds: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, b)| b)
        .collect();
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!(
        available + held + sold,
        capacity,
        "capacity follows the removals"
    );
    assert_eq!(held as usize, holds.len());
    assert!(
        holds.len() as i64 <= capacity,
        "{} holds for {capacity} seats",
        holds.len()
    );
    assert_eq!(capacity_in_db(&app, showtime).await, capacity);

    // Every hold is paid: the database takes each one, refuses none.
    let app_ref = &app;
    futures::stream::iter(holds)
        .for_each_concurrent(50, |b| async move {
            let id = b["reservation_id"].as_str().unwrap();
            let user = b["user_id"].as_i64().unwrap();
            assert_eq!(app_ref.pay(id, user).await.0, StatusCode::OK);
        })
        .await;
    eventually(
        Duration::from_secs(60),
        "every paid seat to become an order",
        || async { (app.orders(showtime).await == held).then_some(()) },
    )
    .await;
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM refused_orders")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(refused, 0);

    // Removing more than the unsold seats is refused and changes nothing.
    let before = shown(&app, showtime).await;
    let unsold = before["available"].as_i64().unwrap();
    let (status, body) = app
        .change_showtime(showtime, json!({"remove_seats": unsold + 1}), None)
        .await;
    assert_error(&(status, body), StatusCode::CONFLICT, "seats_in_use");
    assert_eq!(shown(&app, showtime).await, before);
    assert_eq!(capacity_in_db(&app, showtime).await, capacity);
    app.finish().await;
}

#[tokio::test]
async fn a_bad_change_is_refused_with_a_400_and_changes_nothing() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(10).await;
    hold(&app, 1, showtime).await;
    hold(&app, 2, showtime).await;
    let before = shown(&app, showtime).await;
    for body in [
        json!({}),
        json!({"paused": "yes"}),
        json!({"colour": "red"}),
        json!({"add_seats": 0}),
        json!({"add_seats": -3}),
        json!({"add_seats": 1_000_000}),
        json!({"remove_seats": 10}),
        json!({"capacity": 0}),
        json!({"add_seats": 1, "remove_seats": 1}),
        json!({"add_seats": 1, "capacity": 20}),
        json!({"close_now": true, "sale_closes_at": "2099-01-01T00:00:00Z"}),
        json!({"sale_opens_at": "2099-01-02T00:00:00Z", "sale_closes_at": "2099-01-01T00:00:00Z"}),
        json!({"sale_opens_at": "tomorrow"}),
        json!({"sale_closes_at": 12}),
        json!([1, 2]),
    ] {
        let answer = app.change_showtime(showtime, body.clone(), None).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(shown(&app, showtime).await, before, "after {body}");
    }
    // Fewer seats than held: a conflict, not a bad request; nothing changed either.
    let answer = app
        .change_showtime(showtime, json!({"remove_seats": 8, "paused": true}), None)
        .await;
    assert_eq!(answer.0, StatusCode::OK, "{answer:?}");
    assert_eq!(app.seats(showtime).await, (0, 2, 0));
    let answer = app
        .change_showtime(showtime, json!({"remove_seats": 1, "paused": false}), None)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, "seats_in_use");
    assert_eq!(
        shown(&app, showtime).await["sale_paused"],
        true,
        "nothing changed"
    );

    assert_error(
        &app.change_showtime(showtime + 1000, json!({"paused": true}), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, _, body) = app
        .send(
            app.http
                .patch(app.url("/showtimes/abc"))
                .json(&json!({"paused": true})),
            None,
        )
        .await;
    assert_error(&(status, body), StatusCode::BAD_REQUEST, "bad_request");
    app.finish().await;
}

#[tokio::test]
async fn with_tokens_only_an_admin_steers_a_sale() {
    let app = TestApp::spawn(Options {
        auth_mode: "jwt",
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime_as_admin(5).await;
    let pause = json!({"paused": true});
    assert_error(
        &app.change_showtime(showtime, pause.clone(), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_error(
        &app.change_showtime(showtime, pause.clone(), Some(&app.token(7)))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, body) = app.get(&format!("/showtimes/{showtime}")).await;
    assert_eq!(
        (status, &body["sale_paused"]),
        (StatusCode::OK, &json!(false))
    );
    let (status, body) = app
        .change_showtime(showtime, pause, Some(&app.admin_token()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sale_state"], "paused");
    let (status, body) = app
        .post_as(&app.token(7), "/reserve", json!({"showtime_id": showtime}))
        .await;
    assert_error(&(status, body), StatusCode::CONFLICT, "sale_paused");
    app.finish().await;
}

/// An operator's change runs to its end though the operator's client goes away in the
/// middle of it: between the seat store's resize and the row's commit (held here by the
/// test, at a trigger on the row's update), a dropped change would leave Redis selling
/// seats the database does not have, which it refuses as orders come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_client_goes_away_midway_still_ends_with_redis_and_the_database_agreeing() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let gate = DoorGate::shut(
        &app.db,
        "showtimes_wait_at_the_gate",
        "BEFORE UPDATE ON showtimes FOR EACH ROW",
    )
    .await;

    let patch = app
        .http
        .patch(app.url(&format!("/showtimes/{showtime}")))
        .json(&json!({"add_seats": 3}))
        .send();
    let client = tokio::spawn(patch);
    until_one_waits(
        &app.db,
        "the change at the row's update",
        "wait_event = 'advisory'",
    )
    .await;
    // The client gives up there: its request and its connection are dropped.
    client.abort();
    assert!(client.await.is_err_and(|e| e.is_cancelled()));
    // Redis has the new seats already; the row's commit waits at the gate.
    assert_eq!(app.seats(showtime).await, (5, 0, 0));
    gate.open().await;
    eventually(
        Duration::from_secs(10),
        "the database to have the seats Redis sells",
        || async { (capacity_in_db(&app, showtime).await == 5).then_some(()) },
    )
    .await;
    assert_eq!(app.seats(showtime).await, (5, 0, 0));
    app.finish().await;
}

/// An operator's seat change that reached Redis but whose answer came too late: the
/// change was answered 503 (the row not written) and the operator retried it. Before,
/// the stock moved by the change's difference each time, so Redis had the seats twice
/// (8 on sale for a row of 5) and sold seats the database refuses as orders; a Redis
/// Cluster client that resends a command after a lost reply did the same on its own.
/// Now the stock remembers the row capacity it reflects and moves to the new one: the
/// retry finds the seats already there.
#[tokio::test]
async fn a_seat_change_retried_after_redis_answered_too_late_adds_the_seats_once() {
    let proxy = flash_sale_tests::Cuttable::start("127.0.0.1:6379").await;
    let app = TestApp::spawn(Options {
        redis_url: Some(format!("redis://{}", proxy.addr)),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(2).await;
    assert_eq!(app.seats(showtime).await, (2, 0, 0));

    // From the seat change's own script on, Redis's answers wait at the proxy (the
    // script loaded first, so that the call that waits is the one that runs it).
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(include_str!("../../../lua/resize.lua"))
        .query_async(&mut app.adapters.seats.connection())
        .await
        .unwrap();
    proxy.hold_answers_from(sha.as_bytes());
    let late = app
        .change_showtime(showtime, json!({"add_seats": 3}), None)
        .await;
    assert_error(&late, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    proxy.release();
    assert_eq!(
        capacity_in_db(&app, showtime).await,
        2,
        "the row was not written"
    );

    let retried = changed(&app, showtime, json!({"add_seats": 3})).await;
    assert_eq!(
        (&retried["capacity"], &retried["available"]),
        (&json!(5), &json!(5)),
        "{retried}"
    );
    assert_eq!(capacity_in_db(&app, showtime).await, 5);
    assert_eq!(app.seats(showtime).await, (5, 0, 0));
    app.finish().await;
}
