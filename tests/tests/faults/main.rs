//! Component faults on the real services: RabbitMQ and PostgreSQL restarted in the
//! middle of a sale. These restart the machine's own services, so they live in their own
//! test binary (cargo runs test binaries one after another) and take turns.
//!
//! A sale on localhost is over in a fraction of a second, while a restart command takes
//! a tenth of a second or more (PostgreSQL) to over a second (RabbitMQ) to take its
//! service down. So each test lets its load run until a set part of the sale is done,
//! then starts the restart and holds back the rest of the load until a fresh client
//! connection to the service fails: the rest of the sale runs into the outage and the
//! recovery, on any machine.

use std::collections::HashSet;
use std::future::Future;
use std::process::Command;
use std::time::Duration;

use flash_sale_tests::{Options, TestApp, eventually, progressed};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection as _;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            panic!("{program} {args:?}: {e} (these tests restart the local services)")
        });
    assert!(status.success(), "{program} {args:?} failed");
}

fn restart_rabbitmq() {
    run("rabbitmqctl", &["-q", "stop_app"]);
    run("rabbitmqctl", &["-q", "start_app"]);
}

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .expect("a PostgreSQL version");
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    );
}

/// Whether a fresh AMQP connection to the broker the app uses opens.
async fn rabbitmq_up(app: &TestApp) -> bool {
    let url = &flash_sale_tests::env(&app.iso, &app.opts)["AMQP_URL"];
    let props = lapin::ConnectionProperties::default();
    match tokio::time::timeout(
        Duration::from_secs(2),
        lapin::Connection::connect(url, props),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "probe".into()).await;
            true
        }
        _ => false,
    }
}

/// Whether a fresh connection to the app's PostgreSQL database opens.
async fn postgres_up(app: &TestApp) -> bool {
    let url = app.iso.database_url();
    match tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        _ => false,
    }
}

/// Starts `restart` (a blocking command) and returns it once `up` says the service is
/// down; panics if the command ends with no failing connection seen, or after 30 s.
async fn start_and_see_down<Up, Fut>(what: &str, restart: fn(), mut up: Up) -> JoinHandle<()>
where
    Up: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(up().await, "{what} is up before its restart");
    let mut restarting = tokio::task::spawn_blocking(restart);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Read before the probe: a restart that had ended before it began went unseen.
        let ended = restarting.is_finished();
        if !up().await {
            return restarting;
        }
        if ended {
            (&mut restarting).await.expect("the restart command");
            panic!("the {what} restart ended without a fresh connection ever failing");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 30 s waiting for {what} to go down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Once `progress` reaches `at`, restarts the service and, as soon as a fresh connection
/// finds it down, sets `strike` (the load held back until then goes on); returns the
/// progress at that moment, after the restart command has ended.
async fn restart_once<Up, Fut>(
    progress: &mut watch::Receiver<usize>,
    at: usize,
    what: &str,
    restart: fn(),
    up: Up,
    strike: &watch::Sender<bool>,
) -> usize
where
    Up: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    progressed(progress, at, Duration::from_secs(60), "the restart").await;
    let restarting = start_and_see_down(what, restart, up).await;
    let before = *progress.borrow();
    strike.send_replace(true);
    restarting.await.unwrap();
    before
}

async fn definite(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    flash_sale_tests::definite(&app.http, &app.url(path), &body).await
}

