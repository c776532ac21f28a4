//! TLS to every service: Redis (`rediss://`), RabbitMQ (`amqps://`) and PostgreSQL
//! (`sslmode=verify-full`) reached only over TLS, with certificates from a throwaway CA
//! that the set-up makes and that the process trusts through `REDIS_CA_FILE`,
//! `AMQP_CA_FILE` and `DATABASE_CA_FILE`. The services ([`TlsServices`]) start once for
//! this binary and accept no plain-text connection.

use std::path::Path;
use std::time::Duration;

use flash_sale_tests::{
    ClusterOptions, Isolation, Options, RedisCluster, ServerProcess, TestApp, TestCa, TlsServices,
    env, free_port, seven_thousand_buyers_for_a_hundred_seats,
};

const SERVER: &str = env!("CARGO_BIN_EXE_flash-sale-server");

/// The TLS services, started by the first test that asks (blocking, off the runtime).
async fn services() -> &'static TlsServices {
    tokio::task::spawn_blocking(TlsServices::get)
        .await
        .expect("starting the TLS services")
}

/// A test's options: every service over TLS only, trusting `ca` for each.
fn over_tls(tls: &TlsServices, iso: &Isolation, ca: &Path, base: Options) -> Options {
    Options {
        redis_url: Some(tls.redis_url()),
        amqp_url: Some(tls.amqp_url()),
        extra_env: tls.env(iso, ca),
        ..base
    }
}

