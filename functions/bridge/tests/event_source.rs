//! The bridge against a stand-in for the emulator's Invoke API and the real RabbitMQ:
//! batches of base64 bodies in a `RabbitMqEvent`, ack only after a successful
//! invocation, requeue (with `redelivered` set on the next delivery) after a failed one,
//! including the emulator's "200 with an error document" for a function that failed
//! during its init.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use flash_sale_adapters::{Broker, Queue, Topology};
use flash_sale_bridge::{BridgeConfig, Route, run};
use flash_sale_runtime::Config;
use serde_json::Value;
use tokio::sync::oneshot;

/// What the stand-in answers, in order (then 200 `null`), and what it was sent.
#[derive(Clone, Default)]
struct Emulator {
    answers: Arc<Mutex<VecDeque<(StatusCode, &'static str)>>>,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn invoke(
    State(e): State<Emulator>,
    Path(function): Path<String>,
    body: String,
) -> (StatusCode, &'static str) {
    e.calls
        .lock()
        .unwrap()
        .push((function, serde_json::from_str(&body).unwrap()));
    e.answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((StatusCode::OK, "null"))
}

async fn emulator(answers: &[(StatusCode, &'static str)]) -> (Emulator, String) {
    let e = Emulator::default();
    e.answers.lock().unwrap().extend(answers.iter().copied());
    let app = Router::new()
        .route("/2015-03-31/functions/{function}/invocations", post(invoke))
        .with_state(e.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (e, url)
}

fn config(prefix: &str) -> Config {
    let vars = HashMap::from([
        ("QUEUE_PREFIX", prefix.to_string()),
        ("QUEUE_DELIVERY_LIMIT", "5".to_string()),
    ]);
    Config::from_lookup(|k| vars.get(k).cloned().or_else(|| std::env::var(k).ok())).unwrap()
}

fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("b{}-{nanos}", std::process::id())
}

/// The bodies of one invocation's event, decoded, with their `redelivered` flags and
/// their quorum queue's delivery counts (absent on a first delivery).
fn messages(event: &Value) -> Vec<(String, bool, Option<u64>)> {
    let by_queue = event["rmqMessagesByQueue"].as_object().unwrap();
    assert_eq!(by_queue.len(), 1);
    let (_, msgs) = by_queue.iter().next().unwrap();
    msgs.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["data"].as_str().unwrap())
                .unwrap();
            (
                String::from_utf8(data).unwrap(),
                m["redelivered"].as_bool().unwrap(),
                m["basicProperties"]["headers"]["x-delivery-count"].as_u64(),
            )
        })
        .collect()
}

async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scenario(answers: &[(StatusCode, &'static str)], expected_calls: usize) {
    let prefix = prefix();
    let cfg = config(&prefix);
    let topology = Topology {
        prefix: cfg.queue_prefix.clone(),
        hold: cfg.hold,
        delivery_limit: cfg.delivery_limit,
    };
    let broker = Broker::connect(&cfg.amqp_url, topology)
        .await
        .expect("RabbitMQ is up");
    let bodies = ["one", "two", "three"];
    let msgs: Vec<(&str, Vec<u8>)> = bodies
        .iter()
        .map(|b| (Queue::Orders.key(), b.as_bytes().to_vec()))
        .collect();
    broker.publish(&msgs).await.unwrap();

    let (e, url) = emulator(answers).await;
    let bridge = BridgeConfig {
        invoke_url: url,
        routes: vec![Route {
            queue: Queue::Orders,
            function: "write-order".into(),
        }],
        batch_size: 10,
        batch_window: Duration::from_millis(200),
        invoke_timeout: Duration::from_secs(10),
        max_failure_pause: Duration::from_millis(50),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(cfg, bridge, async {
        let _ = stopped.await;
    }));

    until(Duration::from_secs(20), "the invocations", || {
        e.calls.lock().unwrap().len() >= expected_calls
    })
    .await;
    let queue = broker.topology().queue(Queue::Orders);
    let started = Instant::now();
    while broker.ready_count(&queue).await.unwrap() != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the queue did not empty"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let calls = e.calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        expected_calls,
        "no invocation after the successful one"
    );
    for (i, (function, event)) in calls.iter().enumerate() {
        assert_eq!(function, "write-order");
        assert_eq!(event["eventSource"], "aws:rmq");
        let got = messages(event);
        let names: Vec<&str> = got.iter().map(|(b, _, _)| b.as_str()).collect();
        assert_eq!(names, bodies, "one batch, in order, base64 bodies");
        // A batch returned to the queue comes back marked as redelivered, counted, so
        // the function can wait longer before failing it again.
        let count = (i > 0).then_some(i as u64);
        assert!(
            got.iter()
                .all(|(_, redelivered, counted)| *redelivered == (i > 0) && *counted == count),
            "{got:?}"
        );
    }
    // Acked: after the bridge closed its channel nothing came back to the queue.
    assert_eq!(broker.ready_count(&queue).await.unwrap(), 0);
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_successful_invocation_acks_the_whole_batch() {
    scenario(&[], 1).await;
}

#[tokio::test]
async fn a_failed_invocation_returns_the_batch_and_it_is_delivered_again() {
    scenario(
        &[(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"errorType":"Retryable","errorMessage":"redis down"}"#,
        )],
        2,
    )
    .await;
}

#[tokio::test]
async fn each_delivery_of_a_failing_batch_carries_its_count() {
    let failed = (
        StatusCode::INTERNAL_SERVER_ERROR,
        r#"{"errorType":"Retryable","errorMessage":"postgres down"}"#,
    );
    scenario(&[failed, failed, failed], 4).await;
}

#[tokio::test]
async fn a_function_that_failed_its_init_does_not_ack_the_batch() {
    // The emulator answers an init failure with a 200 carrying the error document.
    scenario(
        &[(
            StatusCode::OK,
            r#"{"errorType":"Runtime.InitError","errorMessage":"Redis is not reachable"}"#,
        )],
        2,
    )
    .await;
}
