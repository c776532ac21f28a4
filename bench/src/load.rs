//! The load driver: a fixed pool of workers (one connection each) pulls attempt indices
//! from a shared counter, closed-loop (each worker sends its next request as soon as the
//! previous one is answered) or open-loop (attempt i is due at start + i / rate, and its
//! latency counts from when it was due, so a backlog shows as latency instead of being
//! hidden: no coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::StatusCode;
use indicatif::{ProgressBar, ProgressStyle};
use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{Answer, Conn, Endpoint};
use crate::plan::Plan;

/// The answer to one reserve attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reserve {
    /// Held; the reservation id (`<showtime>-<seq>`).
    Reserved(String),
    SoldOut,
    AlreadyOrdered,
    /// A 4xx other than the two above (bad input, unknown showtime, ...).
    Rejected(u16),
    /// A 5xx, a transport error, a timeout or an answer that makes no sense.
    Error(String),
}

/// The answer to one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pay {
    Paid,
    Failed(String),
}

/// One virtual buyer's channel to a target.
pub(crate) trait Session: Send + 'static {
    fn reserve(&mut self, showtime: i64, user: u64) -> impl Future<Output = Reserve> + Send;
    fn pay(&mut self, reservation: &str, user: u64) -> impl Future<Output = Pay> + Send;
}

/// Something the load generator can drive.
pub(crate) trait Target: Send + Sync + 'static {
    type S: Session;
    fn open(&self) -> impl Future<Output = anyhow::Result<Self::S>> + Send;
}

// ---------------------------------------------------------------------------------------
// HTTP (flash-sale, or the stub server for the HTTP ceiling)

/// flash-sale's HTTP contract, or anything answering it.
#[derive(Debug, Clone)]
pub(crate) struct HttpTarget {
    pub(crate) endpoint: Endpoint,
    pub(crate) timeout: Duration,
}

impl Target for HttpTarget {
    type S = Conn;
    async fn open(&self) -> anyhow::Result<Conn> {
        let mut c = Conn::new(self.endpoint.clone(), self.timeout);
        c.connect().await?;
        Ok(c)
    }
}

pub(crate) fn brief(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(160).collect()
}

/// What an answer to `POST /reserve` means.
pub(crate) fn reserve_answer(answer: anyhow::Result<Answer>) -> Reserve {
    let a = match answer {
        Ok(a) => a,
        Err(e) => return Reserve::Error(format!("{e:#}")),
    };
    let fields = a.fields();
    match a.status {
        StatusCode::OK => match fields.and_then(|f| f.reservation_id.map(str::to_string)) {
            Some(id) => Reserve::Reserved(id),
            None => Reserve::Error(format!("200 without reservation_id: {}", brief(&a.body))),
        },
        StatusCode::CONFLICT => match fields.and_then(|f| f.error) {
            Some("sold_out") => Reserve::SoldOut,
            Some("already_ordered") => Reserve::AlreadyOrdered,
            _ => Reserve::Rejected(409),
        },
        s if s.is_client_error() => Reserve::Rejected(s.as_u16()),
        s => Reserve::Error(format!("{s}: {}", brief(&a.body))),
    }
}

