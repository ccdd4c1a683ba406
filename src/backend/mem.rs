//! Masters in memory. [`Keyspace`] is what one master's data does under the proxy's commands:
//! `SET NX PX`, the release, extend and inspect scripts, the read-lock and semaphore-permit
//! scripts, the waiting markers, and the fence counters with their floor (see
//! [`super::redis::scripts`]). Keys expire lazily, as in Redis: a key whose expiry has
//! passed is absent to every operation. [`MemMaster`] is a whole [`Master`] over it, with
//! injected failures, for running the layers above without sockets (unit tests, the command
//! layer's fuzz test, benchmarks); the deterministic simulation keeps its data in a
//! [`Keyspace`] too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{BackendError, FENCE_PAGE, FencePage, HeldAs, KeyState, Master, Take, permit_token};

/// One master's lock keys (token and expiry), readers, semaphore counts, waiting markers and
/// fence counters. A name holds one of a token, readers or a count, as a Redis key holds one
/// type.
#[derive(Debug, Default, Clone)]
pub struct Keyspace {
    keys: HashMap<Bytes, (Bytes, Instant)>,
    /// A read lock's readers: token → expiry. The key lives as long as its latest reader.
    readers: HashMap<Bytes, HashMap<Bytes, Instant>>,
    /// A semaphore's count, with the expiry of its latest permit.
    permits: HashMap<Bytes, (u32, Instant)>,
    /// Waiting markers: the waiters named, and when the marker expires.
    markers: HashMap<Bytes, (HashSet<Bytes>, Instant)>,
    /// In key order, so a scan can resume after the last key of a page.
    fences: BTreeMap<Bytes, u64>,
    fence_floor: u64,
}

impl Keyspace {
    /// An empty master.
    pub fn new() -> Keyspace {
        Keyspace::default()
    }

    /// Loses every key and fence counter, as a master restarted without persistence does.
    pub fn clear(&mut self) {
        *self = Keyspace::default();
    }

