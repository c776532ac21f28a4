//! [`RedisCluster`]: a Redis Cluster of a test's own, six `redis-server` nodes on
//! consecutive ports (three masters, a replica each), started with
//! `scripts/redis-cluster`, the one script `scripts/run --cluster` and the benchmark start
//! theirs with, so the tests run on the shape people run. A test asks who serves what
//! (the masters, a key's slot and master, the commands a node ran), kills a master to
//! fail it over, and waits until the cluster is whole again.
//!
//! [`RedisCluster::start`] is a cluster of the test's own, stopped when dropped (and when
//! the test binary exits, however it exits: a killed test leaves no nodes behind).
//! [`RedisCluster::shared`] is one cluster per test binary for the tests that only use
//! it, stopped when the binary exits ([`at_exit`]), since a `static` is never dropped.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::poll::eventually_blocking;
use crate::process::{AtExit, at_exit, workspace_root};

/// Nodes in a cluster: three masters and three replicas.
const NODES: u16 = 6;
/// A node's cluster bus listens on its port + 10000, so that port must be free too.
const BUS_OFFSET: u16 = 10000;
/// The hash slots a cluster serves.
const SLOTS: u32 = 16384;
/// `scripts/redis-cluster start`'s exit code when a port is in use.
const PORT_IN_USE: i32 = 3;

/// How a test's cluster is started.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `cluster-node-timeout`: how long a node may be unreachable before the others count
    /// it as failing, so about how soon a killed master's replica takes over. Default
    /// 1000 ms (the script's own default, for people, is 2000).
    pub node_timeout_ms: u32,
    /// Listen on TLS only (clients, the cluster bus and replication), serving `cert` and
    /// `key` and trusting `ca`: `(ca, cert, key)`. The URLs are then `rediss://`, and
    /// [`RedisCluster::cli`] speaks TLS. The nodes present `cert` to one another as
    /// clients too, so it must allow client authentication as well as server
    /// authentication (the script refuses one that does not). A
    /// [`TestCa`](crate::TestCa) server certificate allows server authentication only.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            node_timeout_ms: 1000,
            tls: None,
        }
    }
}

/// A running cluster: six nodes on `base_port..base_port + 6`, in `dir/<port>`.
pub struct RedisCluster {
    dir: PathBuf,
    base_port: u16,
    url: String,
    /// The CA to verify the nodes with, when they speak TLS.
    ca: Option<PathBuf>,
    /// Stops the cluster when the test binary exits, if it was not dropped before.
    _stop: AtExit,
}

