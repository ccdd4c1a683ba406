//! One connection's use of the lock service, and its `SESSION` locks (`LOCK key ttl SESSION`):
//! the proxy keeps each alive, extending it every third of its TTL, for as long as the
//! connection stays open, and releases them all when the connection ends for any reason. An
//! extension that misses a quorum marks the lock lost; later `UNLOCK`, `EXTEND` and `LOCKTTL`
//! on the connection that name it get [`Error::LockLost`] instead of acting on a lock the client
//! no longer holds.
//!
//! What one connection can make the proxy keep is bounded ([`Limits`]): its session locks,
//! held or being taken, and its `WAIT`s waiting. Past either cap the `LOCK` is refused with an
//! error and the connection lives on.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Acquire, Error, Granted, Holder, Kind, LockService};
use crate::backend::Master;
use crate::redlock::{LockKey, token};

/// What one connection may have the proxy keep for it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Session locks, held or being taken.
    pub session_locks: usize,
    /// `LOCK ... WAIT`s waiting.
    pub waits: usize,
}

impl Limits {
    /// No caps (the service's own tests).
    pub const NONE: Limits = Limits {
        session_locks: usize::MAX,
        waits: usize::MAX,
    };
}

/// One of a connection's places under a cap, given back when dropped.
#[derive(Debug)]
struct Place(Option<Arc<AtomicUsize>>);

