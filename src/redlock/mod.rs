//! The Redlock algorithm over a set of [`Master`]s: ask every master at once, count votes that
//! arrive before the deadline, grant only with a quorum and positive validity, and release on
//! every master when an acquire fails. The arithmetic lives in [`quorum`], pure and
//! property-tested; this module only orchestrates.

pub mod ballot;
mod counted;
pub mod quorum;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::backend::{Ask, KeyState, Master, Votes};
use ballot::Ballot;
pub use counted::{Counted, Taker};
use quorum::{Tally, Verdict};

/// The names one lock has on the masters: the key that holds its token, and its waiting marker
/// (while that exists, the lock's releases are announced to every proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    /// Holds the token, with the lock's TTL.
    pub key: Bytes,
    /// Exists while some proxy waits for the lock.
    pub marker: Bytes,
}

/// A lock granted by a quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token that proves ownership; needed to release or extend.
    pub token: Bytes,
    /// How long the lock is safe to use from the moment of the reply, in ms.
    pub validity_ms: u64,
}

/// An operation that could not decide, because the masters did not let it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// Fewer than a quorum of masters answered in time.
    #[error("{answered} of {total} masters answered, {needed} needed")]
    NoQuorum {
        /// Masters that answered.
        answered: usize,
        /// Quorum size.
        needed: usize,
        /// Masters asked.
        total: usize,
    },
    /// A quorum agreed, but only after the requested TTL's validity was used up.
    #[error(
        "a quorum agreed only after {elapsed_ms} ms, leaving no validity of the {ttl_ms} ms TTL"
    )]
    TooLate {
        /// How long the round took.
        elapsed_ms: u64,
        /// The TTL asked for.
        ttl_ms: u64,
    },
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// How long one step of a fence repair (one page read, or one page's raises) may take before
/// the repair gives up, to be tried again by a later fenced acquire. Steps, not the whole: a
/// repair of any number of counters finishes as long as each step does.
const REPAIR_STEP: Duration = Duration::from_secs(10);

/// The lock service over `masters`.
#[derive(Debug)]
pub struct Redlock<M> {
    /// Shared with a fence repair running on its own task.
    masters: Arc<[M]>,
    deadline: Duration,
    /// Held while fence counters are being repaired.
    repairing: Arc<tokio::sync::Mutex<()>>,
}

impl<M: Master> Redlock<M> {
    /// Redlock over `masters`, waiting at most `deadline` for each round of answers.
    pub fn new(masters: Vec<M>, deadline: Duration) -> Self {
        assert!(!masters.is_empty(), "Redlock needs at least one master");
        Redlock {
            masters: masters.into(),
            deadline,
            repairing: Arc::default(),
        }
    }

    /// The masters, in configuration order.
    pub fn masters(&self) -> &[M] {
        &self.masters
    }

    /// Votes needed for any decision.
    pub fn quorum(&self) -> usize {
        quorum::quorum(self.masters.len())
    }

    /// Tries once to take `lock` for `ttl_ms` with a fresh token. `Ok(None)`: someone else
    /// holds it.
    pub async fn lock(&self, lock: &LockKey, ttl_ms: u64) -> Result<Option<Grant>, LockError> {
        self.lock_with_token(lock, token::generate(), ttl_ms).await
    }

    /// Tries once to take `lock` for `ttl_ms` with the caller's token.
    pub async fn lock_with_token(
        &self,
        lock: &LockKey,
        token: Bytes,
        ttl_ms: u64,
    ) -> Result<Option<Grant>, LockError> {
        let start = Instant::now();
        let tally = self
            .vote(
                self.wait_for(ttl_ms),
                Ask::Acquire {
                    key: &lock.key,
                    token: &token,
                    ttl_ms,
                },
            )
            .await;
        self.settle(lock, token, ttl_ms, tally, start)
    }

    /// Takes `key` like [`Redlock::lock_with_token`], with a fence that is greater than every
    /// fence granted for `key` before, whichever proxy granted it: the highest fence a quorum has
    /// seen, plus one, accepted by a quorum only where it is greater than what that master saw.
    /// Quorum intersection orders the fences; no clock is involved.
    pub async fn lock_fenced(
        &self,
        lock: &LockKey,
        fence_key: &[u8],
        token: Bytes,
        ttl_ms: u64,
    ) -> Result<Option<(Grant, u64)>, LockError> {
        let wait = self.wait_for(ttl_ms);
        self.repair_fences(wait).await;
        // A master that may have lost counters in a restart must not be the one that answers
        // for the fences a quorum has seen.
        let mut reads: FuturesUnordered<_> = self
            .masters
            .iter()
            .filter(|m| m.votes() && !m.fences_lost())
            .map(|m| m.read_fence(fence_key))
            .collect();
        let (mut answered, mut highest) = (0, 0);
        let collect = async {
            while let Some(read) = reads.next().await {
                if let Ok(fence) = read {
                    answered += 1;
                    highest = highest.max(fence);
                }
            }
        };
        let _ = tokio::time::timeout(wait, collect).await;
        if answered < self.quorum() {
            return Err(self.no_quorum(answered));
        }
        let fence = highest + 1;
        let start = Instant::now();
        let tally = self
            .vote(
                wait,
                Ask::AcquireFenced {
                    key: &lock.key,
                    fence_key,
                    token: &token,
                    ttl_ms,
                    fence,
                },
            )
            .await;
        Ok(self
            .settle(lock, token, ttl_ms, tally, start)?
            .map(|grant| (grant, fence)))
    }

