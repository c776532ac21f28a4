//! The wired application: the core's [`Sale`] over the real adapters, built once per cold
//! start (or once per local process) and shared by every invocation.
//!
//! Handlers reach the rules only through [`App::sale`]'s use cases. What a host needs
//! beyond them to run queue functions (consuming, dead-lettering, flushing, replaying,
//! queue depths) is the narrow [`Queues`] handle; nothing else of the adapters is handed
//! out, except to tests through [`App::connect_with_adapters`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flash_sale_adapters::{
    Broker, Postgres, Queue, RedisIdempotency, RedisRoom, RedisSeats, Topology,
};
use flash_sale_core::ports::PortResult;
use flash_sale_core::waiting_room::Rooms;
use flash_sale_core::{Sale, SaleSettings, Showtime, ShowtimeId};

use crate::Config;
use crate::room_passes::RoomPasses;

/// The sale over Redis, RabbitMQ and PostgreSQL.
pub type LiveSale = Sale<RedisSeats, Broker, Postgres>;

/// What a handler gets: the sale, the hosts' handle on the queues, and the configuration
/// they were built from.
#[derive(Clone, Debug)]
pub struct App {
    pub sale: Arc<LiveSale>,
    /// Where the answers of requests sent with an `Idempotency-Key` are kept (Redis,
    /// beside the showtime's own keys): see [`crate::idempotency`].
    pub idempotency: RedisIdempotency,
    /// The showtimes' waiting rooms (Redis, beside their seats), read through this
    /// process's snapshots.
    pub rooms: Arc<Rooms<RedisRoom>>,
    /// Signs and checks the waiting rooms' tickets and admissions.
    pub passes: Arc<RoomPasses>,
    pub queues: Queues,
    /// Whether each service answers, for a readiness route.
    pub probes: Probes,
    pub config: Arc<Config>,
}

/// The adapters an [`App`] was built on, for tests that look behind the use cases (raw
/// Redis keys, SQL, queue depths). Production hosts never take them.
#[derive(Clone, Debug)]
pub struct Adapters {
    pub seats: RedisSeats,
    pub bus: Broker,
    pub db: Postgres,
}

impl App {
    /// Connects to the three services (each failure names its service), applies the
    /// database migrations and declares the queues. Both are idempotent, so every cold
    /// start may do it.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        Ok(Self::connect_with_adapters(config).await?.0)
    }

    /// [`App::connect`], also handing back the adapters it built: for tests.
    pub async fn connect_with_adapters(config: Config) -> anyhow::Result<(Self, Adapters)> {
        let topology = Topology {
            prefix: config.queue_prefix.clone(),
            hold: config.hold,
            delivery_limit: config.delivery_limit,
        };
        let (seats, bus, db) = tokio::join!(
            RedisSeats::connect_trusting(
                &config.redis_url,
                &config.redis_key_prefix,
                &config.redis_trust
            ),
            Broker::connect_trusting(&config.amqp_url, topology, &config.amqp_trust),
            Postgres::connect_trusting(&config.database_url, &config.database_trust),
        );
        let seats = seats.context("Redis (REDIS_URL) is not reachable or not usable")?;
        let bus = bus
            .context("RabbitMQ (AMQP_URL) is not reachable")?
            .hand_over_hold_messages(config.hand_over_hold_messages)
            .hand_over_at_most(config.hand_over_limit)
            .linger(config.broker_linger)
            .confirm_within(config.broker_confirm_timeout);
        let db = db.context("PostgreSQL (DATABASE_URL) is not reachable")?;
        db.migrate().await.context("PostgreSQL migrations failed")?;
        let settings = SaleSettings {
            hold: config.hold,
            payment: config.payment_mode,
            sold_out_cache: config.sold_out_cache,
        };
        let adapters = Adapters {
            seats: seats.clone(),
            bus: bus.clone(),
            db: db.clone(),
        };
        let idempotency = RedisIdempotency::new(seats.connection(), &config.redis_key_prefix);
        let rooms = Rooms::new(
            RedisRoom::new(seats.connection(), &config.redis_key_prefix),
            config.waiting_room.refresh,
        )
        .with_polls_per_sec(config.waiting_room.polls_per_sec)
        .with_holds_per_sec(config.waiting_room.holds_per_sec);
        let passes = match &config.waiting_room.secret {
            Some(secret) => RoomPasses::new(
                secret,
                config.waiting_room.previous_secret.as_deref(),
            ),
            None => {
                tracing::warn!(
                    "WAITING_ROOM_SECRET is not set: this process signs waiting room passes with a secret of its own, which no other process accepts"
                );
                let own: [u8; 32] = rand::random();
                RoomPasses::new(&own, None)
            }
        }
        .map_err(anyhow::Error::msg)
        .context("WAITING_ROOM_SECRET")?;
        let app = Self {
            idempotency,
            rooms: Arc::new(rooms),
            passes: Arc::new(passes),
            probes: Probes {
                seats: seats.clone(),
                bus: bus.clone(),
                db: db.clone(),
            },
            sale: Arc::new(Sale::new(seats, bus.clone(), db, settings)),
            queues: Queues(bus),
            config: Arc::new(config),
        };
        Ok((app, adapters))
    }

    /// Advances the waiting room of every showtime on sale, paused or not open yet that
    /// has one (the timer beside the lazy advances of joins, polls and reserves: the
    /// local process's sweep, the scheduled reconcile function on Lambda), first setting
    /// it again from the catalog, so a room whose update was lost (an operator's change
    /// whose room step failed after its row was written, two changes whose room updates
    /// crossed, a room set up before it kept the sale's window) follows its row within
    /// one timer; a room whose row has none is removed. A room it cannot set or advance
    /// (a broken key; on a Redis Cluster, a shard that is down) is named in
    /// [`RoomsAdvanced::failed`] and the others are still done; only a catalog that does
    /// not answer fails the whole round.
    pub async fn advance_rooms(&self) -> PortResult<RoomsAdvanced> {
        use flash_sale_core::domain::SaleState;
        let mut round = RoomsAdvanced::default();
        for state in [SaleState::OnSale, SaleState::Paused, SaleState::Upcoming] {
            let mut after = None;
            loop {
                // From the catalog alone: a seat store that cannot answer for one
                // showtime must not keep the others' rooms from being set.
                let page = self.sale.catalog_page(Some(state), after, 100).await?;
                for showtime in &page {
                    match self.set_room(showtime).await {
                        Ok(RoomStep::Advanced) => round.advanced += 1,
                        Ok(RoomStep::Removed) => round.removed += 1,
                        Ok(RoomStep::Untouched) => {}
                        Err(e) => round.failed.push((showtime.id, e.to_string())),
                    }
                }
                match page.last() {
                    Some(last) if page.len() == 100 => after = Some(last.id),
                    _ => break,
                }
            }
        }
        Ok(round)
    }

    /// One showtime's step of [`App::advance_rooms`].
    async fn set_room(&self, showtime: &Showtime) -> PortResult<RoomStep> {
        use flash_sale_core::waiting_room::WaitingRoomStore as _;
        let rooms = self.rooms.store();
        match showtime.waiting_room {
            // Set from the row as it is under its lock, not as this page read it: an
            // operator may have removed or changed the room since.
            Some(_) => match self.sale.set_room_its_row_has(showtime.id, rooms).await? {
                Some(Showtime {
                    waiting_room: Some(_),
                    ..
                }) => {
                    rooms.advance(showtime.id).await?;
                    Ok(RoomStep::Advanced)
                }
                _ => Ok(RoomStep::Untouched),
            },
            // No room in the row: one left in Redis (its removal lost) would refuse every
            // buyer. Advancing tells whether there is one (and fails for good on what is
            // left of one that is broken; a store that does not answer now is tried again
            // at the next round).
            None => match rooms.advance(showtime.id).await {
                Ok(None) => Ok(RoomStep::Untouched),
                Err(e) if e.transient => Err(e),
                Ok(Some(_)) | Err(_) => {
                    let removed = self
                        .sale
                        .remove_room_its_row_lacks(showtime.id, rooms)
                        .await?;
                    Ok(if removed {
                        RoomStep::Removed
                    } else {
                        RoomStep::Untouched
                    })
                }
            },
        }
    }

    /// Reads the environment and connects: what every function's `main` does first.
    pub async fn from_env() -> anyhow::Result<Self> {
        let config = Config::from_env()?;
        Self::connect(config).await
    }
}

