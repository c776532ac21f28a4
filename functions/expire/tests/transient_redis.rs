//! Redis errors that clear on their own (a Redis loading its data set, a replica, a
//! primary short of replicas) make the `expire` handler's failure retryable, so the
//! message is redelivered instead of dead-lettered on its first delivery. Each test runs
//! a Redis of its own in that state ([`RedisServer`]); the machine's shared Redis is
//! never touched.

use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::Queue;
use flash_sale_runtime::queue::rabbit_event;
use flash_sale_test_support::{FunctionHarness, Options, RedisServer, eventually_blocking};
use lambda_runtime::{Context, LambdaEvent};
use std::time::Duration;

fn expiry(reservation: &str) -> Vec<u8> {
    format!(r#"{{"reservation_id":"{reservation}"}}"#).into_bytes()
}

fn event(queue: &str, body: Vec<u8>) -> LambdaEvent<RabbitMqEvent> {
    LambdaEvent {
        payload: rabbit_event(queue, &[body]),
        context: Context::default(),
    }
}

/// A hold on a harness whose Redis is `redis`; then `trouble` puts that Redis in its
/// state, and the hold's expiry must fail retryably: the Lambda invocation fails (so the
/// batch is redelivered) and nothing is dead-lettered. Once the trouble is over, the
/// same message returns the seat.
async fn retried_not_dead_lettered(
    redis: &mut RedisServer,
    what: &str,
    trouble: impl FnOnce(&mut RedisServer),
    over: impl FnOnce(&mut RedisServer),
) {
    let opts = Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    };
    let h = FunctionHarness::start_with(opts).await;
    let showtime = h.showtime(1).await;
    let id = h.hold(1, showtime).await;
    trouble(redis);

    let body = expiry(&id);
    let err = flash_sale_expire::expire(&h.app, &body)
        .await
        .expect_err(what);
    assert!(err.is_retryable(), "{what}: {err}");
    let queue = h.queue(Queue::Expiries);
    let failed = flash_sale_expire::handle_event(&h.app, event(&queue, body.clone())).await;
    assert!(
        failed.is_err(),
        "{what}: the invocation fails and is retried"
    );
    assert_eq!(h.dead_letters(Queue::Expiries).await, 0, "{what}");

    over(redis);
    flash_sale_test_support::eventually(
        Duration::from_secs(60),
        "the redelivered expiry to succeed",
        || async { flash_sale_expire::expire(&h.app, &body).await.ok() },
    )
    .await;
    assert_eq!(h.status(&id).await, "EXPIRED", "{what}");
    // The database and queues are the shared services'; the keys died with `redis`.
    h.cleanup().await;
}

#[tokio::test]
async fn a_redis_still_loading_its_data_set_is_retried() {
    let mut redis = RedisServer::start(&["--enable-debug-command", "local"]);
    retried_not_dead_lettered(
        &mut redis,
        "LOADING",
        |redis| {
            assert_eq!(
                redis.cli(&["DEBUG", "POPULATE", "200000"]).as_deref(),
                Some("OK")
            );
            // Reloading its data set at 100 µs a key: about twenty seconds in which every
            // other client, the function's open connection included, is told LOADING
            // (answered between every kilobyte loaded, well inside the client's timeout).
            for (name, value) in [
                ("key-load-delay", "100"),
                ("loading-process-events-interval-bytes", "1024"),
            ] {
                let set = redis.cli(&["CONFIG", "SET", name, value]);
                assert_eq!(set.as_deref(), Some("OK"), "{name}");
            }
            redis.in_background(&["DEBUG", "RELOAD"]);
            eventually_blocking(Duration::from_secs(20), "Redis to be loading", || {
                let answer = redis.cli(&["GET", "x"]).unwrap_or_default();
                answer.contains("LOADING").then_some(())
            });
        },
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn a_redis_that_became_a_replica_is_retried() {
    let mut redis = RedisServer::start(&[]);
    retried_not_dead_lettered(
        &mut redis,
        "READONLY",
        // A replica of a primary that is not there keeps its data, answers reads and
        // refuses writes, as a demoted primary does during a failover.
        |redis| {
            assert_eq!(
                redis.cli(&["REPLICAOF", "127.0.0.1", "1"]).as_deref(),
                Some("OK")
            )
        },
        |redis| {
            assert_eq!(
                redis.cli(&["REPLICAOF", "NO", "ONE"]).as_deref(),
                Some("OK")
            )
        },
    )
    .await;
}

#[tokio::test]
async fn a_redis_short_of_replicas_to_write_is_retried() {
    let mut redis = RedisServer::start(&[]);
    retried_not_dead_lettered(
        &mut redis,
        "NOREPLICAS",
        |redis| {
            let set = redis.cli(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
            assert_eq!(set.as_deref(), Some("OK"));
        },
        |redis| {
            let set = redis.cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
            assert_eq!(set.as_deref(), Some("OK"));
        },
    )
    .await;
}
