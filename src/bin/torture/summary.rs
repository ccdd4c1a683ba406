//! The end of a run: the human-readable summary (with the first violations and the faults
//! around them) and the same numbers as one JSON line, which starts `{"torture":`.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::checker::{Hold, Report};
use crate::clients::Counters;
use crate::faults::{self, FaultCounts, FaultEvent};
use crate::{Args, clock};

/// Violations printed in detail.
const SHOWN: usize = 5;

#[derive(Debug)]
pub struct Summary<'a> {
    pub args: &'a Args,
    pub seed: u64,
    pub kinds: &'a [&'a str],
    pub traffic_us: u64,
    pub counters: &'a Counters,
    pub faults: FaultCounts,
    pub report: &'a Report,
    pub stuck_clients: usize,
}

impl Summary<'_> {
    /// Distinct holds taking part in some violation (one long hold can overlap many).
    fn violating_holds(&self) -> usize {
        let mut tokens: Vec<&str> = self
            .report
            .violations
            .iter()
            .flat_map(|v| [v.first.token.as_str(), v.second.token.as_str()])
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens.len()
    }

    fn grants_per_s(&self) -> f64 {
        Counters::get(&self.counters.grants) as f64 / (self.traffic_us.max(1) as f64 / 1e6)
    }

    pub fn human(&self, events: &[FaultEvent]) -> String {
        let c = self.counters;
        let f = &self.faults;
        let r = self.report;
        let mut out = String::new();
        let _ = writeln!(out, "\n=== torture summary (seed {}) ===", self.seed);
        let _ = writeln!(
            out,
            "traffic      {:.1} s, {} lock attempts, {} grants ({:.1}/s)",
            self.traffic_us as f64 / 1e6,
            Counters::get(&c.attempts),
            Counters::get(&c.grants),
            self.grants_per_s()
        );
        let _ = writeln!(
            out,
            "holds        {} counted, {} not counted (overran their validity)",
            r.counted(),
            r.not_counted()
        );
        for (key, k) in &r.keys {
            let _ = writeln!(
                out,
                "  {key:<14} {} counted, {} not counted",
                k.counted, k.not_counted
            );
        }
        let _ = writeln!(
            out,
            "replies      {} refused (held), {} NOQUORUM, {} other errors, {} connection errors",
            Counters::get(&c.refused),
            Counters::get(&c.noquorum),
            Counters::get(&c.errors),
            Counters::get(&c.conn_errors)
        );
        let _ = writeln!(
            out,
            "unlocks      {} released, {} already gone, {} failed",
            Counters::get(&c.unlocked),
            Counters::get(&c.unlock_missed),
            Counters::get(&c.unlock_failed)
        );
        let _ = writeln!(
            out,
            "faults       {} master restarts ({} double), {} pauses, {} proxy kills, \
             {} failovers ({} double), {} compound, {} failed restarts",
            f.master_restarts,
            f.double_restarts,
            f.pauses,
            f.proxy_kills,
            f.failovers,
            f.double_failovers,
            f.compound,
            f.restart_failures
        );
        if self.args.cluster_shards.is_some() {
            let _ = writeln!(
                out,
                "cluster      {} reshards ({} keys moved), {} CLUSTER FAILOVERs, {} shard \
                 masters killed, {} cluster faults failed",
                f.reshards,
                f.resharded_keys,
                f.cluster_failovers,
                f.shard_kills,
                f.cluster_fault_failures
            );
        }
        if self.stuck_clients > 0 {
            let _ = writeln!(
                out,
                "WARNING      {} client tasks did not finish",
                self.stuck_clients
            );
        }
        let _ = writeln!(
            out,
            "violations   {} overlapping pairs of counted holds, among {} holds",
            r.violations.len(),
            self.violating_holds()
        );
        for v in r.violations.iter().take(SHOWN) {
            let holders = match v.holders {
                2 => String::new(),
                n => format!(", {n} holders at once"),
            };
            let _ = writeln!(
                out,
                "  key {}: overlap {:.1} ms{holders}\n    {}\n    {}",
                v.key(),
                v.overlap_us() as f64 / 1e3,
                describe(&v.first),
                describe(&v.second)
            );
            out.push_str(&self.faults_around(events, &v.first, &v.second));
        }
        and_more(&mut out, r.violations.len());
        if self.args.fence {
            let _ = writeln!(
                out,
                "fences       {} fenced grants, {} fence regressions",
                r.fenced,
                r.fence_regressions.len()
            );
            for g in r.fence_regressions.iter().take(SHOWN) {
                let _ = writeln!(
                    out,
                    "  key {}: fence {:?} asked for at {} after fence {:?} ended at {}\n    {}\n    {}",
                    g.key(),
                    g.later.fence,
                    clock::secs(g.later.sent_us).trim(),
                    g.earlier.fence,
                    clock::secs(g.earlier.ended_us()).trim(),
                    describe(&g.earlier),
                    describe(&g.later)
                );
                out.push_str(&self.faults_around(events, &g.earlier, &g.later));
            }
            and_more(&mut out, r.fence_regressions.len());
        }
        out
    }

    /// The faults logged from a lock's lifetime before `first` began until `last` ended, as
    /// indented lines under a heading; empty when there were none.
    fn faults_around(&self, events: &[FaultEvent], first: &Hold, last: &Hold) -> String {
        let from = first.start_us.saturating_sub(self.args.max_ttl_ms * 1_000);
        let faults = faults::events_between(events, from, last.end_us);
        if faults.is_empty() {
            faults
        } else {
            format!("    faults around it:\n{faults}")
        }
    }

    /// The summary as one line of JSON.
    pub fn json(&self) -> String {
        let c = self.counters;
        let r = self.report;
        let a = self.args;
        let line = Line {
            torture: 1,
            seed: self.seed,
            duration_s: decimals(self.traffic_us as f64 / 1e6, 3),
            masters: a.masters,
            proxies: a.proxies,
            clients: a.clients,
            keys: a.keys,
            mode: a.mode.name(),
            permits: (a.mode == crate::clients::Mode::Permits).then_some(a.permits),
            max_ttl_ms: a.max_ttl_ms,
            persistent_masters: a.persistent_masters,
            cluster_shards: a.cluster_shards,
            faults: self.kinds,
            attempts: Counters::get(&c.attempts),
            grants: Counters::get(&c.grants),
            grants_per_s: decimals(self.grants_per_s(), 2),
            counted: r.counted(),
            not_counted: r.not_counted(),
            refused: Counters::get(&c.refused),
            noquorum: Counters::get(&c.noquorum),
            errors: Counters::get(&c.errors),
            conn_errors: Counters::get(&c.conn_errors),
            unlocked: Counters::get(&c.unlocked),
            unlock_missed: Counters::get(&c.unlock_missed),
            unlock_failed: Counters::get(&c.unlock_failed),
            fault_counts: self.faults,
            stuck_clients: self.stuck_clients,
            violations: r.violations.len(),
            violating_holds: self.violating_holds(),
            violation_examples: r
                .violations
                .iter()
                .take(SHOWN)
                .map(|v| ViolationLine {
                    key: v.key(),
                    overlap_us: v.overlap_us(),
                    first: (&v.first).into(),
                    second: (&v.second).into(),
                })
                .collect(),
            fence: a.fence,
            fenced: r.fenced,
            fence_regressions: r.fence_regressions.len(),
            fence_regression_examples: r
                .fence_regressions
                .iter()
                .take(SHOWN)
                .map(|g| RegressionLine {
                    key: g.key(),
                    earlier: (&g.earlier).into(),
                    later: (&g.later).into(),
                })
                .collect(),
        };
        serde_json::to_string(&line).expect("plain numbers and strings always serialize")
    }
}

