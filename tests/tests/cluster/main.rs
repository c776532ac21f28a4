//! flash-sale on a Redis Cluster of 3 masters and 3 replicas (`scripts/redis-cluster`,
//! through the kit's [`RedisCluster`]): the Go reference's scenarios on showtimes spread
//! over every master, the store's cross-showtime calls (a batch of orders, the sweep,
//! `reconcile`) across nodes, and a master killed in the middle of a sale.
//!
//! The tests that do not disturb the cluster share one for this binary; the failover test
//! starts its own.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flash_sale_adapters::RedisSeats;
use flash_sale_core::ports::{PayOutcome, SeatAuditor as _, SeatRow, SeatStore as _, TakeOutcome};
use flash_sale_core::{ReservationId, ShowtimeId, Status, UserId};
use flash_sale_tests::{
    ClusterOptions, Isolation, Options, RedisCluster, TestApp, eventually,
    one_user_pressing_buy_twenty_times, reserve_all, seven_thousand_buyers_for_a_hundred_seats,
    tally, three_showtimes_sell_out_independently,
};
use futures::StreamExt as _;
use reqwest::StatusCode;

/// The binary's shared cluster, started by the first test that asks (off the runtime).
async fn shared() -> &'static RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::shared)
        .await
        .expect("starting the Redis Cluster")
}

/// A cluster of the test's own, to kill a master of: a node is failed after 1 s.
async fn own_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(|| {
        RedisCluster::start(ClusterOptions {
            node_timeout_ms: 1000,
            ..ClusterOptions::default()
        })
    })
    .await
    .expect("starting a Redis Cluster")
}

fn on(cluster: &RedisCluster, base: Options) -> Options {
    Options {
        redis_url: Some(cluster.url()),
        ..base
    }
}

/// Creates showtimes of `capacity` seats until one lives on each master, and returns
/// those three, each with its master's port (the others stay unused).
async fn one_showtime_per_master(
    app: &TestApp,
    cluster: &RedisCluster,
    capacity: u32,
) -> Vec<(i64, u16)> {
    let mut chosen: Vec<(i64, u16)> = vec![];
    for _ in 0..200 {
        let showtime = app.create_showtime(capacity).await;
        let master = cluster.master_of(&format!("{{{showtime}}}"));
        if chosen.iter().all(|(_, m)| *m != master) {
            chosen.push((showtime, master));
        }
        if chosen.len() == 3 {
            return chosen;
        }
    }
    panic!("200 showtimes did not land on three masters: {chosen:?}");
}

