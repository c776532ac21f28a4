//! The adapters on their own, against real Redis, PostgreSQL and RabbitMQ: the Lua
//! scripts' rules, the database's last word, the broker's topology and its publishing.

mod idempotency;
mod room;

use std::collections::HashMap;
use std::time::Duration;

use flash_sale_adapters::{Broker, Postgres, Queue, RedisSeats, Topology};
use flash_sale_core::ports::{
    CancelOutcome, Catalog, ExpireOutcome, MessageBus, OrderAudit, OrderBook, OrderOutcome,
    PayOutcome, Refusal, RefusedSeats, ResizeOutcome, SeatAuditor, SeatRow, SeatStore, TakeOutcome,
};
use flash_sale_core::{
    Capacity, Expiry, MaxPerUser, NewShowtime, OrderRequest, PaymentRequest, Reservation,
    ReservationId, SeatCounts, ShowtimeId, Status, UnixMillis, UserId,
};
use flash_sale_tests::{Isolation, RedisServer, eventually};

fn user(n: i64) -> UserId {
    UserId::new(n).unwrap()
}

async fn seats(iso: &Isolation) -> RedisSeats {
    RedisSeats::connect("redis://127.0.0.1:6379", &iso.prefix)
        .await
        .unwrap()
}

async fn drop_keys(seats: &RedisSeats) {
    let mut conn = seats.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", seats.prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("UNLINK")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// An order row inserted by plain SQL, past the adapter: what the database itself
/// accepts or refuses.
async fn insert_by_sql(
    db: &Postgres,
    st: ShowtimeId,
    seq: u64,
    user: i64,
    quantity: i32,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (reservation_id, showtime_id, user_id, paid_at, quantity)
         VALUES ($1, $2, $3, now(), $4)",
    )
    .bind(format!("{st}-{seq}"))
    .bind(st.get())
    .bind(user)
    .bind(quantity)
    .execute(db.pool())
    .await
}

async fn database(iso: &Isolation) -> Postgres {
    let db = Postgres::connect(&iso.database_url()).await.unwrap();
    db.migrate().await.unwrap();
    db
}

async fn drop_database(db: Postgres, iso: &Isolation) {
    db.pool().close().await;
    flash_sale_tests::drop_database(&iso.database)
        .await
        .unwrap();
}

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The test's own exchanges and queues, for a 900 s hold.
fn topology(iso: &Isolation) -> Topology {
    Topology {
        prefix: iso.prefix.clone(),
        hold: Duration::from_secs(900),
        delivery_limit: 3,
    }
}

/// A broker as the local process has it: hold messages are handed over.
async fn handing_over(topology: &Topology) -> Broker {
    Broker::connect(AMQP_URL, topology.clone())
        .await
        .unwrap()
        .hand_over_hold_messages(true)
}

fn showtime(n: i64) -> ShowtimeId {
    ShowtimeId::new(n).unwrap()
}

const HOLD: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_reserve_script_refuses_a_second_hold_and_an_empty_showtime() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(1);
    assert_eq!(
        s.take(st, user(1), HOLD).await.unwrap(),
        TakeOutcome::UnknownShowtime
    );
    assert!(s.load(st, 1, 0, 1, false, 1).await.unwrap());
    let TakeOutcome::Reserved(r) = s.take(st, user(1), HOLD).await.unwrap() else {
        panic!("expected a reservation")
    };
    // Ids name their showtime, and their number never falls behind Redis's clock in
    // microseconds (a Redis rolled back to an older snapshot cannot hand one out again).
    assert_eq!(r.id.showtime(), st);
    let mut conn = s.connection();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    assert!(r.id.seq() <= secs * 1_000_000 + micros);
    assert!(r.id.seq() >= (secs - 60) * 1_000_000, "{}", r.id);
    assert_eq!(r.status, Status::Reserved);
    assert_eq!(
        s.take(st, user(1), HOLD).await.unwrap(),
        TakeOutcome::AlreadyHolds(r.id, Some(Status::Reserved))
    );
    assert_eq!(
        s.take(st, user(2), HOLD).await.unwrap(),
        TakeOutcome::SoldOut
    );
    assert_eq!(
        s.counts(st).await.unwrap(),
        Some(SeatCounts {
            capacity: 1,
            available: 0,
            held: 1,
            sold: 0
        })
    );
    drop_keys(&s).await;
}

/// 700 holds at once over three showtimes, pipelined on one connection: every caller
/// gets its own answer, as the calls one after another would have answered in some
/// order (one hold per user, no seat past capacity, each repeat finds its hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_that_arrive_together_each_get_their_own_answer() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let (hot, other, unknown) = (showtime(1), showtime(2), showtime(3));
    assert!(s.load(hot, 100, 0, 1, false, 2).await.unwrap());
    assert!(s.load(other, 30, 0, 1, false, 1).await.unwrap());
    // 700 holds at once, more than one group takes: users 1..=200 ask the hot showtime
    // once, users 1..=50 a second time, user 1000 three seats (more than it allows),
    // users 1..=200 the other showtime and 200 users a showtime that is not loaded.
    let mut asks = vec![];
    for u in 1..=200_i64 {
        asks.push((hot, u, 1));
        asks.push((other, u, 1));
        asks.push((unknown, u, 1));
        if u <= 50 {
            asks.push((hot, u, 1));
        }
        if u == 100 {
            asks.push((hot, 1000, 3));
        }
    }
    let answers = futures::future::join_all(
        asks.iter()
            .map(|&(st, u, q)| s.take_seats(st, user(u), q, HOLD)),
    )
    .await;
    // Each user's answers of one showtime, in the order asked.
    let mut answered: HashMap<(ShowtimeId, i64, u32), Vec<TakeOutcome>> = HashMap::new();
    for (&(st, u, q), answer) in asks.iter().zip(answers) {
        answered
            .entry((st, u, q))
            .or_default()
            .push(answer.unwrap());
    }
    let mut holders: HashMap<ShowtimeId, Vec<ReservationId>> = HashMap::new();
    for ((st, u, q), outcomes) in answered {
        let what = format!("user {u} asking {q} of showtime {st}: {outcomes:?}");
        if st == unknown {
            assert!(
                outcomes.iter().all(|o| *o == TakeOutcome::UnknownShowtime),
                "{what}"
            );
        } else if q == 3 {
            assert_eq!(
                outcomes,
                [TakeOutcome::TooManySeats { max_per_user: 2 }],
                "{what}"
            );
        } else if outcomes.iter().all(|o| *o == TakeOutcome::SoldOut) {
        } else {
            // One hold, and each other ask of the same user finds that hold.
            let held: Vec<&Reservation> = outcomes
                .iter()
                .filter_map(|o| match o {
                    TakeOutcome::Reserved(r) => Some(r),
                    _ => None,
                })
                .collect();
            assert_eq!(held.len(), 1, "{what}");
            let r = held[0];
            assert_eq!((r.user, r.quantity, r.id.showtime()), (user(u), 1, st));
            assert!(
                outcomes
                    .iter()
                    .all(|o| o == &TakeOutcome::Reserved(r.clone())
                        || *o == TakeOutcome::AlreadyHolds(r.id, Some(Status::Reserved))),
                "{what}"
            );
            holders.entry(st).or_default().push(r.id);
        }
    }
    for (st, capacity) in [(hot, 100), (other, 30)] {
        let mut ids = holders.remove(&st).unwrap_or_default();
        assert_eq!(ids.len(), capacity, "holders of showtime {st}");
        ids.sort_by_key(|id| id.seq());
        ids.dedup();
        assert_eq!(
            ids.len(),
            capacity,
            "distinct reservation ids of showtime {st}"
        );
    }
    for (st, capacity) in [(hot, 100), (other, 30)] {
        assert_eq!(
            s.counts(st).await.unwrap(),
            Some(SeatCounts {
                capacity,
                available: 0,
                held: capacity,
                sold: 0
            })
        );
        assert_eq!(s.audit(st).await.unwrap().unwrap().live_holds, capacity);
    }
    assert_eq!(s.counts(unknown).await.unwrap(), None);
    drop_keys(&s).await;
}

