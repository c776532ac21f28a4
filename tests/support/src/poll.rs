//! Waiting for an outcome with a deadline instead of sleeping.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after
/// `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for code that is not async (starting a child process, asking it with
/// a command-line client): polls `check` every 20 ms until it returns `Some`, or panics
/// with `what` after `deadline`.
pub fn eventually_blocking<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// For a promise of the form "from `within` after `since`, every attempt sees it":
/// tries `attempt` every 20 ms until it returns `Some`, and returns that with how long
/// after `since` the attempt left. Panics, naming `what`, if an attempt that left
/// `within` or more after `since` returns `None`. What counts is when an attempt leaves:
/// its answer's trip back through a loaded test runtime is not the server's doing.
pub async fn promptly<T, F, Fut>(
    since: std::time::Instant,
    within: Duration,
    what: &str,
    mut attempt: F,
) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        every.tick().await;
        let left = since.elapsed();
        if let Some(v) = attempt().await {
            return (v, left);
        }
        assert!(
            left < within,
            "an attempt that left {left:?} after the moment it counts from: {what} not yet"
        );
    }
}
