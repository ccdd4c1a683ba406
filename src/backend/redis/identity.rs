//! A master's run identity, its restart quarantine and its health: which run of the process
//! each new connection (and each health check) found, whether the master may vote — not while
//! quarantined, while a replica, or while it may evict keys — and whether its fence counters
//! may be lost.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Inner, RedisMaster};
use crate::protocol::client::{self, Frame};

/// What a connection's handshake and every health check ask a master: `INFO`'s default
/// sections, which include server, replication and memory. Naming the three would be shorter,
/// but Redis before 7.0 takes one section per call.
pub(super) const INFO: [&[u8]; 1] = [b"INFO"];

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
    /// The operator lets masters that may evict keys vote.
    pub allow_evicting: bool,
}

/// Why a master that answers may not vote, besides a quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HeldOut {
    /// `role:slave`: it holds what its own master sends it, and may be promoted without it.
    Replica,
    /// `maxmemory` with this policy, which may evict live lock keys.
    Evicting(String),
}

impl HeldOut {
    /// The state `INFO masters` shows.
    pub(super) fn state(&self) -> &'static str {
        match self {
            HeldOut::Replica => "replica",
            HeldOut::Evicting(_) => "evicting",
        }
    }
}

/// What one `INFO` says of a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observed {
    /// `run_id`: changes with every start of the process.
    pub(super) run_id: String,
    /// `uptime_in_seconds` (whole seconds; see `observe_run` for why one is taken off).
    pub(super) uptime: Duration,
    /// `role:slave`.
    replica: bool,
    /// `maxmemory_policy`, when `maxmemory` is set and the policy may evict.
    evicting: Option<String>,
    /// The run marker's value (`None`: absent).
    pub(super) marker: Option<String>,
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
    /// What holds it out besides a quarantine.
    held_out: Option<HeldOut>,
    /// Its eviction policy was allowed, and the log said so.
    eviction_allowed_logged: bool,
    /// The run marker is known to name the current run (read so, or written).
    marker_current: bool,
    /// A marker naming another run that already started a quarantine: seen again, it is the
    /// same news.
    stale_marker: Option<String>,
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

    /// What holds it out besides a quarantine, as `INFO masters` names it.
    pub(super) fn held_out(&self) -> Option<&'static str> {
        self.identity().held_out.as_ref().map(HeldOut::state)
    }

    /// False while the master sits out a quarantine, or something else holds it out.
    pub(super) fn votes(&self) -> bool {
        if !self.quarantined.load(Ordering::Acquire) {
            return true;
        }
        let id = self.identity();
        let ended = id.held_out.is_none()
            && id
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

    /// Records what a connection or a health check found: the run (see [`Self::observe_run`]),
    /// and whether the master may vote as it is now. Returns when a quarantine it started ends.
    pub(super) fn observe(&self, seen: &Observed) -> Option<Instant> {
        let until = self.observe_run(&seen.run_id, seen.uptime);
        self.observe_health(seen);
        self.observe_marker(seen.marker.as_deref()).or(until)
    }

    /// Quarantines a master whose run marker vanished while the proxy watched (a flush) or
    /// names another run (data written elsewhere: a promoted replica, a restored snapshot): its
    /// data may lack live locks, whatever its uptime. A master seen for the first time without
    /// a marker may be new or flushed; nothing here tells which, and it is not held out.
    fn observe_marker(&self, marker: Option<&str>) -> Option<Instant> {
        let mut id = self.identity();
        let run = id.run_id.clone()?;
        let why = match marker {
            Some(m) if m == run => {
                id.marker_current = true;
                return None;
            }
            Some(other) if id.stale_marker.as_deref() == Some(other) => return None,
            Some(other) => {
                id.stale_marker = Some(other.to_owned());
                "its data was written in another run (a promoted replica or a restored snapshot)"
            }
            None if id.marker_current => "its data was flushed (the run marker vanished)",
            None => return None,
        };
        id.marker_current = false;
        if self.policy.persistent_masters {
            return None;
        }
        self.quarantine(&mut id, self.policy.max_ttl, why)
    }

    /// The run the marker should name, when it must be written: the master votes (a quarantine
    /// it sits out ends first, so every proxy that meets the old marker meanwhile holds the
    /// master out too) and its marker does not name its run yet.
    pub(super) fn marker_to_write(&self) -> Option<String> {
        let id = self.identity();
        let voting = id.held_out.is_none()
            && id
                .quarantined_until
                .is_none_or(|until| Instant::now() >= until);
        (voting && !id.marker_current).then(|| id.run_id.clone())?
    }

    /// The marker now names `run`.
    pub(super) fn marker_written(&self, run: &str) {
        let mut id = self.identity();
        if id.run_id.as_deref() == Some(run) {
            id.marker_current = true;
            id.stale_marker = None;
        }
    }

    /// Holds a replica out, and a master that may evict keys unless the operator allows it.
    fn observe_health(&self, seen: &Observed) {
        let mut id = self.identity();
        let held_out = match &seen.evicting {
            _ if seen.replica => Some(HeldOut::Replica),
            Some(policy) if !self.policy.allow_evicting => Some(HeldOut::Evicting(policy.clone())),
            Some(policy) => {
                if !id.eviction_allowed_logged {
                    id.eviction_allowed_logged = true;
                    warn!(
                        master = %self.addr,
                        policy = %policy,
                        "master may evict lock keys (maxmemory is set and the policy evicts); it \
                         votes because allow_evicting_masters is set: an evicted key can be \
                         granted twice"
                    );
                }
                None
            }
            None => None,
        };
        if id.held_out == held_out {
            return;
        }
        match &held_out {
            Some(HeldOut::Replica) => warn!(
                master = %self.addr,
                "master is a replica (role:slave): it gets requests but no vote until it is a \
                 master again"
            ),
            Some(HeldOut::Evicting(policy)) => warn!(
                master = %self.addr,
                policy = %policy,
                "master may evict lock keys (maxmemory is set and the policy evicts): it gets \
                 requests but no vote until maxmemory is 0 or maxmemory-policy is noeviction \
                 (or allow_evicting_masters is set)"
            ),
            None => info!(master = %self.addr, "master votes again: a master that evicts nothing"),
        }
        if held_out.is_some() {
            self.quarantined.store(true, Ordering::Release);
        }
        id.held_out = held_out;
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
        let left = left.filter(|_| !exempt)?;
        let why = if replaced {
            "it replaced the run seen at this address"
        } else {
            "up for less than max-ttl-ms"
        };
        self.quarantine(&mut id, left, why)
    }

    /// Holds the master out for `left` from now (unless a quarantine already lasts longer), and
    /// counts its fence counters as lost. Returns when it ends.
    fn quarantine(&self, id: &mut Identity, left: Duration, why: &str) -> Option<Instant> {
        let until = Instant::now() + left;
        if id.quarantined_until.is_some_and(|u| u >= until) {
            return None;
        }
        id.quarantined_until = Some(until);
        self.quarantined.store(true, Ordering::Release);
        id.fences_lost = true;
        warn!(
            master = %self.addr,
            quarantine_ms = left.as_millis() as u64,
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

/// What [`INFO`]'s text says; `None` without a run id or uptime. A field left out (a server
/// that hides a section) holds nothing out.
pub(super) fn parse_info(info: &str) -> Option<Observed> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let run_id = field("run_id")?.to_owned();
    let uptime = Duration::from_secs(field("uptime_in_seconds")?.parse().ok()?);
    let maxmemory: u64 = field("maxmemory").and_then(|m| m.parse().ok()).unwrap_or(0);
    let evicting = field("maxmemory_policy")
        .filter(|policy| maxmemory > 0 && *policy != "noeviction")
        .map(str::to_owned);
    Some(Observed {
        run_id,
        uptime,
        replica: field("role") == Some("slave"),
        evicting,
        marker: None,
    })
}

/// The run marker's value from a `GET` reply; `None` when the reply is not one.
pub(super) fn parse_marker(reply: Frame) -> Option<Option<String>> {
    match reply {
        Frame::BulkString(v) => Some(Some(String::from_utf8_lossy(&v).into_owned())),
        Frame::Null => Some(None),
        _ => None,
    }
}

/// Checks the master every `period` for what [`INFO`] tells (its run, role and eviction
/// policy) and for its run marker, so a restart behind a live connection, a demotion, a
/// `CONFIG SET` or a flush at run time is seen within a period; and writes the marker once the
/// master votes. It goes over the master's own connections: no connection of its own, and
/// nothing to check while none is up.
pub(super) async fn check_health(
    master: RedisMaster,
    period: Duration,
    shutdown: CancellationToken,
) {
    let marker = master.0.names.run_marker.clone();
    let info = client::command(&INFO);
    let get = client::command(&[b"GET", &marker]);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if master.0.conns_up.load(Ordering::Acquire) == 0 {
            continue;
        }
        let (info, get) = (master.send(0, info.clone()), master.send(0, get.clone()));
        let replies = tokio::time::timeout(period, async { (info.await, get.await) }).await;
        if let Ok((Ok(Frame::BulkString(text)), Ok(reply))) = replies
            && let Some(mut seen) = parse_info(&String::from_utf8_lossy(&text))
            && let Some(value) = parse_marker(reply)
        {
            seen.marker = value;
            if let Some(until) = master.0.observe(&seen) {
                announce_release(&master.0, until, &shutdown);
            }
        }
        if let Some(run) = master.0.marker_to_write() {
            let set = master.send(0, client::command(&[b"SET", &marker, run.as_bytes()]));
            if let Ok(Ok(_)) = tokio::time::timeout(period, set).await {
                master.0.marker_written(&run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Names;
    use crate::config::MasterAddr;
    use bytes::Bytes;

    #[test]
    fn what_info_says_is_parsed() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\nuptime_in_seconds:42\r\n\
                    # Replication\r\nrole:master\r\n# Memory\r\nmaxmemory:0\r\n\
                    maxmemory_policy:allkeys-lru\r\n";
        let seen = parse_info(info).unwrap();
        assert_eq!(
            (seen.run_id.as_str(), seen.uptime),
            ("abc123", Duration::from_secs(42))
        );
        // A policy without maxmemory evicts nothing.
        assert!(!seen.replica && seen.evicting.is_none());
        let evicting = info.replace("maxmemory:0", "maxmemory:1048576");
        let seen = parse_info(&evicting).unwrap();
        assert_eq!(seen.evicting.as_deref(), Some("allkeys-lru"));
        let safe = evicting.replace("allkeys-lru", "noeviction");
        assert!(parse_info(&safe).unwrap().evicting.is_none());
        let replica = info.replace("role:master", "role:slave");
        assert!(parse_info(&replica).unwrap().replica);
        assert_eq!(parse_info("run_id:x\r\n"), None);
    }

    #[test]
    fn replicas_and_evicting_masters_do_not_vote() {
        let policy = Quarantine {
            fresh_at_start: true,
            ..STRICT
        };
        let m = inner(policy);
        let mut seen = seen("a");
        assert!(m.observe(&seen).is_none());
        assert!(m.votes());
        seen.evicting = Some("volatile-lru".into());
        m.observe(&seen);
        assert!(!m.votes() && m.held_out() == Some("evicting"));
        seen.evicting = None;
        seen.replica = true;
        m.observe(&seen);
        assert!(!m.votes() && m.held_out() == Some("replica"));
        seen.replica = false;
        m.observe(&seen);
        assert!(m.votes() && m.held_out().is_none());
        // The operator's switch lets an evicting master vote.
        let allowed = inner(Quarantine {
            allow_evicting: true,
            ..policy
        });
        seen.evicting = Some("allkeys-lru".into());
        allowed.observe(&seen);
        assert!(allowed.votes());
    }

    fn inner(policy: Quarantine) -> Inner {
        let names = Names {
            release_channel: Bytes::new(),
            fence_pattern: Bytes::new(),
            fence_floor: Bytes::new(),
            run_marker: Bytes::new(),
        };
        Inner::new(MasterAddr::local(1), Box::new([]), policy, &names)
    }

    const TTL: Duration = Duration::from_secs(60);

    /// What a master with run `run` says: a master, evicting nothing, without a marker.
    fn seen(run: &str) -> Observed {
        Observed {
            run_id: run.into(),
            uptime: Duration::ZERO,
            replica: false,
            evicting: None,
            marker: None,
        }
    }

    /// Quarantine on, no exemption.
    const STRICT: Quarantine = Quarantine {
        max_ttl: TTL,
        persistent_masters: false,
        fresh_at_start: false,
        allow_evicting: false,
    };

    #[test]
    fn young_masters_sit_out_until_max_ttl() {
        let m = inner(STRICT);
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
        let m = inner(STRICT);
        assert!(m.observe_run("a", Duration::from_secs(61)).is_none());
        assert!(m.quarantine_left().is_none());
    }

    #[test]
    fn a_new_run_sits_out_a_whole_max_ttl_whatever_its_uptime() {
        let m = inner(STRICT);
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
    fn a_vanished_or_foreign_run_marker_starts_a_quarantine_once() {
        let m = inner(Quarantine {
            fresh_at_start: true,
            ..STRICT
        });
        let mut seen = seen("a");
        // First contact without a marker: nothing known; it votes, and the marker is due.
        assert!(m.observe(&seen).is_none());
        assert_eq!(m.marker_to_write().as_deref(), Some("a"));
        m.marker_written("a");
        assert_eq!(m.marker_to_write(), None);
        seen.marker = Some("a".into());
        assert!(m.observe(&seen).is_none() && m.votes());
        // Flushed: the marker vanished while watched.
        seen.marker = None;
        assert!(m.observe(&seen).is_some());
        assert!(!m.votes() && m.fences_lost());
        // Not rewritten while the quarantine lasts, and seen again it is no new quarantine.
        assert_eq!(m.marker_to_write(), None);
        assert!(m.observe(&seen).is_none());
        // A marker naming another run (a promoted replica's copy) quarantines a fresh master.
        let fresh = inner(Quarantine {
            fresh_at_start: true,
            ..STRICT
        });
        seen.marker = Some("old".into());
        assert!(fresh.observe(&seen).is_some());
        assert!(fresh.observe(&seen).is_none());
        assert!(!fresh.votes());
    }

    #[test]
    fn exemptions_are_explicit() {
        let persistent = inner(Quarantine {
            persistent_masters: true,
            ..STRICT
        });
        assert!(persistent.observe_run("a", Duration::ZERO).is_none());
        assert!(persistent.observe_run("b", Duration::ZERO).is_none());
        // Known-empty masters are trusted for their first run only: a restart is quarantined.
        let fresh = inner(Quarantine {
            fresh_at_start: true,
            ..STRICT
        });
        assert!(fresh.observe_run("a", Duration::ZERO).is_none());
        assert!(fresh.observe_run("a", Duration::from_secs(1)).is_none());
        assert!(fresh.observe_run("b", Duration::ZERO).is_some());
        assert!(fresh.quarantine_left().is_some());
        assert!(fresh.quarantine_left().is_some());
    }
}