/// 351 payments at once, each answered its own: the owner's first payment pays, a
/// second finds it paid, another user's is refused, an unknown reservation is not
/// found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_that_arrive_together_each_get_their_own_answer() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(1);
    assert!(s.load(st, 200, 0, 1, false, 1).await.unwrap());
    let holds = futures::future::join_all((1..=200).map(|u| s.take(st, user(u), HOLD))).await;
    let ids: Vec<ReservationId> = holds
        .into_iter()
        .map(|h| match h.unwrap() {
            TakeOutcome::Reserved(r) => r.id,
            other => panic!("{other:?}"),
        })
        .collect();
    // Every owner pays; users 1..=50 pay twice; user 1000 pays the first 50 holds; and
    // a reservation that does not exist.
    let mut asks = vec![];
    for (i, &id) in ids.iter().enumerate() {
        let owner = i as i64 + 1;
        asks.push((id, owner));
        if owner <= 50 {
            asks.push((id, 1000));
            asks.push((id, owner));
        }
    }
    let missing = ReservationId::new(st, ids[199].seq() + 1_000_000).unwrap();
    asks.push((missing, 1));
    let answers = futures::future::join_all(asks.iter().map(|&(id, u)| s.pay(id, user(u)))).await;
    // Each (reservation, payer)'s answers: the owner's two payments of one hold may run
    // in either order, one pays and the other finds it paid.
    let mut answered: HashMap<(ReservationId, i64), Vec<PayOutcome>> = HashMap::new();
    for (&(id, u), answer) in asks.iter().zip(answers) {
        answered.entry((id, u)).or_default().push(answer.unwrap());
    }
    for ((id, u), mut outcomes) in answered {
        let what = format!("user {u} paying {id}: {outcomes:?}");
        if id == missing {
            assert_eq!(outcomes, [PayOutcome::NotFound], "{what}");
        } else if u == 1000 {
            assert_eq!(outcomes, [PayOutcome::NotOwner], "{what}");
        } else {
            let paid = outcomes
                .iter()
                .position(|o| matches!(o, PayOutcome::Paid { quantity: 1, .. }))
                .unwrap_or_else(|| panic!("{what}"));
            outcomes.remove(paid);
            let again = if u <= 50 { 1 } else { 0 };
            assert_eq!(
                outcomes,
                vec![PayOutcome::AlreadyPaid(Status::Paid); again],
                "{what}"
            );
        }
    }
    assert_eq!(
        s.counts(st).await.unwrap(),
        Some(SeatCounts {
            capacity: 200,
            available: 0,
            held: 0,
            sold: 200
        })
    );
    assert_eq!(
        s.unrecorded_payments(st, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        200
    );
    drop_keys(&s).await;
}

#[tokio::test]
async fn loading_a_showtime_again_never_resets_live_stock() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(3);
    assert!(s.load(st, 5, 0, 1, false, 1).await.unwrap());
    s.take(st, user(1), HOLD).await.unwrap();
    assert!(!s.load(st, 5, 0, 1, false, 1).await.unwrap());
    assert_eq!(s.counts(st).await.unwrap().unwrap().available, 4);
    drop_keys(&s).await;
}

/// `u`'s hold of one seat of `st`, paid.
async fn held_and_paid(s: &RedisSeats, st: ShowtimeId, u: i64) -> Reservation {
    let TakeOutcome::Reserved(r) = s.take_seats(st, user(u), 1, HOLD).await.unwrap() else {
        panic!("a seat is free for user {u}")
    };
    assert!(matches!(
        s.pay(r.id, user(u)).await.unwrap(),
        PayOutcome::Paid { .. }
    ));
    r
}

#[tokio::test]
async fn a_refused_order_replayed_after_its_seat_sold_again_leaves_counts_that_still_read() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(4);
    assert!(s.load(st, 1, 0, 1, false, 1).await.unwrap());
    // The one seat is paid, its order refused by the database: the seat is on sale again.
    let first = held_and_paid(&s, st, 1).await;
    assert_eq!(
        s.mark_refused(&[first.id], RefusedSeats::BackOnSale)
            .await
            .unwrap(),
        vec![first.id]
    );
    held_and_paid(&s, st, 2).await;
    // A person fixed the refusal's cause and replayed the first order, which the
    // database took: Redis counts two seats sold of one.
    s.mark_ordered(&[(first.id, user(1))]).await.unwrap();
    let counts = s.counts(st).await.unwrap().expect("the counts still read");
    assert_eq!((counts.available, counts.held, counts.sold), (0, 0, 2));
    assert!(!counts.balanced(), "{counts:?}");
    let audit = s.audit(st).await.unwrap().expect("the audit still reads");
    assert_eq!(audit.counts, counts);
    drop_keys(&s).await;
}

