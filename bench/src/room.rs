//! `million-queued`: the crowd through a waiting room (issue 16).
//!
//! Every buyer is a task of its own, and every request goes through one pool of
//! `--concurrency` keep-alive connections (a buyer waits for a free one, in turn), as the
//! closed and open loops of [`crate::load`] do:
//!
//! ```text
//!   join due at (u - 1) / rate        the room opens open_margin after the last join
//!   POST /showtimes/{id}/queue ──> waiting / in_line ──(poll)──> admitted ──> POST /reserve
//!                                        ^        |                          (Admission-Token)
//!                                        '--------'                            │ 200: pay
//!                      GET /showtimes/{id}/queue/me (Queue-Ticket)             v (as million)
//!                      when the room's poll_after_ms says (else every      sold_out: done
//!                      estimated wait +-20% within --poll-ms),   or the room says sold_out
//!                      bots every --bot-poll-ms
//! ```
//!
//! Every buyer joins before the opening, so the room draws the line by lot. The first
//! `--head-start-pct` of the buyers have a head start: they join first and poll fastest.
//! Each request's latency counts from when it was due (its join's slot in the schedule,
//! its poll's time, or the answer that let it reserve or pay), so a wait for a connection
//! or a backlog shows as latency, as in the open loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::RoomArgs;
use crate::client::{Answer, Conn, Endpoint};
use crate::load::{self, Latency, Outcomes, PhaseResult, Reserve, Sample, Won};
use crate::plan::Plan;
use crate::verify::Check;

/// How the crowd goes through the room.
#[derive(Debug, Clone)]
pub(crate) struct RoomDrive {
    /// Buyers joining per second, in user order.
    pub(crate) rate: f64,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Duration,
    /// The bench pays every hold (else the server's mock payer does, or nobody).
    pub(crate) pay: bool,
    /// Users `1..=head_start` are the bots.
    pub(crate) head_start: u64,
    pub(crate) room: RoomArgs,
}

impl RoomDrive {
    /// The `waiting_room` of `POST /showtimes`, opening at `opens_at`.
    fn settings(&self, opens_at: DateTime<Utc>) -> serde_json::Value {
        let mut s = serde_json::json!({
            "opens_at": opens_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        let r = &self.room;
        for (key, value) in [
            ("admit_per_sec", r.admit_per_sec),
            ("overbook_pct", r.overbook_pct),
            ("admission_secs", r.admission_secs),
        ] {
            if let Some(v) = value {
                s[key] = v.into();
            }
        }
        s
    }

    pub(crate) fn describe(&self) -> String {
        let r = &self.room;
        format!(
            "waiting room: joins at {:.0}/s, the room opens {} ms after the last; polls every {}-{} ms (estimated wait +-20% within), the head start ({} buyers) every {} ms; <={} conns",
            self.rate,
            r.open_margin_ms,
            r.poll_ms.0,
            r.poll_ms.1,
            self.head_start,
            r.bot_poll_ms,
            self.concurrency
        )
    }
}

/// The requests a buyer makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Join,
    Poll,
    Reserve,
    Pay,
}

/// One answer: what it was, when it came (µs after the start) and how long it took from
/// when it was due (µs).
#[derive(Debug, Clone, Copy)]
struct Answered {
    kind: Kind,
    end_us: u64,
    latency_us: u64,
    held: bool,
}

/// How a buyer's visit ended.
#[derive(Debug, Clone)]
enum End {
    /// Held a seat (reservation id), paid by the bench or not.
    Held { id: String, paid: bool },
    /// Admitted, reserved, answered `sold_out`.
    SoldOutAtReserve,
    /// The room said `sold_out` (µs after the start).
    ToldSoldOut { at_us: u64 },
    /// Anything else: what it was.
    Other(String),
}

/// One buyer's visit.
#[derive(Debug)]
struct Visit {
    user: u64,
    showtime: usize,
    answers: Vec<Answered>,
    /// When the room first said `admitted`, µs after the start.
    admitted_at_us: Option<u64>,
    /// Its admission token, kept for the used-admission probe.
    admission: Option<String>,
    end: End,
    errors: Vec<String>,
    error_count: u64,
    /// Answers 429 (rate limited).
    rate_limited: u64,
}

/// The part of a `QueueStatus` the bench reads.
#[derive(Debug, Deserialize)]
struct QueueStatus {
    status: String,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    estimated_wait_secs: Option<f64>,
    /// The room's pacing: when to ask again.
    #[serde(default)]
    poll_after_ms: Option<u64>,
    #[serde(default)]
    admission: Option<String>,
}

/// A bounded pool of keep-alive connections: a request waits for a free one, in turn
/// (the semaphore is fair).
struct Pool {
    slots: Semaphore,
    conns: Mutex<Vec<Conn>>,
}

impl Pool {
    async fn open(endpoint: &Endpoint, n: usize, timeout: Duration) -> anyhow::Result<Self> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = Conn::new(endpoint.clone(), timeout);
            c.connect().await?;
            conns.push(c);
        }
        Ok(Self {
            slots: Semaphore::new(n),
            conns: Mutex::new(conns),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, &str)],
    ) -> anyhow::Result<Answer> {
        let _slot = self.slots.acquire().await?;
        let mut conn = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .context("a connection for every slot")?;
        // Boxed: inline, a request's future (a reconnect and hyper's handshake among its
        // states) made every one of the crowd's 200,000 waiting tasks 1,448 bytes instead
        // of 784, all of it fresh memory the kernel zeroes while the crowd joins. Boxed,
        // it lives only while sent, in memory the allocator hands out again and again.
        let answer = Box::pin(conn.request_with(method, path, body, headers)).await;
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        answer
    }
}