async fn settled(app: &TestApp, showtime: i64) -> (i64, i64) {
    eventually(Duration::from_secs(120), "the sale to settle", || async {
        let (status, s) = app.get(&format!("/showtimes/{showtime}")).await;
        if status != StatusCode::OK {
            return None;
        }
        let n = |k: &str| s[k].as_i64().unwrap();
        assert_eq!(n("available") + n("held") + n("sold"), n("capacity"));
        let orders = app.orders(showtime).await;
        (n("held") == 0 && orders == n("sold")).then_some((n("sold"), orders))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_mid_sale_loses_no_confirmed_message_and_strands_no_hold() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A sweep every second with no grace races every expiry and order the restart
    // delays.
    let app = TestApp::spawn(Options {
        mock_delay: "10..100",
        sweep_interval_secs: 1,
        sweep_grace_secs: 0,
        ..Options::mock_payments()
    })
    .await;
    const SEATS: usize = 60;
    let showtime = app.create_showtime(SEATS as u32).await;
    let app_ref = &app;
    // `won` counts the holds answered 200 so far (it closes when the crowd is done).
    // Once a third of the seats are won the restart starts, and users not yet sent wait
    // for `struck`, set when a fresh connection finds RabbitMQ down: the fault lands with
    // about two thirds of the seats still to sell, whatever the machine, and they sell
    // through the outage and the recovery.
    let (won, mut seen) = watch::channel(0usize);
    let (strike, struck) = watch::channel(false);
    let crowd = async move {
        let won = &won;
        futures::stream::iter(1..=200)
            .map(|user| {
                let mut struck = struck.clone();
                async move {
                    if *won.borrow() >= SEATS / 3 {
                        struck.wait_for(|&s| s).await.expect("the restart strikes");
                    }
                    let answer = definite(
                        app_ref,
                        "/reserve",
                        json!({"user_id": user, "showtime_id": showtime}),
                    )
                    .await;
                    if answer.0 == StatusCode::OK {
                        won.send_modify(|n| *n += 1);
                    }
                    (user, answer)
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
    };
    let restart = restart_once(
        &mut seen,
        SEATS / 3,
        "RabbitMQ",
        restart_rabbitmq,
        || rabbitmq_up(app_ref),
        &strike,
    );
    let (answers, won_before) = tokio::join!(crowd, restart);

    let won: HashSet<String> = answers
        .iter()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(_, (_, b))| b["reservation_id"].as_str().unwrap().to_string())
        .collect();
    // Every hold answered 200 was paid by the mock payer, so every one of them must
    // become an order: its payment request was confirmed before the answer, or handed
    // over and retried through the restart until confirmed.
    let (sold, orders) = settled(&app, showtime).await;
    assert_eq!(orders, sold);
    let ordered: HashSet<String> =
        sqlx::query_scalar("SELECT reservation_id FROM orders WHERE showtime_id = $1")
            .bind(showtime)
            .fetch_all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        ordered, won,
        "every confirmed hold became exactly one order"
    );
    assert!(sold <= SEATS as i64);
    eprintln!(
        "RabbitMQ down after {won_before} holds won, {} in all",
        won.len()
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_sale_loses_no_order_and_writes_none_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const SEATS: usize = 40;
    // A sweep every second with no grace races every order the restart delays.
    let app = TestApp::spawn(Options {
        sweep_interval_secs: 1,
        sweep_grace_secs: 0,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(SEATS as u32).await;
    let mut held = vec![];
    for user in 1..=SEATS as i64 {
        let (status, body) = app.reserve(user, showtime).await;
        assert_eq!(status, StatusCode::OK);
        held.push((user, body["reservation_id"].as_str().unwrap().to_string()));
    }
    let app_ref = &app;
    // `paid` counts the payments answered so far (it closes when they are all done).
    // Once a quarter are paid the restart starts, and payments not yet sent wait for
    // `struck`, set when a fresh connection finds PostgreSQL down: the fault lands with
    // about three quarters of the payments, and their orders, still to come, whatever the
    // machine.
    let (paid, mut seen) = watch::channel(0usize);
    let (strike, struck) = watch::channel(false);
    let payments = async move {
        let paid = &paid;
        futures::stream::iter(held)
            .map(|(user, id)| {
                let mut struck = struck.clone();
                async move {
                    if *paid.borrow() >= SEATS / 4 {
                        struck.wait_for(|&s| s).await.expect("the restart strikes");
                    }
                    let (status, body) = definite(
                        app_ref,
                        &format!("/reservations/{id}/pay"),
                        json!({"user_id": user}),
                    )
                    .await;
                    assert!(
                        status == StatusCode::OK || body["error"] == "already_paid",
                        "{status} {body}"
                    );
                    paid.send_modify(|n| *n += 1);
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await
    };
    let restart = restart_once(
        &mut seen,
        SEATS / 4,
        "PostgreSQL",
        restart_postgres,
        || postgres_up(app_ref),
        &strike,
    );
    let (_, paid_before) = tokio::join!(payments, restart);

    let (sold, orders) = settled(&app, showtime).await;
    assert_eq!((sold, orders), (40, 40));
    let distinct: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT reservation_id) FROM orders WHERE showtime_id = $1",
    )
    .bind(showtime)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(distinct, 40);
    let recorded: i32 = sqlx::query_scalar("SELECT sold FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(recorded, 40);
    eprintln!("PostgreSQL down after {paid_before} of {SEATS} payments");
    app.finish().await;
}
