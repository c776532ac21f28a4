//! The [`WaitingRoomStore`] on Redis: each showtime's room in its own slot, beside its
//! seats (`<prefix>:{42}:room`, `:room:places`, `:room:admitted`, and `:seats` read by
//! admission, `:users` by a passed buyer's join). Every step is one script:
//! `lua/room.lua`, the shared part, followed by the step's own file.
//!
//! Joins and standings are committed in groups: a crowd joins at the rate it arrives,
//! thousands a second, and at the opening every early joiner's first poll asks Redis for
//! the place the lottery gave them; each script call costs Redis and this client more
//! than the user it serves. The joins (and, apart, the standings) that reach this process
//! while its previous group is in Redis leave together, one script call per showtime
//! (one slot: Redis Cluster safe) that advances the room for all, and each caller still
//! waits for its own standing. Nothing waits to fill a group: a lone ask leaves at once,
//! and groups grow only while Redis is busy.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use flash_sale_core::domain::SaleWindow;
use flash_sale_core::ports::{PortError, PortResult};
use flash_sale_core::waiting_room::{
    Joined, LOTTERY_RANGE, RoomSettings, RoomSnapshot, Standing, WaitingRoomStore,
};
use flash_sale_core::{ShowtimeId, UnixMillis, UserId};
use futures::future::join_all;
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use crate::redis_connection::RedisConnection;
use crate::redis_seats::{COMPONENT, int_reply, port_error, unexpected_reply};

struct Scripts {
    configure: Script,
    join: Script,
    advance: Script,
    standing: Script,
}

/// Waiting rooms on Redis. Cheap to clone: clones share one connection and one group
/// committer of joins and standings.
#[derive(Clone)]
pub struct RedisRoom {
    conn: RedisConnection,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    /// The group committer's inbox, its task started by the first join or standing
    /// (inside a runtime); the task ends when the last clone of this room is dropped.
    asks: Arc<OnceLock<mpsc::UnboundedSender<Ask>>>,
}

/// Most asks taken into one round of script calls (at most two arguments each).
const MAX_GROUP: usize = 256;

/// One caller's ask, waiting for its group.
struct Ask {
    showtime: ShowtimeId,
    user: UserId,
    what: Asked,
}

enum Asked {
    /// A join with its lottery draw.
    Join(u64, oneshot::Sender<PortResult<Joined>>),
    Standing(oneshot::Sender<PortResult<InRoom>>),
}

/// A standing with the room as the same step left it (`None`: no room).
type InRoom = (Standing, Option<RoomSnapshot>);

/// One showtime's asks of one round: its joins, then its standings (after the joins, so
/// a user who joins and polls at once is found in line).
#[derive(Default)]
struct Group {
    joins: Vec<(UserId, u64, oneshot::Sender<PortResult<Joined>>)>,
    standings: Vec<(UserId, oneshot::Sender<PortResult<InRoom>>)>,
}

impl std::fmt::Debug for RedisRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRoom")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The shared part of every room script, then the step's own.
macro_rules! room_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("../../lua/room.lua"),
            "\n",
            include_str!(concat!("../../lua/", $file))
        ))
    };
}

