//! The lock service: everything the proxy does with locks, over any set of [`Master`]s. It owns
//! the key schema ([`keys`]), so a client's key and database become names on the masters only
//! here; it runs each operation through the Redlock core, waits in line for held locks
//! ([`waiters`]), keeps a connection's `SESSION` locks alive ([`session`]), and counts what it
//! grants. Results are typed: a lock held by someone else is a value (`None`, `false`), never an
//! error, and an [`Error`] says why the masters could not decide. Commands turn both into
//! replies; nothing here knows RESP.

pub mod keys;
pub mod session;
pub mod waiters;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::backend::{Master, Member, Names};
use crate::redlock::{LockError, LockKey, Redlock};
use crate::stats::Stats;
use keys::Schema;
use waiters::Waiters;

pub use session::{Limits, Session, Watching};

/// The lock service as the proxy runs it: over [`Member`]s, real masters or in-memory ones.
pub type Locks = LockService<Member>;

/// A connection's handle on [`Locks`].
pub type LocksSession = Session<Member>;

/// Why a lock operation could not decide or act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The masters could not decide (too few answered, or too late).
    #[error(transparent)]
    Masters(#[from] LockError),
    /// A `SESSION` lock of this connection whose extension missed a quorum: the client no
    /// longer holds it.
    #[error("the session lock on '{}' was lost", String::from_utf8_lossy(.key))]
    LockLost {
        /// The client's key.
        key: Bytes,
    },
    /// The connection already holds (or is taking) as many `SESSION` locks as it may.
    #[error("this connection holds {max} SESSION locks, the most it may")]
    TooManySessionLocks {
        /// The connection's cap.
        max: usize,
    },
    /// The connection already has as many `WAIT`s waiting as it may.
    #[error("this connection has {max} LOCK ... WAIT waiting, the most it may")]
    TooManyWaits {
        /// The connection's cap.
        max: usize,
    },
}

/// How to take a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquire {
    /// Time to live on the masters, in ms.
    pub ttl_ms: u64,
    /// Wait up to this long for a held lock, in line with this proxy's other waiters.
    pub wait: Option<Duration>,
    /// Take a fence with the lock.
    pub fence: bool,
    /// Keep it alive while the connection lives (see [`Session`]).
    pub session: bool,
}

impl Acquire {
    /// One attempt for `ttl_ms`, no options.
    pub fn once(ttl_ms: u64) -> Acquire {
        Acquire {
            ttl_ms,
            wait: None,
            fence: false,
            session: false,
        }
    }
}

/// A granted lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The token that proves ownership.
    pub token: Bytes,
    /// Its fence, when one was asked for.
    pub fence: Option<u64>,
}

/// A lock as a quorum sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The token a quorum holds.
    pub token: Bytes,
    /// Validity left, in ms.
    pub validity_ms: u64,
}

/// What one attempt to take a lock got.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    Granted(Option<u64>),
    Held,
}

/// What the service has done since start, for `INFO`. Relaxed atomics: reports, not
/// synchronisation.
#[derive(Debug, Default)]
pub struct LockStats {
    /// Locks granted by a quorum.
    pub granted: AtomicU64,
    /// Acquires refused because another holder has the key.
    pub refused: AtomicU64,
    /// Releases that released a lock.
    pub released: AtomicU64,
    /// Extensions that extended a lock.
    pub extended: AtomicU64,
    /// Session locks held now, over all connections.
    pub session_locks: AtomicU64,
    /// Session locks whose extension missed a quorum.
    pub session_locks_lost: AtomicU64,
}

/// The lock service over masters of type `M`.
#[derive(Debug)]
pub struct LockService<M> {
    redlock: Redlock<M>,
    keys: Schema,
    waiters: Waiters,
    /// This service's name in the waiting markers on the masters: random, so proxies sharing
    /// masters each take only themselves out.
    waiter: Bytes,
    stats: LockStats,
}