    /// The token under `key` and when it expires, if it is live at `now`.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<(&Bytes, Instant)> {
        self.keys
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(token, expires)| (token, *expires))
    }

    /// Stores `token` under `key` until `expires`, whatever was there (as another client could).
    pub fn put(&mut self, key: &[u8], token: &[u8], expires: Instant) {
        self.keys.insert(
            Bytes::copy_from_slice(key),
            (Bytes::copy_from_slice(token), expires),
        );
    }

    /// `SET key token NX` with expiry `expires`: true when this call set the key.
    pub fn acquire(&mut self, key: &[u8], token: &[u8], expires: Instant, now: Instant) -> bool {
        if self.held_as(key, now).is_some() {
            return false;
        }
        self.put(key, token, expires);
        true
    }

    /// Deletes `key` if it holds `token`: true when deleted.
    pub fn release(&mut self, key: &[u8], token: &[u8], now: Instant) -> bool {
        let held = self.holds(key, token, now);
        if held {
            self.keys.remove(key);
        }
        held
    }

    /// Moves `key`'s expiry to `expires` if it holds `token`: true when extended.
    pub fn extend(&mut self, key: &[u8], token: &[u8], expires: Instant, now: Instant) -> bool {
        match self.keys.get_mut(key) {
            Some((t, exp)) if *exp > now && t == token => {
                *exp = expires;
                true
            }
            _ => false,
        }
    }

    /// Replaces `key`'s token with `new_token`, expiring at `expires`, if it holds `token`: true
    /// when swapped.
    pub fn swap(
        &mut self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        expires: Instant,
        now: Instant,
    ) -> bool {
        let held = self.holds(key, token, now);
        if held {
            self.put(key, new_token, expires);
        }
        held
    }

    /// `key`'s token and remaining TTL, or `None` when it is absent.
    pub fn inspect(&self, key: &[u8], now: Instant) -> Option<KeyState> {
        self.get(key, now).map(|(token, expires)| KeyState {
            token: token.clone(),
            pttl_ms: Some(u64::try_from((expires - now).as_millis()).unwrap_or(u64::MAX)),
        })
    }

    /// Which primitive uses `key` at `now`; `None` when it is free.
    pub fn held_as(&self, key: &[u8], now: Instant) -> Option<HeldAs> {
        if self.get(key, now).is_some() {
            return Some(HeldAs::Exclusive);
        }
        if let Some(readers) = self.readers.get(key)
            && readers.values().any(|e| *e > now)
        {
            return Some(HeldAs::Shared);
        }
        match self.permits.get(key) {
            Some((n, e)) if *e > now => Some(HeldAs::Permits(*n)),
            _ => None,
        }
    }

    /// Takes the first free slot of semaphore `key` among `slots`, from `offset` on (see
    /// [`Master::acquire_permit`]).
    pub fn acquire_permit(
        &mut self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        offset: u32,
        expires: Instant,
        now: Instant,
    ) -> Take {
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        match self.held_as(key, now) {
            None => {}
            Some(HeldAs::Permits(n)) if n == count => {}
            Some(other) => return Take::Conflict(other),
        }
        for j in 0..count {
            let slot = (offset.wrapping_add(j)) % count;
            let token = permit_token(base, slot, count);
            if self.acquire(&slots[slot as usize], &token, expires, now) {
                let meta = self
                    .permits
                    .entry(Bytes::copy_from_slice(key))
                    .or_insert((count, expires));
                *meta = (count, meta.1.max(expires));
                return Take::Taken(slot);
            }
        }
        Take::Held
    }

    /// Frees the slots holding a permit of `base`, except `keep` (see [`Master::release_permit`]).
    pub fn release_permit(
        &mut self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
        now: Instant,
    ) -> bool {
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let mut freed = false;
        for (slot, name) in (0..count).zip(slots) {
            if Some(slot) != keep {
                freed |= self.release(name, &permit_token(base, slot, count), now);
            }
        }
        if freed && self.held_as(key, now) == Some(HeldAs::Permits(count)) {
            let latest = slots
                .iter()
                .filter_map(|s| self.get(s, now))
                .map(|(_, e)| e)
                .max();
            match latest {
                Some(latest) => {
                    self.permits
                        .insert(Bytes::copy_from_slice(key), (count, latest));
                }
                None => {
                    self.permits.remove(key);
                }
            }
        }
        freed
    }

    /// Moves `slot`'s expiry to `expires` if it holds `token`, and the count's with it.
    pub fn extend_permit(
        &mut self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        expires: Instant,
        now: Instant,
    ) -> bool {
        if !self.extend(slot, token, expires, now) {
            return false;
        }
        if let Some(meta) = self.permits.get_mut(key) {
            meta.1 = meta.1.max(expires);
        }
        true
    }

    /// Moves the expiry of the slot holding a permit taken under any of `names` to `expires`,
    /// and the count's with it: the slot (see [`Master::extend_named_permit`]).
    pub fn extend_named_permit(
        &mut self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        expires: Instant,
        now: Instant,
    ) -> Option<u32> {
        let count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        for (slot, name) in (0..count).zip(slots) {
            for base in names {
                if self.extend_permit(key, name, &permit_token(base, slot, count), expires, now) {
                    return Some(slot);
                }
            }
        }
        None
    }

    /// Adds reader `token` to `key` until `expires`, unless a writer holds the key or waits
    /// (`writers` is marked), or a semaphore uses it.
    pub fn acquire_shared(
        &mut self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        expires: Instant,
        now: Instant,
    ) -> Take {
        match self.held_as(key, now) {
            None | Some(HeldAs::Shared) => {}
            Some(HeldAs::Exclusive) => return Take::Held,
            Some(other) => return Take::Conflict(other),
        }
        if self.marked(writers, now) {
            return Take::Held;
        }
        let readers = self.readers.entry(Bytes::copy_from_slice(key)).or_default();
        readers.retain(|_, e| *e > now);
        readers.insert(Bytes::copy_from_slice(token), expires);
        Take::Taken(0)
    }

    /// Takes reader `token` out of `key`: true when it was a live reader.
    pub fn release_shared(&mut self, key: &[u8], token: &[u8], now: Instant) -> bool {
        let Some(readers) = self.readers.get_mut(key) else {
            return false;
        };
        let live = readers.remove(token).is_some_and(|e| e > now);
        readers.retain(|_, e| *e > now);
        if readers.is_empty() {
            self.readers.remove(key);
        }
        live
    }

    /// Moves reader `token`'s expiry to `expires` if it is a live reader of `key`.
    pub fn extend_shared(
        &mut self,
        key: &[u8],
        token: &[u8],
        expires: Instant,
        now: Instant,
    ) -> bool {
        match self.readers.get_mut(key).and_then(|r| r.get_mut(token)) {
            Some(e) if *e > now => {
                *e = expires;
                true
            }
            _ => false,
        }
    }

    /// How long `token` still holds `key` (its token, or one of its readers), in ms.
    pub fn token_pttl(&self, key: &[u8], token: &[u8], now: Instant) -> Option<u64> {
        let expires = match self.get(key, now) {
            Some((t, e)) if t == token => e,
            Some(_) => return None,
            None => *self.readers.get(key)?.get(token)?,
        };
        (expires > now).then(|| u64::try_from((expires - now).as_millis()).unwrap_or(u64::MAX))
    }

    /// Names `waiter` in marker `marker` and keeps it at least until `expires`.
    pub fn mark(&mut self, marker: &[u8], waiter: &[u8], expires: Instant, now: Instant) {
        let entry = self
            .markers
            .entry(Bytes::copy_from_slice(marker))
            .or_insert_with(|| (HashSet::new(), expires));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.insert(Bytes::copy_from_slice(waiter));
        entry.1 = entry.1.max(expires);
    }

    /// Takes `waiter` out of `marker`; the marker goes with the last.
    pub fn unmark(&mut self, marker: &[u8], waiter: &[u8]) {
        if let Some((waiters, _)) = self.markers.get_mut(marker) {
            waiters.remove(waiter);
            if waiters.is_empty() {
                self.markers.remove(marker);
            }
        }
    }

    /// True while `marker` names some waiter.
    pub fn marked(&self, marker: &[u8], now: Instant) -> bool {
        self.markers
            .get(marker)
            .is_some_and(|(w, e)| *e > now && !w.is_empty())
    }

    /// The fence counter at `fence_key`, or the floor when that is higher.
    pub fn read_fence(&self, fence_key: &[u8]) -> u64 {
        self.fence(fence_key).max(self.fence_floor)
    }

    /// The counter at `fence_key` itself (0 when absent), without the floor.
    pub fn fence(&self, fence_key: &[u8]) -> u64 {
        self.fences.get(fence_key).copied().unwrap_or(0)
    }

    /// Takes `key` with `token` until `expires` and sets `fence_key` to `fence`, only if the key
    /// is free and `fence` is above what [`Self::read_fence`] reads: true when taken.
    pub fn acquire_fenced(
        &mut self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        expires: Instant,
        fence: u64,
        now: Instant,
    ) -> bool {
        if self.held_as(key, now).is_some() || self.read_fence(fence_key) >= fence {
            return false;
        }
        self.put(key, token, expires);
        self.fences.insert(Bytes::copy_from_slice(fence_key), fence);
        true
    }

    /// Raises the counter at `fence_key` to `fence` unless it is already that high.
    pub fn raise_fence(&mut self, fence_key: &[u8], fence: u64) {
        let seen = self
            .fences
            .entry(Bytes::copy_from_slice(fence_key))
            .or_default();
        *seen = (*seen).max(fence);
    }

    /// Raises each of `counters` and the floor, each unless it is already that high.
    pub fn raise_fences(&mut self, counters: &[(Bytes, u64)], floor: u64) {
        for (key, fence) in counters {
            self.raise_fence(key, *fence);
        }
        self.raise_fence_floor(floor);
    }

    /// The fence counters after `cursor` (a fence key; empty: from the first), at most
    /// [`FENCE_PAGE`] of them, with the floor; the next page starts after the last one.
    pub fn fence_page(&self, cursor: &[u8]) -> FencePage {
        use std::ops::Bound;
        let from = if cursor.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(Bytes::copy_from_slice(cursor))
        };
        let mut rest = self.fences.range((from, Bound::Unbounded));
        let counters: Vec<(Bytes, u64)> = rest
            .by_ref()
            .take(FENCE_PAGE)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let next = match rest.next() {
            Some(_) => counters.last().map(|(k, _)| k.clone()),
            None => None,
        };
        FencePage {
            counters,
            floor: self.fence_floor,
            next,
        }
    }

    /// One page of the fence sweep: raises the floor to the highest counter of the page.
    /// Counters here do not expire (a master in memory lives no longer than its test), so
    /// this is the sweep's effect on what fences read.
    pub fn sweep_fences(&mut self, cursor: &[u8]) -> Option<Bytes> {
        let page = self.fence_page(cursor);
        let top = page.counters.iter().map(|(_, f)| *f).max().unwrap_or(0);
        self.raise_fence_floor(top);
        page.next
    }

    /// How many fence counters it holds.
    pub fn fence_count(&self) -> usize {
        self.fences.len()
    }

    /// Raises the floor under every fence counter to `floor` unless it is already that high.
    pub fn raise_fence_floor(&mut self, floor: u64) {
        self.fence_floor = self.fence_floor.max(floor);
    }

    fn holds(&self, key: &[u8], token: &[u8], now: Instant) -> bool {
        self.get(key, now).is_some_and(|(t, _)| t == token)
    }
}

