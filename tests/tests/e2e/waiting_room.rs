//! The waiting room (issue 16) over real HTTP: a crowd of 10,000 for 100 seats is
//! admitted no faster than the seats allow, buys every seat through its admissions and
//! learns `sold_out` within a second of the last one going; the pre-opening lottery is
//! uniform (statistical tests, no fixed seed) and later arrivals queue in order; forged,
//! expired, reused and foreign admissions are refused and change nothing; places and
//! admissions survive a restart; a showtime without a room sells as before.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flash_sale_core::waiting_room::RATE_WINDOW;
use flash_sale_core::{ShowtimeId, UnixMillis, UserId};
use flash_sale_runtime::room_passes::RoomPasses;
use flash_sale_tests::{
    DoorGate, Options, RedisServer, TestApp, assert_error, eventually, promptly, wait_for_orders,
};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

/// One answer: status, whether it was an idempotent replay, and the JSON body.
#[derive(Debug, Clone)]
struct Answer {
    status: StatusCode,
    replayed: bool,
    body: Value,
}

impl Answer {
    fn pair(&self) -> (StatusCode, Value) {
        (self.status, self.body.clone())
    }

    fn str(&self, field: &str) -> Option<String> {
        self.body[field].as_str().map(str::to_string)
    }

    /// The queue status of a `200` answer of the room's routes.
    fn queue_status(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        self.str("status").expect("a queue status")
    }
}

/// An HTTP client of the test's server that 'static tasks can own, with at most
/// `in_flight` requests at once (a crowd's bounded concurrency).
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    gate: Arc<Semaphore>,
}

