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
use crate::redlock::token::{self, Holds};
use crate::redlock::{Counted, LockError, LockKey, Redlock, Taker};
use crate::stats::Stats;
use keys::Schema;
use waiters::Waiters;

pub use session::{Limits, Session, Watching};

/// Which primitive a `LOCK` takes, and which one a key is in use as: a mutex (or a read/write
/// lock's writer), a read lock (`SHARED`), or one of a semaphore's permits (`PERMITS n`).
pub use crate::backend::HeldAs as Kind;

/// The most permits a semaphore may have: each is a key on every master, and a permit's
/// acquire and release name them all in one request.
pub const MAX_PERMITS: u32 = 1024;

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
    /// The key is in use as another kind of lock (or a semaphore of another count) than the
    /// request's.
    #[error("'{}' is held as {held:?}, not {asked:?}", String::from_utf8_lossy(.key))]
    WrongKind {
        /// The client's key.
        key: Bytes,
        /// What a quorum of masters use it as.
        held: Kind,
        /// What the request asked for.
        asked: Kind,
    },
    /// A release of a semaphore's permits (by its holders' names) on a key in use as another
    /// kind of lock.
    #[error("'{}' is held as {held:?}, not as a semaphore", String::from_utf8_lossy(.key))]
    NotASemaphore {
        /// The client's key.
        key: Bytes,
        /// What a quorum of masters use it as.
        held: Kind,
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
    /// What to take: the mutex (or writer), a read lock, or a permit.
    pub kind: Kind,
}

impl Acquire {
    /// One attempt for `ttl_ms`, no options.
    pub fn once(ttl_ms: u64) -> Acquire {
        Acquire {
            ttl_ms,
            wait: None,
            fence: false,
            session: false,
            kind: Kind::Exclusive,
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

/// What one attempt to take a lock got: the token granted (a permit's names its slot) and its
/// fence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    Granted(Bytes, Option<u64>),
    Held,
}

/// One request to take a lock, named: what an attempt, a wait and an abandon need.
#[derive(Debug)]
struct Want<'a> {
    db: u32,
    key: &'a [u8],
    lock: &'a LockKey,
    fence_key: Option<&'a [u8]>,
    kind: Kind,
    ttl_ms: u64,
}

/// What the service has done since start, for `INFO`. Relaxed atomics: reports, not
/// synchronisation.
#[derive(Debug, Default)]
pub struct LockStats {
    /// Locks granted by a quorum, of every kind.
    pub granted: AtomicU64,
    /// Of those, mutexes and writers.
    pub granted_exclusive: AtomicU64,
    /// Of those, read locks.
    pub granted_shared: AtomicU64,
    /// Of those, semaphore permits.
    pub granted_permits: AtomicU64,
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
        let want = Want {
            db,
            key,
            lock: &lock,
            fence_key: fence_key.as_deref(),
            kind: how.kind,
            ttl_ms: how.ttl_ms,
        };
        // Waiting is boxed: it would triple the size of every acquire's future, which is moved
        // at full size into its reply's box on every LOCK (measured: 1.2 KB against 0.4 KB).
        let attempt = match how.wait {
            Some(wait) => Box::pin(self.acquire_waiting(&want, &token, wait, until)).await,
            None => self.attempt(&want, token).await,
        }?;
        Ok(match attempt {
            Attempt::Granted(token, fence) => {
                Stats::bump(&self.stats.granted);
                Stats::bump(match how.kind {
                    Kind::Exclusive => &self.stats.granted_exclusive,
                    Kind::Shared => &self.stats.granted_shared,
                    Kind::Permits(_) => &self.stats.granted_permits,
                });
                Some(Granted { token, fence })
            }
            Attempt::Held => {
                Stats::bump(&self.stats.refused);
                None
            }
        })
    }

    /// One round to take what `want` asks for, with `token` (a permit's token adds the slot it
    /// gets).
    async fn attempt(&self, want: &Want<'_>, token: Bytes) -> Result<Attempt, Error> {
        let (lock, ttl_ms) = (want.lock, want.ttl_ms);
        let counted = match want.kind {
            Kind::Exclusive => return self.attempt_exclusive(want, token).await,
            Kind::Shared => {
                let writers = self.keys.writers(want.db, want.key);
                Box::pin(self.redlock.lock_shared(lock, &writers, token, ttl_ms)).await?
            }
            Kind::Permits(n) => {
                let slots = self.keys.permits(want.db, want.key, n);
                Box::pin(
                    self.redlock
                        .lock_permit(lock, &slots, Taker::Token(&token), ttl_ms),
                )
                .await?
            }
        };
        match counted {
            Counted::Granted { token, .. } => Ok(Attempt::Granted(token, None)),
            Counted::Held => Ok(Attempt::Held),
            Counted::Conflict(held) => Err(self.wrong_kind(want, held)),
        }
    }

