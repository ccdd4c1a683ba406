//! The Redlock algorithm over a set of [`Master`]s: ask every master at once, count votes that
//! arrive before the deadline, grant only with a quorum and positive validity, and release on
//! every master when an acquire fails. The arithmetic lives in [`quorum`], pure and
//! property-tested; this module only orchestrates.

pub mod quorum;
pub mod token;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::backend::{BackendError, KeyState, Master};
use quorum::{Tally, Verdict};

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
    #[error("NOQUORUM {answered} of {total} masters answered, {needed} needed")]
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
        "NOQUORUM a quorum agreed only after {elapsed_ms} ms, leaving no validity of the {ttl_ms} ms TTL"
    )]
    TooLate {
        /// How long the round took.
        elapsed_ms: u64,
        /// The TTL asked for.
        ttl_ms: u64,
    },
}

/// The lock service over `masters`.
#[derive(Debug)]
pub struct Redlock<M> {
    masters: Vec<M>,
    deadline: Duration,
}

impl<M: Master> Redlock<M> {
    /// Redlock over `masters`, waiting at most `deadline` for each round of answers.
    pub fn new(masters: Vec<M>, deadline: Duration) -> Self {
        assert!(!masters.is_empty(), "Redlock needs at least one master");
        Redlock { masters, deadline }
    }

    /// The masters, in configuration order.
    pub fn masters(&self) -> &[M] {
        &self.masters
    }

    /// Votes needed for any decision.
    pub fn quorum(&self) -> usize {
        quorum::quorum(self.masters.len())
    }

    /// Tries once to take `key` for `ttl_ms` with a fresh token. `Ok(None)`: someone else holds it.
    pub async fn lock(&self, key: &[u8], ttl_ms: u64) -> Result<Option<Grant>, LockError> {
        self.lock_with_token(key, token::generate(), ttl_ms).await
    }

    /// Tries once to take `key` for `ttl_ms` with the caller's token.
    pub async fn lock_with_token(
        &self,
        key: &[u8],
        token: Bytes,
        ttl_ms: u64,
    ) -> Result<Option<Grant>, LockError> {
        let start = Instant::now();
        let tally = self
            .vote(self.wait_for(ttl_ms), |m| m.acquire(key, &token, ttl_ms))
            .await;
        let outcome = match tally.verdict(ttl_ms, start.elapsed()) {
            Verdict::Granted { validity_ms } => return Ok(Some(Grant { token, validity_ms })),
            Verdict::Refused => Ok(None),
            Verdict::NoQuorum { answered } => Err(self.no_quorum(answered)),
            Verdict::TooLate { elapsed_ms } => Err(LockError::TooLate { elapsed_ms, ttl_ms }),
        };
        // A SET may have landed even where its reply was lost or said no: undo it everywhere.
        // The requests are already queued when `release` returns, so nothing needs to wait.
        for m in &self.masters {
            drop(m.release(key, &token));
        }
        outcome
    }

    /// Releases `key` if it holds `token`: true when a quorum of masters deleted it.
    pub async fn unlock(&self, key: &[u8], token: &[u8]) -> Result<bool, LockError> {
        let tally = self.vote(self.deadline, |m| m.release(key, token)).await;
        if tally.yes >= self.quorum() {
            Ok(true)
        } else if tally.answered() >= self.quorum() {
            Ok(false)
        } else {
            Err(self.no_quorum(tally.answered()))
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
            .vote(self.wait_for(ttl_ms), |m| m.extend(key, token, ttl_ms))
            .await;
        match tally.verdict(ttl_ms, start.elapsed()) {
            Verdict::Granted { validity_ms } => Ok(Some(validity_ms)),
            Verdict::Refused | Verdict::TooLate { .. } => Ok(None),
            Verdict::NoQuorum { answered } => Err(self.no_quorum(answered)),
        }
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
    async fn vote<F>(&self, wait: Duration, ask: impl Fn(&M) -> F) -> Tally
    where
        F: Future<Output = Result<bool, BackendError>>,
    {
        let mut tally = Tally::new(self.masters.len());
        // Every master gets the request; a quarantined one's answer is not a vote.
        let mut pending: FuturesUnordered<_> = self
            .masters
            .iter()
            .map(|m| {
                let votes = m.votes();
                let answer = ask(m);
                async move { (votes, answer.await) }
            })
            .collect();
        let count = async {
            while let Some(answer) = pending.next().await {
                match answer {
                    (true, Ok(true)) => tally.yes += 1,
                    (true, Ok(false)) => tally.no += 1,
                    (false, _) | (_, Err(_)) => tally.failed += 1,
                }
                if tally.is_decided() {
                    break;
                }
            }
        };
        if tokio::time::timeout(wait, count).await.is_err() {
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

#[cfg(test)]
pub mod fake;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim;
