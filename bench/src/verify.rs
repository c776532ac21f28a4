//! After a phase against flash-sale: wait until every order is in PostgreSQL, then check
//! the invariants against three witnesses (the HTTP answers the buyers got, the server's
//! own seat counts, and the orders table), and, for a server the bench started, that
//! every hold's expiry reached RabbitMQ.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::client::{Conn, Endpoint};
use crate::load::PhaseResult;
use crate::plan::{PayMode, Plan};

/// One invariant, held or breached.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

/// What the verification found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Verification {
    /// Orders expected in PostgreSQL (every paid hold).
    pub(crate) expected_orders: u64,
    pub(crate) orders_found: u64,
    /// From the last answer of the phase until the last order was in PostgreSQL; `None`
    /// when they were not all there before the deadline.
    pub(crate) orders_landed_after_ms: Option<f64>,
    pub(crate) checks: Vec<Check>,
}

impl Verification {
    pub(crate) fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

fn check(checks: &mut Vec<Check>, name: &str, ok: bool, detail: String) {
    checks.push(Check {
        name: name.to_string(),
        ok,
        detail,
    });
}

async fn count_orders(db: &PgPool, ids: &[i64]) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE showtime_id = ANY($1)")
        .bind(ids)
        .fetch_one(db)
        .await?;
    Ok(n as u64)
}

pub(crate) async fn verify(
    plan: &Plan,
    ids: &[i64],
    phase: &PhaseResult,
    endpoint: &Endpoint,
    db: &PgPool,
    orders_deadline: Duration,
) -> anyhow::Result<Verification> {
    let mut checks = Vec::new();
    let n = ids.len();

    // 1. The buyers' answers.
    let mut reserved = vec![0u64; n];
    let mut paid = vec![0u64; n];
    let mut holders = HashSet::new();
    let mut twice = Vec::new();
    let mut bad_ids = Vec::new();
    let mut seen_ids = HashSet::new();
    for w in &phase.won {
        reserved[w.showtime] += 1;
        if w.paid {
            paid[w.showtime] += 1;
        }
        if !holders.insert((w.showtime, w.user)) {
            twice.push(format!("user {} on showtime {}", w.user, ids[w.showtime]));
        }
        let prefix_ok =
            w.id.split_once('-')
                .is_some_and(|(s, q)| s == ids[w.showtime].to_string() && q.parse::<u64>().is_ok());
        if !prefix_ok || !seen_ids.insert(w.id.as_str()) {
            bad_ids.push(w.id.clone());
        }
    }
    if plan.pay == PayMode::Mock {
        paid.clone_from(&reserved);
    }
    let expected = plan.expected_reserved();
    let wrong: Vec<String> = (0..n)
        .filter(|&i| reserved[i] != expected[i])
        .map(|i| {
            format!(
                "showtime {}: {} reserved, expected {}",
                ids[i], reserved[i], expected[i]
            )
        })
        .collect();
    check(
        &mut checks,
        "reserved == min(capacity, distinct users) per showtime",
        wrong.is_empty(),
        if wrong.is_empty() {
            format!(
                "{} reserved on {} showtime(s)",
                reserved.iter().sum::<u64>(),
                n
            )
        } else {
            wrong.join("; ")
        },
    );
    check(
        &mut checks,
        "no user got two holds for one showtime (answers)",
        twice.is_empty(),
        if twice.is_empty() {
            "none".into()
        } else {
            format!("{} e.g. {}", twice.len(), twice[0])
        },
    );
    check(
        &mut checks,
        "reservation ids are distinct and name their showtime",
        bad_ids.is_empty(),
        if bad_ids.is_empty() {
            "all".into()
        } else {
            format!("{} bad, e.g. {}", bad_ids.len(), bad_ids[0])
        },
    );

    // 2. Every order in PostgreSQL, timed from the last answer.
    let expected_orders: u64 = paid.iter().sum();
    let deadline = phase.ended + orders_deadline;
    let mut found = count_orders(db, ids).await?;
    while found < expected_orders && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        found = count_orders(db, ids).await?;
    }
    let landed = (found == expected_orders).then(|| phase.ended.elapsed().as_secs_f64() * 1000.0);
    if plan.pay == PayMode::None {
        // Nothing should come; give a stray order a moment to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        found = count_orders(db, ids).await?;
    }
    check(
        &mut checks,
        "orders == paid holds",
        found == expected_orders,
        format!("{found} orders in PostgreSQL, {expected_orders} holds paid"),
    );

    // 3. The orders table, per showtime.
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT showtime_id, user_id, reservation_id FROM orders WHERE showtime_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut per = vec![0u64; n];
    let mut order_users = HashSet::new();
    let mut dup_orders = 0;
    let won: HashMap<&str, (usize, u64)> = phase
        .won
        .iter()
        .map(|w| (w.id.as_str(), (w.showtime, w.user)))
        .collect();
    let mut strangers = Vec::new();
    for (sid, user, rid) in &rows {
        let i = index[sid];
        per[i] += 1;
        if !order_users.insert((i, *user)) {
            dup_orders += 1;
        }
        if won.get(rid.as_str()) != Some(&(i, *user as u64)) {
            strangers.push(rid.clone());
        }
    }
    check(
        &mut checks,
        "no user twice per showtime (orders)",
        dup_orders == 0,
        format!("{dup_orders} duplicate (showtime, user) orders"),
    );
    check(
        &mut checks,
        "every order is a hold a buyer was given",
        strangers.is_empty(),
        if strangers.is_empty() {
            "all".into()
        } else {
            format!("{} unknown, e.g. {}", strangers.len(), strangers[0])
        },
    );
    let wrong: Vec<String> = (0..n)
        .filter(|&i| per[i] != paid[i])
        .map(|i| format!("showtime {}: {} orders, {} paid", ids[i], per[i], paid[i]))
        .collect();
    check(
        &mut checks,
        "orders == paid per showtime",
        wrong.is_empty(),
        if wrong.is_empty() {
            "all".into()
        } else {
            wrong.join("; ")
        },
    );
    let sold: Vec<(i64, i32, i32)> =
        sqlx::query_as("SELECT id, capacity, sold FROM showtimes WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(db)
            .await?;
    let wrong: Vec<String> = sold
        .iter()
        .filter(|(id, _, s)| per[index[id]] != *s as u64)
        .map(|(id, _, s)| format!("showtime {id}: sold {s}, {} orders", per[index[id]]))
        .collect();
    check(
        &mut checks,
        "showtimes.sold == orders (PostgreSQL)",
        wrong.is_empty() && sold.len() == n,
        if wrong.is_empty() {
            format!("{} showtimes", sold.len())
        } else {
            wrong.join("; ")
        },
    );

    // 4. The server's own seat counts.
    let mut conn = Conn::new(endpoint.clone(), Duration::from_secs(10));
    let mut wrong = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        #[derive(serde::Deserialize)]
        struct Counts {
            capacity: u64,
            available: u64,
            held: u64,
            sold: u64,
        }
        let a = conn.get(&format!("/showtimes/{id}")).await?;
        let c: Counts = a.json()?;
        let cap = u64::from(plan.capacities[i]);
        if c.available + c.held + c.sold != c.capacity || c.capacity != cap {
            wrong.push(format!(
                "showtime {id}: available {} + held {} + sold {} != capacity {} (created with {cap})",
                c.available, c.held, c.sold, c.capacity
            ));
        } else if c.sold != paid[i] || c.held != reserved[i] - paid[i] {
            wrong.push(format!(
                "showtime {id}: held {} sold {}, but {} reserved and {} paid",
                c.held, c.sold, reserved[i], paid[i]
            ));
        }
    }
    check(
        &mut checks,
        "available + held + sold == capacity; sold == paid; held == unpaid",
        wrong.is_empty(),
        if wrong.is_empty() {
            format!("{n} showtimes")
        } else {
            wrong.join("; ")
        },
    );

    Ok(Verification {
        expected_orders,
        orders_found: found,
        orders_landed_after_ms: landed,
        checks,
    })
}

