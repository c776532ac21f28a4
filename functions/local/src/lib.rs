//! # flash-sale-local
//!
//! Every flash-sale function in one process, for local runs, tests and benchmarks: the
//! HTTP functions' routers merged on one listener, and the queue functions fed by
//! RabbitMQ consumers in-process, calling the very same handlers the Lambda hosts call.
//!
//! - [`router`]: the merged HTTP routes, with the body limit and request timeout.
//! - [`consumers`]: the local event source: consume, call the handler, ack / requeue /
//!   dead-letter by its typed outcome; reconnect with backoff.
//! - [`serve`]: all of it, plus the periodic sweep, until `shutdown` resolves.

pub mod consumers;
pub mod process;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use flash_sale_core::PaymentMode;
use flash_sale_runtime::App;
use flash_sale_runtime::http::no_such_route;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_http::timeout::TimeoutLayer;

/// Largest request body accepted; anything bigger is a 413.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every HTTP route of every function.
pub fn router(app: App) -> Router {
    Router::new()
        .merge(showtimes::router(app.clone()))
        .merge(reserve::router(app.clone()))
        .merge(pay::router(app))
        .fallback(no_such_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

/// Serves every route on `listener` and runs the queue consumers and the sweep, until
/// `shutdown` resolves.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut background = JoinSet::new();
    background.spawn(consumers::expiries(app.clone()));
    background.spawn(consumers::orders(app.clone()));
    if app.config.payment_mode == PaymentMode::Mock {
        background.spawn(consumers::payments(app.clone()));
    }
    background.spawn(consumers::sweep(app.clone()));

    tracing::info!(addr = %listener.local_addr()?, payment = ?app.config.payment_mode, "flash-sale is serving");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    background.shutdown().await;
    Ok(())
}
