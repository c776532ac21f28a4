//! Prometheus metrics: one recorder per process ([`install`]), rendered in the text
//! format by `GET /metrics` ([`render`]). Names follow Prometheus's conventions: the
//! one-word prefix `flashsale_`, base units (`_seconds`), `_total` counters. No series
//! is ever labelled by user or reservation, so their number stays bounded.
//!
//! Recording is an atomic add on a series the recorder already holds; where no
//! recorder is installed (a unit test, `METRICS_ENABLED=false`) every call is a no-op.
//!
//! On Lambda the same series are CloudWatch metrics instead ([`embedded`]): each
//! invocation ends with embedded-metric-format (EMF) log lines, which CloudWatch turns
//! into metrics in the namespace `METRICS_NAMESPACE` (default `FlashSale`), dimension
//! `function` plus the series' labels.

mod striped;

use std::cell::Cell;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use flash_sale_core::domain::OutsideSaleWindow;
use flash_sale_core::ports::{ExpireOutcome, OrderOutcome};
use flash_sale_core::sale::{CancelError, PayError, ReserveError};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use striped::{Striped, StripedHistograms};

pub const HTTP_REQUESTS: &str = "flashsale_http_requests_total";
pub const HTTP_DURATION: &str = "flashsale_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "flashsale_http_requests_in_flight";
pub const HTTP_SHED: &str = "flashsale_http_requests_shed_total";
pub const RATE_LIMITED: &str = "flashsale_rate_limited_requests_total";
pub const RESERVATIONS: &str = "flashsale_reservations_total";
pub const PAYMENTS: &str = "flashsale_payments_total";
pub const CANCELLATIONS: &str = "flashsale_cancellations_total";
pub const IDEMPOTENCY_KEYS: &str = "flashsale_idempotency_keys_total";
pub const EXPIRIES: &str = "flashsale_seats_returned_total";
pub const ORDERS: &str = "flashsale_orders_total";
pub const DEAD_LETTERS: &str = "flashsale_dead_letters_total";
pub const REPLAYS: &str = "flashsale_replayed_messages_total";
pub const SWEEP_RESENT: &str = "flashsale_sweep_orders_resent_total";
/// Expiries that found no reservation at all: a hold Redis lost after answering it (a
/// failover to a replica that had not received it, a restart from an older snapshot).
pub const HOLDS_LOST: &str = "flashsale_holds_lost_total";
/// A waiting room's answers to joins and polls, by route and standing.
pub const ROOM_ANSWERS: &str = "flashsale_waiting_room_answers_total";

/// Histogram buckets for every `_seconds` metric: from half a millisecond, where a
/// sold-out answer lives, to the 10 s request timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for batch sizes (`_entries`): up to the 128 entries a batch holds.
const ENTRY_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A per-showtime gauge not set again for this long is dropped: only showtimes still
/// on sale keep their series.
const GAUGES_IDLE_FOR: Duration = Duration::from_secs(600);

pub const SEATS: &str = "flashsale_seats";
pub const DISCREPANCIES: &str = "flashsale_reconcile_discrepancies";
pub const REFUNDS_WAITING: &str = "flashsale_refused_orders_awaiting_refund";
pub const QUEUE_READY: &str = "flashsale_queue_messages_ready";
/// A waiting room's line as this process last read it (`joined`, `served`).
pub const ROOM_LINE: &str = "flashsale_waiting_room_places";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Counters and gauges that exist from the start, at zero, so a dashboard or an alert
/// on them never reads "no data" before the first event.
const FROM_THE_START: &[&str] = &[
    HTTP_REQUESTS,
    HTTP_SHED,
    RATE_LIMITED,
    RESERVATIONS,
    PAYMENTS,
    CANCELLATIONS,
    IDEMPOTENCY_KEYS,
    EXPIRIES,
    ORDERS,
    DEAD_LETTERS,
    REPLAYS,
    SWEEP_RESENT,
    HOLDS_LOST,
    ROOM_ANSWERS,
    flash_sale_adapters::rabbit::metrics::BATCHES,
];

