//! The catalog and the order book on PostgreSQL. Schema only through `migrations/`.
//!
//! The database has the last word on what was sold: `showtimes.sold` can never pass
//! `capacity` (a CHECK), an order is unique per reservation and per (showtime, user), and
//! orders are inserted in batches with `ON CONFLICT (reservation_id) DO NOTHING`. An
//! order carries its `quantity` (a group's seats); the database's own triggers keep
//! `sold` the sum of the rows really inserted, in the same statement, and refuse a
//! quantity above the showtime's `max_per_user` (migration `group_reservations`).

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flash_sale_core::domain::{SaleState, SaleWindow};
use flash_sale_core::ports::{
    Catalog, OrderBook, OrderOutcome, PortError, PortResult, RecordedOrder, Refusal, ShowtimeLock,
};
use flash_sale_core::waiting_room::RoomSettings;
use flash_sale_core::{
    Capacity, Creation, CreationKey, MaxPerUser, NewShowtime, OrderRequest, ReservationId,
    Showtime, ShowtimeId, UnixMillis, UserId,
};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _};

use crate::tls::Trust;

const COMPONENT: &str = "postgres";

/// A showtime's row: [`SHOWTIME_COLUMNS`].
#[derive(Debug, sqlx::FromRow)]
struct ShowtimeRow {
    title: Option<String>,
    starts_at: Option<DateTime<Utc>>,
    capacity: i32,
    sold: i32,
    sale_opens_at: Option<DateTime<Utc>>,
    sale_closes_at: Option<DateTime<Utc>>,
    sale_paused: bool,
    generation: i64,
    max_per_user: i32,
    room_opens_at: Option<DateTime<Utc>>,
    room_admit_per_sec: Option<i32>,
    room_overbook_pct: Option<i32>,
    room_admission_secs: Option<i32>,
}

/// id, reservation_id, user_id, paid_at, created_at, quantity of an order.
type OrderRow = (i64, String, i64, DateTime<Utc>, DateTime<Utc>, i32);

/// A listed showtime: its id and row.
#[derive(Debug, sqlx::FromRow)]
struct ListedShowtimeRow {
    id: i64,
    #[sqlx(flatten)]
    row: ShowtimeRow,
}

/// A showtime row's generation: its creation time in microseconds, which tells it from
/// another database's row of the same id.
const GENERATION: &str = "(extract(epoch FROM created_at) * 1000000)::bigint";

/// The columns of a [`ShowtimeRow`].
const SHOWTIME_COLUMNS: &str = "title, starts_at, capacity, sold, sale_opens_at, sale_closes_at, \
     sale_paused, (extract(epoch FROM created_at) * 1000000)::bigint AS generation, max_per_user, \
     room_opens_at, room_admit_per_sec, room_overbook_pct, room_admission_secs";

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
        // Class 08 (connection), 40 (serialization, deadlock), 53 (resources), 57
        // (shutdown), 58 (system: I/O); 25006 (a read-only server, e.g. a standby before
        // its promotion) and 55P03 (a lock not available now).
        .is_some_and(|c| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| c.starts_with(class))
                || c == "25006"
                || c == "55P03"
        });
    PortError {
        component: COMPONENT,
        transient,
        message: e.to_string(),
    }
}

/// Creates the database `options` name unless it exists, through the server's
/// maintenance database (`postgres`) with the same options, TLS included (sqlx's
/// `MigrateDatabase` takes a URL only, which cannot carry an in-memory CA). Two
/// processes may race here; the loser's "already exists" is fine.
async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let Some(database) = options.get_database().filter(|d| *d != "postgres") else {
        return Ok(());
    };
    let mut admin = options.clone().database("postgres").connect().await?;
    if !database_exists(&mut admin, database).await? {
        let create = format!("CREATE DATABASE \"{}\"", database.replace('"', "\"\""));
        if let Err(e) = sqlx::query(&create).execute(&mut admin).await
            && !database_exists(&mut admin, database).await?
        {
            return Err(e);
        }
    }
    admin.close().await
}

