//! The seat store on Redis.
//!
//! Key layout, for key prefix `fs` and showtime 42 (every key of a showtime shares the
//! hash tag `{42}`, so each script touches one cluster slot):
//!
//! | key              | type   | holds                                             |
//! |------------------|--------|---------------------------------------------------|
//! | `fs:{42}:seats`  | HASH   | capacity, available, held, sold, generation, max_per_user |
//! | `fs:{42}:users`  | HASH   | user id -> reservation sequence (held or bought)  |
//! | `fs:{42}:seq`    | STRING | the showtime's reservation sequence               |
//! | `fs:{42}:reservations` | HASH | reservation 42-1007 as fields `1007:user`, `1007:status`, `1007:expires_at`, `1007:quantity` (a group's seats; absent: 1), `1007:paid_at`, `1007:trace`, `1007:admitted_until` (behind a waiting room: the deadline of the admission the hold used) |
//! | `fs:{42}:deadlines` | ZSET | RESERVED holds by deadline (the sweep's outbox)  |
//! | `fs:{42}:unrecorded` | ZSET | PAID reservations not yet ORDERED, by paid time |
//! | `fs:{42}:room`, `fs:{42}:room:places`, `fs:{42}:room:admitted` | HASH, ZSETs | the showtime's waiting room, when it has one ([`crate::RedisRoom`]): `reserve.lua` takes seats only for an admitted user there |
//! | `fs:showtimes`   | SET    | showtimes on sale (walked by the sweep)           |
//! | `fs:u:{7}:reservations` | ZSET | user 7's reservation ids by number (the newest [`USER_LIST_LIMIT`]) |
//! | `fs:layout`      | STRING | the key layout the data was written in ([`KEY_LAYOUT`]) |
//!
//! Every key a script touches is declared in its `KEYS`, and every pipeline stays in one
//! showtime, so the store runs on Redis Cluster (see [`crate::redis_connection`]). On a
//! single Redis, and only there, `reserve.lua` also writes the user's list, another hash
//! tag, in the same call (`lists_on_take`). One
//! multiplexed connection (or the cluster client's, one per node) carries every
//! concurrent script, pipelined, and reconnects on its own.
//!
//! ## Key layouts
//! Layout 1 (before Redis Cluster support) kept each reservation in a HASH of its own,
//! `fs:{42}:r:1007`, whose key `reserve.lua` built itself; layout 2 keeps them as fields
//! of `fs:{42}:reservations`. A process refuses to start on Redis data of another
//! layout while it matters: a layout-1 showtime with live holds or unrecorded payments
//! (an upgrade in the middle of a sale is not supported: those holds would be orphaned),
//! or a `fs:layout` naming a layout this build does not know (a newer one).

use std::sync::Arc;
use std::time::Duration;

use flash_sale_core::ports::{
    CancelOutcome, ExpireOutcome, PayOutcome, PortError, PortResult, RefusedSeats, ReservationPage,
    ResizeOutcome, SeatAudit, SeatAuditor, SeatRow, SeatStore, TakeOutcome,
};
use flash_sale_core::{
    OrderRequest, Reservation, ReservationId, SeatCounts, ShowtimeId, Status, UnixMillis, UserId,
};
use redis::{AsyncCommands, Script, Value};
use tracing::{Instrument as _, Span};

use crate::redis_connection::{self, RedisConnection};
use crate::tls::Trust;
use crate::trace;

pub(crate) const COMPONENT: &str = "redis";

/// The most reservations a user's list keeps (the newest).
pub const USER_LIST_LIMIT: isize = 1000;

/// How long a user's list lives after its last new reservation.
const USER_LIST_TTL_SECS: i64 = 90 * 24 * 3600;

/// The key layout this build reads and writes (see the module's documentation).
pub const KEY_LAYOUT: &str = "2";

struct Scripts {
    reserve: Script,
    pay: Script,
    expire: Script,
    cancel: Script,
    mark_ordered: Script,
    mark_refused: Script,
    load: Script,
    rebuild: Script,
    resize: Script,
    due: Script,
}

/// The [`SeatStore`] on Redis. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisSeats {
    conn: RedisConnection,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisSeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSeats")
            .field("prefix", &self.prefix)
            .field("cluster", &self.conn.is_cluster())
            .finish()
    }
}

