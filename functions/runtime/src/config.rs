//! Configuration from the environment. Every variable has a default that points at the
//! local services; a bad value stops start-up with a message naming the variable.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use flash_sale_adapters::{CaFile, Trust};
use flash_sale_core::PaymentMode;

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub redis_url: String,
    pub amqp_url: String,
    /// What `rediss://` connections trust: the system's roots plus `REDIS_CA_FILE`.
    pub redis_trust: Trust,
    /// What `amqps://` connections trust: the system's roots plus `AMQP_CA_FILE`.
    pub amqp_trust: Trust,
    /// What PostgreSQL connections with `sslmode=verify-ca|verify-full` trust: the
    /// system's roots plus `DATABASE_CA_FILE`.
    pub database_trust: Trust,
    /// How long an unpaid hold keeps its seat (`HOLD_TTL_SECS`, default 900).
    pub hold: Duration,
    pub payment_mode: PaymentMode,
    /// The mock payer's delay before paying (`MOCK_PAY_DELAY_MS`, default `100..1000`).
    pub mock_pay_delay_ms: RangeInclusive<u64>,
    pub addr: SocketAddr,
    /// Prefix of every Redis key (`REDIS_KEY_PREFIX`, default `fs`).
    pub redis_key_prefix: String,
    /// Prefix of every exchange and queue (`QUEUE_PREFIX`, default `flash-sale`).
    pub queue_prefix: String,
    /// Deliveries of one message before it is dead-lettered (`QUEUE_DELIVERY_LIMIT`, 10).
    pub delivery_limit: u32,
    /// How often the sweep runs in the local process (`SWEEP_INTERVAL_SECS`, default 5).
    pub sweep_interval: Duration,
    /// How long past its deadline a hold (or past its payment an order) may wait for
    /// its message before the sweep steps in (`SWEEP_GRACE_SECS`, default 30).
    pub sweep_grace: Duration,
    /// How long a process answers "sold out" from memory after Redis said so
    /// (`SOLD_OUT_CACHE_MS`, default 100; 0 turns it off).
    pub sold_out_cache: Duration,
    /// How long the answer of a request sent with an `Idempotency-Key` is replayed for
    /// that key (`IDEMPOTENCY_KEY_TTL_SECS`, default 86400: a day).
    pub idempotency_key_ttl: Duration,
    /// Whether reserve may answer once a hold's messages are on their way rather than
    /// confirmed (see `MessageBus::publish_hold`): yes in a long-lived process, no under
    /// a Lambda runtime (`AWS_LAMBDA_RUNTIME_API` is set), where the environment is
    /// frozen between invocations and nothing would publish what was handed over.
    pub hand_over_hold_messages: bool,
    /// The most one publish waits for the broker (its channel, its confirm):
    /// `BROKER_CONFIRM_TIMEOUT_MS`, default 3000, at most 4500 so that a reserve, which
    /// may wait for the batch ahead of its own too, answers well inside the 10 s
    /// request timeout. A broker that blocks publishers (a memory or disk alarm) then
    /// makes a reserve answer 503 with its seat given back, instead of hanging.
    pub broker_confirm_timeout: Duration,
    /// The most hold messages handed over and not yet confirmed
    /// (`BROKER_HAND_OVER_LIMIT`, default 10000): past it, a reserve waits for its own
    /// confirm, so a stalled broker cannot make messages pile up in memory.
    pub hand_over_limit: usize,
    /// How long a batch of handed-over hold messages waits for more before it leaves
    /// (`BROKER_LINGER_MS`, default 5, 0 to send at once): no answer waits for it, and
    /// holds that trickle in leave in fewer, larger messages (BENCHMARKS.md, lever 3).
    pub broker_linger: Duration,
    /// How long a stopping local process keeps serving after `/readyz` turned 503, so a
    /// load balancer drains it before the listener closes (`DRAIN_DELAY_MS`, default
    /// 2000; 0 stops at once).
    pub drain_delay: Duration,
    /// How often the local process reconciles Redis with PostgreSQL for its metrics
    /// (per-showtime seats, discrepancies, refunds awaiting, queue depths), without
    /// repairing anything (`RECONCILE_INTERVAL_SECS`, default 30; 0 turns it off).
    pub reconcile_interval: Duration,
    /// Whether the local process records metrics and serves them on `/metrics`
    /// (`METRICS_ENABLED`, default `true`; `false` for measuring their cost).
    pub metrics_enabled: bool,
    /// Who a caller is: `AUTH_MODE` and the `JWT_*` variables (see [`AuthConfig`]).
    pub auth: AuthConfig,
    /// Rate limits and the bound on in-flight requests (see [`LimitsConfig`]).
    pub limits: LimitsConfig,
    /// How waiting rooms sign their passes and how fresh their snapshots are (see
    /// [`WaitingRoomConfig`]).
    pub waiting_room: WaitingRoomConfig,
}