/// On a single Redis the take lists the hold in its user's list in the same script call
/// (one round trip per hold instead of two): the list has it before `list_for_user`,
/// which then adds nothing, and a take that holds nothing lists nothing.
#[tokio::test]
async fn a_hold_is_in_its_users_list_from_the_take_on() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let (a, b) = (showtime(6), showtime(7));
    assert!(s.load(a, 1, 0, 1, false, 1).await.unwrap());
    assert!(s.load(b, 1, 0, 1, false, 1).await.unwrap());
    let TakeOutcome::Reserved(first) = s.take(a, user(1), HOLD).await.unwrap() else {
        panic!("a seat is free")
    };
    let TakeOutcome::Reserved(second) = s.take(b, user(1), HOLD).await.unwrap() else {
        panic!("a seat is free")
    };
    // Sold out and already holding: nothing more listed.
    assert_eq!(
        s.take(a, user(2), HOLD).await.unwrap(),
        TakeOutcome::SoldOut
    );
    assert!(matches!(
        s.take(a, user(1), HOLD).await.unwrap(),
        TakeOutcome::AlreadyHolds(..)
    ));
    let listed = |u| {
        let s = &s;
        async move {
            s.user_reservations(user(u), None, 10)
                .await
                .unwrap()
                .reservations
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(1).await, vec![second.id, first.id], "newest first");
    assert_eq!(listed(2).await, vec![]);
    s.list_for_user(&first).await.unwrap();
    assert_eq!(listed(1).await, vec![second.id, first.id]);
    drop_keys(&s).await;
}

/// After Redis lost its last writes, the hold of an order the database recorded can read
/// RESERVED (its payment lost) or EXPIRED (the expiry ran before the order landed).
/// Before, marking the order left both alone: the RESERVED hold was then expired and its
/// seat, sold in the database, went on sale again (a stranger's payment then refused,
/// and so on); the EXPIRED one stayed on sale. The database has the last word: both are
/// now ORDERED, their seats sold, their buyers unable to hold again.
#[tokio::test]
async fn an_order_on_record_is_a_sale_even_where_redis_lost_its_payment() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(5);
    assert!(s.load(st, 3, 0, 1, false, 1).await.unwrap());
    // Two holds whose payments Redis lost; the second's expiry ran before its order.
    let TakeOutcome::Reserved(lost) = s.take(st, user(1), HOLD).await.unwrap() else {
        panic!("a seat is free")
    };
    let TakeOutcome::Reserved(expired) = s.take(st, user(2), HOLD).await.unwrap() else {
        panic!("a seat is free")
    };
    assert_eq!(
        s.expire(expired.id).await.unwrap(),
        ExpireOutcome::SeatReturned
    );
    let c = s.counts(st).await.unwrap().unwrap();
    assert_eq!((c.available, c.held, c.sold), (2, 1, 0));

    // Another user's order under the first hold's id (one handed out twice) is not it.
    assert_eq!(s.mark_ordered(&[(lost.id, user(9))]).await.unwrap(), 0);
    let c = s.counts(st).await.unwrap().unwrap();
    assert_eq!((c.available, c.held, c.sold), (2, 1, 0), "nothing marked");
    assert_eq!(
        s.mark_ordered(&[(lost.id, user(1)), (expired.id, user(2))])
            .await
            .unwrap(),
        2
    );
    let c = s.counts(st).await.unwrap().unwrap();
    assert_eq!((c.available, c.held, c.sold), (1, 0, 2), "both sold");
    for r in [&lost, &expired] {
        let now = s.reservation(r.id).await.unwrap().expect("on record");
        assert_eq!(now.status, Status::Ordered);
        assert_eq!(
            s.expire(r.id).await.unwrap(),
            ExpireOutcome::AlreadySettled(Status::Ordered),
            "no expiry gives an ordered seat back"
        );
    }
    // The sweep's list of deadlines no longer has the ordered hold.
    let mut conn = s.connection();
    let deadline: Option<f64> = redis::cmd("ZSCORE")
        .arg(format!("{}:{{5}}:deadlines", iso.prefix))
        .arg(lost.id.seq())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(deadline, None);
    // Neither buyer holds a second seat; the last seat still sells to someone else.
    for u in [1, 2] {
        assert!(matches!(
            s.take(st, user(u), HOLD).await.unwrap(),
            TakeOutcome::AlreadyHolds(..)
        ));
    }
    assert!(matches!(
        s.take(st, user(3), HOLD).await.unwrap(),
        TakeOutcome::Reserved(_)
    ));
    drop_keys(&s).await;
}

#[tokio::test]
async fn the_pay_script_expires_a_hold_whose_deadline_passed_and_returns_its_seat() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(1);
    s.load(st, 1, 0, 1, false, 1).await.unwrap();
    let TakeOutcome::Reserved(r) = s.take(st, user(1), Duration::from_millis(1)).await.unwrap()
    else {
        panic!("expected a reservation")
    };
    // Wait on Redis's own clock until the deadline has passed.
    let mut conn = s.connection();
    eventually(Duration::from_secs(5), "the deadline to pass", || {
        let mut conn = conn.clone();
        async move {
            let (secs, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            (secs * 1000 + micros / 1000 > r.expires_at.0).then_some(())
        }
    })
    .await;
    assert_eq!(s.pay(r.id, user(2)).await.unwrap(), PayOutcome::NotOwner);
    assert_eq!(s.pay(r.id, user(1)).await.unwrap(), PayOutcome::Expired);
    assert_eq!(s.counts(st).await.unwrap().unwrap().available, 1);
    assert_eq!(
        s.expire(r.id).await.unwrap(),
        ExpireOutcome::AlreadySettled(Status::Expired)
    );
    assert_eq!(
        s.counts(st).await.unwrap().unwrap().available,
        1,
        "returned exactly once"
    );
    // The user may try again.
    assert!(matches!(
        s.take(st, user(1), HOLD).await.unwrap(),
        TakeOutcome::Reserved(_)
    ));
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    drop_keys(&s).await;
}

#[tokio::test]
async fn paid_reservations_wait_in_the_unrecorded_set_until_marked_ordered() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(2);
    s.load(st, 2, 0, 1, false, 1).await.unwrap();
    let TakeOutcome::Reserved(r) = s.take(st, user(1), HOLD).await.unwrap() else {
        panic!()
    };
    let PayOutcome::Paid { paid_at, .. } = s.pay(r.id, user(1)).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        s.pay(r.id, user(1)).await.unwrap(),
        PayOutcome::AlreadyPaid(Status::Paid)
    );
    let pending = s.unrecorded_payments(st, Duration::ZERO).await.unwrap();
    assert_eq!(
        pending,
        vec![OrderRequest {
            reservation: r.id,
            user: user(1),
            paid_at,
            quantity: 1,
        }]
    );
    assert_eq!(s.mark_ordered(&[(r.id, user(1))]).await.unwrap(), 1);
    assert_eq!(s.mark_ordered(&[(r.id, user(1))]).await.unwrap(), 0);
    assert!(
        s.unrecorded_payments(st, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.reservation(r.id).await.unwrap().unwrap().status,
        Status::Ordered
    );
    assert!(
        s.overdue_holds(st, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    drop_keys(&s).await;
}

#[tokio::test]
async fn scripts_are_reloaded_after_redis_forgets_them() {
    let iso = Isolation::new();
    // On a Redis of its own: SCRIPT FLUSH empties the whole server's script cache, and on
    // the shared one it could do so between another test's reload and its retry.
    let redis = RedisServer::start(&[]);
    let s = RedisSeats::connect(&redis.url(), &iso.prefix)
        .await
        .unwrap();
    let st = showtime(1);
    s.load(st, 3, 0, 1, false, 1).await.unwrap();
    let TakeOutcome::Reserved(first) = s.take(st, user(1), HOLD).await.unwrap() else {
        panic!("expected a reservation")
    };
    // SCRIPT FLUSH is what a Redis restart does to the script cache: EVALSHA then
    // answers NOSCRIPT and the adapter must fall back to loading the script.
    let mut conn = s.connection();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        s.take(st, user(2), HOLD).await.unwrap(),
        TakeOutcome::Reserved(_)
    ));
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let id = first.id;
    s.pay(id, user(1)).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    s.mark_ordered(&[(id, user(1))]).await.unwrap();
    assert_eq!(
        s.reservation(id).await.unwrap().unwrap().status,
        Status::Ordered
    );
}