/// How an in-memory master behaves right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Applies every request and answers at once.
    Healthy,
    /// Refuses every request without applying it.
    Down,
    /// Neither applies nor answers (a paused process).
    Hung,
    /// Applies at once, answers after the delay.
    Slow(Duration),
}

#[derive(Debug)]
struct State {
    mode: Mode,
    votes: bool,
    fences_lost: bool,
    data: Keyspace,
}

/// An in-memory master: each operation is applied when it is called (as the real connection
/// queues it), and its reply can be delayed, lost, or replaced by a failure. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemMaster(Arc<Mutex<State>>);

impl MemMaster {
    /// A healthy, empty master.
    pub fn new() -> Self {
        MemMaster(Arc::new(Mutex::new(State {
            mode: Mode::Healthy,
            votes: true,
            fences_lost: false,
            data: Keyspace::new(),
        })))
    }

    /// Its health, in the shape `INFO` shows a real master's.
    pub fn status(&self) -> super::MasterStatus {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let up = state.mode != Mode::Down;
        super::MasterStatus {
            addr: "memory".to_owned(),
            up,
            conns_up: usize::from(up),
            conns: 1,
            pending: 0,
            requests: 0,
            failures: 0,
            reconnects: 0,
            changed_at: 0,
            run_id: None,
            quarantine_left_ms: (!state.votes).then_some(0),
            held_out: None,
            reason: (!state.votes).then_some("quarantined"),
            last_error: None,
        }
    }

