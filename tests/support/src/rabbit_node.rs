//! [`RabbitNode`]: a RabbitMQ node of a test's own (own node name, AMQP and distribution
//! ports, data and log directories), for what must never be done to the machine's shared
//! broker that the parallel tests use: a memory alarm that blocks every publisher.
//! Stopped and removed when dropped.

use std::path::PathBuf;
use std::process::Command;

use crate::net::free_port;
use crate::poll::eventually_blocking;

/// One RabbitMQ node, started with `rabbitmq-server -detached`.
pub struct RabbitNode {
    pub port: u16,
    node: String,
    dir: PathBuf,
}

impl RabbitNode {
    /// Starts the node and waits until it accepts connections.
    pub fn start() -> Self {
        let port = free_port();
        let dist_port = free_port();
        let node = format!("flash-sale-test-{port}@localhost");
        let dir = std::env::temp_dir().join(format!("flash-sale-rabbit-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("the node's directories");
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        // The server scripts run as the rabbitmq user when started by root.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let started = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .status()
            .expect("rabbitmq-server is installed (scripts/services installs it)");
        assert!(started.success(), "rabbitmq-server -detached failed");
        let rabbit = Self { port, node, dir };
        // Until the node has registered its name, rabbitmqctl cannot reach it at all.
        eventually_blocking(
            std::time::Duration::from_secs(120),
            &format!("the test's RabbitMQ node {} to start", rabbit.node),
            || {
                rabbit
                    .try_ctl(&["await_startup", "--timeout", "10"])
                    .then_some(())
            },
        );
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn try_ctl(&self, args: &[&str]) -> bool {
        Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("rabbitmqctl is installed with rabbitmq-server")
            .success()
    }

    fn ctl(&self, args: &[&str]) {
        assert!(self.try_ctl(args), "rabbitmqctl {args:?} on {}", self.node);
    }

    /// Stops the node, wipes everything it kept (`reset`: exchanges, queues, messages,
    /// users) and starts it again: a broker that comes back without its definitions, as
    /// one that lost its disk. Its default user and virtual host are made anew.
    pub fn reset(&self) {
        self.ctl(&["stop_app"]);
        self.ctl(&["reset"]);
        self.ctl(&["start_app"]);
    }

    /// Raises (or clears) a memory alarm: while it is raised, the node blocks every
    /// connection that publishes.
    pub fn memory_alarm(&self, raised: bool) {
        let watermark = if raised { "0.000001" } else { "0.4" };
        self.ctl(&["set_vm_memory_high_watermark", watermark]);
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
