//! The masters behind the proxy. [`Master`] is the seam between the Redlock core and I/O: the
//! core only ever calls these four operations, so tests run it against in-memory fakes with
//! injected delays and failures, and production runs it against [`redis::RedisMaster`].

pub mod redis;
pub mod resp;

use std::future::Future;

use bytes::Bytes;

/// Why one master did not give an answer. Each counts as "no vote" for that master; none of them
/// proves the request was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No connection to the master is up.
    #[error("master is down")]
    Down,
    /// Too many requests are already waiting on the master; refused without sending.
    #[error("master is overloaded: too many requests pending")]
    Overloaded,
    /// The connection broke before the reply arrived.
    #[error("connection lost before the reply")]
    Disconnected,
    /// The master answered with an error.
    #[error("master replied with an error: {0}")]
    Reply(String),
    /// The master answered with something the operation does not expect.
    #[error("unexpected reply from master: {0}")]
    Unexpected(String),
}

/// What one master reports about a lock key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The token stored under the key.
    pub token: Bytes,
    /// Remaining time-to-live in milliseconds; `None` when the key has no expiry.
    pub pttl_ms: Option<u64>,
}

/// One Redis master, as the Redlock core sees it.
///
/// Every operation is atomic on the master. Each returns a `'static` future, and the request is
/// queued for sending when the method is called, not when the future is first polled: dropping
/// the future abandons the reply, not the request.
pub trait Master: Send + Sync + 'static {
    /// False while the master must not vote (restart quarantine). It still gets every request,
    /// so it holds the locks granted meanwhile; only its answers are not counted.
    fn votes(&self) -> bool {
        true
    }

    /// `SET key token NX PX ttl`: true when this call set the key.
    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Deletes the key if it holds `token`: true when deleted.
    fn release(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Asks that releases of `key` be announced to every proxy for the next `ms` ms: this proxy
    /// has a waiter for it. Without it, a release wakes only the releasing proxy's own waiters.
    fn mark_waiting(
        &self,
        _key: &[u8],
        _ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self> {
        std::future::ready(Ok(()))
    }

    /// Sets the key's TTL to `ttl_ms` if it holds `token`: true when extended.
    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// The key's token and remaining TTL, read atomically; `None` when the key is absent.
    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<Self>;

    /// The fence counter at `fence_key` (0 when absent).
    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<Self>;

    /// Takes `key` for `ttl_ms` with `token` and `fence` at once, only if the key is free and
    /// `fence` is greater than every fence `fence_key` has seen: true when taken.
    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<Self>;

    /// Raises the counter at `fence_key` to `fence` unless it is already that high.
    fn raise_fence(
        &self,
        fence_key: &[u8],
        fence: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self>;

    /// Every fence counter the master holds, to repair another master from.
    fn fences(
        &self,
    ) -> impl Future<Output = Result<Vec<(Bytes, u64)>, BackendError>> + Send + use<Self>;

    /// Raises the floor under every fence counter to `floor` unless it is already that high.
    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<Self>;

    /// True while the master may have lost fence counters (it restarted) and no repair has
    /// copied them back yet: its fence reads must not count.
    fn fences_lost(&self) -> bool {
        false
    }

    /// Records that its fence counters were repaired.
    fn fences_repaired(&self) {}
}