    /// Changes how it behaves from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).mode = mode;
    }

    /// Lets it vote, or quarantines it.
    pub fn set_votes(&self, votes: bool) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).votes = votes;
    }

    /// Loses every key and fence counter, as a master restarted without persistence.
    pub fn restart_empty(&self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.data.clear();
        s.fences_lost = true;
    }

    /// The fence counter at `fence_key`.
    pub fn fence(&self, fence_key: &[u8]) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .data
            .fence(fence_key)
    }

    /// The token it holds for `key`, if unexpired.
    pub fn holder(&self, key: &[u8]) -> Option<Bytes> {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.data.get(key, Instant::now()).map(|(t, _)| t.clone())
    }

    /// Stores `token` under `key` for `ttl`, as another client would.
    pub fn put(&self, key: &[u8], token: &[u8], ttl: Duration) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.data.put(key, token, Instant::now() + ttl);
    }

    /// Runs `op` on the master's data now, unless the master is down or hung.
    fn apply<T>(&self, op: impl FnOnce(&mut Keyspace, Instant) -> T) -> (Mode, Option<T>) {
        let now = Instant::now();
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mode = state.mode;
        match mode {
            Mode::Healthy | Mode::Slow(_) => (mode, Some(op(&mut state.data, now))),
            Mode::Down | Mode::Hung => (mode, None),
        }
    }
}

/// The reply to an applied (or refused) request, as the mode delivers it.
async fn reply<T: Send + 'static>((mode, result): (Mode, Option<T>)) -> Result<T, BackendError> {
    match (mode, result) {
        (Mode::Slow(d), Some(r)) => {
            tokio::time::sleep(d).await;
            Ok(r)
        }
        (Mode::Hung, _) => std::future::pending().await,
        (_, Some(r)) => Ok(r),
        (_, None) => Err(BackendError::Down),
    }
}

impl Default for MemMaster {
    fn default() -> Self {
        Self::new()
    }
}

/// When a key set at `now` for `ttl_ms` expires.
fn after(now: Instant, ttl_ms: u64) -> Instant {
    now + Duration::from_millis(ttl_ms)
}

