//! What a test changes in the configuration, and the environment and [`Config`] it
//! becomes, for a process the test starts or an `App` it wires itself.

use std::collections::HashMap;

use flash_sale_runtime::Config;
use flash_sale_runtime::identity::{Audience, Claims};

use crate::isolation::{Isolation, POSTGRES, RABBITMQ, REDIS, server_url};

/// How a test wants its functions or server configured; everything else is the
/// defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub hold_secs: u64,
    pub payment: &'static str,
    pub mock_delay: &'static str,
    pub sweep_interval_secs: u64,
    pub sweep_grace_secs: u64,
    pub delivery_limit: u32,
    /// `AUTH_MODE`: `"none"` (the default: the body's user_id is trusted) or `"jwt"`
    /// (tokens signed with [`TEST_JWT_SECRET`]).
    pub auth_mode: &'static str,
    /// Per-user rate limit `(per second, burst)`; `None` keeps the server's default.
    pub rate_user: Option<(u32, u32)>,
    /// Per-address rate limit `(per second, burst)`; `None` keeps the server's default.
    pub rate_addr: Option<(u32, u32)>,
    /// `TRUST_FORWARDED_FOR`: take the client address from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
    /// `RECONCILE_INTERVAL_SECS`: 0 (the tests' default) reconciles for no metrics.
    pub reconcile_interval_secs: u64,
    /// `SOLD_OUT_CACHE_MS`; `None` keeps the server's default.
    pub sold_out_cache_ms: Option<u64>,
    /// `BROKER_CONFIRM_TIMEOUT_MS`; `None` keeps the server's default.
    pub broker_confirm_timeout_ms: Option<u64>,
    /// `BROKER_HAND_OVER_LIMIT`; `None` keeps the server's default.
    pub broker_hand_over_limit: Option<usize>,
    /// `AMQP_URL`, e.g. a [`RabbitNode`](crate::RabbitNode) of the test's own; `None` is
    /// the local RabbitMQ (or `AMQP_URL`).
    pub amqp_url: Option<String>,
    /// `REDIS_URL`, e.g. through a [`Cuttable`](crate::Cuttable) proxy; `None` is the
    /// local Redis (or `REDIS_URL`).
    pub redis_url: Option<String>,
    /// The PostgreSQL server part only (`postgres://user@host:port`), e.g. through a
    /// [`Cuttable`](crate::Cuttable) proxy; the database is the test's own. `None` is the
    /// local server (or `DATABASE_SERVER_URL`).
    pub postgres_server: Option<String>,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. an [`OtlpReceiver`](crate::OtlpReceiver)'s:
    /// traces exported as OTLP/JSON. `None`: no traces.
    pub traces_to: Option<String>,
    /// `OTEL_BSP_SCHEDULE_DELAY` (how long finished spans wait to be sent together).
    pub traces_batch_delay_ms: u64,
    /// More variables, set last (over any above): `DATABASE_URL` with `sslmode`, the
    /// `*_CA_FILE`s of the TLS tests.
    pub extra_env: Vec<(&'static str, String)>,
}

/// The HS256 secret test servers verify tokens with.
pub const TEST_JWT_SECRET: &str = "flash-sale-test-secret-0123456789abcdef";

/// The waiting room secret of every test process (`WAITING_ROOM_SECRET`).
pub const TEST_ROOM_SECRET: &str = "flash-sale-test-waiting-room-secret-0123456789";
/// The issuer and audience test servers require of every token.
pub const TEST_JWT_ISSUER: &str = "https://id.flash-sale.test";
pub const TEST_JWT_AUDIENCE: &str = "flash-sale-tests";

/// Claims for `user`, valid for `ttl_secs`, from the test issuer for the test audience:
/// what a test server accepts once signed with [`TEST_JWT_SECRET`].
pub fn test_claims(user: i64, ttl_secs: u64) -> Claims {
    Claims {
        iss: Some(TEST_JWT_ISSUER.into()),
        aud: Some(Audience::One(TEST_JWT_AUDIENCE.into())),
        ..Claims::for_user(user, ttl_secs)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hold_secs: 900,
            payment: "manual",
            mock_delay: "5..30",
            sweep_interval_secs: 3600,
            sweep_grace_secs: 3600,
            delivery_limit: 5,
            auth_mode: "none",
            rate_user: None,
            rate_addr: None,
            trust_forwarded_for: false,
            sold_out_cache_ms: None,
            reconcile_interval_secs: 0,
            broker_confirm_timeout_ms: None,
            broker_hand_over_limit: None,
            amqp_url: None,
            redis_url: None,
            postgres_server: None,
            traces_to: None,
            traces_batch_delay_ms: 100,
            extra_env: vec![],
        }
    }
}