/// Server errors that clear on their own: a Redis loading its data set, a replica (or a
/// primary demoted during a failover), a cluster resharding or failing over, a server
/// busy with a long script, too few replicas to accept writes, a script cache emptied
/// again between the client's reload of a script and its retry (a restart or failover;
/// the script did not run), a slot that moved (MOVED, ASK) more often than the cluster
/// client follows in one call while the cluster's shape changes. Trying again later can
/// succeed, so a message that met one is redelivered, not dead-lettered.
const RETRYABLE_CODES: [&str; 10] = [
    "NOSCRIPT",
    "MOVED",
    "ASK",
    "LOADING",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "BUSY",
    "NOREPLICAS",
];

/// The span of one script call (exported only when tracing is on; a disabled no-op
/// otherwise).
fn script_span(script: &'static str, showtime: ShowtimeId) -> Span {
    tracing::info_span!(
        target: trace::TARGET,
        "redis script",
        otel.name = script,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = "EVALSHA",
        flash_sale.showtime = showtime.get(),
    )
}

/// A script's reply this adapter cannot read: a permanent failure naming the script.
pub(crate) fn unexpected_reply(what: &str, v: &Value) -> PortError {
    PortError::permanent(COMPONENT, format!("unexpected reply from {what}: {v:?}"))
}

/// An integer of a script's reply: an integer, or the text of a number (a ZSET score).
pub(crate) fn int_reply(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => {
            let text = std::str::from_utf8(b).ok()?;
            text.parse()
                .ok()
                .or_else(|| text.parse::<f64>().ok().map(|f| f as i64))
        }
        _ => None,
    }
}

pub(crate) fn port_error(e: redis::RedisError) -> PortError {
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code().is_some_and(|code| RETRYABLE_CODES.contains(&code))
        // A script's failed call carries the server's code at the start of its text.
        || RETRYABLE_CODES.iter().any(|code| {
            e.detail()
                .is_some_and(|d| d.starts_with(code) || d.contains(&format!(" {code} ")))
        });
    PortError {
        component: COMPONENT,
        transient,
        message: e.to_string(),
    }
}

