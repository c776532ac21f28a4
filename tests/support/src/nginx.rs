//! [`NginxFront`]: the shipped `ops/nginx.conf` (Debian's `nginx-light`; `scripts/test`
//! installs it) in front of a test's own processes, on its own port, pid file and temp
//! directories. Stopped when dropped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::net::free_port;
use crate::poll::eventually_blocking;
use crate::process::{ProcessTree, workspace_root};

pub struct NginxFront {
    pub port: u16,
    dir: PathBuf,
    process: Option<ProcessTree>,
}

impl NginxFront {
    /// nginx, configured as `ops/nginx.conf` ships, sending to `upstreams` (ports on
    /// 127.0.0.1).
    pub fn start(upstreams: &[u16]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("flash-sale-nginx-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(workspace_root().join("ops/nginx.conf"))
            .expect("ops/nginx.conf");
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let mut config = String::new();
        let mut upstream_written = false;
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server 127.0.0.1:") {
                if !upstream_written {
                    config.push_str(&servers);
                    upstream_written = true;
                }
            } else if trimmed.starts_with("listen ") {
                config.push_str(&format!("        listen 127.0.0.1:{port};\n"));
            } else if trimmed.starts_with("pid ") {
                config.push_str(&format!("pid {};\n", dir.join("nginx.pid").display()));
            } else if trimmed.starts_with("worker_processes") {
                config.push_str("worker_processes 1;\n");
            } else if trimmed.starts_with("http {") {
                config.push_str(line);
                config.push('\n');
                for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    config.push_str(&format!(
                        "    {temp}_temp_path {};\n",
                        dir.join(temp).display()
                    ));
                }
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        assert!(
            upstream_written,
            "ops/nginx.conf names its upstream servers"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new("nginx");
        command.arg("-p").arg(&dir).arg("-c").arg(&path).args([
            "-e",
            "stderr",
            "-g",
            "daemon off;",
        ]);
        let process = ProcessTree::spawn("nginx", command, &port.to_string());
        eventually_blocking(Duration::from_secs(20), "nginx to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        Self {
            port,
            dir,
            process: Some(process),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for NginxFront {
    fn drop(&mut self) {
        // Stopped first, then its files go.
        drop(self.process.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