/// The JSON line; field order is the order of the keys.
#[derive(Debug, Serialize)]
struct Line<'a> {
    torture: u8,
    seed: u64,
    duration_s: Box<RawValue>,
    masters: u64,
    proxies: u64,
    clients: u64,
    keys: u64,
    mode: &'static str,
    permits: Option<u32>,
    max_ttl_ms: u64,
    persistent_masters: bool,
    /// Shard masters per member when members are Redis Clusters.
    cluster_shards: Option<u64>,
    faults: &'a [&'a str],
    attempts: u64,
    grants: u64,
    grants_per_s: Box<RawValue>,
    counted: usize,
    not_counted: usize,
    refused: u64,
    noquorum: u64,
    errors: u64,
    conn_errors: u64,
    unlocked: u64,
    unlock_missed: u64,
    unlock_failed: u64,
    #[serde(flatten)]
    fault_counts: FaultCounts,
    stuck_clients: usize,
    violations: usize,
    violating_holds: usize,
    violation_examples: Vec<ViolationLine<'a>>,
    fence: bool,
    fenced: usize,
    fence_regressions: usize,
    fence_regression_examples: Vec<RegressionLine<'a>>,
}

#[derive(Debug, Serialize)]
struct ViolationLine<'a> {
    key: &'a str,
    overlap_us: u64,
    first: HoldLine<'a>,
    second: HoldLine<'a>,
}

#[derive(Debug, Serialize)]
struct RegressionLine<'a> {
    key: &'a str,
    earlier: HoldLine<'a>,
    later: HoldLine<'a>,
}

/// A hold in the JSON line (its key is the example's).
#[derive(Debug, Serialize)]
struct HoldLine<'a> {
    client: u32,
    proxy: u32,
    token: &'a str,
    sent_us: u64,
    start_us: u64,
    end_us: u64,
    promised_validity_ms: u64,
    fence: Option<u64>,
}

impl<'a> From<&'a Hold> for HoldLine<'a> {
    fn from(h: &'a Hold) -> Self {
        HoldLine {
            client: h.client,
            proxy: h.proxy,
            token: &h.token,
            sent_us: h.sent_us,
            start_us: h.start_us,
            end_us: h.end_us,
            promised_validity_ms: h.promised_validity_ms,
            fence: h.fence,
        }
    }
}

