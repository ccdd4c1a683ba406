//! One connection's use of the lock service, and its `SESSION` locks (`LOCK key ttl SESSION`):
//! the proxy keeps each alive, extending it every third of its TTL, for as long as the
//! connection stays open, and releases them all when the connection ends for any reason. An
//! extension that misses a quorum marks the lock lost; later `UNLOCK`, `EXTEND` and `LOCKTTL`
//! on the connection that name it get [`Error::LockLost`] instead of acting on a lock the client
//! no longer holds.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Acquire, Error, Granted, Holder, LockService};
use crate::backend::Master;
use crate::redlock::{LockKey, token};

/// One connection's handle on the lock service; clones share its session locks.
#[derive(Debug)]
pub struct Session<M> {
    service: Arc<LockService<M>>,
    /// Session locks by database and the client's key: the checks on `UNLOCK`, `EXTEND` and
    /// `LOCKTTL` look them up without building a name.
    held: Arc<Mutex<HashMap<(u32, Bytes), Held>>>,
    /// Cancelled when the connection's state goes away: every keeper stops.
    ended: CancellationToken,
    /// Cancelled when the connection's waits must end (see [`Session::end_waits`]).
    waits: CancellationToken,
}

impl<M> Clone for Session<M> {
    fn clone(&self) -> Self {
        Session {
            service: self.service.clone(),
            held: self.held.clone(),
            ended: self.ended.clone(),
            waits: self.waits.clone(),
        }
    }
}

#[derive(Debug)]
struct Held {
    lock: LockKey,
    token: Bytes,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl<M: Master> Session<M> {
    /// A new connection's handle, with no session locks.
    pub fn new(service: Arc<LockService<M>>) -> Session<M> {
        Session {
            service,
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
    /// kept alive until released, lost, or the connection ends.
    pub fn lock(
        &self,
        db: u32,
        key: Bytes,
        how: Acquire,
    ) -> impl Future<Output = Result<Option<Granted>, Error>> + Send + 'static {
        let service = self.service.clone();
        let keeper = how.session.then(|| self.clone());
        let waits = how.wait.map(|_| self.waits.clone());
        async move {
            let token = token::generate();
            let granted = service
                .acquire_until(db, &key, token, how, waits.as_ref())
                .await?;
            if let (Some(grant), Some(keeper)) = (&granted, keeper) {
                let lock = service.keys.lock(db, &key);
                keeper.keep((db, key), lock, grant.token.clone(), how.ttl_ms);
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
        let lost = self.is_lost(db, &key);
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
        let lost = self.is_lost(db, &key);
        let service = self.service.clone();
        async move {
            if lost {
                return Err(Error::LockLost { key });
            }
            service.inspect(db, &key).await
        }
    }

    /// Stops every keeper and releases every session lock still held, on all masters.
    pub async fn close(&self) {
        let held: Vec<((u32, Bytes), Held)> = self.held().drain().collect();
        self.ended.cancel();
        let releases = held
            .iter()
            .filter(|(_, h)| !h.lost.load(Ordering::Acquire))
            .map(|(_, h)| self.service.release_lock(&h.lock, &h.token));
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

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, Bytes), Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the granted lock `named` (database, client key) alive until released, lost, or the
    /// connection ends.
    fn keep(&self, named: (u32, Bytes), lock: LockKey, token: Bytes, ttl_ms: u64) {
        let stop = self.ended.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        let held = Held {
            lock: lock.clone(),
            token: token.clone(),
            lost: lost.clone(),
            stop: stop.clone(),
        };
        if let Some(previous) = self.held().insert(named, held) {
            previous.stop.cancel();
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
                match service.redlock.extend(&lock.key, &token, ttl_ms).await {
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

    /// True when `key` in `db` is a session lock of this connection whose extension failed.
    fn is_lost(&self, db: u32, key: &Bytes) -> bool {
        self.held()
            .get(&(db, key.clone()))
            .is_some_and(|h| h.lost.load(Ordering::Acquire))
    }

    /// Stops keeping `key` in `db` alive if it is held here with `token`; true when it was lost.
    fn forget(&self, db: u32, key: &Bytes, token: &[u8]) -> bool {
        let mut held = self.held();
        let named = (db, key.clone());
        match held.get(&named) {
            Some(h) if h.token == token => {
                let h = held.remove(&named).expect("present");
                h.stop.cancel();
                h.lost.load(Ordering::Acquire)
            }
            _ => false,
        }
    }
}