impl RedisRoom {
    /// Rooms under `prefix` (the seat store's, whose `seats` they read) on `conn`.
    pub fn new(conn: RedisConnection, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            scripts: Arc::new(Scripts {
                configure: room_script!("room_configure.lua"),
                join: room_script!("room_join.lua"),
                advance: room_script!("room_advance.lua"),
                standing: room_script!("room_standing.lua"),
            }),
            asks: Arc::default(),
        }
    }

    /// The group committer: takes every ask waiting, up to two script calls per showtime
    /// (all showtimes at once), answers each caller, and only then takes the next group.
    async fn commit(self, mut inbox: mpsc::UnboundedReceiver<Ask>) {
        while let Some(first) = inbox.recv().await {
            let mut groups: HashMap<ShowtimeId, Group> = HashMap::new();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(ask) = next.take() {
                taken += 1;
                let group = groups.entry(ask.showtime).or_default();
                match ask.what {
                    Asked::Join(draw, answer) => group.joins.push((ask.user, draw, answer)),
                    Asked::Standing(answer) => group.standings.push((ask.user, answer)),
                }
                if taken < MAX_GROUP {
                    next = inbox.try_recv().ok();
                }
            }
            join_all(
                groups
                    .into_iter()
                    .map(|(showtime, group)| self.commit_group(showtime, group)),
            )
            .await;
        }
    }

    /// One showtime's group: one call for its joins, then one for its standings.
    async fn commit_group(&self, showtime: ShowtimeId, group: Group) {
        let mut conn = self.conn.clone();
        if !group.joins.is_empty() {
            let mut call = self.invoke(&self.scripts.join, showtime);
            for (user, draw, _) in &group.joins {
                call.arg(user.get()).arg(draw % LOTTERY_RANGE);
            }
            let reply: PortResult<Value> = call.invoke_async(&mut conn).await.map_err(port_error);
            let answers = reply.and_then(|v| joined_of(&v, group.joins.len()));
            answer_each(group.joins.into_iter().map(|(_, _, a)| a), answers);
        }
        if !group.standings.is_empty() {
            let mut call = self.invoke(&self.scripts.standing, showtime);
            for (user, _) in &group.standings {
                call.arg(user.get());
            }
            let reply: PortResult<Value> = call.invoke_async(&mut conn).await.map_err(port_error);
            let answers = reply.and_then(|v| standings_of(&v, group.standings.len()));
            answer_each(group.standings.into_iter().map(|(_, a)| a), answers);
        }
    }

    /// Hands `what` to the committer and waits for its answer.
    async fn ask<T>(
        &self,
        showtime: ShowtimeId,
        user: UserId,
        what: impl FnOnce(oneshot::Sender<PortResult<T>>) -> Asked,
    ) -> PortResult<T> {
        let inbox = self.asks.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The task holds a room without the inbox, so it ends with the last sender.
            let committer = RedisRoom {
                asks: Arc::default(),
                ..self.clone()
            };
            tokio::spawn(committer.commit(rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        let gone = || PortError::transient(COMPONENT, "the room's group committer stopped");
        inbox
            .send(Ask {
                showtime,
                user,
                what: what(answer),
            })
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    /// The room's keys, in the scripts' order.
    pub fn keys(&self, showtime: ShowtimeId) -> [String; 5] {
        let key = |what: &str| format!("{}:{{{showtime}}}:{what}", self.prefix);
        [
            key("room"),
            key("room:places"),
            key("room:admitted"),
            key("seats"),
            key("users"),
        ]
    }

    fn invoke<'a>(&self, script: &'a Script, showtime: ShowtimeId) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        for key in self.keys(showtime) {
            call.key(key);
        }
        call
    }
}

/// Each caller its own answer, or everyone the group's error.
fn answer_each<T>(
    callers: impl Iterator<Item = oneshot::Sender<PortResult<T>>>,
    answers: PortResult<Vec<T>>,
) {
    match answers {
        Ok(answers) => {
            for (caller, answer) in callers.zip(answers) {
                let _ = caller.send(Ok(answer));
            }
        }
        Err(e) => {
            for caller in callers {
                let _ = caller.send(Err(e.clone()));
            }
        }
    }
}

fn int(v: &Value) -> Option<u64> {
    int_reply(v).and_then(|i| u64::try_from(i).ok())
}

/// `room_join.lua`'s reply for `n` joins: each one's standing, or no room for any.
fn joined_of(v: &Value, n: usize) -> PortResult<Vec<Joined>> {
    let what = "room_join.lua";
    let Value::Array(items) = v else {
        return Err(unexpected_reply(what, v));
    };
    if let Some(Value::BulkString(kind)) = items.first()
        && kind.as_slice() == b"none"
    {
        return Ok((0..n).map(|_| Joined::NoRoom).collect());
    }
    if items.len() != n {
        return Err(unexpected_reply(what, v));
    }
    items
        .iter()
        .map(|item| match standing_of(what, item)? {
            Some(standing) => Ok(Joined::Standing(standing)),
            None => Ok(Joined::NoRoom),
        })
        .collect()
}

/// `room_standing.lua`'s reply for `n` users: the room's snapshot, then each one's
/// standing, given to each with the snapshot.
fn standings_of(v: &Value, n: usize) -> PortResult<Vec<InRoom>> {
    let what = "room_standing.lua";
    match v {
        Value::Array(items) if items.len() == n + 1 => {
            let room = snapshot_of(what, &items[0])?;
            items[1..]
                .iter()
                .map(|item| {
                    Ok((
                        standing_of(what, item)?.unwrap_or(Standing::NotInLine),
                        room,
                    ))
                })
                .collect()
        }
        _ => Err(unexpected_reply(what, v)),
    }
}

