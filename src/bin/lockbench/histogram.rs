//! The latency histogram: log-linear buckets, exact below 128 ns, then 64 buckets per power of
//! two (under 1% error). Fixed size whatever the run length, and cheap to merge.

use std::io::{self, Write};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub total: u64,
    sum_ns: u128,
    pub max_ns: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Up to 2^40 ns (about 18 minutes); longer values are clamped.
const MAX_SHIFT: u32 = 40 - SUB_BITS;
const BUCKETS: usize = (2 * SUB + MAX_SHIFT as u64 * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value at quantile `q` (0..=1), in µs: the middle of its bucket.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return ((lo + hi) as f64 / 2.0).min(self.max_ns as f64) / 1000.0;
            }
        }
        self.max_ns as f64 / 1000.0
    }

    pub fn mean_us(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.total as f64 / 1000.0
        }
    }

    pub fn max_us(&self) -> f64 {
        self.max_ns as f64 / 1000.0
    }

    /// One `µs count` line per non-empty bucket, lowest first, each value the middle of its
    /// bucket (as [`Histogram::quantile_us`] answers): what several processes' runs merge from.
    pub fn write_buckets(&self, out: &mut impl Write) -> io::Result<()> {
        for (i, &c) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let (lo, hi) = bucket_range(i);
            let us = ((lo + hi) as f64 / 2.0).min(self.max_ns as f64) / 1000.0;
            writeln!(out, "{us:.3} {c}")?;
        }
        Ok(())
    }
}

fn bucket(ns: u64) -> usize {
    if ns < 2 * SUB {
        return ns as usize;
    }
    let shift = (63 - ns.leading_zeros() - SUB_BITS).min(MAX_SHIFT);
    let mantissa = (ns >> shift).min(2 * SUB - 1);
    (SUB * (u64::from(shift) + 1) + mantissa - SUB) as usize
}

/// Lowest and highest value of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mantissa = i % SUB + SUB;
    (mantissa << shift, ((mantissa + 1) << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_one_percent() {
        for ns in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            65_535,
            1_000_000,
            123_456_789,
            1 << 39,
        ] {
            let (lo, hi) = bucket_range(bucket(ns));
            assert!(lo <= ns && ns <= hi, "{ns} not in [{lo}, {hi}]");
            assert!((hi - lo) as f64 <= ns as f64 / 64.0 + 1.0);
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        assert!((h.quantile_us(0.5) - 50.0).abs() < 1.0);
        assert!((h.quantile_us(0.99) - 99.0).abs() < 1.0);
    }

    #[test]
    fn buckets_are_written_lowest_first_with_their_counts() {
        let mut h = Histogram::default();
        for us in [5, 5, 300] {
            h.record(Duration::from_micros(us));
        }
        let mut out = Vec::new();
        h.write_buckets(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<(f64, u64)> = text
            .lines()
            .map(|l| {
                let (us, n) = l.split_once(' ').unwrap();
                (us.parse().unwrap(), n.parse().unwrap())
            })
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!((lines[0].0 - 5.0).abs() < 0.05 && lines[0].1 == 2, "{text}");
        assert!(
            (lines[1].0 - 300.0).abs() < 3.0 && lines[1].1 == 1,
            "{text}"
        );
    }
}
