//! Waiting rooms on Redis: the lottery of early joiners, arrival order after the
//! opening, admission bounded by the stock and by a rate, admissions used once or run
//! out, and the room closing when nothing is left to sell.

use std::time::Duration;

use flash_sale_adapters::{RedisRoom, RedisSeats};
use flash_sale_core::domain::SaleWindow;
use flash_sale_core::ports::{SeatStore, TakeOutcome};
use flash_sale_core::waiting_room::{
    Joined, RoomSettings, RoomSnapshot, Standing, WaitingRoomStore,
};
use flash_sale_core::{ShowtimeId, UnixMillis, UserId};
use flash_sale_tests::{Isolation, eventually};

const HOLD: Duration = Duration::from_secs(600);
/// A room that opens long after the test.
const LATER: UnixMillis = UnixMillis(4_102_444_800_000);
const OPEN: UnixMillis = UnixMillis(1);

fn user(n: i64) -> UserId {
    UserId::new(n).unwrap()
}

fn settings(opens_at: UnixMillis, admit_per_sec: Option<u32>, overbook_pct: u32) -> RoomSettings {
    RoomSettings {
        opens_at,
        admit_per_sec,
        overbook_pct,
        admission: Duration::from_secs(60),
    }
}

/// A showtime of `capacity` seats with a room of `room`, on a prefix of its own.
async fn room_with_seats(
    iso: &Isolation,
    capacity: u32,
    room: RoomSettings,
) -> (RedisSeats, RedisRoom, ShowtimeId) {
    let seats = super::seats(iso).await;
    let rooms = RedisRoom::new(seats.connection(), &iso.prefix);
    let st = ShowtimeId::new(1).unwrap();
    assert!(seats.load(st, capacity, 0, 1, false, 1).await.unwrap());
    rooms.configure(st, room, SaleWindow::ALWAYS).await.unwrap();
    (seats, rooms, st)
}

/// Three showtimes of 10 seats on a prefix of its own: one whose room opens long after
/// the test, one whose room is open, one without a room.
async fn three_showtimes(iso: &Isolation) -> (RedisSeats, RedisRoom, [ShowtimeId; 3]) {
    let (seats, rooms, early) = room_with_seats(iso, 10, settings(LATER, None, 0)).await;
    let open = ShowtimeId::new(2).unwrap();
    assert!(seats.load(open, 10, 0, 1, false, 1).await.unwrap());
    rooms
        .configure(open, settings(OPEN, None, 0), SaleWindow::ALWAYS)
        .await
        .unwrap();
    (seats, rooms, [early, open, ShowtimeId::new(3).unwrap()])
}

async fn joined(rooms: &RedisRoom, st: ShowtimeId, u: i64, draw: u64) -> Standing {
    match rooms.join(st, user(u), draw).await.unwrap() {
        Joined::Standing(s) => s,
        Joined::NoRoom => panic!("showtime {st} has no room"),
    }
}

async fn snapshot(rooms: &RedisRoom, st: ShowtimeId) -> RoomSnapshot {
    rooms.advance(st).await.unwrap().expect("a room")
}

/// The users admitted so far, in the order of their places.
async fn admitted(rooms: &RedisRoom, st: ShowtimeId, users: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut out = vec![];
    for u in users {
        if let Standing::Admitted { place, .. } = rooms.standing(st, user(u)).await.unwrap().0 {
            out.push((place, u));
        }
    }
    out.sort();
    out.into_iter().map(|(_, u)| u).collect()
}