/// Installs this process's recorder (once; later calls return the same handle).
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), ENTRY_BUCKETS)
            })
            .expect("the buckets are not empty")
            .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(GAUGES_IDLE_FOR))
            .install_recorder()
            .expect("no other metrics recorder in this process");
        for name in FROM_THE_START {
            counter!(*name).increment(0);
        }
        gauge!(HTTP_IN_FLIGHT).set(0.0);
        // Resolved after the recorder exists, so the handles are its series.
        let _ = HOT.set(Hot::resolve());
        gauge!(flash_sale_adapters::rabbit::metrics::HANDED_OVER).set(0.0);
        handle
    })
}

static EMBEDDED: OnceLock<Option<&'static metrics_cloudwatch_embedded::Collector>> =
    OnceLock::new();

/// The recorder of a Lambda function: CloudWatch embedded metric format, written after
/// each invocation (see [`crate::lambda`]). `None` when `METRICS_ENABLED=false`, or when
/// it cannot start (said in the log: metrics never stop a sale).
pub fn embedded() -> Option<&'static metrics_cloudwatch_embedded::Collector> {
    *EMBEDDED.get_or_init(|| {
        let env = crate::config::Env::process();
        if !env.flag_or("METRICS_ENABLED", true).unwrap_or(true) {
            return None;
        }
        let function = env
            .get("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or_else(|| "flash-sale".into());
        let started = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(env.text("METRICS_NAMESPACE", "FlashSale"))
            .with_dimension("function", function)
            .lambda_cold_start_metric("flashsale_cold_starts_total")
            .with_lambda_request_id("request_id")
            .init();
        match started {
            Ok(collector) => Some(collector),
            Err(e) => {
                tracing::error!("metrics are off: the CloudWatch recorder did not start: {e}");
                None
            }
        }
    })
}

/// One showtime's reconciliation: its seats by state, its discrepancies and its
/// refused orders awaiting a refund. Set for showtimes on sale (seats available or
/// held), with a discrepancy or a refund awaiting, and once more after a showtime leaves
/// them (its last values); the others' series go idle and are dropped.
pub fn showtime(id: i64, counts: Option<(u32, u32, u32)>, discrepancies: usize, refused: u32) {
    let showtime = id.to_string();
    if let Some((available, held, sold)) = counts {
        for (state, n) in [("available", available), ("held", held), ("sold", sold)] {
            gauge!(SEATS, "showtime" => showtime.clone(), "state" => state).set(f64::from(n));
        }
    }
    gauge!(DISCREPANCIES, "showtime" => showtime.clone()).set(discrepancies as f64);
    gauge!(REFUNDS_WAITING, "showtime" => showtime).set(f64::from(refused));
}

/// A waiting room's answer to a join or a poll (`route` `join` or `status`), by the
/// standing it gave (`waiting`, `in_line`, `admitted`, `passed`, `sold_out`,
/// `not_in_line`).
pub fn room_answer(route: &'static str, status: &'static str) {
    let index = ROOM_ROUTES
        .iter()
        .position(|r| *r == route)
        .zip(ROOM_STANDINGS.iter().position(|s| *s == status));
    match (HOT.get(), index) {
        (Some(hot), Some((r, s))) => hot.count_room_answer(r * ROOM_STANDINGS.len() + s),
        _ => counter!(ROOM_ANSWERS, "route" => route, "status" => status).increment(1),
    }
}

/// A waiting room's line as this process last read it: places `joined` in all and
/// `served` (admitted so far). Every queue answer calls it, and the snapshot it answers
/// from changes at most once per refresh: the gauges are set only when what this thread
/// last set differs (no label built, no series looked up, on the other answers).
pub fn room_line(showtime: i64, joined: u64, served: u64) {
    thread_local! {
        static LAST_SET: Cell<Option<(i64, u64, u64)>> = const { Cell::new(None) };
    }
    let line = Some((showtime, joined, served));
    if LAST_SET.with(|last| last.replace(line)) == line {
        return;
    }
    let showtime = showtime.to_string();
    gauge!(ROOM_LINE, "showtime" => showtime.clone(), "state" => "joined").set(joined as f64);
    gauge!(ROOM_LINE, "showtime" => showtime, "state" => "served").set(served as f64);
}