async fn database_exists(admin: &mut sqlx::PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(admin)
        .await
}

/// A constraint violation that no retry will fix, named as users would read it.
fn refusal(e: &sqlx::Error) -> Option<Refusal> {
    let db = e.as_database_error()?;
    let why = match db.constraint()? {
        "showtimes_sold_within_capacity" => return Some(Refusal::SoldOutInDatabase),
        "orders_one_per_user_and_showtime" => {
            "the user already has an order for this showtime under another reservation"
        }
        "orders_showtime_id_fkey" => "the showtime does not exist in the database",
        "orders_quantity_within_max_per_user" => {
            "the order takes more seats than the showtime allows one user (max_per_user)"
        }
        "orders_quantity_positive" => "the order takes no seat (quantity below 1)",
        other => return Some(Refusal::Other(format!("refused by constraint {other}"))),
    };
    Some(Refusal::Other(why.to_string()))
}

fn millis_to_time(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

impl Postgres {
    /// Inserts a showtime's row with its window, room and, when given, its creation key;
    /// `None` when the key had created a row already (nothing inserted).
    async fn insert_showtime(
        &self,
        new: NewShowtime,
        key: Option<&CreationKey>,
    ) -> PortResult<Option<Showtime>> {
        let starts_at = new
            .starts_at
            .as_deref()
            .map(DateTime::parse_from_rfc3339)
            .transpose()
            .map_err(|e| PortError::permanent(COMPONENT, format!("starts_at: {e}")))?;
        let window = new.sale_window.queued(new.waiting_room.is_some());
        let room = RoomColumns::of(new.waiting_room);
        let row = sqlx::query(&format!(
            "INSERT INTO showtimes (title, starts_at, capacity, sale_opens_at, sale_closes_at, sale_paused, max_per_user,
                                    room_opens_at, room_admit_per_sec, room_overbook_pct, room_admission_secs,
                                    created_by, creation_key, creation_fingerprint)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (created_by, creation_key) WHERE creation_key IS NOT NULL DO NOTHING
             RETURNING id, {GENERATION}"
        ))
        .bind(&new.title)
        .bind(starts_at)
        .bind(new.capacity.get() as i32)
        .bind(window.opens_at().map(|t| millis_to_time(t.0)))
        .bind(window.closes_at().map(|t| millis_to_time(t.0)))
        .bind(window.is_paused())
        .bind(new.max_per_user.get() as i32)
        .bind(room.opens_at)
        .bind(room.admit_per_sec)
        .bind(room.overbook_pct)
        .bind(room.admission_secs)
        .bind(key.and_then(|k| k.by).map_or(0, UserId::get))
        .bind(key.map(|k| k.key.as_str()))
        .bind(key.map(|k| k.fingerprint.0.as_str()))
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        let generation: i64 = row.get(1);
        Ok(Some(Showtime {
            id: ShowtimeId::new(id).map_err(|e| PortError::permanent(COMPONENT, e.0))?,
            capacity: new.capacity,
            title: new.title,
            starts_at: starts_at.map(|t| t.with_timezone(&Utc).to_rfc3339()),
            sale_window: window,
            max_per_user: new.max_per_user,
            ordered: 0,
            generation: generation as u64,
            waiting_room: new.waiting_room,
        }))
    }

    /// Connects, creating the database first when it does not exist.
    pub async fn connect(url: &str) -> PortResult<Self> {
        Self::connect_trusting(url, &Trust::system("DATABASE_CA_FILE")).await
    }

    /// [`Postgres::connect`], with `sslmode=verify-ca|verify-full` trusting the system's
    /// roots and `trust`'s CA file (`require` encrypts without verifying); a certificate
    /// that does not verify is named as such.
    pub async fn connect_trusting(url: &str, trust: &Trust) -> PortResult<Self> {
        let mut options = PgConnectOptions::from_str(url).map_err(|e| {
            PortError::permanent(
                COMPONENT,
                format!("DATABASE_URL is not a valid PostgreSQL URL: {e}"),
            )
        })?;
        if let Some(ca) = trust.ca() {
            options = options.ssl_root_cert_from_pem(ca.pem().as_bytes().to_vec());
        }
        let named = |e: sqlx::Error| match trust.explain("PostgreSQL", &e) {
            Some(message) => PortError::permanent(COMPONENT, message),
            None => port_error(e),
        };
        create_database_if_missing(&options).await.map_err(named)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(named)?;
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

    /// Whether PostgreSQL answers (a readiness probe).
    pub async fn ping(&self) -> PortResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(port_error)?;
        Ok(())
    }

    /// Records `orders` in one transaction, each judged: all in, or the error of the
    /// whole (a refusal of one fails them all).
    async fn record_together(
        &self,
        orders: &[OrderRequest],
    ) -> Result<Vec<OrderOutcome>, sqlx::Error> {
        // A redelivery can bring the same reservation twice in one batch: each id is
        // inserted once, and every copy is then judged against the row its id has.
        let mut unique: Vec<OrderRequest> = Vec::with_capacity(orders.len());
        for o in orders {
            if !unique.iter().any(|u| u.reservation == o.reservation) {
                unique.push(*o);
            }
        }
        let repeated = unique.len() < orders.len();
        let inserted = self.insert_settled(&unique, repeated).await?;
        let mut seen = Vec::with_capacity(orders.len());
        Ok(orders
            .iter()
            .map(|o| {
                let first = !seen.contains(&o.reservation);
                seen.push(o.reservation);
                inserted.outcome(o, first)
            })
            .collect())
    }

    /// [`Postgres::insert_batch`], once more when it [`lost_a_race`].
    async fn insert_settled(
        &self,
        orders: &[OrderRequest],
        owners_of_all: bool,
    ) -> Result<Inserted, sqlx::Error> {
        match self.insert_batch(orders, owners_of_all).await {
            Err(e) if lost_a_race(&e) => self.insert_batch(orders, owners_of_all).await,
            settled => settled,
        }
    }

    /// Inserts the orders not recorded yet (the database's trigger bumps `sold` by the
    /// quantities inserted, refusing the whole statement past the capacity), and says
    /// whose row each reservation id now has: the reservations inserted now, and the
    /// (user, showtime) of every row of these ids, new or old.
    async fn insert_batch(
        &self,
        orders: &[OrderRequest],
        owners_of_all: bool,
    ) -> Result<Inserted, sqlx::Error> {
        let ids: Vec<String> = orders.iter().map(|o| o.reservation.to_string()).collect();
        let showtimes: Vec<i64> = orders
            .iter()
            .map(|o| o.reservation.showtime().get())
            .collect();
        let users: Vec<i64> = orders.iter().map(|o| o.user.get()).collect();
        let paid: Vec<DateTime<Utc>> = orders.iter().map(|o| millis_to_time(o.paid_at.0)).collect();
        let quantities: Vec<i32> = orders
            .iter()
            .map(|o| i32::try_from(o.quantity).unwrap_or(i32::MAX))
            .collect();
        let mut tx = self.pool.begin().await?;
        // `sold` moves with the rows really inserted: the database's statement trigger
        // adds their quantities per showtime (one UPDATE per batch), checked against the
        // capacity, and refuses a quantity above the showtime's max_per_user.
        let inserted: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO orders (reservation_id, showtime_id, user_id, paid_at, quantity)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::int[])
             ON CONFLICT (reservation_id) DO NOTHING
             RETURNING reservation_id, showtime_id",
        )
        .bind(&ids)
        .bind(&showtimes)
        .bind(&users)
        .bind(&paid)
        .bind(&quantities)
        .fetch_all(&mut *tx)
        .await?;
        if !inserted.is_empty() {
            // An order a person replayed after fixing its refusal's cause: settled.
            let now: Vec<&str> = inserted.iter().map(|(id, _)| id.as_str()).collect();
            sqlx::query(
                "UPDATE refused_orders SET resolved_at = now()
                 WHERE reservation_id = ANY($1::text[]) AND resolved_at IS NULL",
            )
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        let owners: Vec<(String, i64, i64)> = if inserted.len() == ids.len() && !owners_of_all {
            vec![]
        } else {
            sqlx::query_as(
                "SELECT reservation_id, user_id, showtime_id FROM orders
                 WHERE reservation_id = ANY($1::text[])",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(Inserted {
            now: inserted.into_iter().map(|(id, _)| id).collect(),
            owners: owners
                .into_iter()
                .map(|(id, user, showtime)| (id, (user, showtime)))
                .collect(),
        })
    }
}