/// The hosts' handle on the queues: what running the queue functions takes beyond their
/// handlers. Shares the sale's connection and publishers.
#[derive(Clone, Debug)]
pub struct Queues(Broker);

impl Queues {
    /// Opens a consumer on `queue` on its own channel, with at most `prefetch`
    /// unacknowledged deliveries (the local process's event source).
    pub async fn consume(
        &self,
        queue: Queue,
        prefetch: u16,
    ) -> PortResult<(lapin::Channel, lapin::Consumer)> {
        self.0.consume(queue, prefetch).await
    }

    /// Sends a message that can never succeed to `queue`'s dead-letter queue, with the
    /// reason beside it (for hosts that cannot reject one message of a batch).
    pub async fn dead_letter(&self, queue: Queue, body: Vec<u8>, reason: &str) -> PortResult<()> {
        self.0.dead_letter(queue, body, reason).await
    }

    /// Waits, at most `within`, for the hold messages handed over so far; returns how
    /// many are still outstanding. What a stopping process does.
    pub async fn flush(&self, within: Duration) -> usize {
        self.0.flush(within).await
    }

    /// Moves up to `limit` dead letters of `queue` back to work.
    pub async fn replay_dead_letters(&self, queue: Queue, limit: usize) -> PortResult<usize> {
        self.0.replay_dead_letters(queue, limit).await
    }

    /// Messages ready in every queue of the topology, by queue name.
    pub async fn depths(&self) -> PortResult<Vec<(String, u32)>> {
        let mut depths = vec![];
        for queue in self.0.topology().queue_names() {
            let ready = self.0.ready_count(&queue).await?;
            depths.push((queue, ready));
        }
        Ok(depths)
    }
}

/// What the waiting rooms' timer did to one showtime's room.
enum RoomStep {
    Advanced,
    Removed,
    Untouched,
}

/// What one round of the waiting rooms' timer did ([`App::advance_rooms`]).
#[derive(Debug, Default)]
pub struct RoomsAdvanced {
    /// Rooms set from their row and advanced.
    pub advanced: usize,
    /// Rooms left in the seat store whose row has none (a removal whose room step was
    /// lost), removed.
    pub removed: usize,
    /// Rooms that could not be, and why (the others were).
    pub failed: Vec<(ShowtimeId, String)>,
}

/// The hosts' readiness probes: one cheap round trip to each service.
#[derive(Clone, Debug)]
pub struct Probes {
    seats: RedisSeats,
    bus: Broker,
    db: Postgres,
}

impl Probes {
    /// Each service by name, and why it did not answer.
    pub async fn check(&self) -> [(&'static str, Result<(), String>); 3] {
        let (redis, rabbitmq, postgres) =
            tokio::join!(self.seats.ping(), self.bus.ping(), self.db.ping());
        let why = |r: PortResult<()>| r.map_err(|e| e.message);
        [
            ("redis", why(redis)),
            ("rabbitmq", why(rabbitmq)),
            ("postgres", why(postgres)),
        ]
    }
}
