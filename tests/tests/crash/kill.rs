//! kill -9 of the real server process in the middle of a sale, several times.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flash_sale_tests::{
    Isolation, Options, ServerProcess, definite, eventually, free_port, progressed,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Holds of 2 s, a sweep every second that steps in `grace_secs` after a deadline.
fn server_options(grace_secs: u64) -> Options {
    Options {
        hold_secs: 2,
        sweep_interval_secs: 1,
        sweep_grace_secs: grace_secs,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_sale_loses_and_oversells_nothing() {
    killed_four_times_mid_sale(server_options(1)).await;
}

/// The same with a sweep that steps in the moment a deadline passes, racing every expiry
/// message and every order write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_sale_with_a_sweep_of_no_grace_loses_and_oversells_nothing() {
    killed_four_times_mid_sale(server_options(0)).await;
}

async fn killed_four_times_mid_sale(opts: Options) {
    const CAPACITY: i64 = 40;
    const USERS: i64 = 300;
    let iso = Isolation::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut server =
        ServerProcess::start(env!("CARGO_BIN_EXE_flash-sale-server"), &iso, port, &opts).await;
    let showtime = server.create_showtime(&http, CAPACITY).await;

    // Every user keeps pressing "buy" until they get a definite answer; even users then
    // pay (again until a definite answer), odd users walk away and their holds expire.
    // `answered` counts the definite answers (reserve or pay) the crowd has had so far;
    // it closes when the crowd is done.
    let (answered, mut seen) = watch::channel(0usize);
    let crowd = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            futures::stream::iter(1..=USERS)
                .map(|user| {
                    let http = http.clone();
                    let base = base.clone();
                    let answered = answered.clone();
                    async move {
                        let reserved = definite(
                            &http,
                            &format!("{base}/reserve"),
                            &json!({"user_id": user, "showtime_id": showtime}),
                        )
                        .await;
                        answered.send_modify(|n| *n += 1);
                        let paid = match (&reserved, user % 2) {
                            ((StatusCode::OK, body), 0) => {
                                let id = body["reservation_id"].as_str().unwrap();
                                let (status, body) = definite(
                                    &http,
                                    &format!("{base}/reservations/{id}/pay"),
                                    &json!({"user_id": user}),
                                )
                                .await;
                                answered.send_modify(|n| *n += 1);
                                // A retried payment that had gone through answers already_paid.
                                status == StatusCode::OK || body["error"] == "already_paid"
                            }
                            _ => false,
                        };
                        (user, reserved.0, reserved.1, paid)
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        })
    };

    // Each kill waits until the crowd has had STEP more definite answers since the last
    // one (a killed server answers nothing, so they all come from the server now up): it
    // lands in a sale that is moving, on any machine. Taking the seats and paying for half
    // of them alone gives about 1.5 * CAPACITY answers, so the four kills, after about
    // 4 * STEP = CAPACITY of them, fall while seats are being taken and paid for, long
    // before the crowd's USERS or more answers are in. A crowd that stops short, or does
    // not get there within a minute, fails the test.
    const STEP: usize = CAPACITY as usize / 4;
    let mut answered_at_kill = vec![];
    let mut since = 0;
    for kill in 1..=4 {
        progressed(
            &mut seen,
            since + STEP,
            Duration::from_secs(60),
            &format!("kill -9 number {kill}"),
        )
        .await;
        answered_at_kill.push(*seen.borrow());
        server.kill9().await;
        since = *seen.borrow();
        server =
            ServerProcess::start(env!("CARGO_BIN_EXE_flash-sale-server"), &iso, port, &opts).await;
    }
    let answers = crowd.await.unwrap();
    let reserved: HashMap<i64, (String, bool)> = answers
        .iter()
        .filter(|(_, s, _, _)| *s == StatusCode::OK)
        .map(|(u, _, b, paid)| {
            (
                *u,
                (b["reservation_id"].as_str().unwrap().to_string(), *paid),
            )
        })
        .collect();
    assert!(!reserved.is_empty());

    // Let the sale settle: every hold paid and ordered, or expired and returned.
    let db = sqlx::PgPool::connect(&iso.database_url()).await.unwrap();
    let seats = |http: reqwest::Client, base: String| async move {
        let s: Value = http
            .get(format!("{base}/showtimes/{showtime}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let n = |k: &str| s[k].as_i64().unwrap();
        assert_eq!(n("available") + n("held") + n("sold"), CAPACITY, "{s}");
        Some((n("available"), n("held"), n("sold")))
    };
    let (available, sold) = eventually(Duration::from_secs(90), "the sale to settle", || {
        let (http, base, db) = (http.clone(), base.clone(), db.clone());
        async move {
            let (available, held, sold) = seats(http, base).await?;
            let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&db)
                .await
                .ok()?;
            (held == 0 && orders == sold).then_some((available, sold))
        }
    })
    .await;
    assert!(sold <= CAPACITY);
    assert_eq!(available + sold, CAPACITY);

    // Every reservation ever made (answered or not) ended as one order or one returned seat.
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT reservation_id, user_id FROM orders")
        .fetch_all(&db)
        .await
        .unwrap();
    let ordered: HashSet<String> = rows.iter().map(|(r, _)| r.clone()).collect();
    let buyers: HashSet<i64> = rows.iter().map(|(_, u)| *u).collect();
    assert_eq!(buyers.len(), rows.len(), "no user bought twice");
    let mut seq = 1;
    let mut returned = 0;
    loop {
        let id = format!("{showtime}-{seq}");
        let res = http
            .get(format!("{base}/reservations/{id}"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::NOT_FOUND {
            break;
        }
        let r: Value = res.json().await.unwrap();
        match r["status"].as_str().unwrap() {
            "ORDERED" => assert!(
                ordered.contains(&id),
                "{id} is ORDERED but has no order row"
            ),
            "EXPIRED" => {
                assert!(!ordered.contains(&id), "{id} expired but has an order");
                returned += 1;
            }
            other => panic!("{id} is still {other} after the sale settled"),
        }
        seq += 1;
    }
    assert_eq!(ordered.len() as i64, sold);
    for (id, paid) in reserved.values() {
        assert_eq!(
            ordered.contains(id),
            *paid,
            "{id}: paid {paid}, but ordered {}",
            ordered.contains(id)
        );
    }
    eprintln!(
        "kill -9 x4 after {answered_at_kill:?} of {} answers: {} answered reservations, \
         {} orders, {returned} holds returned",
        *seen.borrow(),
        reserved.len(),
        ordered.len()
    );

    server.kill9().await;
    drop(db);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}