/// The waiting rooms' settings. The secrets are never printed (`Debug` redacts them).
#[derive(Clone)]
pub struct WaitingRoomConfig {
    /// Signs the queue tickets and admissions (`WAITING_ROOM_SECRET`, at least 32 bytes,
    /// the same in every process). Unset: a random secret of this process's own, which
    /// only one process can use (refused on AWS Lambda).
    pub secret: Option<Vec<u8>>,
    /// The secret before a rotation, still accepted (`WAITING_ROOM_PREVIOUS_SECRET`).
    pub previous_secret: Option<Vec<u8>>,
    /// How old a room's snapshot a status answer may come from
    /// (`WAITING_ROOM_REFRESH_MS`, default 200): a polling crowd costs Redis one call
    /// per room per this period and process.
    pub refresh: Duration,
    /// How many polls a second each room's whole line is paced to, across every process
    /// (`WAITING_ROOM_POLLS_PER_SEC`, default 10,000): every answer says when to ask
    /// again so that, however long the line, it asks about this often. Size it to what
    /// the deployment answers beside the sale itself.
    pub polls_per_sec: u32,
    /// How many holds a second the deployment sells (`WAITING_ROOM_HOLDS_PER_SEC`,
    /// default 5,000): the front of a room's line, the buyers its stock admits, comes
    /// back at this pace when the room opens, each of them bringing a hold; the rest of
    /// the line after them, at `polls_per_sec`.
    pub holds_per_sec: u32,
}

impl std::fmt::Debug for WaitingRoomConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingRoomConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("refresh", &self.refresh)
            .field("polls_per_sec", &self.polls_per_sec)
            .field("holds_per_sec", &self.holds_per_sec)
            .finish()
    }
}

/// How the caller's identity is established (`AUTH_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// The Go reference's trust: the `user_id` in the body is the caller, and anyone may
    /// create showtimes. Allowed only on a loopback `ADDR`, never on AWS.
    None,
    /// The caller is the `sub` of a verified bearer token (or of the API Gateway JWT
    /// authorizer's claims on Lambda); admin routes need an admin claim.
    Jwt,
}

/// Identity settings. The key material is never printed (`Debug` redacts it).
#[derive(Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HS256 shared secret (`JWT_HS256_SECRET`, at least 32 bytes).
    pub hs256_secret: Option<Vec<u8>>,
    /// RS256 public key, PEM, read from `JWT_RS256_PUBLIC_KEY_FILE`.
    pub rs256_public_pem: Option<Vec<u8>>,
    /// Required `iss` (`JWT_ISSUER`), if set.
    pub issuer: Option<String>,
    /// Required `aud` (`JWT_AUDIENCE`), if set. With a key configured, `jwt` mode needs
    /// both the issuer and the audience unless `JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE=true`
    /// waives them.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`/`nbf` (`JWT_LEEWAY_SECS`, default 30).
    pub leeway: Duration,
    /// The role that may create showtimes (`JWT_ADMIN_ROLE`, default `admin`).
    pub admin_role: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("rs256_public_pem", &self.rs256_public_pem.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("admin_role", &self.admin_role)
            .finish()
    }
}

/// A token bucket: `per_sec` requests a second on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_sec: u32,
    pub burst: u32,
}

/// Abuse limits. A quota of `None` is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Per caller identity (`RATE_LIMIT_USER_PER_SEC` / `_BURST`, default 20/s, 50).
    pub per_user: Option<Quota>,
    /// Per client address (`RATE_LIMIT_ADDR_PER_SEC` / `_BURST`, default 100/s, 200).
    pub per_address: Option<Quota>,
    /// Whether loopback clients are limited by address too (`RATE_LIMIT_LOOPBACK`,
    /// default `false`: local tools, tests and benchmarks all come from 127.0.0.1).
    pub limit_loopback: bool,
    /// Take the client address from the last `X-Forwarded-For` entry
    /// (`TRUST_FORWARDED_FOR`, default `false`; only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
    /// Requests handled at once (`MAX_IN_FLIGHT`, default 4096); more wait up to
    /// `in_flight_wait` for a slot, then get a 503.
    pub max_in_flight: usize,
    /// `IN_FLIGHT_WAIT_MS`, default 1000.
    pub in_flight_wait: Duration,
}

