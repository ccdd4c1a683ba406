//! What one master's data does under the proxy's commands, in memory: `SET NX PX`, the release,
//! extend and inspect scripts, and the fence counters with their floor (see [`super::resp`]).
//! The in-memory [`super::Master`] doubles of the tests, the simulation and the benchmarks keep
//! their data here and differ only in how requests travel. Keys expire lazily, as in Redis: a
//! key whose expiry has passed is absent to every operation.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::time::Instant;

use super::KeyState;

/// One master's lock keys (token and expiry) and fence counters.
#[derive(Debug, Default)]
pub struct Keyspace {
    keys: HashMap<Bytes, (Bytes, Instant)>,
    fences: HashMap<Bytes, u64>,
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
        if self.get(key, now).is_some() {
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

    /// `key`'s token and remaining TTL, or `None` when it is absent.
    pub fn inspect(&self, key: &[u8], now: Instant) -> Option<KeyState> {
        self.get(key, now).map(|(token, expires)| KeyState {
            token: token.clone(),
            pttl_ms: Some(u64::try_from((expires - now).as_millis()).unwrap_or(u64::MAX)),
        })
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
        if self.get(key, now).is_some() || self.read_fence(fence_key) >= fence {
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

    /// Every fence counter.
    pub fn fences(&self) -> Vec<(Bytes, u64)> {
        self.fences.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Raises the floor under every fence counter to `floor` unless it is already that high.
    pub fn raise_fence_floor(&mut self, floor: u64) {
        self.fence_floor = self.fence_floor.max(floor);
    }

    fn holds(&self, key: &[u8], token: &[u8], now: Instant) -> bool {
        self.get(key, now).is_some_and(|(t, _)| t == token)
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
        assert_eq!((m.read_fence(b"f"), m.fences().len()), (0, 0));
    }
}
