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
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use flash_sale_core::PaymentMode;
use flash_sale_runtime::App;
use flash_sale_runtime::auth::Guard;
use flash_sale_runtime::http::{ApiError, no_such_route};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_http::catch_panic::CatchPanicLayer;

/// Largest request body accepted; anything bigger is a 413.
pub const BODY_LIMIT_BYTES: usize = flash_sale_runtime::http::BODY_LIMIT_BYTES;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every HTTP route of every function, behind one [`Guard`] (identity, rate limits, the
/// in-flight bound, the body limit) and the request timeout. Per-address limits need
/// the peer address: serve with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(app: App) -> Router {
    let guard = Guard::new(&app.config);
    let routes = Router::new()
        .merge(flash_sale_showtimes::routes(app.clone(), &guard))
        .merge(flash_sale_reserve::routes(app.clone(), &guard))
        .merge(flash_sale_pay::routes(app, &guard))
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed);
    guard
        .protect(routes)
        .layer(middleware::from_fn(answer_in_time))
        .layer(CatchPanicLayer::custom(answer_a_panic))
}

/// 405 in the shared JSON shape.
async fn method_not_allowed() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// A handler that panicked answers 500 in the shared JSON shape (the connection and the
/// process carry on); whatever it had done is covered like a crash at that point.
fn answer_a_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error, please retry",
    )
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

/// 408 in the shared JSON shape for a request over [`REQUEST_TIMEOUT`].
async fn answer_in_time(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout(format!(
            "the request took longer than {} s",
            REQUEST_TIMEOUT.as_secs()
        ))
        .into_response(),
    }
}

/// How long a stopping process waits for the hold messages it handed over to be
/// confirmed.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

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
    let sale = app.sale.clone();
    // The peer address feeds the per-address rate limit.
    let service = router(app).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await?;
    // Every request is answered; the hold messages some answers handed over leave now.
    let unsent = sale.bus().flush(FLUSH_WITHIN).await;
    if unsent > 0 {
        tracing::warn!(
            unsent,
            "stopping with hold messages still unconfirmed; the sweep returns their holds"
        );
    }
    background.shutdown().await;
    Ok(())
}