/// Starts the server binary with `opts` and waits up to 60 s for it to exit: its
/// standard error, or `None` if it was still running (then it is killed).
async fn refused_start(iso: &Isolation, opts: &Options) -> Option<String> {
    let child = tokio::process::Command::new(SERVER)
        .envs(env(iso, opts))
        .env("ADDR", format!("127.0.0.1:{}", free_port()))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .ok()?
        .expect("the server's output");
    assert!(!out.status.success(), "the server exited cleanly");
    Some(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_thousand_buyers_over_tls_to_every_service_buy_exactly_a_hundred() {
    let tls = services().await;
    let iso = Isolation::new();
    let opts = over_tls(tls, &iso, &tls.ca, Options::mock_payments());
    let mut app = TestApp::spawn_on(iso, opts).await;

    seven_thousand_buyers_for_a_hundred_seats(&app).await;

    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(ssl, "the orders were read over a TLS connection");
    app.stop().await;
}

/// The shape the template deploys: ElastiCache in cluster mode with TLS (here a local
/// Redis Cluster of 3 masters and 3 replicas speaking TLS only, with a CA of its own in
/// `REDIS_CA_FILE`), RabbitMQ over `amqps` and PostgreSQL with `verify-full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_thousand_buyers_over_tls_with_a_redis_cluster_buy_exactly_a_hundred() {
    let tls = services().await;
    let dir = std::env::temp_dir().join(format!(
        "flash-sale-cluster-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new(&dir, "cluster-ca");
    let (cert, key) = ca.issue_server_cert(&dir);
    let ca_file = ca.file.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        RedisCluster::start(ClusterOptions {
            tls: Some((ca_file, cert, key)),
            ..ClusterOptions::default()
        })
    })
    .await
    .unwrap();
    assert!(cluster.url().starts_with("rediss://"), "{}", cluster.url());

    let iso = Isolation::new();
    let mut opts = over_tls(tls, &iso, &tls.ca, Options::mock_payments());
    opts.redis_url = Some(cluster.url());
    opts.extra_env
        .retain(|(name, _)| !matches!(*name, "REDIS_URL" | "REDIS_CA_FILE"));
    opts.extra_env.push(("REDIS_URL", cluster.url()));
    opts.extra_env
        .push(("REDIS_CA_FILE", ca.file.display().to_string()));
    let mut app = TestApp::spawn_on(iso, opts).await;
    assert!(app.adapters.seats.connection().is_cluster());

    seven_thousand_buyers_for_a_hundred_seats(&app).await;

    app.stop().await;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_trusting_the_right_ca_starts_and_serves_over_tls() {
    let tls = services().await;
    let iso = Isolation::new();
    let opts = over_tls(tls, &iso, &tls.ca, Options::default());
    let server = ServerProcess::start(SERVER, &iso, free_port(), &opts).await;
    let http = reqwest::Client::new();
    let showtime = server.create_showtime(&http, 3).await;
    assert!(showtime > 0);
    // Listening is not ready: its consumers connect and declare their queues over TLS
    // after the listener opens (a CI run once read 503 here straight after the create).
    flash_sale_tests::eventually(Duration::from_secs(30), "/readyz over TLS", || async {
        let ready = http.get(server.url("/readyz")).send().await.unwrap();
        (ready.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_stops_start_up_naming_the_variable() {
    let tls = services().await;
    let cases = ["REDIS_CA_FILE", "AMQP_CA_FILE", "DATABASE_CA_FILE"].map(|variable| async move {
        let iso = Isolation::new();
        let mut opts = over_tls(tls, &iso, &tls.ca, Options::default());
        opts.extra_env
            .push((variable, tls.wrong_ca.display().to_string()));
        let stderr = refused_start(&iso, &opts)
            .await
            .unwrap_or_else(|| panic!("the server started with {variable} naming another CA"));
        (variable, stderr)
    });
    for (variable, stderr) in futures::future::join_all(cases).await {
        assert!(
            stderr.contains("could not verify")
                && stderr.contains(&format!("{variable}={}", tls.wrong_ca.display())),
            "{variable}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_left_unset_stops_start_up_saying_which_variable_to_set() {
    let tls = services().await;
    let cases = ["REDIS_CA_FILE", "AMQP_CA_FILE", "DATABASE_CA_FILE"].map(|variable| async move {
        let iso = Isolation::new();
        let mut opts = over_tls(tls, &iso, &tls.ca, Options::default());
        opts.extra_env.retain(|(name, _)| *name != variable);
        let stderr = refused_start(&iso, &opts)
            .await
            .unwrap_or_else(|| panic!("the server started without {variable}"));
        (variable, stderr)
    });
    for (variable, stderr) in futures::future::join_all(cases).await {
        assert!(
            stderr.contains("could not verify") && stderr.contains(&format!("set {variable}")),
            "{variable}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_is_not_a_certificate_stops_start_up_naming_the_variable() {
    let tls = services().await;
    let not_a_ca = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    for variable in ["REDIS_CA_FILE", "AMQP_CA_FILE", "DATABASE_CA_FILE"] {
        let iso = Isolation::new();
        let mut opts = over_tls(tls, &iso, &tls.ca, Options::default());
        opts.extra_env.push((variable, not_a_ca.to_string()));
        let stderr = refused_start(&iso, &opts)
            .await
            .unwrap_or_else(|| panic!("the server started with {variable}={not_a_ca}"));
        assert!(
            stderr.contains(&format!("{variable}: no certificate")),
            "{variable}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_to_a_tls_only_port_stops_start_up_naming_the_service() {
    let tls = services().await;
    let plain = [
        (
            "REDIS_URL",
            format!("redis://127.0.0.1:{}", tls.redis_port),
            "Redis (REDIS_URL) is not reachable or not usable",
            "redis: ",
        ),
        (
            "AMQP_URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", tls.amqp_port),
            "RabbitMQ (AMQP_URL) is not reachable",
            "rabbitmq: connecting to amqp://",
        ),
        (
            "DATABASE_URL",
            format!("{}/db?sslmode=disable", tls.postgres_server()),
            "PostgreSQL (DATABASE_URL) is not reachable",
            "pg_hba.conf rejects connection",
        ),
    ];
    let cases = plain.map(|(variable, url, named, cause)| async move {
        let iso = Isolation::new();
        let mut opts = over_tls(tls, &iso, &tls.ca, Options::default());
        opts.extra_env.push((variable, url));
        let stderr = refused_start(&iso, &opts)
            .await
            .unwrap_or_else(|| panic!("the server started with a plain-text {variable}"));
        (named, cause, stderr)
    });
    for (named, cause, stderr) in futures::future::join_all(cases).await {
        assert!(
            stderr.contains(named) && stderr.contains(cause),
            "{named}: {stderr}"
        );
    }
}
