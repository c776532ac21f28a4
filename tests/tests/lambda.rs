//! The functions as Lambda functions, under `cargo lambda watch` (docs/lambda.md).
//!
//! Each test starts its own emulator (`scripts/lambda-watch`, which installs cargo-lambda
//! from PyPI when it is missing) on a free port, with its own database, Redis key prefix
//! and queue prefix passed through the environment, so the tests run in parallel with
//! each other and with every other test. The first invocation of each function builds it
//! (`cargo run` in the shared target directory), so the first run of this file takes a
//! few minutes; later runs only check that the builds are fresh.
//!
//! Every test is bounded ([`deadline`], `WATCH_TEST_TIMEOUT_SECS`, default 900 s) and
//! stops every process it started (the emulator, the functions it started, the bridge)
//! when it ends, whether it passed, failed or timed out.
//!
//! `WATCH_TESTS=skip` skips the emulator tests (not `template_passes_cfn_lint`).

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use flash_sale_runtime::queue::rabbit_event;
use flash_sale_runtime::{App, Config};
use flash_sale_tests::{Isolation, Options, cleanup, env, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

fn skipped() -> bool {
    if std::env::var("WATCH_TESTS").is_ok_and(|v| v == "skip") {
        eprintln!("WATCH_TESTS=skip: not starting cargo lambda watch");
        return true;
    }
    false
}

/// How long one emulator test may take in all, its functions' first builds included.
fn deadline() -> Duration {
    let secs = std::env::var("WATCH_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    Duration::from_secs(secs)
}

/// Runs a test body under [`deadline`]; the processes it started are stopped by their
/// guards' `Drop` either way.
async fn bounded(what: &str, body: impl Future<Output = ()>) {
    let limit = deadline();
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("{what} did not finish within {limit:?} (WATCH_TEST_TIMEOUT_SECS)");
    }
}

/// `scripts/ensure-cargo-lambda`, once per test binary.
fn ensure_cargo_lambda() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let out = Command::new(root().join("scripts/ensure-cargo-lambda"))
            .arg("--no-zig")
            .output()
            .map_err(|e| format!("running scripts/ensure-cargo-lambda: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/ensure-cargo-lambda failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The process ids of `pid`'s descendants, read from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = vec![];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parents {
            if *parent == p && !found.contains(child) {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// A child process and everything it started, stopped on drop: SIGTERM first (watch
/// passes it on to its functions, the bridge closes its channels), SIGKILL for whatever
/// is still there after a few seconds.
struct ProcessTree {
    name: &'static str,
    child: Mutex<Child>,
    log: PathBuf,
}

impl ProcessTree {
    fn spawn(name: &'static str, mut command: Command, tag: &str) -> Self {
        let log = std::env::temp_dir().join(format!("flash-sale-{name}-{tag}.log"));
        let out = File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        command
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name,
            child: Mutex::new(child),
            log,
        }
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// The last lines of the process's output, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let root = child.id();
        let mut tree = descendants(root);
        tree.push(root);
        signal("TERM", &tree);
        let started = Instant::now();
        while tree.iter().any(|p| alive(*p)) && started.elapsed() < Duration::from_secs(8) {
            let _ = child.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        let left: Vec<u32> = tree.iter().copied().filter(|p| alive(*p)).collect();
        signal("KILL", &left);
        let _ = child.wait();
        // Keep the log of a failed test for a person to read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One `cargo lambda watch` with its own data.
struct Watch {
    port: u16,
    http: reqwest::Client,
    process: ProcessTree,
}

impl Watch {
    async fn start(iso: &Isolation, opts: &Options) -> Self {
        Self::start_with(iso, opts, &[]).await
    }

    async fn start_with(iso: &Isolation, opts: &Options, args: &[&str]) -> Self {
        ensure_cargo_lambda();
        let port = free_port();
        let mut command = Command::new(root().join("scripts/lambda-watch"));
        command
            .arg("--ignore-changes")
            .args(args)
            .envs(env(iso, opts))
            .env("WATCH_PORT", port.to_string())
            .env("SKIP_SERVICES", "1")
            .env("CARGO_TERM_COLOR", "never");
        let process = ProcessTree::spawn("lambda-watch", command, &iso.prefix);
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Some(status) = process.exited() {
                panic!(
                    "cargo lambda watch exited ({status}) before serving\n{}",
                    process.tail()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "cargo lambda watch did not listen on {port} within 120 s\n{}",
                process.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            port,
            // The first request to a function waits for `cargo run` to build it.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
            process,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.process.tail()));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Invokes `function` with `event` through `cargo lambda invoke`, as a developer
    /// would; `Err` carries the function's error.
    async fn cargo_lambda_invoke(
        &self,
        function: &str,
        event: &Value,
        tag: &str,
    ) -> Result<Value, String> {
        let file = std::env::temp_dir().join(format!("flash-sale-event-{tag}-{function}.json"));
        std::fs::write(&file, serde_json::to_vec(event).unwrap()).unwrap();
        let mut command = tokio::process::Command::new("cargo");
        command
            .args([
                "lambda",
                "invoke",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
            ])
            .arg(self.port.to_string())
            .arg("--data-file")
            .arg(&file)
            .args(["--output-format", "json", function])
            .env("CARGO_LAMBDA_COLOR", "never")
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(600), command.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "cargo lambda invoke {function} did not answer in 600 s\n{}",
                    self.process.tail()
                )
            })
            .expect("running cargo lambda invoke");
        let _ = std::fs::remove_file(&file);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(serde_json::from_str(&stdout).unwrap_or(Value::String(stdout)))
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

/// Polls `check` every 50 ms until it returns `true`; after `limit`, panics with `what`
/// and the last output of `processes`.
async fn until<F, Fut>(limit: Duration, what: &str, processes: &[&ProcessTree], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        let exited = processes.iter().find_map(|p| p.exited().map(|s| (p, s)));
        if let Some((p, status)) = exited {
            panic!(
                "{} exited ({status}) while waiting for {what}\n{}",
                p.name,
                p.tail()
            );
        }
        if started.elapsed() > limit {
            let tails: Vec<String> = processes.iter().map(|p| p.tail()).collect();
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second process with the same data: the bridge, `cargo run -p flash-sale-bridge`.
fn start_bridge(iso: &Isolation, opts: &Options, watch: &Watch) -> ProcessTree {
    let mut command = Command::new("cargo");
    command
        .args([
            "run",
            "--quiet",
            "-p",
            "flash-sale-bridge",
            "--bin",
            "flash-sale-bridge",
        ])
        .envs(env(iso, opts))
        .env("BRIDGE_INVOKE_URL", watch.url(""))
        .env("BRIDGE_BATCH_WINDOW_MS", "50")
        .env("BRIDGE_MAX_PAUSE_MS", "500")
        .env("CARGO_TERM_COLOR", "never")
        .env("RUST_LOG", "info");
    ProcessTree::spawn("bridge", command, &iso.prefix)
}

/// The test's view behind the functions: the same Redis, queues and database.
async fn services(iso: &Isolation, opts: &Options) -> App {
    let config: Config = flash_sale_tests::config(iso, opts);
    App::connect(config)
        .await
        .expect("the services are up (scripts/services starts them)")
}

/// Orders recorded for `reservation`; `None` when PostgreSQL did not answer (other
/// tests on this machine restart the services: a poll tries again).
async fn try_order_count(app: &App, reservation: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE reservation_id = $1")
        .bind(reservation)
        .fetch_one(app.sale.db().pool())
        .await
        .ok()
}

async fn order_count(app: &App, reservation: &str) -> i64 {
    try_order_count(app, reservation)
        .await
        .expect("PostgreSQL answers")
}

/// The reservation's status in Redis; `None` when it does not exist or Redis did not
/// answer (a poll tries again).
async fn try_status(app: &App, reservation: &str) -> Option<String> {
    let id = reservation.parse().ok()?;
    let r = app.sale.reservation(id).await.ok()??;
    Some(r.status.as_str().to_string())
}

async fn status_in_redis(app: &App, reservation: &str) -> Option<String> {
    app.sale
        .reservation(reservation.parse().unwrap())
        .await
        .unwrap()
        .map(|r| r.status.as_str().to_string())
}

async fn available(w: &Watch, showtime: i64) -> i64 {
    let (status, s) = w.get(&format!("/showtimes/{showtime}")).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    s["available"].as_i64().unwrap()
}

async fn create_showtime(w: &Watch, capacity: u32) -> i64 {
    let (status, s) = w
        .post(
            "/showtimes",
            json!({"capacity": capacity, "title": "watch"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}\n{}", w.process.tail());
    s["id"].as_i64().unwrap()
}

async fn reserve(w: &Watch, user: i64, showtime: i64) -> String {
    let (status, r) = w
        .post(
            "/reserve",
            json!({"user_id": user, "showtime_id": showtime}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}\n{}", w.process.tail());
    r["reservation_id"].as_str().unwrap().to_string()
}

fn order_body(reservation: &str, user: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"reservation_id": reservation, "user_id": user, "paid_at_ms": 1_795_597_200_000u64}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_function_answers_the_contract_routes_under_watch() {
    if skipped() {
        return;
    }
    let (iso, opts) = (Isolation::new(), Options::default());
    let app = services(&iso, &opts).await;
    let w = Watch::start(&iso, &opts).await;
    bounded("the HTTP routes under watch", async {
        // showtimes: POST /showtimes, GET /showtimes/{id} (the router metadata).
        let showtime = create_showtime(&w, 2).await;
        let capacity: i32 = sqlx::query_scalar("SELECT capacity FROM showtimes WHERE id = $1")
            .bind(showtime)
            .fetch_one(app.sale.db().pool())
            .await
            .unwrap();
        assert_eq!(capacity, 2, "the showtime is in PostgreSQL");
        assert_eq!(available(&w, showtime).await, 2);

        // reserve: POST /reserve, GET /reservations/{id}.
        let id = reserve(&w, 7, showtime).await;
        assert_eq!(
            status_in_redis(&app, &id).await.as_deref(),
            Some("RESERVED")
        );
        let (status, r) = w.get(&format!("/reservations/{id}")).await;
        assert_eq!(
            (status, r["status"].as_str()),
            (StatusCode::OK, Some("RESERVED")),
            "{r}"
        );
        let (status, r) = w
            .post("/reserve", json!({"user_id": 7, "showtime_id": showtime}))
            .await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::CONFLICT, Some("already_ordered")),
            "{r}"
        );
        let (status, r) = w.post("/reserve", json!({"user_id": "seven"})).await;
        assert_eq!(
            (status, r["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{r}"
        );
        assert_eq!(
            available(&w, showtime).await,
            1,
            "a refused request takes no seat"
        );

        // pay: POST /reservations/{id}/pay.
        let (status, p) = w
            .post(&format!("/reservations/{id}/pay"), json!({"user_id": 7}))
            .await;
        assert_eq!(
            (status, p["status"].as_str()),
            (StatusCode::OK, Some("PAID")),
            "{p}"
        );
        assert_eq!(status_in_redis(&app, &id).await.as_deref(), Some("PAID"));

        // The same functions through their function URLs.
        let (status, r) = w
            .get(&format!("/lambda-url/reserve/reservations/{id}"))
            .await;
        assert_eq!(
            (status, r["status"].as_str()),
            (StatusCode::OK, Some("PAID")),
            "{r}"
        );
        let (status, s) = w
            .get(&format!("/lambda-url/showtimes/showtimes/{showtime}"))
            .await;
        assert_eq!(
            (status, s["capacity"].as_i64()),
            (StatusCode::OK, Some(2)),
            "{s}"
        );
        // An unknown route inside a function answers the shared JSON shape.
        let (status, e) = w.get("/lambda-url/reserve/no/such/route").await;
        assert_eq!(
            (status, e["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{e}"
        );
    })
    .await;
    drop(w);
    cleanup(&app, &iso).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_functions_take_rabbitmq_events_through_cargo_lambda_invoke() {
    if skipped() {
        return;
    }
    let (iso, opts) = (Isolation::new(), Options::default());
    let app = services(&iso, &opts).await;
    let w = Watch::start(&iso, &opts).await;
    let expired_queue = app
        .sale
        .bus()
        .topology()
        .queue(flash_sale_adapters::Queue::Expiries);
    let orders_queue = app
        .sale
        .bus()
        .topology()
        .queue(flash_sale_adapters::Queue::Orders);
    bounded("the queue functions under watch", async {
        let showtime = create_showtime(&w, 3).await;
        let held = reserve(&w, 1, showtime).await;
        let paid = reserve(&w, 2, showtime).await;
        assert_eq!(available(&w, showtime).await, 1);

        // expire: the hold's expiry, as Amazon MQ would deliver it.
        let body = serde_json::to_vec(&json!({"reservation_id": held})).unwrap();
        let event = serde_json::to_value(rabbit_event(&expired_queue, &[body])).unwrap();
        w.cargo_lambda_invoke("expire", &event, &iso.prefix)
            .await
            .unwrap_or_else(|e| panic!("expire failed: {e}\n{}", w.process.tail()));
        assert_eq!(
            status_in_redis(&app, &held).await.as_deref(),
            Some("EXPIRED")
        );
        assert_eq!(available(&w, showtime).await, 2, "the seat is back on sale");
        // A redelivery of the same batch changes nothing.
        w.cargo_lambda_invoke("expire", &event, &iso.prefix)
            .await
            .unwrap();
        assert_eq!(available(&w, showtime).await, 2);

        // write-order: the paid reservation's order.
        let (status, p) = w
            .post(&format!("/reservations/{paid}/pay"), json!({"user_id": 2}))
            .await;
        assert_eq!(status, StatusCode::OK, "{p}");
        let event =
            serde_json::to_value(rabbit_event(&orders_queue, &[order_body(&paid, 2)])).unwrap();
        w.cargo_lambda_invoke("write-order", &event, &iso.prefix)
            .await
            .unwrap_or_else(|e| panic!("write-order failed: {e}\n{}", w.process.tail()));
        assert_eq!(
            order_count(&app, &paid).await,
            1,
            "the order is in PostgreSQL"
        );
        assert_eq!(
            status_in_redis(&app, &paid).await.as_deref(),
            Some("ORDERED")
        );
        w.cargo_lambda_invoke("write-order", &event, &iso.prefix)
            .await
            .unwrap();
        assert_eq!(
            order_count(&app, &paid).await,
            1,
            "a redelivery records nothing twice"
        );

        // Malformed messages: the invocation succeeds (nothing to retry), the messages go
        // to the dead-letter queue, and nothing else changes.
        let mut event = rabbit_event(&orders_queue, &[b"x".to_vec(), b"not json".to_vec()]);
        event.messages_by_queue.values_mut().next().unwrap()[0].data =
            Some("%%% not base64".into());
        let event = serde_json::to_value(event).unwrap();
        w.cargo_lambda_invoke("write-order", &event, &iso.prefix)
            .await
            .unwrap();
        let dlq = app
            .sale
            .bus()
            .topology()
            .dead_letter_queue(flash_sale_adapters::Queue::Orders);
        eventually(
            Duration::from_secs(10),
            "two dead-lettered orders",
            || async { (app.sale.bus().ready_count(&dlq).await.unwrap() == 2).then_some(()) },
        )
        .await;
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(app.sale.db().pool())
            .await
            .unwrap();
        assert_eq!(orders, 1);

        // reconcile, on its schedule: the scheduled event of its example.
        let scheduled: Value = serde_json::from_str(
            &std::fs::read_to_string(root().join("functions/reconcile/events/scheduled.json"))
                .unwrap(),
        )
        .unwrap();
        w.cargo_lambda_invoke("reconcile", &scheduled, &iso.prefix)
            .await
            .unwrap_or_else(|e| panic!("reconcile failed: {e}\n{}", w.process.tail()));
        assert_eq!(order_count(&app, &paid).await, 1);
    })
    .await;
    drop(w);
    cleanup(&app, &iso).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_runs_under_watch_with_the_bridge() {
    if skipped() {
        return;
    }
    let iso = Isolation::new();
    let opts = Options {
        hold_secs: 3,
        ..Options::default()
    };
    let app = services(&iso, &opts).await;
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
            || async { try_order_count(&app, &bought).await == Some(1) },
        )
        .await;
        until(
            patience,
            "the hold, expired by expire through the bridge",
            &procs,
            || async { try_status(&app, &dropped).await.as_deref() == Some("EXPIRED") },
        )
        .await;
        until(
            Duration::from_secs(30),
            "ORDERED in Redis",
            &procs,
            || async { try_status(&app, &bought).await.as_deref() == Some("ORDERED") },
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

        // Every message was acknowledged: nothing waits in the work queues.
        for q in [
            flash_sale_adapters::Queue::Orders,
            flash_sale_adapters::Queue::Expiries,
        ] {
            let name = app.sale.bus().topology().queue(q);
            until(
                Duration::from_secs(10),
                &format!("{name} empty"),
                &procs,
                || async {
                    app.sale
                        .bus()
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
    cleanup(&app, &iso).await.unwrap();
}

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
    let app = services(&iso, &opts).await;
    let release = std::env::var("WATCH_RELEASE").is_ok_and(|v| v == "1");
    let expired = app
        .sale
        .bus()
        .topology()
        .queue(flash_sale_adapters::Queue::Expiries);
    let orders = app
        .sale
        .bus()
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
        .unwrap_or_else(|_| root().join("target"))
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
                .current_dir(root())
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
    cleanup(&app, &iso).await.unwrap();
}

/// `cfn-lint` on template.yaml (installed from PyPI when missing).
#[test]
fn template_passes_cfn_lint() {
    let cfn_lint = |args: &[&str]| {
        Command::new("cfn-lint")
            .args(args)
            .current_dir(root())
            .output()
    };
    if cfn_lint(&["--version"]).is_err() {
        let pip = if Command::new("pip3").arg("--version").output().is_ok() {
            "pip3"
        } else {
            "pip"
        };
        let status = Command::new(pip)
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "cfn-lint",
            ])
            .status()
            .expect("pip is needed to install cfn-lint");
        assert!(status.success(), "pip install cfn-lint failed");
        let _ = Command::new("pyenv").arg("rehash").status();
    }
    let out = cfn_lint(&["template.yaml"]).expect("running cfn-lint");
    assert!(
        out.status.success(),
        "cfn-lint template.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
