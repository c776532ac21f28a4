//! Shared by the Lambda handler tests of the function crates (each includes this file
//! with `#[path]`): the wired [`App`] on the real PostgreSQL, Redis and RabbitMQ, with
//! its own database, Redis key prefix and queue prefix, and [`Cuttable`], a TCP proxy in
//! front of a service that a test cuts to make that service fail after the function
//! connected (a transient failure, as a Redis or database outage is on Lambda).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flash_sale_adapters::Queue;
use flash_sale_core::{Capacity, NewShowtime, SeatCounts, ShowtimeId, UserId};
use flash_sale_runtime::{App, Config};
use rand::Rng as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const REDIS: &str = "redis://127.0.0.1:6379";
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

fn server(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// A function's services for one test.
pub struct Services {
    pub app: App,
    pub database: String,
    pub prefix: String,
}

/// What a test may change in the function's environment.
#[derive(Default)]
pub struct Overrides {
    pub redis_url: Option<String>,
    /// The server part only (`postgres://user@host:port`); the database is the test's own.
    pub postgres_server: Option<String>,
}

impl Services {
    /// The services with Redis reached through a proxy the test can cut, and the proxy.
    pub async fn behind_cuttable_redis() -> (Cuttable, Self) {
        let proxy = Cuttable::start("127.0.0.1:6379").await;
        let services = Self::start(Overrides {
            redis_url: Some(format!("redis://{}", proxy.addr)),
            ..Overrides::default()
        })
        .await;
        (proxy, services)
    }

    pub async fn start(overrides: Overrides) -> Self {
        let id: u64 = rand::rng().random();
        let prefix = format!("h{id:016x}");
        let database = format!("fs_test_{prefix}");
        let postgres = overrides
            .postgres_server
            .unwrap_or_else(|| server("DATABASE_SERVER_URL", POSTGRES));
        let vars: HashMap<&str, String> = HashMap::from([
            ("DATABASE_URL", format!("{postgres}/{database}")),
            (
                "REDIS_URL",
                overrides
                    .redis_url
                    .unwrap_or_else(|| server("REDIS_URL", REDIS)),
            ),
            ("REDIS_KEY_PREFIX", prefix.clone()),
            ("QUEUE_PREFIX", prefix.clone()),
            ("QUEUE_DELIVERY_LIMIT", "5".into()),
        ]);
        let config =
            Config::from_lookup(|k| vars.get(k).cloned().or_else(|| std::env::var(k).ok()))
                .expect("test configuration is valid");
        let app = App::connect(config)
            .await
            .expect("the services are up (scripts/services starts them)");
        Self {
            app,
            database,
            prefix,
        }
    }

    pub async fn showtime(&self, capacity: i64) -> ShowtimeId {
        self.app
            .sale
            .create_showtime(NewShowtime {
                capacity: Capacity::new(capacity).unwrap(),
                title: None,
                starts_at: None,
            })
            .await
            .unwrap()
            .id
    }

    pub async fn hold(&self, user: i64, showtime: ShowtimeId) -> String {
        self.app
            .sale
            .reserve(UserId::new(user).unwrap(), showtime)
            .await
            .unwrap()
            .id
            .to_string()
    }

    pub async fn counts(&self, showtime: ShowtimeId) -> SeatCounts {
        self.app.sale.showtime(showtime).await.unwrap().unwrap().1
    }

    pub async fn status(&self, reservation: &str) -> String {
        self.app
            .sale
            .reservation(reservation.parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str()
            .to_string()
    }

    pub async fn orders(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(self.app.sale.db().pool())
            .await
            .unwrap()
    }

    pub fn queue(&self, q: Queue) -> String {
        self.app.sale.bus().topology().queue(q)
    }

    /// Messages waiting in `q`'s dead-letter queue.
    pub async fn dead_letters(&self, q: Queue) -> u32 {
        let dlq = self.app.sale.bus().topology().dead_letter_queue(q);
        self.app.sale.bus().ready_count(&dlq).await.unwrap()
    }

    /// Removes the test's queues, keys and database, over direct connections (a test
    /// may have cut the function's own).
    pub async fn cleanup(self) {
        let _ = self.app.sale.bus().delete_topology().await;
        if let Ok(client) = redis::Client::open(server("REDIS_URL", REDIS))
            && let Ok(mut redis) = client.get_multiplexed_async_connection().await
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("UNLINK").arg(keys).query_async(&mut redis).await;
            }
        }
        self.app.sale.db().pool().close().await;
        if let Ok(admin) = sqlx::PgPool::connect(&format!(
            "{}/postgres",
            server("DATABASE_SERVER_URL", POSTGRES)
        ))
        .await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.database
            ))
            .execute(&admin)
            .await;
        }
    }
}

/// A TCP proxy to `target` that can be cut: once cut, it closes every connection it
/// carries and accepts no new one, so the service looks down to whoever connected
/// through it.
pub struct Cuttable {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections carried right now.
    live: Arc<AtomicUsize>,
}

impl Cuttable {
    pub async fn start(target: &str) -> Self {
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let live = Arc::new(AtomicUsize::new(0));
        let counter = live.clone();
        tokio::spawn(async move {
            let mut stop = cut_rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|c| *c) => return, // drops the listener
                };
                let Ok((mut downstream, _)) = accepted else {
                    continue;
                };
                let target = target.clone();
                let mut stop = cut_rx.clone();
                let counter = counter.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
                            _ = stop.wait_for(|c| *c) => {}
                        }
                    }
                    drop(downstream);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, cut, live }
    }

    /// Closes every connection through the proxy and refuses new ones; returns once
    /// both are true.
    pub async fn cut(&self) {
        let _ = self.cut.send(true);
        let started = Instant::now();
        loop {
            let refused = TcpStream::connect(self.addr).await.is_err();
            if refused && self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the proxy did not close"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