impl Place {
    /// Takes a place in `taken` if fewer than `max` are.
    fn take(taken: &Arc<AtomicUsize>, max: usize) -> Option<Place> {
        taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(Some(taken.clone())))
    }

    /// Keeps the place taken after `self` is gone: a [`Held`] lock now stands for it.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(taken) = self.0.take() {
            taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Resolves once a watch ([`Session::watch_releases`]) hears every release from then on (or
/// has ended).
#[derive(Debug)]
pub struct Watching(tokio::sync::oneshot::Receiver<()>);

impl Watching {
    /// Waits until the watch hears every release, or has ended.
    pub async fn ready(self) {
        let _ = self.0.await;
    }
}

/// One connection's handle on the lock service; clones share its session locks.
#[derive(Debug)]
pub struct Session<M> {
    service: Arc<LockService<M>>,
    limits: Limits,
    /// Session locks held (in `held`) or being taken: counted before a `LOCK ... SESSION` is
    /// sent, so a pipeline of them cannot pass the cap while the first are still in flight.
    sessions: Arc<AtomicUsize>,
    /// `LOCK ... WAIT`s under way.
    waiting: Arc<AtomicUsize>,
    /// Session locks by database, the client's key and token (a connection may hold several
    /// read locks or permits of one key): the checks on `UNLOCK`, `EXTEND` and `LOCKTTL` look
    /// them up without building a name.
    held: Arc<Mutex<HashMap<Named, Held>>>,
    /// Cancelled when the connection's state goes away: every keeper stops.
    ended: CancellationToken,
    /// Cancelled when the connection's waits must end (see [`Session::end_waits`]).
    waits: CancellationToken,
}

impl<M> Clone for Session<M> {
    fn clone(&self) -> Self {
        Session {
            service: self.service.clone(),
            limits: self.limits,
            sessions: self.sessions.clone(),
            waiting: self.waiting.clone(),
            held: self.held.clone(),
            ended: self.ended.clone(),
            waits: self.waits.clone(),
        }
    }
}

/// A session lock's database, client key and token.
type Named = (u32, Bytes, Bytes);

#[derive(Debug)]
struct Held {
    lock: LockKey,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl<M: Master> Session<M> {
    /// A new connection's handle, with no session locks and no caps.
    pub fn new(service: Arc<LockService<M>>) -> Session<M> {
        Session::with_limits(service, Limits::NONE)
    }

    /// A new connection's handle, with no session locks, under `limits`.
    pub fn with_limits(service: Arc<LockService<M>>, limits: Limits) -> Session<M> {
        Session {
            service,
            limits,
            sessions: Arc::default(),
            waiting: Arc::default(),
            held: Arc::default(),
            ended: CancellationToken::new(),
            waits: CancellationToken::new(),
        }
    }

    /// The lock service, for operations that do not involve session locks.
    pub fn service(&self) -> &Arc<LockService<M>> {
        &self.service
    }

    /// Takes `key` in `db` with a fresh token, as `how` says; with `how.session` the lock is
    /// kept alive until released, lost, or the connection ends. Refused at once when the
    /// connection is at its cap of session locks or of waits.
    pub fn lock(
        &self,
        db: u32,
        key: Bytes,
        how: Acquire,
    ) -> impl Future<Output = Result<Option<Granted>, Error>> + Send + 'static {
        let service = self.service.clone();
        let keeper = how.session.then(|| self.clone());
        let waits = how.wait.map(|_| self.waits.clone());
        // Places are taken now, when the command runs, not when its future is first polled.
        let session_place = how
            .session
            .then(|| Place::take(&self.sessions, self.limits.session_locks));
        let wait_place = how
            .wait
            .map(|_| Place::take(&self.waiting, self.limits.waits));
        let limits = self.limits;
        async move {
            let session_place = match session_place {
                Some(None) => {
                    return Err(Error::TooManySessionLocks {
                        max: limits.session_locks,
                    });
                }
                Some(Some(place)) => Some(place),
                None => None,
            };
            if let Some(None) = wait_place {
                return Err(Error::TooManyWaits { max: limits.waits });
            }
            let token = match how.kind {
                Kind::Shared => token::shared(),
                Kind::Exclusive | Kind::Permits(_) => token::generate(),
            };
            let granted = service
                .acquire_until(db, &key, token, how, waits.as_ref())
                .await?;
            drop(wait_place);
            if let (Some(grant), Some(keeper), Some(place)) = (&granted, keeper, session_place) {
                let lock = service.keys.lock(db, &key);
                let named = (db, key, grant.token.clone());
                keeper.keep(named, how.kind, lock, how.ttl_ms, place);
            }
            Ok(granted)
        }
    }

    /// Releases `key` in `db` if it holds `token`; a session lock of this connection stops
    /// being kept alive (and is [`Error::LockLost`] if it was lost).
    pub fn release(
        &self,
        db: u32,
        key: Bytes,
        token: Bytes,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'static {
        let lost = self.forget(db, &key, &token);
        let service = self.service.clone();
        async move {
            if lost {
                return Err(Error::LockLost { key });
            }
            service.release(db, &key, &token).await
        }
    }

    /// Sets the TTL of `key` in `db` if it holds `token`, unless it is a lost session lock.
    pub fn extend(
        &self,
        db: u32,
        key: Bytes,
        token: Bytes,
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'static {
        let lost = self.is_lost(db, &key, Some(&token));
        let service = self.service.clone();
        async move {
            if lost {
                return Err(Error::LockLost { key });
            }
            service.extend(db, &key, &token, ttl_ms).await
        }
    }

    /// Who holds `key` in `db` as a quorum sees it, unless it is a lost session lock.
    pub fn inspect(
        &self,
        db: u32,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<Holder>, Error>> + Send + 'static {
        let lost = self.is_lost(db, &key, None);
        let service = self.service.clone();
        async move {
            if lost {
                return Err(Error::LockLost { key });
            }
            service.inspect(db, &key).await
        }
    }

    /// The validity `token` has left on `key` in `db`, unless it is a lost session lock.
    pub fn inspect_token(
        &self,
        db: u32,
        key: Bytes,
        token: Bytes,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send + 'static {
        let lost = self.is_lost(db, &key, Some(&token));
        let service = self.service.clone();
        async move {
            if lost {
                return Err(Error::LockLost { key });
            }
            service.inspect_token(db, &key, &token).await
        }
    }

    /// Waits until `key` in `db` is free, taking nothing (a client library's own wait for a
    /// release, such as python-redis-lock's `BLPOP`): true as soon as no quorum holds it; false
    /// when `wait` (`None`: no limit) runs out or the connection's waits end. It counts as one
    /// of the connection's waits.
    pub fn await_free(
        &self,
        db: u32,
        key: Bytes,
        wait: Option<Duration>,
    ) -> impl Future<Output = Result<bool, Error>> + Send + 'static {
        let place = Place::take(&self.waiting, self.limits.waits);
        let (service, waits, max) = (self.service.clone(), self.waits.clone(), self.limits.waits);
        async move {
            let Some(_place) = place else {
                return Err(Error::TooManyWaits { max });
            };
            let lock = service.keys.lock(db, &key);
            Ok(service.await_free_lock(&lock, wait, Some(&waits)).await)
        }
    }

    /// Calls `released` on every release of `key` in `db` through any proxy, until `until` is
    /// cancelled or the connection's waits end (a client library's subscription to a lock's
    /// channel): the watch to run, and what tells when every release from then on is heard.
    /// It counts as one of the connection's waits while it runs; refused at once when the
    /// connection is at that cap.
    pub fn watch_releases(
        &self,
        db: u32,
        key: Bytes,
        until: CancellationToken,
        released: impl FnMut() + Send + 'static,
    ) -> Result<(impl Future<Output = ()> + Send + 'static, Watching), Error> {
        let place = Place::take(&self.waiting, self.limits.waits).ok_or(Error::TooManyWaits {
            max: self.limits.waits,
        })?;
        let (service, waits) = (self.service.clone(), self.waits.clone());
        let (ready, watching) = tokio::sync::oneshot::channel();
        let watch = async move {
            let _place = place;
            let lock = service.keys.lock(db, &key);
            let until = async {
                tokio::select! {
                    _ = until.cancelled() => {}
                    _ = waits.cancelled() => {}
                }
            };
            let stop = CancellationToken::new();
            let watching = service.watch_lock_releases(&lock, &stop, ready, released);
            tokio::pin!(watching);
            tokio::select! {
                _ = &mut watching => {}
                _ = until => {
                    stop.cancel();
                    watching.await;
                }
            }
        };
        Ok((watch, Watching(watching)))
    }

    /// Stops every keeper and releases every session lock still held, on all masters.
    pub async fn close(&self) {
        let held: Vec<(Named, Held)> = self.held().drain().collect();
        self.sessions.fetch_sub(held.len(), Ordering::AcqRel);
        self.ended.cancel();
        let releases = held
            .iter()
            .filter(|(_, h)| !h.lost.load(Ordering::Acquire))
            .map(|((db, key, token), h)| self.service.release_lock(*db, key, &h.lock, token));
        join_all(releases).await;
    }

    /// Ends every wait of the connection (`LOCK ... WAIT`), the ones under way and any it
    /// starts later: each answers null at once and holds nothing. For a client that left (a
    /// departed waiter must not take the lock from the next one) and for shutdown.
    pub fn end_waits(&self) {
        self.waits.cancel();
    }

    /// Stops every keeper without releasing: the locks then expire by their TTL.
    pub fn stop_keepers(&self) {
        self.ended.cancel();
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Named, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the granted lock `named` (database, client key, token) of `kind` alive until
    /// released, lost, or the connection ends; it takes over `place` under the cap (a mutex it
    /// replaces, the same key's, gives its own back).
    fn keep(&self, named: Named, kind: Kind, lock: LockKey, ttl_ms: u64, place: Place) {
        let stop = self.ended.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        let held = Held {
            lock: lock.clone(),
            lost: lost.clone(),
            stop: stop.clone(),
        };
        let (db, key, token) = named.clone();
        {
            let mut all = self.held();
            let previous = match kind {
                Kind::Exclusive => all
                    .keys()
                    .find(|(d, k, _)| *d == db && *k == key)
                    .cloned()
                    .and_then(|old| all.remove(&old)),
                Kind::Shared | Kind::Permits(_) => None,
            };
            all.insert(named, held);
            match previous {
                Some(previous) => previous.stop.cancel(),
                None => place.keep(),
            }
        }
        let stats = &self.service.stats;
        stats.session_locks.fetch_add(1, Ordering::Relaxed);
        let service = self.service.clone();
        let period = Duration::from_millis((ttl_ms / 3).max(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                match service.extend_token(db, &key, &token, ttl_ms).await {
                    Ok(Some(_)) => {}
                    outcome => {
                        if !stop.is_cancelled() {
                            lost.store(true, Ordering::Release);
                            let stats = &service.stats;
                            stats.session_locks_lost.fetch_add(1, Ordering::Relaxed);
                            warn!(
                                key = %String::from_utf8_lossy(&lock.key),
                                "session lock lost: its extension did not reach a quorum ({outcome:?})"
                            );
                        }
                        break;
                    }
                }
            }
            service.stats.session_locks.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// True when `key` in `db` is a session lock of this connection whose extension failed:
    /// the one `token` names, or (without one) any on the key.
    fn is_lost(&self, db: u32, key: &Bytes, token: Option<&Bytes>) -> bool {
        let held = self.held();
        match token {
            Some(token) => held
                .get(&(db, key.clone(), token.clone()))
                .is_some_and(|h| h.lost.load(Ordering::Acquire)),
            None => held
                .iter()
                .any(|((d, k, _), h)| *d == db && k == key && h.lost.load(Ordering::Acquire)),
        }
    }

    /// Stops keeping `key` in `db` alive if it is held here with `token`; true when it was lost.
    fn forget(&self, db: u32, key: &Bytes, token: &Bytes) -> bool {
        match self.held().remove(&(db, key.clone(), token.clone())) {
            Some(h) => {
                self.sessions.fetch_sub(1, Ordering::AcqRel);
                h.stop.cancel();
                h.lost.load(Ordering::Acquire)
            }
            None => false,
        }
    }
}
