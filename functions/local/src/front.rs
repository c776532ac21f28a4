//! The front of the local process: the one service every request passes before its
//! route. It wraps the whole router rather than each route: axum's layers sit on every
//! route, and a route's stack of layers is cloned, box by box, for every request.
//!
//! Outermost first:
//! - the request timeout (408 after [`REQUEST_TIMEOUT`]);
//! - (when metrics are on) every answer counted by route and status and timed, whatever
//!   answered it: a handler, the guard, the timeout, a panic;
//! - (when traces are exported) the request's span;
//! - a handler's panic answered 500, the connection and the process carrying on;
//! - for every route but `/healthz`, `/readyz` and `/metrics`: the guard's bound on
//!   requests in flight and per-address rate limit ([`Guard::admit`]), then the body
//!   limit (413).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use flash_sale_runtime::error::{ApiError, panicked};
use flash_sale_runtime::extract::BODY_LIMIT_BYTES;
use flash_sale_runtime::guard::Guard;
use flash_sale_runtime::{metrics, trace};
use futures::FutureExt as _;
use tower::{Layer as _, Service, ServiceExt as _};
use tracing::Instrument as _;

/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes outside the guard: never rate limited, never shed.
pub fn is_health(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The front service of one connection (the peer's address feeds the per-address rate
/// limit). Cheap to clone: one reference count.
#[derive(Clone)]
pub struct Front {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
}

struct Shared {
    health: Router,
    routes: Router,
    guard: Guard,
    measured: bool,
}

impl Front {
    /// `health` answers [`is_health`]'s paths, `routes` everything else behind `guard`.
    pub fn new(health: Router, routes: Router, guard: Guard, measured: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                health,
                routes,
                guard,
                measured,
            }),
            peer: None,
        }
    }

    /// The same front for a connection from `peer`.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        Self {
            shared: self.shared.clone(),
            peer: Some(peer),
        }
    }
}

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.answer(request).await) })
    }
}

impl Shared {
    async fn answer(&self, request: Request) -> Response {
        let measure = self.measured.then(|| {
            (
                metrics::method_of(request.method()),
                metrics::route_of(request.uri().path()),
                Instant::now(),
            )
        });
        let span = trace::http_span(&request);
        let routed = AssertUnwindSafe(self.route(request)).catch_unwind();
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, routed)
            .instrument(span.clone())
            .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(panic)) => panicked(panic),
            Err(_) => ApiError::Timeout(format!(
                "the request took longer than {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
            .into_response(),
        };
        if let Some((method, route, started)) = measure {
            metrics::http_request(method, route, response.status().as_u16(), started.elapsed());
        }
        trace::answered(&span, response.status().as_u16());
        response
    }

    async fn route(&self, request: Request) -> Response {
        if is_health(request.uri().path()) {
            return answered(self.health.clone().oneshot(request).await);
        }
        self.guard
            .admit(request, |request| async {
                let limited = DefaultBodyLimit::max(BODY_LIMIT_BYTES).layer(self.routes.clone());
                answered(limited.oneshot(request).await)
            })
            .await
    }
}

fn answered(answer: Result<Response, Infallible>) -> Response {
    match answer {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
