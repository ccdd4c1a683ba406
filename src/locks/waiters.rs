//! Waiting for a lock without polling (`LOCK key ttl WAIT ms`). Waiters on one key queue first
//! come, first served on this proxy; only the head of the queue tries to take the lock. They
//! wake when any proxy releases the key (while a waiter's marker is on the masters, the release
//! is published through them, and every proxy subscribes), and — so a lost notification only
//! delays — when the holder's lock would expire anyway.
//!
//! Watchers wait for a lock to be released without taking it (a client library's own wait:
//! python-redis-lock's `BLPOP` on its signal list, Redisson's subscription to its lock's
//! channel). They are counted beside a key's queue, never in its line, and wake the same way.
//!
//! Queues live in a [`DashMap`] by lock key: a release looks up its own key's shard only, so the
//! release path takes no process-wide lock, and a key nobody waits for has no entry.
//!
//! A wait ends early when its connection's waits are ended (the client left, or the proxy shuts
//! down): it then answers null at once and holds nothing; a grant that raced with the end is
//! released again. The last of this proxy's waiters on a key to leave takes the proxy out of
//! the key's marker on the masters, and the marker goes when no proxy is left in it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Attempt, Error, Kind, LockService, Want};
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
    /// Watchers of the key: they wait for its releases, outside the line.
    watchers: AtomicUsize,
    /// Releases of the key seen, so a watcher tells a release from a change of the line.
    releases: AtomicU64,
}

impl Queue {
    fn order(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Nobody waits or watches.
    fn unused(&self) -> bool {
        self.watchers.load(Ordering::Acquire) == 0 && self.order().is_empty()
    }
}

impl Waiters {
    /// Wakes the waiters of lock key `key`: it was just released somewhere.
    pub fn wake(&self, key: &[u8]) {
        if let Some(queue) = self.keys.get(key) {
            queue.releases.fetch_add(1, Ordering::AcqRel);
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
    /// A watcher's ticket: counted beside the line, never in it.
    watching: bool,
    left: bool,
}

impl<'a, M: Master> Ticket<'a, M> {
    fn join(service: &'a LockService<M>, lock: &'a LockKey) -> Ticket<'a, M> {
        Ticket::new(service, lock, false)
    }

    fn watch(service: &'a LockService<M>, lock: &'a LockKey) -> Ticket<'a, M> {
        Ticket::new(service, lock, true)
    }