fn unexpected(what: &str, v: &Value) -> PortError {
    PortError::permanent(COMPONENT, format!("unexpected reply from {what}: {v:?}"))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn reply(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

fn status_of(v: Option<&Value>) -> Option<Status> {
    text(v?)?.parse().ok()
}

impl RedisSeats {
    /// expire.lua: an expiry, or (`undo`) reserve's undo of a hold it could not follow
    /// up, which also gives back the admission the hold used.
    async fn run_expire(&self, id: ReservationId, undo: bool) -> PortResult<ExpireOutcome> {
        let showtime = id.showtime();
        let mut conn = self.conn.clone();
        let mut call = self.scripts.expire.key(self.key(showtime, "seats"));
        call.key(self.key(showtime, "users"))
            .key(self.key(showtime, "deadlines"))
            .key(self.reservations_key(showtime))
            .arg(id.seq());
        if undo {
            call.key(self.key(showtime, "room:admitted")).arg("undo");
        }
        let v: Value = call
            .invoke_async(&mut conn)
            .instrument(script_span("expire.lua", showtime))
            .await
            .map_err(port_error)?;
        let items = reply(&v).ok_or_else(|| unexpected("expire.lua", &v))?;
        Ok(match items.first().and_then(int) {
            Some(1) => ExpireOutcome::SeatReturned,
            Some(0) => ExpireOutcome::NotFound,
            Some(2) => ExpireOutcome::AlreadySettled(
                status_of(items.get(1)).ok_or_else(|| unexpected("expire.lua", &v))?,
            ),
            _ => return Err(unexpected("expire.lua", &v)),
        })
    }

    /// Connects (with bounded timeouts) to a single node or a cluster (see
    /// [`crate::redis_connection`]), checks the key layout, and loads nothing: scripts are
    /// sent by SHA and loaded on first NOSCRIPT.
    pub async fn connect(url: &str, prefix: &str) -> PortResult<Self> {
        Self::connect_trusting(url, prefix, &Trust::system("REDIS_CA_FILE")).await
    }

    /// [`RedisSeats::connect`], a `rediss://` URL trusting the system's roots and
    /// `trust`'s CA file; a certificate that does not verify is named as such.
    pub async fn connect_trusting(url: &str, prefix: &str, trust: &Trust) -> PortResult<Self> {
        let conn = redis_connection::open(
            url,
            trust,
            |e| {
                PortError::permanent(
                    COMPONENT,
                    format!("REDIS_URL is not a valid Redis URL (or list of node URLs): {e}"),
                )
            },
            port_error,
        )
        .await?;
        let seats = Self {
            conn,
            prefix: prefix.into(),
            scripts: Arc::new(Scripts {
                reserve: Script::new(include_str!("../../lua/reserve.lua")),
                pay: Script::new(include_str!("../../lua/pay.lua")),
                expire: Script::new(include_str!("../../lua/expire.lua")),
                cancel: Script::new(include_str!("../../lua/cancel.lua")),
                mark_ordered: Script::new(include_str!("../../lua/mark_ordered.lua")),
                due: Script::new(include_str!("../../lua/due.lua")),
                mark_refused: Script::new(include_str!("../../lua/mark_refused.lua")),
                load: Script::new(include_str!("../../lua/load.lua")),
                rebuild: Script::new(include_str!("../../lua/rebuild.lua")),
                resize: Script::new(include_str!("../../lua/resize.lua")),
            }),
        };
        seats.check_layout().await?;
        Ok(seats)
    }

    /// Refuses Redis data this build would misread (see "Key layouts" above), and records
    /// [`KEY_LAYOUT`] where nothing was recorded yet.
    async fn check_layout(&self) -> PortResult<()> {
        let mut conn = self.conn.clone();
        let key = format!("{}:layout", self.prefix);
        let recorded: Option<String> = conn.get(&key).await.map_err(port_error)?;
        match recorded.as_deref() {
            Some(KEY_LAYOUT) => return Ok(()),
            Some(other) => {
                return Err(PortError::permanent(
                    COMPONENT,
                    format!(
                        "Redis holds flash-sale's keys under prefix `{}` in key layout \
                         {other}, which this build (layout {KEY_LAYOUT}) cannot read: run \
                         the version that wrote them, or another REDIS_KEY_PREFIX",
                        self.prefix
                    ),
                ));
            }
            None => {}
        }
        // Nothing recorded: an empty Redis, or one an earlier flash-sale (layout 1)
        // wrote. Its sales matter only while they have live holds or payments not yet
        // recorded in the database.
        let mut live = vec![];
        for showtime in self.showtimes().await? {
            let (seq, reservations, holds, unrecorded): (bool, bool, u64, u64) = redis::pipe()
                .exists(self.key(showtime, "seq"))
                .exists(self.key(showtime, "reservations"))
                .zcard(self.key(showtime, "deadlines"))
                .zcard(self.key(showtime, "unrecorded"))
                .query_async(&mut conn)
                .await
                .map_err(port_error)?;
            if seq && !reservations && holds + unrecorded > 0 {
                live.push(showtime.to_string());
            }
        }
        if !live.is_empty() {
            return Err(PortError::permanent(
                COMPONENT,
                format!(
                    "Redis (prefix `{}`) holds sales of an earlier flash-sale in its key \
                     layout (one hash per reservation, `{}:{{<showtime>}}:r:<seq>`) with \
                     live holds or unrecorded payments, for showtime(s) {}. Upgrading in \
                     the middle of a sale is not supported: let those sales end on the \
                     earlier version (holds paid and recorded, or expired), then start \
                     this one",
                    self.prefix,
                    self.prefix,
                    live.join(", ")
                ),
            ));
        }
        let _: bool = redis::cmd("SET")
            .arg(&key)
            .arg(KEY_LAYOUT)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(())
    }

    /// The key prefix every key of this store starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A clone of the connection, for tests and tools.
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Whether Redis answers (a readiness probe).
    pub async fn ping(&self) -> PortResult<()> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(())
    }

    fn key(&self, showtime: ShowtimeId, what: &str) -> String {
        format!("{}:{{{}}}:{}", self.prefix, showtime, what)
    }

    /// The hash that holds `showtime`'s reservations, one field per attribute.
    fn reservations_key(&self, showtime: ShowtimeId) -> String {
        self.key(showtime, "reservations")
    }

    /// Whether reserve.lua lists a hold in its user's list itself: on a single Redis,
    /// where a script may touch keys of any hash tag. On Redis Cluster the user's list
    /// lives in another slot, so [`SeatStore::list_for_user`] lists it in a call of its
    /// own.
    fn lists_on_take(&self) -> bool {
        !self.conn.is_cluster()
    }

    /// User `user`'s list of reservations (its own hash tag: every user's list may live
    /// on another node).
    fn user_key(&self, user: UserId) -> String {
        format!("{}:u:{{{}}}:reservations", self.prefix, user)
    }

    fn showtimes_key(&self) -> String {
        format!("{}:showtimes", self.prefix)
    }

    async fn showtimes(&self) -> PortResult<Vec<ShowtimeId>> {
        let mut conn = self.conn.clone();
        let raw: Vec<i64> = conn
            .smembers(self.showtimes_key())
            .await
            .map_err(port_error)?;
        Ok(raw
            .into_iter()
            .filter_map(|s| ShowtimeId::new(s).ok())
            .collect())
    }

    /// [`SeatStore::mark_ordered`] for reservations of one showtime: one script call.
    async fn mark_ordered_in(
        &self,
        showtime: ShowtimeId,
        orders: &[(u64, i64)],
    ) -> PortResult<usize> {
        let mut conn = self.conn.clone();
        let mut call = self
            .scripts
            .mark_ordered
            .key(self.key(showtime, "unrecorded"));
        call.key(self.reservations_key(showtime))
            .key(self.key(showtime, "seats"))
            .key(self.key(showtime, "deadlines"))
            .key(self.key(showtime, "users"));
        for (seq, user) in orders {
            call.arg(seq).arg(user);
        }
        // One call for the showtime's orders of the batch, not one per order: a script
        // call costs Redis more than the few commands that mark one order.
        let moved: i64 = call.invoke_async(&mut conn).await.map_err(port_error)?;
        Ok(moved.max(0) as usize)
    }

    /// due.lua: the members of a showtime's `zset` (deadlines, unrecorded payments) due
    /// `grace` ago or earlier by the clock of the Redis that holds it, with their times;
    /// at most 1,000, the earliest first.
    async fn due(
        &self,
        showtime: ShowtimeId,
        zset: &str,
        grace: Duration,
    ) -> PortResult<Vec<(u64, u64)>> {
        let mut conn = self.conn.clone();
        self.scripts
            .due
            .key(self.key(showtime, zset))
            .arg(grace.as_millis() as u64)
            .arg(1000)
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)
    }

    /// resize.lua: the stock to `to` from the row capacity it reflects (`from` if it
    /// cannot tell); an `undo` only while it reflects `from`.
    async fn resize_stock(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
        undo: bool,
    ) -> PortResult<ResizeOutcome> {
        let mut conn = self.conn.clone();
        let answer: Vec<u32> = self
            .scripts
            .resize
            .key(self.key(showtime, "seats"))
            .arg(from)
            .arg(to)
            .arg(u8::from(undo))
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        let counts = |a: &[u32]| SeatCounts {
            capacity: a[1],
            available: a[2],
            held: a[3],
            sold: a[4],
        };
        match answer.as_slice() {
            [0] => Ok(ResizeOutcome::UnknownShowtime),
            [1, ..] if answer.len() == 5 => Ok(ResizeOutcome::Resized(counts(&answer))),
            [2, ..] if answer.len() == 5 => Ok(ResizeOutcome::InUse(counts(&answer))),
            other => Err(PortError::permanent(
                COMPONENT,
                format!("resize.lua answered {other:?}"),
            )),
        }
    }
}

