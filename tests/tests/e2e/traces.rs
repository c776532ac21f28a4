//! Traces that follow a reservation through the queues: the server runs as a child
//! process exporting OTLP/JSON to a receiver in the test, and the test reads the spans
//! that arrive.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flash_sale_tests::{
    Isolation, Options, OtlpReceiver, ReceivedSpan, ServerProcess, eventually, free_port,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_flash-sale-server");

/// A server exporting its traces to `receiver`.
async fn start(receiver: &OtlpReceiver, iso: &Isolation, opts: &mut Options) -> ServerProcess {
    opts.traces_to = Some(receiver.endpoint());
    ServerProcess::start(SERVER, iso, free_port(), opts).await
}

/// A fresh `traceparent` a client would send: (trace id, its span id, the header).
fn client_trace(salt: u64) -> (String, String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!(
        "{:032x}",
        nanos ^ ((std::process::id() as u128) << 64) ^ salt as u128
    );
    let span_id = format!("{:016x}", (nanos as u64).rotate_left(17) | 1);
    let header = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, header)
}

async fn send(
    http: &reqwest::Client,
    url: String,
    traceparent: &str,
    body: Value,
) -> (StatusCode, Value) {
    let answer = http
        .post(url)
        .header("traceparent", traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    (answer.status(), answer.json().await.unwrap())
}

/// Waits until trace `trace_id` holds a span named `last`, and returns its spans.
async fn trace_until(receiver: &OtlpReceiver, trace_id: &str, last: &str) -> Vec<ReceivedSpan> {
    eventually(
        Duration::from_secs(60),
        &format!("a {last:?} span in trace {trace_id}"),
        || async {
            let spans = receiver.trace(trace_id);
            spans.iter().any(|s| s.name == last).then_some(spans)
        },
    )
    .await
}

fn names(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name:?} span in {:?}", names(spans)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reservation_is_one_trace_from_its_request_through_payment_to_its_order() {
    let receiver = OtlpReceiver::start().await;
    let iso = Isolation::new();
    let mut opts = Options::mock_payments();
    let server = start(&receiver, &iso, &mut opts).await;
    let http = reqwest::Client::new();
    let showtime = server.create_showtime(&http, 2).await;

    let (trace_id, client_span, traceparent) = client_trace(1);
    let (status, held) = send(
        &http,
        server.url("/reserve"),
        &traceparent,
        json!({"user_id": 1, "showtime_id": showtime}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let reservation = held["reservation_id"].as_str().unwrap().to_string();

    // The mock payer pays the hold and the order is written: every step in one trace.
    let spans = trace_until(&receiver, &trace_id, "write order").await;
    for step in [
        "POST /reserve",
        "reserve.lua",
        "mock payment",
        "pay.lua",
        "write order",
    ] {
        assert!(
            names(&spans).contains(step),
            "no {step:?} in {:?}",
            names(&spans)
        );
    }
    let request = named(&spans, "POST /reserve");
    assert_eq!(
        request.parent_span_id, client_span,
        "continues the caller's trace"
    );
    assert_eq!(request.attributes["http.response.status_code"], "200");
    assert_eq!(request.service, "flash-sale");
    assert_eq!(
        named(&spans, "reserve.lua").parent_span_id,
        request.span_id,
        "the script runs inside the request"
    );
    for step in ["mock payment", "write order"] {
        assert_eq!(
            named(&spans, step).attributes["flash_sale.reservation"],
            reservation
        );
    }
    // The batch that wrote it links to the reservation's trace.
    eventually(Duration::from_secs(30), "the batch's link", || async {
        receiver
            .spans()
            .iter()
            .any(|s| s.name == "write orders" && s.linked_traces.contains(&trace_id))
            .then_some(())
    })
    .await;

    // Another buyer's hold is a trace of its own.
    let (other_trace, _, other_parent) = client_trace(2);
    let (status, _) = send(
        &http,
        server.url("/reserve"),
        &other_parent,
        json!({"user_id": 2, "showtime_id": showtime}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let theirs = trace_until(&receiver, &other_trace, "write order").await;
    assert!(theirs.iter().all(|s| s.trace_id != trace_id));
    let ours = receiver.trace(&trace_id);
    assert_eq!(
        ours.iter().filter(|s| s.name == "write order").count(),
        1,
        "one order write in our trace: {:?}",
        names(&ours)
    );

    drop(server);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_request_of_its_own_links_its_trace_to_the_hold() {
    let receiver = OtlpReceiver::start().await;
    let iso = Isolation::new();
    let mut opts = Options::default();
    let server = start(&receiver, &iso, &mut opts).await;
    let http = reqwest::Client::new();
    let showtime = server.create_showtime(&http, 1).await;

    let (hold_trace, _, hold_parent) = client_trace(3);
    let (status, held) = send(
        &http,
        server.url("/reserve"),
        &hold_parent,
        json!({"user_id": 5, "showtime_id": showtime}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{held}");
    let reservation = held["reservation_id"].as_str().unwrap();

    let (pay_trace, _, pay_parent) = client_trace(4);
    let (status, paid) = send(
        &http,
        server.url(&format!("/reservations/{reservation}/pay")),
        &pay_parent,
        json!({"user_id": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{paid}");

    // The order belongs to the payment's trace, whose request links to the hold's.
    let spans = trace_until(&receiver, &pay_trace, "write order").await;
    let pay = named(&spans, "POST /reservations/{id}/pay");
    assert_eq!(pay.linked_traces, vec![hold_trace.clone()]);
    assert!(names(&spans).contains("pay.lua"), "{:?}", names(&spans));
    let hold = trace_until(&receiver, &hold_trace, "reserve.lua").await;
    assert!(names(&hold).contains("POST /reserve"));
    assert!(!names(&hold).contains("write order"));

    drop(server);
    let (_app, adapters) = flash_sale_tests::wire(flash_sale_tests::config(&iso, &opts)).await;
    flash_sale_tests::cleanup(&adapters, &iso).await.unwrap();
}
