//! The lock operations every lock-shaped command shares (`LOCK`, `SET ... NX`, the known client
//! scripts, ...): each runs one Redlock round, counts its outcome for `INFO`, and turns a
//! failure to decide into the `NOQUORUM` reply.

use bytes::Bytes;
use futures_util::future::join_all;

use super::Shared;
use crate::error::Error;
use crate::protocol::Reply;
use crate::redlock::LockError;
use crate::stats::Stats;

/// A lock operation's answer, or the error reply that ends the command.
pub type OpResult<T> = Result<T, Reply>;

/// What one attempt to take a lock got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Granted, with its fence when one was asked for.
    Granted(Option<u64>),
    /// Someone else holds it.
    Held,
}

impl Shared {
    fn failed(&self, e: LockError) -> Reply {
        Stats::bump(&self.stats.noquorum);
        Stats::bump(&self.stats.error_replies);
        Error::from(e).into()
    }

    /// Takes `key` with `token` for `ttl_ms`: true when granted, false when held elsewhere.
    pub async fn acquire(&self, key: &[u8], token: Bytes, ttl_ms: u64) -> OpResult<bool> {
        let attempt = self.attempt(key, None, token, ttl_ms).await?;
        Ok(matches!(attempt, Attempt::Granted(_)))
    }

    /// Takes `key` with `token` for `ttl_ms`, with a fence from `fence_key` when given.
    pub async fn attempt(
        &self,
        key: &[u8],
        fence_key: Option<&[u8]>,
        token: Bytes,
        ttl_ms: u64,
    ) -> OpResult<Attempt> {
        let result = match fence_key {
            Some(fence_key) => self
                .redlock
                .lock_fenced(key, fence_key, token, ttl_ms)
                .await
                .map(|g| g.map(|(_, fence)| Some(fence))),
            None => self
                .redlock
                .lock_with_token(key, token, ttl_ms)
                .await
                .map(|g| g.map(|_| None)),
        };
        match result {
            Ok(Some(fence)) => {
                Stats::bump(&self.stats.locks_granted);
                Ok(Attempt::Granted(fence))
            }
            Ok(None) => {
                Stats::bump(&self.stats.locks_refused);
                Ok(Attempt::Held)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Releases `key` if it holds `token`: true when a quorum released it.
    pub async fn release(&self, key: &[u8], token: &[u8]) -> OpResult<bool> {
        match self.redlock.unlock(key, token).await {
            Ok(released) => {
                if released {
                    Stats::bump(&self.stats.unlocks);
                    // Local waiters need not wait for the announcement to come back.
                    self.waiters.wake(key);
                }
                Ok(released)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Sets the TTL of `key` to `ttl_ms` if it holds `token`: true when a quorum did in time.
    pub async fn extend(&self, key: &[u8], token: &[u8], ttl_ms: u64) -> OpResult<bool> {
        match self.redlock.extend(key, token, ttl_ms).await {
            Ok(validity) => {
                if validity.is_some() {
                    Stats::bump(&self.stats.extends);
                }
                Ok(validity.is_some())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The token a quorum holds for `key` and its remaining validity in ms.
    pub async fn inspect(&self, key: &[u8]) -> OpResult<Option<(Bytes, u64)>> {
        self.redlock.inspect(key).await.map_err(|e| self.failed(e))
    }

    /// Takes every key with one token, or none: on any refusal the keys taken are released.
    /// `Ok(true)` when all were granted.
    pub async fn acquire_all(&self, keys: &[Bytes], token: &Bytes, ttl_ms: u64) -> OpResult<bool> {
        let results = join_all(keys.iter().map(|k| self.acquire(k, token.clone(), ttl_ms))).await;
        if results.iter().all(|r| matches!(r, Ok(true))) {
            return Ok(true);
        }
        let taken = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(true)))
            .map(|(k, _)| self.release(k, token));
        join_all(taken).await;
        match results.into_iter().find_map(Result::err) {
            Some(noquorum) => Err(noquorum),
            None => Ok(false),
        }
    }

    /// Extends every key held with `token`: true only when all were extended.
    pub async fn extend_all(&self, keys: &[Bytes], token: &[u8], ttl_ms: u64) -> OpResult<bool> {
        let results = join_all(keys.iter().map(|k| self.extend(k, token, ttl_ms))).await;
        let mut all = true;
        for r in results {
            all &= r?;
        }
        Ok(all)
    }

    /// Releases every key held with `token`: how many a quorum released.
    pub async fn release_all(&self, keys: &[Bytes], token: &[u8]) -> OpResult<i64> {
        let results = join_all(keys.iter().map(|k| self.release(k, token))).await;
        let mut released = 0;
        for r in results {
            released += i64::from(r?);
        }
        Ok(released)
    }
}
