//! `cargo lambda watch` for tests (docs/lambda.md): [`Watch`], one emulator on a free port
//! with a test's data passed through the environment, [`start_bridge`] beside it, and
//! what bounds those tests: [`skipped`] (`WATCH_TESTS=skip`), [`deadline`]
//! (`WATCH_TEST_TIMEOUT_SECS`, default 900 s) and [`bounded`].

use std::future::Future;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::config::{Options, env};
use crate::isolation::Isolation;
use crate::net::free_port;
use crate::process::{ProcessTree, workspace_root};

/// `WATCH_TESTS=skip`: the emulator tests return at once (and say so).
pub fn skipped() -> bool {
    if std::env::var("WATCH_TESTS").is_ok_and(|v| v == "skip") {
        eprintln!("WATCH_TESTS=skip: not starting cargo lambda watch");
        return true;
    }
    false
}

/// How long one emulator test may take in all, its functions' first builds included.
pub fn deadline() -> Duration {
    let secs = std::env::var("WATCH_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    Duration::from_secs(secs)
}

/// Runs a test body under [`deadline`]; the processes it started are stopped by their
/// guards' `Drop` either way.
pub async fn bounded(what: &str, body: impl Future<Output = ()>) {
    let limit = deadline();
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("{what} did not finish within {limit:?} (WATCH_TEST_TIMEOUT_SECS)");
    }
}

/// `scripts/ensure-cargo-lambda`, once per test binary.
pub fn ensure_cargo_lambda() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let out = Command::new(workspace_root().join("scripts/ensure-cargo-lambda"))
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

/// One `cargo lambda watch` with its own data.
pub struct Watch {
    /// Where the emulator listens, on 127.0.0.1.
    pub port: u16,
    /// A client patient enough for a function's first build.
    pub http: reqwest::Client,
    /// The emulator and the functions it started.
    pub process: ProcessTree,
}

impl Watch {
    pub async fn start(iso: &Isolation, opts: &Options) -> Self {
        Self::start_with(iso, opts, &[]).await
    }

    pub async fn start_with(iso: &Isolation, opts: &Options, args: &[&str]) -> Self {
        ensure_cargo_lambda();
        let port = free_port();
        let mut command = Command::new(workspace_root().join("scripts/lambda-watch"));
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

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send_with(method, path, body, &[]).await
    }

    /// [`Watch::send`] with request headers.
    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method.clone(), self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
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

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Invokes `function` with `event` through `cargo lambda invoke`, as a developer
    /// would; `Err` carries the function's error.
    pub async fn cargo_lambda_invoke(
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

/// A second process with the same data: the bridge, `cargo run -p flash-sale-bridge`.
pub fn start_bridge(iso: &Isolation, opts: &Options, watch: &Watch) -> ProcessTree {
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
