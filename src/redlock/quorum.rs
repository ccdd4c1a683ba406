//! The arithmetic of Redlock, as pure functions: quorum size, clock-drift allowance, validity, and
//! the grant decision. Everything is integer milliseconds and saturating, so a small TTL or a slow
//! round can never underflow into a long validity.

use std::time::Duration;

/// Smallest TTL that can leave any validity: one elapsed millisecond plus the drift allowance must
/// fit below it (`4 - 1 - drift(4) = 1`).
pub const MIN_TTL_MS: u64 = 4;

/// Votes needed among `n` masters: a strict majority (`n / 2 + 1`, integer division).
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Allowance for clock drift between the proxy and the masters: 1% of the TTL plus 2 ms.
pub fn drift_ms(ttl_ms: u64) -> u64 {
    ttl_ms / 100 + 2
}

/// Elapsed time in whole milliseconds, rounded up: the conservative direction for validity.
pub fn elapsed_ms_ceil(elapsed: Duration) -> u64 {
    let ms = elapsed.as_millis();
    let ms = if elapsed.as_nanos() % 1_000_000 == 0 {
        ms
    } else {
        ms + 1
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Time a lock is still safe to use: `ttl - elapsed - drift`, or `None` when that is not positive.
pub fn validity_ms(ttl_ms: u64, elapsed: Duration) -> Option<u64> {
    let left = ttl_ms
        .saturating_sub(elapsed_ms_ceil(elapsed))
        .saturating_sub(drift_ms(ttl_ms));
    (left > 0).then_some(left)
}

/// What a round of votes among `n` masters amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A quorum said yes in time: granted for this many milliseconds.
    Granted {
        /// Remaining validity, in ms.
        validity_ms: u64,
    },
    /// Enough masters answered, but too few said yes: someone else holds it.
    Refused,
    /// Fewer than a quorum answered in time: nothing can be said about the lock.
    NoQuorum {
        /// Masters that answered, yes or no.
        answered: usize,
    },
    /// A quorum said yes, but only after the validity was used up.
    TooLate {
        /// Milliseconds the round took.
        elapsed_ms: u64,
    },
}

/// Running count of one round's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Masters asked.
    pub n: usize,
    /// Masters that answered yes.
    pub yes: usize,
    /// Masters that answered no.
    pub no: usize,
    /// Masters that failed, timed out, or are not allowed to vote.
    pub failed: usize,
}

impl Tally {
    /// A round among `n` masters with no answers yet.
    pub fn new(n: usize) -> Tally {
        Tally {
            n,
            yes: 0,
            no: 0,
            failed: 0,
        }
    }

    /// Masters that gave an answer, yes or no.
    pub fn answered(&self) -> usize {
        self.yes + self.no
    }

    /// True when waiting for more answers cannot change the outcome's kind: a quorum of yes, so
    /// many no that a quorum of yes is impossible, or every master heard from. Failures alone
    /// do not end a round early, so a NOQUORUM reports every answer that came in time.
    pub fn is_decided(&self) -> bool {
        let q = quorum(self.n);
        self.yes >= q || self.n - self.no < q || self.yes + self.no + self.failed == self.n
    }

    /// The verdict of a round that took `elapsed` for a lock of `ttl_ms`.
    pub fn verdict(&self, ttl_ms: u64, elapsed: Duration) -> Verdict {
        let q = quorum(self.n);
        if self.yes >= q {
            match validity_ms(ttl_ms, elapsed) {
                Some(validity_ms) => Verdict::Granted { validity_ms },
                None => Verdict::TooLate {
                    elapsed_ms: elapsed_ms_ceil(elapsed),
                },
            }
        } else if self.answered() >= q {
            Verdict::Refused
        } else {
            Verdict::NoQuorum {
                answered: self.answered(),
            }
        }
    }
}

