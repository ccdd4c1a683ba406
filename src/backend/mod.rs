//! The masters behind the proxy. [`Master`] is the seam between the Redlock core and I/O: the
//! core only ever calls these operations, so tests run it against in-memory fakes with
//! injected delays and failures, and production runs it against [`redis::RedisMaster`].

pub mod mem;
pub mod redis;
pub mod resp;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::Bytes;

use crate::redlock::quorum::Tally;

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

/// What a master is asked in a vote: each answers yes or no.
#[derive(Debug, Clone, Copy)]
pub enum Ask<'a> {
    /// [`Master::acquire`].
    Acquire {
        /// Lock key.
        key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// [`Master::release`].
    Release {
        /// Lock key.
        key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
    },
    /// [`Master::extend`].
    Extend {
        /// Lock key.
        key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// [`Master::acquire_fenced`].
    AcquireFenced {
        /// Lock key.
        key: &'a [u8],
        /// Fence counter key.
        fence_key: &'a [u8],
        /// The holder's token.
        token: &'a [u8],
        /// TTL in ms.
        ttl_ms: u64,
        /// The fence to take.
        fence: u64,
    },
}

impl Ask<'_> {
    /// The lock key asked about.
    pub fn key(&self) -> &[u8] {
        match *self {
            Ask::Acquire { key, .. }
            | Ask::Release { key, .. }
            | Ask::Extend { key, .. }
            | Ask::AcquireFenced { key, .. } => key,
        }
    }
}

/// One round's answers, counted as they arrive: a master records its answer here directly,
/// and the round's task is woken once, when the outcome is decided — not once per answer. A
/// master that only has the future-returning operations adds its futures instead, and the
/// round's task polls them (see [`Master::cast`]).
pub struct Ballot {
    state: Mutex<BallotState>,
}

/// An answer still to come, polled by the round's task.
type Pending = Pin<Box<dyn Future<Output = (bool, Result<bool, BackendError>)> + Send>>;

struct BallotState {
    tally: Tally,
    waker: Option<Waker>,
    pending: Vec<Pending>,
}

impl BallotState {
    fn count(&mut self, counts: bool, answer: Result<bool, BackendError>) {
        match (counts, answer) {
            (true, Ok(true)) => self.tally.yes += 1,
            (true, Ok(false)) => self.tally.no += 1,
            _ => self.tally.failed += 1,
        }
    }
}

impl std::fmt::Debug for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ballot")
            .field("tally", &self.tally())
            .finish_non_exhaustive()
    }
}

impl Ballot {
    /// A round among `n` masters.
    pub fn new(n: usize) -> Arc<Ballot> {
        Arc::new(Ballot {
            state: Mutex::new(BallotState {
                tally: Tally::new(n),
                waker: None,
                pending: Vec::new(),
            }),
        })
    }

    /// Counts one master's answer; `counts` false when that master may not vote (its answer
    /// counts as failed).
    pub fn record(&self, counts: bool, answer: Result<bool, BackendError>) {
        let waker = {
            let mut state = self.lock();
            state.count(counts, answer);
            if state.tally.is_decided() {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Adds an answer that the round's task polls until it comes.
    pub fn add(
        &self,
        counts: bool,
        answer: impl Future<Output = Result<bool, BackendError>> + Send + 'static,
    ) {
        let pending: Pending = Box::pin(async move { (counts, answer.await) });
        self.lock().pending.push(pending);
    }

    /// Resolves once the outcome is decided (see [`Tally::is_decided`]).
    pub async fn decided(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let mut i = 0;
            while i < state.pending.len() {
                if let Poll::Ready((counts, answer)) = state.pending[i].as_mut().poll(cx) {
                    drop(state.pending.swap_remove(i));
                    state.count(counts, answer);
                } else {
                    i += 1;
                }
            }
            if state.tally.is_decided() {
                return Poll::Ready(());
            }
            match &mut state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
    }

    /// The answers so far.
    pub fn tally(&self) -> Tally {
        self.lock().tally
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BallotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
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

    /// Sends `ask` and records the answer in `ballot` when it comes (or a failure, when none
    /// will), counted as a vote only if `counts`. The request is queued before this returns.
    /// The default hands the matching operation's future to the ballot.
    fn cast(&self, ask: Ask<'_>, ballot: &Arc<Ballot>, counts: bool) {
        match ask {
            Ask::Acquire { key, token, ttl_ms } => {
                ballot.add(counts, self.acquire(key, token, ttl_ms))
            }
            Ask::Release { key, token } => ballot.add(counts, self.release(key, token)),
            Ask::Extend { key, token, ttl_ms } => {
                ballot.add(counts, self.extend(key, token, ttl_ms))
            }
            Ask::AcquireFenced {
                key,
                fence_key,
                token,
                ttl_ms,
                fence,
            } => ballot.add(
                counts,
                self.acquire_fenced(key, fence_key, token, ttl_ms, fence),
            ),
        }
    }

    /// True while the master may have lost fence counters (it restarted) and no repair has
    /// copied them back yet: its fence reads must not count.
    fn fences_lost(&self) -> bool {
        false
    }

    /// Records that its fence counters were repaired.
    fn fences_repaired(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_ballot_is_decided_by_recorded_answers_alone() {
        let ballot = Ballot::new(3);
        let mut decided = Box::pin(ballot.decided());
        assert!((&mut decided).now_or_never().is_none());
        ballot.record(true, Ok(true));
        // A quarantined master's yes is no vote.
        ballot.record(false, Ok(true));
        assert!((&mut decided).now_or_never().is_none());
        ballot.record(true, Ok(true));
        assert!(decided.now_or_never().is_some());
        let tally = ballot.tally();
        assert_eq!((tally.yes, tally.no, tally.failed), (2, 0, 1));
    }

    #[test]
    fn a_ballot_polls_the_answers_added_to_it() {
        let ballot = Ballot::new(3);
        ballot.add(true, std::future::ready(Ok(false)));
        ballot.add(true, std::future::ready(Err(BackendError::Down)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        ballot.add(true, async { rx.await.unwrap_or(Err(BackendError::Down)) });
        let mut decided = Box::pin(ballot.decided());
        // One no and one failure leave a quorum of yes possible only with the third.
        assert!((&mut decided).now_or_never().is_none());
        tx.send(Ok(false)).unwrap();
        assert!(decided.now_or_never().is_some());
        let tally = ballot.tally();
        assert_eq!((tally.yes, tally.no, tally.failed), (0, 2, 1));
    }
}
