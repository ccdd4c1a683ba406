//! A master's run identity and its restart quarantine: which run of the process each new
//! connection found, whether the master may vote, and whether its fence counters may be lost.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Inner;

/// When a master may vote after (re)connecting.
#[derive(Debug, Clone, Copy)]
pub struct Quarantine {
    /// The longest lock a client can hold: a master up for less may have lost live locks.
    pub max_ttl: Duration,
    /// The operator asserts every write is fsynced: a restart loses nothing, never quarantine.
    pub persistent_masters: bool,
    /// The masters are known empty when the proxy starts (it started them): the first run
    /// seen of each needs no quarantine.
    pub fresh_at_start: bool,
}

/// What the proxy knows of a master's current run.
#[derive(Debug, Default)]
pub(super) struct Identity {
    /// `run_id` from `INFO server`; changes when the process restarts.
    run_id: Option<String>,
    /// The first run seen, which `fresh_at_start` vouches for.
    first_run: Option<String>,
    /// The master does not vote before this instant.
    quarantined_until: Option<Instant>,
    /// This run may lack fence counters older than it: set with a quarantine, cleared by a
    /// repair.
    fences_lost: bool,
}

impl Inner {
    fn identity(&self) -> MutexGuard<'_, Identity> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current run's id, once connected.
    pub(super) fn run_id(&self) -> Option<String> {
        self.identity().run_id.clone()
    }

    pub(super) fn quarantine_left(&self) -> Option<Duration> {
        let until = self.identity().quarantined_until?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// False while the master sits out a quarantine.
    pub(super) fn votes(&self) -> bool {
        if !self.quarantined.load(Ordering::Acquire) {
            return true;
        }
        let id = self.identity();
        let ended = id
            .quarantined_until
            .is_none_or(|until| Instant::now() >= until);
        if ended {
            self.quarantined.store(false, Ordering::Release);
        }
        ended
    }

    /// True while this run may lack fence counters older than it.
    pub(super) fn fences_lost(&self) -> bool {
        self.identity().fences_lost
    }

    /// Its fence counters were repaired.
    pub(super) fn fences_repaired(&self) {
        self.identity().fences_lost = false;
    }

    /// Records the run a new connection found. Returns when quarantine ends, if this run must
    /// sit one out: it may lack locks that are still live elsewhere, and letting it vote could
    /// grant one twice. That is so of a master up for less than the longest TTL (it may have
    /// restarted empty), and of any run that replaced the one seen here before, whatever its
    /// uptime: a restart, or another server behind the same address (a replica promoted by a
    /// failover misses what its master took after the last write that reached it).
    pub(super) fn observe_run(&self, run_id: &str, uptime: Duration) -> Option<Instant> {
        let mut id = self.identity();
        if id.first_run.is_none() {
            id.first_run = Some(run_id.to_owned());
        }
        let replaced = id.run_id.as_deref().is_some_and(|seen| seen != run_id);
        if replaced {
            warn!(
                master = %self.addr,
                run_id,
                "a new run at this address (run_id changed: a restart, or a failover to another server)"
            );
        }
        id.run_id = Some(run_id.to_owned());
        let vouched = self.policy.fresh_at_start && id.first_run.as_deref() == Some(run_id);
        let exempt = self.policy.persistent_masters || vouched;
        // Redis computes uptime from two whole-second clock readings, so it can read up to a
        // second more than the process has really run: count one second less.
        let uptime = uptime.saturating_sub(Duration::from_secs(1));
        let left = if replaced {
            Some(self.policy.max_ttl).filter(|d| !d.is_zero())
        } else {
            self.policy
                .max_ttl
                .checked_sub(uptime)
                .filter(|d| !d.is_zero())
        };
        let until = Instant::now() + left.filter(|_| !exempt)?;
        if id.quarantined_until.is_some_and(|u| u >= until) {
            return None;
        }
        id.quarantined_until = Some(until);
        self.quarantined.store(true, Ordering::Release);
        id.fences_lost = true;
        let why = if replaced {
            "it replaced the run seen at this address"
        } else {
            "up for less than max-ttl-ms"
        };
        warn!(
            master = %self.addr,
            uptime_s = uptime.as_secs(),
            quarantine_ms = (until - Instant::now()).as_millis() as u64,
            "master quarantined: {why}, it may have lost live locks; it gets requests but no \
             vote until then"
        );
        Some(until)
    }
}

/// Logs the end of a quarantine when it comes (unless a later one replaced it).
pub(super) fn announce_release(master: &Arc<Inner>, until: Instant, shutdown: &CancellationToken) {
    let master = master.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep_until(until.into()) => {
                if master.identity().quarantined_until == Some(until) {
                    info!(master = %master.addr, "master left quarantine: it votes again");
                }
            }
        }
    });
}

