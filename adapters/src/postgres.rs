//! The catalog and the order book on PostgreSQL. Schema only through `migrations/`.
//!
//! The database has the last word on what was sold: `showtimes.sold` can never pass
//! `capacity` (a CHECK), an order is unique per reservation and per (showtime, user), and
//! orders are inserted in batches with `ON CONFLICT (reservation_id) DO NOTHING`, bumping
//! `sold` only for the rows really inserted, in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flash_sale_core::domain::SaleWindow;
use flash_sale_core::ports::{Catalog, OrderBook, OrderOutcome, PortError, PortResult};
use flash_sale_core::{Capacity, NewShowtime, OrderRequest, Showtime, ShowtimeId, UnixMillis};
use sqlx::Row;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgPool, PgPoolOptions};

const COMPONENT: &str = "postgres";

/// title, starts_at, capacity, sold, sale_opens_at, sale_closes_at
type ShowtimeRow = (
    Option<String>,
    Option<DateTime<Utc>>,
    i32,
    i32,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// The [`Catalog`] and [`OrderBook`] on PostgreSQL. Cheap to clone (a pool).
#[derive(Debug, Clone)]
pub struct Postgres {
    pool: PgPool,
}

fn port_error(e: sqlx::Error) -> PortError {
    let transient = matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // Class 08 (connection), 40 (serialization, deadlock), 53 (resources), 57 (shutdown).
        .is_some_and(|c| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| c.starts_with(class))
        });
    PortError {
        component: COMPONENT,
        transient,
        message: e.to_string(),
    }
}

/// A constraint violation that no retry will fix, named as users would read it.
fn refusal(e: &sqlx::Error) -> Option<String> {
    let db = e.as_database_error()?;
    let why = match db.constraint()? {
        "showtimes_sold_within_capacity" => "the showtime is sold out in the database",
        "orders_one_per_user_and_showtime" => {
            "the user already has an order for this showtime under another reservation"
        }
        "orders_showtime_id_fkey" => "the showtime does not exist in the database",
        other => return Some(format!("refused by constraint {other}")),
    };
    Some(why.to_string())
}

