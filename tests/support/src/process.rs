//! Child processes a test starts (`cargo lambda watch`, the functions it starts, the
//! bridge): [`ProcessTree`] stops a process and everything it started when dropped, and
//! keeps its output for the failure message.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root (a process a test starts runs there).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support sits two levels below the repository root")
        .to_path_buf()
}

/// The process ids of `pid`'s descendants, read from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = vec![];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parents {
            if *parent == p && !found.contains(child) {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// A child process and everything it started, stopped on drop: SIGTERM first (watch
/// passes it on to its functions, the bridge closes its channels), SIGKILL for whatever
/// is still there after a few seconds.
pub struct ProcessTree {
    name: &'static str,
    child: Mutex<Child>,
    log: PathBuf,
}

impl ProcessTree {
    /// Starts `command` in the repository root, its output (stdout and stderr) in a log
    /// file named after `name` and `tag`.
    pub fn spawn(name: &'static str, mut command: Command, tag: &str) -> Self {
        let log = std::env::temp_dir().join(format!("flash-sale-{name}-{tag}.log"));
        let out = File::create(&log).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        command
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name,
            child: Mutex::new(child),
            log,
        }
    }

    /// The exit status, once the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// What the process is, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Everything the process (and what it started) wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the process's output, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last lines of {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            lines[from..].join("\n")
        )
    }
}

impl Drop for ProcessTree {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let root = child.id();
        let mut tree = descendants(root);
        tree.push(root);
        signal("TERM", &tree);
        let started = Instant::now();
        while tree.iter().any(|p| alive(*p)) && started.elapsed() < Duration::from_secs(8) {
            let _ = child.try_wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        let left: Vec<u32> = tree.iter().copied().filter(|p| alive(*p)).collect();
        signal("KILL", &left);
        let _ = child.wait();
        // Keep the log of a failed test for a person to read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Polls `check` every 50 ms until it returns `true`; after `limit`, panics with `what`
/// and the last output of `processes`.
pub async fn until<F, Fut>(limit: Duration, what: &str, processes: &[&ProcessTree], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        let exited = processes.iter().find_map(|p| p.exited().map(|s| (p, s)));
        if let Some((p, status)) = exited {
            panic!(
                "{} exited ({status}) while waiting for {what}\n{}",
                p.name(),
                p.tail()
            );
        }
        if started.elapsed() > limit {
            let tails: Vec<String> = processes.iter().map(|p| p.tail()).collect();
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                tails.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shell command run once this test binary has exited, however it exits (its last
/// test done, a panic, Ctrl-C, SIGKILL): for what a binary starts once for all its tests
/// and keeps in a `static`, whose `Drop` never runs. A shell ignoring signals waits for
/// the end of a pipe that only this process holds open (the kernel closes it when the
/// process ends), then runs the command.
pub struct AtExit {
    _pipe: std::process::ChildStdin,
    _shell: Child,
}

/// Runs `cleanup` (`sh -c`) when this test binary exits; keep the [`AtExit`] alive as
/// long as the binary (in a `static`).
pub fn at_exit(cleanup: &str) -> AtExit {
    let mut shell = Command::new("sh")
        .args([
            "-c",
            &format!("trap '' INT TERM HUP; cat >/dev/null; {cleanup}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
    let pipe = shell.stdin.take().expect("a piped stdin");
    AtExit {
        _pipe: pipe,
        _shell: shell,
    }
}