    /// Turns an acquire round into its outcome, releasing everywhere unless granted.
    fn settle(
        &self,
        lock: &LockKey,
        token: Bytes,
        ttl_ms: u64,
        tally: Tally,
        start: Instant,
    ) -> Result<Option<Grant>, LockError> {
        let outcome = match tally.verdict(ttl_ms, start.elapsed()) {
            Verdict::Granted { validity_ms } => return Ok(Some(Grant { token, validity_ms })),
            Verdict::Refused => Ok(None),
            Verdict::NoQuorum { answered } => Err(self.no_quorum(answered)),
            Verdict::TooLate { elapsed_ms } => Err(LockError::TooLate { elapsed_ms, ttl_ms }),
        };
        // A SET may have landed even where its reply was lost or said no: undo it everywhere.
        // The requests are already queued when `release` returns, so nothing needs to wait.
        for m in self.masters.iter() {
            drop(m.release(&lock.key, &lock.marker, &token));
        }
        outcome
    }

    /// Starts copying fence counters back into masters that lost them in a restart (see
    /// [`repair`]), unless a repair is under way, and gives it up to `wait` to finish before
    /// this acquire reads fences: a small repair is done before the read, so the repaired
    /// master's answer counts at once; a large one goes on on its own task, and fenced
    /// acquires meanwhile read the other masters (no fenced acquire waits for all of it). One
    /// repair at a time; a master stays out of fence reads until its repair is done.
    async fn repair_fences(&self, wait: Duration) {
        // A restarted master is repaired as soon as it answers, quarantined or not: raising a
        // counter only ever moves it up, and the sooner it holds the counters again, the fewer
        // masters are left without them if others restart too.
        if !self.masters.iter().any(|m| m.fences_lost()) {
            return;
        }
        let Ok(one_at_a_time) = self.repairing.clone().try_lock_owned() else {
            return;
        };
        let masters = self.masters.clone();
        let repairing = tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            repair(&masters).await;
        });
        let _ = tokio::time::timeout(wait, repairing).await;
    }

    /// Sweeps the fence counters of every master once (see the free function `sweep_fences`),
    /// giving those unused since the last sweep an expiry of `expire_ms`; true when every master
    /// was swept.
    pub async fn sweep_fences(&self, expire_ms: u64) -> bool {
        let sweeps = self.masters.iter().map(|m| sweep_fences(m, expire_ms));
        futures_util::future::join_all(sweeps)
            .await
            .into_iter()
            .all(|swept| swept)
    }

    /// Releases `lock` if it holds `token`: true when a quorum of masters deleted it.
    pub async fn unlock(&self, lock: &LockKey, token: &[u8]) -> Result<bool, LockError> {
        let ask = Ask::Release {
            key: &lock.key,
            marker: &lock.marker,
            token,
        };
        let tally = self.vote(self.deadline, ask).await;
        self.released(tally)
    }

    /// Asks every master to announce releases of `lock` for the next `ms` ms (someone here
    /// waits for it), and returns once each has answered or the deadline passed. Only
    /// wake-ups depend on it: a master that missed it costs a waiter its timer, never safety.
    pub async fn announce_waiting(&self, lock: &LockKey, waiter: &[u8], ms: u64) {
        let marks = futures_util::future::join_all(
            self.masters
                .iter()
                .map(|m| m.mark_waiting(&lock.key, &lock.marker, waiter, ms)),
        );
        let _ = tokio::time::timeout(self.deadline, marks).await;
    }

    /// Tells every master that `waiter` (this proxy) waits for `lock` no more. The requests
    /// are sent when this is called, behind any announcement sent before; the future only
    /// waits (up to the deadline) for the answers, and may be dropped.
    pub fn withdraw_waiting(
        &self,
        lock: &LockKey,
        waiter: &[u8],
    ) -> impl Future<Output = ()> + Send + use<M> {
        let unmarks: Vec<_> = self
            .masters
            .iter()
            .map(|m| m.unmark_waiting(&lock.key, &lock.marker, waiter))
            .collect();
        let deadline = self.deadline;
        async move {
            let _ = tokio::time::timeout(deadline, futures_util::future::join_all(unmarks)).await;
        }
    }

    /// Sends a release of `lock` held with `token` to every master and waits for nothing: for a
    /// taker that is gone before it could learn whether it was granted.
    pub fn abandon(&self, lock: &LockKey, token: &[u8]) {
        for m in self.masters.iter() {
            drop(m.release(&lock.key, &lock.marker, token));
        }
    }

    /// Sets the TTL of `key` to `ttl_ms` if it holds `token`. The remaining validity when a quorum
    /// extended it in time; `None` otherwise.
    pub async fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, LockError> {
        let start = Instant::now();
        let tally = self
            .vote(self.wait_for(ttl_ms), Ask::Extend { key, token, ttl_ms })
            .await;
        counted::extended(tally.verdict(ttl_ms, start.elapsed()), self)
    }

    /// Replaces `key`'s `token` with `new_token` and sets its TTL to `ttl_ms`, if it holds
    /// `token`. The remaining validity when a quorum swapped it in time; `None` otherwise (then
    /// masters may hold either token: each still keeps everyone else out, and both expire).
    pub async fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, LockError> {
        let start = Instant::now();
        let ask = Ask::Swap {
            key,
            token,
            new_token,
            ttl_ms,
        };
        let tally = self.vote(self.wait_for(ttl_ms), ask).await;
        counted::extended(tally.verdict(ttl_ms, start.elapsed()), self)
    }

    /// The token a quorum of masters hold for `key` and the validity left as that quorum sees
    /// it; `None` when no quorum holds one token.
    pub async fn inspect(&self, key: &[u8]) -> Result<Option<(Bytes, u64)>, LockError> {
        let start = Instant::now();
        // A quarantined master may have lost the key: its view does not count.
        let mut pending: FuturesUnordered<_> = self
            .masters
            .iter()
            .filter(|m| m.votes())
            .map(|m| m.inspect(key))
            .collect();
        let mut states: Vec<Option<KeyState>> = Vec::with_capacity(self.masters.len());
        let collect = async {
            while let Some(answer) = pending.next().await {
                if let Ok(state) = answer {
                    states.push(state);
                }
            }
        };
        let _ = tokio::time::timeout(self.deadline, collect).await;
        if states.len() < self.quorum() {
            return Err(self.no_quorum(states.len()));
        }
        let elapsed = start.elapsed();
        let held: Vec<&KeyState> = states.iter().flatten().collect();
        for candidate in &held {
            let pttls: Vec<u64> = held
                .iter()
                .filter(|s| s.token == candidate.token)
                .filter_map(|s| s.pttl_ms)
                .collect();
            if pttls.len() >= self.quorum() {
                return Ok(quorum::quorum_ttl_ms(self.masters.len(), pttls, elapsed)
                    .map(|v| (candidate.token.clone(), v)));
            }
        }
        Ok(None)
    }

    /// Asks every master at once and counts the answers that arrive within `wait`, stopping as
    /// soon as the outcome is decided.
    async fn vote(&self, wait: Duration, ask: Ask<'_>) -> Tally {
        let ballot = Ballot::new(self.masters.len());
        let votes: Arc<dyn Votes> = ballot.clone();
        // Every master gets the request; a quarantined one's answer is not a vote.
        for m in self.masters.iter() {
            m.cast(ask, &votes, m.votes());
        }
        let timed_out = tokio::time::timeout(wait, ballot.decided()).await.is_err();
        let mut tally = ballot.tally();
        if timed_out {
            tally.failed = tally.n - tally.yes - tally.no;
        }
        tally
    }

    /// How long to wait for votes on a lock of `ttl_ms`: the deadline, but never past the point
    /// where validity would be gone anyway.
    fn wait_for(&self, ttl_ms: u64) -> Duration {
        let budget = ttl_ms.saturating_sub(quorum::drift_ms(ttl_ms));
        self.deadline.min(Duration::from_millis(budget))
    }

    fn no_quorum(&self, answered: usize) -> LockError {
        LockError::NoQuorum {
            answered,
            needed: self.quorum(),
            total: self.masters.len(),
        }
    }
}

