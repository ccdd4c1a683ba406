//! An in-memory master for testing the Redlock core without sockets: each operation is applied
//! when it is called (as the real connection queues it), and its reply can be delayed, lost, or
//! replaced by a failure.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::{BackendError, KeyState, Master};

/// How a fake master behaves right now.
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
    fences: HashMap<Bytes, u64>,
    fence_floor: u64,
    fences_lost: bool,
    keys: HashMap<Bytes, (Bytes, Instant)>,
}

/// A cheap-clone handle on one fake master.
#[derive(Debug, Clone)]
pub struct FakeMaster(Arc<Mutex<State>>);

impl FakeMaster {
    /// A healthy, empty master.
    pub fn new() -> Self {
        FakeMaster(Arc::new(Mutex::new(State {
            mode: Mode::Healthy,
            votes: true,
            fences: HashMap::new(),
            fence_floor: 0,
            fences_lost: false,
            keys: HashMap::new(),
        })))
    }

    /// Changes how it behaves from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.0.lock().unwrap().mode = mode;
    }

    /// Lets it vote, or quarantines it.
    pub fn set_votes(&self, votes: bool) {
        self.0.lock().unwrap().votes = votes;
    }

    /// Loses every key and fence counter, as a master restarted without persistence.
    pub fn restart_empty(&self) {
        let mut s = self.0.lock().unwrap();
        s.keys.clear();
        s.fences.clear();
        s.fence_floor = 0;
        s.fences_lost = true;
    }

    /// The fence counter at `fence_key`.
    pub fn fence(&self, fence_key: &[u8]) -> u64 {
        self.0
            .lock()
            .unwrap()
            .fences
            .get(fence_key)
            .copied()
            .unwrap_or(0)
    }

    /// The token it holds for `key`, if unexpired.
    pub fn holder(&self, key: &[u8]) -> Option<Bytes> {
        let now = Instant::now();
        let state = self.0.lock().unwrap();
        state
            .keys
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(t, _)| t.clone())
    }

    /// Stores `token` under `key` for `ttl`, as another client would.
    pub fn put(&self, key: &[u8], token: &[u8], ttl: Duration) {
        let mut state = self.0.lock().unwrap();
        state.keys.insert(
            Bytes::copy_from_slice(key),
            (Bytes::copy_from_slice(token), Instant::now() + ttl),
        );
    }

    /// Runs `op` on the fence counters now, unless the master is down or hung.
    fn apply_fences<T>(&self, op: impl FnOnce(&mut State) -> T) -> (Mode, Option<T>) {
        let mut state = self.0.lock().unwrap();
        let mode = state.mode;
        match mode {
            Mode::Healthy | Mode::Slow(_) => (mode, Some(op(&mut state))),
            Mode::Down | Mode::Hung => (mode, None),
        }
    }

    /// Runs `op` on the live keys now, unless the master is down or hung.
    fn apply<T>(
        &self,
        op: impl FnOnce(&mut HashMap<Bytes, (Bytes, Instant)>, Instant) -> T,
    ) -> (Mode, Option<T>) {
        let now = Instant::now();
        let mut state = self.0.lock().unwrap();
        state.keys.retain(|_, (_, exp)| *exp > now);
        let mode = state.mode;
        match mode {
            Mode::Healthy | Mode::Slow(_) => (mode, Some(op(&mut state.keys, now))),
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

impl Default for FakeMaster {
    fn default() -> Self {
        Self::new()
    }
}

fn holds(keys: &HashMap<Bytes, (Bytes, Instant)>, key: &[u8], token: &[u8]) -> bool {
    keys.get(key).is_some_and(|(t, _)| t == token)
}

impl Master for FakeMaster {
    fn votes(&self) -> bool {
        self.0.lock().unwrap().votes
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|keys, now| {
            if keys.contains_key(key) {
                return false;
            }
            let expiry = now + Duration::from_millis(ttl_ms);
            keys.insert(
                Bytes::copy_from_slice(key),
                (Bytes::copy_from_slice(token), expiry),
            );
            true
        }))
    }

    fn release(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|keys, _| holds(keys, key, token) && keys.remove(key).is_some()))
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply(|keys, now| match keys.get_mut(key) {
            Some((t, exp)) if t == token => {
                *exp = now + Duration::from_millis(ttl_ms);
                true
            }
            _ => false,
        }))
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        reply(self.apply(|keys, now| {
            keys.get(key).map(|(token, exp)| KeyState {
                token: token.clone(),
                pttl_ms: Some(u64::try_from((*exp - now).as_millis()).unwrap_or(u64::MAX)),
            })
        }))
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        reply(self.apply_fences(|s| {
            s.fences
                .get(fence_key)
                .copied()
                .unwrap_or(0)
                .max(s.fence_floor)
        }))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        reply(self.apply_fences(|s| {
            let now = Instant::now();
            s.keys.retain(|_, (_, exp)| *exp > now);
            let seen = s
                .fences
                .get(fence_key)
                .copied()
                .unwrap_or(0)
                .max(s.fence_floor);
            if s.keys.contains_key(key) || seen >= fence {
                return false;
            }
            s.keys.insert(
                Bytes::copy_from_slice(key),
                (
                    Bytes::copy_from_slice(token),
                    now + Duration::from_millis(ttl_ms),
                ),
            );
            s.fences.insert(Bytes::copy_from_slice(fence_key), fence);
            true
        }))
    }

    fn raise_fence(
        &self,
        fence_key: &[u8],
        fence: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply_fences(|s| {
            let seen = s
                .fences
                .entry(Bytes::copy_from_slice(fence_key))
                .or_default();
            *seen = (*seen).max(fence);
        }))
    }

    fn fences(
        &self,
    ) -> impl Future<Output = Result<Vec<(Bytes, u64)>, BackendError>> + Send + use<> {
        reply(self.apply_fences(|s| s.fences.iter().map(|(k, v)| (k.clone(), *v)).collect()))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply_fences(|s| s.fence_floor = s.fence_floor.max(floor)))
    }

    fn fences_lost(&self) -> bool {
        self.0.lock().unwrap().fences_lost
    }

    fn fences_repaired(&self) {
        self.0.lock().unwrap().fences_lost = false;
    }
}