/// A unique violation on (showtime, user) may be a race lost to a writer of the very same
/// order: `ON CONFLICT (reservation_id)` checks its own index before inserting, so when two
/// transactions insert one reservation at the same moment, both pass that check, and the
/// later one then meets the earlier's row on the other unique index, waits for it to
/// commit and fails there instead of doing nothing. The earlier has committed by then, so
/// the same insert again is judged against its row: a duplicate, or (another reservation
/// of that user) a true refusal.
fn lost_a_race(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.constraint())
        .is_some_and(|c| c == "orders_one_per_user_and_showtime")
}

/// What one insert found: the reservation ids inserted now, and for the others, whose
/// row (user, showtime) holds their id.
struct Inserted {
    now: Vec<String>,
    owners: std::collections::HashMap<String, (i64, i64)>,
}

impl Inserted {
    /// The outcome of `order` (`first` of its reservation id in its batch, or a later
    /// copy): inserted now, a duplicate of a row of the same reservation, user and
    /// showtime, or refused when its id's row is someone else's.
    fn outcome(&self, order: &OrderRequest, first: bool) -> OrderOutcome {
        let id = order.reservation.to_string();
        if first && self.now.contains(&id) {
            return OrderOutcome::Inserted;
        }
        match self.owners.get(&id) {
            Some(&(user, showtime))
                if user != order.user.get() || showtime != order.reservation.showtime().get() =>
            {
                OrderOutcome::Refused(Refusal::Other(format!(
                    "reservation {id} is already recorded for another user (user {user}): \
                     the seat store handed this id out twice"
                )))
            }
            _ => OrderOutcome::Duplicate,
        }
    }
}

