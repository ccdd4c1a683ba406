//! Waiting for a lock without polling (`LOCK key ttl WAIT ms`). Waiters on one key queue first
//! come, first served on this proxy; only the head of the queue tries to take the lock. They
//! wake when any proxy releases the key (while a waiter's marker is on the masters, the release
//! is published through them, and every proxy subscribes), and — so a lost notification only
//! delays — when the holder's lock would expire anyway.
//!
//! Queues live in a [`DashMap`] by lock key: a release looks up its own key's shard only, so the
//! release path takes no process-wide lock, and a key nobody waits for has no entry.
//!
//! A wait ends early when its connection's waits are ended (the client left, or the proxy shuts
//! down): it then answers null at once and holds nothing; a grant that raced with the end is
//! released again. The last of this proxy's waiters on a key to leave takes the proxy out of
//! the key's marker on the masters, and the marker goes when no proxy is left in it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Attempt, Error, LockService};
use crate::backend::Master;
use crate::redlock::LockKey;

/// Shortest pause between the head waiter's attempts, so a flapping lock cannot make it spin.
const MIN_RETRY: Duration = Duration::from_millis(5);
/// Longest the head waits without news before looking again.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// The waiters of this proxy, by lock key.
#[derive(Debug, Default)]
pub struct Waiters {
    keys: DashMap<Bytes, Arc<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Tickets in arrival order; the front one may try.
    order: Mutex<VecDeque<u64>>,
    next_ticket: AtomicU64,
    /// Signalled on every release of the key and every change of the queue's head.
    changed: Notify,
    /// A waiter in it has named this proxy in the lock's marker on the masters, so the last
    /// one to leave takes it out again.
    announced: AtomicBool,
}

impl Queue {
    fn order(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Waiters {
    /// Wakes the waiters of lock key `key`: it was just released somewhere.
    pub fn wake(&self, key: &[u8]) {
        if let Some(queue) = self.keys.get(key) {
            queue.changed.notify_waiters();
        }
    }

    /// Keys with a waiter now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Waits under way now, over all keys. Takes each key's queue lock in turn: for reports,
    /// not for the lock path.
    pub fn waiting(&self) -> usize {
        self.keys.iter().map(|q| q.order().len()).sum()
    }
}

/// A place in a key's queue; leaving (granted, timed out, ended, or the future dropped) frees it.
struct Ticket<'a, M: Master> {
    service: &'a LockService<M>,
    lock: &'a LockKey,
    queue: Arc<Queue>,
    id: u64,
    left: bool,
}

impl<'a, M: Master> Ticket<'a, M> {
    fn join(service: &'a LockService<M>, lock: &'a LockKey) -> Ticket<'a, M> {
        // Joined while the entry is held, so a ticket leaving an empty queue cannot remove the
        // queue between its lookup and this join.
        let entry = service.waiters.keys.entry(lock.key.clone()).or_default();
        let id = entry.next_ticket.fetch_add(1, Ordering::Relaxed);
        entry.order().push_back(id);
        Ticket {
            service,
            lock,
            queue: entry.clone(),
            id,
            left: false,
        }
    }

    fn is_head(&self) -> bool {
        self.queue.order().front() == Some(&self.id)
    }

    /// Leaves the line (once). When this was the proxy's last waiter on the key and one of
    /// them announced itself, the masters are told at once that nobody here waits any more;
    /// the future returned waits for their answers.
    fn leave(&mut self) -> Option<impl Future<Output = ()> + Send + use<M>> {
        if std::mem::replace(&mut self.left, true) {
            return None;
        }
        let empty = {
            let mut order = self.queue.order();
            order.retain(|&t| t != self.id);
            order.is_empty()
        };
        let waiters = &self.service.waiters;
        if empty {
            // Checked again under the entry's lock: someone may have joined meanwhile.
            waiters
                .keys
                .remove_if(&self.lock.key, |_, queue| queue.order().is_empty());
        }
        // The next in line may be the head now.
        self.queue.changed.notify_waiters();
        (empty && self.queue.announced.load(Ordering::Acquire)).then(|| {
            let service = self.service;
            service.redlock.withdraw_waiting(self.lock, &service.waiter)
        })
    }
}

impl<M: Master> Drop for Ticket<'_, M> {
    /// A wait dropped midway (its connection broke) still leaves the line and the marker; the
    /// requests are sent, their answers not awaited.
    fn drop(&mut self) {
        drop(self.leave());
    }
}