fn order(st: ShowtimeId, seq: u64, u: i64) -> OrderRequest {
    OrderRequest {
        reservation: ReservationId::new(st, seq).unwrap(),
        user: user(u),
        paid_at: UnixMillis(1_764_000_000_000),
        quantity: 1,
    }
}

/// A showtime of `capacity` seats, always on sale, in the catalog only.
async fn showtime_in(db: &Postgres, capacity: i64) -> ShowtimeId {
    db.create_showtime(NewShowtime::always_on_sale(
        Capacity::new(capacity).unwrap(),
    ))
    .await
    .unwrap()
    .id
}

#[tokio::test]
async fn an_order_under_an_id_another_users_row_holds_is_refused_and_kept_once() {
    let iso = Isolation::new();
    let db = database(&iso).await;
    let st = showtime_in(&db, 5).await;
    let mine = order(st, 1, 1);
    assert_eq!(
        db.record_orders(&[mine]).await.unwrap(),
        [OrderOutcome::Inserted]
    );
    // The same reservation id, paid by someone else: a seat store that handed it out
    // twice. Never a duplicate of the first row; within one batch, both copies agree.
    let theirs = OrderRequest {
        user: UserId::new(2).unwrap(),
        ..mine
    };
    let outcomes = db.record_orders(&[theirs, theirs, mine]).await.unwrap();
    assert!(
        matches!(&outcomes[0], OrderOutcome::Refused(Refusal::Other(why)) if why.contains("another user")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], outcomes[0]);
    assert_eq!(outcomes[2], OrderOutcome::Duplicate);
    let why = "recorded for another user".to_string();
    assert_eq!(
        db.record_refusals(&[(theirs, why.clone())]).await.unwrap(),
        [theirs.reservation]
    );
    assert!(
        db.record_refusals(&[(theirs, why)])
            .await
            .unwrap()
            .is_empty(),
        "kept once"
    );
    assert_eq!(
        db.unresolved_refusals(st).await.unwrap(),
        [theirs.reservation]
    );
    drop_database(db, &iso).await;
}

#[tokio::test]
async fn the_database_records_each_order_once_and_never_past_capacity() {
    let iso = Isolation::new();
    let db = database(&iso).await;
    let st = showtime_in(&db, 2).await;
    let a = order(st, 1, 1);
    let b = order(st, 2, 2);
    let outcomes = db.record_orders(&[a, a, b]).await.unwrap();
    assert_eq!(
        outcomes,
        vec![
            OrderOutcome::Inserted,
            OrderOutcome::Duplicate,
            OrderOutcome::Inserted
        ]
    );
    assert_eq!(
        db.record_orders(&[b]).await.unwrap(),
        vec![OrderOutcome::Duplicate]
    );

    // A third seat does not exist: the database refuses it whatever Redis said, and a
    // second order of one user under another reservation is refused too; a good order
    // in the same batch is not held back by them.
    let st2 = showtime_in(&db, 5).await;
    let over = order(st, 3, 3);
    let twice = order(st2, 2, 7);
    let fine = order(st2, 1, 7);
    let outcomes = db.record_orders(&[fine, over, twice]).await.unwrap();
    assert_eq!(outcomes[0], OrderOutcome::Inserted);
    assert!(
        matches!(
            &outcomes[1],
            OrderOutcome::Refused(Refusal::SoldOutInDatabase)
        ),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], OrderOutcome::Refused(Refusal::Other(why)) if why.contains("already has an order")),
        "{outcomes:?}"
    );

    let sold = db.showtime(st).await.unwrap().unwrap().ordered;
    assert_eq!(sold, 2);
    assert_eq!(db.showtime(st2).await.unwrap().unwrap().ordered, 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(rows, 3);
    drop_database(db, &iso).await;
}

/// The stock trusts the row capacity it remembers only while its capacity is the one
/// that was written with it: a process of an older version (during a rolling deploy)
/// moves the capacity with its own script, which knows nothing of it, and a change made
/// after must then move the stock by the row's difference, as before. Trusting the
/// stale memory, 2 + 3 seats and one more became 9 for a row of 6.
#[tokio::test]
async fn a_seat_change_trusts_the_row_capacity_it_remembers_only_while_the_stock_is_its_own() {
    let iso = Isolation::new();
    let seats = seats(&iso).await;
    let st = ShowtimeId::new(1).unwrap();
    assert!(seats.load(st, 2, 0, 1, false, 1).await.unwrap());
    // An older process adds 3 seats (the old resize.lua: by a difference, nothing else).
    let key = format!("{}:{{{st}}}:seats", seats.prefix());
    let mut conn = seats.connection();
    let _: () = redis::pipe()
        .cmd("HINCRBY")
        .arg(&key)
        .arg("capacity")
        .arg(3)
        .ignore()
        .cmd("HINCRBY")
        .arg(&key)
        .arg("available")
        .arg(3)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let ResizeOutcome::Resized(c) = seats.resize(st, 5, 6).await.unwrap() else {
        panic!("resized")
    };
    assert_eq!((c.capacity, c.available), (6, 6));
    // Its own again: a retry moves nothing, an undo of the last change moves it back.
    let ResizeOutcome::Resized(c) = seats.resize(st, 5, 6).await.unwrap() else {
        panic!("resized")
    };
    assert_eq!(c.capacity, 6);
    seats.undo_resize(st, 5, 6).await.unwrap();
    assert_eq!(seats.counts(st).await.unwrap().unwrap().capacity, 5);
    drop_keys(&seats).await;
}

#[tokio::test]
async fn migrations_run_twice_and_concurrently_without_harm() {
    let iso = Isolation::new();
    let db = database(&iso).await;
    let (a, b) = tokio::join!(db.migrate(), db.migrate());
    a.unwrap();
    b.unwrap();
    drop_database(db, &iso).await;
}