/// What every buyer shares.
struct Ctx {
    pool: Pool,
    plan: Plan,
    ids: Vec<i64>,
    drive: RoomDrive,
    started: Instant,
}

/// A buyer gives up after this many errors in a row on one step.
const TRIES: u32 = 10;

/// A buyer answered 429 (the server's per-user rate limit) asks again after this long.
const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);

impl Ctx {
    fn us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_micros() as u64
    }

    fn pause(&self, bot: bool, status: Option<&QueueStatus>) -> Duration {
        pause(
            &self.drive.room,
            bot,
            status.and_then(|s| s.poll_after_ms),
            status.and_then(|s| s.estimated_wait_secs),
        )
    }
}

/// The pause before a buyer's next poll: a bot's fixed one; else the room's own
/// `poll_after_ms`; else (a server that does not pace) the estimated wait +-20% kept
/// within `--poll-ms`, or uniformly in it without an estimate.
fn pause(
    r: &RoomArgs,
    bot: bool,
    poll_after_ms: Option<u64>,
    estimated_wait: Option<f64>,
) -> Duration {
    if bot {
        return Duration::from_millis(r.bot_poll_ms);
    }
    if let Some(ms) = poll_after_ms {
        return Duration::from_millis(ms);
    }
    let (lo, hi) = (r.poll_ms.0 as f64 / 1000.0, r.poll_ms.1 as f64 / 1000.0);
    let secs = match estimated_wait {
        Some(w) if w.is_finite() => (w * rand::random_range(0.8..=1.2)).clamp(lo, hi),
        _ => rand::random_range(lo..=hi),
    };
    Duration::from_secs_f64(secs)
}

impl Visit {
    fn record(&mut self, ctx: &Ctx, kind: Kind, due: Instant, held: bool) -> Instant {
        let end = Instant::now();
        self.answers.push(Answered {
            kind,
            end_us: ctx.us(end),
            latency_us: end.saturating_duration_since(due).as_micros() as u64,
            held,
        });
        end
    }

    fn used_admission(&self, ctx: &Ctx, holds: bool) -> Option<UsedAdmission> {
        Some(UsedAdmission {
            showtime: ctx.ids[self.showtime],
            user: self.user,
            token: self.admission.clone()?,
            holds,
        })
    }

    fn error(&mut self, what: String) {
        self.error_count += 1;
        if self.errors.len() < 2 {
            self.errors.push(format!("user {}: {what}", self.user));
        }
    }
}

