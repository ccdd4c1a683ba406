//! The history checker of the torture tool: pure functions over a recorded history of lock
//! holds, with no I/O and no clock.
//!
//! A **hold** is one client's use of one granted lock: from the moment the grant reply arrived
//! (`start`) to the moment the client finished its critical section (`end`), both in
//! microseconds on one monotonic clock. A hold is **counted** only when the client stayed
//! inside the validity the grant promised (`end <= start + promised_validity`); a client that
//! overran its validity gets no guarantee, so its hold proves nothing either way.
//!
//! What may overlap depends on the hold's [`Kind`]:
//! - **exclusive** (a mutex): nothing. Two counted holds of one key, by different tokens,
//!   whose intervals share a stretch of positive length are a violation;
//! - **shared** (a read lock): other shared holds, never an exclusive one;
//! - **permits(n)** (a counting semaphore): at most n holds of the key at any instant. A hold
//!   that starts while n others are active is a violation.
//!
//! Holds of different kinds on one key that overlap are a violation too (exclusive with
//! anything, permits with anything but permits), except shared with shared. Touching intervals
//! (`a.end == b.start`) are not an overlap: the first holder was done before the second began.
//!
//! The caller decides how `promised_validity_ms` is measured; it must never exceed what the
//! lock service promised, or the checker could blame the service for a client's overrun.
//!
//! A **fence regression** is a grant whose fence is not greater than the fence of some other
//! grant of the same key that had already **ended** when this grant's `LOCK` was sent
//! (`sent_us`). A hold has ended at its `end_us`, or at its deadline if it overran (the lock
//! was not promised beyond it). Fences must follow real-time order: once G1 is over, anything
//! requested afterwards must get a greater fence, whoever granted it. Grants whose intervals
//! overlap in time are not ordered by this rule. Equal fences count as regressions. Holds
//! without a fence take no part.

use std::collections::BTreeMap;

/// What a hold excludes: the kind of lock the client took (`--mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Kind {
    /// A mutex: no other hold of the key at the same time.
    #[default]
    Exclusive,
    /// A read lock: other shared holds only.
    Shared,
    /// One of the key's n permits: at most n holds at once.
    Permits(u32),
}

impl Kind {
    /// Whether `self` may be held while `other` is.
    fn admits(self, other: Kind) -> bool {
        matches!(
            (self, other),
            (Kind::Shared, Kind::Shared) | (Kind::Permits(_), Kind::Permits(_))
        )
    }
}

/// One client's use of one granted lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The lock's key.
    pub key: String,
    /// Which client held it.
    pub client: u32,
    /// Which proxy granted it.
    pub proxy: u32,
    /// The token the grant returned.
    pub token: String,
    /// When the client sent its `LOCK`, µs since the start of the run (at or before `start_us`).
    pub sent_us: u64,
    /// When the grant reply was received, µs since the start of the run.
    pub start_us: u64,
    /// How long from `start_us` the lock was promised to be safe, in ms.
    pub promised_validity_ms: u64,
    /// When the client finished its critical section, µs since the start of the run.
    pub end_us: u64,
    /// A fencing token, when the lock service hands one out.
    pub fence: Option<u64>,
    /// What it excludes.
    pub kind: Kind,
}

impl Hold {
    /// The last instant, µs, at which the hold is still inside its promised validity.
    pub fn deadline_us(&self) -> u64 {
        self.start_us
            .saturating_add(self.promised_validity_ms.saturating_mul(1_000))
    }

    /// True when the client finished inside the promised validity (and the record is sane:
    /// it did not end before it began).
    pub fn counted(&self) -> bool {
        self.start_us <= self.end_us && self.end_us <= self.deadline_us()
    }

    /// When the hold was over for the fence check, µs: its end, or its deadline when it overran
    /// (past the deadline the lock was not its own any more); never before the grant arrived.
    pub fn ended_us(&self) -> u64 {
        self.end_us.min(self.deadline_us()).max(self.start_us)
    }
}