#[tokio::test]
async fn the_topology_is_declared_idempotently_and_dead_letters_are_kept() {
    let iso = Isolation::new();
    let topology = topology(&iso);
    let broker = Broker::connect(AMQP_URL, topology.clone()).await.unwrap();
    // A second process starting declares the same topology without error.
    let again = Broker::connect(AMQP_URL, topology.clone()).await.unwrap();
    assert_eq!(
        broker.topology().delay_queue(),
        format!("{}.expiries.delay.900s", iso.prefix)
    );

    again
        .dead_letter(Queue::Orders, b"poison".to_vec(), "test")
        .await
        .unwrap();
    let dlq = topology.dead_letter_queue(Queue::Orders);
    eventually(Duration::from_secs(10), "the dead letter", || async {
        (broker.ready_count(&dlq).await.unwrap() == 1).then_some(())
    })
    .await;

    // A different hold time gets its own delay queue instead of a PRECONDITION_FAILED.
    let longer = Topology {
        hold: Duration::from_secs(1200),
        ..topology.clone()
    };
    let other = Broker::connect(AMQP_URL, longer).await.unwrap();
    other.delete_topology().await.unwrap();
    broker.delete_topology().await.unwrap();
}

/// Holds published at the same time leave together: fewer messages than holds, and
/// every hold in exactly one of them, confirmed by the time a flush returns.
#[tokio::test]
async fn concurrent_holds_are_published_in_batches_each_hold_exactly_once() {
    let iso = Isolation::new();
    let topology = topology(&iso);
    let broker = handing_over(&topology).await;
    let ids: Vec<ReservationId> = (1..=300)
        .map(|seq| ReservationId::new(showtime(7), seq).unwrap())
        .collect();
    futures::future::try_join_all(ids.iter().map(|&id| {
        broker.publish_hold(
            Expiry { reservation: id },
            Some(PaymentRequest {
                reservation: id,
                user: user(id.seq() as i64),
            }),
        )
    }))
    .await
    .unwrap();

    let ch = broker.channel().await.unwrap();
    let drain = |queue: String| {
        let ch = ch.clone();
        async move {
            let mut bodies = vec![];
            while let Some(m) = ch
                .basic_get(queue.as_str().into(), Default::default())
                .await
                .unwrap()
            {
                bodies.push(m.delivery.data);
            }
            bodies
        }
    };
    // Handed over: some may still be on their way; a flush waits for their confirms.
    assert_eq!(broker.flush(Duration::from_secs(10)).await, 0);
    let expiries = drain(topology.delay_queue()).await;
    let payments = drain(topology.queue(Queue::Payments)).await;
    let mut seen: HashMap<ReservationId, usize> = HashMap::new();
    for body in &expiries {
        for hold in flash_sale_adapters::wire::decode_expiries(body).unwrap() {
            *seen.entry(hold.message.reservation).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), ids.len());
    let mut paid: Vec<PaymentRequest> = payments
        .iter()
        .flat_map(|body| flash_sale_adapters::wire::decode_payments(body).unwrap())
        .map(|p| p.message)
        .collect();
    assert!(
        expiries.len() < ids.len() && payments.len() < ids.len(),
        "{} expiry and {} payment messages for {} holds: not batched",
        expiries.len(),
        payments.len(),
        ids.len()
    );
    assert!(seen.values().all(|&n| n == 1), "a hold published twice");
    paid.sort_by_key(|p| p.reservation.seq());
    assert_eq!(
        paid.iter().map(|p| p.reservation).collect::<Vec<_>>(),
        ids,
        "each payment request exactly once"
    );
    assert!(
        paid.iter()
            .all(|p| p.user.get() == p.reservation.seq() as i64)
    );
    broker.delete_topology().await.unwrap();
}