    /// One round to take the mutex (or the writer's side) of `want`, with a fence when asked.
    /// Refused, it asks what the key is used as, so a semaphore's key is an error rather than
    /// a lock held (a read lock's key is held: writers wait for readers).
    async fn attempt_exclusive(&self, want: &Want<'_>, token: Bytes) -> Result<Attempt, Error> {
        let (lock, ttl_ms) = (want.lock, want.ttl_ms);
        let granted = match want.fence_key {
            // Boxed, as waiting is: a fenced acquire takes two rounds, one allocation is nothing.
            Some(fence_key) => {
                Box::pin(
                    self.redlock
                        .lock_fenced(lock, fence_key, token.clone(), ttl_ms),
                )
                .await?
                .map(|(_, fence)| Some(fence))
            }
            None => self
                .redlock
                .lock_with_token(lock, token.clone(), ttl_ms)
                .await?
                .map(|_| None),
        };
        match granted {
            Some(fence) => Ok(Attempt::Granted(token, fence)),
            None => match Box::pin(self.redlock.held_as(&lock.key)).await {
                Ok(Some(held @ Kind::Permits(_))) => Err(self.wrong_kind(want, held)),
                _ => Ok(Attempt::Held),
            },
        }
    }

    fn wrong_kind(&self, want: &Want<'_>, held: Kind) -> Error {
        Error::WrongKind {
            key: Bytes::copy_from_slice(want.key),
            held,
            asked: want.kind,
        }
    }

    /// Sends the release of whatever an attempt of `want` with `token` may have taken, and
    /// waits for nothing: for a taker that is gone before it could learn its outcome.
    fn abandon(&self, want: &Want<'_>, token: &Bytes) {
        match want.kind {
            Kind::Exclusive => self.redlock.abandon(want.lock, token),
            Kind::Shared => self.redlock.abandon_shared(want.lock, token),
            Kind::Permits(n) => {
                let slots = self.keys.permits(want.db, want.key, n);
                self.redlock
                    .abandon_permits(want.lock, &slots, Taker::Token(token));
            }
        }
    }

    /// Releases `key` in `db` if it holds `token` (what it holds, a mutex, a read lock or a
    /// permit, the token says): true when a quorum released it.
    pub async fn release(&self, db: u32, key: &[u8], token: &[u8]) -> Result<bool, Error> {
        let token = Bytes::copy_from_slice(token);
        self.release_lock(db, key, &self.keys.lock(db, key), &token)
            .await
    }

    async fn release_lock(
        &self,
        db: u32,
        key: &[u8],
        lock: &LockKey,
        token: &Bytes,
    ) -> Result<bool, Error> {
        let released = match token::holds(token) {
            Holds::Exclusive => self.redlock.unlock(lock, token).await?,
            Holds::Shared => self.redlock.unlock_shared(lock, token).await?,
            Holds::Permit { permits, .. } if permits > MAX_PERMITS => false,
            Holds::Permit { base, permits, .. } => {
                let slots = self.keys.permits(db, key, permits);
                self.redlock.unlock_permit(lock, &slots, &base).await?
            }
        };
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
        let extended = self.extend_token(db, key, token, ttl_ms).await?.is_some();
        if extended {
            Stats::bump(&self.stats.extended);
        }
        Ok(extended)
    }

    /// Sets the TTL of what `token` holds on `key` in `db`: the validity left when a quorum did
    /// in time.
    async fn extend_token(
        &self,
        db: u32,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, LockError> {
        let name = self.keys.key(db, key);
        match token::holds(&Bytes::copy_from_slice(token)) {
            Holds::Exclusive => self.redlock.extend(&name, token, ttl_ms).await,
            Holds::Shared => self.redlock.extend_shared(&name, token, ttl_ms).await,
            Holds::Permit { permits, .. } if permits > MAX_PERMITS => Ok(None),
            Holds::Permit { slot, .. } => {
                let slot = self.keys.permit(db, key, slot);
                self.redlock
                    .extend_permit(&name, &slot, token, ttl_ms)
                    .await
            }
        }
    }

    /// The validity `token` has left on `key` in `db` (as its mutex, a reader, or a permit) as
    /// a quorum sees it; `None` when no quorum holds it.
    pub async fn inspect_token(
        &self,
        db: u32,
        key: &[u8],
        token: &[u8],
    ) -> Result<Option<u64>, Error> {
        let name = match token::holds(&Bytes::copy_from_slice(token)) {
            Holds::Permit { permits, .. } if permits > MAX_PERMITS => return Ok(None),
            Holds::Permit { slot, .. } => self.keys.permit(db, key, slot),
            Holds::Exclusive | Holds::Shared => self.keys.key(db, key),
        };
        Ok(self.redlock.inspect_token(&name, token).await?)
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
            Some((token, _)) => self.release_lock(db, key, &lock, &token).await,
            None => Ok(false),
        }
    }

