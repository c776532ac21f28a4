//! # flash-sale-bridge
//!
//! The local stand-in for Lambda's Amazon MQ event source mapping. Under `cargo lambda
//! watch` nothing feeds the queue functions; the bridge does, the way the event source
//! mapping does on AWS (`template.yaml`):
//!
//! - it reads a batch from a queue: up to [`BridgeConfig::batch_size`] messages, waiting
//!   at most [`BridgeConfig::batch_window`] for the batch to fill;
//! - wraps the bodies, base64-encoded, in a `RabbitMqEvent` (`rmqMessagesByQueue`, the
//!   `redelivered` flag and quorum-queue delivery count of each delivery kept);
//! - invokes the queue's function through the emulator's Invoke API,
//!   `POST <invoke_url>/2015-03-31/functions/<function>/invocations`;
//! - acks the whole batch only once the invocation succeeded; when the function fails
//!   (an error answer, a failed start, a timeout) it returns the batch to the queue with
//!   `nack(requeue)`, so the quorum queue's delivery limit dead-letters a message that
//!   keeps failing to `<queue>.dlq`;
//! - keeps one batch in flight per queue, as the RabbitMQ event source runs one
//!   execution environment per mapping.
//!
//! Two local conveniences, both on the safe side of at-least-once: when the emulator
//! cannot be reached at all the batch is kept unacknowledged and the invocation retried
//! (Lambda retries its own throttles the same way, without spending deliveries), and
//! after a failed batch the bridge pauses before returning it, a little longer after
//! each consecutive failure, so a Redis outage does not burn through the delivery limit
//! in a second.
//!
//! [`run`] is the whole bridge; `main.rs` reads the environment and calls it.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_lambda_events::event::rabbitmq::RabbitMqEvent;
use flash_sale_adapters::{Broker, Queue, Topology};
use flash_sale_runtime::Config;
use flash_sale_runtime::config::{ConfigError, Env};
use flash_sale_runtime::queue::{DELIVERY_COUNT, rabbit_event};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

/// One event source mapping: the queue (after the prefix) and the function it feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub queue: Queue,
    pub function: String,
}

/// A `queue=function` pair that does not name a known queue or a function.
#[derive(Debug, thiserror::Error)]
#[error(
    "bad route {0:?}: expected <queue>=<function> with queue one of expiries, orders, payments"
)]
pub struct BadRoute(String);

impl FromStr for Route {
    type Err = BadRoute;

    /// `expiries=expire`, `orders=write-order`, `payments=<function>`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (queue, function) = raw.split_once('=').ok_or_else(|| BadRoute(raw.into()))?;
        let queue = Queue::ALL
            .into_iter()
            .find(|q| q.key() == queue.trim())
            .ok_or_else(|| BadRoute(raw.into()))?;
        let function = function.trim();
        let valid = !function.is_empty()
            && function
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid {
            return Err(BadRoute(raw.into()));
        }
        Ok(Route {
            queue,
            function: function.into(),
        })
    }
}

/// How the bridge feeds the functions. The queues' names and shape come from the
/// functions' own [`Config`] (`AMQP_URL`, `QUEUE_PREFIX`, `HOLD_TTL_SECS`,
/// `QUEUE_DELIVERY_LIMIT`), so the bridge declares exactly the topology they declare.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The emulator (`BRIDGE_INVOKE_URL`, default `http://127.0.0.1:9000`).
    pub invoke_url: String,
    /// `BRIDGE_ROUTES`, default `expiries=expire,orders=write-order`.
    pub routes: Vec<Route>,
    /// Most messages per invocation (`BRIDGE_BATCH_SIZE`, default 100 as on Lambda).
    pub batch_size: u16,
    /// How long a batch waits to fill (`BRIDGE_BATCH_WINDOW_MS`, default 500 as on Lambda).
    pub batch_window: Duration,
    /// How long one invocation may take, the first one's compilation under watch
    /// included (`BRIDGE_INVOKE_TIMEOUT_SECS`, default 900, Lambda's longest timeout).
    pub invoke_timeout: Duration,
    /// Longest pause after consecutive failed batches (`BRIDGE_MAX_PAUSE_MS`, default 5000).
    pub max_failure_pause: Duration,
}