/// One buyer: join at `due`, poll until admitted or sold out, reserve, pay.
async fn buyer(ctx: Arc<Ctx>, user: u64, due: Instant) -> Visit {
    let (showtime, _) = ctx.plan.job(user - 1);
    let id = ctx.ids[showtime];
    let bot = user <= ctx.drive.head_start;
    let mut v = Visit {
        user,
        showtime,
        answers: Vec::with_capacity(4),
        admitted_at_us: None,
        admission: None,
        end: End::Other("never answered".into()),
        errors: Vec::new(),
        error_count: 0,
        rate_limited: 0,
    };
    let mut ticket: Option<String> = None;
    let mut due = due;
    let mut failures = 0;
    // Join, then poll: each answer is a status or a reason to stop.
    let admission = loop {
        tokio::time::sleep_until(due).await;
        let (kind, answer) = match &ticket {
            None => (
                Kind::Join,
                ctx.pool
                    .send(
                        Method::POST,
                        &format!("/showtimes/{id}/queue"),
                        Some(format!(r#"{{"user_id":{user}}}"#).into_bytes()),
                        &[],
                    )
                    .await,
            ),
            Some(t) => (
                Kind::Poll,
                ctx.pool
                    .send(
                        Method::GET,
                        &format!("/showtimes/{id}/queue/me?user_id={user}"),
                        None,
                        &[("queue-ticket", t.as_str())],
                    )
                    .await,
            ),
        };
        let end = v.record(&ctx, kind, due, false);
        let status = match answer {
            Ok(a) if a.status == StatusCode::OK => match a.json::<QueueStatus>() {
                Ok(s) => s,
                Err(e) => {
                    v.end = End::Other(format!("{kind:?}: {e:#}"));
                    return v;
                }
            },
            Ok(a) if a.status == StatusCode::TOO_MANY_REQUESTS => {
                // The per-user rate limit: slow down, as a client must.
                v.rate_limited += 1;
                due = end + RATE_LIMITED_PAUSE;
                continue;
            }
            Ok(a) if a.status.is_client_error() => {
                v.end = End::Other(format!(
                    "{kind:?} answered {}: {}",
                    a.status,
                    load::brief(&a.body)
                ));
                return v;
            }
            Ok(a) => {
                v.error(format!(
                    "{kind:?} answered {}: {}",
                    a.status,
                    load::brief(&a.body)
                ));
                failures += 1;
                if failures >= TRIES {
                    v.end = End::Other(format!("gave up after {TRIES} errors"));
                    return v;
                }
                due = end + ctx.pause(bot, None);
                continue;
            }
            Err(e) => {
                v.error(format!("{kind:?}: {e:#}"));
                failures += 1;
                if failures >= TRIES {
                    v.end = End::Other(format!("gave up after {TRIES} errors"));
                    return v;
                }
                due = end + ctx.pause(bot, None);
                continue;
            }
        };
        failures = 0;
        if status.ticket.is_some() {
            ticket = status.ticket.clone();
        } else if ticket.is_none() {
            v.end = End::Other(format!("{kind:?}: {} without a ticket", status.status));
            return v;
        }
        match status.status.as_str() {
            "admitted" => match status.admission {
                Some(a) => {
                    v.admitted_at_us = Some(v.answers.last().map_or(0, |a| a.end_us));
                    break (a, end);
                }
                None => {
                    v.end = End::Other("admitted without an admission token".into());
                    return v;
                }
            },
            "sold_out" => {
                v.end = End::ToldSoldOut { at_us: ctx.us(end) };
                return v;
            }
            "waiting" | "in_line" => {
                due = end + ctx.pause(bot, Some(&status));
            }
            other => {
                v.end = End::Other(format!("the room said {other}"));
                return v;
            }
        }
    };
    let (token, mut due) = admission;
    v.admission = Some(token.clone());
    // Reserve at once; a 5xx (or no answer) leaves the admission unused: again.
    let body = format!(r#"{{"user_id":{user},"showtime_id":{id}}}"#).into_bytes();
    let mut tries = 0;
    let reservation = loop {
        tokio::time::sleep_until(due).await;
        let answer = ctx
            .pool
            .send(
                Method::POST,
                "/reserve",
                Some(body.clone()),
                &[("admission-token", token.as_str())],
            )
            .await;
        let r = load::reserve_answer(answer);
        let held = matches!(r, Reserve::Reserved(_));
        let end = v.record(&ctx, Kind::Reserve, due, held);
        match r {
            Reserve::Reserved(rid) => break (rid, end),
            Reserve::SoldOut => {
                v.end = End::SoldOutAtReserve;
                return v;
            }
            Reserve::Rejected(429) => {
                v.rate_limited += 1;
                due = end + RATE_LIMITED_PAUSE;
            }
            Reserve::Error(e) => {
                v.error(format!("reserve: {e}"));
                tries += 1;
                if tries >= TRIES {
                    v.end = End::Other(format!("reserve gave up after {TRIES} errors"));
                    return v;
                }
                due = end + Duration::from_millis(50);
            }
            other => {
                v.end = End::Other(format!("reserve answered {other:?}"));
                return v;
            }
        }
    };
    let (rid, end) = reservation;
    let mut paid = false;
    if ctx.drive.pay {
        let path = format!("/reservations/{rid}/pay");
        let answer = ctx
            .pool
            .send(
                Method::POST,
                &path,
                Some(format!(r#"{{"user_id":{user}}}"#).into_bytes()),
                &[],
            )
            .await;
        v.record(&ctx, Kind::Pay, end, false);
        match answer {
            Ok(a) if a.status == StatusCode::OK => paid = true,
            Ok(a) => v.error(format!("pay {rid}: {}: {}", a.status, load::brief(&a.body))),
            Err(e) => v.error(format!("pay {rid}: {e:#}")),
        }
    }
    v.end = End::Held { id: rid, paid };
    v
}

/// A latency summary in seconds (for waits counted in seconds, not requests).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Spread {
    pub(crate) count: u64,
    pub(crate) p50_s: f64,
    pub(crate) p99_s: f64,
    pub(crate) max_s: f64,
}

impl Spread {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            p50_s: h.value_at_quantile(0.5) as f64 / 1e6,
            p99_s: h.value_at_quantile(0.99) as f64 / 1e6,
            max_s: h.max() as f64 / 1e6,
        })
    }
}

/// The buyers with a head start, and the seats they got.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HeadStart {
    pub(crate) buyers: u64,
    pub(crate) seats: u64,
    pub(crate) of_seats: u64,
    /// `seats / of_seats`.
    pub(crate) share: f64,
}

