//! The test kit: what the function crates' tests and `tests/` share, on the real
//! PostgreSQL, Redis and RabbitMQ. A test gets its own database, Redis key prefix and queue
//! prefix, so tests run in parallel and in any order, beside other people's runs.
//!
//! - [`isolation`]: [`Isolation`], one test's names (database, key and queue prefix), and
//!   removing them afterwards ([`cleanup`], [`drop_database`]).
//! - [`config`]: [`Options`], what a test changes in the configuration, and the
//!   environment ([`env`]) and [`Config`](flash_sale_runtime::Config) ([`config()`]) built from them.
//! - [`harness`]: [`FunctionHarness`], a wired `App` with its adapters beside it (for
//!   raw keys, SQL and queue depths), as a function's handlers get it; [`wire`] builds the pair.
//! - [`net`]: [`free_port`] and [`Cuttable`], a TCP proxy a test cuts to make a service
//!   fail under a function that already connected.
//! - [`answers`]: [`assert_error`], the one check of an error answer's status, code and
//!   shape.
//! - [`api`]: a function's example API Gateway events as `lambda_http::Request`s, and one
//!   call through its router.
//! - [`poll`]: [`eventually`], polling for an outcome with a deadline instead of sleeping.
//! - [`process`]: [`ProcessTree`], a child process and everything it started, stopped
//!   when dropped.
//! - [`redis_server`]: [`RedisServer`], a Redis of the test's own (own port and data
//!   directory) to snapshot, kill and restart from an older snapshot.
//! - [`redis_cluster`]: [`RedisCluster`], a Redis Cluster (three masters, three replicas)
//!   started with `scripts/redis-cluster`, of the test's own or shared by a test binary,
//!   to ask who serves which key and to fail a master over.
//! - [`prometheus`]: [`PrometheusServer`], a real Prometheus scraping one process.
//! - [`nginx`]: [`NginxFront`], the shipped `ops/nginx.conf` in front of a test's
//!   processes.
//! - [`otlp`]: [`OtlpReceiver`], an OTLP/HTTP trace receiver in the test process.
//! - [`rabbit_node`]: [`RabbitNode`], a RabbitMQ node of the test's own, to raise a
//!   memory alarm on.
//! - [`tls`]: [`TlsServices`], Redis, RabbitMQ and PostgreSQL reached only over TLS with
//!   certificates from a throwaway [`TestCa`], started once per test binary.
//! - [`watch`]: [`Watch`], one `cargo lambda watch` with a test's data, the bridge beside
//!   it, and the bounds and skip switch (`WATCH_TESTS=skip`) of those tests.

pub mod answers;
pub mod api;
pub mod config;
pub mod harness;
pub mod isolation;
pub mod net;
pub mod nginx;
pub mod otlp;
pub mod poll;
pub mod process;
pub mod prometheus;
pub mod rabbit_node;
pub mod redis_cluster;
pub mod redis_server;
pub mod tls;
pub mod watch;

pub use answers::assert_error;
pub use config::{
    Options, TEST_JWT_AUDIENCE, TEST_JWT_ISSUER, TEST_JWT_SECRET, config, env, test_claims,
};
pub use harness::{FunctionHarness, wire};
pub use isolation::{Isolation, cleanup, drop_database};
pub use net::{Cuttable, free_port};
pub use nginx::NginxFront;
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use poll::{eventually, eventually_blocking, promptly};
pub use process::workspace_root;
pub use process::{AtExit, ProcessTree, at_exit};
pub use prometheus::PrometheusServer;
pub use rabbit_node::RabbitNode;
pub use redis_cluster::{ClusterOptions, RedisCluster};
pub use redis_server::RedisServer;
pub use tls::{TestCa, TlsServices};
pub use watch::Watch;
