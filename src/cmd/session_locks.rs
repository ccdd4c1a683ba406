//! Session locks (`LOCK key ttl SESSION`): the proxy keeps each alive, extending it every third
//! of its TTL, for as long as the client's connection stays open, and releases them all when the
//! connection ends for any reason. An extension that misses a quorum marks the lock lost; later
//! commands on the connection that name it get a `LOCKLOST` error instead of acting on a lock
//! the client no longer holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Shared;
use crate::stats::Stats;

/// One connection's session locks; clones share them.
#[derive(Debug, Clone)]
pub struct SessionLocks {
    held: Arc<Mutex<HashMap<Bytes, Held>>>,
    /// Cancelled when the connection's state goes away: every keeper stops.
    ended: CancellationToken,
}

#[derive(Debug)]
struct Held {
    token: Bytes,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Default for SessionLocks {
    fn default() -> Self {
        SessionLocks {
            held: Arc::default(),
            ended: CancellationToken::new(),
        }
    }
}

impl SessionLocks {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the granted lock `key`/`token` alive until released, lost, or the connection ends.
    pub fn keep(&self, shared: &Arc<Shared>, key: Bytes, token: Bytes, ttl_ms: u64) {
        let stop = self.ended.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        let previous = self.held().insert(
            key.clone(),
            Held {
                token: token.clone(),
                lost: lost.clone(),
                stop: stop.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        Stats::bump(&shared.stats.session_locks);
        let shared = shared.clone();
        let period = Duration::from_millis((ttl_ms / 3).max(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                match shared.redlock.extend(&key, &token, ttl_ms).await {
                    Ok(Some(_)) => {}
                    outcome => {
                        if !stop.is_cancelled() {
                            lost.store(true, Ordering::Release);
                            Stats::bump(&shared.stats.session_locks_lost);
                            warn!(
                                key = %String::from_utf8_lossy(&key),
                                "session lock lost: its extension did not reach a quorum ({outcome:?})"
                            );
                        }
                        break;
                    }
                }
            }
            shared
                .stats
                .session_locks
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// True when `key` is a session lock of this connection whose extension failed.
    pub fn is_lost(&self, key: &[u8]) -> bool {
        self.held()
            .get(key)
            .is_some_and(|h| h.lost.load(Ordering::Acquire))
    }

    /// Stops keeping `key` alive if it is held here with `token`; true when it was lost.
    pub fn forget(&self, key: &[u8], token: &[u8]) -> bool {
        let mut held = self.held();
        match held.get(key) {
            Some(h) if h.token == token => {
                let h = held.remove(key).expect("present");
                h.stop.cancel();
                h.lost.load(Ordering::Acquire)
            }
            _ => false,
        }
    }

    /// Stops every keeper without releasing: the locks then expire by their TTL.
    pub fn stop_keepers(&self) {
        self.ended.cancel();
    }

    /// Stops every keeper and releases every lock still held, on all masters.
    pub async fn release_all(&self, shared: &Shared) {
        let held: Vec<(Bytes, Held)> = self.held().drain().collect();
        self.ended.cancel();
        let releases = held
            .iter()
            .filter(|(_, h)| !h.lost.load(Ordering::Acquire))
            .map(|(key, h)| shared.redlock.unlock(key, &h.token));
        join_all(releases).await;
    }
}
