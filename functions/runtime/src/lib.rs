//! # flash-sale-runtime
//!
//! What every flash-sale function shares, whichever host runs it (AWS Lambda, `cargo
//! lambda watch`, or the one local process):
//! - [`config`]: the environment, read and checked once per cold start.
//! - [`app`]: the wired [`Sale`](flash_sale_core::Sale) over Redis, RabbitMQ and
//!   PostgreSQL, built once and shared by every invocation.
//! - [`http`]: the HTTP error type (one JSON shape for every error), the JSON body
//!   extractor, the answers' JSON forms, and the rate limits.
//! - [`auth`]: who is calling (a verified JWT, API Gateway's authorizer claims, or the
//!   trusted body of a loopback demo), the owner and admin checks, and the [`Guard`](auth::Guard)
//!   that puts the abuse limits in front of every router.
//! - [`queue`]: the outcome of a queue handler (retryable or not), and the decoding of
//!   Amazon MQ for RabbitMQ events.

pub mod app;
pub mod auth;
pub mod config;
pub mod http;
pub mod queue;

pub use app::{Adapters, App, LiveSale, Queues};
pub use config::Config;

/// Starts logging: JSON lines on Lambda (CloudWatch), plain text locally. `RUST_LOG`
/// filters (default `info`).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let on_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if on_lambda {
        builder.json().without_time().try_init()
    } else {
        builder.try_init()
    };
}
