//! Test harness: [`TestApp::spawn`] runs the real one-process server on a random port
//! against the real PostgreSQL, Redis and RabbitMQ, isolated per test by its own
//! database, Redis key prefix and queue prefix, so tests run in parallel and in any
//! order. [`eventually`] polls for an outcome with a deadline instead of sleeping.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use flash_sale_runtime::{App, Config};
use rand::Rng as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a test wants its server configured; everything else is the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    pub hold_secs: u64,
    pub payment: &'static str,
    pub mock_delay: &'static str,
    pub sweep_interval_secs: u64,
    pub sweep_grace_secs: u64,
    pub delivery_limit: u32,
    /// `AUTH_MODE`: `"none"` (the default: the body's user_id is trusted) or `"jwt"`
    /// (tokens signed with [`TEST_JWT_SECRET`]; see [`TestApp::token`]).
    pub auth_mode: &'static str,
    /// Per-user rate limit `(per second, burst)`; `None` keeps the server's default.
    pub rate_user: Option<(u32, u32)>,
    /// Per-address rate limit `(per second, burst)`; `None` keeps the server's default.
    pub rate_addr: Option<(u32, u32)>,
    /// `TRUST_FORWARDED_FOR`: take the client address from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
}

/// The HS256 secret test servers verify tokens with.
pub const TEST_JWT_SECRET: &str = "flash-sale-test-secret-0123456789abcdef";

impl Default for Options {
    fn default() -> Self {
        Self {
            hold_secs: 900,
            payment: "manual",
            mock_delay: "5..30",
            sweep_interval_secs: 3600,
            sweep_grace_secs: 3600,
            delivery_limit: 5,
            auth_mode: "none",
            rate_user: None,
            rate_addr: None,
            trust_forwarded_for: false,
        }
    }
}

impl Options {
    pub fn mock_payments() -> Self {
        Self {
            payment: "mock",
            ..Self::default()
        }
    }
}

/// Names that keep one test's data apart from every other's.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub database: String,
    pub prefix: String,
}

impl Isolation {
    pub fn new() -> Self {
        let id: u64 = rand::rng().random();
        let id = format!("{id:016x}");
        Self {
            database: format!("fs_test_{id}"),
            prefix: format!("t{id}"),
        }
    }

    pub fn database_url(&self) -> String {
        format!(
            "{}/{}",
            server_url("DATABASE_SERVER_URL", "postgres://postgres@127.0.0.1:5432"),
            self.database
        )
    }
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// The environment a test server runs with (for a child process).
pub fn env(iso: &Isolation, opts: &Options) -> HashMap<&'static str, String> {
    HashMap::from([
        ("DATABASE_URL", iso.database_url()),
        (
            "REDIS_URL",
            server_url("REDIS_URL", "redis://127.0.0.1:6379"),
        ),
        (
            "AMQP_URL",
            server_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ),
        ("HOLD_TTL_SECS", opts.hold_secs.to_string()),
        ("PAYMENT_MODE", opts.payment.to_string()),
        ("MOCK_PAY_DELAY_MS", opts.mock_delay.to_string()),
        ("ADDR", "127.0.0.1:0".to_string()),
        ("REDIS_KEY_PREFIX", iso.prefix.clone()),
        ("QUEUE_PREFIX", iso.prefix.clone()),
        ("QUEUE_DELIVERY_LIMIT", opts.delivery_limit.to_string()),
        ("SWEEP_INTERVAL_SECS", opts.sweep_interval_secs.to_string()),
        ("SWEEP_GRACE_SECS", opts.sweep_grace_secs.to_string()),
        ("AUTH_MODE", opts.auth_mode.to_string()),
        ("JWT_HS256_SECRET", TEST_JWT_SECRET.to_string()),
        (
            "RATE_LIMIT_USER_PER_SEC",
            opts.rate_user.map(|q| q.0.to_string()).unwrap_or_default(),
        ),
        (
            "RATE_LIMIT_USER_BURST",
            opts.rate_user.map(|q| q.1.to_string()).unwrap_or_default(),
        ),
        (
            "RATE_LIMIT_ADDR_PER_SEC",
            opts.rate_addr.map(|q| q.0.to_string()).unwrap_or_default(),
        ),
        (
            "RATE_LIMIT_ADDR_BURST",
            opts.rate_addr.map(|q| q.1.to_string()).unwrap_or_default(),
        ),
        ("TRUST_FORWARDED_FOR", opts.trust_forwarded_for.to_string()),
    ])
}