/// A showtime's row locked `FOR UPDATE` in an open transaction: dropped, the transaction
/// rolls back and the row is free again, unchanged.
#[derive(Debug)]
pub struct LockedShowtime {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    row: Showtime,
}

impl ShowtimeLock for LockedShowtime {
    fn showtime(&self) -> &Showtime {
        &self.row
    }

    async fn commit(
        mut self,
        capacity: Capacity,
        window: SaleWindow,
        room: Option<RoomSettings>,
    ) -> PortResult<Showtime> {
        let room = RoomColumns::of(room);
        let row: ShowtimeRow = sqlx::query_as(&format!(
            "UPDATE showtimes
             SET capacity = $2, sale_opens_at = $3, sale_closes_at = $4, sale_paused = $5,
                 room_opens_at = $6, room_admit_per_sec = $7, room_overbook_pct = $8,
                 room_admission_secs = $9
             WHERE id = $1
             RETURNING {SHOWTIME_COLUMNS}"
        ))
        .bind(self.row.id.get())
        .bind(capacity.get() as i32)
        .bind(window.opens_at().map(|t| millis_to_time(t.0)))
        .bind(window.closes_at().map(|t| millis_to_time(t.0)))
        .bind(window.is_paused())
        .bind(room.opens_at)
        .bind(room.admit_per_sec)
        .bind(room.overbook_pct)
        .bind(room.admission_secs)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(port_error)?;
        self.tx.commit().await.map_err(port_error)?;
        showtime_of(self.row.id, row)
    }
}

impl Catalog for Postgres {
    type Lock<'a> = LockedShowtime;

