//! Counters shown by `INFO`, bumped where the events happen. Relaxed atomics: they are reports,
//! not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client connections accepted.
    pub connections_received: AtomicU64,
    /// Client connections open now.
    pub connected_clients: AtomicU64,
    /// Client connections refused (`max_clients`).
    pub rejected_connections: AtomicU64,
    /// Commands run, including failed ones.
    pub commands_processed: AtomicU64,
    /// Error replies sent.
    pub error_replies: AtomicU64,
    /// `LOCK`s granted by a quorum.
    pub locks_granted: AtomicU64,
    /// `LOCK`s refused because another holder has the key.
    pub locks_refused: AtomicU64,
    /// Operations that ended in `NOQUORUM`.
    pub noquorum: AtomicU64,
    /// `UNLOCK`s that released a lock.
    pub unlocks: AtomicU64,
    /// `EXTEND`s that extended a lock.
    pub extends: AtomicU64,
    /// Session locks held now, over all connections.
    pub session_locks: AtomicU64,
    /// Session locks whose extension missed a quorum.
    pub session_locks_lost: AtomicU64,
}

impl Stats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
