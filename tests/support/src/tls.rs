//! Services reached only over TLS, for the TLS tests: a throwaway CA made by the test
//! set-up ([`TestCa`], with `rcgen`), and a Redis (`--tls-port`, no plain port), a
//! RabbitMQ node (a TLS listener, no plain one) and a PostgreSQL cluster (`ssl=on`,
//! `hostssl` only) serving a certificate that CA issued for 127.0.0.1 and localhost.
//!
//! They start once per test binary ([`TlsServices::get`]): the binary's tests share them,
//! each with its own database, key prefix and queues ([`Isolation`]). They stop when the
//! binary exits ([`at_exit`]), since a `static` is never dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::isolation::Isolation;
use crate::net::free_port;
use crate::poll::eventually_blocking;
use crate::process::{AtExit, at_exit};

/// A certificate authority of the test's own, its certificate in `<dir>/<name>.pem`.
pub struct TestCa {
    pub file: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA (an ECDSA P-256 key), its certificate written to `<dir>/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Self {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("flash-sale test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        let file = dir.join(format!("{name}.pem"));
        std::fs::write(&file, cert.pem()).expect("writing the CA certificate");
        Self { file, cert, key }
    }

    /// A server certificate for 127.0.0.1 and localhost (good for client use as well),
    /// and its key, written to `<dir>/server.pem` and `<dir>/server.key`.
    pub fn issue_server_cert(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("a server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        // Client use too: the nodes of a Redis Cluster present it to each other.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a server certificate");
        let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_file, cert.pem()).expect("writing the server certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing the server key");
        (cert_file, key_file)
    }
}

/// The TLS-only services of this test binary.
pub struct TlsServices {
    /// The CA that signed every service's certificate.
    pub ca: PathBuf,
    /// Another throwaway CA, which signed nothing here.
    pub wrong_ca: PathBuf,
    pub redis_port: u16,
    pub amqp_port: u16,
    pub postgres_port: u16,
    _stop: AtExit,
}

impl TlsServices {
    /// Starts them on the first call (blocking, up to a couple of minutes: RabbitMQ);
    /// later calls share them.
    pub fn get() -> &'static TlsServices {
        static SERVICES: OnceLock<TlsServices> = OnceLock::new();
        SERVICES.get_or_init(Self::start)
    }

    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("flash-sale-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the TLS services");
        let (redis_port, amqp_port, postgres_port) = (free_port(), free_port(), free_port());
        let node = format!("flash-sale-tls-{amqp_port}@localhost");
        // One clean-up, in order (each service stopped before its files go), registered
        // before anything starts, so a start that fails half-way leaks nothing either.
        let as_postgres = if is_root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let stop = at_exit(&format!(
            "kill -9 $(cat '{dir}/redis/redis.pid'); \
             rabbitmqctl -q -n '{node}' stop; \
             {as_postgres}'{pg_ctl}' -D '{dir}/postgres' stop -m immediate; \
             rm -rf '{dir}'",
            dir = dir.display(),
            pg_ctl = postgres_bin().join("pg_ctl").display(),
        ));
        let ca = TestCa::new(&dir, "ca");
        let wrong_ca = TestCa::new(&dir, "wrong-ca");
        // Every service reads its files as its own user (rabbitmq, postgres under root).
        chmod("755", &dir);
        std::thread::scope(|s| {
            let rabbit = s.spawn(|| start_rabbitmq(&dir, &ca, amqp_port, &node));
            start_redis(&dir, &ca, redis_port);
            start_postgres(&dir, &ca, postgres_port);
            rabbit.join().expect("starting RabbitMQ");
        });
        Self {
            ca: ca.file,
            wrong_ca: wrong_ca.file,
            redis_port,
            amqp_port,
            postgres_port,
            _stop: stop,
        }
    }

    pub fn redis_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.redis_port)
    }

    pub fn amqp_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The PostgreSQL server part (`postgres://user@host:port`).
    pub fn postgres_server(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.postgres_port)
    }

    /// `iso`'s database on the TLS cluster, verifying its certificate and host name.
    pub fn database_url(&self, iso: &Isolation) -> String {
        format!(
            "{}?sslmode=verify-full",
            iso.database_url_on(&self.postgres_server())
        )
    }

    /// The variables that point a process at the three services over TLS only,
    /// `DATABASE_URL` with `sslmode=verify-full`, trusting `ca` for each.
    pub fn env(&self, iso: &Isolation, ca: &Path) -> Vec<(&'static str, String)> {
        let ca = ca.display().to_string();
        vec![
            ("REDIS_URL", self.redis_url()),
            ("AMQP_URL", self.amqp_url()),
            ("DATABASE_URL", self.database_url(iso)),
            ("REDIS_CA_FILE", ca.clone()),
            ("AMQP_CA_FILE", ca.clone()),
            ("DATABASE_CA_FILE", ca),
        ]
    }
}