impl Client {
    fn of(app: &TestApp, in_flight: usize) -> Self {
        Self {
            http: app.http.clone(),
            base: format!("http://{}", app.addr),
            gate: Arc::new(Semaphore::new(in_flight)),
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Answer {
        let _permit = self.gate.acquire().await.expect("the gate stays open");
        let res = request.send().await.expect("request sent");
        let status = res.status();
        let replayed = match res.headers().get("idempotent-replayed") {
            None => false,
            Some(v) => {
                assert_eq!(v, "true");
                true
            }
        };
        let text = res.text().await.expect("body read");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer is not JSON: {status} {text:?}"));
        Answer {
            status,
            replayed,
            body,
        }
    }

    /// `POST /showtimes/{showtime}/queue` as `user`.
    async fn join(&self, showtime: i64, user: i64) -> Answer {
        self.call(
            self.http
                .post(format!("{}/showtimes/{showtime}/queue", self.base))
                .json(&json!({"user_id": user})),
        )
        .await
    }

    /// `GET /showtimes/{showtime}/queue/me` as `user`, with a `Queue-Ticket` if given.
    async fn me(&self, showtime: i64, user: i64, ticket: Option<&str>) -> Answer {
        let mut request = self.http.get(format!(
            "{}/showtimes/{showtime}/queue/me?user_id={user}",
            self.base
        ));
        if let Some(ticket) = ticket {
            request = request.header("Queue-Ticket", ticket);
        }
        self.call(request).await
    }

    /// `POST /reserve` as `user`, with an `Admission-Token`, a `quantity` and an
    /// `Idempotency-Key` when given.
    async fn reserve(
        &self,
        showtime: i64,
        user: i64,
        admission: Option<&str>,
        quantity: Option<u32>,
        key: Option<&str>,
    ) -> Answer {
        let mut body = json!({"user_id": user, "showtime_id": showtime});
        if let Some(q) = quantity {
            body["quantity"] = json!(q);
        }
        let mut request = self.http.post(format!("{}/reserve", self.base)).json(&body);
        if let Some(admission) = admission {
            request = request.header("Admission-Token", admission);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.call(request).await
    }

    async fn pay(&self, reservation: &str, user: i64) -> Answer {
        self.call(
            self.http
                .post(format!("{}/reservations/{reservation}/pay", self.base))
                .json(&json!({"user_id": user})),
        )
        .await
    }

    async fn cancel(&self, reservation: &str, user: i64) -> Answer {
        self.call(
            self.http
                .delete(format!("{}/reservations/{reservation}", self.base))
                .json(&json!({"user_id": user})),
        )
        .await
    }
}

/// The tests' options: a buyer here polls far faster than the default per-user rate
/// limit (20 a second) allows, as a client polling for an outcome every 20 ms does.
fn options() -> Options {
    Options {
        rate_user: Some((1_000, 1_000)),
        ..Options::default()
    }
}

/// RFC 3339 for `offset` from now (negative: in the past).
fn at(offset: chrono::Duration) -> String {
    (chrono::Utc::now() + offset).to_rfc3339()
}

/// Creates a showtime from `body` (capacity, max_per_user, waiting_room, ...) and
/// returns its id, checking that the room is shown as sent.
async fn create(app: &TestApp, body: Value) -> i64 {
    let (status, created) = app.post("/showtimes", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body} -> {created}");
    if let Some(room) = body.get("waiting_room") {
        let shown = &created["waiting_room"];
        assert!(shown.is_object(), "{created}");
        for field in ["overbook_pct", "admission_secs", "admit_per_sec"] {
            if let Some(v) = room.get(field) {
                assert_eq!(&shown[field], v, "{created}");
            }
        }
    }
    created["id"].as_i64().unwrap()
}

/// Opens a room now (`PATCH /showtimes/{id}` with the whole room, `opens_at` now),
/// as an operator (`AUTH_MODE=none` trusts the caller).
async fn open_now(app: &TestApp, showtime: i64, overbook_pct: u32, admission_secs: u32) {
    let room = json!({"waiting_room": {
        "opens_at": at(chrono::Duration::zero()),
        "overbook_pct": overbook_pct,
        "admission_secs": admission_secs,
    }});
    let (status, answer) = app.change_showtime(showtime, room.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{room} -> {answer}");
    assert_eq!(
        answer["waiting_room"]["overbook_pct"], overbook_pct,
        "{answer}"
    );
}

/// Where the room stands in Redis, read in one atomic step: admissions not run out,
/// the seats, and the places served so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RoomCounts {
    admitted_live: i64,
    available: i64,
    held: i64,
    sold: i64,
    served: i64,
    in_line: i64,
}

const ROOM_COUNTS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[2], 'available', 'held', 'sold')
return {redis.call('ZCOUNT', KEYS[1], now, '+inf'), tonumber(s[1] or '0'),
  tonumber(s[2] or '0'), tonumber(s[3] or '0'),
  tonumber(redis.call('HGET', KEYS[3], 'served') or '0'), redis.call('ZCARD', KEYS[4])}
";

async fn room_counts(app: &TestApp, showtime: i64) -> RoomCounts {
    let key = |what: &str| format!("{}:{{{showtime}}}:{what}", app.iso.prefix);
    let mut conn = app.adapters.seats.connection();
    let v: Vec<i64> = redis::Script::new(ROOM_COUNTS)
        .key(key("room:admitted"))
        .key(key("seats"))
        .key(key("room"))
        .key(key("room:places"))
        .invoke_async(&mut conn)
        .await
        .expect("the room's counts");
    RoomCounts {
        admitted_live: v[0],
        available: v[1],
        held: v[2],
        sold: v[3],
        served: v[4],
        in_line: v[5],
    }
}

/// `ceil(available * (100 + overbook) / 100)`: undecided admissions the stock allows.
fn allowed(available: i64, overbook_pct: i64) -> i64 {
    (available * (100 + overbook_pct) + 99) / 100
}

// ---------------------------------------------------------------------------------
// 1. A crowd of 10,000 for 100 seats.
// ---------------------------------------------------------------------------------

const CROWD: i64 = 10_000;
const SEATS: i64 = 100;
const OVERBOOK: i64 = 10;
const IN_FLIGHT: usize = 96;

/// How one buyer of the crowd ended.
#[derive(Debug, Clone)]
enum Ending {
    /// Admitted, held and paid: the payment sent and answered at these instants.
    Bought {
        reservation: String,
        pay_sent: Instant,
        pay_returned: Instant,
    },
    /// Admitted, and the reserve answered `sold_out` (the admission used up).
    SoldOutWhenReserving,
    /// Told `sold_out` while in line, at this instant.
    SoldOutInLine { at: Instant },
    /// Anything else: a failure of the contract.
    Unexpected(String),
}

#[derive(Debug, Clone)]
struct Buyer {
    user: i64,
    place: Option<u64>,
    admitted: bool,
    ending: Ending,
}

/// What the crowd shares: the last seat's payment, and counts.
struct Sale {
    showtime: i64,
    paid: AtomicUsize,
    last_paid: watch::Sender<Option<Instant>>,
    polls: AtomicUsize,
}

/// Pacing between a waiting buyer's polls: sparse far back in line, denser near the
/// front, spread by user so the crowd does not poll in lockstep. (A poll's pace, not a
/// wait for an outcome: every outcome is read from an answer.)
fn poll_interval(user: i64, ahead: u64) -> Duration {
    let base = (ahead * 2).clamp(100, 4_000);
    let spread = (user as u64 * 7_919) % 100;
    Duration::from_millis(base * (75 + spread / 2) / 100)
}

/// One buyer after the room opened: polls with their ticket until admitted (then
/// reserves with the admission and pays) or told `sold_out`.
async fn buyer(client: Client, sale: Arc<Sale>, user: i64, mut ticket: String) -> Buyer {
    let st = sale.showtime;
    let mut me = Buyer {
        user,
        place: None,
        admitted: false,
        ending: Ending::Unexpected("never answered".into()),
    };
    // The crowd's first polls, spread over a second.
    tokio::time::sleep(Duration::from_millis((user as u64 * 7_919) % 1_000)).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if Instant::now() > deadline {
            me.ending = Ending::Unexpected("still waiting after 90 s".into());
            return me;
        }
        let answer = client.me(st, user, Some(&ticket)).await;
        sale.polls.fetch_add(1, Ordering::Relaxed);
        if answer.status != StatusCode::OK {
            me.ending = Ending::Unexpected(format!("poll: {} {}", answer.status, answer.body));
            return me;
        }
        if let Some(t) = answer.str("ticket") {
            ticket = t;
        }
        if let Some(place) = answer.body["place"].as_u64() {
            if me.place.is_some_and(|p| p != place) {
                me.ending = Ending::Unexpected(format!("place moved: {}", answer.body));
                return me;
            }
            me.place = Some(place);
        }
        match answer.str("status").as_deref() {
            Some("in_line") => {
                let ahead = answer.body["ahead"].as_u64().unwrap_or(0);
                tokio::time::sleep(poll_interval(user, ahead)).await;
            }
            Some("waiting") => tokio::time::sleep(Duration::from_millis(100)).await,
            Some("admitted") => {
                me.admitted = true;
                let admission = answer.str("admission").expect("an admission");
                let held = client.reserve(st, user, Some(&admission), None, None).await;
                me.ending = match (held.status, held.body["error"].as_str()) {
                    (StatusCode::OK, _) => {
                        let id = held.str("reservation_id").unwrap();
                        let pay_sent = Instant::now();
                        let paid = client.pay(&id, user).await;
                        let pay_returned = Instant::now();
                        if paid.status == StatusCode::OK && paid.body["status"] == "PAID" {
                            if sale.paid.fetch_add(1, Ordering::SeqCst) + 1 == SEATS as usize {
                                sale.last_paid.send_replace(Some(pay_returned));
                            }
                            Ending::Bought {
                                reservation: id,
                                pay_sent,
                                pay_returned,
                            }
                        } else {
                            Ending::Unexpected(format!("pay: {} {}", paid.status, paid.body))
                        }
                    }
                    (StatusCode::CONFLICT, Some("sold_out")) => Ending::SoldOutWhenReserving,
                    _ => Ending::Unexpected(format!("reserve: {} {}", held.status, held.body)),
                };
                return me;
            }
            Some("sold_out") => {
                me.ending = Ending::SoldOutInLine { at: Instant::now() };
                return me;
            }
            _ => {
                me.ending = Ending::Unexpected(format!("poll: {}", answer.body));
                return me;
            }
        }
    }
}

/// Watches the room in Redis while the crowd buys: admitted-and-undecided buyers never
/// outnumber the available seats by more than the overbooking margin of the capacity
/// (`ceil(100 * 10%)` = 10). Returns the samples taken and the largest excess seen over
/// `ceil(available * 110%)`, the bound admission applies at each admission.
async fn watch_room(app: &TestApp, showtime: i64, stop: &AtomicBool) -> (usize, i64) {
    let margin = allowed(SEATS, OVERBOOK) - SEATS;
    let mut samples = 0;
    let mut worst_over_bound = i64::MIN;
    while !stop.load(Ordering::SeqCst) {
        let c = room_counts(app, showtime).await;
        samples += 1;
        assert!(
            c.admitted_live <= c.available + margin,
            "more undecided admissions than available seats plus the margin: {c:?}"
        );
        assert!(
            c.served <= SEATS + margin,
            "more admitted than the seats plus the margin: {c:?}"
        );
        assert_eq!(c.available + c.held + c.sold, SEATS, "{c:?}");
        worst_over_bound = worst_over_bound.max(c.admitted_live - allowed(c.available, OVERBOOK));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (samples, worst_over_bound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_joiners_for_a_hundred_seats_buy_only_through_admissions_and_learn_sold_out_at_once()
 {
    let started = Instant::now();
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, IN_FLIGHT);
    let showtime = create(
        &app,
        json!({"capacity": SEATS, "title": "Premiere", "waiting_room": {
            "opens_at": at(chrono::Duration::hours(1)),
            "overbook_pct": OVERBOOK,
            "admission_secs": 60,
        }}),
    )
    .await;

    // Everyone joins before the opening: told `waiting`, no place yet, a ticket.
    let joined: Vec<(i64, Answer)> = futures::stream::iter(1..=CROWD)
        .map(|user| {
            let client = client.clone();
            async move { (user, client.join(showtime, user).await) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut tickets: HashMap<i64, String> = HashMap::new();
    for (user, answer) in &joined {
        assert_eq!(answer.queue_status(), "waiting", "{}", answer.body);
        assert!(answer.body["place"].is_null(), "{}", answer.body);
        assert!(answer.body["admission"].is_null(), "{}", answer.body);
        tickets.insert(*user, answer.str("ticket").expect("a ticket"));
    }
    let joined_in = started.elapsed();
    let quiet = room_counts(&app, showtime).await;
    assert_eq!(quiet.in_line, CROWD, "{quiet:?}");
    assert_eq!((quiet.served, quiet.admitted_live), (0, 0), "{quiet:?}");

    // Before the opening nobody may reserve: without an admission, or with a ticket
    // offered as one. Nothing changes.
    let refusals = (1..=100)
        .map(|user| (user, None))
        .chain((101..=200).map(|user| (user, Some(tickets[&user].clone()))));
    let refused: Vec<Answer> = futures::stream::iter(refusals)
        .map(|(user, pass)| {
            let client = client.clone();
            async move {
                client
                    .reserve(showtime, user, pass.as_deref(), None, None)
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for answer in &refused {
        assert_error(&answer.pair(), StatusCode::FORBIDDEN, "not_admitted");
    }
    assert_eq!(
        room_counts(&app, showtime).await,
        quiet,
        "a refusal changed the room"
    );
    assert_eq!(app.seats(showtime).await, (SEATS, 0, 0));

    // The opening: the lottery's places come into force, the line is admitted.
    let (last_paid, last_paid_rx) = watch::channel(None);
    let sale = Arc::new(Sale {
        showtime,
        paid: AtomicUsize::new(0),
        last_paid,
        polls: AtomicUsize::new(0),
    });
    let stop_watching = AtomicBool::new(false);
    open_now(&app, showtime, OVERBOOK as u32, 60).await;
    let opened = Instant::now();

    let crowd: Vec<tokio::task::JoinHandle<Buyer>> = (1..=CROWD)
        .map(|user| {
            tokio::spawn(buyer(
                client.clone(),
                sale.clone(),
                user,
                tickets[&user].clone(),
            ))
        })
        .collect();

    // A waiting buyer at the back of the line: after the last seat is paid, their poll
    // must say `sold_out` within a second.
    let watcher = async {
        let watcher_client = Client::of(&app, 4);
        let (user, mut ticket) = eventually(
            Duration::from_secs(30),
            "a buyer far back in the line",
            || {
                let client = watcher_client.clone();
                let tickets = &tickets;
                async move {
                    for user in (CROWD - 20..=CROWD).rev() {
                        let a = client.me(showtime, user, Some(&tickets[&user])).await;
                        if a.queue_status() == "in_line"
                            && a.body["ahead"].as_u64().is_some_and(|n| n > 500)
                        {
                            return Some((user, a.str("ticket").unwrap()));
                        }
                    }
                    None
                }
            },
        )
        .await;
        let mut rx = last_paid_rx.clone();
        let paid_at = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|v| v.is_some()))
            .await
            .expect("the last seat paid within 60 s of the opening")
            .expect("the crowd keeps the sender")
            .expect("a time");
        // Every poll that leaves a second or more after the last payment says `sold_out`.
        let (told, took) = promptly(
            paid_at,
            Duration::from_secs(1),
            "a waiting buyer told sold_out after the last payment",
            || async {
                let a = watcher_client.me(showtime, user, Some(&ticket)).await;
                let status = a.queue_status();
                if status == "sold_out" {
                    return Some(a);
                }
                assert_eq!(status, "in_line", "the watcher was {status}: {}", a.body);
                None
            },
        )
        .await;
        ticket = told.str("ticket").unwrap_or(ticket);
        assert!(told.body["admission"].is_null(), "{}", told.body);
        (user, ticket, took)
    };

    // Buyers far back never get to reserve while the sale runs: without an admission
    // they are refused once the first seat is sold.
    let prowlers = async {
        eventually(Duration::from_secs(60), "the first seat paid", || async {
            (sale.paid.load(Ordering::SeqCst) > 0).then_some(())
        })
        .await;
        let answers: Vec<Answer> = futures::stream::iter(CROWD - 300..CROWD - 100)
            .map(|user| {
                let client = client.clone();
                async move { client.reserve(showtime, user, None, None, None).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for answer in &answers {
            assert_error(&answer.pair(), StatusCode::FORBIDDEN, "not_admitted");
        }
        answers.len()
    };

    let ((watcher_user, watcher_ticket, told_after), prowled, (samples, worst_over_bound), ()) = tokio::join!(
        watcher,
        prowlers,
        watch_room(&app, showtime, &stop_watching),
        async {
            // Stops the room's watch once every buyer has ended (each gives up after 90 s).
            eventually(Duration::from_secs(120), "every buyer ended", || async {
                crowd.iter().all(|h| h.is_finished()).then_some(())
            })
            .await;
            stop_watching.store(true, Ordering::SeqCst);
        }
    );
    let mut buyers = Vec::with_capacity(CROWD as usize);
    for handle in crowd {
        buyers.push(handle.await.expect("a buyer's task"));
    }
    let crowd_done = opened.elapsed();

    // Every buyer's ending.
    let unexpected: Vec<(i64, &str)> = buyers
        .iter()
        .filter_map(|b| match &b.ending {
            Ending::Unexpected(what) => Some((b.user, what.as_str())),
            _ => None,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} buyers ended unexpectedly, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let bought: Vec<&Buyer> = buyers
        .iter()
        .filter(|b| matches!(b.ending, Ending::Bought { .. }))
        .collect();
    let sold_out_reserving = buyers
        .iter()
        .filter(|b| matches!(b.ending, Ending::SoldOutWhenReserving))
        .count() as i64;
    let sold_out_in_line: Vec<Instant> = buyers
        .iter()
        .filter_map(|b| match b.ending {
            Ending::SoldOutInLine { at } => Some(at),
            _ => None,
        })
        .collect();
    let (last_pay_sent, last_pay_returned) = bought
        .iter()
        .map(|b| match b.ending {
            Ending::Bought {
                pay_sent,
                pay_returned,
                ..
            } => (pay_sent, pay_returned),
            _ => unreachable!(),
        })
        .fold((opened, opened), |(s, r), (ps, pr)| (s.max(ps), r.max(pr)));
    assert_eq!(bought.len() as i64, SEATS, "every seat sold, one per buyer");
    assert!(bought.iter().all(|b| b.admitted));
    assert_eq!(
        bought.len() + sold_out_reserving as usize + sold_out_in_line.len(),
        CROWD as usize
    );
    // The room closes only once nothing is available or held: after every payment
    // was sent.
    assert!(
        sold_out_in_line.iter().all(|&at| at >= last_pay_sent),
        "a buyer in line was told sold_out before the last payment was sent"
    );
    let slowest_in_line = sold_out_in_line
        .iter()
        .map(|&at| at.saturating_duration_since(last_pay_returned))
        .max();

    // No more admitted than the seats, the margin and the admissions a sold_out used.
    let admitted = buyers.iter().filter(|b| b.admitted).count() as i64;
    let end = room_counts(&app, showtime).await;
    let margin = allowed(SEATS, OVERBOOK) - SEATS;
    // Every admission was seen by its buyer, or its buyer, asking only once every seat
    // was paid, was told `sold_out` instead (a closed room says so to everyone: nothing
    // is left for an admission to buy). Which of the two depends on when the buyer's
    // first poll came, so only the sum is exact.
    assert!(
        admitted <= end.served,
        "{admitted} seen, {} served",
        end.served
    );
    assert!(
        end.served - admitted <= sold_out_in_line.len() as i64,
        "{} admissions nobody saw, {} told sold_out in line",
        end.served - admitted,
        sold_out_in_line.len()
    );
    assert_eq!(
        admitted,
        SEATS + sold_out_reserving,
        "every admission was decided: a hold or a sold_out"
    );
    assert!(
        admitted <= SEATS + margin,
        "{admitted} admitted for {SEATS} seats"
    );
    assert!(sold_out_reserving <= margin);
    // Admission follows the line: the admitted hold distinct places among its first
    // `served`, and nobody after those was admitted.
    let mut admitted_places: Vec<u64> = buyers
        .iter()
        .filter(|b| b.admitted)
        .map(|b| b.place.expect("an admitted buyer's place"))
        .collect();
    admitted_places.sort_unstable();
    admitted_places.dedup();
    assert_eq!(
        admitted_places.len() as i64,
        admitted,
        "two admitted at one place"
    );
    assert!(
        admitted_places.iter().all(|&p| (p as i64) < end.served),
        "admitted past the first {} places: {admitted_places:?}",
        end.served
    );

    // Every seat sold and recorded, each order a buyer's who was admitted.
    assert_eq!(app.seats(showtime).await, (0, 0, SEATS));
    wait_for_orders(&app, showtime, SEATS).await;
    let ordered: Vec<(String, i64)> =
        sqlx::query_as("SELECT reservation_id, user_id FROM orders WHERE showtime_id = $1")
            .bind(showtime)
            .fetch_all(&app.db)
            .await
            .unwrap();
    let expected: HashSet<(String, i64)> = bought
        .iter()
        .map(|b| match &b.ending {
            Ending::Bought { reservation, .. } => (reservation.clone(), b.user),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ordered.into_iter().collect::<HashSet<_>>(), expected);

    // After the sale: those still in line are told sold_out, and still may not reserve.
    let (status, again) = {
        let a = client
            .me(showtime, watcher_user, Some(&watcher_ticket))
            .await;
        (a.status, a.body)
    };
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::OK, Some("sold_out"))
    );
    let late: Vec<Answer> = futures::stream::iter(CROWD - 99..=CROWD)
        .map(|user| {
            let client = client.clone();
            async move { client.reserve(showtime, user, None, None, None).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for answer in &late {
        assert_error(&answer.pair(), StatusCode::FORBIDDEN, "not_admitted");
    }
    assert_eq!(app.seats(showtime).await, (0, 0, SEATS));
    assert_eq!(app.orders(showtime).await, SEATS);

    eprintln!(
        "crowd: {CROWD} joined in {joined_in:?}; after the opening every buyer ended in \
         {crowd_done:?} ({} polls); {admitted} admitted ({sold_out_reserving} told sold_out \
         when reserving); the watcher learned sold_out {told_after:?} after the last \
         payment, the slowest in line {slowest_in_line:?}; {prowled} tokenless reserves \
         refused mid-sale; {samples} Redis samples, largest excess of undecided admissions \
         over ceil(available * 110%): {worst_over_bound}; total {:?}",
        sale.polls.load(Ordering::Relaxed),
        started.elapsed()
    );
    app.finish().await;
}

// ---------------------------------------------------------------------------------
// 2. Fairness: a uniform lottery before the opening, arrival order after it.
// ---------------------------------------------------------------------------------

/// The chi-square test's critical value for 4 degrees of freedom at p = 4e-7.
///
/// For 4 degrees of freedom the survival function has a closed form,
/// `P(X > x) = e^(-x/2) * (1 + x/2)`. Solving `e^(-y) (1 + y) = 4e-7` for `y = x/2` by
/// bisection gives y = 17.659, so x = 35.32: `P(X > 35.32) = 3.99e-7`.
/// [`chi_square_4_tail`] checks the constant at run time.
const CHI_SQUARE_4_CRITICAL: f64 = 35.32;

/// `P(X > x)` for a chi-square variable of 4 degrees of freedom.
fn chi_square_4_tail(x: f64) -> f64 {
    (-x / 2.0).exp() * (1.0 + x / 2.0)
}

/// `|z|` of Spearman's rank correlation beyond which the test fails: two-sided
/// `P(|Z| > 5) = erfc(5 / sqrt 2) = 5.73e-7` for a standard normal.
const SPEARMAN_Z_CRITICAL: f64 = 5.0;

/// The two tests' false-failure probabilities: their sum (a union bound) is at most 1e-6.
const SPEARMAN_FALSE_FAILURE: f64 = 5.73e-7;
const CHI_SQUARE_FALSE_FAILURE: f64 = 4e-7;
const _: () = assert!(SPEARMAN_FALSE_FAILURE + CHI_SQUARE_FALSE_FAILURE <= 1e-6);

/// Spearman's rank correlation of a permutation against the identity: `places[i]` is
/// the place of the `i`-th joiner, `places` a permutation of `0..n`.
fn spearman(places: &[u64]) -> f64 {
    let n = places.len() as f64;
    let d2: f64 = places
        .iter()
        .enumerate()
        .map(|(i, &p)| (i as f64 - p as f64).powi(2))
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// The chi-square statistic of the join-order quintiles among the first fifth of the
/// places, and the counts per quintile.
fn first_fifth_by_join_quintile(places: &[u64]) -> (f64, [u64; 5]) {
    let n = places.len() as u64;
    let mut counts = [0u64; 5];
    for (i, &place) in places.iter().enumerate() {
        if place < n / 5 {
            counts[(i as u64 * 5 / n) as usize] += 1;
        }
    }
    let expected = (n / 5) as f64 / 5.0;
    let chi2 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    (chi2, counts)
}

#[test]
fn the_fairness_tests_own_arithmetic() {
    // The critical values are where the comments say.
    let tail = chi_square_4_tail(CHI_SQUARE_4_CRITICAL);
    assert!(tail <= CHI_SQUARE_FALSE_FAILURE && tail > 3.9e-7, "{tail}");
    // Spearman: the identity is +1, the reverse -1.
    let up: Vec<u64> = (0..100).collect();
    let down: Vec<u64> = (0..100).rev().collect();
    assert!((spearman(&up) - 1.0).abs() < 1e-12);
    assert!((spearman(&down) + 1.0).abs() < 1e-12);
    // First-come-first-served puts the whole first fifth in the first quintile.
    let (chi2, counts) = first_fifth_by_join_quintile(&up);
    assert_eq!(counts, [20, 0, 0, 0, 0]);
    assert!(chi2 > CHI_SQUARE_4_CRITICAL, "{chi2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_opening_joiners_are_placed_by_a_uniform_lottery_and_later_ones_in_arrival_order() {
    const EARLY: usize = 2_000;
    const LATE: i64 = 50;
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 32);
    let showtime = create(
        &app,
        json!({"capacity": 20, "waiting_room": {
            "opens_at": at(chrono::Duration::hours(1)),
            "overbook_pct": 0,
            "admission_secs": 60,
        }}),
    )
    .await;

    // Users join one after another, user 1 first: the join order is known.
    let mut tickets = Vec::with_capacity(EARLY);
    for user in 1..=EARLY as i64 {
        let a = client.join(showtime, user).await;
        assert_eq!(a.queue_status(), "waiting", "{}", a.body);
        assert!(
            a.body["place"].is_null(),
            "no place before the lottery: {}",
            a.body
        );
        tickets.push(a.str("ticket").expect("a ticket"));
    }
    open_now(&app, showtime, 0, 60).await;
    eventually(Duration::from_secs(5), "the room open", || async {
        let a = client.me(showtime, 1, Some(&tickets[0])).await;
        (a.queue_status() != "waiting").then_some(())
    })
    .await;

    // Every early joiner's place.
    let standings: Vec<Answer> = futures::stream::iter(tickets.iter().enumerate())
        .map(|(i, ticket)| {
            let client = client.clone();
            async move { client.me(showtime, i as i64 + 1, Some(ticket)).await }
        })
        .buffered(32)
        .collect()
        .await;
    let mut places = Vec::with_capacity(EARLY);
    for a in &standings {
        let status = a.queue_status();
        let place = a.body["place"].as_u64().expect("a place after the opening");
        // The lottery's first 20 places are admitted (20 seats, no overbooking).
        let expected = if place < 20 { "admitted" } else { "in_line" };
        assert_eq!(status, expected, "{}", a.body);
        places.push(place);
    }
    let mut sorted = places.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..EARLY as u64).collect::<Vec<_>>(),
        "places are a permutation"
    );

    // H0: the places are a uniform random permutation of the join order. Both tests
    // below fail under H0 with probability at most 5.73e-7 + 4e-7 < 1e-6 together.
    //
    // Spearman's rho of join order against place: under H0 its mean is 0 and its
    // variance 1/(n-1), and rho * sqrt(n-1) is close to a standard normal (its exact
    // tails are lighter: rho is bounded and platykurtic).
    let rho = spearman(&places);
    let z = rho * ((EARLY - 1) as f64).sqrt();
    // The join-order quintiles of the first n/5 places: under H0 each holds n/25 of
    // them in expectation (hypergeometric: its chi-square statistic is at most as
    // spread as the 4-degree chi-square, the finite-population correction being below
    // one).
    let (chi2, counts) = first_fifth_by_join_quintile(&places);
    eprintln!(
        "lottery of {EARLY}: Spearman rho {rho:.4} (z {z:.2}), first fifth by join quintile {counts:?} (chi-square {chi2:.2})"
    );
    assert!(
        z.abs() <= SPEARMAN_Z_CRITICAL,
        "places follow the join order: rho {rho}, z {z}"
    );
    assert!(
        chi2 <= CHI_SQUARE_4_CRITICAL,
        "the first places favour some joiners: {counts:?}, chi-square {chi2}"
    );

    // After the opening: arrival order, behind every early joiner.
    let mut last = None;
    for user in EARLY as i64 + 1..=EARLY as i64 + LATE {
        let a = client.join(showtime, user).await;
        assert_eq!(a.queue_status(), "in_line", "{}", a.body);
        let place = a.body["place"].as_u64().expect("a place");
        let expected = last.map_or(EARLY as u64, |p: u64| p + 1);
        assert_eq!(place, expected, "arrival order: {}", a.body);
        last = Some(place);
        // Joining again finds the same place.
        let again = client.join(showtime, user).await;
        assert_eq!(again.body["place"], place, "{}", again.body);
    }
    app.finish().await;
}

/// Every answer says when to ask again: before the opening, each early joiner is told to
/// come back at the opening plus a delay that grows with their lottery number, so the
/// order the crowd comes back in is the order the lottery then gives them: the front the
/// seats admit at `WAITING_ROOM_HOLDS_PER_SEC`, the rest a second after it at
/// `WAITING_ROOM_POLLS_PER_SEC`; in line, within 1-60 s; nothing once there is nothing
/// left to wait for.
#[tokio::test]
async fn before_the_opening_only_those_who_joined_are_told_they_wait() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let showtime = create(
        &app,
        json!({"capacity": 5, "waiting_room": {"opens_at": at(chrono::Duration::hours(1))}}),
    )
    .await;
    let join = client.join(showtime, 1).await;
    assert_eq!(join.queue_status(), "waiting", "{}", join.body);
    let ticket = join.str("ticket").expect("a ticket");
    // The process has seen the room (the join read it): a poll without a ticket is
    // still answered by the line itself, not taken for a joiner's.
    for _ in 0..2 {
        let stranger = client.me(showtime, 2, None).await;
        assert_eq!(stranger.status, StatusCode::OK, "{}", stranger.body);
        assert_eq!(stranger.queue_status(), "not_in_line", "{}", stranger.body);
        assert!(stranger.body["ticket"].is_null(), "{}", stranger.body);
    }
    // The joiner is waiting, with their ticket or without it (a lost ticket is no lost
    // place), and joining after all puts the stranger in line by the same lottery.
    for presented in [Some(ticket.as_str()), None] {
        let me = client.me(showtime, 1, presented).await;
        assert_eq!(me.queue_status(), "waiting", "{}", me.body);
        assert!(me.str("ticket").is_some(), "{}", me.body);
    }
    let late = client.join(showtime, 2).await;
    assert_eq!(late.queue_status(), "waiting", "{}", late.body);
    assert_eq!(room_counts(&app, showtime).await.in_line, 2);
    app.finish().await;
}

/// Script calls Redis has run since its counters were reset (`CONFIG RESETSTAT`).
fn script_calls(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]).expect("Redis answers");
    stats
        .lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn a_poll_touches_redis_at_most_once_even_when_it_reads_the_room_again() {
    // A Redis of the test's own, so that its counters are this server's alone, and the
    // shortest refresh of the process's view of the room.
    const REFRESH: Duration = Duration::from_millis(10);
    let redis = RedisServer::start(&[]);
    let app = TestApp::spawn(Options {
        redis_url: Some(redis.url()),
        extra_env: vec![("WAITING_ROOM_REFRESH_MS", REFRESH.as_millis().to_string())],
        ..options()
    })
    .await;
    let client = Client::of(&app, 1);
    let st = room_open_now(&app, 5, 1, 0, 60).await;
    const POLLS: i64 = 20;
    for user in 1..=POLLS {
        assert_eq!(client.join(st, user).await.status, StatusCode::OK);
    }
    // Polls back to back, without a ticket (where each stands is Redis's to say: five
    // admitted, fifteen in line), for thirty refresh periods: the view goes stale again
    // and again, and the poll that finds it so reads it again.
    assert_eq!(redis.cli(&["CONFIG", "RESETSTAT"]).as_deref(), Some("OK"));
    let started = Instant::now();
    let mut polls = 0;
    while started.elapsed() < REFRESH * 30 {
        let user = polls % POLLS + 1;
        let me = client.me(st, user, None).await;
        let expected = if user <= 5 { "admitted" } else { "in_line" };
        assert_eq!(me.queue_status(), expected, "{}", me.body);
        polls += 1;
    }
    let (polls, calls) = (polls as u64, script_calls(&redis));
    // The server's background work (its sweep, the rooms' timer) may add a call or
    // two; a second call whenever the view had gone stale would add about one a
    // refresh period.
    assert!(
        (polls..polls + 5).contains(&calls),
        "{calls} script calls for {polls} polls"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_poll_of_a_showtime_without_a_room_does_not_wait_on_its_rows_lock() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 2);
    let st = create(&app, json!({"capacity": 5})).await;
    // An operator's change holds the showtime's row (as a change of seats does while
    // Redis follows); a crowd still polling a room that is gone must not queue on it.
    let mut change = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM showtimes WHERE id = $1 FOR UPDATE")
        .bind(st)
        .execute(&mut *change)
        .await
        .unwrap();
    for (what, route) in [
        ("a poll", format!("/showtimes/{st}/queue/me?user_id=1")),
        (
            "a poll of no showtime",
            "/showtimes/424242/queue/me?user_id=1".to_string(),
        ),
    ] {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.http.get(format!("{}{route}", client.base)).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{what} waited on the row's lock"))
        .unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{what}");
    }
    let join = client.join(st, 1).await;
    assert_error(&join.pair(), StatusCode::NOT_FOUND, "not_found");
    change.rollback().await.unwrap();
    app.finish().await;
}

#[tokio::test]
async fn early_joiners_are_told_to_come_back_at_the_opening_in_the_order_the_lottery_gives_them() {
    const JOINERS: i64 = 40;
    // 40 joiners for 5 seats: the 5 the seats admit come back over 5 / 2 = 2.5 s after
    // the opening, the other 35 from 3.5 s on at 4 polls a second, until 12.25 s.
    const POLLS_PER_SEC: u64 = 4;
    const HOLDS_PER_SEC: u64 = 2;
    const FRONT_DONE_MS: i64 = 2_500;
    const REST_FROM_MS: i64 = 3_500;
    const LAST_MS: i64 = 12_250;
    let app = TestApp::spawn(Options {
        extra_env: vec![
            ("WAITING_ROOM_POLLS_PER_SEC", POLLS_PER_SEC.to_string()),
            ("WAITING_ROOM_HOLDS_PER_SEC", HOLDS_PER_SEC.to_string()),
            ("WAITING_ROOM_REFRESH_MS", "10".to_string()),
        ],
        ..options()
    })
    .await;
    let client = Client::of(&app, 8);
    let opens_in = chrono::Duration::seconds(30);
    let opens_at = chrono::Utc::now() + opens_in;
    let showtime = create(
        &app,
        json!({"capacity": 5, "waiting_room": {
            "opens_at": opens_at.to_rfc3339(),
            "overbook_pct": 0,
            "admission_secs": 60,
        }}),
    )
    .await;
    let mut tickets = Vec::new();
    for user in 1..=JOINERS {
        let a = client.join(showtime, user).await;
        assert_eq!(a.queue_status(), "waiting", "{}", a.body);
        tickets.push(a.str("ticket").expect("a ticket"));
    }
    // Once the whole line has joined (and this process's snapshot has seen it), every
    // joiner asks: when is each told to come back? The server counts the delay from its
    // own clock, somewhere between the moment a request left and the moment its answer
    // came, so each answer gives a window, in ms from the opening.
    let told_window = |a: &Answer, left: chrono::DateTime<chrono::Utc>| {
        let ms = a.body["poll_after_ms"]
            .as_u64()
            .expect("a waiting answer paces") as i64;
        let after_opening = |at: chrono::DateTime<chrono::Utc>| (at - opens_at).num_milliseconds();
        (
            after_opening(left) + ms,
            after_opening(chrono::Utc::now()) + ms,
        )
    };
    // Once no join has come over a rate window since this process last read the room
    // (every 10 ms here), the line is taken as it is, 40 joiners, and every answer puts
    // its asker within 12.25 s of the opening. Before that, joins still counted as
    // coming spread the line wider, and by how much changes as the rate is re-measured:
    // the whole line asks in rounds until two rounds in a row tell every joiner the same
    // time, and the check is on that settled round. The rounds start more than two rate
    // windows apart, so the process measures the rate again between any two of them:
    // once no join came over a window that measure is 0, and a rate still counting joins
    // cannot be told twice. (Gating on one joiner's answer was not enough: a joiner low in
    // the lottery is told a short delay even while the line is wide; nor were rounds back
    // to back: two of them fit in one window, and agreed on the rate of the joins.)
    let (line, asker, told_window) = (&tickets, &client, &told_window);
    let round = move || async move {
        let mut told = Vec::new();
        for (i, ticket) in line.iter().enumerate() {
            let left = chrono::Utc::now();
            let a = asker.me(showtime, i as i64 + 1, Some(ticket)).await;
            assert_eq!(a.queue_status(), "waiting", "{}", a.body);
            told.push((told_window(&a, left), i as i64 + 1));
        }
        told
    };
    // The same time, up to the clock's few ms: the two windows (nearly) overlap.
    let same = |(a_from, a_to): (i64, i64), (b_from, b_to): (i64, i64)| {
        a_from - 50 <= b_to && b_from - 50 <= a_to
    };
    let settled_by = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut rounds = tokio::time::interval(RATE_WINDOW * 2 + Duration::from_millis(50));
    rounds.tick().await;
    let mut last = round().await;
    let told = loop {
        rounds.tick().await;
        let now = round().await;
        if last
            .iter()
            .zip(&now)
            .all(|((was, _), (is, _))| same(*was, *is))
        {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < settled_by,
            "the line's answers never settled: {last:?} then {now:?}"
        );
        last = now;
    };
    for &((from, to), user) in &told {
        // At the opening, within the line's spread (and the clock's few ms): the front,
        // or the rest once the front has had its turn, nobody in between.
        assert!(
            same((from, to), (0, FRONT_DONE_MS)) || same((from, to), (REST_FROM_MS, LAST_MS)),
            "user {user} told to come back {from}..{to} ms after the opening"
        );
    }
    // Ordered by the middle of each window.
    let mut told: Vec<(i64, i64)> = told
        .into_iter()
        .map(|((from, to), user)| ((from + to) / 2, user))
        .collect();
    // The room opens now: the order they were told to come back in is the order of
    // their places (up to a few ms of request timing between close neighbours).
    open_now(&app, showtime, 0, 60).await;
    eventually(Duration::from_secs(5), "the room open", || async {
        let a = client.me(showtime, 1, Some(&tickets[0])).await;
        (a.queue_status() != "waiting").then_some(())
    })
    .await;
    let mut places = HashMap::new();
    let mut admitted = Vec::new();
    for (i, ticket) in tickets.iter().enumerate() {
        let user = i as i64 + 1;
        let a = client.me(showtime, user, Some(ticket)).await;
        let place = a.body["place"].as_u64().expect("a place after the opening");
        let status = a.queue_status();
        if status == "admitted" {
            assert!(a.body["poll_after_ms"].is_null(), "{}", a.body);
            admitted.push((user, a.str("admission").expect("an admission")));
        } else {
            assert_eq!(status, "in_line", "{}", a.body);
            let ms = a.body["poll_after_ms"].as_u64().expect("in line paces");
            assert!((1_000..=60_000).contains(&ms), "{}", a.body);
        }
        places.insert(user, place);
    }
    // The check is on ranks, so that a few ms of request timing between close neighbours
    // do not count: the order the crowd was told to come back in follows the places
    // (Spearman's rho; an order unrelated to the lottery has rho about 0 +- 0.16 for 40
    // buyers).
    told.sort_unstable();
    let in_told_order: Vec<u64> = told.iter().map(|(_, user)| places[user]).collect();
    let rho = spearman(&in_told_order);
    assert!(
        rho >= 0.9,
        "the order buyers were told to come back in does not follow their places: rho \
         {rho}, {told:?}, {places:?}"
    );

    // Every seat sold (the admitted buy and pay): those still in line are told
    // sold_out, with nothing left to wait for.
    assert_eq!(admitted.len(), 5, "5 seats, no overbooking");
    for (user, admission) in &admitted {
        let held = client
            .reserve(showtime, *user, Some(admission), None, None)
            .await;
        assert_eq!(held.status, StatusCode::OK, "{}", held.body);
        let id = held.str("reservation_id").expect("a reservation");
        let paid = client.pay(&id, *user).await;
        assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    }
    let (&waiter, _) = places
        .iter()
        .find(|(_, place)| **place >= 5)
        .expect("35 in line");
    let ticket = &tickets[waiter as usize - 1];
    eventually(Duration::from_secs(5), "the line told sold_out", || async {
        let a = client.me(showtime, waiter, Some(ticket)).await;
        (a.queue_status() == "sold_out").then_some(())
    })
    .await;
    let a = client.me(showtime, waiter, Some(ticket)).await;
    assert_eq!(a.queue_status(), "sold_out", "{}", a.body);
    assert!(a.body["poll_after_ms"].is_null(), "{}", a.body);
    app.finish().await;
}

/// A poll sends its ticket back as it came while the ticket still says all a new one
/// would (the caller's place, signed under the current secret, half of its day left),
/// and signs a new one otherwise: a crowd polling its place costs no signature per poll.
#[tokio::test]
async fn a_poll_sends_back_a_ticket_that_still_says_it_all_and_renews_one_that_does_not() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 2);
    let showtime = create(
        &app,
        json!({"capacity": 1, "waiting_room": {
            "opens_at": at(chrono::Duration::seconds(-1)),
            "overbook_pct": 0,
            "admission_secs": 60,
        }}),
    )
    .await;
    let st = ShowtimeId::new(showtime).unwrap();
    let two = UserId::new(2).unwrap();
    assert_eq!(client.join(showtime, 1).await.queue_status(), "admitted");
    let joined = client.join(showtime, 2).await;
    assert_eq!(joined.queue_status(), "in_line", "{}", joined.body);
    let ticket = joined.str("ticket").expect("a ticket");
    let now = flash_sale_runtime::now();
    let checked = |ticket: &str| {
        app.app
            .passes
            .check_ticket(ticket, two, st, now)
            .expect("a good ticket")
    };
    assert_eq!(checked(&ticket).place, Some(1));
    let room = checked(&ticket).room;
    assert!(room.is_some(), "a ticket names its room");

    // Polled with it, or with one of 20 hours left (a new one would say 24): the same
    // ticket back, to the byte.
    let twenty_hours =
        app.app
            .passes
            .ticket(two, st, Some(1), room, UnixMillis(now.0 + 20 * 3_600_000));
    for kept in [ticket, twenty_hours] {
        let polled = client.me(showtime, 2, Some(&kept)).await;
        assert_eq!(polled.queue_status(), "in_line", "{}", polled.body);
        assert_eq!(polled.str("ticket").as_deref(), Some(kept.as_str()));
    }

    // Under half a day left, or no place where the answer knows one: a new ticket,
    // naming the place and good for a day.
    let day = 24 * 3600 * 1000;
    for (old, what) in [
        (
            app.app
                .passes
                .ticket(two, st, Some(1), room, UnixMillis(now.0 + 3_600_000)),
            "an hour left",
        ),
        (
            app.app
                .passes
                .ticket(two, st, None, room, UnixMillis(now.0 + day)),
            "no place (signed before the opening)",
        ),
        (
            app.app
                .passes
                .ticket(two, st, Some(1), None, UnixMillis(now.0 + day)),
            "no room (signed before tickets named theirs)",
        ),
    ] {
        let polled = client.me(showtime, 2, Some(&old)).await;
        assert_eq!(polled.queue_status(), "in_line", "{what}: {}", polled.body);
        let renewed = polled.str("ticket").expect("a ticket");
        assert_ne!(renewed, old, "{what}");
        let renewed = checked(&renewed);
        assert_eq!((renewed.place, renewed.room), (Some(1), room), "{what}");
        assert!(
            renewed.until.0 >= now.0 + day - 60_000,
            "{what}: {renewed:?}"
        );
    }
    app.finish().await;
}

// ---------------------------------------------------------------------------------
// 3. Admissions: only the rightful, unused, unexpired one is taken.
// ---------------------------------------------------------------------------------

/// A buyer's place in a room: their ticket, and their admission once admitted.
#[derive(Debug, Clone)]
struct Standing {
    user: i64,
    status: String,
    place: Option<u64>,
    /// `None` when not in line.
    ticket: Option<String>,
    admission: Option<String>,
    admitted_until: Option<String>,
}

impl Standing {
    fn of(user: i64, a: &Answer) -> Self {
        Self {
            user,
            status: a.queue_status(),
            place: a.body["place"].as_u64(),
            ticket: a.str("ticket"),
            admission: a.str("admission"),
            admitted_until: a.str("admitted_until"),
        }
    }

    fn admission(&self) -> &str {
        self.admission.as_deref().expect("admitted")
    }

    fn place(&self) -> u64 {
        self.place.expect("a place")
    }

    /// The status and the place, to compare at once.
    fn at(&self) -> (&str, Option<u64>) {
        (self.status.as_str(), self.place)
    }

    fn ticket(&self) -> &str {
        self.ticket.as_deref().expect("a ticket")
    }
}

/// Joins, then asks where the buyer stands without a ticket (from the store, not from
/// the process's snapshot of the room, which may be up to a refresh old).
async fn joined(client: &Client, showtime: i64, user: i64) -> Standing {
    let join = client.join(showtime, user).await;
    assert_eq!(join.status, StatusCode::OK, "{}", join.body);
    assert!(join.str("ticket").is_some(), "{}", join.body);
    standing(client, showtime, user).await
}

async fn standing(client: &Client, showtime: i64, user: i64) -> Standing {
    Standing::of(user, &client.me(showtime, user, None).await)
}

/// What a refused reserve must leave as it was: the seats and the room of each
/// showtime, each buyer's standing (status, place, admission deadline), and their
/// reservations.
async fn everything(
    app: &TestApp,
    client: &Client,
    showtimes: &[i64],
    buyers: &[(i64, i64)],
) -> Vec<Value> {
    // The standings first: asking advances the room (admission is lazy), so that the
    // room's counts read after them are settled.
    let mut seen = vec![];
    for &(st, user) in buyers {
        let s = standing(client, st, user).await;
        let (_, mine) = app.get(&format!("/me/reservations?user_id={user}")).await;
        seen.push(json!([
            st,
            user,
            s.status,
            s.place,
            s.admitted_until,
            mine["reservations"]
        ]));
    }
    for &st in showtimes {
        let c = room_counts(app, st).await;
        seen.push(json!([
            st,
            c.available,
            c.held,
            c.sold,
            c.served,
            c.admitted_live,
            c.in_line
        ]));
    }
    seen
}

/// A showtime of `capacity` seats, up to `max_per_user` each, behind a room open now.
async fn room_open_now(
    app: &TestApp,
    capacity: u32,
    max_per_user: u32,
    overbook: u32,
    admission_secs: u32,
) -> i64 {
    create(
        app,
        json!({"capacity": capacity, "max_per_user": max_per_user, "waiting_room": {
            "overbook_pct": overbook,
            "admission_secs": admission_secs,
        }}),
    )
    .await
}

/// `Admission-Token` is "ignored without" a waiting room (openapi.yaml). Before, any
/// token was checked first, whatever the showtime: buyers still sending the admission of
/// a room the operator has since removed, or a stale header, were refused 403
/// `not_admitted` by a sale anyone may buy from, and an unknown showtime answered 403
/// instead of 404.
#[tokio::test]
async fn an_admission_token_is_ignored_by_a_showtime_without_a_room() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 4, 1, 0, 60).await;
    let first = joined(&client, st, 1).await;
    assert_eq!(first.status, "admitted", "{first:?}");
    let (status, answer) = app
        .change_showtime(st, json!({"waiting_room": null}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let st_id = ShowtimeId::new(st).unwrap();
    let expired = app.app.passes.admission(
        UserId::new(3).unwrap(),
        st_id,
        2,
        UnixMillis(flash_sale_runtime::now().0 - 1_000),
    );
    // (user, Admission-Token): the room's own admission, junk, an expired one.
    let buyers = [
        (1, first.admission().to_string()),
        (2, "not a token".to_string()),
        (3, expired),
    ];
    for (user, token) in &buyers {
        let held = client.reserve(st, *user, Some(token), None, None).await;
        assert_eq!(held.status, StatusCode::OK, "user {user}: {}", held.body);
    }
    assert_eq!(app.seats(st).await, (1, 3, 0));

    // A showtime that never had a room, and one that does not exist.
    let plain = app.create_showtime(2).await;
    let held = client
        .reserve(plain, 4, Some("not a token"), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    let unknown = client
        .reserve(plain + 1_000, 4, Some("not a token"), None, None)
        .await;
    assert_error(&unknown.pair(), StatusCode::NOT_FOUND, "not_found");
    app.finish().await;
}

#[tokio::test]
async fn forged_expired_foreign_and_reused_admissions_are_refused_and_change_nothing() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 8);
    // 6 seats, up to 4 each, no overbooking: 6 admitted at a time.
    let a = room_open_now(&app, 6, 4, 0, 60).await;
    let b = room_open_now(&app, 6, 4, 0, 60).await;
    let mut line = vec![];
    for user in 1..=7 {
        line.push(joined(&client, a, user).await);
    }
    for (i, s) in line.iter().enumerate().take(6) {
        assert_eq!(
            (s.status.as_str(), s.place()),
            ("admitted", i as u64),
            "{s:?}"
        );
        assert!(s.admission.is_some() && s.admitted_until.is_some(), "{s:?}");
    }
    assert_eq!((line[6].status.as_str(), line[6].place()), ("in_line", 6));
    assert!(line[6].admission.is_none());
    let one = line[0].clone();
    let one_in_b = joined(&client, b, 1).await;
    assert_eq!(one_in_b.status, "admitted", "{one_in_b:?}");

    let a_id = ShowtimeId::new(a).unwrap();
    let later = UnixMillis(flash_sale_runtime::now().0 + 600_000);
    let earlier = UnixMillis(flash_sale_runtime::now().0 - 1_000);
    let other_secret = RoomPasses::new(b"not this service's secret, 32+ bytes long", None).unwrap();
    let mut tampered = one.admission().to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    // (user, showtime, Admission-Token, what it is)
    let refusals: Vec<(i64, i64, Option<String>, &str)> = vec![
        (1, a, None, "no admission"),
        (1, a, Some("not a token".into()), "junk"),
        (1, a, Some(tampered), "a tampered signature"),
        (
            1,
            a,
            Some(other_secret.admission(UserId::new(1).unwrap(), a_id, 0, later)),
            "signed with another secret",
        ),
        (
            1,
            a,
            Some(
                app.app
                    .passes
                    .admission(UserId::new(1).unwrap(), a_id, 0, earlier),
            ),
            "expired (signed by the server's own secret, exp a second ago)",
        ),
        (1, a, Some(line[1].admission().into()), "another user's"),
        (1, b, Some(one.admission().into()), "another showtime's"),
        (
            1,
            a,
            Some(one_in_b.admission().into()),
            "another showtime's, the other way",
        ),
        (1, a, Some(one.ticket().into()), "a queue ticket"),
        (
            7,
            a,
            Some(
                app.app
                    .passes
                    .admission(UserId::new(7).unwrap(), a_id, 6, later),
            ),
            "validly signed for a buyer in line, not admitted",
        ),
        (
            99,
            a,
            Some(
                app.app
                    .passes
                    .admission(UserId::new(99).unwrap(), a_id, 0, later),
            ),
            "validly signed for someone not in line",
        ),
    ];
    let watched = [(a, 1), (a, 2), (a, 7), (a, 99), (b, 1)];
    let before = everything(&app, &client, &[a, b], &watched).await;
    for (user, st, pass, what) in &refusals {
        for quantity in [None, Some(3)] {
            let answer = client
                .reserve(*st, *user, pass.as_deref(), quantity, None)
                .await;
            assert_eq!(
                (answer.status, answer.body["error"].as_str()),
                (StatusCode::FORBIDDEN, Some("not_admitted")),
                "{what}: {}",
                answer.body
            );
            assert_error(&answer.pair(), StatusCode::FORBIDDEN, "not_admitted");
        }
        assert_eq!(
            everything(&app, &client, &[a, b], &watched).await,
            before,
            "refusing {what} changed something"
        );
    }

    // The rightful owner still uses theirs: one admission covers a group of 3.
    let held = client
        .reserve(a, 1, Some(one.admission()), Some(3), None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    assert_eq!(held.body["quantity"], 3, "{}", held.body);
    let first_hold = held.str("reservation_id").unwrap();
    assert_eq!(app.seats(a).await, (3, 3, 0));
    assert_eq!(standing(&client, a, 1).await.status, "passed");

    // A group too large, or larger than what is left, does not use an admission up.
    let too_many = client
        .reserve(a, 4, Some(line[3].admission()), Some(5), None)
        .await;
    assert_error(&too_many.pair(), StatusCode::CONFLICT, "too_many_seats");
    let not_enough = client
        .reserve(a, 4, Some(line[3].admission()), Some(4), None)
        .await;
    assert_error(&not_enough.pair(), StatusCode::CONFLICT, "not_enough_seats");
    assert_eq!(standing(&client, a, 4).await.status, "admitted");
    let fits = client
        .reserve(a, 4, Some(line[3].admission()), Some(1), None)
        .await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.body);
    assert_eq!(app.seats(a).await, (2, 4, 0));

    // Reused: the hold cancelled, the same admission is refused.
    let cancelled = client.cancel(&first_hold, 1).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "CANCELLED");
    assert_eq!(app.seats(a).await, (5, 1, 0));
    // The seats the cancel returned let the next in line in.
    let seven = standing(&client, a, 7).await;
    assert_eq!(
        (seven.status.as_str(), seven.place()),
        ("admitted", 6),
        "{seven:?}"
    );
    let watched_after = [(a, 1), (a, 2), (a, 7)];
    let before = everything(&app, &client, &[a], &watched_after).await;
    let reused = client
        .reserve(a, 1, Some(one.admission()), None, None)
        .await;
    assert_error(&reused.pair(), StatusCode::FORBIDDEN, "not_admitted");
    assert_eq!(
        everything(&app, &client, &[a], &watched_after).await,
        before
    );
    assert_eq!(standing(&client, a, 1).await.status, "passed");

    // An Idempotency-Key: the replay answers the same hold, marked as a replay, with or
    // without the admission (a replay is answered without checking it again).
    let first = client
        .reserve(a, 2, Some(line[1].admission()), None, Some("two-1"))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(!first.replayed);
    let replay = client
        .reserve(a, 2, Some(line[1].admission()), None, Some("two-1"))
        .await;
    assert!(replay.replayed, "{replay:?}");
    assert_eq!(replay.pair(), first.pair());
    let bare_replay = client.reserve(a, 2, None, None, Some("two-1")).await;
    assert!(bare_replay.replayed, "{bare_replay:?}");
    assert_eq!(bare_replay.pair(), first.pair());
    assert_eq!(app.seats(a).await, (4, 2, 0), "one hold for three answers");
    // A refusal under a key is not recorded: the key then takes the rightful admission.
    let refused = client
        .reserve(a, 3, Some(line[1].admission()), None, Some("three-1"))
        .await;
    assert_error(&refused.pair(), StatusCode::FORBIDDEN, "not_admitted");
    let taken = client
        .reserve(a, 3, Some(line[2].admission()), None, Some("three-1"))
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);
    assert!(!taken.replayed);
    assert_eq!(app.seats(a).await, (3, 3, 0));
    // Showtime b never moved.
    assert_eq!(app.seats(b).await, (6, 0, 0));
    app.finish().await;
}

#[tokio::test]
async fn an_admission_that_ran_out_is_refused_and_the_next_in_line_is_let_in() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    // One seat, no overbooking, the shortest admission (10 s).
    let st = room_open_now(&app, 1, 1, 0, 10).await;
    let first = joined(&client, st, 1).await;
    let second = joined(&client, st, 2).await;
    assert_eq!(first.status, "admitted", "{first:?}");
    assert_eq!(second.status, "in_line", "{second:?}");
    let until = chrono::DateTime::parse_from_rfc3339(first.admitted_until.as_deref().unwrap())
        .expect("admitted_until is RFC 3339");
    let left = (until.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .expect("admitted_until is ahead");
    assert!(left <= Duration::from_secs(10), "admitted until {until}");

    // The admission runs out unused: its holder has passed, the next is admitted.
    eventually(
        Duration::from_secs(20),
        "the admission to run out",
        || async { (standing(&client, st, 1).await.status == "passed").then_some(()) },
    )
    .await;
    let second = standing(&client, st, 2).await;
    assert_eq!(second.status, "admitted", "{second:?}");

    let before = everything(&app, &client, &[st], &[(st, 1), (st, 2)]).await;
    // As the server signed it (expired), and re-signed to run past the store's
    // deadline: the store refuses it all the same.
    let resigned = app.app.passes.admission(
        UserId::new(1).unwrap(),
        ShowtimeId::new(st).unwrap(),
        first.place(),
        UnixMillis(flash_sale_runtime::now().0 + 600_000),
    );
    for pass in [first.admission(), resigned.as_str()] {
        let answer = client.reserve(st, 1, Some(pass), None, None).await;
        assert_error(&answer.pair(), StatusCode::FORBIDDEN, "not_admitted");
    }
    assert_eq!(
        everything(&app, &client, &[st], &[(st, 1), (st, 2)]).await,
        before
    );
    let taken = client
        .reserve(st, 2, Some(second.admission()), None, None)
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.body);
    assert_eq!(app.seats(st).await, (0, 1, 0));
    app.finish().await;
}

#[tokio::test]
async fn a_buyer_who_passed_without_a_seat_joins_again_at_the_back_and_no_other_place_moves() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    // Two seats, one a buyer, no overbooking, the shortest admission (10 s).
    let st = room_open_now(&app, 2, 1, 0, 10).await;
    let mut first = vec![];
    for user in 1..=4 {
        first.push(joined(&client, st, user).await);
    }
    let places = |standings: &[Standing]| {
        standings
            .iter()
            .map(|s| (s.user, s.status.clone(), s.place))
            .collect::<Vec<_>>()
    };
    let two = standing(&client, st, 2).await;
    let held = client
        .reserve(st, 2, Some(two.admission()), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    let hold = held.str("reservation_id").unwrap();

    // Buyer 1's admission runs out unused; the seat it kept lets buyer 3 in.
    eventually(
        Duration::from_secs(20),
        "buyer 1's admission to run out",
        || async { (standing(&client, st, 1).await.status == "passed").then_some(()) },
    )
    .await;
    let mut line = vec![];
    for user in 1..=4 {
        line.push(standing(&client, st, user).await);
    }
    assert_eq!(
        places(&line),
        [
            (1, "passed".into(), Some(0)),
            (2, "passed".into(), Some(1)),
            (3, "admitted".into(), Some(2)),
            (4, "in_line".into(), Some(3)),
        ],
    );

    // Buyer 1 holds no seat: joining again queues them at the back, behind buyer 4.
    let again = client.join(st, 1).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let again = Standing::of(1, &again);
    assert_eq!(again.at(), ("in_line", Some(4)), "{again:?}");
    // A ticket for the new place, and the old one now finds the new place too.
    assert_ne!(again.ticket(), first[0].ticket());
    let old_ticket = client.me(st, 1, Some(first[0].ticket())).await;
    assert_eq!(
        (old_ticket.queue_status(), old_ticket.body["place"].as_u64()),
        ("in_line".to_owned(), Some(4)),
        "{}",
        old_ticket.body
    );
    // Buyer 2 holds a seat: joining again changes nothing.
    let holding = Standing::of(2, &client.join(st, 2).await);
    assert_eq!(holding.at(), ("passed", Some(1)));
    let mut after = vec![];
    for user in 2..=4 {
        after.push(standing(&client, st, user).await);
    }
    assert_eq!(places(&after), places(&line[1..]), "a place moved");
    assert_eq!(after[1].admission, line[2].admission);

    // Buyer 2's hold cancelled: its seat lets buyer 4 in, and buyer 2, holding nothing
    // now, joins again behind buyer 1.
    let cancelled = client.cancel(&hold, 2).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    let four = standing(&client, st, 4).await;
    assert_eq!(four.at(), ("admitted", Some(3)), "{four:?}");
    let two = Standing::of(2, &client.join(st, 2).await);
    assert_eq!(two.at(), ("in_line", Some(5)), "{two:?}");
    let one = standing(&client, st, 1).await;
    assert_eq!(one.at(), ("in_line", Some(4)), "{one:?}");
    // Joining once more keeps the new place.
    let two_again = Standing::of(2, &client.join(st, 2).await);
    assert_eq!(two_again.place, Some(5), "{two_again:?}");
    app.finish().await;
}

/// Once a room has opened, its opening cannot move: a later `opens_at` would send new
/// joiners back to the lottery, drawing places among those already served (moving the
/// served ones back into the line, to be admitted twice). The operator is told 409
/// `room_open`, and the room, its line and its admissions stay as they were.
#[tokio::test]
async fn an_open_rooms_opening_cannot_move_and_its_line_stays_as_it_was() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    // Two seats, no overbooking: buyers 1 and 2 are admitted, 3 and 4 wait.
    let st = room_open_now(&app, 2, 1, 0, 60).await;
    let mut line = vec![];
    for user in 1..=4 {
        line.push(joined(&client, st, user).await);
    }
    let stands = |standings: &[Standing]| {
        standings
            .iter()
            .map(|s| (s.status.clone(), s.place))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        stands(&line),
        [
            ("admitted".into(), Some(0)),
            ("admitted".into(), Some(1)),
            ("in_line".into(), Some(2)),
            ("in_line".into(), Some(3)),
        ]
    );
    let (_, before) = app.get(&format!("/showtimes/{st}")).await;

    let later =
        json!({"waiting_room": {"opens_at": at(chrono::Duration::hours(1)), "overbook_pct": 0}});
    let (status, answer) = app.change_showtime(st, later, None).await;
    assert_error(&(status, answer), StatusCode::CONFLICT, "room_open");
    let (_, after) = app.get(&format!("/showtimes/{st}")).await;
    assert_eq!(after["waiting_room"], before["waiting_room"]);

    // A newcomer queues at the back, by arrival; nobody's place or admission moved.
    let five = Standing::of(5, &client.join(st, 5).await);
    assert_eq!(five.at(), ("in_line", Some(4)), "{five:?}");
    let mut now = vec![];
    for user in 1..=4 {
        now.push(standing(&client, st, user).await);
    }
    assert_eq!(stands(&now), stands(&line));
    for (was, is) in line.iter().zip(&now) {
        assert_eq!(was.admission, is.admission, "buyer {}", was.user);
    }
    // Its other settings still change, the opening left out (or given as it is).
    let (status, answer) = app
        .change_showtime(st, json!({"waiting_room": {"overbook_pct": 50}}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["waiting_room"]["overbook_pct"], 50, "{answer}");
    assert_eq!(
        answer["waiting_room"]["opens_at"],
        before["waiting_room"]["opens_at"]
    );
    app.finish().await;
}

/// A closed room (every seat paid) opens again when a seat comes back without an
/// operator's change: here an order the database refuses (the buyer already had one
/// under another reservation, which Redis had forgotten), whose seat goes back on sale.
/// The buyer told `sold_out` is admitted and buys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_room_opens_again_when_a_refused_order_gives_its_seat_back() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 2, 1, 0, 60).await;
    // Buyer 1's earlier order, in the database only.
    sqlx::query(
        "INSERT INTO orders (reservation_id, showtime_id, user_id, paid_at, quantity)
         VALUES ($1, $2, 1, now(), 1)",
    )
    .bind(format!("{st}-1"))
    .bind(st)
    .execute(&app.db)
    .await
    .unwrap();
    // Orders wait at the database's door until the test lets them in.
    let gate = DoorGate::shut(
        &app.db,
        "orders_wait_at_the_gate",
        "BEFORE INSERT ON orders FOR EACH STATEMENT",
    )
    .await;

    let mut paid = vec![];
    for user in 1..=2 {
        let admitted = joined(&client, st, user).await;
        assert_eq!(admitted.status, "admitted", "{admitted:?}");
        let held = client
            .reserve(st, user, Some(admitted.admission()), None, None)
            .await;
        assert_eq!(held.status, StatusCode::OK, "{}", held.body);
        let id = held.str("reservation_id").unwrap();
        let answer = client.pay(&id, user).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        paid.push(id);
    }
    let three = client.join(st, 3).await;
    assert_eq!(three.queue_status(), "sold_out", "{}", three.body);
    assert_eq!(app.seats(st).await, (0, 0, 2));
    for id in &paid {
        assert_eq!(
            app.status_of(id).await,
            "PAID",
            "the orders wait at the gate"
        );
    }

    gate.open().await;
    eventually(
        Duration::from_secs(30),
        "buyer 1's order refused",
        || async { (app.status_of(&paid[0]).await == "REFUSED").then_some(()) },
    )
    .await;
    assert_eq!(
        app.seats(st).await,
        (1, 0, 1),
        "the refused seat is on sale"
    );
    let admitted = eventually(Duration::from_secs(10), "buyer 3 admitted", || async {
        let three = standing(&client, st, 3).await;
        (three.status == "admitted").then_some(three)
    })
    .await;
    let held = client
        .reserve(st, 3, Some(admitted.admission()), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    assert_eq!(app.seats(st).await, (0, 1, 1));
    app.finish().await;
}

/// A `sold_out` answer uses the admission up, also when the process already knows the
/// showtime is sold out: an admitted buyer is answered by the store, not by that memory
/// (which would leave their admission standing, kept from the next in line).
#[tokio::test]
async fn a_sold_out_answer_uses_the_admission_up_even_when_the_process_knew_it() {
    let app = TestApp::spawn(Options {
        sold_out_cache_ms: Some(60_000),
        ..options()
    })
    .await;
    let client = Client::of(&app, 4);
    // One seat and 200% overbooking: three admitted at once.
    let st = room_open_now(&app, 1, 1, 200, 60).await;
    let mut admitted = vec![];
    for user in 1..=3 {
        let standing = joined(&client, st, user).await;
        assert_eq!(standing.status, "admitted", "{standing:?}");
        admitted.push(standing);
    }
    let held = client
        .reserve(st, 1, Some(admitted[0].admission()), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    // Buyer 2 learns it from the store; then the process remembers it for a minute.
    for (user, was) in [(2, &admitted[1]), (3, &admitted[2])] {
        let refused = client
            .reserve(st, user, Some(was.admission()), None, None)
            .await;
        assert_error(&refused.pair(), StatusCode::CONFLICT, "sold_out");
        let after = standing(&client, st, user).await;
        assert_eq!(after.at(), ("passed", was.place), "buyer {user}");
    }
    assert_eq!(app.seats(st).await, (0, 1, 0));
    app.finish().await;
}

/// While the sale does not sell (here paused), the room admits nobody: an admission
/// then would only meet a 409 `sale_paused` and run out, the front of the line losing its
/// turn. Resumed, the line is admitted from its front.
#[tokio::test]
async fn a_paused_sale_admits_nobody_and_its_line_keeps_its_turn_for_the_resumption() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 2, 1, 0, 60).await;
    let (status, answer) = app.change_showtime(st, json!({"paused": true}), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    for user in 1..=3 {
        let joined = joined(&client, st, user).await;
        assert_eq!(
            joined.at(),
            ("in_line", Some(user as u64 - 1)),
            "{joined:?}"
        );
    }
    let (status, answer) = app
        .change_showtime(st, json!({"paused": false}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let mut line = vec![];
    for user in 1..=3 {
        line.push(standing(&client, st, user).await);
    }
    let stands: Vec<_> = line.iter().map(Standing::at).collect();
    assert_eq!(
        stands,
        [
            ("admitted", Some(0)),
            ("admitted", Some(1)),
            ("in_line", Some(2))
        ]
    );
    let held = client
        .reserve(st, 1, Some(line[0].admission()), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    app.finish().await;
}

/// Once the sale has closed there is nothing left to wait for: the room closes and the
/// line is told `sold_out` (seats left or not); moving the window opens it again.
#[tokio::test]
async fn a_sale_that_closes_closes_its_room_and_tells_the_line() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 1, 1, 0, 60).await;
    assert_eq!(joined(&client, st, 1).await.status, "admitted");
    assert_eq!(joined(&client, st, 2).await.at(), ("in_line", Some(1)));
    let (status, answer) = app
        .change_showtime(st, json!({"close_now": true}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let two = standing(&client, st, 2).await;
    assert_eq!(two.status, "sold_out", "{two:?}");
    let (status, answer) = app
        .change_showtime(st, json!({"sale_closes_at": null}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Each process sees it at its next read of the room (WAITING_ROOM_REFRESH_MS).
    eventually(Duration::from_secs(5), "the room open again", || async {
        let two = standing(&client, st, 2).await;
        (two.at() == ("in_line", Some(1))).then_some(())
    })
    .await;
    app.finish().await;
}

/// A buyer who passed, holding no seat, joins again at the back even when their join is
/// the very step that opens a closed room again (the room read as closed before it
/// advanced, and they were told `passed`).
#[tokio::test]
async fn a_buyer_who_passed_joins_again_at_the_step_that_opens_a_closed_room() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 1, 1, 0, 60).await;
    // Buyer 1 holds the seat and cancels: passed, holding nothing.
    let one = joined(&client, st, 1).await;
    let held = client
        .reserve(st, 1, Some(one.admission()), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    let cancelled = client.cancel(&held.str("reservation_id").unwrap(), 1).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(standing(&client, st, 1).await.at(), ("passed", Some(0)));

    // The sale closes, and the next read of the room from the store closes it in Redis;
    // then the window moves.
    let (status, answer) = app
        .change_showtime(st, json!({"close_now": true}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(standing(&client, st, 1).await.at(), ("passed", Some(0)));
    let room = format!("{}:{{{st}}}:room", app.iso.prefix);
    let mut conn = app.adapters.seats.connection();
    let closed: Option<String> = redis::cmd("HGET")
        .arg(&room)
        .arg("closed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(closed.as_deref(), Some("1"), "the room is closed in Redis");
    let (status, answer) = app
        .change_showtime(st, json!({"sale_closes_at": null}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The first join that reaches Redis opens the room again and puts buyer 1 at the
    // back, where the seat is theirs (the process may say `sold_out` from its snapshot
    // of the room until its next read).
    let again = eventually(
        Duration::from_secs(5),
        "a join that reaches the room",
        || async {
            let join = client.join(st, 1).await;
            assert_eq!(join.status, StatusCode::OK, "{}", join.body);
            let again = Standing::of(1, &join);
            (again.status != "sold_out").then_some(again)
        },
    )
    .await;
    assert_eq!(again.at(), ("admitted", Some(1)), "{again:?}");
    app.finish().await;
}

/// The timer sets every room again from its row: a room update that was lost (here the
/// room in Redis says paused while the row is on sale) follows the row. Its first round
/// is at a process's start, which is what this test watches: the room is broken while no
/// process runs, then one starts (its next round is an hour away).
#[tokio::test]
async fn the_timer_sets_a_room_again_from_its_row() {
    let mut before = TestApp::spawn(options()).await;
    let st = room_open_now(&before, 1, 1, 0, 60).await;
    before.stop().await;
    let mut conn = before.adapters.seats.connection();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:{{{st}}}:room", before.iso.prefix))
        .arg("sale_paused")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();

    let app = TestApp::spawn_on(before.iso.clone(), options()).await;
    let client = Client::of(&app, 4);
    let join = client.join(st, 1).await;
    assert_eq!(join.status, StatusCode::OK, "{}", join.body);
    // Only the timer admits here: a read of the room from the store (as `standing`
    // makes) finds it paused until the timer has set it from its row.
    eventually(Duration::from_secs(10), "buyer 1 admitted", || async {
        (standing(&client, st, 1).await.status == "admitted").then_some(())
    })
    .await;
    app.finish().await;
}

/// One room the timer cannot set (broken keys; on a Redis Cluster, a shard that is down)
/// does not keep it from setting the others: a lost update of a later room still follows
/// its row.
#[tokio::test]
async fn a_room_the_timer_cannot_set_does_not_stop_it_setting_the_others() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let broken = room_open_now(&app, 1, 1, 0, 60).await;
    let fine = room_open_now(&app, 1, 1, 0, 60).await;
    assert!(
        broken < fine,
        "the broken room comes first in the timer's round"
    );
    let room = |st: i64| format!("{}:{{{st}}}:room", app.iso.prefix);
    let mut conn = app.adapters.seats.connection();
    // Its room and its seats both broken: the round lists showtimes from the catalog
    // alone, and sets each room on its own.
    let seats = format!("{}:{{{broken}}}:seats", app.iso.prefix);
    let _: () = redis::pipe()
        .del(room(broken))
        .set(room(broken), "not a hash")
        .del(&seats)
        .set(&seats, "not a hash")
        .hset(room(fine), "sale_paused", 1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let join = client.join(fine, 1).await;
    assert_eq!(join.status, StatusCode::OK, "{}", join.body);

    let round = app.app.advance_rooms().await.unwrap();
    assert_eq!(
        standing(&client, fine, 1).await.status,
        "admitted",
        "the later room was set from its row ({round:?})"
    );
    assert_eq!(round.advanced, 1, "{round:?}");
    assert_eq!(
        round
            .failed
            .iter()
            .map(|(st, _)| st.get())
            .collect::<Vec<_>>(),
        [broken],
        "{round:?}"
    );
    // The audit (the scheduled function on Lambda) names it and is not clean.
    let audit = flash_sale_reconcile::run(&app.app, None, false, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(audit.waiting_rooms_advanced, 1, "{audit:?}");
    let named: Vec<_> = audit
        .waiting_rooms_not_advanced
        .iter()
        .map(|u| u.showtime_id)
        .collect();
    assert_eq!(named, [broken], "{audit:?}");
    assert!(!audit.is_clean());
    app.finish().await;
}

/// A room removed from its row whose removal from Redis was lost (the operator's change
/// is saved before the room step, which then failed) would refuse every buyer
/// `not_admitted` while nobody can join a room the row no longer has: the timer removes
/// it, under the row's lock, so the sale sells to anyone again. The room is put back
/// while no process runs; the timer's first round, at the start of the next, removes it.
#[tokio::test]
async fn the_timer_removes_a_room_its_row_no_longer_has() {
    let mut before = TestApp::spawn(options()).await;
    let st = room_open_now(&before, 2, 1, 0, 60).await;
    let room = format!("{}:{{{st}}}:room", before.iso.prefix);
    let mut conn = before.adapters.seats.connection();
    let was: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&room)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!was.is_empty());
    let (status, answer) = before
        .change_showtime(st, json!({"waiting_room": null}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    before.stop().await;
    // The room's removal lost: it is back in Redis as it was.
    let _: () = redis::cmd("HSET")
        .arg(&room)
        .arg(&was)
        .query_async(&mut conn)
        .await
        .unwrap();

    let app = TestApp::spawn_on(before.iso.clone(), options()).await;
    let client = Client::of(&app, 4);
    eventually(
        Duration::from_secs(10),
        "a buyer served without a room",
        || async {
            let held = client.reserve(st, 1, None, None, None).await;
            (held.status == StatusCode::OK).then_some(())
        },
    )
    .await;
    // Nothing is left to remove; a room the operator adds again stays.
    assert_eq!(app.app.advance_rooms().await.unwrap().removed, 0);
    let (status, answer) = app
        .change_showtime(st, json!({"waiting_room": {"overbook_pct": 0}}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let round = app.app.advance_rooms().await.unwrap();
    assert_eq!((round.removed, round.advanced), (0, 1), "{round:?}");
    let refused = client.reserve(st, 2, None, None, None).await;
    assert_error(&refused.pair(), StatusCode::FORBIDDEN, "not_admitted");
    app.finish().await;
}

/// Whether Redis has showtime `st`'s waiting room.
async fn room_in_redis(app: &TestApp, st: i64) -> bool {
    let mut conn = app.adapters.seats.connection();
    redis::cmd("EXISTS")
        .arg(format!("{}:{{{st}}}:room", app.iso.prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// A keyed creation's replay sets the showtime's room from the row as it is when it
/// does so, under the row's lock. Before, it set the room from the row it had read
/// first: an operator who removed the room meanwhile saw it come back, refusing every
/// buyer `not_admitted` while nobody could join it, until the next timer round. The
/// replaying process's Redis is held at a proxy while the room is removed.
#[tokio::test]
async fn a_keyed_creation_replayed_while_its_room_is_removed_does_not_bring_it_back() {
    let quiet = || Options {
        sweep_interval_secs: 3_600,
        ..options()
    };
    let app = TestApp::spawn(quiet()).await;
    let body = json!({"capacity": 2, "waiting_room": {"overbook_pct": 0, "admission_secs": 60}});
    let create = |to: &TestApp| {
        to.http
            .post(to.url("/showtimes"))
            .header("Idempotency-Key", "premiere-with-a-room")
            .json(&body)
    };
    let (status, _, created) = app.send(create(&app), None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let st = created["id"].as_i64().unwrap();
    let proxy = flash_sale_tests::Cuttable::start("127.0.0.1:6379").await;
    let replayer = TestApp::spawn_on(
        app.iso.clone(),
        Options {
            redis_url: Some(format!("redis://{}", proxy.addr)),
            ..quiet()
        },
    )
    .await;
    proxy.hold();
    let request = create(&replayer);
    let replay = tokio::spawn(async move {
        let answer = replayer.send(request, None).await;
        (answer, replayer)
    });
    eventually(
        Duration::from_secs(5),
        "the replay's step at the proxy",
        || async { (proxy.waiting() > 0).then_some(()) },
    )
    .await;
    let (status, answer) = app
        .change_showtime(st, json!({"waiting_room": null}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    proxy.release();
    let ((status, headers, again), mut replayer) = replay.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(headers["idempotent-replayed"], "true");
    // The room stays removed: the sale sells to anyone.
    assert!(
        !room_in_redis(&app, st).await,
        "the removed room is back in Redis"
    );
    let held = Client::of(&app, 1).reserve(st, 1, None, None, None).await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    replayer.stop().await;
    app.finish().await;
}

/// The timer sets each room from its row. An operator who removes a room while a round
/// is between its read of the row and its step in Redis must not see the room come back:
/// it would refuse every buyer `not_admitted` until the next round (a minute on Lambda)
/// while nobody can join a room the row no longer has. The timer's Redis is held at a
/// proxy once the round has begun; the operator's change then either completes (nothing
/// keeps the two apart) or waits on the row's lock the round holds.
#[tokio::test]
async fn a_room_removed_while_the_timer_sets_it_does_not_come_back() {
    let app = TestApp::spawn(Options {
        sweep_interval_secs: 3_600,
        ..options()
    })
    .await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 2, 1, 0, 60).await;
    let proxy = flash_sale_tests::Cuttable::start("127.0.0.1:6379").await;
    // Another process, its own timer run by hand, whose Redis is behind the proxy.
    let (timer, _) = flash_sale_tests::wire(flash_sale_tests::config(
        &app.iso,
        &Options {
            redis_url: Some(format!("redis://{}", proxy.addr)),
            ..options()
        },
    ))
    .await;
    proxy.hold();
    let round = tokio::spawn(async move {
        let round = timer.advance_rooms().await;
        (round, timer)
    });
    eventually(
        Duration::from_secs(5),
        "the round's step at the proxy",
        || async { (proxy.waiting() > 0).then_some(()) },
    )
    .await;
    let db = app.adapters.db.pool().clone();
    let waits_on_a_lock = async {
        eventually(
            Duration::from_secs(5),
            "the change on the row's lock",
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                (waiting > 0).then_some(())
            },
        )
        .await
    };
    let (status, answer) = {
        let removal = app.change_showtime(st, json!({"waiting_room": null}), None);
        tokio::pin!(removal);
        let removed = tokio::select! {
            done = &mut removal => Some(done),
            () = waits_on_a_lock => None,
        };
        proxy.release();
        match removed {
            Some(done) => done,
            None => removal.await,
        }
    };
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (round, timer) = round.await.unwrap();
    round.unwrap();
    // The room stays removed: the sale sells to anyone.
    let held = client.reserve(st, 1, None, None, None).await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    assert!(
        !room_in_redis(&app, st).await,
        "the removed room is back in Redis"
    );
    drop(timer);
    app.finish().await;
}

/// A ticket names a place in one room: once that room is removed and another set up, an
/// old ticket's place means nothing there, and a poll with it is answered from the store
/// (not in the new line), not from the new room's snapshot as if the place were its.
#[tokio::test]
async fn a_ticket_of_a_room_removed_and_set_up_again_names_no_place_in_the_new_one() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 1, 1, 0, 60).await;
    assert_eq!(joined(&client, st, 1).await.status, "admitted");
    let two = joined(&client, st, 2).await;
    assert_eq!(two.at(), ("in_line", Some(1)), "{two:?}");
    for room in [
        json!(null),
        json!({"overbook_pct": 0, "admission_secs": 60}),
    ] {
        let (status, answer) = app
            .change_showtime(st, json!({"waiting_room": room}), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let polled = client.me(st, 2, Some(two.ticket())).await;
    assert_eq!(polled.queue_status(), "not_in_line", "{}", polled.body);
    // Joining the new room gives a place in it, and a ticket for it.
    let again = Standing::of(2, &client.join(st, 2).await);
    assert_eq!(again.at(), ("admitted", Some(0)), "{again:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_503_does_not_use_the_admission_up() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 2, 1, 0, 60).await;
    let one = joined(&client, st, 1).await;
    assert_eq!(one.status, "admitted", "{one:?}");

    // The hold's expiry made unroutable: the publish after the take fails, the seat is
    // given back and the answer is 503 (as in lifecycle's a_failed_publish_leaks_no_seat).
    app.break_expiry_queue().await;
    let failed = client
        .reserve(st, 1, Some(one.admission()), None, None)
        .await;
    assert_error(
        &failed.pair(),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_eq!(app.seats(st).await, (2, 0, 0), "the seat went back on sale");
    app.adapters.bus.declare_topology().await.unwrap();

    // The contract: a 503 does not use the admission up; the buyer retries with it.
    let after = standing(&client, st, 1).await;
    let retried = client
        .reserve(st, 1, Some(one.admission()), None, None)
        .await;
    assert_eq!(
        retried.status,
        StatusCode::OK,
        "the retry after a 503 was refused: {} (standing after the 503: {after:?})",
        retried.body
    );
    assert_eq!(after.status, "admitted", "{after:?}");
    assert_eq!(app.seats(st).await, (1, 1, 0));
    app.finish().await;
}

// ---------------------------------------------------------------------------------
// 4. A restart while people wait.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn places_tickets_and_admissions_survive_a_restart() {
    let opts = Options {
        extra_env: vec![(
            "WAITING_ROOM_SECRET",
            "the waiting room secret both processes share, 32+ bytes".to_string(),
        )],
        ..options()
    };
    let mut a = TestApp::spawn(opts.clone()).await;
    let client_a = Client::of(&a, 8);
    // 5 seats, no overbooking: the first 5 of 20 admitted.
    let st = room_open_now(&a, 5, 1, 0, 600).await;
    let mut line = vec![];
    for user in 1..=20 {
        line.push(joined(&client_a, st, user).await);
    }
    for (i, s) in line.iter().enumerate() {
        assert_eq!(s.place(), i as u64, "{s:?}");
        assert_eq!(
            s.status,
            if i < 5 { "admitted" } else { "in_line" },
            "{s:?}"
        );
    }
    // One admitted buyer holds on A.
    let held = client_a
        .reserve(st, 1, Some(line[0].admission()), None, None)
        .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    a.stop().await;

    let b = TestApp::spawn_on(a.iso.clone(), opts).await;
    let client_b = Client::of(&b, 8);
    // Every ticket from A is accepted by B, and names the same place and standing.
    for s in &line {
        let polled = client_b.me(st, s.user, Some(s.ticket())).await;
        let now = Standing::of(s.user, &polled);
        assert_eq!(now.place, s.place, "{polled:?}");
        let expected = match s.user {
            1 => "passed",
            2..=5 => "admitted",
            _ => "in_line",
        };
        assert_eq!(now.status, expected, "{polled:?}");
        if expected == "admitted" {
            assert_eq!(now.admitted_until, s.admitted_until, "{polled:?}");
        }
    }
    // A's admissions are taken by B; the line is where it was.
    for s in &line[1..5] {
        let taken = client_b
            .reserve(st, s.user, Some(s.admission()), None, None)
            .await;
        assert_eq!(
            taken.status,
            StatusCode::OK,
            "user {}: {}",
            s.user,
            taken.body
        );
    }
    assert_eq!(b.seats(st).await, (0, 5, 0));
    let sixth = client_b.me(st, 6, Some(line[5].ticket())).await;
    assert_eq!(
        (sixth.queue_status().as_str(), sixth.body["place"].as_u64()),
        ("in_line", Some(5)),
        "{}",
        sixth.body
    );
    drop(a);
    b.finish().await;
}

// ---------------------------------------------------------------------------------
// 5. Without a room, as before.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_showtime_without_a_room_sells_as_before_and_has_no_line() {
    let app = TestApp::spawn(options()).await;
    let client = Client::of(&app, 4);
    let st = app.create_showtime(2).await;
    let (_, shown) = app.get(&format!("/showtimes/{st}")).await;
    assert!(shown["waiting_room"].is_null(), "{shown}");

    let held = client.reserve(st, 1, None, None, None).await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    let paid = client.pay(&held.str("reservation_id").unwrap(), 1).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_error(
        &client.join(st, 2).await.pair(),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &client.me(st, 2, None).await.pair(),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &client.join(st + 1_000, 2).await.pair(),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(app.seats(st).await, (1, 0, 1));

    // A room added, then removed: the sale goes back to selling to anyone.
    let (status, answer) = app
        .change_showtime(st, json!({"waiting_room": {"overbook_pct": 0}}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["waiting_room"].is_object(), "{answer}");
    eventually(
        Duration::from_secs(5),
        "reserves to need an admission",
        || async {
            let a = client.reserve(st, 2, None, None, None).await;
            assert_ne!(a.status, StatusCode::OK, "{}", a.body);
            (a.status == StatusCode::FORBIDDEN && a.body["error"] == "not_admitted").then_some(())
        },
    )
    .await;
    let (status, answer) = app
        .change_showtime(st, json!({"waiting_room": null}), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["waiting_room"].is_null(), "{answer}");
    let held = eventually(Duration::from_secs(5), "reserves to need none", || async {
        let a = client.reserve(st, 2, None, None, None).await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await;
    assert_eq!(held.body["user_id"], 2);
    assert_error(
        &client.join(st, 3).await.pair(),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(app.seats(st).await, (0, 1, 1));
    app.finish().await;
}

/// A poll never tells a buyer less than their join just told them: admitted by the
/// join, admitted on the poll that follows with the join's ticket, though the process's
/// view of the room was read before (here it is kept for 10 s, so nothing but what the
/// joins taught it can move it).
#[tokio::test]
async fn a_poll_after_a_join_tells_no_less_than_the_join_did() {
    let app = TestApp::spawn(Options {
        extra_env: vec![("WAITING_ROOM_REFRESH_MS", "10000".to_string())],
        ..options()
    })
    .await;
    let client = Client::of(&app, 4);
    let st = room_open_now(&app, 5, 1, 0, 60).await;
    for user in 1..=4 {
        let join = client.join(st, user).await;
        assert_eq!(join.queue_status(), "admitted", "{}", join.body);
        let ticket = join.str("ticket").expect("a ticket");
        let poll = client.me(st, user, Some(&ticket)).await;
        assert_eq!(
            poll.queue_status(),
            "admitted",
            "user {user}: {}",
            poll.body
        );
        assert_eq!(poll.body["place"], join.body["place"]);
    }
    app.finish().await;
}
