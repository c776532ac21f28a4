//! The Lambda host of every function: the runtime loop with what each invocation ends
//! with, so no function's `main` has to remember it:
//! - the invocation's metrics as CloudWatch embedded-metric-format lines
//!   ([`metrics::embedded`], unless `METRICS_ENABLED=false`);
//! - its spans sent to the trace collector, when one is configured ([`trace`]).
//!
//! The local process and `cargo lambda watch` run the same handlers; under watch these
//! hosts run too (the EMF lines go to the function's output).

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use lambda_runtime::LambdaEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{metrics, trace};

/// Serves an HTTP function's router: a span and request metrics per request; metrics
/// and spans leave before the invocation returns.
pub async fn serve_http(router: Router) -> Result<(), lambda_runtime::Error> {
    let router = trace::per_invocation(router.layer(middleware::from_fn(counted)));
    match metrics::embedded() {
        Some(collector) => {
            metrics_cloudwatch_embedded::lambda::service::run_http(collector, router).await
        }
        None => lambda_http::run(router).await,
    }
}

/// Serves an event function (a queue's batch, a schedule): metrics leave after each
/// invocation (spans leave in the handler: [`crate::queue::handle_event`]).
pub async fn serve_events<E, R, H, Fut>(handler: H) -> Result<(), lambda_runtime::Error>
where
    E: DeserializeOwned,
    R: Serialize,
    H: FnMut(LambdaEvent<E>) -> Fut,
    Fut: Future<Output = Result<R, lambda_runtime::Error>>,
{
    match metrics::embedded() {
        Some(collector) => {
            metrics_cloudwatch_embedded::lambda::handler::run(collector, handler).await
        }
        None => lambda_runtime::run(lambda_runtime::service_fn(handler)).await,
    }
}

/// Counts and times every answer by method, route and status, as the local process does.
async fn counted(request: Request, next: Next) -> Response {
    let method = metrics::method_of(request.method());
    let route = metrics::route_of(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::http_request(method, route, response.status().as_u16(), started.elapsed());
    response
}