/// Remaining validity of a lock as a quorum sees it: given each master's remaining time-to-live
/// for the same token, the time for which at least a quorum of the `n` masters still hold it,
/// less the round's elapsed time and the drift allowance.
pub fn quorum_ttl_ms(n: usize, mut pttls_ms: Vec<u64>, elapsed: Duration) -> Option<u64> {
    let q = quorum(n);
    if pttls_ms.len() < q {
        return None;
    }
    pttls_ms.sort_unstable_by(|a, b| b.cmp(a));
    let held = pttls_ms[q - 1];
    validity_ms(held, elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        let expected = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)];
        for (n, q) in expected {
            assert_eq!(quorum(n), q, "n={n}");
        }
    }

    #[test]
    fn drift_and_validity_follow_the_formula() {
        assert_eq!(drift_ms(10_000), 102);
        assert_eq!(drift_ms(99), 2);
        assert_eq!(validity_ms(10_000, Duration::from_millis(5)), Some(9_893));
        // Elapsed rounds up: 5.1 ms counts as 6.
        assert_eq!(
            validity_ms(10_000, Duration::from_micros(5_100)),
            Some(9_892)
        );
        assert_eq!(validity_ms(MIN_TTL_MS, Duration::from_micros(1)), Some(1));
        assert_eq!(validity_ms(3, Duration::from_micros(1)), None);
        assert_eq!(validity_ms(1, Duration::ZERO), None);
        assert_eq!(validity_ms(100, Duration::from_secs(1)), None);
        assert_eq!(validity_ms(u64::MAX, Duration::MAX), None);
    }

    #[test]
    fn verdicts() {
        let ttl = 1_000;
        let t = |yes, no, failed| Tally {
            n: 3,
            yes,
            no,
            failed,
        };
        let fast = Duration::from_millis(1);
        assert_eq!(
            t(2, 0, 1).verdict(ttl, fast),
            Verdict::Granted { validity_ms: 987 }
        );
        assert_eq!(t(1, 1, 1).verdict(ttl, fast), Verdict::Refused);
        assert_eq!(t(0, 2, 1).verdict(ttl, fast), Verdict::Refused);
        assert_eq!(
            t(1, 0, 2).verdict(ttl, fast),
            Verdict::NoQuorum { answered: 1 }
        );
        assert_eq!(
            t(3, 0, 0).verdict(ttl, Duration::from_millis(990)),
            Verdict::TooLate { elapsed_ms: 990 }
        );
        let one = Tally {
            n: 1,
            yes: 1,
            no: 0,
            failed: 0,
        };
        assert!(matches!(one.verdict(ttl, fast), Verdict::Granted { .. }));
        let two = Tally {
            n: 2,
            yes: 1,
            no: 0,
            failed: 1,
        };
        assert_eq!(two.verdict(ttl, fast), Verdict::NoQuorum { answered: 1 });
    }

    #[test]
    fn decided_early() {
        let mut t = Tally::new(5);
        t.yes = 2;
        assert!(!t.is_decided());
        t.yes = 3;
        assert!(t.is_decided());
        let mut t = Tally::new(5);
        t.no = 2;
        t.failed = 1;
        assert!(!t.is_decided(), "the others' answers still count");
        t.no = 3;
        assert!(t.is_decided(), "only 2 left, 3 needed");
    }

    #[test]
    fn quorum_ttl_takes_the_quorum_th_longest() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            quorum_ttl_ms(3, vec![1000, 5000, 3000], ms),
            Some(3000 - 1 - 32)
        );
        assert_eq!(quorum_ttl_ms(3, vec![5000], ms), None);
        assert_eq!(quorum_ttl_ms(5, vec![10, 9000, 9000], ms), Some(7));
    }

    proptest! {
        #[test]
        fn validity_never_exceeds_ttl_minus_drift(ttl in 0u64..=u64::MAX / 2, elapsed_us in 0u64..10_000_000) {
            let elapsed = Duration::from_micros(elapsed_us);
            if let Some(v) = validity_ms(ttl, elapsed) {
                prop_assert!(v > 0);
                prop_assert!(v + drift_ms(ttl) + elapsed_ms_ceil(elapsed) <= ttl);
                // Real elapsed time plus validity plus drift never passes the TTL.
                prop_assert!(Duration::from_millis(v + drift_ms(ttl)) + elapsed <= Duration::from_millis(ttl));
            }
        }

        #[test]
        fn granted_only_with_a_quorum_and_refused_only_with_answers(
            n in 1usize..=7, yes in 0usize..=7, no in 0usize..=7, ttl in 0u64..100_000, elapsed_ms in 0u64..200_000,
        ) {
            prop_assume!(yes + no <= n);
            let t = Tally { n, yes, no, failed: n - yes - no };
            match t.verdict(ttl, Duration::from_millis(elapsed_ms)) {
                Verdict::Granted { validity_ms } => {
                    prop_assert!(2 * yes > n);
                    prop_assert!(validity_ms < ttl);
                }
                Verdict::Refused => prop_assert!(2 * (yes + no) > n && 2 * yes <= n),
                Verdict::NoQuorum { answered } => prop_assert!(2 * answered <= n),
                Verdict::TooLate { .. } => prop_assert!(2 * yes > n && elapsed_ms + drift_ms(ttl) >= ttl),
            }
        }

        #[test]
        fn two_quorums_always_intersect(n in 1usize..=7) {
            prop_assert!(2 * quorum(n) > n);
        }

        #[test]
        fn quorum_ttl_is_held_by_a_quorum(n in 1usize..=7, pttls in proptest::collection::vec(0u64..100_000, 0..=7)) {
            prop_assume!(pttls.len() <= n);
            if let Some(v) = quorum_ttl_ms(n, pttls.clone(), Duration::ZERO) {
                let holding = pttls.iter().filter(|&&p| p >= v).count();
                prop_assert!(holding >= quorum(n));
            }
        }
    }
}
