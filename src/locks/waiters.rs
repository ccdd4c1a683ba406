//! Waiting for a lock without polling (`LOCK key ttl WAIT ms`). Waiters on one key queue first
//! come, first served on this proxy; only the head of the queue tries to take the lock. They
//! wake when any proxy releases the key (while a waiter's marker is on the masters, the release
//! is published through them, and every proxy subscribes), and — so a lost notification only
//! delays — when the holder's lock would expire anyway.
//!
//! Queues live in a [`DashMap`] by lock key: a release looks up its own key's shard only, so the
//! release path takes no process-wide lock, and a key nobody waits for has no entry.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

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
}

/// A place in a key's queue; leaving (granted, timed out, or the client gone) frees it.
struct Ticket<'a> {
    waiters: &'a Waiters,
    key: Bytes,
    queue: Arc<Queue>,
    id: u64,
}

impl<'a> Ticket<'a> {
    fn join(waiters: &'a Waiters, key: &Bytes) -> Ticket<'a> {
        // Joined while the entry is held, so a ticket leaving an empty queue cannot remove the
        // queue between its lookup and this join.
        let entry = waiters.keys.entry(key.clone()).or_default();
        let id = entry.next_ticket.fetch_add(1, Ordering::Relaxed);
        entry.order().push_back(id);
        Ticket {
            waiters,
            key: key.clone(),
            queue: entry.clone(),
            id,
        }
    }

    fn is_head(&self) -> bool {
        self.queue.order().front() == Some(&self.id)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let empty = {
            let mut order = self.queue.order();
            order.retain(|&t| t != self.id);
            order.is_empty()
        };
        if empty {
            // Checked again under the entry's lock: someone may have joined meanwhile.
            self.waiters
                .keys
                .remove_if(&self.key, |_, queue| queue.order().is_empty());
        }
        // The next in line may be the head now.
        self.queue.changed.notify_waiters();
    }
}

impl<M: Master> LockService<M> {
    /// Takes `lock` with `token` (and a fence from `fence_key`), waiting up to `wait` for it in
    /// line with this proxy's other waiters; `Held` when the wait ran out. Validity comes from
    /// the attempt that succeeded, never from when the wait began. A failure to reach a quorum
    /// ends the wait only if it was the last attempt's outcome.
    pub(super) async fn acquire_waiting(
        &self,
        lock: &LockKey,
        fence_key: Option<&[u8]>,
        token: &Bytes,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Attempt, Error> {
        let deadline = Instant::now() + wait;
        let ticket = Ticket::join(&self.waiters, &lock.key);
        let mut last_failure = None;
        let mut announced = false;
        loop {
            let notified = ticket.queue.changed.notified();
            tokio::pin!(notified);
            // Registered before the attempt, so a release during it is not missed.
            notified.as_mut().enable();
            let mut retry = deadline.saturating_duration_since(Instant::now());
            if ticket.is_head() {
                match self.attempt(lock, fence_key, token.clone(), ttl_ms).await {
                    Ok(Attempt::Granted(grant)) => return Ok(Attempt::Granted(grant)),
                    Ok(Attempt::Held) => last_failure = None,
                    Err(e) => last_failure = Some(e),
                }
                if !announced && Instant::now() < deadline {
                    // From now on, releases of the key are announced to every proxy until this
                    // wait is over; one more attempt at once catches a release that came before.
                    let left = deadline.saturating_duration_since(Instant::now()) + MAX_RETRY;
                    let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                    self.redlock.announce_waiting(lock, left).await;
                    announced = true;
                    continue;
                }
                // When the holder's lock would run out, in case its release is never announced.
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
            }
            if Instant::now() >= deadline && !ticket.is_head() {
                return last_failure.map_or(Ok(Attempt::Held), Err);
            }
        }
    }
}