/// Copies fence counters back into the masters that lost them in a restart, from a majority of
/// the others (every granted fence is on a quorum, so a majority's union has its maximum),
/// and marks them repaired. When no majority kept its counters, a floor from the wall clock
/// keeps fences increasing; that case is logged.
///
/// Bounded, for any number of counters: one source at a time, one page of its counters at a
/// time (at most about [`FENCE_PAGE`](crate::backend::FENCE_PAGE), held in memory), each page
/// sent to each restarted master in one request and awaited before the next page is read. So
/// a repair holds one page, keeps at most one request in flight per master, and is given up
/// only when one step misses [`REPAIR_STEP`]. Raising only moves a counter up, so a repair
/// given up half way leaves nothing wrong, only work for the next one.
async fn repair<M: Master>(masters: &[M]) {
    let quorum = quorum::quorum(masters.len());
    let lost: Vec<&M> = masters.iter().filter(|m| m.fences_lost()).collect();
    let mut sources: Vec<&M> = masters
        .iter()
        .filter(|m| m.votes() && !m.fences_lost())
        .collect();
    if sources.len() < quorum {
        // No majority kept its counters (a majority restarted empty, or a new cluster came
        // up): what they held is gone. Raise the floor under every counter on a quorum to
        // the wall clock in microseconds, above any fence handed out before unless the
        // clock went back or a key was granted more than once a microsecond.
        let floor = unix_micros();
        let raised =
            futures_util::future::join_all(masters.iter().map(|m| m.raise_fence_floor(floor)));
        let Ok(raised) = tokio::time::timeout(REPAIR_STEP, raised).await else {
            return;
        };
        if raised.iter().filter(|r| r.is_ok()).count() < quorum {
            return;
        }
        tracing::warn!(
            floor,
            "fence counters rebuilt without a majority that kept them: fences continue \
             above a floor taken from the wall clock"
        );
        sources = masters.iter().collect();
    }
    let needed = quorum.min(sources.len());
    let (mut copied, mut counters) = (0, 0);
    for source in sources {
        if let Some(n) = copy_fences(source, &lost).await {
            copied += 1;
            counters += n;
            if copied == needed {
                break;
            }
        }
    }
    if copied < needed {
        return;
    }
    for m in lost {
        m.fences_repaired();
    }
    tracing::info!(counters, "fence counters repaired on a restarted master");
}