    async fn lock_showtime(&self, id: ShowtimeId) -> PortResult<Option<LockedShowtime>> {
        let mut tx = self.pool.begin().await.map_err(port_error)?;
        let row: Option<ShowtimeRow> = sqlx::query_as(&format!(
            "SELECT {SHOWTIME_COLUMNS} FROM showtimes WHERE id = $1 FOR UPDATE"
        ))
        .bind(id.get())
        .fetch_optional(&mut *tx)
        .await
        .map_err(port_error)?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(LockedShowtime {
                tx,
                row: showtime_of(id, row)?,
            })),
        }
    }

    /// Stores a showtime and its sale window in one `INSERT`, so no instant exists at
    /// which the showtime is on record without its window.
    async fn create_showtime(&self, new: NewShowtime) -> PortResult<Showtime> {
        match self.insert_showtime(new, None).await? {
            Some(showtime) => Ok(showtime),
            None => Err(PortError::permanent(COMPONENT, "no row inserted")),
        }
    }

    /// The key goes in with the row (`ON CONFLICT DO NOTHING` on the key's unique
    /// index): a second request under it, even one racing the first, inserts nothing and
    /// then reads the row the first wrote.
    async fn create_showtime_once(
        &self,
        new: NewShowtime,
        key: CreationKey,
    ) -> PortResult<Creation> {
        if let Some(showtime) = self.insert_showtime(new, Some(&key)).await? {
            return Ok(Creation::Created(showtime));
        }
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, creation_fingerprint FROM showtimes
             WHERE created_by = $1 AND creation_key = $2",
        )
        .bind(key.by.map_or(0, UserId::get))
        .bind(key.key.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)?;
        let Some((id, fingerprint)) = row else {
            return Err(PortError::transient(
                COMPONENT,
                "the showtime created under this key was not found; retry",
            ));
        };
        if fingerprint != key.fingerprint.0 {
            return Ok(Creation::KeyReused);
        }
        let id = ShowtimeId::new(id).map_err(|e| PortError::permanent(COMPONENT, e.0))?;
        match self.showtime(id).await? {
            Some(showtime) => Ok(Creation::Again(showtime)),
            None => Err(PortError::transient(COMPONENT, "showtime not found; retry")),
        }
    }

    async fn showtime(&self, id: ShowtimeId) -> PortResult<Option<Showtime>> {
        let row: Option<ShowtimeRow> = sqlx::query_as(&format!(
            "SELECT {SHOWTIME_COLUMNS} FROM showtimes WHERE id = $1"
        ))
        .bind(id.get())
        .fetch_optional(&self.pool)
        .await
        .map_err(port_error)?;
        row.map(|row| showtime_of(id, row)).transpose()
    }

    async fn showtimes(
        &self,
        state: Option<SaleState>,
        now: UnixMillis,
        after: Option<ShowtimeId>,
        limit: usize,
    ) -> PortResult<Vec<Showtime>> {
        let now = DateTime::<Utc>::from_timestamp_millis(now.0 as i64).unwrap_or_default();
        let rows: Vec<ListedShowtimeRow> = sqlx::query_as(&format!(
            "SELECT id, {SHOWTIME_COLUMNS}
                 FROM showtimes
                 WHERE ($1::bigint IS NULL OR id > $1)
                   AND CASE $2::text
                       WHEN 'upcoming' THEN sale_opens_at IS NOT NULL AND sale_opens_at > $3
                       WHEN 'on_sale' THEN (sale_opens_at IS NULL OR sale_opens_at <= $3)
                                       AND (sale_closes_at IS NULL OR sale_closes_at > $3)
                                       AND NOT sale_paused
                       WHEN 'paused' THEN (sale_opens_at IS NULL OR sale_opens_at <= $3)
                                       AND (sale_closes_at IS NULL OR sale_closes_at > $3)
                                       AND sale_paused
                       WHEN 'ended' THEN sale_closes_at IS NOT NULL AND sale_closes_at <= $3
                       ELSE true
                   END
                 ORDER BY id
                 LIMIT $4"
        ))
        .bind(after.map(ShowtimeId::get))
        .bind(state.map(SaleState::as_str))
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        rows.into_iter()
            .map(|listed| {
                let id =
                    ShowtimeId::new(listed.id).map_err(|e| PortError::permanent(COMPONENT, e.0))?;
                showtime_of(id, listed.row)
            })
            .collect()
    }
}

