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
/// wait at the proxy, as behind a slow network, until [`Cuttable::release`]; or hold what
/// the service answers ([`Cuttable::hold_answers_from`]): requests reach it and are
/// carried out, their answers wait.
pub struct Cuttable {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    held: watch::Sender<bool>,
    answers_held: Arc<watch::Sender<bool>>,
    /// Bytes that, once a request carries them, hold the answers.
    marker: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
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
        let answers_held = Arc::new(watch::channel(false).0);
        let marker: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let (answers_hold, marked) = (answers_held.clone(), marker.clone());
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
                let answers_held = answers_hold.subscribe();
                let (answers_hold, marked) = (answers_hold.clone(), marked.clone());
                let counter = counter.clone();
                let waits = waits.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&target).await {
                        let (mut from_client, mut to_client) = downstream.split();
                        let (mut from_server, mut to_server) = upstream.split();
                        // A request carrying the marker holds the answers before it goes on.
                        let mark = |request: &[u8]| {
                            let mut marker = marked.lock().unwrap();
                            let found = marker
                                .as_deref()
                                .is_some_and(|m| request.windows(m.len()).any(|w| w == m));
                            if found {
                                *marker = None;
                                answers_hold.send_replace(true);
                            }
                        };
                        let requests = forward_unless_held(
                            &mut from_client,
                            &mut to_server,
                            held,
                            &waits,
                            mark,
                        );
                        let answers = forward_unless_held(
                            &mut from_server,
                            &mut to_client,
                            answers_held,
                            &waits,
                            |_| {},
                        );
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
            answers_held,
            marker,
            live,
            waiting,
        }
    }

    /// Holds what clients send from now on: each read waits at the proxy until
    /// [`Cuttable::release`].
    pub fn hold(&self) {
        let _ = self.held.send(true);
    }

    /// Holds what the service answers from the first request carrying `marker` on (that
    /// request's answer included): requests still reach the service and are carried
    /// out, each answer waits at the proxy until [`Cuttable::release`] (a reply that
    /// arrives after its client gave up on it).
    pub fn hold_answers_from(&self, marker: &[u8]) {
        *self.marker.lock().unwrap() = Some(marker.to_vec());
    }

    /// Sends on what was held, both ways, and everything after.
    pub fn release(&self) {
        *self.marker.lock().unwrap() = None;
        let _ = self.held.send(false);
        self.answers_held.send_replace(false);
    }

    /// Reads waiting at the proxy now (requests or answers held).
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

/// Copies `from` to `to`, each read shown to `seen` and then waiting while `held` says
/// so (counted in `waits`).
async fn forward_unless_held(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut held: watch::Receiver<bool>,
    waits: &AtomicUsize,
    seen: impl Fn(&[u8]),
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        seen(&buf[..n]);
        if *held.borrow() {
            waits.fetch_add(1, Ordering::SeqCst);
            let _ = held.wait_for(|h| !*h).await;
            waits.fetch_sub(1, Ordering::SeqCst);
        }
        to.write_all(&buf[..n]).await?;
    }
}
