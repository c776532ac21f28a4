//! The [`WaitingRoomStore`] on Redis: each showtime's room in its own slot, beside its
//! seats (`<prefix>:{42}:room`, `:room:places`, `:room:admitted`, and `:seats` read by
//! admission). Every step is one script: `lua/room.lua`, the shared part, followed by the
//! step's own file.
//!
//! Joins are committed in groups: a crowd joins at the rate it arrives, thousands a
//! second, and each script call costs Redis and this client more than the user it adds.
//! The joins that reach this process while its previous group is in Redis leave
//! together, one script call per showtime (one slot: Redis Cluster safe), and each
//! caller still waits for its own standing. Nothing waits to fill a group: a lone join
//! leaves at once, and groups grow only while Redis is busy.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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
/// committer of joins.
#[derive(Clone)]
pub struct RedisRoom {
    conn: RedisConnection,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    /// The group committer's inbox, its task started by the first join (inside a
    /// runtime); the task ends when the last clone of this room is dropped.
    joins: Arc<OnceLock<mpsc::UnboundedSender<JoinAsk>>>,
}

/// Most joins in one script call (two arguments each).
const MAX_GROUP: usize = 256;

/// One caller's join, waiting for its group.
struct JoinAsk {
    showtime: ShowtimeId,
    user: UserId,
    draw: u64,
    answer: oneshot::Sender<PortResult<Joined>>,
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
            joins: Arc::default(),
        }
    }

    /// The group committer: takes every join waiting, one script call per showtime (all
    /// showtimes at once), answers each caller, and only then takes the next group.
    async fn commit_joins(self, mut inbox: mpsc::UnboundedReceiver<JoinAsk>) {
        while let Some(first) = inbox.recv().await {
            let mut groups: HashMap<ShowtimeId, Vec<JoinAsk>> = HashMap::new();
            let mut taken = 1;
            groups.entry(first.showtime).or_default().push(first);
            while taken < MAX_GROUP
                && let Ok(ask) = inbox.try_recv()
            {
                taken += 1;
                groups.entry(ask.showtime).or_default().push(ask);
            }
            join_all(
                groups
                    .into_iter()
                    .map(|(showtime, asks)| self.join_group(showtime, asks)),
            )
            .await;
        }
    }

    /// One script call for `asks`, all of `showtime`, in their order.
    async fn join_group(&self, showtime: ShowtimeId, asks: Vec<JoinAsk>) {
        let mut conn = self.conn.clone();
        let mut call = self.invoke(&self.scripts.join, showtime);
        for ask in &asks {
            call.arg(ask.user.get()).arg(ask.draw % LOTTERY_RANGE);
        }
        let reply: PortResult<Value> = call.invoke_async(&mut conn).await.map_err(port_error);
        let answers = reply.and_then(|v| joined_of(&v, asks.len()));
        match answers {
            Ok(answers) => {
                for (ask, joined) in asks.into_iter().zip(answers) {
                    let _ = ask.answer.send(Ok(joined));
                }
            }
            Err(e) => {
                for ask in asks {
                    let _ = ask.answer.send(Err(e.clone()));
                }
            }
        }
    }

    /// The room's keys, in the scripts' order.
    pub fn keys(&self, showtime: ShowtimeId) -> [String; 4] {
        let key = |what: &str| format!("{}:{{{showtime}}}:{what}", self.prefix);
        [
            key("room"),
            key("room:places"),
            key("room:admitted"),
            key("seats"),
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
    async fn configure(&self, showtime: ShowtimeId, settings: RoomSettings) -> PortResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .invoke(&self.scripts.configure, showtime)
            .arg(settings.opens_at.0)
            .arg(settings.admit_per_sec.unwrap_or(0))
            .arg(settings.overbook_pct)
            .arg(settings.admission.as_millis() as u64)
            // The lottery's salt, drawn once per room (kept when it is changed).
            .arg(rand::random::<u64>().to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(())
    }

    async fn join(&self, showtime: ShowtimeId, user: UserId, draw: u64) -> PortResult<Joined> {
        let inbox = self.joins.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The task holds a room without the inbox, so it ends with the last sender.
            let committer = RedisRoom {
                joins: Arc::default(),
                ..self.clone()
            };
            tokio::spawn(committer.commit_joins(rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        let ask = JoinAsk {
            showtime,
            user,
            draw,
            answer,
        };
        let gone = || PortError::transient(COMPONENT, "the join committer stopped");
        inbox.send(ask).map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }

    async fn advance(&self, showtime: ShowtimeId) -> PortResult<Option<RoomSnapshot>> {
        let mut conn = self.conn.clone();
        let v: Value = self
            .invoke(&self.scripts.advance, showtime)
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        let what = "room_advance.lua";
        let Value::Array(items) = &v else {
            return Err(unexpected_reply(what, &v));
        };
        if items.is_empty() {
            return Ok(None);
        }
        let at = |i: usize| {
            items
                .get(i)
                .and_then(int)
                .ok_or_else(|| unexpected_reply(what, &v))
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
                    .ok_or_else(|| unexpected_reply(what, &v))?,
                _ => return Err(unexpected_reply(what, &v)),
            },
        }))
    }

    async fn standing(&self, showtime: ShowtimeId, user: UserId) -> PortResult<Standing> {
        let mut conn = self.conn.clone();
        let v: Value = self
            .invoke(&self.scripts.standing, showtime)
            .arg(user.get())
            .invoke_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(standing_of("room_standing.lua", &v)?.unwrap_or(Standing::NotInLine))
    }

    async fn remove(&self, showtime: ShowtimeId) -> PortResult<()> {
        let mut conn = self.conn.clone();
        let [room, places, admitted, _seats] = self.keys(showtime);
        // One command over keys of one slot: the room goes at once.
        let _: i64 = redis::cmd("DEL")
            .arg(&room)
            .arg(&places)
            .arg(&admitted)
            .query_async(&mut conn)
            .await
            .map_err(port_error)?;
        Ok(())
    }
}
