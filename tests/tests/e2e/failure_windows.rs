//! Failure windows a careful reading found, each reproduced on the real services: a Redis
//! that comes back from an older snapshot, an order the database refuses, a showtime the
//! sweep does not walk, and text the database cannot store.

use std::time::Duration;

use flash_sale_adapters::Queue;
use flash_sale_core::ports::SeatStore as _;
use flash_sale_tests::{
    DoorGate, Options, RedisServer, TestApp, assert_error, eventually, until_one_waits,
    wait_for_orders,
};
use reqwest::StatusCode;
use serde_json::json;

async fn hold(app: &TestApp, user: i64, showtime: i64) -> String {
    let (status, body) = app.reserve(user, showtime).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["reservation_id"].as_str().unwrap().to_string()
}

async fn sweep_and_reconcile(app: &TestApp) -> flash_sale_reconcile::Report {
    flash_sale_reconcile::run(&app.app, None, false, Duration::ZERO)
        .await
        .unwrap()
}

/// Rows of `orders` for this user of this showtime.
async fn orders_of(app: &TestApp, showtime: i64, user: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE showtime_id = $1 AND user_id = $2")
        .bind(showtime)
        .bind(user)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_redis_back_from_an_older_snapshot_never_hands_a_reservation_id_out_again() {
    let mut redis = RedisServer::start(&[]);
    let app = TestApp::spawn(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(10).await;
    hold(&app, 1, showtime).await;
    redis.snapshot();

    // After the snapshot: a hold, paid and recorded, that the snapshot does not know.
    let lost = hold(&app, 2, showtime).await;
    assert_eq!(app.pay(&lost, 2).await.0, StatusCode::OK);
    eventually(Duration::from_secs(30), "user 2's order", || async {
        (orders_of(&app, showtime, 2).await == 1).then_some(())
    })
    .await;

    // Redis loses everything after the snapshot, while the showtime's keys survive.
    redis.restart_from_snapshot();
    let again = eventually(Duration::from_secs(30), "Redis back", || async {
        let (status, body) = app.reserve(3, showtime).await;
        (status == StatusCode::OK).then(|| body["reservation_id"].as_str().unwrap().to_string())
    })
    .await;
    assert_ne!(
        again, lost,
        "the id of a hold Redis forgot went to another user"
    );
    assert_eq!(app.pay(&again, 3).await.0, StatusCode::OK);
    eventually(Duration::from_secs(30), "user 3's order", || async {
        (orders_of(&app, showtime, 3).await == 1).then_some(())
    })
    .await;
    // Redis marks the hold ORDERED just after the order's commit.
    eventually(Duration::from_secs(30), "user 3's hold ORDERED", || async {
        (app.status_of(&again).await == "ORDERED").then_some(())
    })
    .await;
    assert_eq!(orders_of(&app, showtime, 2).await, 1, "user 2 keeps theirs");
    app.finish().await;
}

/// The database sold out under Redis (its capacity lowered by hand here; Redis losing its
/// last writes does the same): the order is refused once, dead-lettered once, never
/// re-sent, and its seat leaves the stock. Before, the seat went back on sale, where the
/// next buyer paid for it and was refused in turn, a refund after every sale.
#[tokio::test]
async fn an_order_the_database_refuses_ends_refused_is_dead_lettered_once_and_never_resent() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let first = hold(&app, 1, showtime).await;
    assert_eq!(app.pay(&first, 1).await.0, StatusCode::OK);
    eventually(Duration::from_secs(30), "the first order", || async {
        (app.orders(showtime).await == 1).then_some(())
    })
    .await;
    // An operator takes the second seat off the showtime in the database.
    sqlx::query("UPDATE showtimes SET capacity = 1 WHERE id = $1")
        .bind(showtime)
        .execute(&app.db)
        .await
        .unwrap();
    let refused = hold(&app, 2, showtime).await;
    assert_eq!(app.pay(&refused, 2).await.0, StatusCode::OK);
    eventually(Duration::from_secs(30), "the refusal", || async {
        (app.status_of(&refused).await == "REFUSED").then_some(())
    })
    .await;
    let dlq = app.adapters.bus.topology().dead_letter_queue(Queue::Orders);
    eventually(
        Duration::from_secs(30),
        "the dead-lettered order",
        || async { (app.adapters.bus.ready_count(&dlq).await.unwrap() == 1).then_some(()) },
    )
    .await;

    // Sweeps with no grace find nothing to re-send, however often they run.
    for _ in 0..3 {
        let report = sweep_and_reconcile(&app).await;
        assert_eq!(report.orders_resent_by_sweep, 0, "{report:?}");
        assert!(!report.is_clean(), "a refund awaits a person");
        let s = &report.showtimes[0];
        assert_eq!(s.refused_awaiting_refund, 1, "{s:?}");
        assert!(
            s.discrepancies.iter().any(|d| d.contains(&refused)),
            "{s:?}"
        );
    }
    app.until_drained(Queue::Orders).await;
    assert_eq!(app.adapters.bus.ready_count(&dlq).await.unwrap(), 1);
    assert_eq!(
        app.seats(showtime).await,
        (0, 0, 1),
        "the refused seat no longer counts as sold, nor is it on sale"
    );
    let next = app
        .post("/reserve", json!({"user_id": 3, "showtime_id": showtime}))
        .await;
    assert_error(&next, StatusCode::CONFLICT, "sold_out");
    let on_record: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refused_orders WHERE reservation_id = $1")
            .bind(&refused)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(on_record, 1);
    app.finish().await;
}

/// A showtime the sweep cannot read (here its deadlines key holds a string, a broken
/// key; in a Redis Cluster, a shard that is down) does not keep the others from being
/// swept: their holds whose expiry message was lost are returned, and the broken one is
/// named in the report.
#[tokio::test]
async fn a_showtime_the_sweep_cannot_read_does_not_keep_the_others_from_being_swept() {
    let app = TestApp::spawn(Options {
        hold_secs: 5,
        ..Options::default()
    })
    .await;
    let broken = app.create_showtime(1).await;
    let fine = app.create_showtime(1).await;
    let lost = hold(&app, 1, fine).await;
    hold(&app, 2, broken).await;
    // Both expiries reach the delay queue (every handed-over hold message confirmed),
    // then are lost.
    let bus = &app.adapters.bus;
    let delay = bus.topology().delay_queue();
    assert_eq!(
        bus.flush(Duration::from_secs(4)).await,
        0,
        "both expiries queued"
    );
    let ch = bus.channel().await.unwrap();
    ch.queue_purge(delay.as_str().into(), Default::default())
        .await
        .unwrap();
    let mut conn = app.adapters.seats.connection();
    let _: () = redis::cmd("SET")
        .arg(format!("{}:{{{broken}}}:deadlines", app.iso.prefix))
        .arg("broken")
        .query_async(&mut conn)
        .await
        .unwrap();

    let report = eventually(
        Duration::from_secs(30),
        "the sweep to return the lost hold",
        || async {
            let report = app.app.sale.sweep(Duration::ZERO).await.unwrap();
            assert_eq!(report.failed.len(), 1, "{report:?}");
            assert_eq!(report.failed[0].0.get(), broken, "{report:?}");
            (report.holds_expired == 1).then_some(report)
        },
    )
    .await;
    assert!(report.failed[0].1.contains("WRONGTYPE"), "{report:?}");
    assert_eq!(app.status_of(&lost).await, "EXPIRED");
    assert_eq!(app.seats(fine).await, (1, 0, 0));
    // The audit too goes on past it: the other showtime is reconciled, clean.
    let audit = sweep_and_reconcile(&app).await;
    assert_eq!(audit.showtimes_not_swept.len(), 1, "{audit:?}");
    assert_eq!(audit.showtimes_not_reconciled.len(), 1, "{audit:?}");
    assert_eq!(audit.showtimes_not_reconciled[0].showtime_id, broken);
    assert_eq!(audit.showtimes.len(), 1, "{audit:?}");
    assert_eq!(audit.showtimes[0].showtime_id, fine);
    assert!(audit.showtimes[0].discrepancies.is_empty(), "{audit:?}");
    assert!(!audit.is_clean());
    app.finish().await;
}

/// A repair reads the orders under the showtime's lock: an order committed (and marked
/// ORDERED in Redis) between the audit's first read and the lock is counted once, not
/// missed. Here Redis has lost its sold count (the reason to repair), buyer 2's order is
/// held at the database's door, and it is written while the repair waits for the lock.
/// Read before the lock, the rebuild counted it neither as ordered nor as in flight, and
/// put one more seat on sale than exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_counts_an_order_written_while_it_waited_for_the_lock() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(5).await;
    let first = hold(&app, 1, showtime).await;
    assert_eq!(app.pay(&first, 1).await.0, StatusCode::OK);
    eventually(Duration::from_secs(30), "the first order", || async {
        (app.status_of(&first).await == "ORDERED").then_some(())
    })
    .await;

    // Orders wait at the database's door (an advisory lock the test holds), except the
    // test's own (`test.gate` open in its transaction).
    let gate = DoorGate::shut(
        &app.db,
        "orders_wait_at_the_gate",
        "BEFORE INSERT ON orders FOR EACH STATEMENT",
    )
    .await;
    let second = hold(&app, 2, showtime).await;
    assert_eq!(app.pay(&second, 2).await.0, StatusCode::OK);
    // Redis loses its count of the two paid seats.
    let mut conn = app.adapters.seats.connection();
    let seats_key = format!("{}:{{{showtime}}}:seats", app.iso.prefix);
    let _: () = redis::pipe()
        .hincr(&seats_key, "sold", -2)
        .hincr(&seats_key, "available", 2)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.seats(showtime).await, (5, 0, 0));

    // The showtime's row locked: the repair audits, reads the orders, then waits.
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM showtimes WHERE id = $1 FOR UPDATE")
        .bind(showtime)
        .execute(&mut *tx)
        .await
        .unwrap();
    let repair = {
        let app = app.app.clone();
        tokio::spawn(async move {
            let id = flash_sale_core::ShowtimeId::new(showtime).unwrap();
            flash_sale_reconcile::run(&app, Some(id), true, Duration::from_secs(3600)).await
        })
    };
    until_one_waits(
        &app.db,
        "the repair to wait for the lock",
        "wait_event_type = 'Lock' AND query LIKE '%FROM showtimes WHERE id = $1 FOR UPDATE%'",
    )
    .await;
    // Meanwhile buyer 2's order is written and marked, as write-order does.
    sqlx::query("SET LOCAL test.gate = 'open'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO orders (reservation_id, showtime_id, user_id, paid_at, quantity)
         VALUES ($1, $2, 2, now(), 1)",
    )
    .bind(&second)
    .bind(showtime)
    .execute(&mut *tx)
    .await
    .unwrap();
    app.adapters
        .seats
        .mark_ordered(&[(
            second.parse().unwrap(),
            flash_sale_core::UserId::new(2).unwrap(),
        )])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let report = repair.await.unwrap().unwrap();
    let repaired = report.showtimes[0].repaired.as_ref().expect("a repair");
    assert_eq!(
        (repaired.available, repaired.held, repaired.sold),
        (3, 0, 2),
        "{report:?}"
    );
    assert_eq!(app.seats(showtime).await, (3, 0, 2));
    gate.open().await;
    assert_eq!(app.orders(showtime).await, 2);
    app.finish().await;
}

