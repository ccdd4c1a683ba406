//! The report of a `cycle` or `lock` run: a few human-readable lines, then the same numbers as
//! one JSON line (the line scripts read).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::args::{Args, Mode};
use crate::stats::Stats;

/// `x` (finite) with `places` decimals, trailing zeros included, as the text report writes it.
pub fn decimals(x: f64, places: usize) -> Box<RawValue> {
    RawValue::from_string(format!("{x:.places$}")).expect("a finite number is JSON")
}

/// The JSON line; field order is the order of the keys.
#[derive(Debug, Serialize)]
struct Line<'a> {
    tool: &'static str,
    addr: &'a str,
    mode: &'static str,
    fence: bool,
    permits: Option<u32>,
    connections: u32,
    pipeline: u32,
    duration_secs: u64,
    warmup_secs: u64,
    keys: u64,
    ttl_ms: u64,
    idle_open: u64,
    idle_failed: u64,
    cycles_per_sec: Box<RawValue>,
    locks_per_sec: Box<RawValue>,
    requests_per_sec: Box<RawValue>,
    lock_p50_us: Box<RawValue>,
    lock_p99_us: Box<RawValue>,
    lock_p999_us: Box<RawValue>,
    lock_max_us: Box<RawValue>,
    lock_mean_us: Box<RawValue>,
    unlock_p50_us: Box<RawValue>,
    unlock_p99_us: Box<RawValue>,
    granted: u64,
    null: u64,
    cycles: u64,
    unlock_zero: u64,
    errors: u64,
    error_replies: u64,
    unexpected: u64,
    io_errors: u64,
    timeouts: u64,
    first_error: &'a str,
}

#[derive(Debug)]
pub struct Report<'a> {
    pub args: &'a Args,
    pub stats: &'a Stats,
    pub idle_open: u64,
    pub idle_failed: u64,
}

impl Report<'_> {
    pub fn print(&self) {
        let a = self.args;
        let s = self.stats;
        let secs = a.duration_secs as f64;
        let cycles_per_sec = s.cycles as f64 / secs;
        let locks_per_sec = s.lock_latency.total as f64 / secs;
        let l = &s.lock_latency;
        let u = &s.unlock_latency;
        println!(
            "lockbench: {} | {} connections x {} in flight | {} mode{}{} | {} s measured after {} s warm-up | {} idle connections held ({} failed)",
            a.addr,
            a.connections,
            a.pipeline,
            a.mode.name(),
            if a.fence { " (FENCE)" } else { "" },
            a.permits
                .map(|n| format!(" (PERMITS {n})"))
                .unwrap_or_default(),
            a.duration_secs,
            a.warmup_secs,
            self.idle_open,
            self.idle_failed
        );
        match a.mode {
            Mode::Cycle => println!("  LOCK→UNLOCK cycles/s  {cycles_per_sec:.0}"),
            Mode::Lock | Mode::WaitLatency => {
                println!("  LOCK/s                {locks_per_sec:.0}")
            }
        }
        println!(
            "  LOCK latency (µs)     p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            l.quantile_us(0.5),
            l.quantile_us(0.99),
            l.quantile_us(0.999),
            l.max_us(),
            l.mean_us()
        );
        if a.mode == Mode::Cycle {
            println!(
                "  UNLOCK latency (µs)   p50 {:.1}  p99 {:.1}",
                u.quantile_us(0.5),
                u.quantile_us(0.99)
            );
        }
        println!(
            "  granted {}  null {}  unlock:0 {}  errors {} (error replies {}, unexpected {}, I/O {}, timeouts {})",
            s.granted,
            s.null,
            s.unlock_zero,
            s.errors(),
            s.error_replies,
            s.unexpected,
            s.io_errors,
            s.timeouts
        );
        for e in &s.error_samples {
            println!("  error: {e}");
        }

        println!("{}", json(&self.line()));
    }

    fn line(&self) -> Line<'_> {
        let a = self.args;
        let s = self.stats;
        let secs = a.duration_secs as f64;
        let l = &s.lock_latency;
        let u = &s.unlock_latency;
        Line {
            tool: "lockbench",
            addr: &a.addr,
            mode: a.mode.name(),
            fence: a.fence,
            permits: a.permits,
            connections: a.connections,
            pipeline: a.pipeline,
            duration_secs: a.duration_secs,
            warmup_secs: a.warmup_secs,
            keys: a.keys,
            ttl_ms: a.ttl_ms,
            idle_open: self.idle_open,
            idle_failed: self.idle_failed,
            cycles_per_sec: decimals(s.cycles as f64 / secs, 1),
            locks_per_sec: decimals(l.total as f64 / secs, 1),
            requests_per_sec: decimals(s.answered() as f64 / secs, 1),
            lock_p50_us: decimals(l.quantile_us(0.5), 1),
            lock_p99_us: decimals(l.quantile_us(0.99), 1),
            lock_p999_us: decimals(l.quantile_us(0.999), 1),
            lock_max_us: decimals(l.max_us(), 1),
            lock_mean_us: decimals(l.mean_us(), 1),
            unlock_p50_us: decimals(u.quantile_us(0.5), 1),
            unlock_p99_us: decimals(u.quantile_us(0.99), 1),
            granted: s.granted,
            null: s.null,
            cycles: s.cycles,
            unlock_zero: s.unlock_zero,
            errors: s.errors(),
            error_replies: s.error_replies,
            unexpected: s.unexpected,
            io_errors: s.io_errors,
            timeouts: s.timeouts,
            first_error: s.error_samples.first().map_or("", String::as_str),
        }
    }
}