fn chmod(mode: &str, path: &Path) {
    let _ = Command::new("chmod").arg(mode).arg(path).status();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Redis with TLS on a free port and no plain port.
fn start_redis(dir: &Path, ca: &TestCa, port: u16) {
    let dir = dir.join("redis");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca.issue_server_cert(&dir);
    let started = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .arg("--pidfile")
        .arg(dir.join("redis.pid"))
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca.file)
        .args(["--tls-auth-clients", "no", "--daemonize", "yes"])
        .stdout(Stdio::null())
        .status()
        .expect("redis-server is installed (scripts/services installs it)");
    assert!(started.success(), "redis-server --daemonize yes failed");
    eventually_blocking(
        Duration::from_secs(20),
        &format!("Redis with TLS on port {port} to start"),
        || {
            let out = Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(&ca.file)
                .args(["-p", &port.to_string(), "PING"])
                .output()
                .ok()?;
            (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
        },
    );
}

/// A RabbitMQ node of its own with one TLS listener and no plain one.
fn start_rabbitmq(dir: &Path, ca: &TestCa, port: u16, node: &str) {
    let dist_port = free_port();
    let dir = dir.join("rabbitmq");
    for sub in ["mnesia", "log"] {
        std::fs::create_dir_all(dir.join(sub)).expect("the node's directories");
    }
    let (cert, key) = ca.issue_server_cert(&dir);
    std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
    std::fs::write(
        dir.join("rabbitmq.conf"),
        format!(
            "listeners.tcp = none\n\
             listeners.ssl.default = 127.0.0.1:{port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             loopback_users = none\n",
            ca.file.display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    if is_root() {
        // The server scripts run as the rabbitmq user when started by root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
    }
    let started = Command::new("rabbitmq-server")
        .arg("-detached")
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
        .status()
        .expect("rabbitmq-server is installed (scripts/services installs it)");
    assert!(started.success(), "rabbitmq-server -detached failed");
    eventually_blocking(
        Duration::from_secs(120),
        &format!("the TLS RabbitMQ node {node} to start"),
        || {
            Command::new("rabbitmqctl")
                .args(["-q", "-n", node, "await_startup", "--timeout", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success()
                .then_some(())
        },
    );
}

/// The newest installed PostgreSQL's `bin` directory (Debian's layout).
fn postgres_bin() -> PathBuf {
    std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server is installed (scripts/services installs it)")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .map(|v| Path::new("/usr/lib/postgresql").join(v).join("bin"))
        .expect("a PostgreSQL version under /usr/lib/postgresql")
}

/// `bin/<program>` with `args`, as the postgres user when this process is root (the
/// server refuses to run as root).
fn postgres_command(program: &str, args: &[&str]) -> Command {
    let path = postgres_bin().join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    command.args(args);
    command
}

/// A PostgreSQL cluster of its own with `ssl=on` that accepts only TLS connections over
/// TCP (`hostssl`; `hostnossl` is rejected).
fn start_postgres(dir: &Path, ca: &TestCa, port: u16) {
    let data = dir.join("postgres");
    std::fs::create_dir_all(&data).unwrap();
    if is_root() {
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&data)
            .status();
    }
    chmod("700", &data);
    let data_arg = data.display().to_string();
    let out = postgres_command(
        "initdb",
        &[
            "-D",
            &data_arg,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
    )
    .output()
    .expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key) = ca.issue_server_cert(&data);
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 0.0.0.0/0 reject\n",
    )
    .unwrap();
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status();
    }
    chmod("600", &key);
    let options = format!(
        "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data_arg} \
         -c ssl=on -c ssl_cert_file={} -c ssl_key_file={} -c fsync=off -c max_connections=200",
        cert.display(),
        key.display()
    );
    let log = data.join("server.log").display().to_string();
    let out = postgres_command(
        "pg_ctl",
        &[
            "-D", &data_arg, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
        ],
    )
    .stdout(Stdio::null())
    .output()
    .expect("pg_ctl runs");
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