    fn new(service: &'a LockService<M>, lock: &'a LockKey, watching: bool) -> Ticket<'a, M> {
        // Joined while the entry is held, so a ticket leaving an empty queue cannot remove the
        // queue between its lookup and this join.
        let entry = service.waiters.keys.entry(lock.key.clone()).or_default();
        let id = entry.next_ticket.fetch_add(1, Ordering::Relaxed);
        if watching {
            entry.watchers.fetch_add(1, Ordering::AcqRel);
        } else {
            entry.order().push_back(id);
        }
        Ticket {
            service,
            lock,
            queue: entry.clone(),
            id,
            watching,
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
        if self.watching {
            self.queue.watchers.fetch_sub(1, Ordering::AcqRel);
        } else {
            self.queue.order().retain(|&t| t != self.id);
        }
        let empty = self.queue.unused();
        let waiters = &self.service.waiters;
        if empty {
            // Checked again under the entry's lock: someone may have joined meanwhile.
            waiters
                .keys
                .remove_if(&self.lock.key, |_, queue| queue.unused());
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
    want: &'a Want<'a>,
    token: &'a Bytes,
}

impl<M: Master> Drop for Attempting<'_, M> {
    fn drop(&mut self) {
        self.service.abandon(self.want, self.token);
    }
}

impl<M: Master> LockService<M> {
    /// Takes what `want` asks for with `token`, waiting up to `wait` for it in line with this
    /// proxy's other waiters; `Held` when the wait ran out, or `until` was cancelled (then
    /// nothing is held: a grant that raced with it is released). Validity comes from the
    /// attempt that succeeded, never from when the wait began. A failure to reach a quorum ends
    /// the wait only if it was the last attempt's outcome. A waiting writer (an exclusive
    /// `want`) is named in the key's writers marker from its first refusal to the end of its
    /// wait: new readers are refused meanwhile, so a stream of readers cannot starve it.
    pub(super) async fn acquire_waiting(
        &self,
        want: &Want<'_>,
        token: &Bytes,
        wait: Duration,
        until: Option<&CancellationToken>,
    ) -> Result<Attempt, Error> {
        if until.is_some_and(CancellationToken::is_cancelled) {
            return Ok(Attempt::Held);
        }
        let lock = want.lock;
        let mut ticket = Ticket::join(self, lock);
        let deadline = Instant::now() + wait;
        let writers = (want.kind == Kind::Exclusive).then(|| LockKey {
            key: lock.key.clone(),
            marker: self.keys.writers(want.db, want.key),
        });
        let mut writer_marked = false;
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
                        want,
                        token,
                    };
                    let attempt = self.attempt(want, token.clone()).await;
                    std::mem::forget(attempting);
                    match attempt {
                        Ok(Attempt::Granted(granted, _))
                            if until.is_some_and(CancellationToken::is_cancelled) =>
                        {
                            // Ended while the attempt was out: whoever asked will not take it.
                            let _ = self.release_lock(want.db, want.key, lock, &granted).await;
                            return Ok(Attempt::Held);
                        }
                        Ok(grant @ Attempt::Granted(..)) => return Ok(grant),
                        Ok(Attempt::Held) => last_failure = None,
                        Err(e @ Error::WrongKind { .. }) => return Err(e),
                        Err(e) => last_failure = Some(e),
                    }
                    if !announced && Instant::now() < deadline {
                        // From now on, releases of the key are announced to every proxy until
                        // this wait is over; one more attempt at once catches a release that
                        // came before.
                        let left = deadline.saturating_duration_since(Instant::now()) + MAX_RETRY;
                        let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                        ticket.queue.announced.store(true, Ordering::Release);
                        let writer = async {
                            if let Some(writers) = &writers {
                                writer_marked = true;
                                self.redlock.announce_waiting(writers, token, left).await;
                            }
                        };
                        let waiting = self.redlock.announce_waiting(lock, &self.waiter, left);
                        futures_util::future::join(waiting, writer).await;
                        announced = true;
                        continue;
                    }
                    // When the holder's lock would run out, in case its release is never
                    // announced.
                    let expires_in = match self.redlock.inspect(&lock.key).await {
                        Ok(Some((_, validity_ms))) => Duration::from_millis(validity_ms),
                        // No token holds it: free again, or held by readers or permits, whose
                        // releases are announced like a mutex's (the timer covers expiries).
                        Ok(None) if want.kind == Kind::Exclusive => MIN_RETRY,
                        Ok(None) | Err(_) => MAX_RETRY / 10,
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
        // The writer waits no more (granted or not); readers may come again. Sent before the
        // line is left, awaited with it.
        let writer_gone = writers
            .filter(|_| writer_marked)
            .map(|w| self.redlock.withdraw_waiting(&w, token));
        if let Some(withdrawn) = ticket.leave() {
            withdrawn.await;
        }
        if let Some(writer_gone) = writer_gone {
            writer_gone.await;
        }
        outcome
    }
}

/// How long a watcher's mark on the masters lasts; it is renewed when half is left.
const WATCH_MARK: Duration = Duration::from_secs(60);

/// How long after a release its announcements by the other masters may still arrive.
const ANNOUNCED_COPIES: Duration = Duration::from_millis(50);

/// A watcher's mark on the masters, renewed before it runs out.
struct Mark {
    until: Option<Instant>,
}

impl Mark {
    /// Names this proxy in `lock`'s marker on every master again if less than half of the
    /// last mark is left, so the lock's releases anywhere are announced here.
    async fn renew<M: Master>(&mut self, ticket: &Ticket<'_, M>) {
        let now = Instant::now();
        if self.until.is_some_and(|until| until > now + WATCH_MARK / 2) {
            return;
        }
        let service = ticket.service;
        ticket.queue.announced.store(true, Ordering::Release);
        let ms = u64::try_from(WATCH_MARK.as_millis()).unwrap_or(u64::MAX);
        service
            .redlock
            .announce_waiting(ticket.lock, &service.waiter, ms)
            .await;
        self.until = Some(now + WATCH_MARK);
    }
}

impl<M: Master> LockService<M> {
    /// Waits until `lock` is free (no quorum holds it): true as soon as it is, false when
    /// `wait` (`None`: no limit) runs out or `until` is cancelled first. Takes nothing. Wakes
    /// on a release through any proxy, and when the holder's validity runs out.
    pub(super) async fn await_free_lock(
        &self,
        lock: &LockKey,
        wait: Option<Duration>,
        until: Option<&CancellationToken>,
    ) -> bool {
        let mut ticket = Ticket::watch(self, lock);
        let deadline = wait.map(|wait| Instant::now() + wait);
        let outcome = async {
            let ticket = &ticket;
            let mut mark = Mark { until: None };
            loop {
                let notified = ticket.queue.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // Marked before the look, so a release just after it is announced here.
                mark.renew(ticket).await;
                let retry = match self.redlock.inspect(&lock.key).await {
                    Ok(None) => return true,
                    Ok(Some((_, validity_ms))) => Duration::from_millis(validity_ms),
                    Err(_) => MAX_RETRY / 10,
                };
                let mut retry = retry.clamp(MIN_RETRY, MAX_RETRY);
                if let Some(deadline) = deadline {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    retry = retry.min(left);
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(retry) => {}
                    _ = ended(until) => return false,
                }
            }
        }
        .await;
        if let Some(withdrawn) = ticket.leave() {
            withdrawn.await;
        }
        outcome
    }