/// Handed-over holds that trickle in wait for company: twenty holds handed over one at
/// a time leave as one message while the batch lingers, each hold in it exactly once.
#[tokio::test]
async fn a_trickle_of_handed_over_holds_leaves_together_while_the_batch_lingers() {
    let iso = Isolation::new();
    let topology = topology(&iso);
    let broker = handing_over(&topology).await.linger(Duration::from_secs(2));
    let hold = |seq: u64| Expiry {
        reservation: ReservationId::new(showtime(7), seq).unwrap(),
    };
    // The first waits for its confirm (nothing was confirmed before it), so it leaves
    // alone and at once; the rest are handed over one at a time: after each, the test
    // yields, so the publisher (on this test's one runtime thread) takes that hold
    // before the next is handed over. Without a linger the first of them would leave
    // alone too.
    broker.publish_hold(hold(1), None).await.unwrap();
    for seq in 2..=21 {
        broker.publish_hold(hold(seq), None).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(broker.flush(Duration::from_secs(10)).await, 0);

    let ch = broker.channel().await.unwrap();
    let mut batches = vec![];
    while let Some(m) = ch
        .basic_get(topology.delay_queue().as_str().into(), Default::default())
        .await
        .unwrap()
    {
        let entries = flash_sale_adapters::wire::decode_expiries(&m.delivery.data).unwrap();
        batches.push(
            entries
                .into_iter()
                .map(|e| e.message.reservation.seq())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        batches,
        vec![vec![1], (2..=21).collect::<Vec<_>>()],
        "the trickle did not leave as one batch"
    );
    broker.delete_topology().await.unwrap();
}

/// A lingering batch never holds up a sender that waits for its confirm: past the
/// hand-over limit a hold waits, and its message ends the linger at once.
#[tokio::test]
async fn a_sender_that_waits_for_its_confirm_ends_the_linger() {
    let iso = Isolation::new();
    let topology = topology(&iso);
    let broker = handing_over(&topology)
        .await
        .hand_over_at_most(1)
        .linger(Duration::from_secs(60));
    let hold = |seq: u64| Expiry {
        reservation: ReservationId::new(showtime(7), seq).unwrap(),
    };
    broker.publish_hold(hold(1), None).await.unwrap();
    // Handed over: it lingers, waiting for company, for up to a minute.
    broker.publish_hold(hold(2), None).await.unwrap();
    // One is outstanding, the limit: this one waits for its confirm, and gets it long
    // before the minute is up.
    tokio::time::timeout(Duration::from_secs(10), broker.publish_hold(hold(3), None))
        .await
        .expect("a waiting sender was held up by the linger")
        .unwrap();
    assert_eq!(broker.flush(Duration::from_secs(10)).await, 0);
    broker.delete_topology().await.unwrap();
}

/// While the broker confirms, a hold's messages are handed over: the publish returns
/// before the confirm (the sweep covers their loss). A batch that fails makes the next
/// publishes wait for their own confirm again, so the outage reaches a caller, and the
/// first confirm after it ends the waiting. A broker without hand-over (the Lambda
/// host's) waits every time.
#[tokio::test]
async fn hold_messages_are_handed_over_while_the_broker_confirms_and_awaited_after_a_failure() {
    let iso = Isolation::new();
    let topology = topology(&iso);
    let broker = handing_over(&topology).await;
    let waiting = Broker::connect(AMQP_URL, topology.clone()).await.unwrap();
    let hold = |seq: u64| Expiry {
        reservation: ReservationId::new(showtime(7), seq).unwrap(),
    };
    // The first expiry waits for its confirm: nothing was confirmed before it.
    broker.publish_hold(hold(1), None).await.unwrap();
    waiting.publish_hold(hold(2), None).await.unwrap();

    // Without the delay queue, every expiry is returned unroutable: its batch fails. A
    // returned expiry declares the queue again, so it is deleted before each publish.
    let ch = broker.channel().await.unwrap();
    let delete_delay_queue = || async {
        ch.queue_delete(topology.delay_queue().as_str().into(), Default::default())
            .await
            .unwrap();
    };
    delete_delay_queue().await;
    broker
        .publish_hold(hold(3), None)
        .await
        .expect("handed over: the broker was confirming, so this returns before its confirm");
    // Without hand-over, the same publish waits for its confirm and learns of the
    // failure itself, although that broker's last batch was confirmed too.
    waiting.publish_hold(hold(200), None).await.unwrap_err();
    let mut seq = 10;
    let refused = eventually(Duration::from_secs(10), "a publish to fail", || {
        seq += 1;
        let publish = broker.publish_hold(hold(seq), None);
        async move {
            delete_delay_queue().await;
            publish.await.err()
        }
    })
    .await;
    assert!(refused.to_string().contains("unroutable"), "{refused}");

    // Once the broker is whole again, the next publish waits for its confirm and
    // succeeds, and the handed-over expiry of the failed batch is retried until it is
    // in its queue. The one whose publisher learnt of the failure is not (its caller
    // gave the seat back).
    broker.declare_topology().await.unwrap();
    broker.publish_hold(hold(100), None).await.unwrap();
    let mut queued = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(queued.contains(&3) && queued.contains(&100)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the retried expiry never arrived: {queued:?}"
        );
        match ch
            .basic_get(topology.delay_queue().as_str().into(), Default::default())
            .await
            .unwrap()
        {
            Some(m) => queued.extend(
                flash_sale_adapters::wire::decode_expiries(&m.delivery.data)
                    .unwrap()
                    .iter()
                    .map(|e| e.message.reservation.seq()),
            ),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(!queued.contains(&200), "{queued:?}");
    broker.delete_topology().await.unwrap();
}

/// Layout 1 (one hash per reservation, `<prefix>:{7}:r:<seq>`, before Redis Cluster
/// support) with a live hold: a process of this build refuses to start rather than
/// orphan it. Once that sale is over the store starts and records layout 2; a layout it
/// does not know is refused too.
#[tokio::test]
async fn redis_data_in_an_earlier_key_layout_with_a_live_sale_is_refused() {
    let iso = Isolation::new();
    let p = &iso.prefix;
    let mut raw = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(format!("{p}:showtimes"))
        .arg(7)
        .cmd("HSET")
        .arg(format!("{p}:{{7}}:seats"))
        .arg(&[("capacity", 2), ("available", 1), ("held", 1), ("sold", 0)])
        .cmd("SET")
        .arg(format!("{p}:{{7}}:seq"))
        .arg(3)
        .cmd("HSET")
        .arg(format!("{p}:{{7}}:r:3"))
        .arg(&[("user", "1"), ("status", "RESERVED"), ("expires_at", "1")])
        .cmd("ZADD")
        .arg(format!("{p}:{{7}}:deadlines"))
        .arg(1)
        .arg(3)
        .query_async(&mut raw)
        .await
        .unwrap();

    let refused = RedisSeats::connect("redis://127.0.0.1:6379", p)
        .await
        .expect_err("a live layout-1 sale");
    assert!(
        refused.message.contains("not supported") && refused.message.contains("showtime(s) 7"),
        "{refused:?}"
    );
    assert!(!refused.transient);

    // The sale ends on the earlier version: its hold expires.
    let _: () = redis::pipe()
        .cmd("ZREM")
        .arg(format!("{p}:{{7}}:deadlines"))
        .arg(3)
        .cmd("HSET")
        .arg(format!("{p}:{{7}}:r:3"))
        .arg("status")
        .arg("EXPIRED")
        .query_async(&mut raw)
        .await
        .unwrap();
    let store = seats(&iso).await;
    let layout: String = redis::cmd("GET")
        .arg(format!("{p}:layout"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(layout, flash_sale_adapters::redis_seats::KEY_LAYOUT);

    let _: () = redis::cmd("SET")
        .arg(format!("{p}:layout"))
        .arg("3")
        .query_async(&mut raw)
        .await
        .unwrap();
    let refused = RedisSeats::connect("redis://127.0.0.1:6379", p)
        .await
        .expect_err("an unknown layout");
    assert!(refused.message.contains("key layout 3"), "{refused:?}");
    drop_keys(&store).await;
}

/// cancel.lua: the owner's cancel before the deadline returns the seat once; past the
/// deadline it expires the hold instead (returning the seat once, too).
#[tokio::test]
async fn the_cancel_script_returns_the_seat_once_and_expires_a_hold_past_its_deadline() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = ShowtimeId::new(1).unwrap();
    assert!(s.load(st, 2, 0, 1, false, 1).await.unwrap());
    let TakeOutcome::Reserved(r) = s.take(st, user(1), HOLD).await.unwrap() else {
        panic!("a hold");
    };
    assert_eq!(
        s.cancel(r.id, user(2)).await.unwrap(),
        CancelOutcome::NotOwner
    );
    assert_eq!(
        s.cancel(r.id, user(1)).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        s.cancel(r.id, user(1)).await.unwrap(),
        CancelOutcome::AlreadyCancelled
    );
    assert_eq!(s.pay(r.id, user(1)).await.unwrap(), PayOutcome::Cancelled);
    assert_eq!(
        s.expire(r.id).await.unwrap(),
        ExpireOutcome::AlreadySettled(Status::Cancelled)
    );
    let counts = s.counts(st).await.unwrap().unwrap();
    assert_eq!((counts.available, counts.held), (2, 0));

    let TakeOutcome::Reserved(late) = s.take(st, user(1), Duration::ZERO).await.unwrap() else {
        panic!("a hold again, after the cancel");
    };
    assert_eq!(
        s.cancel(late.id, user(1)).await.unwrap(),
        CancelOutcome::Expired
    );
    assert_eq!(
        s.cancel(late.id, user(1)).await.unwrap(),
        CancelOutcome::Expired
    );
    assert_eq!(
        s.reservation(late.id).await.unwrap().unwrap().status,
        Status::Expired
    );
    let counts = s.counts(st).await.unwrap().unwrap();
    assert_eq!((counts.available, counts.held), (2, 0));
    drop_keys(&s).await;
}

/// A showtime's state replaced by another database's row of the same id (load.lua with
/// another generation) takes the replaced sale's reservations with it: an expiry still
/// travelling for one of them finds nothing, instead of returning that sale's seat to
/// this one's stock (which would put more seats on sale than the showtime has).
#[tokio::test]
async fn an_expiry_of_a_replaced_sales_hold_returns_no_seat_to_the_new_sale() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = ShowtimeId::new(1).unwrap();
    assert!(s.load(st, 2, 0, 1, false, 1).await.unwrap());
    let TakeOutcome::Reserved(old) = s.take(st, user(1), HOLD).await.unwrap() else {
        panic!("a hold of the first sale");
    };
    // Another database's showtime 1 (generation 2) replaces it.
    assert!(s.load(st, 2, 0, 2, false, 1).await.unwrap());
    assert_eq!(s.expire(old.id).await.unwrap(), ExpireOutcome::NotFound);
    let counts = s.counts(st).await.unwrap().unwrap();
    assert_eq!((counts.available, counts.held, counts.sold), (2, 0, 0));
    drop_keys(&s).await;
}

/// A showtime of `capacity` seats allowing `max` per user, in the catalog only.
async fn group_showtime_in(db: &Postgres, capacity: i64, max: i64) -> ShowtimeId {
    let mut new = NewShowtime::always_on_sale(Capacity::new(capacity).unwrap());
    new.max_per_user = MaxPerUser::new(max).unwrap();
    db.create_showtime(new).await.unwrap().id
}

/// PostgreSQL itself, not the code in front of it, refuses an order above the
/// showtime's max_per_user and orders whose quantities would pass the capacity; `sold`
/// is the sum of the quantities, whoever inserts the rows.
#[tokio::test]
async fn the_database_itself_enforces_max_per_user_and_capacity_by_quantity() {
    let iso = Isolation::new();
    let db = database(&iso).await;
    let st = group_showtime_in(&db, 6, 4).await;
    assert_eq!(
        db.showtime(st).await.unwrap().unwrap().max_per_user.get(),
        4
    );
    let group = |seq, u, quantity| OrderRequest {
        quantity,
        ..order(st, seq, u)
    };
    // Above max_per_user: refused through the adapter, and by plain SQL too.
    let outcomes = db.record_orders(&[group(1, 1, 5)]).await.unwrap();
    assert!(
        matches!(&outcomes[0], OrderOutcome::Refused(Refusal::Other(why)) if why.contains("max_per_user")),
        "{outcomes:?}"
    );
    let raw = insert_by_sql(&db, st, 99, 9, 5).await.unwrap_err();
    assert_eq!(
        raw.as_database_error().and_then(|e| e.constraint()),
        Some("orders_quantity_within_max_per_user"),
        "{raw}"
    );
    // A quantity below 1 never gets in either.
    let zero = insert_by_sql(&db, st, 98, 9, 0).await;
    assert!(zero.is_err());

    // 4 + 2 fill the 6 seats; one more seat (a third user's) passes the capacity.
    assert_eq!(
        db.record_orders(&[group(2, 2, 4), group(3, 3, 2)])
            .await
            .unwrap(),
        [OrderOutcome::Inserted, OrderOutcome::Inserted]
    );
    assert_eq!(db.showtime(st).await.unwrap().unwrap().ordered, 6);
    let outcomes = db.record_orders(&[group(4, 4, 1)]).await.unwrap();
    assert!(
        matches!(
            &outcomes[0],
            OrderOutcome::Refused(Refusal::SoldOutInDatabase)
        ),
        "{outcomes:?}"
    );
    let raw = insert_by_sql(&db, st, 97, 10, 1).await.unwrap_err();
    assert_eq!(
        raw.as_database_error().and_then(|e| e.constraint()),
        Some("showtimes_sold_within_capacity"),
        "{raw}"
    );
    // A redelivered group is a duplicate, counted once.
    assert_eq!(
        db.record_orders(&[group(2, 2, 4)]).await.unwrap(),
        [OrderOutcome::Duplicate]
    );
    let (rows, seats, sold): (i64, i64, i32) = sqlx::query_as(
        "SELECT count(*), sum(quantity), (SELECT sold FROM showtimes WHERE id = $1)
         FROM orders WHERE showtime_id = $1",
    )
    .bind(st.get())
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((rows, seats, sold), (2, 6, 6));
    assert_eq!(db.recorded(st, &[]).await.unwrap().ordered, 6);

    // A default showtime keeps one seat per user, exactly.
    let single = showtime_in(&db, 5).await;
    assert_eq!(
        db.showtime(single)
            .await
            .unwrap()
            .unwrap()
            .max_per_user
            .get(),
        1
    );
    let outcomes = db
        .record_orders(&[OrderRequest {
            quantity: 2,
            ..order(single, 1, 1)
        }])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], OrderOutcome::Refused(_)),
        "{outcomes:?}"
    );
    assert_eq!(db.showtime(single).await.unwrap().unwrap().ordered, 0);
    drop_database(db, &iso).await;
}