#[tokio::test]
async fn early_joiners_wait_without_a_place_and_are_admitted_in_the_order_of_their_draws() {
    let iso = Isolation::new();
    let (seats, rooms, st) = room_with_seats(&iso, 3, settings(LATER, None, 0)).await;
    // Users 1..=6 join in this order with draws in the opposite order.
    for u in 1..=6 {
        assert_eq!(
            joined(&rooms, st, u, 1_000 - u as u64).await,
            Standing::Waiting
        );
    }
    // A second join keeps the first place (and its draw).
    assert_eq!(joined(&rooms, st, 1, 0).await, Standing::Waiting);
    let before = snapshot(&rooms, st).await;
    assert_eq!((before.open, before.served, before.joined), (false, 0, 6));
    // The three seats will admit the first three drawn: the front the line is paced by.
    assert_eq!((before.front, before.admit_per_sec), (3, None));

    // The room opens: three seats, no overbooking, so the three lowest draws.
    rooms
        .configure(st, settings(OPEN, None, 0), SaleWindow::ALWAYS)
        .await
        .unwrap();
    let after = snapshot(&rooms, st).await;
    assert_eq!((after.open, after.served, after.closed), (true, 3, false));
    assert_eq!(admitted(&rooms, st, 1..=6).await, vec![6, 5, 4]);
    assert_eq!(
        rooms.standing(st, user(3)).await.unwrap().0,
        Standing::InLine { place: 3, ahead: 0 }
    );
    assert_eq!(
        rooms.standing(st, user(1)).await.unwrap().0,
        Standing::InLine { place: 5, ahead: 2 }
    );
    // Later arrivals queue behind every early joiner, in arrival order.
    assert_eq!(
        joined(&rooms, st, 8, 0).await,
        Standing::InLine { place: 6, ahead: 3 }
    );
    assert_eq!(
        joined(&rooms, st, 7, 0).await,
        Standing::InLine { place: 7, ahead: 4 }
    );
    assert_eq!(
        rooms.standing(st, user(99)).await.unwrap().0,
        Standing::NotInLine
    );
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn admission_follows_the_stock_and_the_room_closes_when_nothing_is_left() {
    let iso = Isolation::new();
    let (seats, rooms, st) = room_with_seats(&iso, 2, settings(OPEN, None, 50)).await;
    for u in 1..=8 {
        joined(&rooms, st, u, 0).await;
    }
    // Two seats and 50% overbooking: three undecided admissions at most, and the stock
    // reaches no further.
    let first = snapshot(&rooms, st).await;
    assert_eq!((first.served, first.front), (3, 3));
    assert_eq!(admitted(&rooms, st, 1..=8).await, vec![1, 2, 3]);

    // Nobody takes a seat without an admission; user 1 holds one with its admission,
    // which is used up by the hold.
    assert_eq!(
        seats.take(st, user(5), HOLD).await.unwrap(),
        TakeOutcome::NotAdmitted
    );
    let TakeOutcome::Reserved(first) = seats.take(st, user(1), HOLD).await.unwrap() else {
        panic!("a seat")
    };
    assert_eq!(
        rooms.standing(st, user(1)).await.unwrap().0,
        Standing::Passed { place: 0 }
    );
    // One seat left, two admissions undecided: ceil(1 * 1.5) = 2, nobody new.
    assert_eq!(snapshot(&rooms, st).await.served, 3);

    // The hold expires: two seats, ceil(2 * 1.5) = 3 undecided allowed, one more in.
    seats.expire(first.id).await.unwrap();
    assert_eq!(
        seats.take(st, user(1), HOLD).await.unwrap(),
        TakeOutcome::NotAdmitted,
        "an admission is used once"
    );
    let after = snapshot(&rooms, st).await;
    assert_eq!((after.served, after.front), (4, 4));
    assert_eq!(admitted(&rooms, st, 1..=8).await, vec![2, 3, 4]);

    // Users 2 and 3 buy the two seats; the undecided admission of 4 holds the line
    // until the seats are sold, then the room closes for everyone still waiting.
    for u in [2, 3] {
        let TakeOutcome::Reserved(r) = seats.take(st, user(u), HOLD).await.unwrap() else {
            panic!("a seat for {u}")
        };
        seats.pay(r.id, user(u)).await.unwrap();
    }
    let closed = snapshot(&rooms, st).await;
    assert!(closed.closed, "{closed:?}");
    assert_eq!(
        closed.front, closed.served,
        "nothing left beyond who had a turn"
    );
    assert_eq!(
        rooms.standing(st, user(6)).await.unwrap().0,
        Standing::SoldOut
    );
    assert_eq!(joined(&rooms, st, 20, 0).await, Standing::SoldOut);
    // User 4's sold-out answer uses its admission up too.
    assert_eq!(
        seats.take(st, user(4), HOLD).await.unwrap(),
        TakeOutcome::SoldOut
    );
    assert_eq!(
        rooms.standing(st, user(4)).await.unwrap().0,
        Standing::Passed { place: 3 }
    );

    // An operator adds a seat: reopened, the line moves again.
    seats.resize(st, 2, 3).await.unwrap();
    rooms
        .configure(st, settings(OPEN, None, 50), SaleWindow::ALWAYS)
        .await
        .unwrap();
    assert!(!snapshot(&rooms, st).await.closed);
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn admissions_run_out_and_the_next_in_line_takes_their_turn() {
    let iso = Isolation::new();
    let mut room = settings(OPEN, None, 0);
    // Long enough that the three joins and the first look (six round trips to a Redis
    // the other tests share) come before it runs out, on a loaded machine too.
    room.admission = Duration::from_secs(3);
    let (seats, rooms, st) = room_with_seats(&iso, 1, room).await;
    for u in 1..=3 {
        joined(&rooms, st, u, 0).await;
    }
    assert_eq!(admitted(&rooms, st, 1..=3).await, vec![1]);
    eventually(
        Duration::from_secs(10),
        "user 1's admission to run out and user 2's turn to come",
        || async { (admitted(&rooms, st, 1..=3).await == vec![2]).then_some(()) },
    )
    .await;
    assert_eq!(
        rooms.standing(st, user(1)).await.unwrap().0,
        Standing::Passed { place: 0 }
    );
    assert_eq!(
        seats.take(st, user(1), HOLD).await.unwrap(),
        TakeOutcome::NotAdmitted,
        "run out"
    );
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn a_rate_caps_admissions_a_second() {
    let iso = Isolation::new();
    let (seats, rooms, st) = room_with_seats(&iso, 1000, settings(OPEN, Some(5), 0)).await;
    let joining = std::time::Instant::now();
    for u in 1..=50 {
        joined(&rooms, st, u, 0).await;
    }
    // At most a second's worth saved up, 5, and 5 a second over the time the 50 joins
    // took (a few ms each, more on a loaded machine).
    let room = snapshot(&rooms, st).await;
    assert_eq!(room.admit_per_sec, Some(5));
    // The 1,000 seats allow 1,000 undecided admissions, of which `served` are given:
    // the stock reaches place 1,000, past the whole line.
    assert_eq!(room.front, 1_000);
    let first = room.served;
    let joins_took = joining.elapsed().as_millis() as u64;
    assert!(
        (1..=5 + 5 * joins_took / 1000).contains(&first),
        "{first} after {joins_took} ms of joins"
    );
    // Then 5 a second: after about a second, 5 more at most, and some.
    let started = std::time::Instant::now();
    let next = eventually(Duration::from_secs(10), "the next admissions", || async {
        let served = snapshot(&rooms, st).await.served;
        (served > first).then_some(served)
    })
    .await;
    let elapsed = started.elapsed().as_millis() as u64;
    // No more than the rate allows over the time that passed (and the saved second).
    assert!(
        next - first <= 5 * (elapsed + 1000).div_ceil(1000),
        "{first} then {next} after {elapsed} ms"
    );
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn a_showtime_without_a_room_says_so() {
    let iso = Isolation::new();
    let seats = super::seats(&iso).await;
    let rooms = RedisRoom::new(seats.connection(), &iso.prefix);
    let st = ShowtimeId::new(5).unwrap();
    assert_eq!(rooms.join(st, user(1), 7).await.unwrap(), Joined::NoRoom);
    assert_eq!(rooms.advance(st).await.unwrap(), None);
    assert_eq!(
        rooms.standing(st, user(1)).await.unwrap().0,
        Standing::NotInLine
    );
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn a_room_removed_sells_to_anyone_again() {
    let iso = Isolation::new();
    let (seats, rooms, st) = room_with_seats(&iso, 5, settings(LATER, None, 0)).await;
    joined(&rooms, st, 1, 3).await;
    assert_eq!(
        seats.take(st, user(2), HOLD).await.unwrap(),
        TakeOutcome::NotAdmitted
    );
    rooms.remove(st).await.unwrap();
    assert_eq!(rooms.advance(st).await.unwrap(), None);
    assert!(matches!(
        seats.take(st, user(2), HOLD).await.unwrap(),
        TakeOutcome::Reserved(_)
    ));
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn standings_asked_together_are_answered_each_their_own() {
    let iso = Isolation::new();
    let (seats, rooms, [early, open, roomless]) = three_showtimes(&iso).await;
    for u in 1..=200_i64 {
        joined(&rooms, early, u, u as u64).await;
        joined(&rooms, open, u, 0).await;
    }
    // 1,000 polls at once, more than one group holds, over three showtimes: users
    // 1..=200 ask about the early room, twice about the open room (where 10 seats admit
    // the first 10 places), and about a showtime without a room; users 201..=400 ask
    // about the open room they never joined.
    let mut asks = vec![];
    for u in 1..=200_i64 {
        asks.push((open, u));
        asks.push((early, u));
        asks.push((open, u));
        asks.push((roomless, u));
        asks.push((open, u + 200));
    }
    let answers =
        futures::future::join_all(asks.iter().map(|&(st, u)| rooms.standing(st, user(u)))).await;
    for (&(st, u), answer) in asks.iter().zip(answers) {
        let (answer, room) = answer.unwrap();
        // Each standing comes with its room as the same step left it.
        assert_eq!(room.is_none(), st == roomless, "user {u} of {st}: {room:?}");
        let place = u as u64 - 1;
        match answer {
            Standing::Waiting => assert_eq!(st, early, "user {u}"),
            Standing::NotInLine => assert!(st == roomless || u > 200, "user {u} of {st}"),
            Standing::Admitted { place: p, .. } => {
                assert_eq!((st, p), (open, place), "user {u}");
                assert!(u <= 10, "user {u} admitted");
            }
            Standing::InLine { place: p, ahead } => {
                assert_eq!((st, p, ahead), (open, place, place - 10), "user {u}");
                assert!(u > 10, "user {u} in line");
            }
            other => panic!("user {u} of {st}: {other:?}"),
        }
    }
    assert_eq!(snapshot(&rooms, open).await.served, 10);
    super::drop_keys(&seats).await;
}

#[tokio::test]
async fn joins_that_arrive_together_are_committed_together_each_caller_answered_its_own() {
    let iso = Isolation::new();
    let (seats, rooms, [early, open, roomless]) = three_showtimes(&iso).await;
    // 800 joins at once, more than one group holds, over three showtimes: users 1..=200
    // join the early room twice (with another draw the second time), the open room once,
    // and a showtime without a room.
    let mut asks = vec![];
    for u in 1..=200_i64 {
        asks.push((early, u, u as u64));
        asks.push((open, u, 0));
        asks.push((early, u, 10_000 + u as u64));
        asks.push((roomless, u, 0));
    }
    let answers = futures::future::join_all(
        asks.iter()
            .map(|&(st, u, draw)| rooms.join(st, user(u), draw)),
    )
    .await;
    for (&(st, u, _), answer) in asks.iter().zip(answers) {
        let answer = answer.unwrap();
        if st == early {
            assert_eq!(answer, Joined::Standing(Standing::Waiting), "user {u}");
        } else if st == roomless {
            assert_eq!(answer, Joined::NoRoom, "user {u}");
        } else {
            // After the opening, places in arrival order: user u asked u-th.
            let place = match answer {
                Joined::Standing(Standing::InLine { place, .. })
                | Joined::Standing(Standing::Admitted { place, .. }) => place,
                other => panic!("user {u} in the open room: {other:?}"),
            };
            assert_eq!(place, u as u64 - 1, "user {u}");
        }
    }
    // One place per user, whatever the number of joins.
    assert_eq!(snapshot(&rooms, early).await.joined, 200);
    assert_eq!(snapshot(&rooms, open).await.joined, 200);
    // The first draw is kept: users 1..=10 (draws 1..=10) are admitted first.
    rooms
        .configure(early, settings(OPEN, None, 0), SaleWindow::ALWAYS)
        .await
        .unwrap();
    assert_eq!(snapshot(&rooms, early).await.served, 10);
    assert_eq!(
        admitted(&rooms, early, 1..=200).await,
        (1..=10).collect::<Vec<_>>()
    );
    super::drop_keys(&seats).await;
}