impl Master for MemMaster {
    fn votes(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).votes
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.acquire(key, token, after(now, ttl_ms), now)))
    }

    fn release(
        &self,
        key: &[u8],
        _marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.release(key, token, now)))
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.extend(key, token, after(now, ttl_ms), now)))
    }

    fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.swap(key, token, new_token, after(now, ttl_ms), now)))
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.inspect(key, now)))
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.read_fence(fence_key)))
    }

    fn mark_waiting(
        &self,
        _key: &[u8],
        marker: &[u8],
        waiter: &[u8],
        ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.mark(marker, waiter, after(now, ms), now)))
    }

    fn unmark_waiting(
        &self,
        _key: &[u8],
        marker: &[u8],
        waiter: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.unmark(marker, waiter)))
    }

    fn held_as(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<HeldAs>, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.held_as(key, now)))
    }

    fn acquire_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        ttl_ms: u64,
        offset: u32,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        reply(
            self.apply(|m, now| {
                m.acquire_permit(key, slots, base, offset, after(now, ttl_ms), now)
            }),
        )
    }

    fn release_permit(
        &self,
        key: &[u8],
        _marker: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.release_permit(key, slots, base, keep, now)))
    }

    fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.extend_permit(key, slot, token, after(now, ttl_ms), now)))
    }

    fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send + use<> {
        reply(
            self.apply(|m, now| m.extend_named_permit(key, slots, names, after(now, ttl_ms), now)),
        )
    }

    fn acquire_shared(
        &self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.acquire_shared(key, writers, token, after(now, ttl_ms), now)))
    }

    fn release_shared(
        &self,
        key: &[u8],
        _marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.release_shared(key, token, now)))
    }

    fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.extend_shared(key, token, after(now, ttl_ms), now)))
    }

    fn token_pttl(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| m.token_pttl(key, token, now)))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|m, now| {
            m.acquire_fenced(key, fence_key, token, after(now, ttl_ms), fence, now)
        }))
    }

    fn raise_fences(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.raise_fences(counters, floor)))
    }

    fn fence_page(
        &self,
        cursor: &[u8],
    ) -> impl Future<Output = Result<FencePage, BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.fence_page(cursor)))
    }

    fn sweep_fences(
        &self,
        cursor: &[u8],
        _expire_ms: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.sweep_fences(cursor)))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.raise_fence_floor(floor)))
    }

    fn fences_lost(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).fences_lost
    }

    fn fences_repaired(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).fences_lost = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lock_is_taken_once_and_released_only_by_its_token() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut m = Keyspace::new();
        assert!(m.acquire(b"k", b"a", later, now));
        assert!(!m.acquire(b"k", b"b", later, now));
        assert!(!m.release(b"k", b"b", now));
        assert_eq!(m.inspect(b"k", now).unwrap().pttl_ms, Some(1000));
        assert!(m.extend(b"k", b"a", later + Duration::from_secs(1), now));
        assert!(!m.extend(b"k", b"b", later, now));
        assert!(m.release(b"k", b"a", now));
        assert!(m.inspect(b"k", now).is_none());
    }

    #[test]
    fn fence_pages_cover_every_counter_once() {
        let mut m = Keyspace::new();
        let n = 2 * FENCE_PAGE + 3;
        for i in 0..n {
            m.raise_fence(format!("f{i}").as_bytes(), 1);
        }
        m.raise_fence_floor(7);
        let (mut seen, mut cursor, mut pages) = (Vec::new(), Bytes::new(), 0);
        loop {
            let page = m.fence_page(&cursor);
            assert!(page.counters.len() <= FENCE_PAGE && page.floor == 7);
            seen.extend(page.counters);
            pages += 1;
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!((seen.len(), pages), (n, 3));
        seen.dedup();
        assert_eq!(seen.len(), n);
    }

    #[test]
    fn expired_keys_are_absent() {
        let now = Instant::now();
        let mut m = Keyspace::new();
        m.put(b"k", b"a", now + Duration::from_millis(5));
        let after = now + Duration::from_millis(5);
        assert!(m.get(b"k", after).is_none());
        assert!(!m.release(b"k", b"a", after));
        assert!(!m.extend(b"k", b"a", after + Duration::from_secs(1), after));
        assert!(m.acquire(b"k", b"b", after + Duration::from_secs(1), after));
    }

    #[test]
    fn fences_only_rise_and_the_floor_is_under_all() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut m = Keyspace::new();
        assert!(m.acquire_fenced(b"k", b"f", b"a", later, 3, now));
        assert!(!m.acquire_fenced(b"j", b"f", b"b", later, 3, now));
        m.raise_fence(b"f", 2);
        assert_eq!(m.read_fence(b"f"), 3);
        m.raise_fence_floor(10);
        assert_eq!((m.read_fence(b"f"), m.fence(b"f")), (10, 3));
        assert!(!m.acquire_fenced(b"j", b"f", b"b", later, 9, now));
        assert!(m.acquire_fenced(b"j", b"f", b"b", later, 11, now));
        m.clear();
        assert_eq!((m.read_fence(b"f"), m.fence_count()), (0, 0));
    }
}
