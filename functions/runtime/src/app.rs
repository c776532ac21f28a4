//! The wired application: the core's [`Sale`] over the real adapters, built once per cold
//! start (or once per local process) and shared by every invocation.

use std::sync::Arc;

use anyhow::Context as _;
use flash_sale_adapters::{Broker, Postgres, RedisSeats, Topology};
use flash_sale_core::{Sale, SaleSettings};

use crate::Config;

/// The sale over Redis, RabbitMQ and PostgreSQL.
pub type Services = Sale<RedisSeats, Broker, Postgres>;

/// What a handler gets: the services and the configuration they were built from.
#[derive(Clone, Debug)]
pub struct App {
    pub sale: Arc<Services>,
    pub config: Arc<Config>,
}

impl App {
    /// Connects to the three services (each failure names its service), applies the
    /// database migrations and declares the queues. Both are idempotent, so every cold
    /// start may do it.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let topology = Topology {
            prefix: config.queue_prefix.clone(),
            hold: config.hold,
            delivery_limit: config.delivery_limit,
        };
        let (seats, bus, db) = tokio::join!(
            RedisSeats::connect(&config.redis_url, &config.redis_key_prefix),
            Broker::connect(&config.amqp_url, topology),
            Postgres::connect(&config.database_url),
        );
        let seats = seats.context("Redis (REDIS_URL) is not reachable")?;
        let bus = bus
            .context("RabbitMQ (AMQP_URL) is not reachable")?
            .hand_over_hold_messages(config.hand_over_hold_messages);
        let db = db.context("PostgreSQL (DATABASE_URL) is not reachable")?;
        db.migrate().await.context("PostgreSQL migrations failed")?;
        let settings = SaleSettings {
            hold: config.hold,
            payment: config.payment_mode,
            sold_out_cache: config.sold_out_cache,
        };
        Ok(Self {
            sale: Arc::new(Sale::new(seats, bus, db, settings)),
            config: Arc::new(config),
        })
    }

    /// Reads the environment and connects: what every function's `main` does first.
    pub async fn from_env() -> anyhow::Result<Self> {
        let config = Config::from_env()?;
        Self::connect(config).await
    }
}
