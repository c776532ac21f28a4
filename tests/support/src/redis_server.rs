//! [`RedisServer`]: a Redis of a test's own, on its own port and data directory, that the
//! test can snapshot, kill and start again from an older snapshot, or start in a state
//! the machine's shared Redis must never be put in (loading, a replica). Stopped and
//! removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::free_port;
use crate::poll::eventually_blocking;

/// One `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Commands started with [`RedisServer::in_background`].
    background: Vec<Child>,
}

impl RedisServer {
    /// Starts a Redis that keeps nothing on disk unless told to (`SAVE`), with `extra`
    /// arguments (`--key-load-delay 100`, `--replicaof ...`), and waits until it answers.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("flash-sale-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a data directory for the test's Redis");
        let mut server = Self {
            port,
            dir,
            child: None,
            background: vec![],
        };
        server.launch(extra);
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn launch(&mut self, extra: &[&str]) {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
                &dir,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services installs it)");
        self.child = Some(child);
        eventually_blocking(
            Duration::from_secs(20),
            &format!("the test's Redis on port {} to start", self.port),
            || self.cli(&["PING"]),
        );
    }

    /// Runs one command with `redis-cli`; its answer, or `None` when Redis did not answer.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Starts one command with `redis-cli` without waiting for it (`DEBUG RELOAD`).
    pub fn in_background(&mut self, args: &[&str]) {
        let child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli is installed with redis-server");
        self.background.push(child);
    }

    /// Writes a snapshot (`dump.rdb`) of what Redis holds now.
    pub fn snapshot(&self) {
        assert_eq!(self.cli(&["SAVE"]).as_deref(), Some("OK"), "SAVE");
    }

    /// Kills Redis without saving, then starts it again on the same port and directory:
    /// it comes back with the last snapshot, losing every write after it.
    pub fn restart_from_snapshot(&mut self) {
        self.kill();
        self.launch(&[]);
    }

    fn kill(&mut self) {
        for mut started in self.background.drain(..) {
            let _ = started.kill();
            let _ = started.wait();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
