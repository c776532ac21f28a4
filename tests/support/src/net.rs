//! Local TCP for tests: a free port for a process a test starts, and [`Cuttable`], a TCP
//! proxy in front of a service that a test cuts to make that service fail after a
//! function connected (a transient failure, as a Redis or database outage is on Lambda).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Ports handed out for processes the tests start: below Linux's ephemeral range
/// (32768-60999 unless `ip_local_port_range` says otherwise), which the tests' own
/// client connections draw from. A port the kernel picks there (`bind(0)`) could be
/// taken by one of the thousands of connections a parallel test opens before the
/// process meant to listen on it binds; a port from here is taken only by another
/// test's pick of the same port in the same instant.
const PORTS: std::ops::Range<u16> = 16_384..32_768;

/// A port nobody listens on right now, for a process the test starts.
pub fn free_port() -> u16 {
    static NEXT: std::sync::OnceLock<AtomicUsize> = std::sync::OnceLock::new();
    let span = usize::from(PORTS.end - PORTS.start);
    // Each test process starts at its own random point and walks on from there.
    let next = NEXT.get_or_init(|| AtomicUsize::new(rand::random_range(0..span)));
    for _ in 0..span {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORTS.start + u16::try_from(offset).expect("below the span");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free local port in {PORTS:?}");
}

/// A TCP proxy to `target` that can be cut: once cut, it closes every connection it
/// carries and accepts no new one, so the service looks down to whoever connected
/// through it.
pub struct Cuttable {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Connections carried right now.
    live: Arc<AtomicUsize>,
}

impl Cuttable {
    pub async fn start(target: &str) -> Self {
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let live = Arc::new(AtomicUsize::new(0));
        let counter = live.clone();
        tokio::spawn(async move {
            let mut stop = cut_rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|c| *c) => return, // drops the listener
                };
                let Ok((mut downstream, _)) = accepted else {
                    continue;
                };
                let target = target.clone();
                let mut stop = cut_rx.clone();
                let counter = counter.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
                            _ = stop.wait_for(|c| *c) => {}
                        }
                    }
                    drop(downstream);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, cut, live }
    }

    /// Closes every connection through the proxy and refuses new ones; returns once
    /// both are true.
    pub async fn cut(&self) {
        let _ = self.cut.send(true);
        let started = Instant::now();
        loop {
            let refused = TcpStream::connect(self.addr).await.is_err();
            if refused && self.live.load(Ordering::SeqCst) == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the proxy did not close"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
