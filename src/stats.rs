//! The server's counters shown by `INFO` (connections, commands, error replies), bumped where
//! the events happen; the lock service counts its own (`locks::LockStats`). Relaxed atomics:
//! they are reports, not synchronisation. And [`LogLimit`], which keeps an event that a client
//! can repeat at will (a failed AUTH, an accept that fails) from flooding the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// `AUTH` and `HELLO ... AUTH` refused for a wrong user or password (Redis's
    /// `acl_access_denied_auth`).
    pub auth_failures: AtomicU64,
    /// Connections closed by `idle_timeout_ms` or `auth_timeout_ms`.
    pub timed_out_clients: AtomicU64,
    /// Bytes read from clients.
    pub net_input_bytes: AtomicU64,
    /// Bytes written to clients.
    pub net_output_bytes: AtomicU64,
    /// Logs failed AUTHs.
    pub auth_failure_log: LogLimit,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Logs failed accepts (out of file descriptors, mostly).
    pub accept_error_log: LogLimit,
    /// Logs failed TLS handshakes.
    pub tls_error_log: LogLimit,
}

impl Stats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How often a repeated event is logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets an event that can repeat without end be logged once per [`LOG_EVERY`], counting the
/// occurrences in between so the next line can say how many there were. Only rare events use
/// it (a mutex per call).
#[derive(Debug, Default)]
pub struct LogLimit(Mutex<LogState>);

#[derive(Debug, Default)]
struct LogState {
    last: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    /// An occurrence at `now`: `Some(n)` when it is to be logged, `n` being how many went
    /// unlogged since the last line; `None` when it is only counted.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match state.last {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                state.unlogged += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_event_is_logged_once_per_period_with_the_count_between() {
        let limit = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(limit.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.allow(t0 + LOG_EVERY), Some(1000));
        assert_eq!(limit.allow(t0 + LOG_EVERY), None);
    }
}
