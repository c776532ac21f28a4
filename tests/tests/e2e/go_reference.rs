//! The Go reference's three scenarios, with exact counts, and every order checked in
//! PostgreSQL by polling (the reference waited a fixed 3 s and hoped).

use flash_sale_tests::{
    Options, TestApp, one_user_pressing_buy_twenty_times,
    seven_thousand_buyers_for_a_hundred_seats, three_showtimes_sell_out_independently,
};

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
    one_user_pressing_buy_twenty_times(&app, showtime).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_showtimes_sell_out_independently_under_one_crowd() {
    let app = TestApp::spawn(Options::mock_payments()).await;
    let mut showtimes = vec![];
    for _ in 0..3 {
        showtimes.push(app.create_showtime(50).await);
    }
    three_showtimes_sell_out_independently(&app, &showtimes).await;
    app.finish().await;
}