/// One line of JSON.
pub fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain numbers and strings always serialize")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[test]
    fn the_json_line_has_every_key_in_order() {
        let args = Args::parse_from([
            "lockbench",
            "--addr",
            "h\"x:1",
            "--mode",
            "lock",
            "--fence",
            "--duration-secs",
            "3",
        ]);
        let mut stats = Stats {
            granted: 6,
            null: 1,
            cycles: 5,
            unlock_zero: 1,
            error_replies: 2,
            unexpected: 3,
            io_errors: 4,
            timeouts: 5,
            ..Stats::default()
        };
        for ns in [3_039, 17_221, 253_250, 254_263, 1_013_000, 12_505_485] {
            stats.lock_latency.record(Duration::from_nanos(ns));
        }
        for us in [5, 7] {
            stats.unlock_latency.record(Duration::from_micros(us));
        }
        stats.note_error("NOQUORUM \"x\"");
        let report = Report {
            args: &args,
            stats: &stats,
            idle_open: 10,
            idle_failed: 2,
        };
        let expected = concat!(
            r#"{"tool":"lockbench","addr":"h\"x:1","mode":"lock","fence":true,"permits":null,"#,
            r#""connections":50,"#,
            r#""pipeline":1,"duration_secs":3,"warmup_secs":1,"keys":100000,"ttl_ms":5000,"#,
            r#""idle_open":10,"idle_failed":2,"cycles_per_sec":1.7,"locks_per_sec":2.0,"#,
            r#""requests_per_sec":2.7,"lock_p50_us":252.9,"lock_p99_us":12505.5,"#,
            r#""lock_p999_us":12505.5,"lock_max_us":12505.5,"lock_mean_us":2341.0,"#,
            r#""unlock_p50_us":5.0,"unlock_p99_us":7.0,"granted":6,"null":1,"cycles":5,"#,
            r#""unlock_zero":1,"errors":14,"error_replies":2,"unexpected":3,"io_errors":4,"#,
            r#""timeouts":5,"first_error":"NOQUORUM \"x\""}"#,
        );
        assert_eq!(json(&report.line()), expected);
    }

    #[test]
    fn numbers_keep_their_decimals() {
        for (x, places, text) in [
            (1234.56, 1, "1234.6"),
            (0.0, 1, "0.0"),
            (7.0, 1, "7.0"),
            (0.04, 1, "0.0"),
            (12.3456, 3, "12.346"),
            (12.3, 3, "12.300"),
            (0.0005, 3, "0.001"),
        ] {
            assert_eq!(json(&decimals(x, places)), text, "{x} to {places} places");
        }
    }
}
