//! Waiting for a lock without polling (`LOCK key ttl WAIT ms`). Waiters on one key queue first
//! come, first served on this proxy; only the head of the queue tries to take the lock. They
//! wake when any proxy releases the key (while a waiter's marker is on the masters, the release
//! is published through them, and every proxy subscribes), and — so a lost notification only
//! delays — when the holder's lock would expire anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use super::ops::{Attempt, OpResult};

/// Shortest pause between the head waiter's attempts, so a flapping lock cannot make it spin.
const MIN_RETRY: Duration = Duration::from_millis(5);
/// Longest the head waits without news before looking again.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// The waiters of this proxy, by lock key.
#[derive(Debug, Default)]
pub struct Waiters {
    keys: Mutex<HashMap<Bytes, Arc<Queue>>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Tickets in arrival order; the front one may try.
    order: Mutex<VecDeque<u64>>,
    next_ticket: AtomicU64,
    /// Signalled on every release of the key and every change of the queue's head.
    changed: Notify,
}

impl Waiters {
    /// Wakes the waiters of `key`: it was just released somewhere.
    pub fn wake(&self, key: &[u8]) {
        let queue = self.lock().get(key).cloned();
        if let Some(queue) = queue {
            queue.changed.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Arc<Queue>>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A place in a key's queue; leaving (granted, timed out, or the client gone) frees it.
struct Ticket {
    shared: Arc<Shared>,
    key: Bytes,
    queue: Arc<Queue>,
    id: u64,
}

impl Ticket {
    fn join(shared: &Arc<Shared>, key: &Bytes) -> Ticket {
        let queue = shared
            .waiters
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let id = queue.next_ticket.fetch_add(1, Ordering::Relaxed);
        queue
            .order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(id);
        Ticket {
            shared: shared.clone(),
            key: key.clone(),
            queue,
            id,
        }
    }

    fn is_head(&self) -> bool {
        self.queue
            .order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            == Some(&self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut keys = self.shared.waiters.lock();
        let empty = {
            let mut order = self.queue.order.lock().unwrap_or_else(|e| e.into_inner());
            order.retain(|&t| t != self.id);
            order.is_empty()
        };
        if empty {
            keys.remove(&self.key);
        }
        // The next in line may be the head now.
        self.queue.changed.notify_waiters();
    }
}

/// Takes `key` with `token` (and a fence from `fence_key`), waiting up to `wait` for it in line
/// with this proxy's other waiters; `Held` when the wait ran out. Validity comes from the attempt
/// that succeeded, never from when the wait began.
pub async fn acquire_waiting(
    shared: &Arc<Shared>,
    key: &Bytes,
    fence_key: Option<&[u8]>,
    token: &Bytes,
    ttl_ms: u64,
    wait: Duration,
) -> OpResult<Attempt> {
    let deadline = Instant::now() + wait;
    let ticket = Ticket::join(shared, key);
    let mut last_failure = None;
    let mut announced = false;
    loop {
        let notified = ticket.queue.changed.notified();
        tokio::pin!(notified);
        // Registered before the attempt, so a release during it is not missed.
        notified.as_mut().enable();
        let mut retry = deadline.saturating_duration_since(Instant::now());
        if ticket.is_head() {
            match shared.attempt(key, fence_key, token.clone(), ttl_ms).await {
                Ok(Attempt::Granted(fence)) => return Ok(Attempt::Granted(fence)),
                Ok(Attempt::Held) => last_failure = None,
                Err(noquorum) => last_failure = Some(noquorum),
            }
            if !announced && Instant::now() < deadline {
                // From now on, releases of the key are announced to every proxy until this wait
                // is over; one more attempt at once catches a release that came before that.
                let left = deadline.saturating_duration_since(Instant::now()) + MAX_RETRY;
                let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                shared.redlock.announce_waiting(key, left).await;
                announced = true;
                continue;
            }
            // When the holder's lock would run out, in case its release is never announced.
            let expires_in = match shared.redlock.inspect(key).await {
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