/// Messages ready in a queue (a consumer's lag, or a dead-letter queue's backlog).
pub fn queue_ready(queue: &str, ready: u32) {
    gauge!(QUEUE_READY, "queue" => queue.to_string()).set(f64::from(ready));
}

/// Folds the histograms' recent samples into their buckets, so they hold bounded memory
/// whether or not anything scrapes: call it every few seconds.
pub fn upkeep() {
    fold();
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// Every series in the Prometheus text format (empty before [`install`]).
pub fn render() -> String {
    fold();
    HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

/// The route a request path belongs to, for labels: the contract's templates only,
/// so a crowd of ids or junk paths cannot make new series.
pub fn route_of(path: &str) -> &'static str {
    // On every request: no allocation, a few comparisons.
    let mut parts = path.trim_end_matches('/').split('/');
    let (Some(""), first) = (parts.next(), parts.next()) else {
        return "other";
    };
    match (first, parts.next(), parts.next(), parts.next()) {
        (Some("reserve"), None, _, _) => "/reserve",
        (Some("showtimes"), None, _, _) => "/showtimes",
        (Some("showtimes"), Some(_), None, _) => "/showtimes/{id}",
        (Some("showtimes"), Some(_), Some("orders"), None) => "/showtimes/{id}/orders",
        (Some("showtimes"), Some(_), Some("queue"), None) => "/showtimes/{id}/queue",
        (Some("showtimes"), Some(_), Some("queue"), Some("me")) if parts.next().is_none() => {
            "/showtimes/{id}/queue/me"
        }
        (Some("reservations"), Some(_), None, _) => "/reservations/{id}",
        (Some("reservations"), Some(_), Some("pay"), None) => "/reservations/{id}/pay",
        (Some("me"), Some("reservations"), None, _) => "/me/reservations",
        (Some("healthz"), None, _, _) => "/healthz",
        (Some("readyz"), None, _, _) => "/readyz",
        (Some("metrics"), None, _, _) => "/metrics",
        _ => "other",
    }
}

/// A status code as a label without allocating, for the codes this service answers.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

/// A request's method as a label: the methods of the contract, `other` for the rest (a
/// client cannot make new series with a method of its own).
pub fn method_of(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// One answered HTTP request: its method ([`method_of`]), its route ([`route_of`]) and
/// its status.
pub fn http_request(method: &'static str, route: &'static str, status: u16, took: Duration) {
    let status = status_label(status);
    match (
        HOT.get(),
        OPERATIONS.iter().position(|o| *o == (method, route)),
        STATUSES.iter().position(|s| *s == status),
    ) {
        (Some(hot), Some(o), Some(s)) => {
            hot.counts.add(o * STATUSES.len() + s, 1);
            hot.timings.record(o, took.as_secs_f64());
        }
        _ => {
            counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
                .increment(1);
            histogram!(HTTP_DURATION, "method" => method, "route" => route)
                .record(took.as_secs_f64());
        }
    }
}

/// The contract's operations (openapi.yaml), each a method and a route label
/// ([`route_of`]): their series exist from the start, and counting one is an atomic
/// add on a handle resolved once.
const OPERATIONS: [(&str, &str); 15] = [
    ("GET", "/showtimes"),
    ("POST", "/showtimes"),
    ("GET", "/showtimes/{id}"),
    ("PATCH", "/showtimes/{id}"),
    ("GET", "/showtimes/{id}/orders"),
    ("POST", "/showtimes/{id}/queue"),
    ("GET", "/showtimes/{id}/queue/me"),
    ("POST", "/reserve"),
    ("GET", "/reservations/{id}"),
    ("DELETE", "/reservations/{id}"),
    ("POST", "/reservations/{id}/pay"),
    ("GET", "/me/reservations"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];
/// The status labels of the answers on the hot path.
const STATUSES: [&str; 4] = ["200", "201", "409", "429"];

/// The series every request, reservation or waiting room's answer updates: resolved
/// once, and added to per thread ([`striped`]), so an answer's counting shares no cache
/// line with another thread's; [`fold`] brings the recorder's series up to date when
/// the metrics are read.
struct Hot {
    requests: Vec<metrics::Counter>,
    durations: Vec<metrics::Histogram>,
    /// By outcome and source, in the order of [`RESERVATION_LABELS`].
    reservations: Vec<metrics::Counter>,
    /// By route and standing, in the order of [`ROOM_ROUTES`] x [`ROOM_STANDINGS`].
    room_answers: Vec<metrics::Counter>,
    /// Requests (by operation and status), then reservations, then room answers.
    counts: Striped,
    /// By operation, in [`BUCKETS`].
    timings: StripedHistograms,
    /// Per operation and bucket, the samples and their sum already handed to the
    /// recorder (one fold at a time).
    folded: Mutex<Vec<Vec<(u64, u64)>>>,
}

const RESERVATION_LABELS: [(&str, &str); 10] = [
    ("reserved", "store"),
    ("sold_out", "memory"),
    ("sold_out", "store"),
    ("already_ordered", "store"),
    ("sale_not_open", "catalog"),
    ("sale_closed", "catalog"),
    ("sale_paused", "catalog"),
    ("rejected", "catalog"),
    ("unavailable", "store"),
    ("rejected", "request"),
];

const ROOM_ROUTES: [&str; 2] = ["join", "status"];
const ROOM_STANDINGS: [&str; 6] = [
    "waiting",
    "in_line",
    "admitted",
    "passed",
    "sold_out",
    "not_in_line",
];

static HOT: OnceLock<Hot> = OnceLock::new();

impl Hot {
    fn resolve() -> Self {
        let mut requests = vec![];
        for (method, route) in OPERATIONS {
            for status in STATUSES {
                requests.push(counter!(
                    HTTP_REQUESTS,
                    "method" => method,
                    "route" => route,
                    "status" => status
                ));
            }
        }
        let mut room_answers = vec![];
        for route in ROOM_ROUTES {
            for status in ROOM_STANDINGS {
                room_answers.push(counter!(ROOM_ANSWERS, "route" => route, "status" => status));
            }
        }
        let reservations: Vec<_> = RESERVATION_LABELS
            .iter()
            .map(|(outcome, source)| {
                counter!(RESERVATIONS, "outcome" => *outcome, "source" => *source)
            })
            .collect();
        Hot {
            counts: Striped::new(requests.len() + reservations.len() + room_answers.len()),
            timings: StripedHistograms::new(OPERATIONS.len(), BUCKETS),
            folded: Mutex::new(vec![vec![(0, 0); BUCKETS.len() + 1]; OPERATIONS.len()]),
            requests,
            durations: OPERATIONS
                .iter()
                .map(|(method, route)| histogram!(HTTP_DURATION, "method" => *method, "route" => *route))
                .collect(),
            reservations,
            room_answers,
        }
    }

    fn count_reservation(&self, i: usize) {
        self.counts.add(self.requests.len() + i, 1);
    }

    fn count_room_answer(&self, i: usize) {
        self.counts
            .add(self.requests.len() + self.reservations.len() + i, 1);
    }

    /// Brings the recorder's series up to date with the striped counts: counters to
    /// their totals, and each histogram bucket's new samples recorded at their mean, kept
    /// in the bucket ([`StripedHistograms::new_samples`]), so bucket counts and the count
    /// are exact, and the sum once every sample's time has landed.
    fn fold(&self) {
        let totals = self.counts.totals();
        let counters = self
            .requests
            .iter()
            .chain(&self.reservations)
            .chain(&self.room_answers);
        for (counter, total) in counters.zip(totals) {
            counter.absolute(total);
        }
        let mut folded = self.folded.lock().unwrap_or_else(|e| e.into_inner());
        self.timings
            .new_samples(&mut folded, |series, secs, samples| {
                self.durations[series].record_many(secs, samples as usize);
            });
    }
}

fn count_reservation(outcome: &'static str, source: &'static str) {
    let index = RESERVATION_LABELS
        .iter()
        .position(|l| *l == (outcome, source));
    match (HOT.get(), index) {
        (Some(hot), Some(i)) => hot.count_reservation(i),
        _ => counter!(RESERVATIONS, "outcome" => outcome, "source" => source).increment(1),
    }
}

/// The recorder's hot series brought up to date (see [`Hot::fold`]): before every read.
fn fold() {
    if let Some(hot) = HOT.get() {
        hot.fold();
    }
}

/// Requests being handled now (set when the metrics are read).
pub fn in_flight(now: usize) {
    gauge!(HTTP_IN_FLIGHT).set(now as f64);
}

/// A request answered 503 `overloaded` without being started.
pub fn shed() {
    counter!(HTTP_SHED).increment(1);
}

/// A request refused by a rate limit, `by` "user" or "address".
pub fn rate_limited(by: &'static str) {
    counter!(RATE_LIMITED, "by" => by).increment(1);
}

/// How a `POST /reserve` ended, and whether a sold-out answer came from this process's
/// memory (`source="memory"`) or from the seat store.
pub fn reservation(result: &Result<(), &ReserveError>) {
    let (outcome, source) = match result {
        Ok(()) => ("reserved", "store"),
        Err(ReserveError::SoldOut { remembered: true }) => ("sold_out", "memory"),
        Err(ReserveError::SoldOut { remembered: false }) => ("sold_out", "store"),
        Err(ReserveError::AlreadyHolds(..)) => ("already_ordered", "store"),
        Err(ReserveError::NotEnoughSeats { .. }) => ("not_enough_seats", "store"),
        Err(ReserveError::TooManySeats { .. }) => ("too_many_seats", "store"),
        Err(ReserveError::InvalidQuantity) => ("rejected", "request"),
        Err(ReserveError::NotAdmitted) => ("not_admitted", "store"),
        Err(ReserveError::OutsideSaleWindow {
            why: OutsideSaleWindow::NotOpenYet { .. },
            ..
        }) => ("sale_not_open", "catalog"),
        Err(ReserveError::OutsideSaleWindow {
            why: OutsideSaleWindow::Closed { .. },
            ..
        }) => ("sale_closed", "catalog"),
        Err(ReserveError::OutsideSaleWindow {
            why: OutsideSaleWindow::Paused,
            ..
        }) => ("sale_paused", "catalog"),
        Err(ReserveError::UnknownShowtime(_)) => ("rejected", "catalog"),
        Err(ReserveError::Unavailable(_)) => ("unavailable", "store"),
    };
    count_reservation(outcome, source);
}

/// A `POST /reserve` refused before it reached the sale (bad input, identity).
pub fn reservation_rejected(_: &ApiError) {
    count_reservation("rejected", "request");
}

/// A payment request the mock payer settled: `paid`, `unpayable` (expired or paid
/// meanwhile, gone) or `unavailable`.
pub fn mock_payment(outcome: &'static str) {
    counter!(PAYMENTS, "outcome" => outcome, "by" => "mock_payer").increment(1);
}

/// How a payment ended (`by` "buyer").
pub fn payment(by: &'static str, result: &Result<(), &PayError>) {
    let outcome = match result {
        Ok(()) => "paid",
        Err(PayError::NotFound) => "not_found",
        Err(PayError::NotOwner) => "not_owner",
        Err(PayError::AlreadyPaid(_)) => "already_paid",
        Err(PayError::Expired) => "expired",
        Err(PayError::Cancelled) => "cancelled",
        Err(PayError::Unavailable(_)) => "unavailable",
    };
    counter!(PAYMENTS, "outcome" => outcome, "by" => by).increment(1);
}

/// A request sent with an `Idempotency-Key`, by `route` (`reserve`, `pay`,
/// `create_showtime`) and what its key found: `claimed` (a first request), `replayed`,
/// `reused` (422), `in_progress` (409) or `unavailable` (the store failed: 503).
pub fn idempotency_key(route: &'static str, outcome: &'static str) {
    counter!(IDEMPOTENCY_KEYS, "route" => route, "outcome" => outcome).increment(1);
}

/// An owner's cancellation, by outcome: `cancelled` (the seat went back on sale, or had
/// already, for a repeated cancel), or why not.
pub fn cancellation(result: &Result<(), &CancelError>) {
    let outcome = match result {
        Ok(()) => "cancelled",
        Err(CancelError::NotFound) => "not_found",
        Err(CancelError::NotOwner) => "not_owner",
        Err(CancelError::AlreadyPaid(_)) => "already_paid",
        Err(CancelError::Expired) => "expired",
        Err(CancelError::Unavailable(_)) => "unavailable",
    };
    counter!(CANCELLATIONS, "outcome" => outcome).increment(1);
}

/// Seats given back by expiry messages.
pub fn expiries(outcomes: &[ExpireOutcome]) {
    let count = |outcome: ExpireOutcome| outcomes.iter().filter(|o| **o == outcome).count();
    counter!(EXPIRIES, "by" => "message").increment(count(ExpireOutcome::SeatReturned) as u64);
    counter!(HOLDS_LOST).increment(count(ExpireOutcome::NotFound) as u64);
}

/// What a sweep did: seats it gave back, orders it re-sent.
pub fn sweep(holds_expired: usize, orders_resent: usize) {
    counter!(EXPIRIES, "by" => "sweep").increment(holds_expired as u64);
    counter!(SWEEP_RESENT).increment(orders_resent as u64);
}

/// Orders written, by outcome.
pub fn orders(outcomes: &[OrderOutcome]) {
    for outcome in outcomes {
        let outcome = match outcome {
            OrderOutcome::Inserted => "inserted",
            OrderOutcome::Duplicate => "duplicate",
            OrderOutcome::Refused(_) => "refused",
            OrderOutcome::AlreadyRefused => "refused_copy",
        };
        counter!(ORDERS, "outcome" => outcome).increment(1);
    }
}

/// A message dead-lettered from `queue` (its key: `expiries`, `payments`, `orders`).
pub fn dead_lettered(queue: &'static str) {
    counter!(DEAD_LETTERS, "queue" => queue).increment(1);
}

/// Messages moved back from `queue`'s dead-letter queue.
pub fn replayed(queue: &'static str, moved: usize) {
    counter!(REPLAYS, "queue" => queue).increment(moved as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_the_contracts_templates_and_nothing_else() {
        assert_eq!(route_of("/reserve"), "/reserve");
        assert_eq!(route_of("/showtimes/42"), "/showtimes/{id}");
        assert_eq!(route_of("/reservations/1-17/pay"), "/reservations/{id}/pay");
        assert_eq!(route_of("/reservations/1-17"), "/reservations/{id}");
        assert_eq!(route_of("/metrics"), "/metrics");
        assert_eq!(route_of("/showtimes/42/queue"), "/showtimes/{id}/queue");
        assert_eq!(
            route_of("/showtimes/42/queue/me"),
            "/showtimes/{id}/queue/me"
        );
        for junk in [
            "/",
            "/x",
            "/reservations/1/2/3",
            "/showtimes/1/x",
            "/showtimes/1/queue/x",
            "/showtimes/1/queue/me/x",
            "/../etc",
        ] {
            assert_eq!(route_of(junk), "other", "{junk}");
        }
    }

    /// Every operation of openapi.yaml has its series from the start, under its own
    /// method and its path template as the route; nothing else does.
    #[test]
    fn the_hot_series_are_the_contracts_operations() {
        let mut contract = vec![];
        let mut path = "";
        for line in include_str!("../../../openapi.yaml").lines() {
            if line.starts_with("  /") {
                path = line.trim().trim_end_matches(':');
            } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':'))
                && ["get", "post", "patch", "delete", "put"].contains(&m)
            {
                contract.push((m.to_uppercase(), path.to_string()));
            }
        }
        let mut hot: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, r)| (m.to_string(), r.to_string()))
            .collect();
        contract.sort();
        hot.sort();
        assert_eq!(hot, contract);
        for (_, route) in OPERATIONS {
            let path = route.replace("{id}", "1-7");
            assert_eq!(route_of(&path), route, "{path}");
        }
    }

    #[test]
    fn methods_outside_the_contract_are_other() {
        use axum::http::Method;
        assert_eq!(method_of(&Method::DELETE), "DELETE");
        assert_eq!(method_of(&Method::PUT), "other");
        assert_eq!(method_of(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
