//! Component faults on the real services: RabbitMQ and PostgreSQL restarted in the
//! middle of a sale. These restart the machine's own services, so they live in their own
//! test binary (cargo runs test binaries one after another) and take turns.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use flash_sale_tests::{Options, TestApp, eventually};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

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
    let app = TestApp::spawn(Options {
        mock_delay: "10..100",
        ..Options::mock_payments()
    })
    .await;
    let showtime = app.create_showtime(60).await;
    let app_ref = &app;
    let crowd = futures::stream::iter(1..=200)
        .map(|user| async move {
            (
                user,
                definite(
                    app_ref,
                    "/reserve",
                    json!({"user_id": user, "showtime_id": showtime}),
                )
                .await,
            )
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::spawn_blocking(restart_rabbitmq).await.unwrap();
    };
    let (answers, ()) = tokio::join!(crowd, restart);

    let won: HashSet<String> = answers
        .iter()
        .filter(|(_, (s, _))| *s == StatusCode::OK)
        .map(|(_, (_, b))| b["reservation_id"].as_str().unwrap().to_string())
        .collect();
    // Every hold answered 200 was paid by the mock payer (its payment request was
    // confirmed before the answer), so every one of them must become an order.
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
    assert!(sold <= 60);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_sale_loses_no_order_and_writes_none_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(40).await;
    let mut held = vec![];
    for user in 1..=40 {
        let (status, body) = app.reserve(user, showtime).await;
        assert_eq!(status, StatusCode::OK);
        held.push((user, body["reservation_id"].as_str().unwrap().to_string()));
    }
    let app_ref = &app;
    let payments = futures::stream::iter(held.clone())
        .map(|(user, id)| async move {
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
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    };
    tokio::join!(payments, restart);

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
    app.finish().await;
}