/// A step of the audit that fails as a whole (here the sweep, whose re-sent order the
/// broker cannot route) does not keep the others from running: the showtimes are still
/// reconciled, and each failure is in the report, which is unclean.
#[tokio::test]
async fn a_sweep_that_cannot_resend_does_not_keep_the_audit_from_reporting() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    let paid = hold(&app, 1, showtime).await;
    let bus = &app.adapters.bus;
    bus.ping().await.unwrap();
    let ch = bus.channel().await.unwrap();
    // Orders unroutable (their queue unbound: a queue deleted would cancel its consumer,
    // which declares it again), and one queue's depth unreadable (the orders' dead
    // letters, which nothing consumes).
    let topology = bus.topology();
    ch.queue_unbind(
        topology.queue(Queue::Orders).as_str().into(),
        topology.exchange().as_str().into(),
        Queue::Orders.key().into(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_delete(
        topology.dead_letter_queue(Queue::Orders).as_str().into(),
        Default::default(),
    )
    .await
    .unwrap();
    // Paid, its order unroutable: it waits in Redis for the sweep.
    let (status, body) = app.pay(&paid, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "PAID", "{body}");

    let report = sweep_and_reconcile(&app).await;
    assert!(
        report.failures.iter().any(|f| f.starts_with("the sweep")),
        "{report:?}"
    );
    assert!(!report.is_clean());
    assert_eq!(report.showtimes.len(), 1, "{report:?}");
    assert_eq!(report.showtimes[0].paid_in_flight, 1, "{report:?}");
    // The missing queue's depth cannot be read: named too, after the reconciliation.
    assert!(
        report.failures[1..]
            .iter()
            .any(|f| f.starts_with("reading the queues' depths")),
        "{report:?}"
    );

    // The queue back, the next audit runs whole, and its sweep re-sends the order (its
    // publish confirmed and routed).
    bus.declare_topology().await.unwrap();
    let report = sweep_and_reconcile(&app).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.orders_resent_by_sweep, 1, "{report:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_showtime_missing_from_the_sweeps_registry_is_reported_and_registered_again() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(2).await;
    hold(&app, 1, showtime).await;
    let mut conn = app.adapters.seats.connection();
    let registry = format!("{}:showtimes", app.iso.prefix);
    let removed: i64 = redis::cmd("SREM")
        .arg(&registry)
        .arg(showtime)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1);

    let report = sweep_and_reconcile(&app).await;
    assert!(!report.is_clean(), "{report:?}");
    assert!(
        report.showtimes[0]
            .discrepancies
            .iter()
            .any(|d| d.contains("the sweep does not walk")),
        "{report:?}"
    );
    let repaired = flash_sale_reconcile::run(&app.app, None, true, Duration::ZERO)
        .await
        .unwrap();
    assert!(repaired.is_clean(), "{repaired:?}");
    let registered: bool = redis::cmd("SISMEMBER")
        .arg(&registry)
        .arg(showtime)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(registered);
    assert!(sweep_and_reconcile(&app).await.is_clean());
    app.finish().await;
}

