//! Counts the hot path adds to without sharing a cache line between threads.
//!
//! Every answer counts its route and status, times itself and (for a reserve or a
//! waiting room's answer) counts its outcome. Recorded straight into the Prometheus
//! recorder, each is an atomic add on a series every worker thread writes: two adds for
//! a counter (its value and its generation, the recorder's idle tracking) and a
//! compare-and-swap for a histogram's sample, on cache lines that move between cores
//! on every answer. Here each thread adds to its own slot (its own cache lines), and
//! [`Striped::totals`] sums the slots when the metrics are read; the recorder's series
//! are brought up to date then ([`super::fold`]), so a scrape sees every answer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Thread slots: threads beyond this many share slots (correct, only slower).
const SLOTS: usize = 16;

/// `u64`s in a cache line pair (adjacent-line prefetch moves lines in pairs).
const LINE: usize = 16;

/// `width` counters in each of [`SLOTS`] slots, no two slots on one cache line.
pub(crate) struct Striped {
    cells: Box<[AtomicU64]>,
    width: usize,
    stride: usize,
}

impl Striped {
    pub(crate) fn new(width: usize) -> Self {
        // Each slot starts on its own line pair and is followed by a spare one, so no
        // slot shares a line with the next whatever the allocation's alignment.
        let stride = width.div_ceil(LINE) * LINE + LINE;
        Self {
            cells: (0..SLOTS * stride).map(|_| AtomicU64::new(0)).collect(),
            width,
            stride,
        }
    }

    /// Adds `n` to counter `i` in the calling thread's slot.
    pub(crate) fn add(&self, i: usize, n: u64) {
        debug_assert!(i < self.width);
        self.cells[slot() * self.stride + i].fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter summed over the slots.
    pub(crate) fn totals(&self) -> Vec<u64> {
        (0..self.width)
            .map(|i| {
                (0..SLOTS)
                    .map(|s| self.cells[s * self.stride + i].load(Ordering::Relaxed))
                    .sum()
            })
            .collect()
    }
}

/// The calling thread's slot, given out in turn the first time it asks.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|s| *s)
}

/// Histograms with fixed bucket bounds, striped: per series and bucket, how many samples
/// fell in it and their sum (in nanoseconds, exact).
pub(crate) struct StripedHistograms {
    counts: Striped,
    bounds: &'static [f64],
}

impl StripedHistograms {
    pub(crate) fn new(series: usize, bounds: &'static [f64]) -> Self {
        Self {
            counts: Striped::new(series * (bounds.len() + 1) * 2),
            bounds,
        }
    }

    fn buckets(&self) -> usize {
        self.bounds.len() + 1
    }

    /// Records `secs` into series `i`'s bucket (the first bound it does not exceed,
    /// else the last, `+Inf`).
    pub(crate) fn record(&self, i: usize, secs: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(self.bounds.len());
        let at = (i * self.buckets() + bucket) * 2;
        self.counts.add(at, 1);
        self.counts.add(at + 1, (secs * 1e9) as u64);
    }

    /// Per series, per bucket: (samples, their sum in nanoseconds), summed over slots.
    pub(crate) fn totals(&self) -> Vec<Vec<(u64, u64)>> {
        let flat = self.counts.totals();
        flat.chunks(self.buckets() * 2)
            .map(|series| series.chunks(2).map(|c| (c[0], c[1])).collect())
            .collect()
    }

    /// The samples recorded since `seen` (per series and bucket, the samples and time
    /// already handed on; brought up to date), handed to `record` as (series, seconds,
    /// samples): each bucket's new samples at their mean, kept inside the bucket. A
    /// sample [`record`](Self::record) has counted but whose time it has not added yet
    /// (another thread between its two adds) still goes to its own bucket: bucket counts
    /// are exact. A mean moved into its bucket hands on the time it recorded, and the
    /// difference (a time still to land, or one that landed before its count) is carried
    /// into the bucket's next samples, so the sum catches up with them.
    pub(crate) fn new_samples(
        &self,
        seen: &mut [Vec<(u64, u64)>],
        mut record: impl FnMut(usize, f64, u64),
    ) {
        for (series, (now, seen)) in self.totals().into_iter().zip(seen).enumerate() {
            for (bucket, ((count, nanos), (count_seen, nanos_seen))) in
                now.into_iter().zip(seen.iter_mut()).enumerate()
            {
                let new = count - *count_seen;
                if new == 0 {
                    continue;
                }
                let mean = nanos.saturating_sub(*nanos_seen) as f64 / new as f64 / 1e9;
                let secs = self.within(bucket, mean);
                record(series, secs, new);
                *count_seen = count;
                *nanos_seen = if secs == mean {
                    nanos
                } else {
                    nanos_seen.saturating_add((secs * 1e9) as u64 * new)
                };
            }
        }
    }

