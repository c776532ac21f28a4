//! The [`IdempotencyStore`] on Redis: one HASH per key, in its showtime's slot.
//!
//! For key prefix `fs`, user 7's key `abc` on `POST /reserve` of showtime 42 is
//! `fs:{42}:idem:7:reserve:abc` (on pay: `...:pay:abc`, the showtime being the
//! reservation's), a HASH of `state` (`pending`, then `done`), `fp` (the request's
//! fingerprint), `token` (the pending claim's), and once done `status` and `body`. A
//! pending record expires with its lease, a done one after the configured time. Each
//! step is one script over that one key (`lua/idempotency_*.lua`), so it is atomic and
//! runs on Redis Cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flash_sale_core::idempotency::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, KeyScope, RecordedAnswer,
};
use flash_sale_core::ports::PortResult;
use redis::{Script, Value};

use crate::redis_connection::RedisConnection;
use crate::redis_seats::{int_reply, port_error, unexpected_reply};

struct Scripts {
    claim: Script,
    record: Script,
    release: Script,
}

/// Idempotency keys on Redis. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct RedisIdempotency {
    conn: RedisConnection,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    /// What makes this process's claim tokens its own.
    origin: Arc<str>,
}

impl std::fmt::Debug for RedisIdempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdempotency")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Claims made by this process so far (a part of each token).
static CLAIMS: AtomicU64 = AtomicU64::new(0);

impl RedisIdempotency {
    /// Keys under `prefix` (the seat store's) on `conn` (shared with it).
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self {
            conn,
            prefix: prefix.into(),
            scripts: Arc::new(Scripts {
                claim: Script::new(include_str!("../../lua/idempotency_claim.lua")),
                record: Script::new(include_str!("../../lua/idempotency_record.lua")),
                release: Script::new(include_str!("../../lua/idempotency_release.lua")),
            }),
            origin: format!("{}-{started:x}", std::process::id()).into(),
        }
    }

    /// The Redis key of `scope`'s record.
    pub fn key(&self, scope: &KeyScope) -> String {
        format!(
            "{}:{{{}}}:idem:{}:{}:{}",
            self.prefix,
            scope.showtime,
            scope.user,
            scope.route.as_str(),
            scope.key
        )
    }

    fn new_token(&self) -> ClaimToken {
        let n = CLAIMS.fetch_add(1, Ordering::Relaxed);
        ClaimToken(format!("{}-{n}", self.origin))
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

impl IdempotencyStore for RedisIdempotency {
    async fn claim(
        &self,
        scope: &KeyScope,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> PortResult<Claim> {
        let mut conn = self.conn.clone();
        let token = self.new_token();
        let v: Value = self
            .scripts
            .claim
            .key(self.key(scope))
            .arg(&fingerprint.0)
            .arg(&token.0)
            .arg(millis(lease))
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        let what = "idempotency_claim.lua";
        let Value::Array(items) = &v else {
            return Err(unexpected_reply(what, &v));
        };
        Ok(match items.first().and_then(int_reply) {
            Some(1) => Claim::Claimed(token),
            Some(2) => {
                let status = items
                    .get(1)
                    .and_then(int_reply)
                    .and_then(|s| u16::try_from(s).ok())
                    .ok_or_else(|| unexpected_reply(what, &v))?;
                let body = match items.get(2) {
                    Some(Value::BulkString(b)) => b.clone(),
                    _ => return Err(unexpected_reply(what, &v)),
                };
                Claim::Answered(RecordedAnswer { status, body })
            }
            Some(3) => Claim::InProgress,
            Some(4) => Claim::Reused,
            _ => return Err(unexpected_reply(what, &v)),
        })
    }

    async fn record(
        &self,
        scope: &KeyScope,
        token: &ClaimToken,
        answer: &RecordedAnswer,
        ttl: Duration,
    ) -> PortResult<bool> {
        let mut conn = self.conn.clone();
        let done: i64 = self
            .scripts
            .record
            .key(self.key(scope))
            .arg(&token.0)
            .arg(answer.status)
            .arg(answer.body.as_slice())
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(done == 1)
    }

    async fn release(&self, scope: &KeyScope, token: &ClaimToken) -> PortResult<bool> {
        let mut conn = self.conn.clone();
        let done: i64 = self
            .scripts
            .release
            .key(self.key(scope))
            .arg(&token.0)
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(done == 1)
    }
}