impl<M: Master> LockService<M> {
    /// The service over `masters`, waiting at most `deadline` for each round of answers, with
    /// every name under `key_prefix`.
    pub fn new(masters: Vec<M>, deadline: Duration, key_prefix: &str) -> Self {
        LockService {
            redlock: Redlock::new(masters, deadline),
            keys: Schema::new(key_prefix),
            waiters: Waiters::default(),
            waiter: crate::redlock::token::generate(),
            stats: LockStats::default(),
        }
    }

    /// The names masters need besides each lock's own, under `key_prefix`: what a master is
    /// started with before the service exists.
    pub fn names(key_prefix: &str) -> Names {
        Schema::new(key_prefix).names()
    }

    /// The masters, in configuration order.
    pub fn masters(&self) -> &[M] {
        self.redlock.masters()
    }

    /// Votes needed for any decision.
    pub fn quorum(&self) -> usize {
        self.redlock.quorum()
    }

    /// What it has done since start.
    pub fn stats(&self) -> &LockStats {
        &self.stats
    }

    /// Sweeps every master's fence counters once: the floor under each master's counters is
    /// raised to the highest of them, and counters unused since the last sweep are given an
    /// expiry of `expire_ms` (see `redlock::sweep_fences` for why fences stay increasing).
    pub async fn sweep_fences(&self, expire_ms: u64) -> bool {
        self.redlock.sweep_fences(expire_ms).await
    }

    /// Keys with a waiter on this proxy now.
    pub fn waiting_keys(&self) -> usize {
        self.waiters.len()
    }

    /// Waits under way on this proxy now (blocked `LOCK ... WAIT`s).
    pub fn waiting(&self) -> usize {
        self.waiters.waiting()
    }

    /// Wakes this proxy's waiters on the lock whose name on the masters is `key`: a master
    /// announced its release.
    pub fn released(&self, key: &[u8]) {
        self.waiters.wake(key);
    }

    /// Takes `key` in database `db` with `token` as `how` says (its `session` is the
    /// [`Session`]'s business). `None` when someone else holds it (or held it for the whole
    /// wait).
    pub async fn acquire(
        &self,
        db: u32,
        key: &[u8],
        token: Bytes,
        how: Acquire,
    ) -> Result<Option<Granted>, Error> {
        self.acquire_until(db, key, token, how, None).await
    }

    /// [`LockService::acquire`], with a wait that also ends, in `None` holding nothing, when
    /// `until` is cancelled (its client left, or the proxy shuts down).
    pub async fn acquire_until(
        &self,
        db: u32,
        key: &[u8],
        token: Bytes,
        how: Acquire,
        until: Option<&CancellationToken>,
    ) -> Result<Option<Granted>, Error> {
        let lock = self.keys.lock(db, key);
        let fence_key = how.fence.then(|| self.keys.fence(db, key));
        let fence_key = fence_key.as_deref();
        // Waiting is boxed: it would triple the size of every acquire's future, which is moved
        // at full size into its reply's box on every LOCK (measured: 1.2 KB against 0.4 KB).
        let attempt = match how.wait {
            Some(wait) => {
                let waiting =
                    self.acquire_waiting(&lock, fence_key, &token, how.ttl_ms, wait, until);
                Box::pin(waiting).await
            }
            None => {
                self.attempt(&lock, fence_key, token.clone(), how.ttl_ms)
                    .await
            }
        }?;
        Ok(match attempt {
            Attempt::Granted(fence) => {
                Stats::bump(&self.stats.granted);
                Some(Granted { token, fence })
            }
            Attempt::Held => {
                Stats::bump(&self.stats.refused);
                None
            }
        })
    }

    /// One round to take `lock`, with a fence from `fence_key` when given.
    async fn attempt(
        &self,
        lock: &LockKey,
        fence_key: Option<&[u8]>,
        token: Bytes,
        ttl_ms: u64,
    ) -> Result<Attempt, Error> {
        let granted = match fence_key {
            // Boxed, as waiting is: a fenced acquire takes two rounds, one allocation is nothing.
            Some(fence_key) => Box::pin(self.redlock.lock_fenced(lock, fence_key, token, ttl_ms))
                .await?
                .map(|(_, fence)| Some(fence)),
            None => self
                .redlock
                .lock_with_token(lock, token, ttl_ms)
                .await?
                .map(|_| None),
        };
        Ok(granted.map_or(Attempt::Held, Attempt::Granted))
    }