/// An attempt under way for a waiter: if the waiter's future is dropped before the attempt
/// answers, the lock it may have taken is released, since nobody will ever learn its token.
/// Forgotten once the attempt has answered.
struct Attempting<'a, M: Master> {
    service: &'a LockService<M>,
    lock: &'a LockKey,
    token: &'a Bytes,
}

impl<M: Master> Drop for Attempting<'_, M> {
    fn drop(&mut self) {
        self.service.redlock.abandon(self.lock, self.token);
    }
}

impl<M: Master> LockService<M> {
    /// Takes `lock` with `token` (and a fence from `fence_key`), waiting up to `wait` for it in
    /// line with this proxy's other waiters; `Held` when the wait ran out, or `until` was
    /// cancelled (then nothing is held: a grant that raced with it is released). Validity comes
    /// from the attempt that succeeded, never from when the wait began. A failure to reach a
    /// quorum ends the wait only if it was the last attempt's outcome.
    pub(super) async fn acquire_waiting(
        &self,
        lock: &LockKey,
        fence_key: Option<&[u8]>,
        token: &Bytes,
        ttl_ms: u64,
        wait: Duration,
        until: Option<&CancellationToken>,
    ) -> Result<Attempt, Error> {
        if until.is_some_and(CancellationToken::is_cancelled) {
            return Ok(Attempt::Held);
        }
        let mut ticket = Ticket::join(self, lock);
        let deadline = Instant::now() + wait;
        // In a block of its own, so every way out of the wait leaves the line after it.
        let outcome = async {
            let ticket = &ticket;
            let mut last_failure = None;
            let mut announced = false;
            loop {
                let notified = ticket.queue.changed.notified();
                tokio::pin!(notified);
                // Registered before the attempt, so a release during it is not missed.
                notified.as_mut().enable();
                let mut retry = deadline.saturating_duration_since(Instant::now());
                if ticket.is_head() {
                    let attempting = Attempting {
                        service: self,
                        lock,
                        token,
                    };
                    let attempt = self.attempt(lock, fence_key, token.clone(), ttl_ms).await;
                    std::mem::forget(attempting);
                    match attempt {
                        Ok(Attempt::Granted(_))
                            if until.is_some_and(CancellationToken::is_cancelled) =>
                        {
                            // Ended while the attempt was out: whoever asked will not take it.
                            let _ = self.release_lock(lock, token).await;
                            return Ok(Attempt::Held);
                        }
                        Ok(Attempt::Granted(grant)) => return Ok(Attempt::Granted(grant)),
                        Ok(Attempt::Held) => last_failure = None,
                        Err(e) => last_failure = Some(e),
                    }
                    if !announced && Instant::now() < deadline {
                        // From now on, releases of the key are announced to every proxy until
                        // this wait is over; one more attempt at once catches a release that
                        // came before.
                        let left = deadline.saturating_duration_since(Instant::now()) + MAX_RETRY;
                        let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                        ticket.queue.announced.store(true, Ordering::Release);
                        self.redlock
                            .announce_waiting(lock, &self.waiter, left)
                            .await;
                        announced = true;
                        continue;
                    }
                    // When the holder's lock would run out, in case its release is never
                    // announced.
                    let expires_in = match self.redlock.inspect(&lock.key).await {
                        Ok(Some((_, validity_ms))) => Duration::from_millis(validity_ms),
                        Ok(None) => MIN_RETRY,
                        Err(_) => MAX_RETRY / 10,
                    };
                    retry = retry.min(expires_in.clamp(MIN_RETRY, MAX_RETRY));
                }
                if Instant::now() >= deadline {
                    return last_failure.map_or(Ok(Attempt::Held), Err);
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(retry) => {}
                    _ = ended(until) => return Ok(Attempt::Held),
                }
                if Instant::now() >= deadline && !ticket.is_head() {
                    return last_failure.map_or(Ok(Attempt::Held), Err);
                }
            }
        }
        .await;
        if let Some(withdrawn) = ticket.leave() {
            withdrawn.await;
        }
        outcome
    }
}

/// Resolves when `until` is cancelled; never without one.
async fn ended(until: Option<&CancellationToken>) {
    match until {
        Some(until) => until.cancelled().await,
        None => std::future::pending().await,
    }
}