fn millis_to_time(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

impl Postgres {
    /// Connects, creating the database first when it does not exist.
    pub async fn connect(url: &str) -> PortResult<Self> {
        let exists = sqlx::Postgres::database_exists(url)
            .await
            .map_err(port_error)?;
        if !exists {
            // Two processes may race here; the loser's "already exists" is fine.
            if let Err(e) = sqlx::Postgres::create_database(url).await
                && !sqlx::Postgres::database_exists(url).await.unwrap_or(false)
            {
                return Err(port_error(e));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(port_error)?;
        Ok(Self { pool })
    }

    /// Applies `migrations/` (under an advisory lock, so concurrent starts are safe).
    pub async fn migrate(&self) -> PortResult<()> {
        sqlx::migrate!("../migrations")
            .run(&self.pool)
            .await
            .map_err(|e| PortError::transient(COMPONENT, format!("migration failed: {e}")))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn insert_batch(&self, orders: &[OrderRequest]) -> Result<Vec<String>, sqlx::Error> {
        let ids: Vec<String> = orders.iter().map(|o| o.reservation.to_string()).collect();
        let showtimes: Vec<i64> = orders
            .iter()
            .map(|o| o.reservation.showtime().get())
            .collect();
        let users: Vec<i64> = orders.iter().map(|o| o.user.get()).collect();
        let paid: Vec<DateTime<Utc>> = orders.iter().map(|o| millis_to_time(o.paid_at.0)).collect();
        let mut tx = self.pool.begin().await?;
        let inserted: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO orders (reservation_id, showtime_id, user_id, paid_at)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[])
             ON CONFLICT (reservation_id) DO NOTHING
             RETURNING reservation_id, showtime_id",
        )
        .bind(&ids)
        .bind(&showtimes)
        .bind(&users)
        .bind(&paid)
        .fetch_all(&mut *tx)
        .await?;
        if !inserted.is_empty() {
            let bumped: Vec<i64> = inserted.iter().map(|(_, s)| *s).collect();
            // One UPDATE per batch: `sold = sold + n` per showtime, checked against capacity.
            sqlx::query(
                "UPDATE showtimes s SET sold = s.sold + c.n
                 FROM (SELECT id, count(*)::int AS n FROM unnest($1::bigint[]) AS id GROUP BY id) c
                 WHERE s.id = c.id",
            )
            .bind(&bumped)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(inserted.into_iter().map(|(id, _)| id).collect())
    }
}

impl Catalog for Postgres {
    /// Stores a showtime and its sale window in one `INSERT`, so no instant exists at
    /// which the showtime is on record without its window.
    async fn create_showtime(&self, new: NewShowtime) -> PortResult<Showtime> {
        let starts_at = new
            .starts_at
            .as_deref()
            .map(DateTime::parse_from_rfc3339)
            .transpose()
            .map_err(|e| PortError::permanent(COMPONENT, format!("starts_at: {e}")))?;
        let window = new.sale_window;
        let row = sqlx::query(
            "INSERT INTO showtimes (title, starts_at, capacity, sale_opens_at, sale_closes_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(&new.title)
        .bind(starts_at)
        .bind(new.capacity.get() as i32)
        .bind(window.opens_at().map(|t| millis_to_time(t.0)))
        .bind(window.closes_at().map(|t| millis_to_time(t.0)))
        .fetch_one(&self.pool)
        .await
        .map_err(port_error)?;
        let id: i64 = row.get(0);
        Ok(Showtime {
            id: ShowtimeId::new(id).map_err(|e| PortError::permanent(COMPONENT, e.0))?,
            capacity: new.capacity,
            title: new.title,
            starts_at: starts_at.map(|t| t.with_timezone(&Utc).to_rfc3339()),
            sale_window: window,
            ordered: 0,
        })
    }

    async fn showtime(&self, id: ShowtimeId) -> PortResult<Option<Showtime>> {
        let row: Option<ShowtimeRow> = sqlx::query_as(
            "SELECT title, starts_at, capacity, sold, sale_opens_at, sale_closes_at
             FROM showtimes WHERE id = $1",
        )
        .bind(id.get())
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)?;
        let invalid = |e: flash_sale_core::InvalidInput| PortError::permanent(COMPONENT, e.0);
        let millis = |t: DateTime<Utc>| UnixMillis(t.timestamp_millis().max(0) as u64);
        row.map(|(title, starts_at, capacity, sold, opens, closes)| {
            Ok(Showtime {
                id,
                capacity: Capacity::new(capacity.into()).map_err(invalid)?,
                title,
                starts_at: starts_at.map(|t| t.to_rfc3339()),
                sale_window: SaleWindow::new(opens.map(millis), closes.map(millis))
                    .map_err(invalid)?,
                ordered: sold.max(0) as u32,
            })
        })
        .transpose()
    }
}

impl OrderBook for Postgres {
    async fn record_orders(&self, orders: &[OrderRequest]) -> PortResult<Vec<OrderOutcome>> {
        // A redelivery can bring the same reservation twice in one batch.
        let mut unique: Vec<OrderRequest> = Vec::with_capacity(orders.len());
        for o in orders {
            if !unique.iter().any(|u| u.reservation == o.reservation) {
                unique.push(*o);
            }
        }
        let outcome_of = |inserted: &[String], o: &OrderRequest, first: bool| {
            if first && inserted.contains(&o.reservation.to_string()) {
                OrderOutcome::Inserted
            } else {
                OrderOutcome::Duplicate
            }
        };
        match self.insert_batch(&unique).await {
            Ok(inserted) => {
                let mut seen = Vec::with_capacity(orders.len());
                Ok(orders
                    .iter()
                    .map(|o| {
                        let first = !seen.contains(&o.reservation);
                        seen.push(o.reservation);
                        outcome_of(&inserted, o, first)
                    })
                    .collect())
            }
            Err(e) if refusal(&e).is_some() && orders.len() > 1 => {
                // One bad order must not hold the others back: find it one by one.
                let mut outcomes = Vec::with_capacity(orders.len());
                let mut seen = Vec::with_capacity(orders.len());
                for o in orders {
                    let first = !seen.contains(&o.reservation);
                    seen.push(o.reservation);
                    if !first {
                        outcomes.push(OrderOutcome::Duplicate);
                        continue;
                    }
                    outcomes.push(match self.insert_batch(std::slice::from_ref(o)).await {
                        Ok(inserted) => outcome_of(&inserted, o, true),
                        Err(e) => match refusal(&e) {
                            Some(why) => OrderOutcome::Refused(why),
                            None => return Err(port_error(e)),
                        },
                    });
                }
                Ok(outcomes)
            }
            Err(e) => match refusal(&e) {
                Some(why) => Ok(vec![OrderOutcome::Refused(why)]),
                None => Err(port_error(e)),
            },
        }
    }
}
