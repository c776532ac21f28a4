//! Each function's cold start under the emulator: a measurement, run by name.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flash_sale_runtime::queue::rabbit_event;
use flash_sale_test_support::process::workspace_root;
use flash_sale_test_support::watch::bounded;
use flash_sale_test_support::{FunctionHarness, Isolation, Options, ProcessTree, Watch, env};
use serde_json::{Value, json};

/// Each function's cold start under the emulator: the emulator serves only the Lambda
/// APIs (`--only-lambda-apis`), the test starts the function's binary itself (as Lambda
/// starts `bootstrap`), sends its first request at once and times the answer: process
/// start, `App::from_env` (configuration; Redis, RabbitMQ and PostgreSQL connections;
/// migrations; queue declarations) and one request. The next requests are warm; init is
/// about the difference. Not part of the default run; docs/lambda.md shows its numbers:
///
/// `cargo test -p flash-sale-tests --test lambda -- --ignored --nocapture cold_starts`
/// (`WATCH_RELEASE=1` for release builds of the functions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it by name"]
async fn cold_starts_under_watch() {
    let (iso, opts) = (Isolation::new(), Options::default());
    let h = FunctionHarness::connect(iso.clone(), &opts).await;
    let release = std::env::var("WATCH_RELEASE").is_ok_and(|v| v == "1");
    let expired = h
        .adapters
        .bus
        .topology()
        .queue(flash_sale_adapters::Queue::Expiries);
    let orders = h
        .adapters
        .bus
        .topology()
        .queue(flash_sale_adapters::Queue::Orders);
    let expire_event = serde_json::to_value(rabbit_event(
        &expired,
        &[br#"{"reservation_id":"1-1"}"#.to_vec()],
    ))
    .unwrap();
    let orders_event = serde_json::to_value(rabbit_event(&orders, &[])).unwrap();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
        .join(if release { "release" } else { "debug" });

    // One call: through a function URL for the HTTP functions, through the Invoke API
    // for the queue ones. None changes anything.
    async fn call(w: &Watch, function: &str, expire_event: &Value, orders_event: &Value) {
        let status = match function {
            "showtimes" => w.get("/lambda-url/showtimes/showtimes/1").await.0,
            "reserve" => w.get("/lambda-url/reserve/reservations/1-1").await.0,
            "pay" => {
                w.post(
                    "/lambda-url/pay/reservations/1-1/pay",
                    json!({"user_id": 1}),
                )
                .await
                .0
            }
            f => {
                let scheduled =
                    json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
                let event = match f {
                    "expire" => expire_event,
                    "write-order" => orders_event,
                    _ => &scheduled,
                };
                let url = w.url(&format!("/2015-03-31/functions/{f}/invocations"));
                w.http.post(url).json(event).send().await.unwrap().status()
            }
        };
        assert!(
            !status.is_server_error(),
            "{function} answered {status}\n{}",
            w.process.tail()
        );
    }
    let functions = [
        "reserve",
        "pay",
        "showtimes",
        "expire",
        "write-order",
        "reconcile",
    ];
    bounded("the cold-start measurement", async {
        let w = Watch::start_with(&iso, &opts, &["--only-lambda-apis"]).await;
        let mut rows = vec![];
        for f in functions {
            let built = Command::new("cargo")
                .args(["build", "--quiet", "-p", f, "--bin", f])
                .args(release.then_some("--release"))
                .current_dir(workspace_root())
                .status()
                .unwrap();
            assert!(built.success(), "cargo build -p {f}");
            let mut command = Command::new(target.join(f));
            command
                .envs(env(&iso, &opts))
                .env("AWS_LAMBDA_FUNCTION_NAME", f)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{}/.rt/{f}", w.port));
            let started = Instant::now();
            let function = ProcessTree::spawn("function", command, &format!("{}-{f}", iso.prefix));
            let died = async {
                while function.exited().is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::select! {
                _ = call(&w, f, &expire_event, &orders_event) => {}
                _ = died => panic!("{f} exited during its init\n{}", function.tail()),
            }
            let cold = started.elapsed();
            let mut warm = Duration::MAX;
            for _ in 0..5 {
                let started = Instant::now();
                call(&w, f, &expire_event, &orders_event).await;
                warm = warm.min(started.elapsed());
            }
            drop(function);
            let size = std::fs::metadata(target.join(f)).map(|m| m.len()).unwrap_or(0);
            rows.push(format!(
                "| {f} | {:.0} ms | {:.1} ms | {:.0} ms | {:.1} MiB |",
                cold.as_secs_f64() * 1e3,
                warm.as_secs_f64() * 1e3,
                cold.saturating_sub(warm).as_secs_f64() * 1e3,
                size as f64 / (1024.0 * 1024.0),
            ));
        }
        let profile = if release { "release" } else { "dev" };
        println!("| function ({profile} build) | first request, from process start | next request (best of 5) | init ≈ difference | binary |");
        println!("|---|---|---|---|---|");
        for row in rows {
            println!("{row}");
        }
    })
    .await;
    h.cleanup().await;
}
