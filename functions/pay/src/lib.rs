//! # pay
//!
//! `POST /reservations/{id}/pay` moves a hold to `PAID` for its owner, before its
//! deadline, and queues its order. The owner is the bearer token's subject (with
//! `AUTH_MODE=jwt`; a body `user_id` naming someone else is a 403) or the body's
//! `user_id` (loopback demos); the seat store checks ownership atomically as it pays. In mock-payment mode the same function also plays the
//! payment provider: [`settle_payment_request`] pays a requested hold after a random
//! delay, as the Go reference did.

use std::ops::RangeInclusive;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use flash_sale_adapters::{Queue, trace, wire};
use flash_sale_core::{KeyedRoute, ReservationId};
use flash_sale_runtime::App;
use flash_sale_runtime::error::ApiError;
use flash_sale_runtime::guard::{AppState, Guard, HasGuard as _};
use flash_sale_runtime::idempotency::{self, KeyedJson};
use flash_sale_runtime::identity::Caller;
use flash_sale_runtime::queue::{self, QueueError};
use flash_sale_runtime::{metrics, rfc3339};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

/// The function's routes, protected by their own [`Guard`]: what the Lambda host runs.
pub fn router(app: App) -> Router {
    let guard = Guard::new(&app.config);
    guard.protect(routes(app, &guard))
}

/// The routes with `guard` as their authenticator and rate limiter, not yet protected:
/// the local process merges these and protects them once.
pub fn routes(app: App, guard: &Guard) -> Router {
    Router::new()
        .route("/reservations/{id}/pay", post(pay))
        .with_state(AppState::new(app, guard.clone()))
}

/// `user_id` is required when `AUTH_MODE=none`; with a bearer token it may be left out
/// (or the whole body), and must match the token when given.
#[derive(Debug, Deserialize)]
pub struct PayRequest {
    pub user_id: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Paid {
    id: String,
    showtime_id: i64,
    user_id: i64,
    status: &'static str,
    paid_at: String,
}

/// `POST /reservations/{id}/pay`. With an `Idempotency-Key`, the key (in the
/// reservation's showtime) is answered from before the hold is touched: see
/// [`idempotency`].
async fn pay(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    KeyedJson { body: req, key }: KeyedJson<PayRequest>,
) -> Result<Response, ApiError> {
    let user = caller.acting_as(req.user_id)?;
    let id: ReservationId = id.parse()?;
    state.guard().limits().check_user(user)?;
    let keyed = key.map(|key| key.scoped(KeyedRoute::Pay, id.showtime(), user, &id.to_string()));
    let sale = state.app().sale.clone();
    Ok(idempotency::answer(state.app(), keyed, async move {
        let paid = sale.pay(id, user).await;
        metrics::payment("buyer", &paid.as_ref().map(|_| ()));
        let receipt = paid?;
        if !receipt.order_queued {
            tracing::warn!(reservation = %id, "paid, but the order message could not be queued yet; the sweep will re-send it");
        }
        Ok(Json(Paid {
            id: id.to_string(),
            showtime_id: id.showtime().get(),
            user_id: user.get(),
            status: "PAID",
            paid_at: rfc3339(receipt.order.paid_at),
        }))
    })
    .await)
}

/// The mock payment provider: pays every hold requested in one message body (one, or a
/// batch), each after its own random delay from `delay_ms`. A hold that can no longer be
/// paid (expired meanwhile, already paid) is settled. A retryable failure of any fails
/// the message: paying again is harmless (a paid hold answers "already paid").
pub async fn settle_payment_request(
    app: &App,
    body: &[u8],
    delay_ms: RangeInclusive<u64>,
) -> Result<(), QueueError> {
    let requests = wire::decode_payments(body)?;
    let delays: Vec<u64> = {
        let mut rng = rand::rng();
        requests
            .iter()
            .map(|_| rng.random_range(delay_ms.clone()))
            .collect()
    };
    futures::future::try_join_all(requests.into_iter().zip(delays).map(|(request, delay)| {
        // The payment continues the trace of the request that held the seat.
        let span = request.continue_in(tracing::info_span!(
            target: trace::TARGET,
            "mock payment",
            otel.kind = "consumer",
            flash_sale.reservation = %request.message.reservation,
        ));
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let settled = app.sale.settle_payment_request(request.message).await;
            metrics::mock_payment(match &settled {
                Ok(Some(_)) => "paid",
                Ok(None) => "unpayable",
                Err(_) => "unavailable",
            });
            settled
        }
        .instrument(span)
    }))
    .await?;
    Ok(())
}

/// The Lambda host of the mock payer (`pay-settle`, fed by an Amazon MQ event source on
/// `<prefix>.payments`): every request of the batch is settled at once, each after its
/// own random delay, then the batch is settled ([`queue::handle_event`]): a retryable
/// failure fails the invocation so the batch is redelivered (paying is idempotent: a
/// paid hold answers "already paid"); a request that can never succeed goes to the
/// dead-letter queue.
pub async fn handle_payment_event(
    app: &App,
    event: lambda_runtime::LambdaEvent<aws_lambda_events::event::rabbitmq::RabbitMqEvent>,
) -> Result<(), lambda_runtime::Error> {
    let delay = &app.config.mock_pay_delay_ms;
    queue::handle_event(&app.queues, Queue::Payments, event, |bodies| async move {
        futures::future::join_all(
            bodies
                .iter()
                .map(|body| settle_payment_request(app, body, delay.clone())),
        )
        .await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use flash_sale_core::UserId;
    use flash_sale_runtime::extract::parse_json;
    use flash_sale_runtime::identity::Identity;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `fuzz/fuzz_targets/request_bodies.rs` under proptest.
        #[test]
        fn arbitrary_pay_bodies_give_a_payer_or_a_4xx(raw in proptest::collection::vec(any::<u8>(), 0..120)) {
            let me = Caller::Verified(Identity { user: UserId::new(7).unwrap(), admin: false });
            match parse_json::<PayRequest>(&raw) {
                Ok(p) => {
                    for caller in [Caller::Trusted, me] {
                        if let Err(e) = caller.acting_as(p.user_id) {
                            prop_assert!(e.status().is_client_error());
                        }
                    }
                }
                Err(e) => prop_assert_eq!(e.code(), "bad_request"),
            }
        }
    }
}