/// A grant whose fence did not exceed that of an earlier, already ended grant of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRegression {
    /// The ended grant with the highest fence among those that ended before `later` was asked
    /// for (the earliest-ended one at equal fences).
    pub earlier: Hold,
    /// The grant whose fence was not greater.
    pub later: Hold,
}

impl FenceRegression {
    /// The key both held.
    pub fn key(&self) -> &str {
        &self.earlier.key
    }
}

/// Counted holds of one key that overlapped where their kinds forbid it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The hold that started first (or, at equal starts, the one listed first).
    pub first: Hold,
    /// The hold that started while `first` was still held.
    pub second: Hold,
    /// How many holds of the key were active when `second` started, itself included: 2 for
    /// a pair of excluding holds; for permits, more than the permits.
    pub holders: usize,
}

impl Violation {
    /// The key both held.
    pub fn key(&self) -> &str {
        &self.first.key
    }

    /// How long both held the key at once, µs.
    pub fn overlap_us(&self) -> u64 {
        let start = self.first.start_us.max(self.second.start_us);
        let end = self.first.end_us.min(self.second.end_us);
        end.saturating_sub(start)
    }
}

/// Holds of one key, by whether they count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCounts {
    /// Holds that ended inside their promised validity.
    pub counted: usize,
    /// Holds that overran their validity (or were malformed): not checked.
    pub not_counted: usize,
}

/// What the checker found in a history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Per key, how many holds counted and how many did not.
    pub keys: BTreeMap<String, KeyCounts>,
    /// Every overlapping pair of counted holds, ordered by the second hold's start.
    pub violations: Vec<Violation>,
    /// Every grant whose fence regressed, ordered by its `sent_us`.
    pub fence_regressions: Vec<FenceRegression>,
    /// Holds that carried a fence.
    pub fenced: usize,
}

impl Report {
    /// Counted holds over all keys.
    pub fn counted(&self) -> usize {
        self.keys.values().map(|k| k.counted).sum()
    }

    /// Not-counted holds over all keys.
    pub fn not_counted(&self) -> usize {
        self.keys.values().map(|k| k.not_counted).sum()
    }

    /// True when no two counted holds overlapped and no fence regressed.
    pub fn is_safe(&self) -> bool {
        self.violations.is_empty() && self.fence_regressions.is_empty()
    }
}

/// Checks a history of holds, in any order.
///
/// Per key, the counted holds are swept in order of start while the ones not yet ended stay in
/// an active set. In a safe history the active set holds at most one entry, so the sweep is
/// O(n log n); every pair it inspects beyond that is a violation it reports.
pub fn check(holds: &[Hold]) -> Report {
    let mut report = Report::default();
    let mut by_key: BTreeMap<&str, Vec<&Hold>> = BTreeMap::new();
    for h in holds {
        let counts = report.keys.entry(h.key.clone()).or_default();
        if h.counted() {
            counts.counted += 1;
            by_key.entry(&h.key).or_default().push(h);
        } else {
            counts.not_counted += 1;
        }
    }
    for mut list in by_key.into_values() {
        // Stable sort: equal starts keep the caller's order, so reports are deterministic.
        list.sort_by_key(|h| h.start_us);
        let mut active: Vec<&Hold> = Vec::new();
        for &b in &list {
            // Sorted by start, so a hold that ended by b's start ends before every later one.
            active.retain(|a| a.end_us > b.start_us);
            // Each active a has a.start <= b.start < a.end, so the shared stretch is
            // [b.start, min(a.end, b.end)): positive exactly when b itself has positive length.
            if b.end_us > b.start_us {
                let others = || active.iter().filter(|a| a.token != b.token);
                // Pairs whose kinds exclude each other.
                for &a in others().filter(|a| !a.kind.admits(b.kind) || !b.kind.admits(a.kind)) {
                    report.violations.push(Violation {
                        first: a.clone(),
                        second: b.clone(),
                        holders: 2,
                    });
                }
                // More holders than permits: the most holders at once are reached at some
                // hold's start, so checking each start finds every excess.
                if let Kind::Permits(n) = b.kind {
                    let holders = 1 + others()
                        .filter(|a| matches!(a.kind, Kind::Permits(_)))
                        .count();
                    if holders > n as usize
                        && let Some(first) = others().find(|a| matches!(a.kind, Kind::Permits(_)))
                    {
                        report.violations.push(Violation {
                            first: (*first).clone(),
                            second: b.clone(),
                            holders,
                        });
                    }
                }
                active.push(b);
            }
        }
    }
    report
        .violations
        .sort_by_key(|v| (v.second.start_us, v.first.start_us));
    report.fenced = holds.iter().filter(|h| h.fence.is_some()).count();
    report.fence_regressions = check_fences(holds);
    report
}