/// A configuration variable with a bad value.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {problem} (got {value:?})")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub problem: String,
}

/// The one reader of configuration variables, for every flash-sale binary: a blank
/// value reads as unset, and every bad value is a [`ConfigError`] naming its variable.
pub struct Env<L> {
    lookup: L,
}

impl Env<fn(&str) -> Option<String>> {
    /// The process environment.
    pub fn process() -> Self {
        Env {
            lookup: |name| std::env::var(name).ok(),
        }
    }
}

impl<L: Fn(&str) -> Option<String>> Env<L> {
    /// Variables looked up through `lookup` (a map, in tests).
    pub fn new(lookup: L) -> Self {
        Env { lookup }
    }

    /// The value of `name`, if set and not blank.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// The value of `name`, or `default`.
    pub fn text(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_string())
    }

    /// The value of `name` (or `default`) made into a `T` by `parse`; `None` from
    /// `parse` is a [`ConfigError`] saying `expected`.
    pub fn parse<T>(
        &self,
        name: &'static str,
        default: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let value = self.text(name, default);
        parse(value.trim()).ok_or_else(|| ConfigError {
            name,
            value,
            problem: expected.to_string(),
        })
    }

    /// A whole number in `range` (`default` when unset).
    pub fn number(
        &self,
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        let expected = format!(
            "expected a whole number between {} and {}",
            range.start(),
            range.end()
        );
        self.parse(name, &default.to_string(), &expected, |v| {
            v.parse::<u64>().ok().filter(|n| range.contains(n))
        })
    }

    /// Whole seconds in `range`.
    pub fn secs(
        &self,
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.number(name, default, range).map(Duration::from_secs)
    }

    /// Milliseconds in `range`.
    pub fn millis(
        &self,
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.number(name, default, range).map(Duration::from_millis)
    }

    /// `true`/`false` (also 1/0, yes/no, on/off); unset is `false`.
    pub fn flag(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.flag_or(name, false)
    }

    /// `true`/`false` (also 1/0, yes/no, on/off); unset is `default`.
    pub fn flag_or(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        let default = if default { "true" } else { "false" };
        self.parse(name, default, "expected true or false", |v| {
            match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }

    /// The CA file (PEM) named by `name`, added to the system's roots for one service's
    /// TLS connections; unset trusts the system's roots only. A file that cannot be read
    /// or holds no usable certificate is a [`ConfigError`].
    pub fn ca_file(&self, name: &'static str) -> Result<Trust, ConfigError> {
        let ca = match self.get(name) {
            None => None,
            Some(path) => Some(CaFile::read(path.trim()).map_err(|problem| ConfigError {
                name,
                value: path.clone(),
                problem,
            })?),
        };
        Ok(Trust::new(name, ca))
    }

    /// A URL with one of `schemes`.
    pub fn url(
        &self,
        name: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, ConfigError> {
        let expected = format!(
            "expected a URL starting with {}://",
            schemes.join(":// or ")
        );
        self.parse(name, default, &expected, |v| {
            schemes
                .iter()
                .any(|s| v.starts_with(&format!("{s}://")))
                .then(|| v.to_string())
        })
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Env::process())
    }

    /// Reads variables through `lookup` (a map, in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::read(&Env::new(lookup))
    }

    /// Reads every variable through `env`.
    pub fn read(env: &Env<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let payment_mode = env.parse(
            "PAYMENT_MODE",
            "manual",
            "expected `manual` or `mock`",
            |v| match v.to_ascii_lowercase().as_str() {
                "manual" => Some(PaymentMode::Manual),
                "mock" => Some(PaymentMode::Mock),
                _ => None,
            },
        )?;
        let mock_pay_delay_ms = env.parse(
            "MOCK_PAY_DELAY_MS",
            "100..1000",
            "expected a range of milliseconds such as `100..1000` (or one number)",
            parse_range,
        )?;
        // On Lambda the mock payer waits out each delay inside its invocation (15 s at
        // most in template.yaml): a longer one times the batch out again and again until
        // the broker dead-letters it, and the holds it should have paid expire.
        if payment_mode == PaymentMode::Mock
            && env.get("AWS_LAMBDA_RUNTIME_API").is_some()
            && *mock_pay_delay_ms.end() > LAMBDA_MOCK_PAY_DELAY_MS
        {
            return Err(ConfigError {
                name: "MOCK_PAY_DELAY_MS",
                value: format!(
                    "{}..={}",
                    mock_pay_delay_ms.start(),
                    mock_pay_delay_ms.end()
                ),
                problem: format!(
                    "on Lambda the mock payer waits inside an invocation of at most 15 s: \
                     at most {LAMBDA_MOCK_PAY_DELAY_MS} ms"
                ),
            });
        }
        let addr = env.parse(
            "ADDR",
            "127.0.0.1:4000",
            "expected host:port, e.g. 127.0.0.1:4000",
            |v| v.parse::<SocketAddr>().ok(),
        )?;
        let prefix = |name: &'static str, default: &str| {
            env.parse(
                name,
                default,
                "expected 1-64 letters, digits or - _ . :",
                |v| {
                    let ok = v.len() <= 64
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                    ok.then(|| v.to_string())
                },
            )
        };
        Ok(Self {
            database_url: env.url(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/flash_sale",
                &["postgres", "postgresql"],
            )?,
            redis_url: env.url(
                "REDIS_URL",
                "redis://127.0.0.1:6379",
                &["redis", "rediss", "redis+unix", "unix"],
            )?,
            amqp_url: env.url(
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                &["amqp", "amqps"],
            )?,
            redis_trust: env.ca_file("REDIS_CA_FILE")?,
            amqp_trust: env.ca_file("AMQP_CA_FILE")?,
            database_trust: env.ca_file("DATABASE_CA_FILE")?,
            hold: env.secs("HOLD_TTL_SECS", 900, 1..=WEEK_SECS)?,
            payment_mode,
            mock_pay_delay_ms,
            addr,
            redis_key_prefix: prefix("REDIS_KEY_PREFIX", "fs")?,
            queue_prefix: prefix("QUEUE_PREFIX", "flash-sale")?,
            delivery_limit: env.number("QUEUE_DELIVERY_LIMIT", 10, 1..=1000)? as u32,
            sweep_interval: env.secs("SWEEP_INTERVAL_SECS", 5, 1..=WEEK_SECS)?,
            sweep_grace: env.secs("SWEEP_GRACE_SECS", 30, 0..=WEEK_SECS)?,
            sold_out_cache: env.millis("SOLD_OUT_CACHE_MS", 100, 0..=60_000)?,
            idempotency_key_ttl: env.secs("IDEMPOTENCY_KEY_TTL_SECS", 86_400, 1..=WEEK_SECS)?,
            hand_over_hold_messages: env.get("AWS_LAMBDA_RUNTIME_API").is_none(),
            broker_confirm_timeout: env.millis("BROKER_CONFIRM_TIMEOUT_MS", 3000, 100..=4500)?,
            hand_over_limit: env.number("BROKER_HAND_OVER_LIMIT", 10_000, 0..=1_000_000)? as usize,
            broker_linger: env.millis("BROKER_LINGER_MS", 5, 0..=1000)?,
            drain_delay: env.millis("DRAIN_DELAY_MS", 2000, 0..=60_000)?,
            reconcile_interval: env.secs("RECONCILE_INTERVAL_SECS", 30, 0..=WEEK_SECS)?,
            metrics_enabled: env.flag_or("METRICS_ENABLED", true)?,
            auth: auth_config(env, addr)?,
            limits: limits_config(env)?,
            waiting_room: waiting_room_config(env)?,
        })
    }
}