/// A room's snapshot as the scripts return it (see `lua/room.lua`'s `snapshot`): `None`
/// without a room.
fn snapshot_of(what: &str, v: &Value) -> PortResult<Option<RoomSnapshot>> {
    let Value::Array(items) = v else {
        return Err(unexpected_reply(what, v));
    };
    if items.is_empty() {
        return Ok(None);
    }
    let at = |i: usize| {
        items
            .get(i)
            .and_then(int)
            .ok_or_else(|| unexpected_reply(what, v))
    };
    Ok(Some(RoomSnapshot {
        served: at(0)?,
        joined: at(1)?,
        closed: at(2)? == 1,
        open: at(3)? == 1,
        opens_at: UnixMillis(at(4)?),
        salt: match items.get(5) {
            Some(Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| unexpected_reply(what, v))?,
            _ => return Err(unexpected_reply(what, v)),
        },
        front: at(6)?,
        admit_per_sec: u32::try_from(at(7)?).ok().filter(|rate| *rate > 0),
    }))
}

/// A `standing` reply of the scripts (see `lua/room.lua`).
fn standing_of(what: &str, v: &Value) -> PortResult<Option<Standing>> {
    let Value::Array(items) = v else {
        return Err(unexpected_reply(what, v));
    };
    let kind = match items.first() {
        Some(Value::BulkString(b)) => b.as_slice(),
        _ => return Err(unexpected_reply(what, v)),
    };
    let at = |i: usize| {
        items
            .get(i)
            .and_then(int)
            .ok_or_else(|| unexpected_reply(what, v))
    };
    Ok(Some(match kind {
        b"none" => return Ok(None),
        b"waiting" => Standing::Waiting,
        b"sold_out" => Standing::SoldOut,
        b"line" => {
            let place = at(1)?;
            Standing::InLine {
                place,
                ahead: place - at(2)?.min(place),
            }
        }
        b"admitted" => Standing::Admitted {
            place: at(1)?,
            until: UnixMillis(at(2)?),
        },
        b"passed" => Standing::Passed { place: at(1)? },
        _ => return Err(unexpected_reply(what, v)),
    }))
}

impl WaitingRoomStore for RedisRoom {
    async fn configure(
        &self,
        showtime: ShowtimeId,
        settings: RoomSettings,
        sale: SaleWindow,
    ) -> PortResult<()> {
        let mut conn = self.conn.clone();
        let bound = |at: Option<UnixMillis>| at.map_or(String::new(), |t| t.0.to_string());
        let _: i64 = self
            .invoke(&self.scripts.configure, showtime)
            .arg(settings.opens_at.0)
            .arg(settings.admit_per_sec.unwrap_or(0))
            .arg(settings.overbook_pct)
            .arg(settings.admission.as_millis() as u64)
            // The lottery's salt, drawn once per room (kept when it is changed).
            .arg(rand::random::<u64>().to_string())
            .arg(bound(sale.opens_at()))
            .arg(bound(sale.closes_at()))
            .arg(u8::from(sale.is_paused()))
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(())
    }

    async fn join(&self, showtime: ShowtimeId, user: UserId, draw: u64) -> PortResult<Joined> {
        self.ask(showtime, user, |answer| Asked::Join(draw, answer))
            .await
    }

    async fn advance(&self, showtime: ShowtimeId) -> PortResult<Option<RoomSnapshot>> {
        let mut conn = self.conn.clone();
        let v: Value = self
            .invoke(&self.scripts.advance, showtime)
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        snapshot_of("room_advance.lua", &v)
    }

    async fn standing(
        &self,
        showtime: ShowtimeId,
        user: UserId,
    ) -> PortResult<(Standing, Option<RoomSnapshot>)> {
        self.ask(showtime, user, Asked::Standing).await
    }

    async fn remove(&self, showtime: ShowtimeId) -> PortResult<bool> {
        let mut conn = self.conn.clone();
        let [room, places, admitted, _seats, _users] = self.keys(showtime);
        // One command over keys of one slot: the room goes at once.
        let removed: i64 = redis::cmd("DEL")
            .arg(&room)
            .arg(&places)
            .arg(&admitted)
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(removed > 0)
    }
}