impl BridgeConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self::read(&Env::process())?)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Ok(Self::read(&Env::new(lookup))?)
    }

    fn read(env: &Env<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let invoke_url = env.parse(
            "BRIDGE_INVOKE_URL",
            "http://127.0.0.1:9000",
            "expected an http:// URL",
            |v| {
                (v.starts_with("http://") || v.starts_with("https://"))
                    .then(|| v.trim_end_matches('/').to_string())
            },
        )?;
        let routes = env.parse(
            "BRIDGE_ROUTES",
            "expiries=expire,orders=write-order",
            "expected queue=function pairs such as `expiries=expire,orders=write-order`",
            |v| {
                let routes = v
                    .split(',')
                    .filter(|r| !r.trim().is_empty())
                    .map(|r| r.parse::<Route>().ok())
                    .collect::<Option<Vec<_>>>()?;
                (!routes.is_empty()).then_some(routes)
            },
        )?;
        Ok(Self {
            invoke_url,
            routes,
            batch_size: env.number("BRIDGE_BATCH_SIZE", 100, 1..=10_000)? as u16,
            batch_window: env.millis("BRIDGE_BATCH_WINDOW_MS", 500, 0..=300_000)?,
            invoke_timeout: env.secs("BRIDGE_INVOKE_TIMEOUT_SECS", 900, 1..=3600)?,
            max_failure_pause: env.millis("BRIDGE_MAX_PAUSE_MS", 5000, 0..=600_000)?,
        })
    }
}

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// The function handled the whole batch: ack it.
    Succeeded,
    /// The function answered with an error, failed to start, or timed out: return the
    /// batch to the queue.
    Failed(String),
    /// The emulator could not be reached: keep the batch and try again.
    Unreachable(String),
}

/// Invokes `function` with `payload` through the emulator's Invoke API.
///
/// Success is a 2xx answer whose body is not a Lambda error document: the emulator
/// answers a function error with a 500, but a function that failed during its init
/// (say, Redis unreachable at cold start) with a 200 carrying
/// `{"errorType": ..., "errorMessage": ...}`, and AWS itself flags errors with the
/// `X-Amz-Function-Error` header; all three count as failures.
pub async fn invoke(
    client: &reqwest::Client,
    invoke_url: &str,
    function: &str,
    payload: Vec<u8>,
) -> Invocation {
    let url = format!("{invoke_url}/2015-03-31/functions/{function}/invocations");
    let response = match client
        .post(&url)
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Invocation::Failed(format!("{function} timed out: {e}"));
        }
        Err(e) => return Invocation::Unreachable(format!("invoking {url}: {e}")),
    };
    let status = response.status();
    let flagged = response.headers().get("x-amz-function-error").is_some();
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => {
            return Invocation::Failed(format!("{function} timed out: {e}"));
        }
        Err(e) => return Invocation::Unreachable(format!("reading {function}'s answer: {e}")),
    };
    let text = String::from_utf8_lossy(&body);
    let error_document = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.get("errorType").is_some() || v.get("errorMessage").is_some());
    if status.is_success() && !flagged && !error_document {
        Invocation::Succeeded
    } else {
        Invocation::Failed(format!(
            "{function} answered {status}: {}",
            text.chars().take(500).collect::<String>()
        ))
    }
}