/// `run_id` and `uptime_in_seconds` from `INFO server` text (whole seconds; see
/// `observe_run` for why one is taken off).
pub(super) fn parse_run(info: &str) -> Option<(String, Duration)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let run_id = field("run_id")?.to_owned();
    let uptime = field("uptime_in_seconds")?.parse().ok()?;
    Some((run_id, Duration::from_secs(uptime)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Names;
    use crate::config::MasterAddr;
    use bytes::Bytes;

    #[test]
    fn run_identity_parses_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\nuptime_in_seconds:42\r\n";
        assert_eq!(
            parse_run(info),
            Some(("abc123".to_owned(), Duration::from_secs(42)))
        );
        assert_eq!(parse_run("run_id:x\r\n"), None);
    }

    fn inner(policy: Quarantine) -> Inner {
        let names = Names {
            release_channel: Bytes::new(),
            fence_pattern: Bytes::new(),
            fence_floor: Bytes::new(),
        };
        Inner::new(MasterAddr::local(1), Box::new([]), policy, &names)
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn young_masters_sit_out_until_max_ttl() {
        let m = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: false,
        });
        assert!(m.observe_run("a", Duration::from_secs(10)).is_some());
        let left = m.quarantine_left().unwrap();
        // 60 s − 10 s of reported uptime, plus the second by which Redis's whole-second
        // uptime can overstate.
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(51),
            "{left:?}"
        );
        // A second connection to the same run does not shorten it.
        assert!(m.observe_run("a", Duration::from_secs(11)).is_none());
        assert!(m.quarantine_left().unwrap() > Duration::from_secs(50));
        // An old master votes at once.
        let m = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: false,
        });
        assert!(m.observe_run("a", Duration::from_secs(61)).is_none());
        assert!(m.quarantine_left().is_none());
    }

    #[test]
    fn a_new_run_sits_out_a_whole_max_ttl_whatever_its_uptime() {
        let m = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: false,
        });
        assert!(m.observe_run("a", Duration::from_secs(3_600)).is_none());
        assert!(m.votes() && !m.fences_lost());
        // Another server behind the same address (a promoted replica), up for an hour.
        assert!(m.observe_run("b", Duration::from_secs(3_600)).is_some());
        let left = m.quarantine_left().unwrap();
        assert!(left > Duration::from_secs(59) && left <= TTL, "{left:?}");
        assert!(!m.votes() && m.fences_lost());
        // Its later connections find the same run: the quarantine runs its course.
        assert!(m.observe_run("b", Duration::from_secs(3_601)).is_none());
        assert!(m.quarantine_left().is_some());
    }

    #[test]
    fn exemptions_are_explicit() {
        let persistent = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: true,
            fresh_at_start: false,
        });
        assert!(persistent.observe_run("a", Duration::ZERO).is_none());
        assert!(persistent.observe_run("b", Duration::ZERO).is_none());
        // Known-empty masters are trusted for their first run only: a restart is quarantined.
        let fresh = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: true,
        });
        assert!(fresh.observe_run("a", Duration::ZERO).is_none());
        assert!(fresh.observe_run("a", Duration::from_secs(1)).is_none());
        assert!(fresh.observe_run("b", Duration::ZERO).is_some());
        assert!(fresh.quarantine_left().is_some());
        assert!(fresh.quarantine_left().is_some());
    }
}