/// The configuration a test server runs with.
pub fn config(iso: &Isolation, opts: &Options) -> Config {
    let vars = env(iso, opts);
    Config::from_lookup(|k| vars.get(k).cloned()).expect("test configuration is valid")
}

/// A running server and what a test needs to look behind it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub app: App,
    pub db: PgPool,
    pub iso: Isolation,
    pub opts: Options,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// A server with its own database, key prefix and queues.
    pub async fn spawn(opts: Options) -> Self {
        Self::spawn_on(Isolation::new(), opts).await
    }

    /// A server on existing data: a restart.
    pub async fn spawn_on(iso: Isolation, opts: Options) -> Self {
        let app = App::connect(config(&iso, &opts))
            .await
            .expect("the services are up (scripts/services starts them)");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(flash_sale_local::serve(app.clone(), listener, async {
            let _ = stopped.await;
        }));
        let db = app.sale.db().pool().clone();
        Self {
            addr,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            app,
            db,
            iso,
            opts,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends `body` (any JSON) and returns the status and the JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let res = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        Self::answer(res).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        Self::answer(res).await
    }

    async fn answer(res: reqwest::Response) -> (StatusCode, Value) {
        let status = res.status();
        let text = res.text().await.expect("body read");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer is not JSON: {status} {text:?}"));
        (status, value)
    }

    pub async fn create_showtime(&self, capacity: u32) -> i64 {
        let (status, body) = self
            .post(
                "/showtimes",
                json!({"capacity": capacity, "title": "Premiere"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn reserve(&self, user: i64, showtime: i64) -> (StatusCode, Value) {
        self.post(
            "/reserve",
            json!({"user_id": user, "showtime_id": showtime}),
        )
        .await
    }

    pub async fn pay(&self, reservation: &str, user: i64) -> (StatusCode, Value) {
        self.post(
            &format!("/reservations/{reservation}/pay"),
            json!({"user_id": user}),
        )
        .await
    }

    /// A bearer token for `user`, valid for an hour, signed with [`TEST_JWT_SECRET`].
    pub fn token(&self, user: i64) -> String {
        flash_sale_runtime::auth::sign_hs256(
            TEST_JWT_SECRET.as_bytes(),
            &flash_sale_runtime::auth::Claims::for_user(user, 3600),
        )
    }

    /// A bearer token for an admin (user 1 with `"role": "admin"`).
    pub fn admin_token(&self) -> String {
        let mut claims = flash_sale_runtime::auth::Claims::for_user(1, 3600);
        claims.role = Some("admin".into());
        flash_sale_runtime::auth::sign_hs256(TEST_JWT_SECRET.as_bytes(), &claims)
    }

    /// Sends any request, with a bearer token if given, and returns the status, the
    /// headers and the JSON answer.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let res = request.send().await.expect("request sent");
        let headers = res.headers().clone();
        let (status, body) = Self::answer(res).await;
        (status, headers, body)
    }

    /// `POST path` with `body` as the holder of `token`.
    pub async fn post_as(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(self.http.post(self.url(path)).json(&body), Some(token))
            .await;
        (status, body)
    }

    /// `GET path` as the holder of `token`.
    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.send(self.http.get(self.url(path)), Some(token)).await;
        (status, body)
    }

    /// `(available, held, sold)`, checking that they add up to the capacity.
    pub async fn seats(&self, showtime: i64) -> (i64, i64, i64) {
        let (status, s) = self.get(&format!("/showtimes/{showtime}")).await;
        assert_eq!(status, StatusCode::OK, "{s}");
        let n = |k: &str| s[k].as_i64().unwrap();
        assert_eq!(
            n("available") + n("held") + n("sold"),
            n("capacity"),
            "seats do not add up: {s}"
        );
        (n("available"), n("held"), n("sold"))
    }

    pub async fn status_of(&self, reservation: &str) -> String {
        let (status, r) = self.get(&format!("/reservations/{reservation}")).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        r["status"].as_str().unwrap().to_string()
    }

    /// Waits until `queue` has no ready message left (consumed, not necessarily acked).
    pub async fn until_drained(&self, queue: flash_sale_adapters::Queue) {
        let name = self.app.sale.bus().topology().queue(queue);
        eventually(
            Duration::from_secs(30),
            &format!("{name} to drain"),
            || async { (self.app.sale.bus().ready_count(&name).await.unwrap() == 0).then_some(()) },
        )
        .await;
    }

    pub async fn orders(&self, showtime: i64) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE showtime_id = $1")
            .bind(showtime)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Stops the server (the data stays, for a restart).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }

    /// Stops the server and removes its database, keys and queues.
    pub async fn finish(mut self) {
        self.stop().await;
        cleanup(&self.app, &self.iso).await.expect("cleanup");
    }
}

/// Removes a test's queues, Redis keys and database.
pub async fn cleanup(app: &App, iso: &Isolation) -> anyhow::Result<()> {
    app.sale
        .bus()
        .delete_topology()
        .await
        .context("deleting queues")?;
    let mut redis = app.sale.seats().connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", iso.prefix))
        .query_async(&mut redis)
        .await?;
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut redis)
            .await?;
    }
    app.sale.db().pool().close().await;
    drop_database(&iso.database).await
}