/// `WAITING_ROOM_SECRET`, `WAITING_ROOM_PREVIOUS_SECRET`, `WAITING_ROOM_REFRESH_MS`,
/// `WAITING_ROOM_POLLS_PER_SEC`, `WAITING_ROOM_HOLDS_PER_SEC`.
fn waiting_room_config(
    env: &Env<impl Fn(&str) -> Option<String>>,
) -> Result<WaitingRoomConfig, ConfigError> {
    let secret = |name: &'static str| -> Result<Option<Vec<u8>>, ConfigError> {
        match env.get(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) if v.len() < crate::room_passes::MIN_SECRET_LEN => Err(ConfigError {
                name,
                value: "<redacted>".into(),
                problem: format!(
                    "a waiting room secret must be at least {} bytes, got {}",
                    crate::room_passes::MIN_SECRET_LEN,
                    v.len()
                ),
            }),
            Some(v) => Ok(Some(v.into_bytes())),
        }
    };
    let current = secret("WAITING_ROOM_SECRET")?;
    if current.is_none() && env.get("AWS_LAMBDA_LOG_GROUP_NAME").is_some() {
        return Err(ConfigError {
            name: "WAITING_ROOM_SECRET",
            value: String::new(),
            problem: "must be set on AWS Lambda: every instance signs and checks the waiting room's passes with it".into(),
        });
    }
    Ok(WaitingRoomConfig {
        secret: current,
        previous_secret: secret("WAITING_ROOM_PREVIOUS_SECRET")?,
        refresh: env.millis("WAITING_ROOM_REFRESH_MS", 200, 10..=10_000)?,
        polls_per_sec: env.number(
            "WAITING_ROOM_POLLS_PER_SEC",
            u64::from(flash_sale_core::waiting_room::DEFAULT_POLLS_PER_SEC),
            1..=10_000_000,
        )? as u32,
        holds_per_sec: env.number(
            "WAITING_ROOM_HOLDS_PER_SEC",
            u64::from(flash_sale_core::waiting_room::DEFAULT_HOLDS_PER_SEC),
            1..=10_000_000,
        )? as u32,
    })
}

