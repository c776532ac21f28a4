//! What operators and load balancers ask the local process: `/healthz`, `/readyz` (with
//! draining on a graceful stop) and `/metrics`, whose counters must agree with what
//! happened. Metrics are process-wide, so the tests that read them run the server as a
//! child process of its own.

use std::collections::HashMap;
use std::time::Duration;

use flash_sale_adapters::Queue;
use flash_sale_test_support::FunctionHarness;
use flash_sale_tests::{
    Cuttable, Isolation, Options, ServerProcess, TestApp, eventually, free_port,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_flash-sale-server");

/// The value of one series in a Prometheus text exposition (`0` when absent).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            key.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

/// What `/metrics` at `url` answers; `None` while it does not answer.
async fn scrape(http: &reqwest::Client, url: String) -> Option<String> {
    http.get(url).send().await.ok()?.text().await.ok()
}

/// Every `flashsale_*` series a dashboard's queries read.
fn dashboard_series(dashboard: &str) -> std::collections::BTreeSet<String> {
    let json: Value = serde_json::from_str(dashboard).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("flashsale_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_process_and_answers_a_query() {
    let iso = Isolation::new();
    let opts = Options::default();
    let server = ServerProcess::start(SERVER, &iso, free_port(), &opts).await;
    let http = reqwest::Client::new();
    let showtime = server.create_showtime(&http, 3).await;
    for user in 1..=5 {
        http.post(server.url("/reserve"))
            .json(&json!({"user_id": user, "showtime_id": showtime}))
            .send()
            .await
            .unwrap();
    }
    let prometheus = flash_sale_tests::PrometheusServer::start(server.port);
    let reserved = eventually(Duration::from_secs(60), "Prometheus to scrape", || async {
        let answer: Value = http
            .get(prometheus.url("/api/v1/query"))
            .query(&[(
                "query",
                "sum(flashsale_reservations_total{outcome=\"reserved\"})",
            )])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let value = answer["data"]["result"][0]["value"][1]
            .as_str()?
            .to_string();
        Some(value)
    })
    .await;
    assert_eq!(reserved, "3");
    drop(prometheus);
    drop(server);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}

#[tokio::test]
async fn health_and_readiness_answer_and_are_never_rate_limited() {
    let app = TestApp::spawn(Options {
        rate_addr: Some((1, 1)),
        trust_forwarded_for: true,
        ..Options::default()
    })
    .await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("alive"))
    );
    let ready = eventually(Duration::from_secs(30), "readiness", || async {
        let (status, body) = app.get("/readyz").await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    for check in [
        "redis",
        "rabbitmq",
        "postgres",
        "consumer:expiries",
        "consumer:orders",
    ] {
        assert_eq!(ready["checks"][check], "ok", "{ready}");
    }
    // One address, over its limit of one request: probes still pass, routes do not.
    let from = |path: &str| {
        app.http
            .get(app.url(path))
            .header("x-forwarded-for", "203.0.113.9")
    };
    for _ in 0..5 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let res = from(path).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
    }
    let (status, _, _) = app.send(from("/showtimes/1"), None).await;
    let (again, _, _) = app.send(from("/showtimes/1"), None).await;
    assert!(
        [status, again].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{status} {again}"
    );
    app.finish().await;
}

#[tokio::test]
async fn readiness_names_a_service_that_stops_answering() {
    let proxy = Cuttable::start("127.0.0.1:6379").await;
    let app = TestApp::spawn(Options {
        redis_url: Some(format!("redis://{}", proxy.addr)),
        ..Options::default()
    })
    .await;
    eventually(Duration::from_secs(30), "readiness", || async {
        (app.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    proxy.cut().await;
    let (status, body) = eventually(Duration::from_secs(30), "not ready", || async {
        let answer = app.get("/readyz").await;
        (answer.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
    })
    .await;
    assert_eq!(body["error"], "not_ready", "{body}");
    // Only what failed, by name: the backend's own error text (addresses, hosts) stays
    // in the log.
    assert_eq!(body["message"], "not ready: redis", "{body}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get("/healthz").await.0,
        StatusCode::OK,
        "alive all the same"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_graceful_stop_turns_readiness_503_and_keeps_serving_through_the_drain_delay() {
    let iso = Isolation::new();
    let opts = Options::default();
    let mut server = ServerProcess::start_with(
        SERVER,
        &iso,
        free_port(),
        &opts,
        &[("DRAIN_DELAY_MS", "10000")],
    )
    .await;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "readiness", || async {
        let res = http.get(server.url("/readyz")).send().await.ok()?;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;

    server.terminate();
    let answer: Value = eventually(Duration::from_secs(10), "draining", || async {
        let res = http.get(server.url("/readyz")).send().await.ok()?;
        if res.status() != StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        res.json().await.ok()
    })
    .await;
    assert_eq!(answer["error"], "not_ready", "{answer}");
    // Still serving while the load balancer drains it.
    let res = http
        .post(server.url("/showtimes"))
        .json(&json!({"capacity": 1}))
        .send()
        .await
        .expect("still listening while draining");
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(
        server.exited_cleanly().await,
        "a clean exit after the drain"
    );

    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}

/// A stop in the middle of a payment: the mock payer finishes it before the process
/// exits. It used to be cut off, its request left for the next process to take again.
/// The order the payment leads to waits in its queue for the next order writer.
#[tokio::test]
async fn a_graceful_stop_finishes_the_payment_the_payer_has_begun() {
    let opts = Options {
        mock_delay: "4000..4000",
        ..Options::mock_payments()
    };
    // A hold made before the server starts: its payment request waits in its queue, so
    // an empty queue later means the server's payer has taken it.
    let harness = FunctionHarness::start_with(opts.clone()).await;
    let showtime = harness.showtime(1).await;
    let id = harness.hold(1, showtime).await;
    let payments = harness.queue(Queue::Payments);
    let ready = |queue: String| {
        let bus = harness.adapters.bus.clone();
        async move { bus.ready_count(&queue).await.ok() }
    };
    eventually(
        Duration::from_secs(10),
        "the payment request queued",
        || {
            let ready = ready(payments.clone());
            async move { (ready.await? == 1).then_some(()) }
        },
    )
    .await;

    let mut server = ServerProcess::start_with(SERVER, &harness.iso, free_port(), &opts, &[]).await;
    eventually(Duration::from_secs(10), "the payer taking it", || {
        let ready = ready(payments.clone());
        async move { (ready.await? == 0).then_some(()) }
    })
    .await;
    server.terminate();
    assert!(server.exited_cleanly().await, "a clean exit");

    assert_eq!(harness.status(&id).await, "PAID", "paid before the exit");
    assert_eq!(
        ready(payments.clone()).await,
        Some(0),
        "no payment request left to take again"
    );
    eventually(Duration::from_secs(10), "the order queued", || {
        let ready = ready(harness.queue(Queue::Orders));
        async move { (ready.await? == 1).then_some(()) }
    })
    .await;
    harness.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_agree_with_what_the_crowd_was_answered() {
    const SEATS: i64 = 20;
    const BUYERS: i64 = 300;
    let iso = Isolation::new();
    let opts = Options {
        reconcile_interval_secs: 1,
        ..Options::default()
    };
    let server = ServerProcess::start(SERVER, &iso, free_port(), &opts).await;
    let http = reqwest::Client::new();
    let showtime = server.create_showtime(&http, SEATS).await;

    let answers: Vec<StatusCode> = futures::stream::iter(1..=BUYERS)
        .map(|user| {
            let (http, url) = (http.clone(), server.url("/reserve"));
            async move {
                http.post(url)
                    .json(&json!({"user_id": user, "showtime_id": showtime}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut tally: HashMap<StatusCode, f64> = HashMap::new();
    for status in answers {
        *tally.entry(status).or_default() += 1.0;
    }
    assert_eq!(tally[&StatusCode::OK], SEATS as f64);
    let sold_out = tally[&StatusCode::CONFLICT];
    assert_eq!(sold_out, (BUYERS - SEATS) as f64);
    // A method outside the contract is counted under `other`, not a series of its own.
    let put = http.put(server.url("/reserve")).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);

    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reservations = "flashsale_reservations_total";
    assert_eq!(
        series(&metrics, reservations, &[("outcome", "reserved")]),
        SEATS as f64,
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, reservations, &[("outcome", "sold_out")]),
        sold_out,
        "from the store and from memory together"
    );
    let requests = "flashsale_http_requests_total";
    assert_eq!(
        series(
            &metrics,
            requests,
            &[("method", "POST"), ("route", "/reserve"), ("status", "200")]
        ),
        SEATS as f64
    );
    assert_eq!(
        series(
            &metrics,
            requests,
            &[
                ("method", "other"),
                ("route", "/reserve"),
                ("status", "405")
            ]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            requests,
            &[("method", "POST"), ("route", "/reserve"), ("status", "409")]
        ),
        sold_out
    );
    assert_eq!(
        series(
            &metrics,
            "flashsale_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/reserve")]
        ),
        BUYERS as f64
    );
    // Every hold's expiry went out in confirmed batches, one entry each. Holds after the
    // first are handed over and their batch is counted once it lingered and RabbitMQ
    // confirmed it, after the answers: read until all are in, never more.
    eventually(
        Duration::from_secs(30),
        "every hold's batch confirmed",
        || async {
            let metrics = scrape(&http, server.url("/metrics")).await?;
            let entries = series(&metrics, "flashsale_publish_batch_entries_sum", &[]);
            assert!(entries <= SEATS as f64, "{metrics}");
            let confirmed = series(
                &metrics,
                "flashsale_publish_batches_total",
                &[("result", "confirmed")],
            );
            (entries == SEATS as f64 && confirmed >= 1.0).then_some(())
        },
    )
    .await;

    // The dashboard reads nothing the process does not export.
    let dashboard = std::fs::read_to_string(
        flash_sale_tests::workspace_root().join("ops/grafana-dashboard.json"),
    )
    .unwrap();
    let queried = dashboard_series(&dashboard);
    assert!(queried.len() >= 15, "{queried:?}");

    // The periodic reconciliation shows the showtime on sale, seat by seat.
    let showtime = showtime.to_string();
    eventually(Duration::from_secs(30), "the seat gauges", || async {
        let metrics = scrape(&http, server.url("/metrics")).await?;
        let seats = |state| {
            series(
                &metrics,
                "flashsale_seats",
                &[("showtime", showtime.as_str()), ("state", state)],
            )
        };
        let every_series_there = queried.iter().all(|name| {
            metrics
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        });
        (seats("held") == SEATS as f64
            && seats("available") == 0.0
            && seats("sold") == 0.0
            && every_series_there)
            .then_some(())
    })
    .await;
    drop(server);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}

/// A showtime's seat gauges end on its last seats once it leaves sale: before, the
/// periodic reconciliation showed only showtimes with seats available or held, so a
/// showtime sold out and paid kept the gauges of its last round on sale (here 2 held, 0
/// sold) until they idled out ten minutes later, and the dashboard never showed it sold.
#[tokio::test]
async fn a_showtime_sold_out_and_paid_ends_its_seat_gauges_sold() {
    let iso = Isolation::new();
    let opts = Options {
        reconcile_interval_secs: 1,
        ..Options::default()
    };
    let server = ServerProcess::start(SERVER, &iso, free_port(), &opts).await;
    let http = reqwest::Client::new();
    let showtime = server.create_showtime(&http, 2).await;
    let mut held = vec![];
    for user in 1..=2 {
        let answer: Value = http
            .post(server.url("/reserve"))
            .json(&json!({"user_id": user, "showtime_id": showtime}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        held.push((user, answer["reservation_id"].as_str().unwrap().to_string()));
    }
    let label = showtime.to_string();
    let gauges = |metrics: &str| {
        ["available", "held", "sold"].map(|state| {
            series(
                metrics,
                "flashsale_seats",
                &[("showtime", label.as_str()), ("state", state)],
            )
        })
    };
    eventually(Duration::from_secs(30), "the seats shown held", || async {
        let metrics = scrape(&http, server.url("/metrics")).await?;
        (gauges(&metrics) == [0.0, 2.0, 0.0]).then_some(())
    })
    .await;
    for (user, id) in &held {
        let paid = http
            .post(server.url(&format!("/reservations/{id}/pay")))
            .json(&json!({"user_id": user}))
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), StatusCode::OK);
    }
    eventually(Duration::from_secs(30), "the seats shown sold", || async {
        let metrics = scrape(&http, server.url("/metrics")).await?;
        (gauges(&metrics) == [0.0, 0.0, 2.0]).then_some(())
    })
    .await;
    drop(server);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}

/// The listen queue of the socket listening on `port`, as the kernel reports it (`ss`'s
/// Send-Q column for a listener).
fn listen_queue(port: u16) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("unexpected ss line: {line}"))
}

#[tokio::test]
async fn the_listener_queues_as_many_connections_as_the_system_allows() {
    let system_most: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let iso = Isolation::new();
    let opts = Options::default();
    let server = ServerProcess::start(SERVER, &iso, free_port(), &opts).await;
    assert_eq!(
        listen_queue(server.port),
        system_most,
        "the default is somaxconn"
    );
    drop(server);

    let server = ServerProcess::start_with(
        SERVER,
        &iso,
        free_port(),
        &opts,
        &[("LISTEN_BACKLOG", "333")],
    )
    .await;
    assert_eq!(listen_queue(server.port), 333);
    drop(server);

    // A bad value stops start-up, naming the variable.
    let refused = tokio::process::Command::new(SERVER)
        .envs(flash_sale_tests::env(&iso, &opts))
        .env("ADDR", format!("127.0.0.1:{}", free_port()))
        .env("LISTEN_BACKLOG", "lots")
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("LISTEN_BACKLOG"), "{said}");

    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}