/// One line of `CLUSTER NODES`: a node as one node sees it.
struct NodeLine {
    port: u16,
    myself: bool,
    master: bool,
    /// Flagged `fail` or `fail?` (unreachable) by the node that answered.
    failing: bool,
    /// The slot ranges it serves (inclusive), as a master.
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// A cluster of the test's own: six nodes on free consecutive ports (their bus ports
    /// free too), from a random base, tried again from another base when a port was taken
    /// meanwhile. Blocks until every slot is served and every replica in sync (a few
    /// seconds).
    pub fn start(options: ClusterOptions) -> Self {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flash-sale-redis-cluster-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let script = workspace_root().join("scripts/redis-cluster");
        // Registered before anything starts, so a start that fails half-way leaks nothing.
        let stop = at_exit(&format!("'{}' stop '{}'", script.display(), dir.display()));
        let mut taken = vec![];
        for _ in 0..5 {
            let base_port = free_base_port();
            let mut command = Command::new(&script);
            command
                .arg("start")
                .arg(&dir)
                .args(["--base-port", &base_port.to_string()])
                .args(["--node-timeout", &options.node_timeout_ms.to_string()]);
            if let Some((ca, cert, key)) = &options.tls {
                command.arg("--tls").arg(ca).arg(cert).arg(key);
            }
            let out = command
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                return Self {
                    dir,
                    base_port,
                    url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                    ca: options.tls.map(|(ca, _, _)| ca),
                    _stop: stop,
                };
            }
            assert_eq!(
                out.status.code(),
                Some(PORT_IN_USE),
                "scripts/redis-cluster start failed ({}):\n{stderr}",
                out.status
            );
            taken.push(stderr);
        }
        panic!(
            "no free ports for a Redis Cluster after {} tries:\n{}",
            taken.len(),
            taken.concat()
        );
    }

    /// One cluster for the whole test binary, started on the first call (default
    /// options), for tests that do not disturb it: no kills, no cluster-wide commands;
    /// each test keeps to its own keys. Stopped when the binary exits.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| Self::start(ClusterOptions::default()))
    }

    /// The node URL list, as `REDIS_URL` takes it: `redis://127.0.0.1:<port>` (or
    /// `rediss://`) for every node, comma-separated.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every node's port, the ones killed included.
    pub fn ports(&self) -> Vec<u16> {
        (self.base_port..self.base_port + NODES).collect()
    }

    /// The ports of the nodes that are masters now (`ROLE` of every node that answers),
    /// sorted. While a killed master's replica has not taken over yet, that is one fewer.
    pub fn masters(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|port| {
                self.cli(*port, &["ROLE"])
                    .is_some_and(|role| role.lines().next() == Some("master"))
            })
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`: only what is inside the first `{...}`
    /// counts, when there is one).
    pub fn slot_of(&self, key: &str) -> u16 {
        let node = self.any_live();
        let answer = self.cli(node, &["CLUSTER", "KEYSLOT", key]);
        answer
            .as_deref()
            .and_then(|slot| slot.parse().ok())
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key} on node {node}: {answer:?}"))
    }

    /// The port of the master serving `key`'s slot now, as that master itself says.
    /// Panics when no master that answers serves it (a master was killed and its replica
    /// has not taken over: [`wait_until_healthy`](Self::wait_until_healthy) first).
    pub fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key);
        self.slot_owners()
            .into_iter()
            .find(|(_, slots)| serves(slots, slot))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no live master serves slot {slot} of {key}"))
    }

    /// `kill -9` one node (its pid from its pid file), and waits until it no longer
    /// answers: a master killed so is failed over by its replica after the node timeout.
    pub fn kill(&self, port: u16) {
        let pid_file = self.dir.join(port.to_string()).join("redis.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("node {port}'s pid file {}: {e}", pid_file.display()));
        let killed = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -9 {} (node {port})", pid.trim());
        eventually_blocking(
            Duration::from_secs(10),
            &format!("node {port} to stop answering after kill -9"),
            || self.cli(port, &["PING"]).is_none().then_some(()),
        );
        // Its pid is free for another process now: `stop` must not signal that one.
        let _ = std::fs::remove_file(&pid_file);
    }

    /// Waits until the cluster is whole again as the surviving nodes see it: every node
    /// that answers says `cluster_state:ok` with all 16384 slots, and in every one's view
    /// every slot is served by a master that answers and is not flagged failing (so a
    /// killed master's replica took over and everyone knows it). Panics after `within`,
    /// saying what was still missing.
    pub fn wait_until_healthy(&self, within: Duration) {
        let started = Instant::now();
        let outcome = eventually_blocking(
            within + Duration::from_secs(30),
            "the Redis Cluster to be whole again",
            || match self.whole() {
                Ok(()) => Some(Ok(())),
                Err(why) if started.elapsed() >= within => Some(Err(why)),
                Err(_) => None,
            },
        );
        if let Err(why) = outcome {
            panic!("the Redis Cluster is not whole after {within:?}: {why}");
        }
    }

    /// One `redis-cli` command against one node (over TLS when the cluster speaks TLS;
    /// `-c` first to follow redirections), its output trimmed; `None` if the node did not
    /// answer. An error reply is output too (`MOVED ...`, `ERR ...`).
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let mut command = Command::new("redis-cli");
        if let Some(ca) = &self.ca {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = command
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// One node's `INFO commandstats` as (command, calls) pairs, e.g. `("evalsha",
    /// 1234)` (a subcommand as `cluster|info`): how a load spread over the masters. Empty
    /// when the node does not answer.
    pub fn command_calls(&self, port: u16) -> Vec<(String, u64)> {
        let Some(stats) = self.cli(port, &["INFO", "commandstats"]) else {
            return vec![];
        };
        stats
            .lines()
            .filter_map(|line| {
                // cmdstat_evalsha:calls=1234,usec=5678,usec_per_call=4.6,...
                let (command, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = fields
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((command.to_string(), calls))
            })
            .collect()
    }

    /// Showtime ids (positive, the first ones from `from` on) whose hash tag `{id}` lands
    /// on each master: exactly one per master, the i-th on the i-th of
    /// [`masters`](Self::masters) (by port), for tests that must see a sale span every
    /// master.
    pub fn showtimes_on_every_master(&self, from: i64) -> Vec<i64> {
        assert!(from > 0, "showtime ids are positive, not {from}");
        let owners = self.slot_owners();
        assert_eq!(
            owners.len(),
            3,
            "three live masters serve the slots (a failover under way?)"
        );
        let mut found: Vec<Option<i64>> = vec![None; owners.len()];
        for id in from..from.saturating_add(100_000) {
            let slot = self.slot_of(&format!("{{{id}}}"));
            if let Some(i) = owners.iter().position(|(_, slots)| serves(slots, slot)) {
                found[i].get_or_insert(id);
            }
            if found.iter().all(Option::is_some) {
                return found.into_iter().flatten().collect();
            }
        }
        panic!("no showtime id from {from} on lands on every master: {found:?}");
    }

    /// A node that answers, to ask about the cluster.
    fn any_live(&self) -> u16 {
        self.ports()
            .into_iter()
            .find(|port| self.cli(*port, &["PING"]).as_deref() == Some("PONG"))
            .expect("a node of the Redis Cluster answers")
    }

    /// Every master that answers, by port, with the slots it says it serves.
    fn slot_owners(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        self.masters()
            .into_iter()
            .filter_map(|port| {
                let me = self
                    .view(port)?
                    .into_iter()
                    .find(|node| node.myself && node.master)?;
                Some((port, me.slots))
            })
            .collect()
    }

    /// `CLUSTER NODES` as node `port` sees the cluster; `None` if it did not answer.
    fn view(&self, port: u16) -> Option<Vec<NodeLine>> {
        let text = self.cli(port, &["CLUSTER", "NODES"])?;
        Some(text.lines().filter_map(parse_node_line).collect())
    }

    /// Why the cluster is not whole now, if it is not (see
    /// [`wait_until_healthy`](Self::wait_until_healthy)).
    fn whole(&self) -> Result<(), String> {
        let live: BTreeSet<u16> = self
            .ports()
            .into_iter()
            .filter(|port| self.cli(*port, &["PING"]).as_deref() == Some("PONG"))
            .collect();
        if live.is_empty() {
            return Err("no node answers".into());
        }
        for &port in &live {
            let info = self
                .cli(port, &["CLUSTER", "INFO"])
                .ok_or(format!("node {port} stopped answering"))?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                    .unwrap_or("")
                    .to_string()
            };
            if field("cluster_state") != "ok" || field("cluster_slots_ok") != SLOTS.to_string() {
                return Err(format!(
                    "node {port}: cluster_state:{}, cluster_slots_ok:{}",
                    field("cluster_state"),
                    field("cluster_slots_ok")
                ));
            }
            let view = self
                .view(port)
                .ok_or(format!("node {port} stopped answering"))?;
            let mut served = 0u32;
            for node in view.iter().filter(|node| node.master) {
                for &(first, last) in &node.slots {
                    if !live.contains(&node.port) || node.failing {
                        return Err(format!(
                            "node {port} sees slots {first}-{last} on node {}, which is down",
                            node.port
                        ));
                    }
                    served += u32::from(last - first) + 1;
                }
            }
            if served != SLOTS {
                return Err(format!("node {port} sees {served} slots served"));
            }
        }
        Ok(())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("scripts/redis-cluster"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// A base port for six nodes whose ports and bus ports (+10000) are all free now,
/// from a random start in 20000..55000 (so the bus ports stay below 65536).
fn free_base_port() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut rng = rand::rng();
    for _ in 0..200 {
        let base = rng.random_range(20000..55000u16);
        if (base..base + NODES).all(|port| free(port) && free(port + BUS_OFFSET)) {
            return base;
        }
    }
    panic!("no six free consecutive ports (and their bus ports) in 20000..55000");
}

/// Whether `slots` (inclusive ranges) hold `slot`.
fn serves(slots: &[(u16, u16)], slot: u16) -> bool {
    slots
        .iter()
        .any(|&(first, last)| (first..=last).contains(&slot))
}

/// `<id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`,
/// a slot being `n`, `a-b`, or `[n->-id]`/`[n-<-id]` while it migrates (not served yet).
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?;
    let port = address
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags: Vec<&str> = fields.get(2)?.split(',').collect();
    let slots = fields
        .iter()
        .skip(8)
        .filter(|range| !range.starts_with('['))
        .filter_map(|range| match range.split_once('-') {
            Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
            None => range.parse().ok().map(|slot| (slot, slot)),
        })
        .collect();
    Some(NodeLine {
        port,
        myself: flags.contains(&"myself"),
        master: flags.contains(&"master"),
        failing: flags.iter().any(|flag| flag.starts_with("fail")),
        slots,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    use super::*;

    #[test]
    fn a_cluster_starts_serves_and_fails_over() {
        let cluster = RedisCluster::start(ClusterOptions::default());
        assert_eq!(cluster.ports().len(), 6);
        let urls: Vec<String> = cluster.url().split(',').map(str::to_string).collect();
        let expected: Vec<String> = cluster
            .ports()
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        assert_eq!(urls, expected);
        let masters = cluster.masters();
        assert_eq!(masters.len(), 3, "three masters: {masters:?}");

        let key = "flash-sale:showtime:{1}:stock";
        let first = cluster.ports()[0];
        assert_eq!(
            cluster.cli(first, &["-c", "SET", key, "42"]).as_deref(),
            Some("OK")
        );
        let master = cluster.master_of(key);
        assert!(masters.contains(&master));
        assert_eq!(cluster.slot_of(key), cluster.slot_of("{1}"));
        assert!(
            cluster
                .command_calls(master)
                .iter()
                .any(|(command, calls)| command == "set" && *calls >= 1),
            "the master ran the SET: {:?}",
            cluster.command_calls(master)
        );
        // Its replica has the write before the master goes: ROLE on a master is
        // `master`, its offset, then each replica's address, port and acknowledged offset.
        let replica = eventually_blocking(
            Duration::from_secs(10),
            "the replica to acknowledge the write",
            || {
                let role = cluster.cli(master, &["ROLE"])?;
                let lines: Vec<&str> = role.lines().collect();
                let offset: u64 = lines.get(1)?.parse().ok()?;
                let port: u16 = lines.get(3)?.parse().ok()?;
                let acknowledged: u64 = lines.get(4)?.parse().ok()?;
                (acknowledged >= offset).then_some(port)
            },
        );

        cluster.kill(master);
        cluster.wait_until_healthy(Duration::from_secs(30));

        assert_eq!(cluster.master_of(key), replica, "the replica took over");
        let now = cluster.masters();
        assert_eq!(now.len(), 3, "three masters again: {now:?}");
        assert!(now.contains(&replica) && !now.contains(&master));
        let other = *now.iter().find(|port| **port != replica).unwrap();
        assert_eq!(
            cluster.cli(other, &["-c", "GET", key]).as_deref(),
            Some("42")
        );
    }

    #[test]
    fn the_shared_cluster_has_a_showtime_for_every_master() {
        let cluster = RedisCluster::shared();
        let ids = cluster.showtimes_on_every_master(1);
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|id| *id >= 1));
        let on: Vec<u16> = ids
            .iter()
            .map(|id| cluster.master_of(&format!("showtime:{{{id}}}:stock")))
            .collect();
        assert_eq!(on, cluster.masters());
    }

    /// A directory removed when the test ends, however it ends.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A throwaway CA and a node certificate it signed for 127.0.0.1 and localhost, for
    /// server and client authentication (the nodes present it to one another), written to
    /// `dir`: `(ca, cert, key)`.
    fn node_tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "flash-sale test cluster CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("a self-signed CA");
        let key = KeyPair::generate().expect("a node key");
        let mut node = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("node parameters");
        node.distinguished_name
            .push(DnType::CommonName, "localhost");
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = node
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("a node certificate");
        let files = (
            dir.join("ca.pem"),
            dir.join("node.pem"),
            dir.join("node.key"),
        );
        std::fs::write(&files.0, ca_cert.pem()).unwrap();
        std::fs::write(&files.1, cert.pem()).unwrap();
        std::fs::write(&files.2, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_tls_cluster_answers_over_tls_only() {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "flash-sale-redis-cluster-tls-{}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        let cluster = RedisCluster::start(ClusterOptions {
            tls: Some(node_tls_files(&dir.0)),
            ..ClusterOptions::default()
        });
        assert!(
            cluster
                .url()
                .split(',')
                .all(|url| url.starts_with("rediss://127.0.0.1:")),
            "{}",
            cluster.url()
        );
        assert_eq!(cluster.masters().len(), 3);
        let port = cluster.ports()[0];
        assert_eq!(
            cluster.cli(port, &["-c", "SET", "{7}", "x"]).as_deref(),
            Some("OK")
        );
        assert!(cluster.masters().contains(&cluster.master_of("{7}")));
        let plain = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
            .output()
            .unwrap();
        assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "PONG");
    }
}