/// The fence check: per key, grants in order of `sent_us` against the highest fence among
/// the grants that ended at or before it (a running maximum over grants sorted by end).
/// O(n log n), and one report per regressed grant however many earlier grants it fell behind.
fn check_fences(holds: &[Hold]) -> Vec<FenceRegression> {
    let mut by_key: BTreeMap<&str, Vec<(&Hold, u64)>> = BTreeMap::new();
    for h in holds {
        if let Some(f) = h.fence {
            by_key.entry(&h.key).or_default().push((h, f));
        }
    }
    let mut out = Vec::new();
    for list in by_key.into_values() {
        let mut by_end = list.clone();
        by_end.sort_by_key(|(h, _)| h.ended_us());
        let mut by_sent = list;
        by_sent.sort_by_key(|(h, _)| h.sent_us);
        let mut ended = by_end.iter().peekable();
        // The two highest fences among grants ended so far (from different grants): a
        // malformed record (start not after sent) can count as ended before its own LOCK, and
        // must then be compared with the runner-up, not with itself.
        let mut top: [Option<(&Hold, u64)>; 2] = [None, None];
        for &(later, fence) in &by_sent {
            while let Some(&&(h, f)) = ended.peek() {
                if h.ended_us() > later.sent_us {
                    break;
                }
                if top[0].is_none_or(|(_, b)| f > b) {
                    top = [Some((h, f)), top[0]];
                } else if top[1].is_none_or(|(_, b)| f > b) {
                    top[1] = Some((h, f));
                }
                ended.next();
            }
            let rival = match top[0] {
                Some((h, _)) if std::ptr::eq(h, later) => top[1],
                other => other,
            };
            if let Some((earlier, f)) = rival
                && f >= fence
            {
                out.push(FenceRegression {
                    earlier: earlier.clone(),
                    later: later.clone(),
                });
            }
        }
    }
    out.sort_by_key(|r| (r.later.sent_us, r.earlier.ended_us()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hold(key: &str, token: &str, start_ms: u64, end_ms: u64, validity_ms: u64) -> Hold {
        Hold {
            key: key.to_owned(),
            client: 0,
            proxy: 0,
            token: token.to_owned(),
            sent_us: start_ms * 1_000,
            start_us: start_ms * 1_000,
            promised_validity_ms: validity_ms,
            end_us: end_ms * 1_000,
            fence: None,
            kind: Kind::Exclusive,
        }
    }

    /// The tokens of each pair.
    fn tokens<'a>(pairs: impl Iterator<Item = (&'a Hold, &'a Hold)>) -> Vec<(String, String)> {
        pairs
            .map(|(a, b)| (a.token.clone(), b.token.clone()))
            .collect()
    }

    fn pairs(report: &Report) -> Vec<(String, String)> {
        tokens(report.violations.iter().map(|v| (&v.first, &v.second)))
    }

    #[test]
    fn empty_history_is_safe() {
        let r = check(&[]);
        assert!(r.is_safe());
        assert_eq!(r.counted(), 0);
        assert!(r.keys.is_empty());
    }

    #[test]
    fn sequential_holds_are_safe() {
        let r = check(&holds("a 0..100, b 150..300, c 400..800"));
        assert!(r.is_safe(), "{:?}", r.violations);
        assert_eq!(r.keys["k"].counted, 3);
    }

    #[test]
    fn overlapping_holds_are_a_violation() {
        let r = check(&[hold("k", "a", 0, 100, 500), hold("k", "b", 50, 200, 500)]);
        assert_eq!(pairs(&r), vec![("a".to_owned(), "b".to_owned())]);
        assert_eq!(r.violations[0].overlap_us(), 50_000);
        assert_eq!(r.violations[0].key(), "k");
    }

    #[test]
    fn a_hold_inside_another_is_a_violation() {
        let r = check(&[hold("k", "b", 20, 30, 500), hold("k", "a", 0, 100, 500)]);
        assert_eq!(pairs(&r), vec![("a".to_owned(), "b".to_owned())]);
        assert_eq!(r.violations[0].overlap_us(), 10_000);
    }

    #[test]
    fn touching_intervals_do_not_overlap() {
        let r = check(&holds("a 0..100, b 100..200, c 200..200, d 200..300"));
        assert!(r.is_safe(), "{:?}", r.violations);
        assert_eq!(r.counted(), 4);
    }

    #[test]
    fn equal_starts_overlap() {
        let r = check(&[hold("k", "a", 10, 20, 500), hold("k", "b", 10, 11, 500)]);
        assert_eq!(r.violations.len(), 1);
    }

    #[test]
    fn one_microsecond_is_enough() {
        let mut a = hold("k", "a", 0, 100, 500);
        let mut b = hold("k", "b", 100, 200, 500);
        a.end_us += 1;
        assert_eq!(check(&[a.clone(), b.clone()]).violations.len(), 1);
        a.end_us -= 1;
        b.start_us -= 1;
        assert_eq!(check(&[a, b]).violations.len(), 1);
    }

    #[test]
    fn holds_past_their_validity_are_not_counted() {
        // b overran its 100 ms validity: whatever it overlapped proves nothing.
        let r = check(&[hold("k", "a", 0, 300, 500), hold("k", "b", 100, 250, 100)]);
        assert!(r.is_safe());
        assert_eq!(
            r.keys["k"],
            KeyCounts {
                counted: 1,
                not_counted: 1
            }
        );
        // Ending exactly at the deadline still counts.
        let r = check(&[hold("k", "a", 0, 300, 500), hold("k", "b", 100, 200, 100)]);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.not_counted(), 0);
    }

    #[test]
    fn a_hold_that_ends_before_it_starts_is_not_counted() {
        let r = check(&[hold("k", "a", 0, 300, 500), hold("k", "b", 200, 100, 500)]);
        assert!(r.is_safe());
        assert_eq!(r.not_counted(), 1);
    }

    #[test]
    fn the_same_token_is_not_a_violation() {
        let r = check(&[hold("k", "a", 0, 100, 500), hold("k", "a", 50, 150, 500)]);
        assert!(r.is_safe());
    }

    #[test]
    fn keys_are_independent() {
        let r = check(&holds(
            "k1:a 0..100, k2:b 0..100, k3:c 50..150, k1:d 100..200, k3:e 120..130",
        ));
        assert_eq!(pairs(&r), vec![("c".to_owned(), "e".to_owned())]);
        assert_eq!(r.keys.len(), 3);
        assert_eq!(r.keys["k1"].counted, 2);
        assert_eq!(r.keys["k3"].counted, 2);
    }

    #[test]
    fn every_overlapping_pair_is_reported() {
        let r = check(&holds("a 0..100, b 10..100, c 20..30, d 40..50"));
        // a-b, a-c, b-c, a-d, b-d; c and d do not touch.
        assert_eq!(r.violations.len(), 5);
    }

    #[test]
    fn deadlines_saturate() {
        let h = Hold {
            promised_validity_ms: u64::MAX,
            ..hold("k", "a", 5, 10, 0)
        };
        assert_eq!(h.deadline_us(), u64::MAX);
        assert!(h.counted());
    }

    /// The definition, checked pair by pair.
    fn brute_force(holds: &[Hold]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, a) in holds.iter().enumerate() {
            for b in &holds[i + 1..] {
                let overlap = a.start_us.max(b.start_us) < a.end_us.min(b.end_us);
                if a.key == b.key && a.token != b.token && a.counted() && b.counted() && overlap {
                    let mut pair = [a.token.clone(), b.token.clone()];
                    pair.sort();
                    out.push((pair[0].clone(), pair[1].clone()));
                }
            }
        }
        out.sort();
        out
    }

    fn unordered(report: &Report) -> Vec<(String, String)> {
        let mut out: Vec<_> = pairs(report)
            .into_iter()
            .map(|(a, b)| if a <= b { (a, b) } else { (b, a) })
            .collect();
        out.sort();
        out
    }

    fn history(max_len: usize, span_us: u64) -> impl Strategy<Value = Vec<Hold>> {
        let one = (
            0..4u8,
            0..span_us,
            0..span_us / 4,
            0..span_us / 1_000 / 4,
            0..3u32,
        );
        prop::collection::vec(one, 0..max_len).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (key, start, len, validity, proxy))| Hold {
                    key: format!("k{key}"),
                    client: i as u32 % 7,
                    proxy,
                    token: format!("t{i:05}"),
                    sent_us: start,
                    start_us: start,
                    promised_validity_ms: validity,
                    end_us: start + len,
                    fence: None,
                    kind: Kind::Exclusive,
                })
                .collect()
        })
    }

    /// A history written `token start..end` (ms; of key `k` unless written `key:token`,
    /// promised 500 ms), or for a fenced grant `token sent/start..end #fence`, comma-separated.
    fn holds(spec: &str) -> Vec<Hold> {
        spec.split(", ")
            .map(|entry| {
                let (name, times) = entry.split_once(' ').expect("a token, then times");
                let (key, token) = name.split_once(':').unwrap_or(("k", name));
                let n: Vec<u64> = times
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("times are numbers"))
                    .collect();
                match n[..] {
                    [start, end] => hold(key, token, start, end, 500),
                    [sent, start, end, fence] => Hold {
                        key: key.to_owned(),
                        ..fenced(token, sent, start, end, fence)
                    },
                    _ => panic!("not a hold: {entry}"),
                }
            })
            .collect()
    }

    /// A fenced grant: LOCK sent at `sent_ms`, reply at `start_ms`, done at `end_ms`.
    fn fenced(token: &str, sent_ms: u64, start_ms: u64, end_ms: u64, fence: u64) -> Hold {
        Hold {
            sent_us: sent_ms * 1_000,
            fence: Some(fence),
            ..hold("k", token, start_ms, end_ms, 500)
        }
    }

    fn regressed(report: &Report) -> Vec<(String, String)> {
        tokens(
            report
                .fence_regressions
                .iter()
                .map(|r| (&r.earlier, &r.later)),
        )
    }

    #[test]
    fn increasing_fences_pass() {
        let r = check(&holds("a 0/1..10 #1, b 10/12..20 #2, c 25/26..30 #7"));
        assert!(r.is_safe(), "{:?}", r.fence_regressions);
        assert_eq!(r.fenced, 3);
    }

    #[test]
    fn a_lower_or_equal_fence_after_an_ended_grant_regresses() {
        let r = check(&holds("a 0/1..10 #5, b 10/12..20 #4, c 30/31..40 #5"));
        // b asked when a (fence 5) had ended; so did c, and equal is not greater.
        assert_eq!(
            regressed(&r),
            vec![("a".into(), "b".into()), ("a".into(), "c".into())]
        );
        assert!(!r.is_safe());
        assert!(r.violations.is_empty());
    }

    #[test]
    fn grants_asked_for_before_the_other_ended_are_not_ordered() {
        // b's LOCK was sent at 9, before a ended at 10: a waiting or racing request may get a
        // lower fence (it read the counters before a's grant); only ended grants constrain it.
        let r = check(&[fenced("a", 0, 1, 10, 5), fenced("b", 9, 12, 20, 4)]);
        assert!(r.fence_regressions.is_empty());
    }

    #[test]
    fn an_overrun_hold_ends_at_its_deadline() {
        // a was promised 5 ms from 1 ms and ran to 50: for fences it ended at 6.
        let a = Hold {
            promised_validity_ms: 5,
            ..fenced("a", 0, 1, 50, 9)
        };
        assert_eq!(a.ended_us(), 6_000);
        let r = check(&[a, fenced("b", 6, 7, 8, 3)]);
        assert_eq!(regressed(&r), vec![("a".into(), "b".into())]);
    }

    #[test]
    fn the_highest_ended_fence_is_the_one_reported() {
        let r = check(&holds(
            "a 0/1..2 #3, b 3/4..5 #8, c 6/7..8 #6, d 10/11..12 #7",
        ));
        assert_eq!(
            regressed(&r),
            vec![("b".into(), "c".into()), ("b".into(), "d".into())]
        );
    }

    #[test]
    fn holds_without_fences_and_other_keys_take_no_part() {
        let other = Hold {
            key: "other".into(),
            ..fenced("x", 20, 21, 22, 1)
        };
        let plain = Hold {
            fence: None,
            ..fenced("p", 20, 21, 22, 0)
        };
        let r = check(&[fenced("a", 0, 1, 10, 5), other, plain]);
        assert!(r.is_safe(), "{:?}", r.fence_regressions);
        assert_eq!(r.fenced, 2);
    }

    #[test]
    fn a_malformed_hold_is_not_compared_with_itself() {
        // Sent, granted and ended in the same µs: it ended "before" its own LOCK.
        let r = check(&[fenced("a", 5, 5, 5, 4)]);
        assert!(r.fence_regressions.is_empty());
        let r = check(&[fenced("a", 5, 5, 5, 4), fenced("b", 1, 2, 3, 4)]);
        assert_eq!(regressed(&r), vec![("b".into(), "a".into())]);
    }

    /// The fence definition, pair by pair: the set of regressed grants.
    fn fence_brute_force(holds: &[Hold]) -> Vec<String> {
        let mut out = Vec::new();
        for (j, b) in holds.iter().enumerate() {
            let regressed = holds.iter().enumerate().any(|(i, a)| {
                i != j
                    && a.key == b.key
                    && a.ended_us() <= b.sent_us
                    && matches!((a.fence, b.fence), (Some(fa), Some(fb)) if fa >= fb)
            });
            if regressed {
                out.push(b.token.clone());
            }
        }
        out.sort();
        out
    }

    fn fenced_history(max_len: usize, span_us: u64) -> impl Strategy<Value = Vec<Hold>> {
        let one = (
            (0..3u8, 0..span_us, 0..span_us / 50, 0..span_us / 8),
            (0..span_us / 1_000 / 4, 0..40u64, 0..10u8),
        );
        prop::collection::vec(one, 0..max_len).prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(
                    |(i, ((key, sent, rtt, len), (validity, fence, kind)))| Hold {
                        key: format!("k{key}"),
                        client: i as u32 % 7,
                        proxy: i as u32 % 2,
                        token: format!("t{i:05}"),
                        sent_us: sent,
                        start_us: sent + rtt,
                        promised_validity_ms: validity,
                        end_us: sent + rtt + len,
                        // Mostly fences that grow with time, some random, some missing.
                        fence: match kind {
                            0 => None,
                            1 | 2 => Some(fence),
                            _ => Some(sent / 1_000 + fence / 20),
                        },
                        kind: Kind::Exclusive,
                    },
                )
                .collect()
        })
    }

    proptest! {
        #[test]
        fn matches_the_pairwise_definition(holds in history(60, 2_000_000)) {
            let report = check(&holds);
            prop_assert_eq!(unordered(&report), brute_force(&holds));
            prop_assert_eq!(report.counted(), holds.iter().filter(|h| h.counted()).count());
            prop_assert_eq!(report.counted() + report.not_counted(), holds.len());
        }

        #[test]
        fn mostly_sequential_histories_match_too(holds in history(400, 100_000_000)) {
            prop_assert_eq!(unordered(&check(&holds)), brute_force(&holds));
        }

        #[test]
        fn fences_match_the_pairwise_definition(holds in fenced_history(80, 2_000_000)) {
            let report = check(&holds);
            let mut got: Vec<String> =
                report.fence_regressions.iter().map(|r| r.later.token.clone()).collect();
            got.sort();
            prop_assert_eq!(got, fence_brute_force(&holds));
            for r in &report.fence_regressions {
                // The reported pair is itself a witness.
                prop_assert!(r.earlier.ended_us() <= r.later.sent_us);
                prop_assert!(r.earlier.fence >= r.later.fence);
                prop_assert!(r.earlier.token != r.later.token);
            }
        }
    }

    #[test]
    fn a_large_random_history_matches_the_pairwise_definition() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut holds = Vec::new();
        // Per key, a mostly sequential chain of holds with some overlaps and overruns mixed in.
        for key in 0..5 {
            let mut t = 0u64;
            for i in 0..1_000 {
                let len = rng.random_range(1..50_000u64);
                let start = if rng.random_bool(0.03) {
                    t.saturating_sub(rng.random_range(0..20_000))
                } else {
                    t + rng.random_range(0..5_000)
                };
                let validity_ms = if rng.random_bool(0.1) {
                    len / 1_000 / 2
                } else {
                    len / 1_000 + 1
                };
                holds.push(Hold {
                    key: format!("key{key}"),
                    client: rng.random_range(0..16),
                    proxy: rng.random_range(0..2),
                    token: format!("{key}-{i}"),
                    sent_us: start,
                    start_us: start,
                    promised_validity_ms: validity_ms,
                    end_us: start + len,
                    fence: None,
                    kind: Kind::Exclusive,
                });
                t = t.max(start + len);
            }
        }
        // The checker takes any order.
        for i in (1..holds.len()).rev() {
            holds.swap(i, rng.random_range(0..=i));
        }
        let report = check(&holds);
        let expected = brute_force(&holds);
        assert!(!expected.is_empty(), "the history should contain overlaps");
        assert_eq!(unordered(&report), expected);
        assert_eq!(report.counted() + report.not_counted(), 5_000);
        assert!(report.not_counted() > 0);
    }

    /// Holds as `holds` reads them, all of `kind`.
    fn of_kind(spec: &str, kind: Kind) -> Vec<Hold> {
        holds(spec)
            .into_iter()
            .map(|h| Hold { kind, ..h })
            .collect()
    }

    #[test]
    fn readers_share_and_a_writer_excludes_them() {
        let mut h = of_kind("r1 0..100, r2 50..150, r3 60..70", Kind::Shared);
        assert!(check(&h).is_safe());
        // A writer while readers hold: one violation per reader it overlaps.
        h.push(hold("k", "w", 65, 80, 500));
        assert_eq!(
            pairs(&check(&h)),
            vec![
                ("r1".to_owned(), "w".to_owned()),
                ("r2".to_owned(), "w".to_owned()),
                ("r3".to_owned(), "w".to_owned()),
            ]
        );
        // A reader while a writer holds.
        let mut h = vec![hold("k", "w", 0, 100, 500)];
        h.extend(of_kind("r 50..60", Kind::Shared));
        assert_eq!(pairs(&check(&h)), vec![("w".to_owned(), "r".to_owned())]);
        // After each other: fine.
        let mut h = of_kind("r 0..50", Kind::Shared);
        h.push(hold("k", "w", 50, 100, 500));
        h.extend(of_kind("r2 100..150", Kind::Shared));
        assert!(check(&h).is_safe());
    }

    #[test]
    fn permits_bound_the_holders_at_once() {
        // Two permits: three holds, never more than two at once.
        let ok = of_kind("a 0..100, b 50..150, c 100..200", Kind::Permits(2));
        assert!(check(&ok).is_safe(), "{:?}", check(&ok).violations);
        // A third while two hold: one violation, naming three holders.
        let bad = of_kind("a 0..100, b 50..150, c 60..70", Kind::Permits(2));
        let r = check(&bad);
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].holders, 3);
        assert_eq!(r.violations[0].second.token, "c");
        // Permits and a mutex on one key never overlap.
        let mut mixed = of_kind("a 0..100", Kind::Permits(5));
        mixed.push(hold("k", "m", 10, 20, 500));
        assert_eq!(
            pairs(&check(&mixed)),
            vec![("a".to_owned(), "m".to_owned())]
        );
    }

    /// What the holders of one key may take at once: each master admits up to `limit`.
    struct Master {
        held: Vec<(String, u64)>,
    }

    /// A semaphore of `limit` permits over `masters.len()` masters, as the naive design takes
    /// it: each master keeps a counting set and admits while it holds fewer than `limit`; a
    /// client holds when a majority admitted it. The one returned is the hold, if granted.
    fn naive_acquire(
        masters: &mut [Master],
        order: &[usize],
        token: &str,
        now: u64,
        limit: usize,
    ) -> bool {
        let quorum = masters.len() / 2 + 1;
        let mut yes = 0;
        for &m in order {
            let master = &mut masters[m];
            master.held.retain(|(_, end)| *end > now);
            if master.held.len() < limit {
                master.held.push((token.to_owned(), u64::MAX));
                yes += 1;
            }
            if yes == quorum {
                return true;
            }
        }
        false
    }

    /// The checker catches the naive per-master counting semaphore: with 3 masters and 2
    /// permits, three clients that each reach a different pair of masters ({A,B}, {B,C},
    /// {C,A}) are all admitted at once.
    #[test]
    fn naive_per_master_counting_is_caught() {
        let mut masters: Vec<Master> = (0..3).map(|_| Master { held: Vec::new() }).collect();
        let mut history = Vec::new();
        for (i, order) in [[0, 1, 2], [1, 2, 0], [2, 0, 1]].iter().enumerate() {
            let token = format!("c{i}");
            if naive_acquire(&mut masters, order, &token, i as u64, 2) {
                history.push(Hold {
                    kind: Kind::Permits(2),
                    ..hold("sem", &token, i as u64, 100, 500)
                });
            }
        }
        assert_eq!(history.len(), 3, "the naive design admitted all three");
        let r = check(&history);
        assert!(!r.is_safe());
        assert_eq!(r.violations[0].holders, 3);
    }

    /// The design that cannot exceed its permits: n slot mutexes, each granted by a quorum;
    /// quorum intersection keeps any slot to one holder, so n slots bound the holders by n.
    /// Random arrival orders over the same masters never get past the checker.
    #[test]
    fn slot_mutexes_stay_within_their_permits() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for _ in 0..200 {
            let permits = rng.random_range(1..4usize);
            // slots[s][m]: who holds slot s on master m, and until when.
            let mut slots = vec![vec![None::<(String, u64)>; 3]; permits];
            let mut history = Vec::new();
            for i in 0..12u64 {
                let now = i * 10;
                let end = now + rng.random_range(5..60);
                let token = format!("c{i}");
                let order: Vec<usize> = {
                    let mut o = vec![0, 1, 2];
                    for j in (1..3).rev() {
                        o.swap(j, rng.random_range(0..=j));
                    }
                    o.truncate(rng.random_range(2..=3));
                    o
                };
                for slot in &mut slots {
                    let mut yes = Vec::new();
                    for &m in &order {
                        let free = slot[m].as_ref().is_none_or(|(_, until)| *until <= now);
                        if free {
                            slot[m] = Some((token.clone(), end));
                            yes.push(m);
                        }
                    }
                    if yes.len() >= 2 {
                        history.push(Hold {
                            kind: Kind::Permits(permits as u32),
                            ..hold("sem", &token, now, end, 500)
                        });
                        break;
                    }
                    // Not granted: give back what it took.
                    for m in yes {
                        slot[m] = None;
                    }
                }
            }
            let r = check(&history);
            assert!(r.is_safe(), "{permits} permits: {:?}", r.violations);
        }
    }
}
