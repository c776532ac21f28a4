//! Test harness for the one-process server: [`TestApp::spawn`] runs the real server on a
//! random port against the real PostgreSQL, Redis and RabbitMQ, isolated per test by its
//! own database, Redis key prefix and queue prefix, so tests run in parallel and in any
//! order. What the function crates' tests share with these (isolation, options, the wired
//! app with its adapters, polling, the `cargo lambda watch` harness) is the test kit,
//! `flash_sale_test_support`, re-exported here where these tests use it by name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use flash_sale_runtime::identity::sign_hs256;
use flash_sale_runtime::{Adapters, App};
pub use flash_sale_test_support::{
    ClusterOptions, Cuttable, Isolation, NginxFront, Options, OtlpReceiver, PrometheusServer,
    RabbitNode, ReceivedSpan, RedisCluster, RedisServer, TEST_JWT_AUDIENCE, TEST_JWT_ISSUER,
    TEST_JWT_SECRET, TestCa, TlsServices, assert_error, cleanup, config, drop_database, env,
    eventually, free_port, promptly, test_claims, wire, workspace_root,
};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and what a test needs to look behind it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub app: App,
    /// The adapters `app` was built on: raw Redis keys, queue depths, SQL.
    pub adapters: Adapters,
    /// `adapters.db`'s pool.
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
        let (app, adapters) = wire(config(&iso, &opts)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(flash_sale_local::serve(app.clone(), listener, async {
            let _ = stopped.await;
        }));
        let db = adapters.db.pool().clone();
        Self {
            addr,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            app,
            adapters,
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

    /// Makes the next hold's expiry unroutable (its delay queue deleted): the broker
    /// returns the publish after a take, so the reserve fails and gives its seat back,
    /// and the server declares the queue again. Both connections are opened first: a new
    /// connection declares the topology, queue included.
    pub async fn break_expiry_queue(&self) {
        let bus = &self.adapters.bus;
        bus.ping().await.expect("both broker connections open");
        let ch = bus.channel().await.expect("a channel");
        ch.queue_delete(
            bus.topology().delay_queue().as_str().into(),
            Default::default(),
        )
        .await
        .expect("the delay queue deleted");
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

    /// `DELETE /reservations/{reservation}` as `user` (in the body, `AUTH_MODE=none`).
    pub async fn cancel(&self, reservation: &str, user: i64) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(
                self.http
                    .delete(self.url(&format!("/reservations/{reservation}")))
                    .json(&json!({"user_id": user})),
                None,
            )
            .await;
        (status, body)
    }

    /// `PATCH /showtimes/{showtime}` with `body`, as the holder of `token` if given.
    pub async fn change_showtime(
        &self,
        showtime: i64,
        body: Value,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(
                self.http
                    .patch(self.url(&format!("/showtimes/{showtime}")))
                    .json(&body),
                token,
            )
            .await;
        (status, body)
    }

    /// Creates a showtime of `capacity` seats as an admin (`AUTH_MODE=jwt`).
    pub async fn create_showtime_as_admin(&self, capacity: u32) -> i64 {
        let (status, body) = self
            .post_as(
                &self.admin_token(),
                "/showtimes",
                json!({"capacity": capacity}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// A bearer token for `user`, valid for an hour, signed with [`TEST_JWT_SECRET`].
    pub fn token(&self, user: i64) -> String {
        sign_hs256(TEST_JWT_SECRET.as_bytes(), &test_claims(user, 3600))
    }

    /// A bearer token for an admin (user 1 with `"role": "admin"`).
    pub fn admin_token(&self) -> String {
        let mut claims = test_claims(1, 3600);
        claims.role = Some("admin".into());
        sign_hs256(TEST_JWT_SECRET.as_bytes(), &claims)
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

    /// Showtimes in this test's database (what a refused request must not have added).
    pub async fn showtimes_in_db(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM showtimes")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn status_of(&self, reservation: &str) -> String {
        let (status, r) = self.get(&format!("/reservations/{reservation}")).await;
        assert_eq!(status, StatusCode::OK, "{r}");
        r["status"].as_str().unwrap().to_string()
    }

    /// Waits until `queue` has no ready message left (consumed, not necessarily acked).
    pub async fn until_drained(&self, queue: flash_sale_adapters::Queue) {
        let bus = &self.adapters.bus;
        let name = bus.topology().queue(queue);
        eventually(
            Duration::from_secs(30),
            &format!("{name} to drain"),
            || async { (bus.ready_count(&name).await.unwrap() == 0).then_some(()) },
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
        cleanup(&self.adapters, &self.iso).await.expect("cleanup");
    }
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

/// The one-process server as a real child process (the tests package's
/// `flash-sale-server` binary, whose path a test passes as
/// `env!("CARGO_BIN_EXE_flash-sale-server")`), on `port`, with `iso`'s data: for tests
/// that kill it, stop it with a signal, or read its process-wide metrics.
pub struct ServerProcess {
    child: tokio::process::Child,
    pub port: u16,
}

impl ServerProcess {
    /// Starts it with `opts` (and `extra` variables) and waits until it listens.
    pub async fn start(binary: &str, iso: &Isolation, port: u16, opts: &Options) -> Self {
        Self::start_with(binary, iso, port, opts, &[]).await
    }

    pub async fn start_with(
        binary: &str,
        iso: &Isolation,
        port: u16,
        opts: &Options,
        extra: &[(&str, &str)],
    ) -> Self {
        let child = tokio::process::Command::new(binary)
            .envs(env(iso, opts))
            .env("ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the server binary starts");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(60), "the server to listen", || {
            let http = http.clone();
            async move {
                http.get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        Self { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Creates a showtime of `capacity` seats (the server trusts its caller: `AUTH_MODE`
    /// none) and returns its id.
    pub async fn create_showtime(&self, http: &reqwest::Client, capacity: i64) -> i64 {
        let created: Value = http
            .post(self.url("/showtimes"))
            .json(&json!({"capacity": capacity}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["id"].as_i64().expect("a showtime id")
    }

    /// SIGKILL: no graceful shutdown, no flush, no acks.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// SIGTERM: the graceful stop a platform asks for.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits for the process to end; whether it ended cleanly.
    pub async fn exited_cleanly(&mut self) -> bool {
        self.child.wait().await.is_ok_and(|s| s.success())
    }
}

/// Requests in flight at once from a test crowd (keep-alive connections).
pub const IN_FLIGHT: usize = 200;

/// Sends every `(user, showtime)` of `attempts` to `POST /reserve`, [`IN_FLIGHT`] at a
/// time, and returns every answer.
pub async fn reserve_all(app: &TestApp, attempts: Vec<(i64, i64)>) -> Vec<(StatusCode, Value)> {
    futures::stream::iter(attempts)
        .map(|(user, showtime)| app.reserve(user, showtime))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// Waits until `expected` orders of `showtime` are in PostgreSQL, then checks that no
/// seat is left or held and that the database's `sold` says the same.
pub async fn wait_for_orders(app: &TestApp, showtime: i64, expected: i64) {
    eventually(
        Duration::from_secs(60),
        "every paid seat to become an order",
        || async { (app.orders(showtime).await == expected).then_some(()) },
    )
    .await;
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!((available, held, sold), (0, 0, expected));
    let recorded: i32 = sqlx::query_scalar("SELECT sold FROM showtimes WHERE id = $1")
        .bind(showtime)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(i64::from(recorded), expected);
}

/// The Go reference's seed scenario on `app` (which must pay in `mock` mode): 7,000
/// users press "buy" for a showtime of 100 seats; exactly 100 are reserved, 6,900 told
/// "Tickets sold out", and 100 orders of 100 different users land in PostgreSQL.
pub async fn seven_thousand_buyers_for_a_hundred_seats(app: &TestApp) {
    let showtime = app.create_showtime(100).await;

    let answers = reserve_all(app, (1..=7000).map(|user| (user, showtime)).collect()).await;

    let counts = tally(&answers);
    assert_eq!(counts.get(&(200, "ok".into())), Some(&100), "{counts:?}");
    assert_eq!(
        counts.get(&(409, "sold_out".into())),
        Some(&6900),
        "{counts:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .all(|(_, b)| b["message"].as_str().unwrap().contains("Tickets sold out"))
    );
    wait_for_orders(app, showtime, 100).await;
    let buyers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT user_id) FROM orders WHERE showtime_id = $1")
            .bind(showtime)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(buyers, 100);
}

/// The Go reference's second scenario on `app` (paying in `mock` mode), on a showtime of
/// 10 seats: one user presses "buy" 20 times at once; one hold, 19 "Already ordered", one
/// order, and the seats read `(9, 0, 1)`.
pub async fn one_user_pressing_buy_twenty_times(app: &TestApp, showtime: i64) {
    let answers = reserve_all(app, vec![(42, showtime); 20]).await;

    let counts = tally(&answers);
    assert_eq!(counts.get(&(200, "ok".into())), Some(&1), "{counts:?}");
    assert_eq!(
        counts.get(&(409, "already_ordered".into())),
        Some(&19),
        "{counts:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .all(|(_, b)| b["message"].as_str().unwrap().contains("Already ordered"))
    );
    eventually(Duration::from_secs(30), "the one order", || async {
        (app.orders(showtime).await == 1).then_some(())
    })
    .await;
    let (available, held, sold) = app.seats(showtime).await;
    assert_eq!((available, held, sold), (9, 0, 1));
}

/// The Go reference's third scenario on `app` (paying in `mock` mode), on three
/// showtimes of 50 seats: 1,000 users per showtime, interleaved so every showtime is hit
/// at once; each sells exactly 50, the other 2,850 are told sold out, 150 orders land.
pub async fn three_showtimes_sell_out_independently(app: &TestApp, showtimes: &[i64]) {
    assert_eq!(showtimes.len(), 3);
    let attempts: Vec<(i64, i64)> = (1..=1000)
        .flat_map(|user| showtimes.iter().map(move |s| (user, *s)))
        .collect();

    let answers = reserve_all(app, attempts).await;

    for showtime in showtimes {
        let won = answers
            .iter()
            .filter(|(s, b)| *s == StatusCode::OK && b["showtime_id"].as_i64() == Some(*showtime))
            .count();
        assert_eq!(won, 50, "showtime {showtime}");
    }
    assert_eq!(
        tally(&answers).get(&(409, "sold_out".into())),
        Some(&(3 * 950))
    );
    for showtime in showtimes {
        wait_for_orders(app, *showtime, 50).await;
    }
}

/// Waits (at most 10 s) until exactly one other session of the test's database is
/// waiting as `condition` (SQL over `pg_stat_activity`) says: a statement held at a
/// [`DoorGate`] (`wait_event = 'advisory'`) or behind a row lock.
pub async fn until_one_waits(db: &PgPool, what: &str, condition: &str) {
    let query = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {condition}"
    );
    eventually(Duration::from_secs(10), what, || async {
        let waiting: i64 = sqlx::query_scalar(&query)
            .fetch_one(db)
            .await
            .expect("pg_stat_activity");
        (waiting == 1).then_some(())
    })
    .await;
}

/// A gate at the database's door, held by the test: the statements a trigger names wait
/// at it until [`DoorGate::open`]. The trigger waits on an advisory lock the gate's own
/// connection holds, keyed by the test's database (advisory locks are server-wide, and
/// the tests run in parallel). A transaction that sets `test.gate` to `open` goes
/// through.
pub struct DoorGate {
    held: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

impl DoorGate {
    /// Shuts the gate before the statements `on` names, e.g. `BEFORE INSERT ON orders FOR
    /// EACH STATEMENT` or `BEFORE UPDATE ON showtimes FOR EACH ROW`.
    pub async fn shut(db: &PgPool, name: &str, on: &str) -> Self {
        let mut held = db.acquire().await.expect("a connection to hold the gate");
        sqlx::query("SELECT pg_advisory_lock(hashtext(current_database()))")
            .execute(&mut *held)
            .await
            .expect("the gate's lock");
        let function = format!(
            "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF coalesce(current_setting('test.gate', true), '') <> 'open' THEN
                 PERFORM pg_advisory_lock_shared(hashtext(current_database()));
                 PERFORM pg_advisory_unlock_shared(hashtext(current_database()));
               END IF;
               RETURN NEW;
             END $$"
        );
        let trigger = format!("CREATE TRIGGER {name} {on} EXECUTE FUNCTION {name}()");
        for ddl in [function, trigger] {
            sqlx::query(&ddl)
                .execute(db)
                .await
                .expect("the gate's trigger");
        }
        Self { held }
    }

    /// Opens the gate: every statement waiting at it goes on.
    pub async fn open(mut self) {
        sqlx::query("SELECT pg_advisory_unlock(hashtext(current_database()))")
            .execute(&mut *self.held)
            .await
            .expect("the gate opened");
    }
}