    /// Calls `released` on every release of `lock` through any proxy, until `until` is
    /// cancelled; `ready` is sent once every release from then on will be heard (this proxy is
    /// named in the lock's marker on the masters). Takes nothing; a lock that expires without
    /// a release is not reported.
    pub(super) async fn watch_lock_releases(
        &self,
        lock: &LockKey,
        until: &CancellationToken,
        ready: tokio::sync::oneshot::Sender<()>,
        mut released: impl FnMut() + Send,
    ) {
        let mut ticket = Ticket::watch(self, lock);
        async {
            let ticket = &ticket;
            let mut mark = Mark { until: None };
            let mut seen = ticket.queue.releases.load(Ordering::Acquire);
            let mut ready = Some(ready);
            loop {
                let notified = ticket.queue.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                mark.renew(ticket).await;
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
                if ticket.queue.releases.load(Ordering::Acquire) != seen {
                    released();
                    // Every master that released it announces it: the copies follow within
                    // moments, and count as the one release they are. Whatever came in that
                    // time (the copies, or more releases) is reported once more only if the
                    // lock is free at its end, so a release in it is never missed.
                    let after = ticket.queue.releases.load(Ordering::Acquire);
                    tokio::select! {
                        _ = tokio::time::sleep(ANNOUNCED_COPIES) => {}
                        _ = until.cancelled() => return,
                    }
                    seen = ticket.queue.releases.load(Ordering::Acquire);
                    if seen != after && matches!(self.redlock.inspect(&lock.key).await, Ok(None)) {
                        released();
                    }
                    continue;
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(WATCH_MARK / 4) => {}
                    _ = until.cancelled() => return,
                }
            }
        }
        .await;
        if let Some(withdrawn) = ticket.leave() {
            withdrawn.await;
        }
    }
}

/// Resolves when `until` is cancelled; never without one.
async fn ended(until: Option<&CancellationToken>) {
    match until {
        Some(until) => until.cancelled().await,
        None => std::future::pending().await,
    }
}