impl HeadStart {
    /// The head start's share of the holds in `won` (users `1..=buyers`).
    pub(crate) fn of(won: &[Won], buyers: u64) -> Self {
        let seats = won.iter().filter(|w| w.user <= buyers).count() as u64;
        let of_seats = won.len() as u64;
        Self {
            buyers,
            seats,
            of_seats,
            share: seats as f64 / of_seats.max(1) as f64,
        }
    }
}

/// What the room phase measured beyond a phase's usual figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoomSummary {
    pub(crate) drive: String,
    /// The room's settings as sent (`waiting_room` of `POST /showtimes`).
    pub(crate) settings: serde_json::Value,
    pub(crate) buyers: u64,
    /// Requests by kind.
    pub(crate) joins: u64,
    pub(crate) polls: u64,
    pub(crate) reserves: u64,
    pub(crate) pays: u64,
    /// Every answer (join, poll, reserve, pay), over the whole run.
    pub(crate) latency_all: Latency,
    /// Every answer from the opening until the last hold (the selling seconds).
    pub(crate) latency_selling: Option<Latency>,
    pub(crate) latency_join: Option<Latency>,
    pub(crate) latency_poll: Option<Latency>,
    pub(crate) latency_reserve: Option<Latency>,
    pub(crate) latency_pay: Option<Latency>,
    /// The opening, seconds after the first join was due.
    pub(crate) opens_after_s: f64,
    /// From the opening until the last hold was granted.
    pub(crate) sold_out_after_opening_s: Option<f64>,
    /// From the opening until the first buyer was told it was admitted.
    pub(crate) first_admitted_after_opening_s: Option<f64>,
    /// Buyers told `admitted`, and the most the room may admit (seats plus overbooking).
    pub(crate) admitted: u64,
    pub(crate) admitted_bound: u64,
    pub(crate) held: u64,
    pub(crate) sold_out_at_reserve: u64,
    pub(crate) told_sold_out: u64,
    /// Answers 429 (the server's per-user rate limit), asked again a second later.
    pub(crate) rate_limited: u64,
    /// How long after the last hold the buyers the room told `sold_out` learned it.
    pub(crate) told_sold_out_after_last_hold: Option<Spread>,
    /// Buyers whose visit ended otherwise (an error, a refusal, a status the contract
    /// does not name), with examples.
    pub(crate) other_ends: u64,
    pub(crate) other_examples: Vec<String>,
    pub(crate) head_start: HeadStart,
    pub(crate) probes: Vec<Check>,
}

/// An admission a buyer used, for a probe after the phase.
#[derive(Debug, Clone)]
pub(crate) struct UsedAdmission {
    pub(crate) showtime: i64,
    pub(crate) user: u64,
    pub(crate) token: String,
    /// The buyer holds a seat (else it was answered sold out).
    pub(crate) holds: bool,
}

/// The room phase: the phase result (for the usual report and verification), its own
/// summary, and admissions already used: one of a holder, one of a buyer answered sold
/// out (for the probes after the phase).
pub(crate) struct RoomRun {
    pub(crate) phase: PhaseResult,
    pub(crate) ids: Vec<i64>,
    pub(crate) summary: RoomSummary,
    pub(crate) used_admissions: Vec<UsedAdmission>,
}

