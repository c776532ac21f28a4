//! The whole flow under `cargo lambda watch` with the bridge feeding the queues to the
//! queue functions, as the event source mappings would, exporting traces as the
//! functions would on Lambda: only what each invocation flushes before it returns
//! arrives (the batch delay is an hour). Each function also writes its metrics as
//! CloudWatch embedded-metric-format lines after each invocation.

use std::time::Duration;

use flash_sale_test_support::process::until;
use flash_sale_test_support::watch::{bounded, skipped, start_bridge};
use flash_sale_test_support::{FunctionHarness, Isolation, Options, OtlpReceiver, Watch};
use reqwest::StatusCode;
use serde_json::json;

use crate::{available, create_showtime, reserve, try_order_count, try_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_runs_under_watch_with_the_bridge() {
    if skipped() {
        return;
    }
    let iso = Isolation::new();
    let receiver = OtlpReceiver::start().await;
    let opts = Options {
        hold_secs: 3,
        traces_to: Some(receiver.endpoint()),
        traces_batch_delay_ms: 3_600_000,
        ..Options::default()
    };
    let h = FunctionHarness::connect(iso.clone(), &opts).await;
    let w = Watch::start(&iso, &opts).await;
    let bridge = start_bridge(&iso, &opts, &w);
    bounded("the whole flow under watch", async {
        let showtime = create_showtime(&w, 2).await;
        // The hold lasts 3 s and a function's first request waits for its build: start
        // pay before the clock runs (an unknown reservation, a 404).
        let (status, p) = w
            .post(
                &format!("/reservations/{showtime}-999999/pay"),
                json!({"user_id": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{p}\n{}", w.process.tail());

        // reserve -> pay -> (orders queue -> bridge -> write-order) -> ORDERED.
        let bought = reserve(&w, 1, showtime).await;
        let (status, p) = w
            .post(
                &format!("/reservations/{bought}/pay"),
                json!({"user_id": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{p}");
        // reserve -> (delay queue, 3 s -> expiries -> bridge -> expire) -> EXPIRED.
        let dropped = reserve(&w, 2, showtime).await;
        assert_eq!(available(&w, showtime).await, 0);

        // The first batch through the bridge builds the queue functions: be patient.
        let patience = Duration::from_secs(600);
        let procs = [&bridge, &w.process];
        until(
            patience,
            "the order, written by write-order through the bridge",
            &procs,
            || async { try_order_count(&h, &bought).await == Some(1) },
        )
        .await;
        until(
            patience,
            "the hold, expired by expire through the bridge",
            &procs,
            || async { try_status(&h, &dropped).await.as_deref() == Some("EXPIRED") },
        )
        .await;
        until(
            Duration::from_secs(30),
            "ORDERED in Redis",
            &procs,
            || async { try_status(&h, &bought).await.as_deref() == Some("ORDERED") },
        )
        .await;
        let (status, s) = w.get(&format!("/showtimes/{showtime}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                s["available"].as_i64(),
                s["held"].as_i64(),
                s["sold"].as_i64()
            ),
            (Some(1), Some(0), Some(1)),
            "{s}"
        );
        // The user whose hold expired may try again.
        let again = reserve(&w, 2, showtime).await;
        assert_ne!(again, dropped);

        // Each function flushed its spans before its invocation returned: the order is
        // in the trace of the payment request that made it, the expiry in the trace of
        // the request that held.
        let span_of = |name: &str, reservation: &str| {
            receiver.spans().into_iter().find(|s| {
                s.name == name
                    && s.attributes
                        .get("flash_sale.reservation")
                        .map(String::as_str)
                        == Some(reservation)
            })
        };
        let written = span_of("write order", &bought).expect("write-order's span");
        assert_eq!(written.service, "write-order");
        let paid = receiver.trace(&written.trace_id);
        assert!(
            paid.iter()
                .any(|s| s.name == "POST /reservations/{id}/pay" && s.service == "pay"),
            "{paid:?}"
        );
        let expired = span_of("expire", &dropped).expect("expire's span");
        assert_eq!(expired.service, "expire");
        let held = receiver.trace(&expired.trace_id);
        assert!(
            held.iter()
                .any(|s| s.name == "POST /reserve" && s.service == "reserve"),
            "{held:?}"
        );

        // Each function wrote its metrics as EMF lines for CloudWatch.
        let emf = emf_lines(&w.process.output());
        for (function, metric, label, value) in [
            (
                "reserve",
                "flashsale_reservations_total",
                "outcome",
                "reserved",
            ),
            ("pay", "flashsale_payments_total", "outcome", "paid"),
            (
                "write-order",
                "flashsale_orders_total",
                "outcome",
                "inserted",
            ),
            ("expire", "flashsale_seats_returned_total", "by", "message"),
        ] {
            assert!(
                emf.iter().any(|line| line["function"] == function
                    && line[label] == value
                    && line[metric].as_f64().is_some_and(|n| n >= 1.0)
                    && line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "FlashSale"),
                "no EMF line of {function} with {metric}{{{label}={value}}} in {} lines",
                emf.len()
            );
        }

        // Every message was acknowledged: nothing waits in the work queues.
        for q in [
            flash_sale_adapters::Queue::Orders,
            flash_sale_adapters::Queue::Expiries,
        ] {
            let name = h.adapters.bus.topology().queue(q);
            until(
                Duration::from_secs(10),
                &format!("{name} empty"),
                &procs,
                || async {
                    h.adapters
                        .bus
                        .ready_count(&name)
                        .await
                        .is_ok_and(|n| n == 0)
                },
            )
            .await;
        }
    })
    .await;
    drop(bridge);
    drop(w);
    h.cleanup().await;
}

/// The CloudWatch embedded-metric-format documents in a process's output.
fn emf_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .filter_map(|line| line.find("{\"_aws\"").map(|at| &line[at..]))
        .filter_map(|json| serde_json::from_str(json).ok())
        .collect()
}
