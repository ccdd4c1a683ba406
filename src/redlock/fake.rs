//! An in-memory master for testing the Redlock core without sockets: each operation is applied
//! when it is called (as the real connection queues it), and its reply can be delayed, lost, or
//! replaced by a failure.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::mem::Keyspace;
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
    fences_lost: bool,
    data: Keyspace,
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
            fences_lost: false,
            data: Keyspace::new(),
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
        s.data.clear();
        s.fences_lost = true;
    }

    /// The fence counter at `fence_key`.
    pub fn fence(&self, fence_key: &[u8]) -> u64 {
        self.0.lock().unwrap().data.fence(fence_key)
    }

    /// The token it holds for `key`, if unexpired.
    pub fn holder(&self, key: &[u8]) -> Option<Bytes> {
        let state = self.0.lock().unwrap();
        state.data.get(key, Instant::now()).map(|(t, _)| t.clone())
    }

    /// Stores `token` under `key` for `ttl`, as another client would.
    pub fn put(&self, key: &[u8], token: &[u8], ttl: Duration) {
        let mut state = self.0.lock().unwrap();
        state.data.put(key, token, Instant::now() + ttl);
    }

    /// Runs `op` on the master's data now, unless the master is down or hung.
    fn apply<T>(&self, op: impl FnOnce(&mut Keyspace, Instant) -> T) -> (Mode, Option<T>) {
        let now = Instant::now();
        let mut state = self.0.lock().unwrap();
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

impl Default for FakeMaster {
    fn default() -> Self {
        Self::new()
    }
}

/// When a key set at `now` for `ttl_ms` expires.
fn after(now: Instant, ttl_ms: u64) -> Instant {
    now + Duration::from_millis(ttl_ms)
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
        reply(self.apply(|m, now| m.acquire(key, token, after(now, ttl_ms), now)))
    }

    fn release(
        &self,
        key: &[u8],
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

    fn raise_fence(
        &self,
        fence_key: &[u8],
        fence: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.raise_fence(fence_key, fence)))
    }

    fn fences(
        &self,
    ) -> impl Future<Output = Result<Vec<(Bytes, u64)>, BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.fences()))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        reply(self.apply(|m, _| m.raise_fence_floor(floor)))
    }

    fn fences_lost(&self) -> bool {
        self.0.lock().unwrap().fences_lost
    }

    fn fences_repaired(&self) {
        self.0.lock().unwrap().fences_lost = false;
    }
}
