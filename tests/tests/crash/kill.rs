//! kill -9 of the real server process in the middle of a sale, several times: one
//! process alone, and one of three behind nginx (`ops/nginx.conf`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flash_sale_tests::{
    Isolation, NginxFront, Options, ServerProcess, definite, eventually, free_port, progressed,
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
    killed_four_times_mid_sale(server_options(1), 1).await;
}

/// Three processes behind nginx sell one sale, each with its own sweep, sold-out memory
/// and consumers; one of them is killed at a time. Its answers in flight are lost (a
/// 502 from nginx: an unknown outcome the buyer retries), the others go on selling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_processes_behind_nginx_loses_and_oversells_nothing() {
    let opts = Options {
        trust_forwarded_for: true,
        ..server_options(1)
    };
    killed_four_times_mid_sale(opts, 3).await;
}

/// The same with a sweep that steps in the moment a deadline passes, racing every expiry
/// message and every order write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_sale_with_a_sweep_of_no_grace_loses_and_oversells_nothing() {
    killed_four_times_mid_sale(server_options(0), 1).await;
}

/// A sale through `processes` server processes (behind nginx when more than one), one
/// of them killed with -9 and restarted four times while the crowd buys.
async fn killed_four_times_mid_sale(opts: Options, processes: usize) {
    const CAPACITY: i64 = 40;
    const SERVER: &str = env!("CARGO_BIN_EXE_flash-sale-server");
    // With several processes the others keep answering while a killed one restarts, so
    // the crowd is larger for the four kills to land before it is done.
    let users: i64 = if processes > 1 {
        500 * processes as i64
    } else {
        300
    };
    let iso = Isolation::new();
    let ports: Vec<u16> = (0..processes).map(|_| free_port()).collect();
    let mut servers = vec![];
    for port in &ports {
        servers.push(ServerProcess::start(SERVER, &iso, *port, &opts).await);
    }
    let front = (processes > 1).then(|| NginxFront::start(&ports));
    let base = match &front {
        Some(nginx) => nginx.url(""),
        None => format!("http://127.0.0.1:{}", ports[0]),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let showtime = servers[0].create_showtime(&http, CAPACITY).await;

    // Every user keeps pressing "buy" until they get a definite answer; even users then
    // pay (again until a definite answer), odd users walk away and their holds expire.
    // `answered` counts the definite answers (reserve or pay) the crowd has had so far;
    // it closes when the crowd is done.
    let (answered, mut seen) = watch::channel(0usize);
    let crowd = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            futures::stream::iter(1..=users)
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
    // before the crowd's answers (at least one per user) are all in. A crowd that stops short, or does
    // not get there within a minute, fails the test.
    const STEP: usize = CAPACITY as usize / 4;
    //
    // With several processes a killed one restarts in the background while the others
    // keep selling (waiting for it would let them finish the crowd before the next kill);
    // it is back before it is killed again.
    let mut answered_at_kill = vec![];
    let mut since = 0;
    let mut restarting: Vec<Option<tokio::task::JoinHandle<ServerProcess>>> =
        (0..processes).map(|_| None).collect();
    for kill in 1..=4 {
        progressed(
            &mut seen,
            since + STEP,
            Duration::from_secs(60),
            &format!("kill -9 number {kill}"),
        )
        .await;
        answered_at_kill.push(*seen.borrow());
        let victim = (kill - 1) % processes;
        if let Some(restart) = restarting[victim].take() {
            servers[victim] = restart.await.expect("a restarted server");
        }
        servers[victim].kill9().await;
        since = *seen.borrow();
        let restart = tokio::spawn({
            let (iso, opts, port) = (iso.clone(), opts.clone(), ports[victim]);
            async move { ServerProcess::start(SERVER, &iso, port, &opts).await }
        });
        if processes == 1 {
            servers[victim] = restart.await.expect("a restarted server");
        } else {
            restarting[victim] = Some(restart);
        }
    }
    for (victim, restart) in restarting.into_iter().enumerate() {
        if let Some(restart) = restart {
            servers[victim] = restart.await.expect("a restarted server");
        }
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
    let made = reservations_made(&iso, &opts, showtime).await;
    assert!(
        made.len() >= reserved.len(),
        "{} reservations in Redis, {} answered",
        made.len(),
        reserved.len()
    );
    let mut returned = 0;
    for id in &made {
        let r: Value = http
            .get(format!("{base}/reservations/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match r["status"].as_str().unwrap() {
            "ORDERED" => assert!(ordered.contains(id), "{id} is ORDERED but has no order row"),
            "EXPIRED" => {
                assert!(!ordered.contains(id), "{id} expired but has an order");
                returned += 1;
            }
            other => panic!("{id} is still {other} after the sale settled"),
        }
    }
    assert_eq!(returned + ordered.len(), made.len());
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
        "kill -9 x4 ({processes} process(es)) after {answered_at_kill:?} of {} answers: \
         {} reservations made, {} answered, {} orders, {returned} holds returned",
        *seen.borrow(),
        made.len(),
        reserved.len(),
        ordered.len()
    );

    drop(front);
    for mut server in servers {
        server.kill9().await;
    }
    drop(db);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}

/// Every reservation of `showtime` ever made, answered or not, as its id: the
/// reservations in Redis (their sequence numbers are floored by Redis's clock, so
/// they cannot be counted up from 1).
async fn reservations_made(iso: &Isolation, opts: &Options, showtime: i64) -> Vec<String> {
    let url = flash_sale_tests::env(iso, opts)["REDIS_URL"].clone();
    let mut redis = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{}:{{{showtime}}}:reservations", iso.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    fields
        .iter()
        .filter_map(|f| f.strip_suffix(":user"))
        .map(|seq| format!("{showtime}-{seq}"))
        .collect()
}