/// Copies every fence counter of `source`, and its floor, into each of `into`, page by page;
/// how many counters, or `None` when a step failed or took longer than [`REPAIR_STEP`].
async fn copy_fences<M: Master>(source: &M, into: &[&M]) -> Option<usize> {
    let (mut cursor, mut copied) = (Bytes::new(), 0);
    // Bounded: a scan ends when its cursor does; the cap only guards a broken one.
    for _ in 0..10_000_000 {
        let page = tokio::time::timeout(REPAIR_STEP, source.fence_page(&cursor))
            .await
            .ok()?
            .ok()?;
        let raises = futures_util::future::join_all(
            into.iter()
                .map(|m| m.raise_fences(&page.counters, page.floor)),
        );
        let raised = tokio::time::timeout(REPAIR_STEP, raises).await.ok()?;
        if !raised.iter().all(Result::is_ok) {
            return None;
        }
        copied += page.counters.len();
        match page.next {
            Some(next) => cursor = next,
            None => return Some(copied),
        }
    }
    None
}

/// One sweep of `master`'s fence counters, page by page: each page's floor raise and
/// expiries in one request, awaited before the next page. False when a step failed or took
/// longer than [`REPAIR_STEP`]; the next sweep starts over, which is harmless.
///
/// Why fences stay strictly increasing per key although counters expire: a fence F for a key
/// is granted only where a quorum accepted it, and a later fenced acquire reads a quorum, so
/// some master m that accepted F answers the read. On m the key reads max(counter, floor).
/// The counter only rises while it exists (a fenced acquire sets it only above what it reads,
/// a repair only raises), and it can only vanish by an expiry that a sweep gave it while it
/// was at or under m's floor, atomically with raising that floor (`SWEEP_FENCES`); any write
/// since clears the expiry, and the floor never falls. So m reads at least F, counter or no
/// counter, and the next fence is above F. A master that restarted empty lost both; it reads
/// nothing until a repair has raised its counters and its floor to those of a majority of the
/// others, which the same argument covers. No clock or sweep timing is involved: a sweep
/// that runs late or never only keeps counters longer.
async fn sweep_fences<M: Master>(master: &M, expire_ms: u64) -> bool {
    let mut cursor = Bytes::new();
    // Bounded: a scan ends when its cursor does; the cap only guards a broken one.
    for _ in 0..10_000_000 {
        let step = tokio::time::timeout(REPAIR_STEP, master.sweep_fences(&cursor, expire_ms));
        match step.await {
            Ok(Ok(Some(next))) => cursor = next,
            Ok(Ok(None)) => return true,
            _ => return false,
        }
    }
    false
}

/// A lock's names on the masters, for tests: the key itself and a marker beside it.
#[cfg(test)]
fn key(name: &[u8]) -> LockKey {
    LockKey {
        key: Bytes::copy_from_slice(name),
        marker: Bytes::from([b"waiting:", name].concat()),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim;