/// A delivery's earlier deliveries, as its quorum queue counts them (its
/// `x-delivery-count` header, absent on a first delivery).
fn delivery_count(delivery: &Delivery) -> Option<u64> {
    use lapin::types::AMQPValue;
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(DELIVERY_COUNT)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// The event Amazon MQ would deliver for these deliveries from the queue `queue`.
pub fn event_for(queue: &str, deliveries: &[Delivery]) -> RabbitMqEvent {
    let bodies: Vec<Vec<u8>> = deliveries.iter().map(|d| d.data.clone()).collect();
    let mut event = rabbit_event(queue, &bodies);
    for messages in event.messages_by_queue.values_mut() {
        for (message, delivery) in messages.iter_mut().zip(deliveries) {
            message.redelivered = delivery.redelivered;
            if let Some(count) = delivery_count(delivery) {
                message
                    .basic_properties
                    .headers
                    .insert(DELIVERY_COUNT.into(), count.into());
            }
        }
    }
    event
}

/// Runs the bridge until `shutdown` completes: connects (retrying while RabbitMQ is
/// down), declares the topology (idempotently, as the functions do), then feeds every
/// route. On shutdown each consumer's channel is
/// closed, so the broker requeues whatever was not acknowledged.
pub async fn run(
    config: Config,
    bridge: BridgeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let topology = Topology {
        prefix: config.queue_prefix.clone(),
        hold: config.hold,
        delivery_limit: config.delivery_limit,
    };
    tokio::pin!(shutdown);
    // Like an event source mapping, wait for the broker rather than give up on it.
    let mut pause = Duration::from_millis(100);
    let broker = loop {
        match Broker::connect_trusting(&config.amqp_url, topology.clone(), &config.amqp_trust).await
        {
            Ok(broker) => break Arc::new(broker),
            Err(e) => {
                tracing::warn!("RabbitMQ (AMQP_URL) is not reachable: {e}; retrying in {pause:?}")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = &mut shutdown => return Ok(()),
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    };
    let client = reqwest::Client::builder()
        .timeout(bridge.invoke_timeout)
        .build()
        .context("building the HTTP client")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut feeders = tokio::task::JoinSet::new();
    for route in &bridge.routes {
        tracing::info!(
            queue = %broker.topology().queue(route.queue),
            function = %route.function,
            "bridging to {}",
            bridge.invoke_url
        );
        feeders.spawn(feed(
            broker.clone(),
            client.clone(),
            bridge.clone(),
            route.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while feeders.join_next().await.is_some() {}
    Ok(())
}

/// Keeps one route fed, reconnecting with backoff, until told to stop.
async fn feed(
    broker: Arc<Broker>,
    client: reqwest::Client,
    bridge: BridgeConfig,
    route: Route,
    mut stop: watch::Receiver<bool>,
) {
    let queue = broker.topology().queue(route.queue);
    let mut pause = Duration::from_millis(100);
    loop {
        match broker.consume(route.queue, bridge.batch_size).await {
            Ok((channel, consumer)) => {
                pause = Duration::from_millis(100);
                let pumped = tokio::select! {
                    r = pump(&client, &bridge, &route, &queue, consumer) => r,
                    _ = stopping(&mut stop) => {
                        // Whatever is unacknowledged goes back to the queue.
                        let _ = channel.close(200, "bridge stopping".into()).await;
                        return;
                    }
                };
                match pumped {
                    Ok(()) => tracing::warn!(%queue, "consumer ended; reconnecting"),
                    Err(e) => tracing::warn!(%queue, "consumer failed: {e}; reconnecting"),
                }
            }
            Err(e) => tracing::warn!(%queue, "cannot consume: {e}; retrying in {pause:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping(&mut stop) => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Completes once the bridge is told to stop (or its stop switch is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Batches, invokes, settles: one batch at a time.
async fn pump(
    client: &reqwest::Client,
    bridge: &BridgeConfig,
    route: &Route,
    queue: &str,
    consumer: lapin::Consumer,
) -> Result<(), lapin::Error> {
    let batches = consumer.chunks_timeout(bridge.batch_size as usize, bridge.batch_window);
    tokio::pin!(batches);
    let mut failures: u32 = 0;
    while let Some(batch) = batches.next().await {
        let deliveries = batch
            .into_iter()
            .collect::<Result<Vec<Delivery>, lapin::Error>>()?;
        if deliveries.is_empty() {
            continue;
        }
        let payload =
            serde_json::to_vec(&event_for(queue, &deliveries)).expect("a RabbitMqEvent serializes");
        let started = Instant::now();
        let mut unreachable_pause = Duration::from_millis(200);
        let outcome = loop {
            match invoke(client, &bridge.invoke_url, &route.function, payload.clone()).await {
                Invocation::Unreachable(why) => {
                    tracing::warn!(%queue, function = %route.function, "{why}; retrying in {unreachable_pause:?}");
                    tokio::time::sleep(unreachable_pause).await;
                    unreachable_pause = (unreachable_pause * 2).min(Duration::from_secs(5));
                }
                other => break other,
            }
        };
        let took = started.elapsed();
        match outcome {
            Invocation::Succeeded => {
                failures = 0;
                tracing::info!(%queue, function = %route.function, messages = deliveries.len(), ?took, "batch handled; acking");
                for d in &deliveries {
                    d.ack(BasicAckOptions::default()).await?;
                }
            }
            Invocation::Failed(why) => {
                failures += 1;
                let pause = failure_pause(failures, bridge.max_failure_pause);
                tracing::warn!(%queue, function = %route.function, messages = deliveries.len(), ?took, "{why}; returning the batch to the queue in {pause:?}");
                tokio::time::sleep(pause).await;
                for d in &deliveries {
                    d.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                }
            }
            Invocation::Unreachable(_) => unreachable!("retried above"),
        }
    }
    Ok(())
}

/// 100 ms after the first failed batch, doubling, at most `max`.
fn failure_pause(failures: u32, max: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2u32.pow(exp)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_a_queue_and_a_function() {
        let r: Route = "expiries=expire".parse().unwrap();
        assert_eq!(r.queue, Queue::Expiries);
        assert_eq!(r.function, "expire");
        assert_eq!(
            "orders = write-order".parse::<Route>().unwrap().queue,
            Queue::Orders
        );
        for bad in ["orders", "nope=expire", "orders=", "orders=a/b"] {
            assert!(bad.parse::<Route>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_defaults_feed_expire_and_write_order_like_lambda() {
        let c = BridgeConfig::from_lookup(|_| None).unwrap();
        assert_eq!(c.invoke_url, "http://127.0.0.1:9000");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.batch_window, Duration::from_millis(500));
    }

    #[test]
    fn a_bad_setting_names_its_variable() {
        for (name, value) in [
            ("BRIDGE_BATCH_SIZE", "0"),
            ("BRIDGE_ROUTES", "x=y"),
            ("BRIDGE_INVOKE_URL", "localhost:9000"),
        ] {
            let err =
                BridgeConfig::from_lookup(|k| (k == name).then(|| value.to_string())).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }

    #[test]
    fn pauses_grow_and_stop_at_the_maximum() {
        let max = Duration::from_secs(5);
        assert_eq!(failure_pause(1, max), Duration::from_millis(100));
        assert_eq!(failure_pause(2, max), Duration::from_millis(200));
        assert_eq!(failure_pause(30, max), max);
    }
}