/// The scripts move a group's seats together: taken all or none, paid, refused,
/// replayed, expired; the audit and a rebuild count seats, not reservations.
/// The row a rebuild takes in the tests: generation 1, as the tests' loads have it.
fn row(capacity: u32, max_per_user: u32) -> SeatRow {
    SeatRow {
        capacity,
        max_per_user,
        generation: 1,
    }
}

/// The counts of a showtime of 6 seats.
fn six_seats(available: u32, held: u32, sold: u32) -> SeatCounts {
    SeatCounts {
        capacity: 6,
        available,
        held,
        sold,
    }
}

/// `user` asks for 5 seats of a row that allows 4 a buyer (refused), then for 4 (held).
async fn takes_a_group_of_four_not_five(
    s: &RedisSeats,
    st: ShowtimeId,
    user: UserId,
) -> Reservation {
    assert_eq!(
        s.take_seats(st, user, 5, HOLD).await.unwrap(),
        TakeOutcome::TooManySeats { max_per_user: 4 }
    );
    let TakeOutcome::Reserved(r) = s.take_seats(st, user, 4, HOLD).await.unwrap() else {
        panic!("the row allows a group of 4")
    };
    assert_eq!(r.quantity, 4);
    r
}

/// Redis lost a showtime's keys and `reconcile --repair` rebuilt its seats before any
/// buyer came back: the row's rules hold again (4 seats a buyer, not a default of one),
/// and the rebuilt state carries the row's generation, so a later load adopts it.
#[tokio::test]
async fn a_rebuild_after_redis_lost_a_showtime_restores_the_rows_rules() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(1);
    assert!(s.load(st, 6, 0, 1, false, 4).await.unwrap());
    drop_keys(&s).await;

    assert_eq!(
        s.rebuild(st, row(6, 4), 0, &[]).await.unwrap(),
        six_seats(6, 0, 0)
    );
    takes_a_group_of_four_not_five(&s, st, user(1)).await;
    // The same row loaded again finds its own state: nothing is reset.
    assert!(!s.load(st, 6, 0, 1, true, 4).await.unwrap());
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 4, 0)));
    drop_keys(&s).await;
}