/// Creates the room's showtimes, opening after the crowd has joined, and drives the
/// crowd through them.
pub(crate) async fn run(
    endpoint: &Endpoint,
    plan: &Plan,
    drive: &RoomDrive,
) -> anyhow::Result<RoomRun> {
    let users = plan.users;
    let span = Duration::from_secs_f64(users as f64 / drive.rate.max(1.0));
    let margin = Duration::from_millis(drive.room.open_margin_ms);
    // Time to create the showtimes and connect before the first join is due.
    let setup = Duration::from_millis(500);
    let (anchor, anchor_utc) = (Instant::now(), Utc::now());
    let wanted = anchor_utc + chrono::Duration::from_std(setup + span + margin)?;
    let settings = drive.settings(wanted);
    let (ids, opens_at) = create_showtimes(endpoint, plan, &settings).await?;
    // The opening as the server has it (it may round), on this process's clock.
    let opening = anchor + (opens_at - anchor_utc).to_std().unwrap_or_default();
    let started = opening.checked_sub(span + margin).unwrap_or(opening);
    let mut probes = vec![probe_without_admission(endpoint, ids[0], users + 1).await?];
    let pool = Pool::open(endpoint, drive.concurrency.max(1), drive.timeout).await?;
    let ctx = Arc::new(Ctx {
        pool,
        plan: plan.clone(),
        ids: ids.clone(),
        drive: drive.clone(),
        started,
    });
    if Instant::now() > started {
        eprintln!(
            "   the first join is {:.0} ms late (creating the showtimes took long)",
            Instant::now().duration_since(started).as_secs_f64() * 1000.0
        );
    }
    let mut visits = JoinSet::new();
    for u in 1..=users {
        let due = started + Duration::from_secs_f64((u - 1) as f64 / drive.rate.max(1.0));
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        visits.spawn(buyer(ctx.clone(), u, due));
    }
    let mut all = Vec::with_capacity(users as usize);
    while let Some(v) = visits.join_next().await {
        all.push(v?);
    }
    let ended = Instant::now();
    let opening_us = opening.saturating_duration_since(started).as_micros() as u64;

    let mut outcomes = Outcomes::default();
    let mut every = load::histogram();
    let mut selling = load::histogram();
    let mut by_kind = [
        load::histogram(),
        load::histogram(),
        load::histogram(),
        load::histogram(),
    ];
    let mut samples = Vec::new();
    let mut won = Vec::new();
    let mut error_examples = Vec::new();
    let mut admitted = 0;
    let mut first_admitted: Option<u64> = None;
    let mut told = Vec::new();
    let mut other_examples = Vec::new();
    let (mut sold_out_at_reserve, mut other_ends) = (0, 0);
    let (mut used_by_holder, mut used_by_sold_out) = (None, None);
    for v in &all {
        for a in &v.answers {
            samples.push(Sample {
                end_us: a.end_us,
                latency_us: a.latency_us.min(u64::from(u32::MAX)) as u32,
                pay: a.kind == Kind::Pay,
                reserved: a.held,
            });
        }
        if let Some(at) = v.admitted_at_us {
            admitted += 1;
            first_admitted = Some(first_admitted.map_or(at, |f| f.min(at)));
        }
        outcomes.errors += v.error_count;
        error_examples.extend(v.errors.iter().take(1).cloned());
        match &v.end {
            End::Held { id, paid } => {
                outcomes.reserved += 1;
                outcomes.paid += u64::from(*paid);
                if used_by_holder.is_none() {
                    used_by_holder = v.used_admission(&ctx, true);
                }
                won.push(Won {
                    showtime: v.showtime,
                    user: v.user,
                    id: id.clone(),
                    paid: *paid,
                });
            }
            End::SoldOutAtReserve => {
                if used_by_sold_out.is_none() {
                    used_by_sold_out = v.used_admission(&ctx, false);
                }
                outcomes.sold_out += 1;
                sold_out_at_reserve += 1;
            }
            End::ToldSoldOut { at_us } => {
                outcomes.sold_out += 1;
                told.push(*at_us);
            }
            End::Other(what) => {
                outcomes.rejected += 1;
                other_ends += 1;
                if other_examples.len() < 8 {
                    other_examples.push(format!("user {}: {what}", v.user));
                }
            }
        }
    }
    error_examples.truncate(8);
    samples.sort_unstable_by_key(|s| s.end_us);
    let last_win_us = samples
        .iter()
        .filter(|s| s.reserved)
        .map(|s| s.end_us)
        .max()
        .unwrap_or(0);
    let mut reserve_latency = load::histogram();
    let mut pay_latency = load::histogram();
    let mut counts = [0u64; 4];
    for v in &all {
        for a in &v.answers {
            let l = a.latency_us.max(1);
            every.saturating_record(l);
            let k = a.kind as usize;
            by_kind[k].saturating_record(l);
            counts[k] += 1;
            if a.end_us >= opening_us && a.end_us <= last_win_us {
                selling.saturating_record(l);
            }
            if a.kind == Kind::Pay {
                pay_latency.saturating_record(l);
            } else {
                reserve_latency.saturating_record(l);
            }
        }
    }
    let mut told_after = load::histogram();
    for at in told.iter().filter(|&&at| at >= last_win_us) {
        told_after.saturating_record((at - last_win_us).max(1));
    }
    let admitted_bound: u64 = plan
        .capacities
        .iter()
        .map(|&c| {
            (u64::from(c) * (100 + u64::from(drive.room.overbook_pct.unwrap_or(10)))).div_ceil(100)
        })
        .sum();
    let bound_ok = drive.room.admit_per_sec.is_some() || admitted <= admitted_bound;
    probes.push(Check {
        name: "no more admitted than the seats plus the overbooking".into(),
        ok: bound_ok,
        detail: format!("{admitted} admitted, at most {admitted_bound}"),
    });
    probes.push(Check {
        name: "every buyer held a seat or was told sold_out".into(),
        ok: other_ends == 0,
        detail: match other_examples.first() {
            None => format!("all {users}"),
            Some(e) => format!("{other_ends} did not, e.g. {e}"),
        },
    });
    let opt = |h: &Histogram<u64>| (!h.is_empty()).then(|| Latency::of(h));
    let secs_after_opening = |us: u64| us.saturating_sub(opening_us) as f64 / 1e6;
    let summary = RoomSummary {
        drive: drive.describe(),
        settings,
        buyers: users,
        joins: counts[Kind::Join as usize],
        polls: counts[Kind::Poll as usize],
        reserves: counts[Kind::Reserve as usize],
        pays: counts[Kind::Pay as usize],
        latency_all: Latency::of(&every),
        latency_selling: opt(&selling),
        latency_join: opt(&by_kind[Kind::Join as usize]),
        latency_poll: opt(&by_kind[Kind::Poll as usize]),
        latency_reserve: opt(&by_kind[Kind::Reserve as usize]),
        latency_pay: opt(&by_kind[Kind::Pay as usize]),
        opens_after_s: opening_us as f64 / 1e6,
        sold_out_after_opening_s: (last_win_us > 0).then(|| secs_after_opening(last_win_us)),
        first_admitted_after_opening_s: first_admitted.map(secs_after_opening),
        admitted,
        admitted_bound,
        held: outcomes.reserved,
        sold_out_at_reserve,
        told_sold_out: told.len() as u64,
        rate_limited: all.iter().map(|v| v.rate_limited).sum(),
        told_sold_out_after_last_hold: Spread::of(&told_after),
        other_ends,
        other_examples,
        head_start: HeadStart::of(&won, drive.head_start),
        probes,
    };
    let total = samples.len() as u64;
    let phase = PhaseResult {
        duration: ended.saturating_duration_since(started),
        attempts: total,
        outcomes,
        reserve_latency,
        pay_latency,
        samples,
        won,
        error_examples,
        started,
        ended,
        last_win_us,
    };
    Ok(RoomRun {
        phase,
        ids,
        summary,
        used_admissions: used_by_holder.into_iter().chain(used_by_sold_out).collect(),
    })
}

