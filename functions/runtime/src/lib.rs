//! # flash-sale-runtime
//!
//! What every flash-sale function shares, whichever host runs it (AWS Lambda, `cargo
//! lambda watch`, or the one local process):
//! - [`config`]: the environment, read and checked once per cold start.
//! - [`app`]: the wired [`Sale`](flash_sale_core::Sale) over Redis, RabbitMQ and
//!   PostgreSQL, built once and shared by every invocation, and the hosts' narrow
//!   [`Queues`] handle.
//! - [`error`]: the one HTTP error type: every error body any host answers with.
//! - [`extract`]: the JSON request body.
//! - [`guard`]: the abuse controls in front of every router: in-flight bound, rate
//!   limits by user and client address, body limit.
//! - [`idempotency`]: the `Idempotency-Key` header: the first answer under a key
//!   replayed (one showtime per operator's key), a key reused for another request
//!   refused.
//! - [`identity`]: who is calling (a verified JWT, API Gateway's authorizer claims, or
//!   the trusted body of a loopback demo) and the owner and admin checks.
//! - [`lambda`]: the Lambda host of every function, with what each invocation ends with.
//! - [`metrics`]: the Prometheus recorder (CloudWatch EMF on Lambda) and every metric's
//!   name and recording.
//! - [`queue`]: the outcome of a queue handler (retryable or not), how a batch of them
//!   is settled, and the decoding of Amazon MQ for RabbitMQ events.
//! - [`trace`]: OpenTelemetry traces that follow a reservation through the queues.

pub mod app;
pub mod config;
pub mod error;
pub mod extract;
pub mod guard;
pub mod idempotency;
pub mod identity;
pub mod lambda;
pub mod metrics;
pub mod queue;
pub mod room_passes;
pub mod trace;

pub use app::{Adapters, App, LiveSale, Probes, Queues, RoomsAdvanced};
pub use config::Config;

use chrono::{DateTime, Utc};
use flash_sale_core::UnixMillis;

/// Runs a use case to its end even if the request that asked for it is dropped (its
/// client went away, or the request timeout answered 408 first): a reserve that could
/// not get its messages out still gives its seat back, a payment still settles. A panic
/// inside is a 500, as the panic layer answers for a handler.
pub async fn to_the_end<T, E>(
    work: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, error::ApiError>
where
    T: Send + 'static,
    E: Into<error::ApiError> + Send + 'static,
{
    use tracing::Instrument as _;
    // The request's span goes with the work (a disabled span when tracing is off).
    match tokio::spawn(work.in_current_span()).await {
        Ok(done) => done.map_err(Into::into),
        Err(e) => {
            tracing::error!("a use case panicked: {e}");
            Err(error::ApiError::Internal(
                "internal error, please retry".into(),
            ))
        }
    }
}

/// RFC 3339 with milliseconds, in UTC: how every answer writes a time.
pub fn rfc3339(ms: UnixMillis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms.0 as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now, by this process's clock.
pub fn now() -> UnixMillis {
    UnixMillis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// Starts logging: JSON lines on Lambda (CloudWatch), plain text locally. `RUST_LOG`
/// filters (default `info`). Starts the trace exporter too when one is configured
/// ([`trace`]).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let env = config::Env::process();
    // The spans exported as traces are never logged.
    let quiet_spans = format!("{}=off", trace::TARGET)
        .parse()
        .expect("a valid directive");
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"))
        .add_directive(quiet_spans);
    let on_lambda = env.get("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let (traces, said) = trace::layer(&env);
    let installed = match traces {
        // Traces exported: the log keeps its filter to itself, the trace layer takes
        // only the exported spans.
        Some(traces) => {
            let log = tracing_subscriber::fmt::layer().with_target(false);
            let log = if on_lambda {
                log.json().without_time().boxed()
            } else {
                log.boxed()
            };
            tracing_subscriber::registry()
                .with(log.with_filter(filter))
                .with(traces)
                .try_init()
                .is_ok()
        }
        // No traces: one global filter, as before traces existed, the cheapest check
        // per call site (BENCHMARKS.md, "The cost of traces when they are off").
        None => {
            let log = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_target(false);
            if on_lambda {
                log.json().without_time().try_init().is_ok()
            } else {
                log.try_init().is_ok()
            }
        }
    };
    if let (true, Some(said)) = (installed, said) {
        tracing::info!("{said}");
    }
}