/// The longest hold, sweep interval or grace: a week.
const WEEK_SECS: u64 = 7 * 24 * 3600;

/// `AUTH_MODE` and the `JWT_*` variables. `none` is refused unless `ADDR` is loopback
/// and the process is not deployed on AWS Lambda (where `AWS_LAMBDA_LOG_GROUP_NAME` is
/// always set; `cargo lambda watch` does not set it).
fn auth_config(
    env: &Env<impl Fn(&str) -> Option<String>>,
    addr: SocketAddr,
) -> Result<AuthConfig, ConfigError> {
    let raw_mode = env.get("AUTH_MODE").unwrap_or_else(|| "none".into());
    let mode = match raw_mode.trim().to_ascii_lowercase().as_str() {
        "none" => AuthMode::None,
        "jwt" => AuthMode::Jwt,
        _ => {
            return Err(ConfigError {
                name: "AUTH_MODE",
                value: raw_mode,
                problem: "expected `none` (loopback demos only) or `jwt`".into(),
            });
        }
    };
    let on_aws = env.get("AWS_LAMBDA_LOG_GROUP_NAME").is_some();
    if mode == AuthMode::None && (!addr.ip().is_loopback() || on_aws) {
        let where_ = if on_aws {
            "on AWS Lambda".to_string()
        } else {
            format!("on ADDR={addr}, which is not a loopback address")
        };
        return Err(ConfigError {
            name: "AUTH_MODE",
            value: raw_mode,
            problem: format!(
                "refusing to start open {where_}: AUTH_MODE=none trusts the user_id in every \
                 request body, so it is allowed only on 127.0.0.1 / ::1. Set AUTH_MODE=jwt with \
                 JWT_HS256_SECRET or JWT_RS256_PUBLIC_KEY_FILE (see docs/security.md)"
            ),
        });
    }
    let hs256_secret = match env.get("JWT_HS256_SECRET") {
        Some(s) if s.len() < 32 => {
            return Err(ConfigError {
                name: "JWT_HS256_SECRET",
                value: "<redacted>".into(),
                problem: format!("expected at least 32 bytes, got {}", s.len()),
            });
        }
        other => other.map(String::into_bytes),
    };
    let rs256_public_pem = match env.get("JWT_RS256_PUBLIC_KEY_FILE") {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path.trim()).map_err(|e| ConfigError {
                name: "JWT_RS256_PUBLIC_KEY_FILE",
                value: path.clone(),
                problem: format!("cannot read the PEM file: {e}"),
            })?;
            if let Err(e) = jsonwebtoken::DecodingKey::from_rsa_pem(&pem) {
                return Err(ConfigError {
                    name: "JWT_RS256_PUBLIC_KEY_FILE",
                    value: path,
                    problem: format!("not an RSA public key in PEM: {e}"),
                });
            }
            Some(pem)
        }
    };
    let on_lambda = env.get("AWS_LAMBDA_FUNCTION_NAME").is_some();
    if mode == AuthMode::Jwt && hs256_secret.is_none() && rs256_public_pem.is_none() && !on_lambda {
        return Err(ConfigError {
            name: "AUTH_MODE",
            value: raw_mode,
            problem: "AUTH_MODE=jwt needs JWT_HS256_SECRET or JWT_RS256_PUBLIC_KEY_FILE \
                      (on Lambda, an API Gateway JWT authorizer may verify instead)"
                .into(),
        });
    }
    let issuer = env.get("JWT_ISSUER");
    let audience = env.get("JWT_AUDIENCE");
    let any_issuer_and_audience = env.flag("JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE")?;
    let verifies_here = hs256_secret.is_some() || rs256_public_pem.is_some();
    if mode == AuthMode::Jwt && verifies_here && !any_issuer_and_audience {
        // A token another application of the same identity provider was given would
        // otherwise be good here too, admin role included.
        for (name, value) in [("JWT_ISSUER", &issuer), ("JWT_AUDIENCE", &audience)] {
            if value.is_none() {
                return Err(ConfigError {
                    name,
                    value: String::new(),
                    problem: "AUTH_MODE=jwt verifies tokens with JWT_ISSUER and JWT_AUDIENCE, \
                              so that a token minted for another application is refused; set \
                              both, or JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE=true to accept any"
                        .into(),
                });
            }
        }
    }
    Ok(AuthConfig {
        mode,
        hs256_secret,
        rs256_public_pem,
        issuer,
        audience,
        leeway: env.secs("JWT_LEEWAY_SECS", 30, 0..=600)?,
        admin_role: env.get("JWT_ADMIN_ROLE").unwrap_or_else(|| "admin".into()),
    })
}