impl SeatStore for RedisSeats {
    async fn take_seats(
        &self,
        showtime: ShowtimeId,
        user: UserId,
        quantity: u32,
        hold: Duration,
    ) -> PortResult<TakeOutcome> {
        let mut conn = self.conn.clone();
        // The hold remembers the trace that made it, so a later payment can link to it.
        let traceparent = trace::current_traceparent().unwrap_or_default();
        let mut call = self.scripts.reserve.key(self.key(showtime, "seats"));
        call.key(self.key(showtime, "users"))
            .key(self.key(showtime, "seq"))
            .key(self.key(showtime, "deadlines"))
            .key(self.reservations_key(showtime))
            .key(self.key(showtime, "room"))
            .key(self.key(showtime, "room:admitted"))
            .arg(user.get())
            .arg(hold.as_millis() as u64)
            .arg(traceparent)
            .arg(quantity);
        if self.lists_on_take() {
            // The hold joins its user's list in the same call: one round trip less for
            // every hold ([`SeatStore::list_for_user`] then has nothing left to do).
            call.key(self.user_key(user))
                .arg(showtime.get())
                .arg(USER_LIST_LIMIT)
                .arg(USER_LIST_TTL_SECS);
        }
        let v: Value = call
            .invoke_async(&mut conn)
            .instrument(script_span("reserve.lua", showtime))
            .await
            .map_err(port_error)?;
        let items = reply(&v).ok_or_else(|| unexpected("reserve.lua", &v))?;
        let seq = |i: usize| {
            items
                .get(i)
                .and_then(int)
                .and_then(|s| ReservationId::new(showtime, s as u64).ok())
                .ok_or_else(|| unexpected("reserve.lua", &v))
        };
        let count = |i: usize| {
            items
                .get(i)
                .and_then(int)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| unexpected("reserve.lua", &v))
        };
        Ok(match items.first().and_then(int) {
            Some(1) => TakeOutcome::Reserved(Reservation {
                id: seq(1)?,
                user,
                status: Status::Reserved,
                expires_at: UnixMillis(
                    items
                        .get(2)
                        .and_then(int)
                        .ok_or_else(|| unexpected("reserve.lua", &v))? as u64,
                ),
                quantity,
            }),
            Some(2) => TakeOutcome::AlreadyHolds(seq(1)?, status_of(items.get(2))),
            Some(3) => TakeOutcome::SoldOut,
            Some(4) => TakeOutcome::UnknownShowtime,
            Some(5) => TakeOutcome::TooManySeats {
                max_per_user: count(1)?,
            },
            Some(6) => TakeOutcome::NotEnoughSeats {
                available: count(1)?,
            },
            Some(7) => TakeOutcome::NotAdmitted,
            _ => return Err(unexpected("reserve.lua", &v)),
        })
    }

    async fn load(
        &self,
        showtime: ShowtimeId,
        capacity: u32,
        sold: u32,
        generation: u64,
        reload: bool,
        max_per_user: u32,
    ) -> PortResult<bool> {
        let mut conn = self.conn.clone();
        // Registered for the sweep before it has stock, never after: a crash in between
        // leaves a registered showtime with nothing to sweep, never stock the sweep does
        // not walk. (The registry is one key of its own, so this is no cross-slot write
        // on Redis Cluster.)
        let _: i64 = conn
            .sadd(self.showtimes_key(), showtime.get())
            .await
            .map_err(port_error)?;
        let loaded: i64 = self
            .scripts
            .load
            .key(self.key(showtime, "seats"))
            .key(self.key(showtime, "seq"))
            .key(self.key(showtime, "users"))
            .key(self.key(showtime, "deadlines"))
            .key(self.key(showtime, "unrecorded"))
            .key(self.reservations_key(showtime))
            .arg(capacity)
            .arg(sold)
            .arg(u8::from(reload))
            .arg(generation)
            .arg(max_per_user)
            .invoke_async(&mut conn)
            .instrument(script_span("load.lua", showtime))
            .await
            .map_err(port_error)?;
        if loaded == 2 {
            tracing::warn!(%showtime, "replaced seat-store state another database left under this showtime id");
        }
        Ok(loaded >= 1)
    }

    async fn pay(&self, id: ReservationId, user: UserId) -> PortResult<PayOutcome> {
        let showtime = id.showtime();
        let mut conn = self.conn.clone();
        let v: Value = self
            .scripts
            .pay
            .key(self.key(showtime, "seats"))
            .key(self.key(showtime, "users"))
            .key(self.key(showtime, "deadlines"))
            .key(self.key(showtime, "unrecorded"))
            .key(self.reservations_key(showtime))
            .arg(user.get())
            .arg(id.seq())
            .invoke_async(&mut conn)
            .instrument(script_span("pay.lua", showtime))
            .await
            .map_err(port_error)?;
        let items = reply(&v).ok_or_else(|| unexpected("pay.lua", &v))?;
        if items.first().and_then(int) == Some(1) {
            // Paid: this payment's trace links to the trace of the request that held.
            trace::link_current_to(items.get(2).and_then(text));
        }
        Ok(match items.first().and_then(int) {
            Some(1) => PayOutcome::Paid {
                paid_at: UnixMillis(
                    items
                        .get(1)
                        .and_then(int)
                        .ok_or_else(|| unexpected("pay.lua", &v))? as u64,
                ),
                quantity: items
                    .get(3)
                    .and_then(int)
                    .and_then(|q| u32::try_from(q).ok())
                    .ok_or_else(|| unexpected("pay.lua", &v))?,
            },
            Some(0) => PayOutcome::NotFound,
            Some(2) => PayOutcome::NotOwner,
            Some(3) => PayOutcome::Expired,
            Some(4) => PayOutcome::AlreadyPaid(
                status_of(items.get(1)).ok_or_else(|| unexpected("pay.lua", &v))?,
            ),
            Some(5) => PayOutcome::Cancelled,
            _ => return Err(unexpected("pay.lua", &v)),
        })
    }

    async fn cancel(&self, id: ReservationId, user: UserId) -> PortResult<CancelOutcome> {
        let showtime = id.showtime();
        let mut conn = self.conn.clone();
        let v: Value = self
            .scripts
            .cancel
            .key(self.key(showtime, "seats"))
            .key(self.key(showtime, "users"))
            .key(self.key(showtime, "deadlines"))
            .key(self.reservations_key(showtime))
            .arg(user.get())
            .arg(id.seq())
            .invoke_async(&mut conn)
            .instrument(script_span("cancel.lua", showtime))
            .await
            .map_err(port_error)?;
        let items = reply(&v).ok_or_else(|| unexpected("cancel.lua", &v))?;
        Ok(match items.first().and_then(int) {
            Some(1) => CancelOutcome::Cancelled,
            Some(5) => CancelOutcome::AlreadyCancelled,
            Some(0) => CancelOutcome::NotFound,
            Some(2) => CancelOutcome::NotOwner,
            Some(3) => CancelOutcome::Expired,
            Some(4) => CancelOutcome::AlreadyPaid(
                status_of(items.get(1)).ok_or_else(|| unexpected("cancel.lua", &v))?,
            ),
            _ => return Err(unexpected("cancel.lua", &v)),
        })
    }

    async fn expire(&self, id: ReservationId) -> PortResult<ExpireOutcome> {
        self.run_expire(id, false).await
    }

    async fn give_back(&self, id: ReservationId) -> PortResult<ExpireOutcome> {
        self.run_expire(id, true).await
    }

    async fn mark_ordered(&self, orders: &[(ReservationId, UserId)]) -> PortResult<usize> {
        // One script call per showtime: a call stays inside one slot (Redis Cluster
        // refuses one across slots with CROSSSLOT); the showtimes' calls run at once.
        let mut by_showtime: Vec<(ShowtimeId, Vec<(u64, i64)>)> = vec![];
        for (id, user) in orders {
            let order = (id.seq(), user.get());
            match by_showtime.iter_mut().find(|(s, _)| *s == id.showtime()) {
                Some((_, of)) => of.push(order),
                None => by_showtime.push((id.showtime(), vec![order])),
            }
        }
        let span = tracing::info_span!(
            target: trace::TARGET,
            "redis script",
            otel.name = "mark_ordered.lua",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            flash_sale.reservations = orders.len(),
            flash_sale.showtimes = by_showtime.len(),
        );
        let moved = futures::future::try_join_all(
            by_showtime
                .iter()
                .map(|(showtime, of)| self.mark_ordered_in(*showtime, of)),
        )
        .instrument(span)
        .await?;
        Ok(moved.into_iter().sum())
    }

    async fn mark_refused(
        &self,
        ids: &[ReservationId],
        seats: RefusedSeats,
    ) -> PortResult<Vec<ReservationId>> {
        // Refusals are rare: one script call each (each on its own showtime's slot).
        let mut conn = self.conn.clone();
        let mut moved = vec![];
        let seats = match seats {
            RefusedSeats::BackOnSale => "back_on_sale",
            RefusedSeats::OutOfStock => "out_of_stock",
        };
        for id in ids {
            let done: i64 = self
                .scripts
                .mark_refused
                .key(self.key(id.showtime(), "seats"))
                .key(self.key(id.showtime(), "unrecorded"))
                .key(self.reservations_key(id.showtime()))
                .arg(id.seq())
                .arg(seats)
                .invoke_async(&mut conn)
                .await
                .map_err(port_error)?;
            if done == 1 {
                moved.push(*id);
            }
        }
        Ok(moved)
    }

    async fn reservation(&self, id: ReservationId) -> PortResult<Option<Reservation>> {
        let mut conn = self.conn.clone();
        let seq = id.seq();
        let (user, status, expires_at, quantity): (
            Option<i64>,
            Option<String>,
            Option<u64>,
            Option<u32>,
        ) = redis::cmd("HMGET")
            .arg(self.reservations_key(id.showtime()))
            .arg(format!("{seq}:user"))
            .arg(format!("{seq}:status"))
            .arg(format!("{seq}:expires_at"))
            .arg(format!("{seq}:quantity"))
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        let (Some(user), Some(status), Some(expires_at)) = (user, status, expires_at) else {
            return Ok(None);
        };
        let corrupt =
            |what: String| PortError::permanent(COMPONENT, format!("reservation {id}: {what}"));
        Ok(Some(Reservation {
            id,
            user: UserId::new(user).map_err(|e| corrupt(e.0))?,
            status: status
                .parse()
                .map_err(|e: flash_sale_core::InvalidInput| corrupt(e.0))?,
            expires_at: UnixMillis(expires_at),
            // Absent for a single seat (and for every hold made before groups existed).
            quantity: quantity.unwrap_or(1),
        }))
    }

    async fn list_for_user(&self, r: &Reservation) -> PortResult<()> {
        if self.lists_on_take() {
            // reserve.lua listed it with the hold.
            return Ok(());
        }
        let key = self.user_key(r.user);
        let mut conn = self.conn.clone();
        // One key, one slot: a pipeline.
        let listed: Result<(), _> = redis::pipe()
            .zadd(&key, r.id.to_string(), r.id.seq())
            .ignore()
            .zremrangebyrank(&key, 0, -(USER_LIST_LIMIT + 1))
            .ignore()
            .expire(&key, USER_LIST_TTL_SECS)
            .ignore()
            .query_async(&mut conn)
            .await;
        listed.map_err(|e| {
            tracing::warn!(reservation = %r.id, user = %r.user, error = %e, "the hold is not in its user's list of reservations");
            port_error(e)
        })
    }

    async fn user_reservations(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> PortResult<ReservationPage> {
        let mut conn = self.conn.clone();
        let max = before.map_or("+inf".to_string(), |b| format!("({b}"));
        // One more than asked: whether there is a next page.
        let listed: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(self.user_key(user))
            .arg(max)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        let next = (listed.len() > limit).then(|| listed[limit - 1].1);
        let ids: Vec<ReservationId> = listed
            .iter()
            .take(limit)
            .filter_map(|(id, _)| id.parse().ok())
            .collect();
        // Each reservation where its showtime lives (one slot each), all at once.
        let found =
            futures::future::try_join_all(ids.iter().map(|id| self.reservation(*id))).await?;
        Ok(ReservationPage {
            // A reservation Redis lost is left out.
            reservations: found.into_iter().flatten().collect(),
            next,
        })
    }

    async fn counts(&self, showtime: ShowtimeId) -> PortResult<Option<SeatCounts>> {
        let mut conn = self.conn.clone();
        let (capacity, available, held, sold): (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
        ) = redis::cmd("HMGET")
            .arg(self.key(showtime, "seats"))
            .arg("capacity")
            .arg("available")
            .arg("held")
            .arg("sold")
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(match (capacity, available, held, sold) {
            (Some(capacity), Some(available), Some(held), Some(sold)) => {
                // A count below zero is Redis having taken more seats than it had (a
                // refused order a person replayed after its seat was sold again): no
                // seat is left to sell, and the counts no longer add up to the capacity,
                // which `reconcile` reports and `--repair` rebuilds. Read as an error,
                // it would make the showtime unreadable, and unrepairable.
                let count = |n: i64| u32::try_from(n.max(0)).unwrap_or(u32::MAX);
                if available < 0 || held < 0 || sold < 0 {
                    tracing::warn!(
                        showtime = showtime.get(),
                        available,
                        held,
                        sold,
                        "seat counts below zero in Redis: read as zero (flash-sale reconcile reports them)"
                    );
                }
                Some(SeatCounts {
                    capacity: count(capacity),
                    available: count(available),
                    held: count(held),
                    sold: count(sold),
                })
            }
            _ => None,
        })
    }

    async fn resize(&self, showtime: ShowtimeId, from: u32, to: u32) -> PortResult<ResizeOutcome> {
        self.resize_stock(showtime, from, to, false).await
    }

    async fn undo_resize(
        &self,
        showtime: ShowtimeId,
        from: u32,
        to: u32,
    ) -> PortResult<ResizeOutcome> {
        self.resize_stock(showtime, to, from, true).await
    }

    async fn swept_showtimes(&self) -> PortResult<Vec<ShowtimeId>> {
        self.showtimes().await
    }

    async fn overdue_holds(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
    ) -> PortResult<Vec<ReservationId>> {
        let due = self.due(showtime, "deadlines", grace).await?;
        Ok(due
            .into_iter()
            .filter_map(|(s, _)| ReservationId::new(showtime, s).ok())
            .collect())
    }

    async fn unrecorded_payments(
        &self,
        showtime: ShowtimeId,
        grace: Duration,
    ) -> PortResult<Vec<OrderRequest>> {
        let paid = self.due(showtime, "unrecorded", grace).await?;
        let mut orders = Vec::with_capacity(paid.len());
        for (seq, paid_at) in paid {
            let Ok(id) = ReservationId::new(showtime, seq) else {
                continue;
            };
            if let Some(r) = self.reservation(id).await? {
                orders.push(OrderRequest {
                    reservation: id,
                    user: r.user,
                    paid_at: UnixMillis(paid_at),
                    quantity: r.quantity,
                });
            }
        }
        Ok(orders)
    }
}

