//! What a load balancer and Prometheus ask the local process, outside the guard (never
//! rate limited, never shed):
//! - `GET /healthz`: alive; touches nothing.
//! - `GET /readyz`: Redis, RabbitMQ and PostgreSQL answer and every queue consumer is
//!   consuming; 503 `not_ready` naming what is not (the cause goes to the log), and 503 from the moment a graceful
//!   stop begins (the process keeps serving for `DRAIN_DELAY_MS` after that, so a load
//!   balancer drains it before the listener closes).
//! - `GET /metrics`: every metric in the Prometheus text format; admins only in `jwt`
//!   mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use flash_sale_adapters::Queue;
use flash_sale_runtime::App;
use flash_sale_runtime::config::AuthMode;
use flash_sale_runtime::error::ApiError;
use flash_sale_runtime::guard::{Guard, HasGuard};
use flash_sale_runtime::identity::Caller;
use serde_json::{Value, json};

/// What readiness knows beyond the services: the consumers this process runs, whether
/// each is consuming now, and whether the process is stopping.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The consumers this process runs, each with whether it is consuming now.
    consumers: Vec<(Queue, AtomicBool)>,
    draining: AtomicBool,
}

impl Readiness {
    /// Readiness of a process that runs consumers of `queues`.
    pub fn with_consumers(queues: &[Queue]) -> Self {
        Self {
            consumers: queues
                .iter()
                .map(|q| (*q, AtomicBool::new(false)))
                .collect(),
            draining: AtomicBool::new(false),
        }
    }

    /// The consumer of `queue` started (`true`) or stopped (`false`) consuming.
    pub fn consuming(&self, queue: Queue, yes: bool) {
        if let Some((_, flag)) = self.consumers.iter().find(|(q, _)| *q == queue) {
            flag.store(yes, Ordering::Relaxed);
        }
    }

    /// A graceful stop began: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct HealthState {
    app: App,
    guard: Guard,
    readiness: Arc<Readiness>,
}

impl HasGuard for HealthState {
    fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// The three routes, with `guard` only to authenticate `/metrics` in `jwt` mode.
pub fn routes(app: App, guard: &Guard, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(HealthState {
            app,
            guard: guard.clone(),
            readiness,
        })
}

async fn alive() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn ready(State(s): State<HealthState>) -> Result<Json<Value>, ApiError> {
    if s.readiness.draining.load(Ordering::Relaxed) {
        return Err(ApiError::NotReady("stopping: draining".into()));
    }
    let mut checks = serde_json::Map::new();
    let mut failed = vec![];
    for (service, answer) in s.app.probes.check().await {
        // What went wrong goes to the log, not to whoever asks: a backend's error text
        // can name hosts, users and addresses behind the process.
        let verdict = match answer {
            Ok(()) => "ok",
            Err(why) => {
                tracing::warn!(service, "readiness: {service} does not answer: {why}");
                failed.push(service.to_string());
                "unavailable"
            }
        };
        checks.insert(service.into(), verdict.into());
    }
    for (queue, consuming) in &s.readiness.consumers {
        let ok = consuming.load(Ordering::Relaxed);
        if !ok {
            failed.push(format!("the {} consumer", queue.key()));
        }
        checks.insert(
            format!("consumer:{}", queue.key()),
            if ok { "ok" } else { "not consuming" }.into(),
        );
    }
    if failed.is_empty() {
        Ok(Json(json!({"status": "ready", "checks": checks})))
    } else {
        Err(ApiError::NotReady(format!(
            "not ready: {}",
            failed.join(", ")
        )))
    }
}

async fn metrics(
    State(s): State<HealthState>,
    caller: Caller,
) -> Result<impl IntoResponse, ApiError> {
    if s.app.config.auth.mode == AuthMode::Jwt {
        caller.require_admin()?;
    }
    flash_sale_runtime::metrics::in_flight(s.guard.in_flight());
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        flash_sale_runtime::metrics::render(),
    ))
}
