//! Configuration from the environment. Every variable has a default that points at the
//! local services; a bad value stops start-up with a message naming the variable.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use flash_sale_core::PaymentMode;

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub redis_url: String,
    pub amqp_url: String,
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
}

/// A configuration variable with a bad value.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {problem} (got {value:?})")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub problem: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &'static str, default: &str| -> (String, &'static str) {
            (
                lookup(name)
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| default.to_string()),
                name,
            )
        };
        let bad = |(value, name): (String, &'static str), problem: &str| ConfigError {
            name,
            value,
            problem: problem.to_string(),
        };
        let secs = |var: (String, &'static str), min: u64| -> Result<Duration, ConfigError> {
            match var.0.trim().parse::<u64>() {
                Ok(s) if s >= min && s <= 7 * 24 * 3600 => Ok(Duration::from_secs(s)),
                _ => Err(bad(
                    var,
                    &format!("expected whole seconds between {min} and 604800"),
                )),
            }
        };
        let url = |var: (String, &'static str), schemes: &[&str]| -> Result<String, ConfigError> {
            if schemes
                .iter()
                .any(|s| var.0.starts_with(&format!("{s}://")))
            {
                Ok(var.0)
            } else {
                Err(bad(
                    var,
                    &format!(
                        "expected a URL starting with {}://",
                        schemes.join(":// or ")
                    ),
                ))
            }
        };

        let payment = get("PAYMENT_MODE", "manual");
        let payment_mode = match payment.0.trim().to_ascii_lowercase().as_str() {
            "manual" => PaymentMode::Manual,
            "mock" => PaymentMode::Mock,
            _ => return Err(bad(payment, "expected `manual` or `mock`")),
        };
        let delay = get("MOCK_PAY_DELAY_MS", "100..1000");
        let mock_pay_delay_ms = parse_range(&delay.0).ok_or_else(|| {
            bad(
                delay.clone(),
                "expected a range of milliseconds such as `100..1000` (or one number)",
            )
        })?;
        let addr = get("ADDR", "127.0.0.1:4000");
        let addr = addr
            .0
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| bad(addr.clone(), "expected host:port, e.g. 127.0.0.1:4000"))?;
        let limit = get("QUEUE_DELIVERY_LIMIT", "10");
        let delivery_limit = match limit.0.trim().parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => return Err(bad(limit, "expected a whole number between 1 and 1000")),
        };
        let prefix = |var: (String, &'static str)| -> Result<String, ConfigError> {
            let ok = !var.0.is_empty()
                && var.0.len() <= 64
                && var
                    .0
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if ok {
                Ok(var.0)
            } else {
                Err(bad(var, "expected 1-64 letters, digits or - _ . :"))
            }
        };

        Ok(Self {
            database_url: url(
                get(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/flash_sale",
                ),
                &["postgres", "postgresql"],
            )?,
            redis_url: url(
                get("REDIS_URL", "redis://127.0.0.1:6379"),
                &["redis", "rediss", "redis+unix", "unix"],
            )?,
            amqp_url: url(
                get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                &["amqp", "amqps"],
            )?,
            hold: secs(get("HOLD_TTL_SECS", "900"), 1)?,
            payment_mode,
            mock_pay_delay_ms,
            addr,
            redis_key_prefix: prefix(get("REDIS_KEY_PREFIX", "fs"))?,
            queue_prefix: prefix(get("QUEUE_PREFIX", "flash-sale"))?,
            delivery_limit,
            sweep_interval: secs(get("SWEEP_INTERVAL_SECS", "5"), 1)?,
            sweep_grace: secs(get("SWEEP_GRACE_SECS", "30"), 0)?,
        })
    }
}

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
        ] {
            let err = with(&[(name, value)]).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().starts_with(name), "{err}");
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
