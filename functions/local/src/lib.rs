//! # flash-sale-local
//!
//! Every flash-sale function in one process, for local runs, tests and benchmarks: the
//! HTTP functions' routers merged on one listener, and the queue functions fed by
//! RabbitMQ consumers in-process, calling the very same handlers the Lambda hosts call.
//!
//! - [`front`]: the merged HTTP routes behind one service: the request timeout, the
//!   metrics, the panic's 500, the guard and the body limit.
//! - [`consumers`]: the local event source: consume, call the handler, ack / requeue /
//!   dead-letter by its typed outcome; reconnect with backoff.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`, outside the guard.
//! - [`sweeper`]: the periodic sweep, the backstop for messages that never arrived.
//! - [`process`]: the `flash-sale` commands (serve, reconcile, replay) from the environment.
//! - [`serve`]: all of it until `shutdown` resolves.

pub mod consumers;
pub mod front;
pub mod health;
pub mod process;
pub mod sweeper;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::IncomingStream;

use flash_sale_adapters::Queue;
use flash_sale_core::PaymentMode;
use flash_sale_runtime::App;
use flash_sale_runtime::error::{method_not_allowed, no_such_route};
use flash_sale_runtime::guard::Guard;
use flash_sale_runtime::{metrics, trace};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::front::Front;
use crate::health::Readiness;

/// Largest request body accepted; anything bigger is a 413.
pub const BODY_LIMIT_BYTES: usize = flash_sale_runtime::extract::BODY_LIMIT_BYTES;
pub use front::REQUEST_TIMEOUT;

/// Every HTTP route of every function behind one [`Guard`] (identity, rate limits, the
/// in-flight bound, the body limit) and the request timeout, as one [`Front`] service.
/// Every error body, 404, 405, 408 and 500 included, is the runtime's [`ApiError`](flash_sale_runtime::error::ApiError).
/// `/healthz`, `/readyz` and `/metrics` sit outside the guard: never rate limited,
/// never shed. Every request is counted and timed ([`metrics::track`]).
pub fn front(app: App, readiness: Arc<Readiness>) -> Front {
    let guard = Guard::new(&app.config);
    let routes = Router::new()
        .merge(flash_sale_showtimes::routes(app.clone(), &guard))
        .merge(flash_sale_reserve::routes(app.clone(), &guard))
        .merge(flash_sale_queue::routes(app.clone(), &guard))
        .merge(flash_sale_pay::routes(app.clone(), &guard))
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed);
    let measured = app.config.metrics_enabled;
    let health =
        health::routes(app, &guard, readiness).method_not_allowed_fallback(method_not_allowed);
    Front::new(health, routes, guard, measured)
}

/// How long a stopping process waits for the hold messages it handed over to be
/// confirmed.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);
/// How long the consumers have, once told to stop, to settle what they have begun.
const CONSUMERS_SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// Serves every route on `listener` and runs the queue consumers and the sweep, until
/// `shutdown` resolves.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if app.config.metrics_enabled {
        metrics::install();
    }
    let mut consumed = vec![Queue::Expiries, Queue::Orders];
    if app.config.payment_mode == PaymentMode::Mock {
        consumed.push(Queue::Payments);
    }
    let readiness = Arc::new(Readiness::with_consumers(&consumed));
    let stop = consumers::Stop::new();
    let mut consuming = JoinSet::new();
    consuming.spawn(consumers::expiries(
        app.clone(),
        readiness.clone(),
        stop.clone(),
    ));
    consuming.spawn(consumers::orders(
        app.clone(),
        readiness.clone(),
        stop.clone(),
    ));
    if app.config.payment_mode == PaymentMode::Mock {
        consuming.spawn(consumers::payments(
            app.clone(),
            readiness.clone(),
            stop.clone(),
        ));
    }
    let mut background = JoinSet::new();
    background.spawn(sweeper::run(app.clone()));
    background.spawn(sweeper::reconcile_for_metrics(app.clone()));
    if app.config.metrics_enabled {
        background.spawn(async {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                metrics::upkeep();
            }
        });
    }

    tracing::info!(addr = %listener.local_addr()?, payment = ?app.config.payment_mode, "flash-sale is serving");
    let queues = app.queues.clone();
    let drain = app.config.drain_delay;
    // Each connection's front knows its peer's address, for the per-address rate limit.
    let front = front(app, readiness.clone());
    let service = tower::service_fn(move |stream: IncomingStream<'_, TcpListener>| {
        std::future::ready(Ok::<_, Infallible>(front.for_peer(*stream.remote_addr())))
    });
    // Told to stop: readiness turns 503 at once, and the listener stays open for the
    // drain delay, so a load balancer stops sending before it closes.
    let drained = async move {
        shutdown.await;
        readiness.start_draining();
        if !drain.is_zero() {
            tracing::info!(
                ?drain,
                "draining: /readyz answers 503 until the listener closes"
            );
            tokio::time::sleep(drain).await;
        }
    };
    axum::serve(listener, service)
        .with_graceful_shutdown(drained)
        .await?;
    // Every request is answered; the hold messages some answers handed over leave now.
    let unsent = queues.flush(FLUSH_WITHIN).await;
    if unsent > 0 {
        tracing::warn!(
            unsent,
            "stopping with hold messages still unconfirmed; the sweep returns their holds"
        );
    }
    // The consumers settle what they have begun (a payment, a batch of orders) and hand
    // back what they prefetched, so a stop leaves no delivery half done to redeliver.
    stop.cancel();
    let settled = tokio::time::timeout(CONSUMERS_SETTLE_WITHIN, async {
        while consuming.join_next().await.is_some() {}
    })
    .await;
    if settled.is_err() {
        tracing::warn!(
            within = ?CONSUMERS_SETTLE_WITHIN,
            "stopping with deliveries still being handled; the broker redelivers them"
        );
        consuming.shutdown().await;
    }
    background.shutdown().await;
    trace::shutdown().await;
    Ok(())
}