    /// `secs` moved into `bucket`'s bounds (above the previous bound, at most its own).
    fn within(&self, bucket: usize, secs: f64) -> f64 {
        let upto = self.bounds.get(bucket).copied().unwrap_or(f64::INFINITY);
        match bucket.checked_sub(1).map(|b| self.bounds[b]) {
            Some(above) if secs <= above => above.next_up(),
            _ => secs.min(upto),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn adds_from_many_threads_sum_to_the_total() {
        let striped = Arc::new(Striped::new(3));
        let threads: Vec<_> = (0..40)
            .map(|t| {
                let striped = striped.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        striped.add(t % 3, 1);
                    }
                    striped.add(2, 5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(striped.totals(), vec![14_000, 13_000, 13_000 + 200]);
    }

    /// A scrape between the two adds of a sample (its count, then its time) folded it
    /// at the mean of the time it saw, none: a 5 ms answer went to the 0.5 ms bucket, and
    /// its time was lost from the sum. Now it goes to its own bucket, its time later.
    #[test]
    fn a_sample_whose_time_is_not_added_yet_is_folded_into_its_own_bucket() {
        const BOUNDS: &[f64] = &[0.001, 0.01];
        let h = StripedHistograms::new(1, BOUNDS);
        let mut seen = vec![vec![(0, 0); 3]];
        let mut fold = |h: &StripedHistograms| {
            let mut got = vec![];
            h.new_samples(&mut seen, |series, secs, n| got.push((series, secs, n)));
            got
        };
        let in_middle_bucket = |got: &[(usize, f64, u64)]| matches!(got, [(0, secs, 1)] if *secs > 0.001 && *secs <= 0.01);
        // A 5 ms sample (series 0, bucket 1), counted, its time not added yet.
        h.counts.add(2, 1);
        let got = fold(&h);
        assert!(in_middle_bucket(&got), "{got:?}");
        // Its time lands: no new sample...
        h.counts.add(3, 5_000_000);
        assert_eq!(fold(&h), vec![]);
        // ...the next one of the bucket carries it, and stays in the bucket; the time
        // that did not fit is carried on, and the sum catches up with the next sample.
        h.record(0, 0.008);
        let first = fold(&h);
        assert!(in_middle_bucket(&first), "{first:?}");
        h.record(0, 0.002);
        let second = fold(&h);
        assert!(in_middle_bucket(&second), "{second:?}");
        let recorded: f64 = [got, first, second].iter().map(|g| g[0].1).sum();
        assert!(
            (recorded - 0.015).abs() < 1e-9,
            "5 + 8 + 2 ms, got {recorded}"
        );
        // The last bucket has no upper bound; the first no lower one.
        h.record(0, 30.0);
        h.record(0, 0.0002);
        let mut got = fold(&h);
        got.sort_by(|a, b| a.1.total_cmp(&b.1));
        assert_eq!(got, vec![(0, 0.0002, 1), (0, 30.0, 1)]);
    }

    #[test]
    fn a_sample_lands_in_the_first_bucket_it_does_not_exceed() {
        const BOUNDS: &[f64] = &[0.001, 0.01];
        let h = StripedHistograms::new(2, BOUNDS);
        h.record(1, 0.0005);
        h.record(1, 0.001);
        h.record(1, 0.002);
        h.record(1, 3.0);
        h.record(0, 0.02);
        let totals = h.totals();
        assert_eq!(totals[0], vec![(0, 0), (0, 0), (1, 20_000_000)]);
        assert_eq!(
            totals[1],
            vec![(2, 1_500_000), (1, 2_000_000), (1, 3_000_000_000)]
        );
    }
}
