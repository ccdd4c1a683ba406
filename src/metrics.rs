//! Counters and latency histograms that the request path bumps for the Prometheus listener
//! (`server::metrics`): each is a fixed set of relaxed atomics, found by index, so counting a
//! request takes no lock and allocates nothing. What they mean is read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in nanoseconds: 1-2-5 steps from 50 µs to 10 s, so the
/// 0.1–50 ms range where lock rounds fall is resolved to a factor of 2.5 at worst, and a
/// `LOCK ... WAIT` or a master at its deadline still lands in a bucket of its own.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram over [`LATENCY_BOUNDS_NS`], one atomic per bucket.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at most each bound (not cumulative), then those above the last one.
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram read at one moment, in seconds, as the exposition wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound in seconds, observations in this bucket alone)`, the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Its counts now. Read bucket by bucket while others may still add: a scrape can be off by
    /// the observations that raced it, never by more.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let bounds = LATENCY_BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// How a lock request ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the lock was taken, released or extended.
    Granted,
    /// Refused for the lock's state: held by another holder, or not held with that token.
    Held,
    /// Fewer than a quorum of masters answered in time (`NOQUORUM`).
    NoQuorum,
    /// Any other error reply.
    Error,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Granted,
        Outcome::Held,
        Outcome::NoQuorum,
        Outcome::Error,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Held => "held",
            Outcome::NoQuorum => "no_quorum",
            Outcome::Error => "error",
        }
    }
}

/// One command's counts.
#[derive(Debug, Default)]
pub struct CommandMetrics {
    /// Time from dispatch to reply.
    pub latency: Histogram,
    /// Replies by [`Outcome`], in [`Outcome::ALL`]'s order.
    outcomes: [AtomicU64; 4],
}

impl CommandMetrics {
    /// Replies with `outcome` so far.
    pub fn outcome(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }
}

/// Every command's counts, by a fixed index the caller assigns (the command layer's table).
#[derive(Debug)]
pub struct Requests {
    names: Box<[&'static str]>,
    commands: Box<[CommandMetrics]>,
}

impl Requests {
    /// Counts for the commands named `names`, indexed in that order.
    pub fn new(names: Vec<&'static str>) -> Requests {
        let commands = names.iter().map(|_| CommandMetrics::default()).collect();
        Requests {
            names: names.into_boxed_slice(),
            commands,
        }
    }

    /// Counts one reply of command `index`, `latency` after it was dispatched.
    pub fn observe(&self, index: usize, latency: Duration, outcome: Outcome) {
        let Some(command) = self.commands.get(index) else {
            return;
        };
        command.latency.observe(latency);
        command.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Each command's name and counts.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &CommandMetrics)> {
        self.names.iter().copied().zip(self.commands.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_is_not_below_it() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert!((s.sum - (0.0001 + 0.000101 + 0.003 + 60.0)).abs() < 1e-9);
        let at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.0001), 1);
        assert_eq!(at(0.0002), 1);
        assert_eq!(at(0.005), 1);
        assert_eq!(at(f64::INFINITY), 1);
        assert_eq!(s.buckets.len(), LATENCY_BOUNDS_NS.len() + 1);
    }

    #[test]
    fn requests_are_counted_by_command_and_outcome() {
        let r = Requests::new(vec!["lock", "unlock"]);
        r.observe(0, Duration::from_millis(1), Outcome::Granted);
        r.observe(0, Duration::from_millis(1), Outcome::Held);
        r.observe(1, Duration::from_millis(1), Outcome::NoQuorum);
        r.observe(7, Duration::from_millis(1), Outcome::Error);
        let counts: Vec<(&str, Vec<u64>)> = r
            .iter()
            .map(|(name, c)| (name, Outcome::ALL.iter().map(|o| c.outcome(*o)).collect()))
            .collect();
        assert_eq!(
            counts,
            [("lock", vec![1, 1, 0, 0]), ("unlock", vec![0, 0, 1, 0])]
        );
    }
}