/// Creates the plan's showtimes with the room `settings`; their ids and the opening the
/// server recorded.
async fn create_showtimes(
    endpoint: &Endpoint,
    plan: &Plan,
    settings: &serde_json::Value,
) -> anyhow::Result<(Vec<i64>, DateTime<Utc>)> {
    #[derive(Deserialize)]
    struct Room {
        opens_at: DateTime<Utc>,
    }
    #[derive(Deserialize)]
    struct Created {
        id: i64,
        waiting_room: Option<Room>,
    }
    let mut conn = Conn::new(endpoint.clone(), Duration::from_secs(10));
    let starts_at =
        (Utc::now() + chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut ids = Vec::with_capacity(plan.capacities.len());
    let mut opens_at = None;
    for (i, &capacity) in plan.capacities.iter().enumerate() {
        let body = serde_json::json!({
            "capacity": capacity,
            "title": format!("bench waiting room #{i}"),
            "starts_at": starts_at,
            "waiting_room": settings,
        });
        let a = conn.post_json("/showtimes", &body).await?;
        if a.status != StatusCode::CREATED {
            bail!(
                "POST /showtimes with a waiting room answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        let created: Created = a.json()?;
        let Some(room) = created.waiting_room else {
            bail!(
                "POST /showtimes answered no waiting_room: {}",
                String::from_utf8_lossy(&a.body)
            );
        };
        opens_at = Some(opens_at.map_or(room.opens_at, |o: DateTime<Utc>| o.max(room.opens_at)));
        ids.push(created.id);
    }
    Ok((ids, opens_at.context("a plan has a showtime")?))
}

/// `POST /reserve` without an admission, by a user not in the crowd: 403 `not_admitted`.
async fn probe_without_admission(
    endpoint: &Endpoint,
    showtime: i64,
    user: u64,
) -> anyhow::Result<Check> {
    let mut conn = Conn::new(endpoint.clone(), Duration::from_secs(10));
    let body = serde_json::json!({"user_id": user, "showtime_id": showtime});
    let a = conn.post_json("/reserve", &body).await?;
    Ok(refused("a reserve without an admission is refused", &a))
}

/// `POST /reserve` again with an admission already used: 403 `not_admitted` in the
/// contract (run before the phase is verified, which then finds nothing changed). The
/// sale's own 409 takes nothing either, and the server may answer it first: a holder's
/// `already_ordered` (its hold is found before its admission) or, once the sale is sold
/// out, `sold_out` (its sold-out memory answers before the store is asked); the check
/// takes those too and its detail says which came.
pub(crate) async fn probe_used_admission(
    endpoint: &Endpoint,
    used: &UsedAdmission,
) -> anyhow::Result<Check> {
    let UsedAdmission {
        showtime,
        user,
        token,
        holds,
    } = used;
    let mut conn = Conn::new(endpoint.clone(), Duration::from_secs(10));
    let body = format!(r#"{{"user_id":{user},"showtime_id":{showtime}}}"#).into_bytes();
    let a = conn
        .request_with(
            Method::POST,
            "/reserve",
            Some(body),
            &[("admission-token", token.as_str())],
        )
        .await?;
    let mut check = refused(
        if *holds {
            "an admission used for a hold takes nothing"
        } else {
            "an admission used by a sold-out answer takes nothing"
        },
        &a,
    );
    let code = a.fields().and_then(|f| f.error.map(str::to_string));
    let sale_answer = if *holds {
        "already_ordered"
    } else {
        "sold_out"
    };
    if !check.ok && a.status == StatusCode::CONFLICT && code.as_deref() == Some(sale_answer) {
        check.ok = true;
        check.detail = format!(
            "409 {sale_answer}, not the contract's 403 not_admitted (nothing taken): {}",
            load::brief(&a.body)
        );
    }
    Ok(check)
}

fn refused(name: &str, a: &Answer) -> Check {
    let code = a.fields().and_then(|f| f.error.map(str::to_string));
    Check {
        name: format!("{name} (403 not_admitted)"),
        ok: a.status == StatusCode::FORBIDDEN && code.as_deref() == Some("not_admitted"),
        detail: format!("{}: {}", a.status, load::brief(&a.body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;

    use axum::extract::{Path, Query, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use axum::{Json, Router};

    /// A room after the contract, small enough to read: one showtime of `seats`, the line
    /// in join order, everyone admitted once the room opens while seats are left.
    struct Fake {
        seats: u64,
        opens: Instant,
        /// Admitted, not yet reserved.
        admitted: HashSet<u64>,
        /// Admitted in all: at most the seats.
        ever: u64,
        held: u64,
    }

    type Shared = Arc<Mutex<Fake>>;

    fn reply(status: StatusCode, body: serde_json::Value) -> (StatusCode, Json<serde_json::Value>) {
        (status, Json(body))
    }

    fn standing(f: &mut Fake, user: u64) -> serde_json::Value {
        let status = if Instant::now() < f.opens {
            "waiting"
        } else if f.admitted.contains(&user) {
            "admitted"
        } else if f.held >= f.seats {
            "sold_out"
        } else if f.ever >= f.seats {
            "in_line"
        } else {
            f.admitted.insert(user);
            f.ever += 1;
            "admitted"
        };
        serde_json::json!({
            "status": status,
            "ticket": format!("t{user}"),
            "estimated_wait_secs": null,
            "admission": (status == "admitted").then(|| format!("a{user}")),
        })
    }

    async fn fake_room(seats: u64, opens_in: Duration) -> Endpoint {
        let fake: Shared = Arc::new(Mutex::new(Fake {
            seats,
            opens: Instant::now() + opens_in,
            admitted: HashSet::new(),
            ever: 0,
            held: 0,
        }));
        let opens_at = Utc::now() + chrono::Duration::from_std(opens_in).unwrap();
        let app =
            Router::new()
                .route(
                    "/showtimes",
                    post(move |Json(b): Json<serde_json::Value>| async move {
                        let mut room = b["waiting_room"].clone();
                        room["opens_at"] = opens_at.to_rfc3339().into();
                        reply(
                            StatusCode::CREATED,
                            serde_json::json!({"id": 1, "waiting_room": room}),
                        )
                    }),
                )
                .route(
                    "/showtimes/{id}/queue",
                    post(
                        |State(f): State<Shared>, Json(b): Json<serde_json::Value>| async move {
                            let user = b["user_id"].as_u64().unwrap();
                            reply(StatusCode::OK, standing(&mut f.lock().unwrap(), user))
                        },
                    ),
                )
                .route(
                    "/showtimes/{id}/queue/me",
                    get(
                        |State(f): State<Shared>,
                         Path(_id): Path<i64>,
                         Query(q): Query<std::collections::HashMap<String, u64>>,
                         h: HeaderMap| async move {
                            let user = q["user_id"];
                            if h.get("queue-ticket").and_then(|t| t.to_str().ok())
                                != Some(&format!("t{user}"))
                            {
                                return reply(
                                    StatusCode::FORBIDDEN,
                                    serde_json::json!({"error": "bad_ticket"}),
                                );
                            }
                            reply(StatusCode::OK, standing(&mut f.lock().unwrap(), user))
                        },
                    ),
                )
                .route(
                    "/reserve",
                    post(
                        |State(f): State<Shared>,
                         h: HeaderMap,
                         Json(b): Json<serde_json::Value>| async move {
                            let user = b["user_id"].as_u64().unwrap();
                            let mut f = f.lock().unwrap();
                            let token = h.get("admission-token").and_then(|t| t.to_str().ok());
                            if token != Some(&format!("a{user}")) || !f.admitted.remove(&user) {
                                return reply(
                                    StatusCode::FORBIDDEN,
                                    serde_json::json!({"error": "not_admitted"}),
                                );
                            }
                            if f.held >= f.seats {
                                return reply(
                                    StatusCode::CONFLICT,
                                    serde_json::json!({"error": "sold_out"}),
                                );
                            }
                            f.held += 1;
                            reply(
                                StatusCode::OK,
                                serde_json::json!({"reservation_id": format!("1-{}", f.held)}),
                            )
                        },
                    ),
                )
                .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint::from_addr(addr)
    }

    #[tokio::test]
    async fn a_crowd_goes_through_the_room_and_every_buyer_ends_held_or_told_sold_out() {
        let plan = Plan::new(
            crate::plan::Scenario::MillionQueued,
            &crate::plan::Overrides {
                users: Some(300),
                capacity: Some(20),
                ..Default::default()
            },
        );
        let drive = RoomDrive {
            rate: 3_000.0,
            concurrency: 8,
            timeout: Duration::from_secs(5),
            pay: false,
            head_start: plan.head_start(1.0),
            room: RoomArgs {
                poll_ms: (20, 60),
                bot_poll_ms: 5,
                open_margin_ms: 100,
                ..room()
            },
        };
        let endpoint = fake_room(20, Duration::from_millis(700)).await;
        let run = run(&endpoint, &plan, &drive).await.unwrap();
        let s = &run.summary;
        assert_eq!((s.buyers, s.joins, s.held), (300, 300, 20), "{s:#?}");
        assert_eq!(s.told_sold_out + s.sold_out_at_reserve, 280, "{s:#?}");
        assert_eq!(s.other_ends, 0, "{s:#?}");
        assert!(s.probes.iter().all(|c| c.ok), "{:#?}", s.probes);
        assert_eq!(run.phase.won.len(), 20);
        assert_eq!(run.phase.attempts, s.joins + s.polls + s.reserves);
        assert!(s.sold_out_after_opening_s.is_some());
        assert!(!run.used_admissions.is_empty());
        for used in &run.used_admissions {
            assert!(probe_used_admission(&endpoint, used).await.unwrap().ok);
        }
    }

    fn room() -> RoomArgs {
        RoomArgs {
            poll_ms: (250, 1000),
            bot_poll_ms: 50,
            head_start_pct: 1.0,
            open_margin_ms: 1000,
            admit_per_sec: None,
            overbook_pct: None,
            admission_secs: None,
            polls_per_sec: None,
            holds_per_sec: None,
            join_rate: None,
        }
    }

    #[test]
    fn bots_poll_at_their_pace_and_people_within_the_range() {
        let r = room();
        let ms = |d: Duration| d.as_millis() as u64;
        for _ in 0..1000 {
            assert_eq!(ms(pause(&r, true, Some(3_000), Some(30.0))), 50);
            assert!((250..=1000).contains(&ms(pause(&r, false, None, None))));
            // A long wait polls at the longest pause, a short one at the shortest.
            assert_eq!(ms(pause(&r, false, None, Some(60.0))), 1000);
            assert_eq!(ms(pause(&r, false, None, Some(0.01))), 250);
            assert!((400..=600).contains(&ms(pause(&r, false, None, Some(0.5)))));
            // The room's own pacing, whatever the range.
            assert_eq!(ms(pause(&r, false, Some(7_500), Some(0.5))), 7_500);
        }
    }

    #[test]
    fn the_head_start_share_counts_the_first_users_holds() {
        let won = |user| Won {
            showtime: 0,
            user,
            id: format!("1-{user}"),
            paid: true,
        };
        let h = HeadStart::of(&[won(1), won(2), won(30), won(40)], 2);
        assert_eq!((h.seats, h.of_seats), (2, 4));
        assert!((h.share - 0.5).abs() < 1e-9);
        assert_eq!(HeadStart::of(&[], 2).share, 0.0);
    }

    #[test]
    fn the_room_settings_carry_only_what_was_given() {
        let drive = RoomDrive {
            rate: 1000.0,
            concurrency: 4,
            timeout: Duration::from_secs(1),
            pay: false,
            head_start: 1,
            room: RoomArgs {
                overbook_pct: Some(0),
                ..room()
            },
        };
        let at = DateTime::parse_from_rfc3339("2026-12-03T17:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            drive.settings(at),
            serde_json::json!({"opens_at": "2026-12-03T17:00:00.250Z", "overbook_pct": 0})
        );
    }
}
