//! One test's names, kept apart from every other test's, and removing what a test made.

use anyhow::Context as _;
use flash_sale_runtime::Adapters;
use rand::Rng as _;
use sqlx::PgPool;

/// The local Redis, unless `REDIS_URL` says otherwise.
pub const REDIS: &str = "redis://127.0.0.1:6379";
/// The local PostgreSQL server (without a database), unless `DATABASE_SERVER_URL` says
/// otherwise.
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
/// The local RabbitMQ, unless `AMQP_URL` says otherwise.
pub const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `var` from the environment, or `default`.
pub fn server_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Names that keep one test's data apart from every other's: its own database, and one
/// prefix for its Redis keys and its queues.
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

    /// The test's database on the local server (or `DATABASE_SERVER_URL`).
    pub fn database_url(&self) -> String {
        self.database_url_on(&server_url("DATABASE_SERVER_URL", POSTGRES))
    }

    /// The test's database on `server` (`postgres://user@host:port`).
    pub fn database_url_on(&self, server: &str) -> String {
        format!("{server}/{}", self.database)
    }
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes a test's queues, Redis keys and database. Redis is reached over a connection
/// of its own, and the database dropped from the server's `postgres` database: a test may
/// have cut the adapters' own connections.
pub async fn cleanup(adapters: &Adapters, iso: &Isolation) -> anyhow::Result<()> {
    adapters
        .bus
        .delete_topology()
        .await
        .context("deleting queues")?;
    let client = redis::Client::open(server_url("REDIS_URL", REDIS))?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
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
    adapters.db.pool().close().await;
    drop_database(&iso.database).await
}

/// Drops a test database, whoever is still connected to it.
pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let admin = PgPool::connect(&format!(
        "{}/postgres",
        server_url("DATABASE_SERVER_URL", POSTGRES)
    ))
    .await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
