//! A function's wired `App` for one test, with the adapters it was built on beside it:
//! the use cases through `app.sale`, and raw Redis keys, SQL and queue depths through
//! `adapters` (production code never gets them).

use flash_sale_adapters::Queue;
use flash_sale_core::{Capacity, NewShowtime, SeatCounts, ShowtimeId, UserId};
use flash_sale_runtime::{Adapters, App, Config};

use crate::config::{Options, config};
use crate::isolation::{Isolation, cleanup};
use crate::net::Cuttable;

/// Connects an `App` for `config` (migrations and queue declarations included) and
/// hands back its adapters with it.
pub async fn wire(config: Config) -> (App, Adapters) {
    App::connect_with_adapters(config)
        .await
        .expect("the services are up (scripts/services starts them)")
}

/// A function's wired `App` on a test's own database, key prefix and queues, as its
/// handlers get it, and its adapters for the test to look behind the use cases.
pub struct FunctionHarness {
    pub app: App,
    pub adapters: Adapters,
    pub iso: Isolation,
}

impl FunctionHarness {
    /// A harness with the default [`Options`] on fresh data.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// A harness with `opts` on fresh data.
    pub async fn start_with(opts: Options) -> Self {
        Self::connect(Isolation::new(), &opts).await
    }

    /// A harness on `iso`'s data (which another process, e.g. a function under `cargo
    /// lambda watch`, may share).
    pub async fn connect(iso: Isolation, opts: &Options) -> Self {
        let (app, adapters) = wire(config(&iso, opts)).await;
        Self { app, adapters, iso }
    }

    /// A harness whose Redis is reached through a proxy the test can cut, and the proxy.
    pub async fn behind_cuttable_redis() -> (Cuttable, Self) {
        let proxy = Cuttable::start("127.0.0.1:6379").await;
        let harness = Self::start_with(Options {
            redis_url: Some(format!("redis://{}", proxy.addr)),
            ..Options::default()
        })
        .await;
        (proxy, harness)
    }

    pub async fn showtime(&self, capacity: i64) -> ShowtimeId {
        self.app
            .sale
            .create_showtime(NewShowtime::always_on_sale(
                Capacity::new(capacity).unwrap(),
            ))
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

    /// Orders in PostgreSQL, every showtime's.
    pub async fn orders(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(self.adapters.db.pool())
            .await
            .unwrap()
    }

    /// The name of `q` in the test's topology.
    pub fn queue(&self, q: Queue) -> String {
        self.adapters.bus.topology().queue(q)
    }

    /// Messages waiting in `q`'s dead-letter queue.
    pub async fn dead_letters(&self, q: Queue) -> u32 {
        let dlq = self.adapters.bus.topology().dead_letter_queue(q);
        self.adapters.bus.ready_count(&dlq).await.unwrap()
    }

    /// The bodies waiting in `q`'s dead-letter queue, oldest first, taken out of it.
    pub async fn take_dead_letters(&self, q: Queue) -> Vec<Vec<u8>> {
        let dlq = self.adapters.bus.topology().dead_letter_queue(q);
        let ch = self.adapters.bus.channel().await.unwrap();
        let mut bodies = vec![];
        while let Some(message) = ch
            .basic_get(dlq.as_str().into(), Default::default())
            .await
            .unwrap()
        {
            message.delivery.ack(Default::default()).await.unwrap();
            bodies.push(message.delivery.data.clone());
        }
        bodies
    }

    /// Removes the test's queues, keys and database (see [`cleanup`]).
    pub async fn cleanup(self) {
        cleanup(&self.adapters, &self.iso).await.expect("cleanup");
    }
}