/// The [`Showtime`] of row `row` of id `id`.
fn showtime_of(id: ShowtimeId, row: ShowtimeRow) -> PortResult<Showtime> {
    let invalid = |e: flash_sale_core::InvalidInput| PortError::permanent(COMPONENT, e.0);
    let millis = |t: DateTime<Utc>| UnixMillis(t.timestamp_millis().max(0) as u64);
    let waiting_room = match (
        row.room_opens_at,
        row.room_overbook_pct,
        row.room_admission_secs,
    ) {
        (Some(opens_at), Some(overbook), Some(admission)) => Some(
            RoomSettings::new(
                millis(opens_at),
                row.room_admit_per_sec.map(|r| r.max(0) as u32),
                overbook.max(0) as u32,
                std::time::Duration::from_secs(admission.max(0) as u64),
            )
            .map_err(invalid)?,
        ),
        _ => None,
    };
    Ok(Showtime {
        id,
        capacity: Capacity::new(row.capacity.into()).map_err(invalid)?,
        title: row.title,
        starts_at: row.starts_at.map(|t| t.to_rfc3339()),
        sale_window: SaleWindow::new(
            row.sale_opens_at.map(millis),
            row.sale_closes_at.map(millis),
        )
        .map_err(invalid)?
        .paused(row.sale_paused)
        .queued(waiting_room.is_some()),
        max_per_user: MaxPerUser::new(row.max_per_user.into()).map_err(invalid)?,
        ordered: row.sold.max(0) as u32,
        generation: row.generation as u64,
        waiting_room,
    })
}

/// A waiting room's settings as the columns keep them (all `NULL`: no room).
struct RoomColumns {
    opens_at: Option<DateTime<Utc>>,
    admit_per_sec: Option<i32>,
    overbook_pct: Option<i32>,
    admission_secs: Option<i32>,
}

impl RoomColumns {
    fn of(room: Option<RoomSettings>) -> Self {
        Self {
            opens_at: room.map(|r| millis_to_time(r.opens_at.0)),
            admit_per_sec: room.and_then(|r| r.admit_per_sec).map(|r| r as i32),
            overbook_pct: room.map(|r| r.overbook_pct as i32),
            admission_secs: room.map(|r| r.admission.as_secs() as i32),
        }
    }
}

/// A part of a refused batch this small is recorded one order at a time.
const ONE_BY_ONE: usize = 8;