/// The delay queue of a server the bench started, where every hold's expiry waits out
/// the hold time.
pub(crate) struct DelayQueue {
    pub(crate) amqp_url: String,
    pub(crate) name: String,
}

/// Every hold the buyers were given has its expiry in the delay queue: what reserve
/// handed over to its publisher was confirmed, not only queued. Drains the queue (the
/// run's own, deleted after it), waiting up to `deadline` for the last messages.
pub(crate) async fn expiries_confirmed(
    queue: &DelayQueue,
    phase: &PhaseResult,
    deadline: Duration,
) -> anyhow::Result<Check> {
    let conn =
        lapin::Connection::connect(&queue.amqp_url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut missing: HashSet<&str> = phase.won.iter().map(|w| w.id.as_str()).collect();
    let holds = missing.len();
    let started = Instant::now();
    while !missing.is_empty() && started.elapsed() < deadline {
        let got = ch
            .basic_get(
                queue.name.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?;
        let Some(message) = got else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        // One expiry or a batch of them, as the server's consumers read them.
        let expiries = flash_sale_adapters::wire::decode_expiries(&message.delivery.data)
            .map_err(|e| anyhow::anyhow!("an unreadable message in {}: {e}", queue.name))?;
        for expiry in expiries {
            missing.remove(expiry.message.reservation.to_string().as_str());
        }
    }
    let _ = conn.close(200, "verified".into()).await;
    let detail = match missing.iter().next() {
        None => format!("{holds} of {holds} holds"),
        Some(example) => format!(
            "{} of {holds} holds have no expiry in {} (e.g. {example})",
            missing.len(),
            queue.name
        ),
    };
    Ok(Check {
        name: "every hold's expiry is confirmed in RabbitMQ".to_string(),
        ok: missing.is_empty(),
        detail,
    })
}