#[tokio::test]
async fn a_title_with_control_characters_is_a_400_and_creates_nothing() {
    let app = TestApp::spawn(Options::default()).await;
    for title in ["Premi\u{0}ere", "two\nlines", "bell\u{7}"] {
        let answer = app
            .post("/showtimes", json!({"capacity": 5, "title": title}))
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(app.showtimes_in_db().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_showtime_left_in_redis_by_another_database_is_rebuilt_not_adopted() {
    let old = TestApp::spawn(Options::default()).await;
    let showtime = old.create_showtime(5).await;
    for user in 1..=3 {
        hold(&old, user, showtime).await;
    }
    let mut old = old;
    old.stop().await;

    // The same Redis keys, a new database: its showtime 1 is another sale.
    let iso = flash_sale_tests::Isolation {
        database: format!("{}_recreated", old.iso.database),
        prefix: old.iso.prefix.clone(),
    };
    let new = TestApp::spawn_on(iso, Options::default()).await;
    assert_eq!(new.create_showtime(5).await, showtime, "the same id");
    assert_eq!(
        new.seats(showtime).await,
        (5, 0, 0),
        "not the old sale's holds"
    );
    // Its buyers are not the old sale's: user 1 holds nothing here.
    let id = hold(&new, 1, showtime).await;
    assert_eq!(new.status_of(&id).await, "RESERVED");
    assert_eq!(new.seats(showtime).await, (4, 1, 0));
    let report = flash_sale_reconcile::run(&new.app, None, false, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    flash_sale_tests::drop_database(&old.iso.database)
        .await
        .unwrap();
    new.finish().await;
}

/// A broker that comes back without its exchanges and queues (reset, or a new node
/// without the old one's disk): the process declares them again on its new connections,
/// and the sale goes on, holds, payments and orders, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_without_its_queues_gets_them_again_and_the_sale_goes_on() {
    let rabbit = flash_sale_tests::RabbitNode::start();
    let app = TestApp::spawn(Options {
        amqp_url: Some(rabbit.url()),
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(10).await;
    let first = hold(&app, 1, showtime).await;
    let (status, body) = app.pay(&first, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(Duration::from_secs(30), "the first order", || async {
        (app.status_of(&first).await == "ORDERED").then_some(())
    })
    .await;

    rabbit.reset();
    let second = eventually(
        Duration::from_secs(60),
        "a hold after the broker came back",
        || async {
            let (status, body) = app.reserve(2, showtime).await;
            match status {
                StatusCode::OK => Some(body["reservation_id"].as_str().unwrap().to_string()),
                StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("{other} while the broker comes back: {body}"),
            }
        },
    )
    .await;
    let (status, body) = app.pay(&second, 2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(
        Duration::from_secs(60),
        "the order paid after the broker came back",
        || async { (app.status_of(&second).await == "ORDERED").then_some(()) },
    )
    .await;
    assert_eq!(app.orders(showtime).await, 2);
    assert_eq!(app.seats(showtime).await, (8, 0, 2));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_blocks_publishers_gets_503s_with_seats_given_back_and_pay_still_answers() {
    let rabbit = flash_sale_tests::RabbitNode::start();
    let app = TestApp::spawn(Options {
        amqp_url: Some(rabbit.url()),
        broker_confirm_timeout_ms: Some(1000),
        broker_hand_over_limit: Some(5),
        hold_secs: 600,
        sweep_interval_secs: 1,
        sweep_grace_secs: 0,
        ..Options::default()
    })
    .await;
    let showtime = app.create_showtime(50).await;
    let before = hold(&app, 1, showtime).await;

    rabbit.memory_alarm(true);
    // Holds handed over before the broker is known to be stalled may still answer 200
    // (their loss is covered by the sweep), five at the most (the hand-over limit); then,
    // and once a confirm is overdue, every reserve waits for its own, in time, and gives
    // its seat back when it does not come.
    let mut held = vec![before.clone()];
    let mut refused_in_a_row = 0;
    for user in 2..=40 {
        let (status, body) = app.reserve(user, showtime).await;
        match status {
            StatusCode::OK => {
                held.push(body["reservation_id"].as_str().unwrap().to_string());
                refused_in_a_row = 0;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"], "unavailable", "{body}");
                refused_in_a_row += 1;
                if refused_in_a_row == 3 {
                    break;
                }
            }
            other => panic!("{other} while the broker blocks publishers: {body}"),
        }
    }
    assert_eq!(
        refused_in_a_row, 3,
        "reserves kept answering 200 into a stalled broker"
    );
    assert!(
        held.len() <= 1 + 5,
        "{} holds handed over past the limit of 5",
        held.len() - 1
    );
    let (_, counted_held, _) = app.seats(showtime).await;
    assert_eq!(
        counted_held as usize,
        held.len(),
        "every 503 gave its seat back"
    );

    // A payment is durable in Redis: 200 PAID in time, its order follows later.
    let (status, body) = app.pay(&before, 1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "PAID");

    rabbit.memory_alarm(false);
    eventually(Duration::from_secs(60), "the paid order", || async {
        (app.status_of(&before).await == "ORDERED").then_some(())
    })
    .await;
    // Nothing leaked: the paid seat is sold, every hold that answered 200 still holds
    // its seat (its expiry reached the broker once the alarm cleared), every 503 none.
    let others = held.len() as i64 - 1;
    assert_eq!(app.seats(showtime).await, (50 - others - 1, others, 1));
    assert_eq!(app.orders(showtime).await, 1);
    let delay_queue = app.adapters.bus.topology().delay_queue();
    eventually(
        Duration::from_secs(60),
        "every handed-over expiry in the delay queue",
        || async {
            (app.adapters.bus.ready_count(&delay_queue).await.unwrap() as usize >= 1).then_some(())
        },
    )
    .await;
    app.finish().await;
}

/// A process whose Redis connection goes through a proxy, cut: Redis looks down to it
/// alone. Keep the proxy as long as the process.
async fn cut_off_from_redis() -> (flash_sale_tests::Cuttable, TestApp) {
    let proxy = flash_sale_tests::Cuttable::start("127.0.0.1:6379").await;
    let app = TestApp::spawn(Options {
        redis_url: Some(format!("redis://{}", proxy.addr)),
        ..Options::default()
    })
    .await;
    proxy.cut().await;
    (proxy, app)
}

/// The showtime `created` (2 seats) sells one to a buyer of a process that reaches Redis.
async fn sells_one_of_two(app: &TestApp, created: &serde_json::Value) {
    let showtime = created["id"].as_i64().unwrap();
    hold(app, 1, showtime).await;
    assert_eq!(app.seats(showtime).await, (1, 1, 0));
}

/// A showtime on record is created, whatever Redis says: when Redis does not take its
/// seats right after the row is written, the answer is still 201 (a 503 would invite a
/// retry that puts a second showtime with the same seats on sale), and the seats go on
/// sale at the showtime's first use.
#[tokio::test]
async fn a_showtime_whose_seats_redis_did_not_take_is_created_and_sells_at_first_use() {
    let (_proxy, mut cut_off) = cut_off_from_redis().await;
    let (status, created) = cut_off.post("/showtimes", json!({"capacity": 2})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["available"], 2, "{created}");
    assert_eq!(
        cut_off.showtimes_in_db().await,
        1,
        "one showtime, on record"
    );
    cut_off.stop().await;

    // A process that reaches Redis sells it.
    let app = TestApp::spawn_on(cut_off.iso.clone(), Options::default()).await;
    sells_one_of_two(&app, &created).await;
    app.finish().await;
}

/// The same under an operator's `Idempotency-Key`: the showtime the request wrote is
/// created (201), not a 503 saying nothing was changed, which an operator whose retry
/// never comes would believe while the showtime is listed and sold; a retry under the key
/// finds it, puts its seats on sale and answers it as a replay.
#[tokio::test]
async fn a_keyed_showtime_whose_seats_redis_did_not_take_is_created_and_found_again() {
    let (_proxy, mut cut_off) = cut_off_from_redis().await;
    let create = |app: &TestApp| {
        app.http
            .post(app.url("/showtimes"))
            .header("Idempotency-Key", "premiere-cut")
            .json(&json!({"capacity": 2}))
    };
    let (status, headers, created) = cut_off.send(create(&cut_off), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(
        cut_off.showtimes_in_db().await,
        1,
        "one showtime, on record"
    );
    cut_off.stop().await;

    // A process that reaches Redis: the retry finds the showtime, and it sells.
    let app = TestApp::spawn_on(cut_off.iso.clone(), Options::default()).await;
    let (status, headers, again) = app.send(create(&app), None).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(
        headers
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(again["id"], created["id"]);
    assert_eq!(again["available"], 2, "{again}");
    assert_eq!(app.showtimes_in_db().await, 1);
    sells_one_of_two(&app, &created).await;
    app.finish().await;
}

/// A hold whose payment Redis lost (a restart from an older snapshot) while its order
/// was committed reads RESERVED again. Before, its expiry put the seat back on sale while
/// the database counted it sold; the next buyer then paid for a seat that does not
/// exist. Now an expiry that returns seats asks the database first, and a hold it holds
/// an order for is ORDERED, its seat sold.
#[tokio::test]
async fn an_expiring_hold_whose_order_is_on_record_stays_sold() {
    let app = TestApp::spawn(Options::default()).await;
    let showtime = app.create_showtime(1).await;
    let held = hold(&app, 1, showtime).await;
    sqlx::query(
        "INSERT INTO orders (reservation_id, showtime_id, user_id, paid_at, quantity)
         VALUES ($1, $2, 1, now(), 1)",
    )
    .bind(&held)
    .bind(showtime)
    .execute(&app.db)
    .await
    .unwrap();
    let outcome = app
        .app
        .sale
        .expire(flash_sale_core::Expiry {
            reservation: held.parse().unwrap(),
        })
        .await
        .unwrap();
    assert_eq!(
        outcome,
        flash_sale_core::ports::ExpireOutcome::AlreadySettled(flash_sale_core::Status::Ordered)
    );
    assert_eq!(app.status_of(&held).await, "ORDERED");
    assert_eq!(app.seats(showtime).await, (0, 0, 1));
    let next = app
        .post("/reserve", json!({"user_id": 2, "showtime_id": showtime}))
        .await;
    assert_error(&next, StatusCode::CONFLICT, "sold_out");
    app.finish().await;
}

/// An operator's change is saved when its row is: before, the seat counts read after
/// the commit failed the request with Redis out of reach, so a pause that had been saved
/// was answered 503 "nothing was changed, please retry" (and a change of seats whose
/// count read failed would be applied again by the retry). Now the answer is 200 with
/// the seats unknown (`null`), and the row holds the pause.
#[tokio::test]
async fn a_change_saved_while_redis_is_out_of_reach_is_answered_as_saved() {
    let (_proxy, mut cut_off) = cut_off_from_redis().await;
    let (status, created) = cut_off.post("/showtimes", json!({"capacity": 2})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let showtime = created["id"].as_i64().unwrap();
    let (status, changed) = cut_off
        .change_showtime(showtime, json!({"paused": true}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["sale_paused"], true, "{changed}");
    assert_eq!(changed["sale_state"], "paused", "{changed}");
    assert_eq!(changed["capacity"], 2, "{changed}");
    for count in ["available", "held", "sold"] {
        assert!(changed[count].is_null(), "{count} unknown: {changed}");
    }
    let paused: bool = sqlx::query_scalar("SELECT sale_paused FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&cut_off.db)
        .await
        .unwrap();
    assert!(paused, "the row holds the pause");
    cut_off.stop().await;

    // A process that reaches Redis refuses holds: the pause stands.
    let app = TestApp::spawn_on(cut_off.iso.clone(), Options::default()).await;
    let (status, refused) = app
        .post("/reserve", json!({"user_id": 1, "showtime_id": showtime}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"], "sale_paused", "{refused}");
    app.finish().await;
}

/// The order queue deleted under the live connections (by hand, by a broker's policy):
/// the topology is declared when a connection opens, so before, the orders consumer
/// could not consume again and every order published (the payment's, the sweep's
/// re-sends) was returned unroutable until a restart, while buyers paid. Now the
/// consumer, cancelled by the broker, declares the topology before it consumes again, so
/// the paid seats still become orders (the first by the sweep's re-send), on the same
/// connections.
#[tokio::test]
async fn an_order_queue_deleted_under_live_connections_is_declared_again_and_orders_land() {
    let app = TestApp::spawn(Options {
        // The sweep re-sends the order the payment could not queue.
        sweep_interval_secs: 1,
        sweep_grace_secs: 0,
        ..Options::default()
    })
    .await;
    eventually(Duration::from_secs(30), "the orders consumer", || async {
        let (status, ready) = app.get("/readyz").await;
        (status == StatusCode::OK && ready["checks"]["consumer:orders"] == "ok").then_some(())
    })
    .await;
    let showtime = app.create_showtime(2).await;
    let first = hold(&app, 1, showtime).await;
    let bus = &app.adapters.bus;
    let ch = bus.channel().await.expect("a channel");
    ch.queue_delete(
        bus.topology().queue(Queue::Orders).as_str().into(),
        Default::default(),
    )
    .await
    .expect("the order queue deleted");

    let (status, paid) = app.pay(&first, 1).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    eventually(
        Duration::from_secs(20),
        "the paid seat to become an order",
        || async { (app.orders(showtime).await == 1).then_some(()) },
    )
    .await;
    // And the next buyer's too.
    let second = hold(&app, 2, showtime).await;
    let (status, paid) = app.pay(&second, 2).await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    wait_for_orders(&app, showtime, 2).await;
    app.finish().await;
}