/// The showtime's stock lives on `master` itself (asked without following redirects).
fn stock_lives_on(cluster: &RedisCluster, master: u16, prefix: &str, showtime: i64) {
    assert_eq!(
        cluster
            .cli(
                master,
                &["EXISTS", &format!("{prefix}:{{{showtime}}}:seats")]
            )
            .as_deref(),
        Some("1"),
        "showtime {showtime}'s seats on master {master}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_references_scenarios_sell_exactly_with_showtimes_on_every_master() {
    let cluster = shared().await;
    let app = TestApp::spawn(on(cluster, Options::mock_payments())).await;
    let showtimes = one_showtime_per_master(&app, cluster, 50).await;
    let masters: BTreeSet<u16> = showtimes.iter().map(|(_, m)| *m).collect();
    assert_eq!(masters.len(), 3, "{showtimes:?}");

    seven_thousand_buyers_for_a_hundred_seats(&app).await;
    let ten = app.create_showtime(10).await;
    one_user_pressing_buy_twenty_times(&app, ten).await;
    let ids: Vec<i64> = showtimes.iter().map(|(s, _)| *s).collect();
    three_showtimes_sell_out_independently(&app, &ids).await;

    for (showtime, master) in &showtimes {
        stock_lives_on(cluster, *master, &app.iso.prefix, *showtime);
    }
    // reconcile walks every showtime, wherever it lives, and finds each consistent.
    let report = flash_sale_reconcile::run(&app.app, None, false, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.showtimes.len() >= 5, "{report:?}");
    app.finish().await;
}

/// The store's calls across showtimes on three masters: a batch of orders marked in one
/// call (one pipeline per showtime: a pipeline across slots is refused, as this test
/// shows first), the sweep's walk for overdue holds, and the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_across_showtimes_on_different_masters_work() {
    let cluster = shared().await;
    let iso = Isolation::new();
    let seats = RedisSeats::connect(&cluster.url(), &iso.prefix)
        .await
        .expect("the cluster client connects");
    let showtimes: Vec<ShowtimeId> =
        tokio::task::block_in_place(|| cluster.showtimes_on_every_master(1))
            .into_iter()
            .map(|s| ShowtimeId::new(s).unwrap())
            .collect();

    // A pipeline across two showtimes' slots is what the cluster refuses.
    let mut conn = seats.connection();
    let crossed: Result<Vec<i64>, _> = redis::pipe()
        .cmd("EXISTS")
        .arg(format!("{}:{{{}}}:seats", iso.prefix, showtimes[0]))
        .cmd("EXISTS")
        .arg(format!("{}:{{{}}}:seats", iso.prefix, showtimes[1]))
        .query_async(&mut conn)
        .await;
    assert!(crossed.is_err(), "a pipeline across slots: {crossed:?}");

    let mut paid = vec![];
    let mut held = vec![];
    for (i, showtime) in showtimes.iter().enumerate() {
        assert!(seats.load(*showtime, 5, 0, 1, false, 3).await.unwrap());
        let buyer = UserId::new(1 + i as i64).unwrap();
        let TakeOutcome::Reserved(r) = seats
            .take(*showtime, buyer, Duration::from_secs(600))
            .await
            .unwrap()
        else {
            panic!("a hold on showtime {showtime}");
        };
        assert!(matches!(
            seats.pay(r.id, buyer).await.unwrap(),
            PayOutcome::Paid { .. }
        ));
        paid.push((r.id, buyer));
        // A group's hold (2 seats) whose deadline is already past, for the sweep to find.
        let late = UserId::new(100 + i as i64).unwrap();
        let TakeOutcome::Reserved(r) = seats
            .take_seats(*showtime, late, 2, Duration::ZERO)
            .await
            .unwrap()
        else {
            panic!("a second hold on showtime {showtime}");
        };
        held.push(r.id);
    }

    assert_eq!(
        seats.mark_ordered(&paid).await.expect("one call marks all"),
        paid.len()
    );
    for (id, _) in &paid {
        let r = seats.reservation(*id).await.unwrap().unwrap();
        assert_eq!(r.status, Status::Ordered, "{id}");
    }
    let mut swept = seats.swept_showtimes().await.unwrap();
    swept.sort();
    let mut on_every_master = showtimes.clone();
    on_every_master.sort();
    assert_eq!(
        swept, on_every_master,
        "the sweep's registry has every showtime"
    );
    let mut overdue = vec![];
    for showtime in &swept {
        overdue.extend(
            seats
                .overdue_holds(*showtime, Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    overdue.sort_by_key(|id| id.to_string());
    held.sort_by_key(|id| id.to_string());
    assert_eq!(
        overdue, held,
        "the sweep finds the late holds on every master"
    );
    for showtime in &showtimes {
        let audit = seats.audit(*showtime).await.unwrap().unwrap();
        assert_eq!(
            (audit.counts.sold, audit.live_holds, audit.swept),
            (1, 2, true),
            "the group's hold counts its 2 seats"
        );
        assert!(audit.unrecorded.is_empty());
        // A rebuild declares every key it reads (the reservations' quantities too).
        let row = SeatRow {
            capacity: 5,
            max_per_user: 3,
            generation: 1,
        };
        let rebuilt = seats.rebuild(*showtime, row, 1, &[]).await.unwrap();
        assert_eq!((rebuilt.available, rebuilt.held, rebuilt.sold), (2, 2, 1));
    }
}

/// The fate of one answered reservation after the sale settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    Ordered,
    /// Its hold expired: the seat went back on sale.
    Returned,
    /// Paid, but PostgreSQL refused the order (Redis oversold after losing writes): the
    /// seat went back on sale, the payment is kept for a refund.
    Refused,
    Lost,
}

/// A master is killed (`kill -9`) in the middle of a sale over three showtimes, one per
/// master. Its replica takes over after the node timeout (1 s), the clients follow, and
/// the sale goes on; afterwards nothing is oversold (PostgreSQL would refuse it), nobody
/// holds two seats of a showtime, and every answered reservation ended as one order, one
/// returned seat, or a hold lost with the master's last writes, each counted by the
/// expiry that found nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_sale_fails_over_and_the_sale_goes_on_without_oversell() {
    let cluster = own_cluster().await;
    flash_sale_runtime::metrics::install();
    let lost_before = holds_lost();
    let app = TestApp::spawn(on(
        &cluster,
        Options {
            hold_secs: 4,
            sweep_interval_secs: 1,
            sweep_grace_secs: 1,
            ..Options::mock_payments()
        },
    ))
    .await;
    let capacity = 300;
    let showtimes = one_showtime_per_master(&app, &cluster, capacity).await;
    let (victim_showtime, victim) = showtimes[0];

    // 1,500 buyers per showtime, interleaved; the victim's master dies once 400 were
    // answered, well before any showtime sells out.
    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts: Vec<(i64, i64)> = (1..=1500)
        .flat_map(|user| showtimes.iter().map(move |(s, _)| (user, *s)))
        .collect();
    let crowd = {
        let app = &app;
        let answered = answered.clone();
        let killed = killed.clone();
        futures::stream::iter(attempts)
            .map(move |(user, showtime)| {
                let answered = answered.clone();
                let killed = killed.clone();
                async move {
                    let asked_after_kill = killed.load(Ordering::Relaxed);
                    let (status, body) = app.reserve(user, showtime).await;
                    answered.fetch_add(1, Ordering::Relaxed);
                    (showtime, status, body, asked_after_kill)
                }
            })
            .buffer_unordered(100)
            .collect::<Vec<_>>()
    };
    let killer = async {
        eventually(Duration::from_secs(60), "400 answers", || async {
            (answered.load(Ordering::Relaxed) >= 400).then_some(())
        })
        .await;
        let cluster = &cluster;
        tokio::task::block_in_place(|| cluster.kill(victim));
        killed.store(true, Ordering::Relaxed);
    };
    let (answers, ()) = tokio::join!(crowd, killer);
    tokio::task::block_in_place(|| cluster.wait_until_healthy(Duration::from_secs(30)));
    let promoted =
        tokio::task::block_in_place(|| cluster.master_of(&format!("{{{victim_showtime}}}")));
    assert_ne!(promoted, victim, "a replica took over the victim's slots");
    let held_after_kill = answers
        .iter()
        .filter(|(s, status, _, after)| {
            *s == victim_showtime && *status == StatusCode::OK && *after
        })
        .count();
    assert!(
        held_after_kill > 0,
        "the victim's showtime sold on after its master died"
    );

    // The sale goes on on the promoted replica: a second crowd sells every seat left.
    let second: Vec<(i64, i64)> = showtimes
        .iter()
        .flat_map(|(s, _)| (10_001..=10_400).map(move |user| (user, *s)))
        .collect();
    let later = reserve_all(&app, second).await;
    let later_tally = tally(&later);
    assert_eq!(
        later_tally.get(&(503, "unavailable".into())),
        None,
        "after the failover every answer is definite: {later_tally:?}"
    );

    // Everything settles: paid by the mock payer and recorded, or returned.
    let mut answered_ids: Vec<(i64, String)> = answers
        .iter()
        .filter(|(_, status, _, _)| *status == StatusCode::OK)
        .map(|(s, _, b, _)| (*s, b["reservation_id"].as_str().unwrap().to_string()))
        .collect();
    answered_ids.extend(
        later
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, b)| {
                (
                    b["showtime_id"].as_i64().unwrap(),
                    b["reservation_id"].as_str().unwrap().to_string(),
                )
            }),
    );
    let fates = eventually(
        Duration::from_secs(90),
        "every answered reservation to be ordered, returned or counted as lost",
        || async {
            let mut fates = HashMap::new();
            for (_, id) in &answered_ids {
                fates.insert(id.clone(), fate(&app, id).await?);
            }
            let lost = fates.values().filter(|f| **f == Fate::Lost).count();
            (holds_lost() - lost_before == lost as u64).then_some(fates)
        },
    )
    .await;

    for (showtime, _) in &showtimes {
        let (orders, buyers, sold): (i64, i64, i32) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT o.user_id), max(s.sold) \
             FROM orders o JOIN showtimes s ON s.id = o.showtime_id WHERE o.showtime_id = $1",
        )
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert!(
            orders <= i64::from(capacity),
            "showtime {showtime}: {orders} orders"
        );
        assert_eq!(orders, buyers, "showtime {showtime}: a buyer twice");
        assert_eq!(i64::from(sold), orders, "showtime {showtime}");
        let ordered = fates
            .iter()
            .filter(|(id, f)| **f == Fate::Ordered && id.starts_with(&format!("{showtime}-")))
            .count();
        assert_eq!(
            ordered as i64, orders,
            "showtime {showtime}: orders not answered"
        );
    }
    // Holds whose answers were lost in the failover (the client saw a 503) are given
    // back by the sweep: in the end every seat is sold once or on sale again.
    for (showtime, _) in &showtimes {
        eventually(
            Duration::from_secs(30),
            "every hold settled in Redis",
            || async {
                let (_, held, sold) = app.seats(*showtime).await;
                (held == 0 && sold == app.orders(*showtime).await).then_some(())
            },
        )
        .await;
    }
    let count = |fate: Fate| fates.values().filter(|f| **f == fate).count();
    eprintln!(
        "failover: {} answered holds ({held_after_kill} of the victim's asked after the kill): {} ordered, {} returned, {} refused, {} lost; first crowd {:?}",
        fates.len(),
        count(Fate::Ordered),
        count(Fate::Returned),
        count(Fate::Refused),
        count(Fate::Lost),
        tally(
            &answers
                .iter()
                .map(|(_, s, b, _)| (*s, b.clone()))
                .collect::<Vec<_>>()
        ),
    );
    app.finish().await;
}