#[tokio::test]
async fn redis_moves_a_groups_seats_together_in_every_script() {
    let iso = Isolation::new();
    let s = seats(&iso).await;
    let st = showtime(1);
    assert!(s.load(st, 6, 0, 1, false, 4).await.unwrap());
    let a = takes_a_group_of_four_not_five(&s, st, user(1)).await;
    assert_eq!(s.reservation(a.id).await.unwrap().unwrap().quantity, 4);
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 4, 0)));
    assert_eq!(
        s.take_seats(st, user(2), 3, HOLD).await.unwrap(),
        TakeOutcome::NotEnoughSeats { available: 2 }
    );
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 4, 0)));
    let audit = s.audit(st).await.unwrap().unwrap();
    assert_eq!(audit.live_holds, 4);

    let PayOutcome::Paid { quantity, .. } = s.pay(a.id, user(1)).await.unwrap() else {
        panic!("paid")
    };
    assert_eq!(quantity, 4);
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 0, 4)));
    assert_eq!(
        s.unrecorded_payments(st, Duration::ZERO).await.unwrap()[0].quantity,
        4
    );
    let audit = s.audit(st).await.unwrap().unwrap();
    assert_eq!(
        (audit.unrecorded.clone(), audit.unrecorded_seats.clone()),
        (vec![a.id], vec![4])
    );
    // A rebuild counts the unrecorded payment's 4 seats.
    assert_eq!(
        s.rebuild(st, row(6, 4), 0, &[]).await.unwrap(),
        six_seats(2, 0, 4)
    );

    // Refused: all 4 back on sale; replayed: all 4 sold again.
    assert_eq!(
        s.mark_refused(&[a.id], RefusedSeats::BackOnSale)
            .await
            .unwrap(),
        vec![a.id]
    );
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(6, 0, 0)));
    s.mark_ordered(&[(a.id, user(1))]).await.unwrap();
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 0, 4)));

    // Expired, twice: both seats back once.
    let TakeOutcome::Reserved(b) = s.take_seats(st, user(2), 2, HOLD).await.unwrap() else {
        panic!("a group of 2 fits")
    };
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(0, 2, 4)));
    assert_eq!(
        s.rebuild(st, row(6, 4), 4, &[a.id]).await.unwrap(),
        six_seats(0, 2, 4)
    );
    assert_eq!(s.expire(b.id).await.unwrap(), ExpireOutcome::SeatReturned);
    assert!(matches!(
        s.expire(b.id).await.unwrap(),
        ExpireOutcome::AlreadySettled(Status::Expired)
    ));
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 0, 4)));
    // Cancelled: the same, once.
    let TakeOutcome::Reserved(c) = s.take_seats(st, user(2), 2, HOLD).await.unwrap() else {
        panic!("the user may hold again")
    };
    assert_eq!(
        s.cancel(c.id, user(2)).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        s.cancel(c.id, user(2)).await.unwrap(),
        CancelOutcome::AlreadyCancelled
    );
    assert_eq!(s.counts(st).await.unwrap(), Some(six_seats(2, 0, 4)));
    drop_keys(&s).await;
}

/// Batches of group orders of one showtime recorded at once (several write-order
/// consumers) all commit: the database's triggers serialize them on the showtime's row
/// without deadlocking, and `sold` is the sum of every quantity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_of_group_orders_of_one_showtime_all_commit() {
    let iso = Isolation::new();
    let db = database(&iso).await;
    let st = group_showtime_in(&db, 1000, 4).await;
    let batches: Vec<Vec<OrderRequest>> = (0..16u64)
        .map(|b| {
            (0..10u64)
                .map(|i| {
                    let n = b * 10 + i + 1;
                    OrderRequest {
                        quantity: 1 + (n % 4) as u32,
                        ..order(st, n, n as i64)
                    }
                })
                .collect()
        })
        .collect();
    let outcomes = futures::future::join_all(batches.iter().map(|b| db.record_orders(b))).await;
    for outcome in outcomes {
        let outcome = outcome.expect("no batch fails (no deadlock)");
        assert!(
            outcome.iter().all(|o| *o == OrderOutcome::Inserted),
            "{outcome:?}"
        );
    }
    let expected: u32 = batches.iter().flatten().map(|o| o.quantity).sum();
    assert_eq!(db.showtime(st).await.unwrap().unwrap().ordered, expected);
    drop_database(db, &iso).await;
}

/// The same paid order written by several writers at the same moment (a redelivery and
/// a sweep's re-send, or two processes' sweeps) is one row, recorded once and a duplicate
/// for the others, never a refusal: PostgreSQL's `ON CONFLICT (reservation_id)` does not
/// cover a race lost on the other unique index, (showtime, user), which raises a unique
/// violation for the very same order instead. Refused, the order would be written to the
/// refund list although it holds its seat, and its seat put back on sale in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_written_by_several_writers_at_once_is_recorded_and_never_refused() {
    const ROUNDS: u64 = 400;
    const WRITERS: usize = 4;
    let iso = Isolation::new();
    let db = database(&iso).await;
    let st = showtime_in(&db, ROUNDS as i64).await;
    for n in 1..=ROUNDS {
        let paid = [order(st, n, n as i64)];
        let outcomes =
            futures::future::join_all((0..WRITERS).map(|_| db.record_orders(&paid))).await;
        let outcomes: Vec<OrderOutcome> = outcomes
            .into_iter()
            .map(|o| o.expect("no writer fails").remove(0))
            .collect();
        let inserted = outcomes
            .iter()
            .filter(|o| **o == OrderOutcome::Inserted)
            .count();
        assert!(
            inserted == 1
                && outcomes
                    .iter()
                    .all(|o| matches!(o, OrderOutcome::Inserted | OrderOutcome::Duplicate)),
            "round {n}: {outcomes:?}"
        );
    }
    assert_eq!(
        db.showtime(st).await.unwrap().unwrap().ordered,
        ROUNDS as u32
    );
    drop_database(db, &iso).await;
}