/// The rate limits and the in-flight bound. A rate of 0 turns its limit off.
fn limits_config(env: &Env<impl Fn(&str) -> Option<String>>) -> Result<LimitsConfig, ConfigError> {
    let quota = |rate: &'static str,
                 burst: &'static str,
                 default_rate: u64,
                 default_burst: u64|
     -> Result<Option<Quota>, ConfigError> {
        let per_sec = env.number(rate, default_rate, 0..=1_000_000)?;
        let burst_n = env.number(burst, default_burst, 0..=1_000_000)?;
        if per_sec == 0 {
            return Ok(None);
        }
        if burst_n == 0 {
            return Err(ConfigError {
                name: burst,
                value: "0".into(),
                problem: format!("expected at least 1 while {rate} is on"),
            });
        }
        Ok(Some(Quota {
            per_sec: per_sec as u32,
            burst: burst_n as u32,
        }))
    };
    let max_in_flight = env.number("MAX_IN_FLIGHT", 4096, 1..=1_000_000)?;
    Ok(LimitsConfig {
        per_user: quota("RATE_LIMIT_USER_PER_SEC", "RATE_LIMIT_USER_BURST", 20, 50)?,
        per_address: quota("RATE_LIMIT_ADDR_PER_SEC", "RATE_LIMIT_ADDR_BURST", 100, 200)?,
        limit_loopback: env.flag("RATE_LIMIT_LOOPBACK")?,
        trust_forwarded_for: env.flag("TRUST_FORWARDED_FOR")?,
        max_in_flight: max_in_flight as usize,
        in_flight_wait: env.millis("IN_FLIGHT_WAIT_MS", 1000, 0..=60_000)?,
    })
}

/// The longest mock payment delay on Lambda, where the payer waits inside a 15 s
/// invocation with the rest of its batch.
const LAMBDA_MOCK_PAY_DELAY_MS: u64 = 10_000;