impl Options {
    pub fn mock_payments() -> Self {
        Self {
            payment: "mock",
            ..Self::default()
        }
    }
}

/// The environment a test's functions or server run with (for a child process).
pub fn env(iso: &Isolation, opts: &Options) -> HashMap<&'static str, String> {
    let database_url = match &opts.postgres_server {
        Some(server) => iso.database_url_on(server),
        None => iso.database_url_on(&server_url("DATABASE_SERVER_URL", POSTGRES)),
    };
    let redis_url = opts
        .redis_url
        .clone()
        .unwrap_or_else(|| server_url("REDIS_URL", REDIS));
    let mut vars = HashMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            opts.traces_to.clone().unwrap_or_default(),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_string()),
        (
            "OTEL_BSP_SCHEDULE_DELAY",
            opts.traces_batch_delay_ms.to_string(),
        ),
        ("DATABASE_URL", database_url),
        ("REDIS_URL", redis_url),
        (
            "AMQP_URL",
            opts.amqp_url
                .clone()
                .unwrap_or_else(|| server_url("AMQP_URL", RABBITMQ)),
        ),
        ("HOLD_TTL_SECS", opts.hold_secs.to_string()),
        ("PAYMENT_MODE", opts.payment.to_string()),
        ("MOCK_PAY_DELAY_MS", opts.mock_delay.to_string()),
        ("ADDR", "127.0.0.1:0".to_string()),
        ("REDIS_KEY_PREFIX", iso.prefix.clone()),
        ("QUEUE_PREFIX", iso.prefix.clone()),
        ("QUEUE_DELIVERY_LIMIT", opts.delivery_limit.to_string()),
        ("SWEEP_INTERVAL_SECS", opts.sweep_interval_secs.to_string()),
        ("SWEEP_GRACE_SECS", opts.sweep_grace_secs.to_string()),
        ("AUTH_MODE", opts.auth_mode.to_string()),
        // A test's server stops at once; draining is tested on its own.
        ("DRAIN_DELAY_MS", "0".to_string()),
        (
            "RECONCILE_INTERVAL_SECS",
            opts.reconcile_interval_secs.to_string(),
        ),
        ("JWT_HS256_SECRET", TEST_JWT_SECRET.to_string()),
        // Every process of a test (functions under watch, a restarted server) signs and
        // checks the waiting room's passes with the same secret.
        ("WAITING_ROOM_SECRET", TEST_ROOM_SECRET.to_string()),
        ("JWT_ISSUER", TEST_JWT_ISSUER.to_string()),
        ("JWT_AUDIENCE", TEST_JWT_AUDIENCE.to_string()),
        (
            "RATE_LIMIT_USER_PER_SEC",
            opts.rate_user.map(|q| q.0.to_string()).unwrap_or_default(),
        ),
        (
            "RATE_LIMIT_USER_BURST",
            opts.rate_user.map(|q| q.1.to_string()).unwrap_or_default(),
        ),
        (
            "RATE_LIMIT_ADDR_PER_SEC",
            opts.rate_addr.map(|q| q.0.to_string()).unwrap_or_default(),
        ),
        (
            "RATE_LIMIT_ADDR_BURST",
            opts.rate_addr.map(|q| q.1.to_string()).unwrap_or_default(),
        ),
        ("TRUST_FORWARDED_FOR", opts.trust_forwarded_for.to_string()),
        (
            "BROKER_CONFIRM_TIMEOUT_MS",
            opts.broker_confirm_timeout_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
        ),
        (
            "BROKER_HAND_OVER_LIMIT",
            opts.broker_hand_over_limit
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ),
        (
            "SOLD_OUT_CACHE_MS",
            opts.sold_out_cache_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
        ),
    ]);
    vars.extend(opts.extra_env.iter().cloned());
    vars
}

/// The configuration a test's `App` is wired with: [`env`] and nothing else.
pub fn config(iso: &Isolation, opts: &Options) -> Config {
    let vars = env(iso, opts);
    Config::from_lookup(|k| vars.get(k).cloned()).expect("test configuration is valid")
}