impl Session for Conn {
    async fn reserve(&mut self, showtime: i64, user: u64) -> Reserve {
        let body = format!(r#"{{"user_id":{user},"showtime_id":{showtime}}}"#).into_bytes();
        reserve_answer(
            self.request(hyper::Method::POST, "/reserve", Some(body))
                .await,
        )
    }

    async fn pay(&mut self, reservation: &str, user: u64) -> Pay {
        let body = format!(r#"{{"user_id":{user}}}"#).into_bytes();
        let path = format!("/reservations/{reservation}/pay");
        match self.request(hyper::Method::POST, &path, Some(body)).await {
            Ok(a) if a.status == StatusCode::OK => Pay::Paid,
            Ok(a) => Pay::Failed(format!("{}: {}", a.status, brief(&a.body))),
            Err(e) => Pay::Failed(format!("{e:#}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Redis (the ceiling: the reserve script itself, by EVALSHA, over one multiplexed
// connection shared by every worker, as flash-sale does)

pub(crate) struct RedisTarget {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) prefix: String,
    pub(crate) hold_ms: u64,
    pub(crate) scripts: Arc<(Script, Script)>,
}

pub(crate) struct RedisSession {
    conn: MultiplexedConnection,
    prefix: Arc<str>,
    hold_ms: u64,
    scripts: Arc<(Script, Script)>,
}

impl RedisTarget {
    pub(crate) fn new(conn: MultiplexedConnection, prefix: String, hold_ms: u64) -> Self {
        Self {
            conn,
            prefix,
            hold_ms,
            scripts: Arc::new((
                Script::new(include_str!("../../lua/reserve.lua")),
                Script::new(include_str!("../../lua/pay.lua")),
            )),
        }
    }
}

impl Target for RedisTarget {
    type S = RedisSession;
    async fn open(&self) -> anyhow::Result<RedisSession> {
        Ok(RedisSession {
            conn: self.conn.clone(),
            prefix: self.prefix.as_str().into(),
            hold_ms: self.hold_ms,
            scripts: self.scripts.clone(),
        })
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

impl Session for RedisSession {
    async fn reserve(&mut self, showtime: i64, user: u64) -> Reserve {
        let p = &self.prefix;
        let r: Result<Value, _> = self
            .scripts
            .0
            .key(format!("{p}:{{{showtime}}}:seats"))
            .key(format!("{p}:{{{showtime}}}:users"))
            .key(format!("{p}:{{{showtime}}}:seq"))
            .key(format!("{p}:{{{showtime}}}:deadlines"))
            .key(format!("{p}:{{{showtime}}}:reservations"))
            .arg(user)
            .arg(self.hold_ms)
            .arg("")
            .invoke_async(&mut self.conn)
            .await;
        let v = match r {
            Ok(v) => v,
            Err(e) => return Reserve::Error(e.to_string()),
        };
        let items = match &v {
            Value::Array(items) => items,
            _ => return Reserve::Error(format!("reserve.lua answered {v:?}")),
        };
        match items.first().and_then(int) {
            Some(1) => match items.get(1).and_then(int) {
                Some(seq) => Reserve::Reserved(format!("{showtime}-{seq}")),
                None => Reserve::Error(format!("reserve.lua answered {v:?}")),
            },
            Some(2) => Reserve::AlreadyOrdered,
            Some(3) => Reserve::SoldOut,
            Some(4) => Reserve::Rejected(404),
            _ => Reserve::Error(format!("reserve.lua answered {v:?}")),
        }
    }

    async fn pay(&mut self, reservation: &str, user: u64) -> Pay {
        let Some((showtime, seq)) = reservation.split_once('-') else {
            return Pay::Failed(format!("bad reservation id {reservation}"));
        };
        let p = &self.prefix;
        let r: Result<Value, _> = self
            .scripts
            .1
            .key(format!("{p}:{{{showtime}}}:seats"))
            .key(format!("{p}:{{{showtime}}}:users"))
            .key(format!("{p}:{{{showtime}}}:deadlines"))
            .key(format!("{p}:{{{showtime}}}:unrecorded"))
            .key(format!("{p}:{{{showtime}}}:reservations"))
            .arg(user)
            .arg(seq)
            .invoke_async(&mut self.conn)
            .await;
        match r {
            Ok(Value::Array(items)) if items.first().and_then(int) == Some(1) => Pay::Paid,
            Ok(v) => Pay::Failed(format!("pay.lua answered {v:?}")),
            Err(e) => Pay::Failed(e.to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Results

/// Counts of every kind of answer.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Outcomes {
    pub(crate) reserved: u64,
    pub(crate) sold_out: u64,
    pub(crate) already_ordered: u64,
    pub(crate) rejected: u64,
    pub(crate) errors: u64,
    pub(crate) paid: u64,
    pub(crate) pay_failed: u64,
}

impl Outcomes {
    fn add(&mut self, o: &Outcomes) {
        self.reserved += o.reserved;
        self.sold_out += o.sold_out;
        self.already_ordered += o.already_ordered;
        self.rejected += o.rejected;
        self.errors += o.errors;
        self.paid += o.paid;
        self.pay_failed += o.pay_failed;
    }
}

/// One finished request: when it ended (µs after the start) and how long it took (µs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) end_us: u64,
    pub(crate) latency_us: u32,
    pub(crate) pay: bool,
    /// A reserve answered with a hold.
    pub(crate) reserved: bool,
}

/// A reservation a buyer got: showtime index, user, reservation id, paid by the bench.
#[derive(Debug, Clone)]
pub(crate) struct Won {
    pub(crate) showtime: usize,
    pub(crate) user: u64,
    pub(crate) id: String,
    pub(crate) paid: bool,
}

/// Everything one phase measured.
pub(crate) struct PhaseResult {
    pub(crate) duration: Duration,
    pub(crate) attempts: u64,
    pub(crate) outcomes: Outcomes,
    pub(crate) reserve_latency: Histogram<u64>,
    pub(crate) pay_latency: Histogram<u64>,
    pub(crate) samples: Vec<Sample>,
    pub(crate) won: Vec<Won>,
    /// A few error messages, for the report.
    pub(crate) error_examples: Vec<String>,
    /// When its first attempt was due and when its last answer came.
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// When the last hold was granted, µs after the start (0: none was).
    pub(crate) last_win_us: u64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

struct WorkerResult {
    outcomes: Outcomes,
    reserve_latency: Histogram<u64>,
    pay_latency: Histogram<u64>,
    samples: Vec<Sample>,
    won: Vec<Won>,
    errors: Vec<String>,
    last_end: Instant,
    last_win_us: u64,
}

/// How to drive a phase.
#[derive(Debug, Clone)]
pub(crate) struct Drive {
    pub(crate) concurrency: usize,
    /// Open loop at this many attempts per second; closed loop when `None`.
    pub(crate) rate: Option<f64>,
    /// The bench pays every hold it gets, right away, on the same connection.
    pub(crate) pay: bool,
    /// Show a progress bar with this label.
    pub(crate) label: String,
}

struct Shared {
    plan: Plan,
    ids: Vec<i64>,
    next: AtomicU64,
    done: AtomicU64,
    rate: Option<f64>,
    pay: bool,
}

/// Runs every attempt of `plan` against `target`, on showtimes `ids` (by plan index).
pub(crate) async fn run<T: Target>(
    target: &T,
    plan: &Plan,
    ids: &[i64],
    drive: &Drive,
) -> anyhow::Result<PhaseResult> {
    let total = plan.total();
    let workers = drive.concurrency.max(1).min(total.max(1) as usize);
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        ids: ids.to_vec(),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        rate: drive.rate,
        pay: drive.pay,
    });
    // Connect first, so the measured time is only requests.
    let mut sessions = Vec::with_capacity(workers);
    for _ in 0..workers {
        sessions.push(target.open().await?);
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(drive.label.clone());

    let started = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(workers);
    for s in sessions {
        let shared = shared.clone();
        handles.push(tokio::spawn(worker(s, shared, started)));
    }
    let ticker = {
        let shared = shared.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(shared.done.load(Ordering::Relaxed));
            }
        })
    };

    let mut outcomes = Outcomes::default();
    let mut reserve_latency = histogram();
    let mut pay_latency = histogram();
    let mut samples = Vec::with_capacity(total as usize);
    let mut won = Vec::new();
    let mut error_examples = Vec::new();
    let mut ended = started;
    let mut last_win_us = 0;
    for h in handles {
        let r = h.await?;
        outcomes.add(&r.outcomes);
        reserve_latency.add(&r.reserve_latency)?;
        pay_latency.add(&r.pay_latency)?;
        samples.extend(r.samples);
        won.extend(r.won);
        for e in r.errors {
            if error_examples.len() < 8 {
                error_examples.push(e);
            }
        }
        ended = ended.max(r.last_end);
        last_win_us = last_win_us.max(r.last_win_us);
    }
    ticker.abort();
    bar.set_position(total);
    bar.finish_and_clear();
    samples.sort_unstable_by_key(|s| s.end_us);
    Ok(PhaseResult {
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
    })
}

async fn worker<S: Session>(mut s: S, shared: Arc<Shared>, started: Instant) -> WorkerResult {
    let mut r = WorkerResult {
        outcomes: Outcomes::default(),
        reserve_latency: histogram(),
        pay_latency: histogram(),
        samples: Vec::new(),
        won: Vec::new(),
        errors: Vec::new(),
        last_end: started,
        last_win_us: 0,
    };
    tokio::time::sleep_until(started).await;
    let total = shared.plan.total();
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let (si, user) = shared.plan.job(i);
        let showtime = shared.ids[si];
        let begin = match shared.rate {
            Some(rate) => {
                let due = started + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        let answer = s.reserve(showtime, user).await;
        let end = Instant::now();
        let reserved = matches!(answer, Reserve::Reserved(_));
        record(&mut r, started, begin, end, false, reserved);
        match answer {
            Reserve::Reserved(id) => {
                r.outcomes.reserved += 1;
                r.last_win_us = r
                    .last_win_us
                    .max(end.saturating_duration_since(started).as_micros() as u64);
                let mut paid = false;
                if shared.pay {
                    let b = Instant::now();
                    let p = s.pay(&id, user).await;
                    let e = Instant::now();
                    record(&mut r, started, b, e, true, false);
                    match p {
                        Pay::Paid => {
                            r.outcomes.paid += 1;
                            paid = true;
                        }
                        Pay::Failed(msg) => {
                            r.outcomes.pay_failed += 1;
                            if r.errors.len() < 4 {
                                r.errors.push(format!("pay {id}: {msg}"));
                            }
                        }
                    }
                }
                r.won.push(Won {
                    showtime: si,
                    user,
                    id,
                    paid,
                });
            }
            Reserve::SoldOut => r.outcomes.sold_out += 1,
            Reserve::AlreadyOrdered => r.outcomes.already_ordered += 1,
            Reserve::Rejected(status) => {
                r.outcomes.rejected += 1;
                if r.errors.len() < 4 {
                    r.errors.push(format!(
                        "reserve user {user} showtime {showtime}: rejected {status}"
                    ));
                }
            }
            Reserve::Error(msg) => {
                r.outcomes.errors += 1;
                if r.errors.len() < 4 {
                    r.errors
                        .push(format!("reserve user {user} showtime {showtime}: {msg}"));
                }
            }
        }
        r.last_end = Instant::now();
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    r
}

fn record(
    r: &mut WorkerResult,
    started: Instant,
    begin: Instant,
    end: Instant,
    pay: bool,
    reserved: bool,
) {
    let latency = end.saturating_duration_since(begin).as_micros() as u64;
    let h = if pay {
        &mut r.pay_latency
    } else {
        &mut r.reserve_latency
    };
    h.saturating_record(latency.max(1));
    r.samples.push(Sample {
        end_us: end.saturating_duration_since(started).as_micros() as u64,
        latency_us: latency.min(u64::from(u32::MAX)) as u32,
        pay,
        reserved,
    });
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}