impl SeatAuditor for RedisSeats {
    async fn audit(&self, showtime: ShowtimeId) -> PortResult<Option<SeatAudit>> {
        let Some(counts) = self.counts(showtime).await? else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let (holds, unrecorded): (Vec<u64>, Vec<u64>) = redis::pipe()
            .zrange(self.key(showtime, "deadlines"), 0, -1)
            .zrange(self.key(showtime, "unrecorded"), 0, -1)
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        // Seats, not reservations: a group's hold counts its quantity (absent: 1).
        let seats_of = |seqs: &[u64]| {
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.reservations_key(showtime));
            for seq in seqs {
                cmd.arg(format!("{seq}:quantity"));
            }
            cmd
        };
        let quantities = |seqs: Vec<u64>| {
            let cmd = seats_of(&seqs);
            let mut conn = conn.clone();
            async move {
                if seqs.is_empty() {
                    return Ok(vec![]);
                }
                let found: Vec<Option<u32>> =
                    cmd.query_async(&mut conn).await.map_err(port_error)?;
                Ok::<_, PortError>(
                    found
                        .into_iter()
                        .map(|q| q.unwrap_or(1))
                        .collect::<Vec<u32>>(),
                )
            }
        };
        let live_holds = quantities(holds).await?.into_iter().sum();
        let seats = quantities(unrecorded.clone()).await?;
        let (unrecorded, unrecorded_seats): (Vec<ReservationId>, Vec<u32>) = unrecorded
            .into_iter()
            .zip(seats)
            .filter_map(|(seq, q)| Some((ReservationId::new(showtime, seq).ok()?, q)))
            .unzip();
        let swept: bool = conn
            .sismember(self.showtimes_key(), showtime.get())
            .await
            .map_err(port_error)?;
        Ok(Some(SeatAudit {
            counts,
            live_holds,
            unrecorded,
            unrecorded_seats,
            swept,
        }))
    }

    async fn rebuild(
        &self,
        showtime: ShowtimeId,
        row: SeatRow,
        ordered: u32,
        recorded: &[ReservationId],
    ) -> PortResult<SeatCounts> {
        let capacity = row.capacity;
        let mut conn = self.conn.clone();
        let mut call = self.scripts.rebuild.key(self.key(showtime, "seats"));
        call.key(self.key(showtime, "deadlines"))
            .key(self.key(showtime, "unrecorded"))
            .key(self.key(showtime, "seq"))
            .key(self.reservations_key(showtime))
            .arg(capacity)
            .arg(ordered)
            .arg(row.max_per_user)
            .arg(row.generation);
        for id in recorded {
            call.arg(id.seq());
        }
        let (available, held, sold, missing): (u32, u32, u32, u32) =
            call.invoke_async(&mut conn).await.map_err(port_error)?;
        if missing > 0 {
            tracing::error!(%showtime, missing, "holds and sales exceed the capacity in Redis");
        }
        let _: i64 = conn
            .sadd(self.showtimes_key(), showtime.get())
            .await
            .map_err(port_error)?;
        Ok(SeatCounts {
            capacity,
            available,
            held,
            sold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_cache_emptied_again_is_worth_a_retry_a_wrong_script_is_not() {
        let noscript = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
            "No matching script",
        ));
        assert!(port_error(noscript).transient);
        let wrong = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR user_script:1: bad argument",
        ));
        assert!(!port_error(wrong).transient);
    }

    /// A slot that moved again while the cluster's shape changed (more redirects than
    /// the client follows) is worth a retry: before, it was permanent, and a batch of
    /// orders meeting it after their commit was dead-lettered whole.
    #[test]
    fn a_slot_that_moved_is_worth_a_retry() {
        for kind in [redis::ServerErrorKind::Moved, redis::ServerErrorKind::Ask] {
            let moved = redis::RedisError::from((
                redis::ErrorKind::Server(kind),
                "key moved",
                "3999 127.0.0.1:7001".to_string(),
            ));
            assert!(port_error(moved).transient, "{kind:?}");
        }
    }
}