    /// Takes a permit of the semaphore of `permits` on `key` in `db` for each of `names`, for
    /// `ttl_ms`, all or none: on any refusal the permits taken are released. True when all
    /// were granted.
    ///
    /// Each name is a holder as a client library names it (redis-semaphore's identifier, or
    /// `<identifier>_<i>` for the i-th permit of its MultiSemaphore): the library never learns
    /// a token, so [`LockService::extend_named`] and [`LockService::release_named`] find the
    /// permit by the name. Each permit is an ordinary one (see `redlock::counted`): a slot
    /// mutex taken by a quorum, so the semaphore's bound holds however the holders are named.
    pub async fn acquire_named(
        &self,
        db: u32,
        key: &[u8],
        names: &[Bytes],
        permits: u32,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let lock = self.keys.lock(db, key);
        let slots = self.keys.permits(db, key, permits);
        let takes = names.iter().map(|name| {
            self.redlock
                .lock_permit(&lock, &slots, Taker::Named(name), ttl_ms)
        });
        let results = join_all(takes).await;
        let granted = |r: &Result<Counted, LockError>| matches!(r, Ok(Counted::Granted { .. }));
        if results.iter().all(granted) {
            for _ in names {
                Stats::bump(&self.stats.granted);
                Stats::bump(&self.stats.granted_permits);
            }
            return Ok(true);
        }
        let taken = names
            .iter()
            .zip(&results)
            .filter(|(_, r)| granted(r))
            .map(|(name, _)| self.redlock.unlock_named_permit(&lock, &slots, name));
        join_all(taken).await;
        Stats::bump(&self.stats.refused);
        for r in results {
            match r? {
                Counted::Conflict(held) => {
                    return Err(Error::WrongKind {
                        key: Bytes::copy_from_slice(key),
                        held,
                        asked: Kind::Permits(permits),
                    });
                }
                Counted::Granted { .. } | Counted::Held => {}
            }
        }
        Ok(false)
    }

    /// Sets the TTL of the permit each of `names` holds on the semaphore of `permits` on `key`
    /// in `db` (see [`LockService::acquire_named`]): true only when a quorum extended every
    /// one in time.
    pub async fn extend_named(
        &self,
        db: u32,
        key: &[u8],
        names: &[Bytes],
        permits: u32,
        ttl_ms: u64,
    ) -> Result<bool, Error> {
        let (name, slots) = (self.keys.key(db, key), self.keys.permits(db, key, permits));
        let extends = names.iter().map(|holder| {
            self.redlock
                .extend_named_permit(&name, &slots, holder, ttl_ms)
        });
        let mut all = true;
        for extended in join_all(extends).await {
            let extended = extended?.is_some();
            if extended {
                Stats::bump(&self.stats.extended);
            }
            all &= extended;
        }
        Ok(all)
    }

    /// Releases the permits `names` hold on the semaphore on `key` in `db` (see
    /// [`LockService::acquire_named`]), whatever its count, which is read from the masters
    /// first: how many a quorum released. A free key releases nothing; a key in use as another
    /// kind is an error.
    pub async fn release_named(&self, db: u32, key: &[u8], names: &[Bytes]) -> Result<u64, Error> {
        let lock = self.keys.lock(db, key);
        let permits = match self.redlock.held_as(&lock.key).await? {
            None => return Ok(0),
            Some(Kind::Permits(n)) if n <= MAX_PERMITS => n,
            Some(Kind::Permits(_)) => return Ok(0),
            Some(held) => {
                return Err(Error::NotASemaphore {
                    key: Bytes::copy_from_slice(key),
                    held,
                });
            }
        };
        let slots = self.keys.permits(db, key, permits);
        let frees = names
            .iter()
            .map(|holder| self.redlock.unlock_named_permit(&lock, &slots, holder));
        let mut released = 0;
        for freed in join_all(frees).await {
            if freed? {
                released += 1;
                Stats::bump(&self.stats.released);
            }
        }
        if released > 0 {
            self.waiters.wake(&lock.key);
        }
        Ok(released)
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
