//! The Go reference's three scenarios, with exact counts, and every order checked in
//! PostgreSQL by polling (the reference waited a fixed 3 s and hoped).

use std::time::Duration;

use flash_sale_tests::{
    Options, TestApp, eventually, reserve_all, seven_thousand_buyers_for_a_hundred_seats, tally,
    wait_for_orders,
};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_thousand_users_for_a_hundred_seats_buy_exactly_a_hundred() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    seven_thousand_buyers_for_a_hundred_seats(&app).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_pressing_buy_twenty_times_at_once_gets_one_seat() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    let showtime = app.create_showtime(10).await;

    let answers = reserve_all(&app, vec![(42, showtime); 20]).await;

    let counts = tally(&answers);
    assert_eq!(counts.get(&(200, "ok".into())), Some(&1), "{counts:?}");
    assert_eq!(
        counts.get(&(409, "already_ordered".into())),
        Some(&19),
        "{counts:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .all(|(_, b)| b["message"].as_str().unwrap().contains("Already ordered"))
    );
    eventually(Duration::from_secs(30), "the one order", || async {
        (app.orders(showtime).await == 1).then_some(())
    })
    .await;
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!((available, held, sold), (9, 0, 1));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_showtimes_sell_out_independently_under_one_crowd() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    let mut showtimes = vec![];
    for _ in 0..3 {
        showtimes.push(app.create_showtime(50).await);
    }
    // 1,000 users per showtime, interleaved so every showtime is hit at once.
    let attempts: Vec<(i64, i64)> = (1..=1000)
        .flat_map(|user| showtimes.iter().map(move |s| (user, *s)))
        .collect();

    let answers = reserve_all(&app, attempts).await;

    for showtime in &showtimes {
        let won = answers
            .iter()
            .filter(|(s, b)| *s == StatusCode::OK && b["showtime_id"].as_i64() == Some(*showtime))
            .count();
        assert_eq!(won, 50, "showtime {showtime}");
    }
    assert_eq!(
        tally(&answers).get(&(409, "sold_out".into())),
        Some(&(3 * 950))
    );
    for showtime in showtimes {
        wait_for_orders(&app, showtime, 50).await;
    }
    app.finish().await;
}
