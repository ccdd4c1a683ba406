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
}