    /// Releases `key` in `db` if it holds `token`: true when a quorum released it.
    pub async fn release(&self, db: u32, key: &[u8], token: &[u8]) -> Result<bool, Error> {
        self.release_lock(&self.keys.lock(db, key), token).await
    }

    async fn release_lock(&self, lock: &LockKey, token: &[u8]) -> Result<bool, Error> {
        let released = self.redlock.unlock(lock, token).await?;
        if released {
            Stats::bump(&self.stats.released);
            // Local waiters need not wait for the announcement to come back.
            self.waiters.wake(&lock.key);
        }
        Ok(released)
    }

    /// Sets the TTL of `key` in `db` to `ttl_ms` if it holds `token`: true when a quorum did in
    /// time.
    pub async fn extend(
        &self,
        db: u32,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let key = self.keys.key(db, key);
        let extended = self.redlock.extend(&key, token, ttl_ms).await?.is_some();
        if extended {
            Stats::bump(&self.stats.extended);
        }
        Ok(extended)
    }

    /// Replaces the token of `key` in `db` with `new_token` and sets its TTL to `ttl_ms`, if it
    /// holds `token`: true when a quorum did in time. Not granted, the lock may be held with
    /// either token on each master until it expires: nobody else can take it meanwhile, and a
    /// release must name the token a quorum holds (see [`LockService::inspect`]).
    pub async fn swap(
        &self,
        db: u32,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let key = self.keys.key(db, key);
        let swapped = self.redlock.swap(&key, token, new_token, ttl_ms).await?;
        if swapped.is_some() {
            Stats::bump(&self.stats.extended);
        }
        Ok(swapped.is_some())
    }

    /// Who holds `key` in `db` as a quorum sees it; `None` when no quorum holds one token.
    pub async fn inspect(&self, db: u32, key: &[u8]) -> Result<Option<Holder>, Error> {
        let key = self.keys.key(db, key);
        Ok(self
            .redlock
            .inspect(&key)
            .await?
            .map(|(token, validity_ms)| Holder { token, validity_ms }))
    }

    /// Releases `key` in `db` whoever holds it: its token is read from a quorum and released
    /// with a compare-and-delete, so a holder who took the key in between is not touched.
    pub async fn force_release(&self, db: u32, key: &[u8]) -> Result<bool, Error> {
        let lock = self.keys.lock(db, key);
        match self.redlock.inspect(&lock.key).await? {
            Some((token, _)) => self.release_lock(&lock, &token).await,
            None => Ok(false),
        }
    }

    /// Takes every key with one token, or none: on any refusal the keys taken are released.
    /// True when all were granted.
    pub async fn acquire_all(
        &self,
        db: u32,
        keys: &[Bytes],
        token: &Bytes,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let how = Acquire::once(ttl_ms);
        let results = join_all(keys.iter().map(|k| self.acquire(db, k, token.clone(), how))).await;
        if results.iter().all(|r| matches!(r, Ok(Some(_)))) {
            return Ok(true);
        }
        let taken = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Some(_))))
            .map(|(k, _)| self.release(db, k, token));
        join_all(taken).await;
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }

    /// Extends every key held with `token`: true only when all were extended.
    pub async fn extend_all(
        &self,
        db: u32,
        keys: &[Bytes],
        token: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let results = join_all(keys.iter().map(|k| self.extend(db, k, token, ttl_ms))).await;
        let mut all = true;
        for r in results {
            all &= r?;
        }
        Ok(all)
    }

    /// Releases every key held with `token`: how many a quorum released.
    pub async fn release_all(&self, db: u32, keys: &[Bytes], token: &[u8]) -> Result<u64, Error> {
        let results = join_all(keys.iter().map(|k| self.release(db, k, token))).await;
        let mut released = 0;
        for r in results {
            released += u64::from(r?);
        }
        Ok(released)
    }
}

#[cfg(test)]
mod tests;