/// `flashsale_holds_lost_total` in this process's metrics.
fn holds_lost() -> u64 {
    flash_sale_runtime::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix("flashsale_holds_lost_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Where an answered reservation ended, or `None` while it is still on its way: an
/// order in PostgreSQL, a seat returned (`EXPIRED`), or no reservation at all in Redis
/// (lost with a master's last writes).
async fn fate(app: &TestApp, id: &str) -> Option<Fate> {
    let ordered: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE reservation_id = $1)")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    if ordered {
        return Some(Fate::Ordered);
    }
    let id: ReservationId = id.parse().unwrap();
    match app.adapters.seats.reservation(id).await {
        Ok(None) => Some(Fate::Lost),
        Ok(Some(r)) if r.status == Status::Expired => Some(Fate::Returned),
        Ok(Some(r)) if r.status == Status::Refused => Some(Fate::Refused),
        _ => None,
    }
}

/// 100 requests in flight when a master dies: the redis crate's cluster connection then
/// stops answering altogether (every request timed out, on every master, for minutes
/// after the cluster healed, before the connection was watched); the watched connection
/// is replaced and every showtime answers again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_answers_again_soon_after_a_master_dies_under_load() {
    let cluster = own_cluster().await;
    let iso = Isolation::new();
    let seats = RedisSeats::connect(&cluster.url(), &iso.prefix)
        .await
        .unwrap();
    let showtimes: Vec<ShowtimeId> =
        tokio::task::block_in_place(|| cluster.showtimes_on_every_master(1))
            .into_iter()
            .map(|s| ShowtimeId::new(s).unwrap())
            .collect();
    for s in &showtimes {
        assert!(seats.load(*s, 5, 0, 1, false, 1).await.unwrap());
    }
    let victim =
        tokio::task::block_in_place(|| cluster.master_of(&format!("{{{}}}", showtimes[0])));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = vec![];
    for i in 0..100 {
        let seats = seats.clone();
        let showtime = showtimes[i % 3];
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = seats.counts(showtime).await;
            }
        }));
    }
    eventually(Duration::from_secs(10), "the load to run", || async {
        seats.counts(showtimes[1]).await.ok()
    })
    .await;
    let killed = std::time::Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim));

    // Every showtime answers again, the victim's from its promoted replica, while the
    // load goes on.
    eventually(
        Duration::from_secs(20),
        "every showtime to answer after the failover",
        || async {
            for s in &showtimes {
                seats.counts(*s).await.ok()?;
            }
            Some(())
        },
    )
    .await;
    eprintln!(
        "every showtime answered again {:?} after the kill",
        killed.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
}

/// A buyer's list of reservations spans showtimes on every master (the list is a key
/// of its own, read where it lives; each reservation is read where its showtime lives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyers_reservations_on_every_master_are_listed() {
    let cluster = shared().await;
    let app = TestApp::spawn(on(cluster, Options::default())).await;
    let showtimes = one_showtime_per_master(&app, cluster, 5).await;
    let mut made = vec![];
    for (showtime, _) in &showtimes {
        let (status, body) = app.reserve(7, *showtime).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        made.push(body["reservation_id"].as_str().unwrap().to_string());
    }
    let (status, page) = app.get("/me/reservations?user_id=7").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<&str> = page["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    made.reverse();
    assert_eq!(listed, made);
    app.finish().await;
}
