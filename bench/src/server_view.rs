//! The server's own view of a phase: its `/metrics` read every 100 ms while the load
//! runs, so the charts show its reservation counters over time beside what the client
//! was answered, and the report says whether the two agree.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::client::{Conn, Endpoint};

const EVERY: Duration = Duration::from_millis(100);
const RESERVATIONS: &str = "flashsale_reservations_total";

/// One reading of the server's reservation counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) at: Instant,
    /// Holds granted (`outcome="reserved"`).
    pub(crate) reserved: f64,
    /// Every counted reservation answer, whatever its outcome.
    pub(crate) answered: f64,
}

/// The readings of one phase, and what they say about it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ServerCounted {
    /// Holds the server counted during the phase.
    pub(crate) reserved: u64,
    /// Reservation answers the server counted during the phase.
    pub(crate) answered: u64,
    pub(crate) readings: usize,
}

pub(crate) struct Scraper {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Reading>>,
}

impl Scraper {
    /// Starts reading `endpoint`'s `/metrics` now (the first reading is the baseline).
    pub(crate) async fn start(endpoint: &Endpoint) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let mut conn = Conn::new(endpoint.clone(), Duration::from_secs(2));
        let first = read(&mut conn).await;
        let task = tokio::spawn(async move {
            let mut readings: Vec<Reading> = first.into_iter().collect();
            let mut every = tokio::time::interval(EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => readings.extend(read(&mut conn).await),
                    _ = &mut stopped => break,
                }
            }
            // The last reading, after every answer: the counters are complete.
            readings.extend(read(&mut conn).await);
            readings
        });
        Self { stop, task }
    }

    /// Stops and returns every reading (none when the server exposes no metrics).
    pub(crate) async fn finish(self) -> Vec<Reading> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

async fn read(conn: &mut Conn) -> Option<Reading> {
    let answer = conn.get("/metrics").await.ok()?;
    if !answer.status.is_success() {
        return None;
    }
    let text = std::str::from_utf8(&answer.body).ok()?;
    let (mut reserved, mut answered) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.starts_with(RESERVATIONS)) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if key.split('{').next() != Some(RESERVATIONS) {
            continue;
        }
        answered += value;
        if key.contains("outcome=\"reserved\"") {
            reserved += value;
        }
    }
    Some(Reading {
        at: Instant::now(),
        reserved,
        answered,
    })
}

/// What the server counted between its first and last reading.
pub(crate) fn counted(readings: &[Reading]) -> Option<ServerCounted> {
    let (first, last) = (readings.first()?, readings.last()?);
    Some(ServerCounted {
        reserved: (last.reserved - first.reserved).round() as u64,
        answered: (last.answered - first.answered).round() as u64,
        readings: readings.len(),
    })
}

/// The counters' values at `t` seconds after `start`, interpolated between readings.
pub(crate) fn at(readings: &[Reading], start: Instant, t: f64) -> Option<(f64, f64)> {
    let time = |r: &Reading| r.at.saturating_duration_since(start).as_secs_f64();
    let first = readings.first()?;
    if t <= time(first) {
        return Some((first.reserved, first.answered));
    }
    for pair in readings.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let (ta, tb) = (time(a), time(b));
        if t <= tb {
            let f = if tb > ta { (t - ta) / (tb - ta) } else { 1.0 };
            return Some((
                a.reserved + (b.reserved - a.reserved) * f,
                a.answered + (b.answered - a.answered) * f,
            ));
        }
    }
    readings.last().map(|r| (r.reserved, r.answered))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_interpolate_between_readings() {
        let start = Instant::now();
        let readings = [
            Reading {
                at: start,
                reserved: 0.0,
                answered: 0.0,
            },
            Reading {
                at: start + Duration::from_secs(1),
                reserved: 10.0,
                answered: 100.0,
            },
        ];
        assert_eq!(at(&readings, start, 0.5), Some((5.0, 50.0)));
        assert_eq!(at(&readings, start, 2.0), Some((10.0, 100.0)));
        let c = counted(&readings).unwrap();
        assert_eq!((c.reserved, c.answered), (10, 100));
        assert!(at(&[], start, 1.0).is_none());
    }
}