impl OrderBook for Postgres {
    async fn order_user(&self, reservation: ReservationId) -> PortResult<Option<UserId>> {
        let user: Option<i64> =
            sqlx::query_scalar("SELECT user_id FROM orders WHERE reservation_id = $1")
                .bind(reservation.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(port_error)?;
        user.map(|u| UserId::new(u).map_err(|e| PortError::permanent(COMPONENT, e.0)))
            .transpose()
    }

    async fn orders_of(
        &self,
        showtime: ShowtimeId,
        after: Option<u64>,
        limit: usize,
    ) -> PortResult<Vec<RecordedOrder>> {
        let rows: Vec<OrderRow> = sqlx::query_as(
            "SELECT id, reservation_id, user_id, paid_at, created_at, quantity FROM orders
             WHERE showtime_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(showtime.get())
        .bind(after.map_or(0, |a| a as i64))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        let corrupt = |what: String| PortError::permanent(COMPONENT, what);
        let millis = |t: DateTime<Utc>| UnixMillis(t.timestamp_millis().max(0) as u64);
        rows.into_iter()
            .map(|(id, reservation, user, paid_at, created_at, quantity)| {
                Ok(RecordedOrder {
                    number: id as u64,
                    order: OrderRequest {
                        reservation: reservation
                            .parse()
                            .map_err(|e: flash_sale_core::InvalidInput| corrupt(e.0))?,
                        user: UserId::new(user).map_err(|e| corrupt(e.0))?,
                        paid_at: millis(paid_at),
                        quantity: quantity.max(1) as u32,
                    },
                    recorded_at: millis(created_at),
                })
            })
            .collect()
    }

    async fn record_orders(&self, orders: &[OrderRequest]) -> PortResult<Vec<OrderOutcome>> {
        match self.record_together(orders).await {
            Ok(outcomes) => Ok(outcomes),
            Err(e) if refusal(&e).is_some() && orders.len() > 1 => {
                // One bad order must not hold the others back. The batch is halved until
                // each refused order stands alone, the first half before the second (the
                // earlier orders get the last seats, as one by one): the good halves go in
                // whole, so one bad order among thousands costs a few dozen transactions,
                // not one per order (which could outlast a Lambda's timeout). A small part
                // that fails goes one by one: when most orders are refused (a sale sold
                // out after Redis lost writes), halving to the end would cost twice that.
                let mut outcomes: Vec<Option<OrderOutcome>> = vec![None; orders.len()];
                let halves = |start: usize, end: usize| -> Vec<(usize, usize)> {
                    if end - start <= ONE_BY_ONE {
                        (start..end).rev().map(|i| (i, i + 1)).collect()
                    } else {
                        let mid = start + (end - start) / 2;
                        vec![(mid, end), (start, mid)]
                    }
                };
                let mut todo = halves(0, orders.len());
                while let Some((start, end)) = todo.pop() {
                    match self.record_together(&orders[start..end]).await {
                        Ok(these) => {
                            for (slot, outcome) in outcomes[start..end].iter_mut().zip(these) {
                                *slot = Some(outcome);
                            }
                        }
                        Err(e) => match refusal(&e) {
                            Some(why) if end - start == 1 => {
                                outcomes[start] = Some(OrderOutcome::Refused(why));
                            }
                            Some(_) => todo.extend(halves(start, end)),
                            None => return Err(port_error(e)),
                        },
                    }
                }
                Ok(outcomes
                    .into_iter()
                    .map(|o| o.expect("every order is judged once its part is"))
                    .collect())
            }
            Err(e) => match refusal(&e) {
                Some(why) => Ok(vec![OrderOutcome::Refused(why)]),
                None => Err(port_error(e)),
            },
        }
    }

    async fn record_refusals(
        &self,
        refusals: &[(OrderRequest, String)],
    ) -> PortResult<Vec<ReservationId>> {
        let ids: Vec<String> = refusals
            .iter()
            .map(|(o, _)| o.reservation.to_string())
            .collect();
        let showtimes: Vec<i64> = refusals
            .iter()
            .map(|(o, _)| o.reservation.showtime().get())
            .collect();
        let users: Vec<i64> = refusals.iter().map(|(o, _)| o.user.get()).collect();
        let paid: Vec<DateTime<Utc>> = refusals
            .iter()
            .map(|(o, _)| millis_to_time(o.paid_at.0))
            .collect();
        let reasons: Vec<&str> = refusals.iter().map(|(_, why)| why.as_str()).collect();
        let quantities: Vec<i32> = refusals
            .iter()
            .map(|(o, _)| i32::try_from(o.quantity.max(1)).unwrap_or(i32::MAX))
            .collect();
        let new: Vec<String> = sqlx::query_scalar(
            "INSERT INTO refused_orders (reservation_id, showtime_id, user_id, paid_at, reason, quantity)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::text[], $6::int[])
             ON CONFLICT (reservation_id) DO NOTHING
             RETURNING reservation_id",
        )
        .bind(&ids)
        .bind(&showtimes)
        .bind(&users)
        .bind(&paid)
        .bind(&reasons)
        .bind(&quantities)
        .fetch_all(&self.pool)
        .await
        .map_err(port_error)?;
        Ok(new.into_iter().filter_map(|id| id.parse().ok()).collect())
    }
}