/// `100..1000`, `100..=1000` or `250`.
fn parse_range(raw: &str) -> Option<RangeInclusive<u64>> {
    let raw = raw.trim();
    let (lo, hi) = match raw.split_once("..") {
        Some((lo, hi)) => (
            lo.trim().parse().ok()?,
            hi.trim().trim_start_matches('=').trim().parse().ok()?,
        ),
        None => {
            let n = raw.parse().ok()?;
            (n, n)
        }
    };
    (lo <= hi && hi <= 600_000).then_some(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_point_at_the_local_services() {
        let c = with(&[]).unwrap();
        assert_eq!(c.hold, Duration::from_secs(900));
        assert_eq!(c.payment_mode, PaymentMode::Manual);
        assert_eq!(c.addr.to_string(), "127.0.0.1:4000");
        assert_eq!(c.mock_pay_delay_ms, 100..=1000);
        assert!(c.redis_url.starts_with("redis://127.0.0.1"));
    }

    #[test]
    fn a_mock_payment_delay_longer_than_a_lambda_invocation_is_refused_on_lambda() {
        let lambda = ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001");
        let mock = ("PAYMENT_MODE", "mock");
        let err = with(&[lambda, mock, ("MOCK_PAY_DELAY_MS", "1000..30000")]).unwrap_err();
        assert_eq!(err.name, "MOCK_PAY_DELAY_MS", "{err}");
        assert!(with(&[lambda, mock, ("MOCK_PAY_DELAY_MS", "100..10000")]).is_ok());
        // Unused without the mock payer; a local process waits as long as it is told.
        assert!(with(&[lambda, ("MOCK_PAY_DELAY_MS", "1000..30000")]).is_ok());
        assert!(with(&[mock, ("MOCK_PAY_DELAY_MS", "1000..30000")]).is_ok());
    }

    #[test]
    fn only_a_process_outside_a_lambda_runtime_hands_hold_messages_over() {
        assert!(with(&[]).unwrap().hand_over_hold_messages);
        let lambda = with(&[("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")]).unwrap();
        assert!(!lambda.hand_over_hold_messages);
    }

    #[test]
    fn hold_messages_linger_five_milliseconds_unless_told_otherwise() {
        assert_eq!(with(&[]).unwrap().broker_linger, Duration::from_millis(5));
        let off = with(&[("BROKER_LINGER_MS", "0")]).unwrap();
        assert_eq!(off.broker_linger, Duration::ZERO);
        let err = with(&[("BROKER_LINGER_MS", "5000")]).unwrap_err();
        assert_eq!(err.name, "BROKER_LINGER_MS");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("HOLD_TTL_SECS", "soon"),
            ("HOLD_TTL_SECS", "0"),
            ("PAYMENT_MODE", "free"),
            ("MOCK_PAY_DELAY_MS", "9..1"),
            ("ADDR", "localhost"),
            ("DATABASE_URL", "mysql://x"),
            ("AMQP_URL", "127.0.0.1"),
            ("REDIS_KEY_PREFIX", "has{brace}"),
            ("REDIS_CA_FILE", "/nonexistent/ca.pem"),
            (
                "AMQP_CA_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ),
            ("DATABASE_CA_FILE", "/nonexistent/rds-global-bundle.pem"),
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }

    #[test]
    fn auth_mode_none_is_the_default_on_loopback_only() {
        let c = with(&[]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::None);
        assert!(with(&[("ADDR", "[::1]:4000")]).is_ok());
        for addr in ["0.0.0.0:4000", "10.1.2.3:80", "[::]:4000"] {
            let err = with(&[("ADDR", addr)]).unwrap_err();
            assert_eq!(err.name, "AUTH_MODE", "{err}");
            assert!(err.to_string().contains("not a loopback"), "{err}");
        }
        let err = with(&[("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/reserve")]).unwrap_err();
        assert_eq!(err.name, "AUTH_MODE");
    }

    #[test]
    fn jwt_mode_needs_a_key_and_may_listen_anywhere() {
        let err = with(&[("AUTH_MODE", "jwt")]).unwrap_err();
        assert_eq!(err.name, "AUTH_MODE");
        let secret = "a-test-secret-of-at-least-32-bytes!!";
        let c = with(&[
            ("AUTH_MODE", "jwt"),
            ("ADDR", "0.0.0.0:4000"),
            ("JWT_HS256_SECRET", secret),
            ("JWT_ISSUER", "https://id.example"),
            ("JWT_AUDIENCE", "flash-sale"),
        ])
        .unwrap();
        assert_eq!(c.auth.mode, AuthMode::Jwt);
        assert!(
            !format!("{c:?}").contains(secret),
            "the secret is never printed"
        );
        let err = with(&[("AUTH_MODE", "jwt"), ("JWT_HS256_SECRET", "short")]).unwrap_err();
        assert_eq!(err.name, "JWT_HS256_SECRET");
        let err = with(&[
            ("AUTH_MODE", "jwt"),
            ("JWT_RS256_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "JWT_RS256_PUBLIC_KEY_FILE");
        // On Lambda an API Gateway JWT authorizer may do the verifying.
        assert!(
            with(&[
                ("AUTH_MODE", "jwt"),
                ("AWS_LAMBDA_FUNCTION_NAME", "reserve"),
                ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/reserve"),
                ROOM_SECRET,
            ])
            .is_ok()
        );
    }

    #[test]
    fn jwt_mode_needs_an_issuer_and_an_audience_unless_explicitly_waived() {
        let secret = ("JWT_HS256_SECRET", "a-test-secret-of-at-least-32-bytes!!");
        let jwt = ("AUTH_MODE", "jwt");
        let err = with(&[jwt, secret]).unwrap_err();
        assert_eq!(err.name, "JWT_ISSUER");
        assert!(
            err.to_string()
                .contains("JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE"),
            "{err}"
        );
        let err = with(&[jwt, secret, ("JWT_ISSUER", "https://id.example")]).unwrap_err();
        assert_eq!(err.name, "JWT_AUDIENCE");
        let waived = with(&[jwt, secret, ("JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE", "true")]).unwrap();
        assert_eq!(waived.auth.issuer, None);
        assert_eq!(
            with(&[
                jwt,
                secret,
                ("JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE", "perhaps")
            ])
            .unwrap_err()
            .name,
            "JWT_ACCEPT_ANY_ISSUER_AND_AUDIENCE"
        );
        // Behind an API Gateway authorizer (no key here), the authorizer checks them.
        assert!(
            with(&[
                jwt,
                ("AWS_LAMBDA_FUNCTION_NAME", "reserve"),
                ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/reserve"),
                ROOM_SECRET,
            ])
            .is_ok()
        );
    }

    const ROOM_SECRET: (&str, &str) = (
        "WAITING_ROOM_SECRET",
        "a waiting room secret of at least 32 bytes",
    );

    #[test]
    fn waiting_room_secrets_are_long_enough_and_required_on_lambda() {
        let c = with(&[]).unwrap();
        assert_eq!(
            c.waiting_room.secret, None,
            "one process: a secret of its own"
        );
        assert_eq!(c.waiting_room.refresh, Duration::from_millis(200));
        assert_eq!(c.waiting_room.polls_per_sec, 10_000);
        assert_eq!(c.waiting_room.holds_per_sec, 5_000);
        let err = with(&[("WAITING_ROOM_SECRET", "short")]).unwrap_err();
        assert_eq!(err.name, "WAITING_ROOM_SECRET");
        assert!(!err.to_string().contains("short"), "never printed: {err}");
        let err = with(&[ROOM_SECRET, ("WAITING_ROOM_PREVIOUS_SECRET", "short")]).unwrap_err();
        assert_eq!(err.name, "WAITING_ROOM_PREVIOUS_SECRET");
        let on_lambda = [
            ("AUTH_MODE", "jwt"),
            ("AWS_LAMBDA_FUNCTION_NAME", "queue"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/queue"),
        ];
        assert_eq!(with(&on_lambda).unwrap_err().name, "WAITING_ROOM_SECRET");
        let c = with(&[on_lambda[0], on_lambda[1], on_lambda[2], ROOM_SECRET]).unwrap();
        assert!(c.waiting_room.secret.is_some());
        assert!(!format!("{:?}", c.waiting_room).contains("32 bytes"));
    }

    #[test]
    fn limits_have_generous_defaults_and_can_be_turned_off() {
        let c = with(&[]).unwrap();
        assert_eq!(
            c.limits.per_user,
            Some(Quota {
                per_sec: 20,
                burst: 50
            })
        );
        assert!(!c.limits.limit_loopback);
        let c = with(&[
            ("RATE_LIMIT_USER_PER_SEC", "0"),
            ("RATE_LIMIT_ADDR_PER_SEC", "0"),
        ])
        .unwrap();
        assert_eq!(c.limits.per_user, None);
        assert_eq!(c.limits.per_address, None);
        for (name, value) in [
            ("RATE_LIMIT_USER_BURST", "0"),
            ("MAX_IN_FLIGHT", "0"),
            ("RATE_LIMIT_LOOPBACK", "maybe"),
            ("IN_FLIGHT_WAIT_MS", "-1"),
        ] {
            assert_eq!(with(&[(name, value)]).unwrap_err().name, name);
        }
    }

    #[test]
    fn mock_delays_accept_ranges_and_single_values() {
        assert_eq!(parse_range("10..20"), Some(10..=20));
        assert_eq!(parse_range("10..=20"), Some(10..=20));
        assert_eq!(parse_range("5"), Some(5..=5));
        assert_eq!(parse_range("x"), None);
    }
}
