//! The server's counters shown by `INFO` (connections, commands, error replies), bumped where
//! the events happen; the lock service counts its own (`locks::LockStats`). Relaxed atomics:
//! they are reports, not synchronisation.

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
    /// Client connections closed for queueing more than `client_output_hard_bytes`.
    pub output_limit_closes: AtomicU64,
    /// Commands run, including failed ones.
    pub commands_processed: AtomicU64,
    /// Error replies sent.
    pub error_replies: AtomicU64,
    /// Error replies that were `NOQUORUM`.
    pub noquorum: AtomicU64,
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
