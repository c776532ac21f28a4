//! [`PrometheusServer`]: a real Prometheus (Debian's package; `scripts/test` installs it)
//! of a test's own, scraping one process every second, on its own port and data
//! directory. Stopped and removed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::net::free_port;

pub struct PrometheusServer {
    pub port: u16,
    dir: PathBuf,
    child: Child,
}

impl PrometheusServer {
    /// Scrapes `http://127.0.0.1:{target_port}/metrics` every second.
    pub fn start(target_port: u16) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("flash-sale-prometheus-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flash-sale\n    \
                 static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (scripts/test installs Debian's package)");
        Self { port, dir, child }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
