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
/// through it. It can also hold what clients send ([`Cuttable::hold`]): their requests
/// wait at the proxy, as behind a slow network, until [`Cuttable::release`].
pub struct Cuttable {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    held: watch::Sender<bool>,
    /// Connections carried right now.
    live: Arc<AtomicUsize>,
    /// Reads from clients waiting at the proxy while it holds.
    waiting: Arc<AtomicUsize>,
}

impl Cuttable {
    pub async fn start(target: &str) -> Self {
        let target = target.to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let (held, held_rx) = watch::channel(false);
        let live = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = live.clone();
        let waits = waiting.clone();
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
                let held = held_rx.clone();
                let counter = counter.clone();
                let waits = waits.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        let (mut from_client, mut to_client) = downstream.split();
                        let (mut from_server, mut to_server) = upstream.split();
                        let requests =
                            forward_unless_held(&mut from_client, &mut to_server, held, &waits);
                        let answers = tokio::io::copy(&mut from_server, &mut to_client);
                        tokio::select! {
                            _ = async { tokio::join!(requests, answers) } => {}
                            _ = stop.wait_for(|c| *c) => {}
                        }
                    }
                    drop(downstream);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            cut,
            held,
            live,
            waiting,
        }
    }

    /// Holds what clients send from now on: each read waits at the proxy until
    /// [`Cuttable::release`].
    pub fn hold(&self) {
        let _ = self.held.send(true);
    }

    /// Sends on what was held, and everything after.
    pub fn release(&self) {
        let _ = self.held.send(false);
    }

    /// Reads from clients waiting at the proxy now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
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

/// Copies `from` to `to`, each read waiting while `held` says so (counted in `waits`).
async fn forward_unless_held(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut held: watch::Receiver<bool>,
    waits: &AtomicUsize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if *held.borrow() {
            waits.fetch_add(1, Ordering::SeqCst);
            let _ = held.wait_for(|h| !*h).await;
            waits.fetch_sub(1, Ordering::SeqCst);
        }
        to.write_all(&buf[..n]).await?;
    }
}