/// Drops a test database, whoever is still connected to it.
pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let admin = PgPool::connect(&format!(
        "{}/postgres",
        server_url("DATABASE_SERVER_URL", "postgres://postgres@127.0.0.1:5432")
    ))
    .await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}

/// Keeps POSTing `body` to `url` until an answer other than a dropped connection or a
/// 503 comes back, as a buyer pressing "buy" again would (for tests that kill or
/// restart what serves them).
pub async fn definite(http: &reqwest::Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(res) = http.post(url).json(body).send().await {
            let status = res.status();
            if let Ok(answer) = res.json::<Value>().await
                && status != StatusCode::SERVICE_UNAVAILABLE
            {
                return (status, answer);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no definite answer from {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after
/// `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Outcome counts of many requests, by `(status, error code)`.
pub fn tally(answers: &[(StatusCode, Value)]) -> HashMap<(u16, String), usize> {
    let mut counts = HashMap::new();
    for (status, body) in answers {
        let code = body["error"].as_str().unwrap_or("ok").to_string();
        *counts.entry((status.as_u16(), code)).or_default() += 1;
    }
    counts
}

/// Waits until the count a load publishes on `progress` reaches `target` and returns
/// it; panics with `what` if the load stops first (its sender dropped) or `deadline`
/// passes. For a test that strikes a sale once it has got that far, rather than after a
/// sleep that hopes: it wakes on each change, so a fast sale does not run far past.
pub async fn progressed(
    progress: &mut tokio::sync::watch::Receiver<usize>,
    target: usize,
    deadline: Duration,
    what: &str,
) -> usize {
    let reached = tokio::time::timeout(deadline, progress.wait_for(|&n| n >= target))
        .await
        .map(|r| r.map(|n| *n));
    let now = *progress.borrow();
    match reached {
        Ok(Ok(n)) => n,
        Ok(Err(_)) => panic!("the load stopped at {now}, short of {target}, before {what}"),
        Err(_) => panic!("timed out after {deadline:?} at {now} of {target}, waiting for {what}"),
    }
}