/// The line that says how many of `total` examples were not shown.
fn and_more(out: &mut String, total: usize) {
    if total > SHOWN {
        let _ = writeln!(out, "  ... and {} more", total - SHOWN);
    }
}

/// `x` (finite) with `places` decimals, trailing zeros included, as the summary prints it.
fn decimals(x: f64, places: usize) -> Box<RawValue> {
    RawValue::from_string(format!("{x:.places$}")).expect("a finite number is JSON")
}

fn describe(h: &Hold) -> String {
    format!(
        "client {:>3} via proxy {} token {}{}: asked {}, held {} → {} (promised {} ms, used {:.1} ms)",
        h.client,
        h.proxy,
        h.token,
        h.fence.map_or(String::new(), |f| format!(" fence {f}")),
        clock::secs(h.sent_us).trim(),
        clock::secs(h.start_us).trim(),
        clock::secs(h.end_us).trim(),
        h.promised_validity_ms,
        h.end_us.saturating_sub(h.start_us) as f64 / 1e3
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use clap::Parser;

    use super::*;
    use crate::checker::check;

    fn hold(token: &str, client: u32, start_ms: u64, end_ms: u64, fence: Option<u64>) -> Hold {
        Hold {
            key: "k".to_owned(),
            client,
            proxy: client % 2,
            token: token.to_owned(),
            sent_us: start_ms * 1_000,
            start_us: start_ms * 1_000,
            promised_validity_ms: 500,
            end_us: end_ms * 1_000,
            fence,
            kind: crate::checker::Kind::Exclusive,
        }
    }

    #[test]
    fn the_json_line_has_every_key_in_order() {
        let args = Args::parse_from(["torture", "--fence"]);
        let counters = Counters::default();
        for (counter, n) in [
            (&counters.attempts, 9),
            (&counters.grants, 5),
            (&counters.refused, 1),
            (&counters.noquorum, 2),
            (&counters.conn_errors, 3),
            (&counters.unlocked, 4),
            (&counters.unlock_missed, 1),
        ] {
            counter.store(n, Ordering::Relaxed);
        }
        // a and b overlap; c asked after a ended and got a lower fence.
        let report = check(&[
            hold("a", 1, 0, 100, Some(3)),
            hold("b", 2, 50, 200, None),
            hold("c", 3, 300, 310, Some(1)),
        ]);
        let summary = Summary {
            args: &args,
            seed: 7,
            kinds: &["restart-empty", "pause"],
            traffic_us: 1_250_000,
            counters: &counters,
            faults: FaultCounts {
                master_restarts: 2,
                double_restarts: 1,
                pauses: 3,
                proxy_kills: 4,
                failovers: 3,
                double_failovers: 1,
                compound: 5,
                restart_failures: 0,
                ..FaultCounts::default()
            },
            report: &report,
            stuck_clients: 0,
        };
        let expected = concat!(
            r#"{"torture":1,"seed":7,"duration_s":1.250,"masters":3,"proxies":2,"clients":16,"#,
            r#""keys":3,"mode":"mutex","permits":null,"max_ttl_ms":3000,"persistent_masters":false,"#,
            r#""cluster_shards":null,"#,
            r#""faults":["restart-empty","pause"],"attempts":9,"grants":5,"#,
            r#""grants_per_s":4.00,"counted":3,"not_counted":0,"refused":1,"noquorum":2,"#,
            r#""errors":0,"conn_errors":3,"unlocked":4,"unlock_missed":1,"unlock_failed":0,"#,
            r#""master_restarts":2,"double_restarts":1,"pauses":3,"proxy_kills":4,"#,
            r#""failovers":3,"double_failovers":1,"compound_faults":5,"restart_failures":0,"#,
            r#""reshards":0,"resharded_keys":0,"cluster_failovers":0,"shard_kills":0,"#,
            r#""cluster_fault_failures":0,"stuck_clients":0,"violations":1,"#,
            r#""violating_holds":2,"violation_examples":[{"key":"k","overlap_us":50000,"#,
            r#""first":{"client":1,"proxy":1,"token":"a","sent_us":0,"start_us":0,"#,
            r#""end_us":100000,"promised_validity_ms":500,"fence":3},"second":{"client":2,"#,
            r#""proxy":0,"token":"b","sent_us":50000,"start_us":50000,"end_us":200000,"#,
            r#""promised_validity_ms":500,"fence":null}}],"fence":true,"fenced":2,"#,
            r#""fence_regressions":1,"fence_regression_examples":[{"key":"k","#,
            r#""earlier":{"client":1,"proxy":1,"token":"a","sent_us":0,"start_us":0,"#,
            r#""end_us":100000,"promised_validity_ms":500,"fence":3},"later":{"client":3,"#,
            r#""proxy":1,"token":"c","sent_us":300000,"start_us":300000,"end_us":310000,"#,
            r#""promised_validity_ms":500,"fence":1}}]}"#,
        );
        assert_eq!(summary.json(), expected);
    }
}
