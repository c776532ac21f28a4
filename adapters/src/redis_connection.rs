//! One connection to Redis, a single node or a Redis Cluster, chosen by what `REDIS_URL`
//! names, and the key layout the data in it was written in.
//!
//! - One URL of a single node: one multiplexed connection ([`ConnectionManager`]) that
//!   reconnects on its own, as before cluster support.
//! - One URL of a cluster node (`INFO cluster` says `cluster_enabled:1`; ElastiCache's
//!   configuration endpoint is one), or a comma-separated list of node URLs: the redis
//!   crate's cluster client, which routes each command by its first key's slot, follows
//!   `MOVED`/`ASK`, and refreshes the slot map after a failover. Every key of a showtime
//!   carries its hash tag, so each script and each pipeline stays in one slot.
//!
//! The cluster client (redis 1.8) can wedge when a master dies under load: every request
//! then times out, on every node, even after the cluster healed (seen in the failover
//! test with 100 requests in flight; at one request at a time it follows the failover).
//! So the cluster connection is watched: when no request has been answered for
//! [`WEDGED_AFTER`] while requests keep failing, a new cluster connection is built (from
//! the same client and node list) and replaces it. Requests meanwhile fail as transient
//! errors: a 503 that changed nothing, or a redelivered message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use flash_sale_core::ports::{PortError, PortResult};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::tls::Trust;

/// A connection to a single Redis or to a Redis Cluster. Cheap to clone: clones share
/// the underlying connections.
#[derive(Clone)]
pub enum RedisConnection {
    Node(ConnectionManager),
    Cluster(WatchedCluster),
}

impl RedisConnection {
    /// Whether the connection is to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => Box::pin(async move {
                let mut conn = c.current();
                let answer = conn.req_packed_command(cmd).await;
                c.observe(&answer);
                answer
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => Box::pin(async move {
                let mut conn = c.current();
                let answer = conn.req_packed_commands(pipeline, offset, count).await;
                c.observe(&answer);
                answer
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.current().get_db(),
        }
    }
}

/// How long one connection attempt and one answer may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the connection `url` names (see the module's documentation). `url_error` and
/// `failed` turn the redis crate's errors into the store's.
pub(crate) async fn open(
    url: &str,
    trust: &Trust,
    url_error: impl Fn(redis::RedisError) -> PortError,
    failed: impl Fn(redis::RedisError) -> PortError,
) -> PortResult<RedisConnection> {
    let nodes: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let explained = |e: redis::RedisError| match trust.explain("Redis", &e) {
        Some(message) => PortError::permanent(super::redis_seats::COMPONENT, message),
        None => failed(e),
    };
    let [node] = nodes.as_slice() else {
        return cluster(&nodes, trust, &url_error, &explained).await;
    };
    let client = trust.redis_client(node).map_err(&url_error)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let mut conn = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(&explained)?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut conn)
        .await
        .map_err(&explained)?;
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return cluster(&nodes, trust, &url_error, &explained).await;
    }
    Ok(RedisConnection::Node(conn))
}

async fn cluster(
    nodes: &[&str],
    trust: &Trust,
    url_error: &impl Fn(redis::RedisError) -> PortError,
    failed: &impl Fn(redis::RedisError) -> PortError,
) -> PortResult<RedisConnection> {
    let client = trust
        .redis_cluster_client(nodes, |builder| {
            builder
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                // A failover takes the cluster's node timeout plus an election (a few
                // seconds): retry for about that long, then answer with a transient
                // error (a 503 that changed nothing, or a redelivered message).
                .retries(8)
                .min_retry_wait(50)
                .max_retry_wait(1000)
                .retry_wait_formula(50, 2)
                .max_connection_attempts(std::num::NonZeroUsize::new(3).unwrap())
        })
        .map_err(url_error)?;
    let conn = client.get_async_connection().await.map_err(failed)?;
    Ok(RedisConnection::Cluster(WatchedCluster {
        inner: Arc::new(Watched {
            client,
            current: RwLock::new(conn),
            born: Instant::now(),
            last_answer_ms: AtomicU64::new(0),
            rebuilding: AtomicBool::new(false),
        }),
    }))
}

/// How long a cluster connection may go without a single answer, while requests fail,
/// before it is replaced (see the module's documentation).
pub const WEDGED_AFTER: Duration = Duration::from_secs(2);

/// A cluster connection that is replaced when it stops answering. Cheap to clone.
#[derive(Clone)]
pub struct WatchedCluster {
    inner: Arc<Watched>,
}

struct Watched {
    client: ClusterClient,
    current: RwLock<ClusterConnection>,
    born: Instant,
    /// When a request was last answered (by a reply or a server error), in ms since
    /// `born`.
    last_answer_ms: AtomicU64,
    rebuilding: AtomicBool,
}

impl WatchedCluster {
    fn current(&self) -> ClusterConnection {
        self.inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn now_ms(&self) -> u64 {
        self.inner.born.elapsed().as_millis() as u64
    }

    /// Notes an answer, or, when requests fail without one for [`WEDGED_AFTER`], starts
    /// building a new connection (one at a time).
    fn observe<T>(&self, answer: &RedisResult<T>) {
        let answered = match answer {
            Ok(_) => true,
            // The server said something: the connection works.
            Err(e) => e.code().is_some(),
        };
        let now = self.now_ms();
        if answered {
            self.inner.last_answer_ms.store(now, Ordering::Relaxed);
            return;
        }
        let silent = now.saturating_sub(self.inner.last_answer_ms.load(Ordering::Relaxed));
        if silent < WEDGED_AFTER.as_millis() as u64
            || self.inner.rebuilding.swap(true, Ordering::AcqRel)
        {
            return;
        }
        tracing::warn!(
            silent_ms = silent,
            "the Redis Cluster connection answered nothing for {WEDGED_AFTER:?}: building a new one"
        );
        let watched = self.clone();
        tokio::spawn(async move {
            match watched.inner.client.get_async_connection().await {
                Ok(fresh) => {
                    *watched
                        .inner
                        .current
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
                    watched
                        .inner
                        .last_answer_ms
                        .store(watched.now_ms(), Ordering::Relaxed);
                    tracing::info!("a new Redis Cluster connection replaced the silent one");
                }
                Err(e) => tracing::warn!(error = %e, "a new Redis Cluster connection failed"),
            }
            watched.inner.rebuilding.store(false, Ordering::Release);
        });
    }
}
