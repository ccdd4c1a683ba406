//! A master's run identity, its restart quarantine and its health: which run of the process
//! each new connection (and each health check) found, whether the master may vote — not while
//! quarantined, while a replica, or while it may evict keys — and whether its fence counters
//! may be lost.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::scripts::LINEAGE;
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

/// What one `INFO` says of a master, and what its lineage check answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Observed {
    /// `run_id`: changes with every start of the process.
    pub(super) run_id: String,
    /// `uptime_in_seconds` (whole seconds; see `observe_run` for why one is taken off).
    pub(super) uptime: Duration,
    /// `role:slave`.
    pub(super) replica: bool,
    /// `maxmemory_policy`, when `maxmemory` is set and the policy may evict.
    evicting: Option<String>,
    /// The [`LINEAGE`](super::scripts::LINEAGE) check's answer; `None` when it was not asked (a
    /// replica cannot record anything) or did not answer.
    pub(super) lineage: Option<Lineage>,
}

/// The lineage check's verdict on a master's data (see [`LINEAGE`](super::scripts::LINEAGE)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Written in its current run: it may vote.
    Current,
    /// Known new: marked now, it may vote.
    New,
    /// A quarantine recorded earlier on the master still runs.
    Recorded,
    /// Written in another run: a promoted replica, a restored snapshot.
    Foreign,
    /// Neither a marker nor a record: flushed, or never marked.
    Unmarked,
}

/// What the lineage check answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lineage {
    pub(super) verdict: Verdict,
    /// How long a quarantine still runs, by the master's clock.
    pub(super) left: Duration,
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
    /// The rule behind the latest quarantine, as `INFO masters` names it.
    reason: Option<&'static str>,
    /// This run may lack fence counters older than it: set with a quarantine or a new run,
    /// cleared by a repair.
    fences_lost: bool,
    /// What holds it out besides a quarantine.
    held_out: Option<HeldOut>,
    /// Its eviction policy was allowed, and the log said so.
    eviction_allowed_logged: bool,
    /// The last run the lineage check found or wrote a marker for: from then on a master
    /// without one lost its data (flushed, or restarted empty), whatever `fresh_at_start` says.
    marked_run: Option<String>,
    /// The run whose recorded quarantine this proxy already applied.
    recorded_run: Option<String>,
    /// A quarantine from the lineage check deleted the run marker: until the check finds or
    /// writes it again, every acquire on the master fails its marker check, so the master does
    /// not count as voting even once the quarantine's time is up.
    marker_pending: bool,
}

impl Inner {
    fn identity(&self) -> MutexGuard<'_, Identity> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current run's id, once connected.
    pub(super) fn run_id(&self) -> Option<String> {
        self.identity().run_id.clone()
    }

    /// How long a quarantine still runs; zero while one that ended waits for the lineage check
    /// to write the run marker again.
    pub(super) fn quarantine_left(&self) -> Option<Duration> {
        let id = self.identity();
        let left = id
            .quarantined_until?
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero());
        left.or(id.marker_pending.then_some(Duration::ZERO))
    }

    /// What holds it out besides a quarantine, as `INFO masters` names it.
    pub(super) fn held_out(&self) -> Option<&'static str> {
        self.identity().held_out.as_ref().map(HeldOut::state)
    }

    /// The rule that holds it out now (a quarantine's or another), as `INFO masters` names it.
    pub(super) fn reason(&self) -> Option<&'static str> {
        let id = self.identity();
        if let Some(held_out) = &id.held_out {
            return Some(held_out.state());
        }
        let running = id.marker_pending || id.quarantined_until.is_some_and(|u| Instant::now() < u);
        id.reason.filter(|_| running)
    }

    /// False while the master sits out a quarantine, or something else holds it out.
    pub(super) fn votes(&self) -> bool {
        if !self.quarantined.load(Ordering::Acquire) {
            return true;
        }
        let id = self.identity();
        let ended = id.held_out.is_none()
            && !id.marker_pending
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
        self.fence_repairs.fetch_add(1, Ordering::Relaxed);
    }

    /// The lineage check's `ARGV[3]` for `run`: `2` when the operator says no master loses a
    /// write, `1` when a master without marker or record is known new (the proxy started it,
    /// or the operator said the deployment is new) — only for the first run seen there, and
    /// only until a marker was seen — else `0`.
    pub(super) fn trust(&self, run: &str) -> &'static [u8] {
        let id = self.identity();
        if self.policy.persistent_masters {
            b"2"
        } else if self.policy.fresh_at_start
            && id.marked_run.is_none()
            && id.first_run.as_deref().is_none_or(|first| first == run)
        {
            b"1"
        } else {
            b"0"
        }
    }

    /// Records what a connection or a health check found: the run (see [`Self::observe_run`]),
    /// whether the master may vote as it is now, and its lineage. Returns when a quarantine it
    /// started ends.
    pub(super) fn observe(&self, seen: &Observed) -> Option<Instant> {
        let until = self.observe_run(&seen.run_id, seen.uptime, seen.lineage.is_some());
        self.observe_health(seen);
        let lineage = seen
            .lineage
            .and_then(|l| self.observe_lineage(&seen.run_id, l));
        lineage.or(until)
    }

    /// Quarantines a master whose data the lineage check did not find written in its current
    /// run: data from another run (a promoted replica, a restored snapshot) or no marker at all
    /// (a flush, or a master nobody marked) — whatever its uptime, for max-ttl from the moment
    /// recorded on the master, so every proxy holds it out until the same end.
    fn observe_lineage(&self, run: &str, lineage: Lineage) -> Option<Instant> {
        let mut id = self.identity();
        let why = match lineage.verdict {
            Verdict::Current | Verdict::New => {
                id.marked_run = Some(run.to_owned());
                id.marker_pending = false;
                // Any recorded quarantine of this run is over: a record seen later is news.
                id.recorded_run = None;
                return None;
            }
            Verdict::Recorded if id.recorded_run.as_deref() == Some(run) => return None,
            Verdict::Recorded => (
                "recorded",
                "a quarantine recorded on it by a proxy (its data came from another run, or \
                 was flushed) still runs",
            ),
            Verdict::Foreign => (
                "foreign-data",
                "its data was written in another run (a promoted replica or a restored snapshot)",
            ),
            Verdict::Unmarked if id.marked_run.as_deref() == Some(run) => (
                "flushed",
                "its run marker vanished (a flush, or a resync from another master)",
            ),
            Verdict::Unmarked if id.marked_run.is_some() => (
                "restarted",
                "a new run came up without the run marker (restarted empty)",
            ),
            Verdict::Unmarked => (
                "unmarked",
                "it has no run marker: it may be new, or flushed (start the proxy with \
                 --new-deployment if the masters are new)",
            ),
        };
        id.marked_run = Some(run.to_owned());
        id.recorded_run = Some(run.to_owned());
        id.marker_pending = true;
        self.quarantined.store(true, Ordering::Release);
        if lineage.left.is_zero() {
            return None;
        }
        self.quarantine(&mut id, lineage.left, why)
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

    /// Records the run a connection or health check found. Returns when quarantine ends, if
    /// this run must sit one out: it may lack locks that are still live elsewhere, and letting
    /// it vote could grant one twice. That is so of a master up for less than the longest TTL
    /// (it may have restarted empty), and of any run that replaced the one seen here before,
    /// whatever its uptime: a restart, or another server behind the same address (a replica
    /// promoted by a failover misses what its master took after the last write that reached
    /// it). A new run's fences may be lost. When its lineage was checked (`lineage_known`),
    /// that check decides the new run's quarantine, by the moment recorded on the master;
    /// without it, the quarantine runs max-ttl from now.
    pub(super) fn observe_run(
        &self,
        run_id: &str,
        uptime: Duration,
        lineage_known: bool,
    ) -> Option<Instant> {
        let mut id = self.identity();
        if id.first_run.is_none() {
            id.first_run = Some(run_id.to_owned());
        }
        let first_sight = id.run_id.as_deref() != Some(run_id);
        let replaced = first_sight && id.run_id.is_some();
        if replaced {
            warn!(
                master = %self.addr,
                run_id,
                "a new run at this address (run_id changed: a restart, or a failover to another server)"
            );
            id.fences_lost = true;
        }
        id.run_id = Some(run_id.to_owned());
        let vouched = self.policy.fresh_at_start && id.first_run.as_deref() == Some(run_id);
        let exempt = self.policy.persistent_masters || vouched;
        // Redis computes uptime from two whole-second clock readings, so it can read up to a
        // second more than the process has really run: count one second less.
        let uptime = uptime.saturating_sub(Duration::from_secs(1));
        // Decided once per run: later checks read a larger uptime and would only restate the
        // same end, rounded to Redis's whole seconds.
        let (left, why) = if replaced && !lineage_known {
            (
                self.policy.max_ttl,
                ("new-run", "it replaced the run seen at this address"),
            )
        } else {
            let young = self.policy.max_ttl.saturating_sub(uptime);
            (young, ("restarted", "up for less than max-ttl-ms"))
        };
        if exempt || !first_sight || left.is_zero() {
            return None;
        }
        self.quarantine(&mut id, left, why)
    }

    /// Holds the master out for `left` from now (unless a quarantine already lasts longer), and
    /// counts its fence counters as lost. `why` is the rule's short name for `INFO` and the
    /// words for the log. Returns when it ends.
    fn quarantine(
        &self,
        id: &mut Identity,
        left: Duration,
        (rule, why): (&'static str, &str),
    ) -> Option<Instant> {
        let until = Instant::now() + left;
        if id.quarantined_until.is_some_and(|u| u >= until) {
            return None;
        }
        id.quarantined_until = Some(until);
        id.reason = Some(rule);
        self.quarantined.store(true, Ordering::Release);
        id.fences_lost = true;
        warn!(
            master = %self.addr,
            rule,
            quarantine_ms = left.as_millis() as u64,
            "master quarantined: {why}; it may lack live locks, so it gets requests but no vote \
             until then"
        );
        Some(until)
    }
}

/// Logs the end of a quarantine when it comes (unless a later one replaced it), and has the
/// health check run at once.
pub(super) fn announce_release(master: &Arc<Inner>, until: Instant, shutdown: &CancellationToken) {
    let master = master.clone();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep_until(until.into()) => {
                if master.identity().quarantined_until == Some(until) {
                    // The lineage check writes the run marker again now, not a period later.
                    master.check_now.notify_one();
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
        lineage: None,
    })
}

/// The lineage check's answer; `None` when the reply is not one.
pub(super) fn parse_lineage(reply: &Frame) -> Option<Lineage> {
    let Frame::Array(parts) = reply else {
        return None;
    };
    let [Frame::BulkString(verdict), Frame::Integer(left)] = &parts[..] else {
        return None;
    };
    let verdict = match &verdict[..] {
        b"current" => Verdict::Current,
        b"new" => Verdict::New,
        b"recorded" => Verdict::Recorded,
        b"foreign" => Verdict::Foreign,
        b"unmarked" => Verdict::Unmarked,
        _ => return None,
    };
    let left = Duration::from_millis(u64::try_from(*left).unwrap_or(0));
    Some(Lineage { verdict, left })
}

/// The lineage check of `run` on `master`, as a command.
pub(super) fn lineage_command(master: &Inner, run: &str) -> Bytes {
    let mut ttl = itoa::Buffer::new();
    let ttl = ttl.format(master.policy.max_ttl.as_millis()).as_bytes();
    let names = &master.names;
    client::command(&[
        b"EVAL",
        LINEAGE.body.as_bytes(),
        b"2",
        &names.run_marker,
        &names.lineage,
        run.as_bytes(),
        ttl,
        master.trust(run),
    ])
}

/// How often a master that reads as a replica is dialled again.
const REPLICA_REDIAL: Duration = Duration::from_secs(5);

/// Checks the master every `period`, and at once when a vote found its run marker missing,
/// for what [`INFO`] tells (its run, role and eviction policy) and its lineage, so a restart
/// behind a live connection, a demotion, a `CONFIG SET` or a flush at run time is seen within a
/// period. It goes over the master's own connections: no connection of its own, and nothing to
/// check while none is up. A master that leaves a check unanswered for `deadline` has every
/// connection dropped and dialled again, which resolves its host name again: a failover that
/// moved the name to another server is followed even while the old one hangs; so is one that
/// left the old server running as a replica (dialled again every [`REPLICA_REDIAL`]).
pub(super) async fn check_health(
    master: RedisMaster,
    period: Duration,
    deadline: Duration,
    shutdown: CancellationToken,
) {
    let info = client::command(&INFO);
    let mut last_redial: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = master.0.check_now.notified() => {}
        }
        if master.0.conns_up.load(Ordering::Acquire) == 0 {
            continue;
        }
        let checked = tokio::time::timeout(deadline, async {
            let Ok(Frame::BulkString(text)) = master.send(0, info.clone()).await else {
                return None;
            };
            let mut seen = parse_info(&String::from_utf8_lossy(&text))?;
            if !seen.replica {
                let check = lineage_command(&master.0, &seen.run_id);
                seen.lineage = master
                    .send(0, check)
                    .await
                    .ok()
                    .as_ref()
                    .and_then(parse_lineage);
            }
            Some(seen)
        })
        .await;
        match checked {
            Ok(Some(seen)) => {
                if let Some(until) = master.0.observe(&seen) {
                    announce_release(&master.0, until, &shutdown);
                }
                // A host name that moved to the new primary while the old one lives on as a
                // replica is only followed by dialling again.
                if seen.replica && last_redial.is_none_or(|at| at.elapsed() >= REPLICA_REDIAL) {
                    last_redial = Some(Instant::now());
                    info!(
                        master = %master.0.addr,
                        "master is a replica: dialling it again, in case its name now points at \
                         the new primary"
                    );
                    master.0.redial.notify_waiters();
                }
            }
            Ok(None) => {}
            Err(_) => {
                warn!(
                    master = %master.0.addr,
                    deadline_ms = deadline.as_millis() as u64,
                    "master left a health check unanswered: dropping its connections and dialling \
                     it again"
                );
                master.0.redial.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Names;
    use crate::config::MasterAddr;

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
    fn the_lineage_checks_answer_is_parsed() {
        let reply = |verdict: &'static str, left| {
            Frame::Array(vec![
                Frame::BulkString(Bytes::from_static(verdict.as_bytes())),
                Frame::Integer(left),
            ])
        };
        let seen = parse_lineage(&reply("recorded", 1234)).unwrap();
        assert_eq!(seen.verdict, Verdict::Recorded);
        assert_eq!(seen.left, Duration::from_millis(1234));
        assert_eq!(parse_lineage(&reply("other", 0)), None);
        assert_eq!(parse_lineage(&Frame::Null), None);
    }

    #[test]
    fn replicas_and_evicting_masters_do_not_vote() {
        let policy = Quarantine {
            fresh_at_start: true,
            ..STRICT
        };
        let m = inner(policy);
        let mut seen = seen("a", Verdict::New);
        assert!(m.observe(&seen).is_none());
        assert!(m.votes());
        seen.evicting = Some("volatile-lru".into());
        m.observe(&seen);
        assert!(!m.votes() && m.held_out() == Some("evicting"));
        assert_eq!(m.reason(), Some("evicting"));
        seen.evicting = None;
        seen.replica = true;
        m.observe(&seen);
        assert!(!m.votes() && m.held_out() == Some("replica"));
        seen.replica = false;
        m.observe(&seen);
        assert!(m.votes() && m.held_out().is_none() && m.reason().is_none());
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
            prefix: Bytes::new(),
            sharded: false,
            release_channel: Bytes::new(),
            fence_pattern: Bytes::new(),
            fence_floor: Bytes::new(),
            run_marker: Bytes::new(),
            lineage: Bytes::new(),
        };
        Inner::new(
            MasterAddr::local(1),
            None,
            Box::new([]),
            policy,
            &names,
            CancellationToken::new(),
        )
    }

    const TTL: Duration = Duration::from_secs(60);

    /// What a master with run `run`, up an hour, says: a master, evicting nothing, whose
    /// lineage check gave `verdict` (with a whole max-ttl left when it starts a quarantine).
    fn seen(run: &str, verdict: Verdict) -> Observed {
        let left = match verdict {
            Verdict::Current | Verdict::New => Duration::ZERO,
            _ => TTL,
        };
        Observed {
            run_id: run.into(),
            uptime: Duration::from_secs(3_600),
            replica: false,
            evicting: None,
            lineage: Some(Lineage { verdict, left }),
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
        assert!(m.observe_run("a", Duration::from_secs(10), true).is_some());
        let left = m.quarantine_left().unwrap();
        // 60 s − 10 s of reported uptime, plus the second by which Redis's whole-second
        // uptime can overstate.
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(51),
            "{left:?}"
        );
        assert_eq!(m.reason(), Some("restarted"));
        // A second connection to the same run does not shorten it.
        assert!(m.observe_run("a", Duration::from_secs(11), true).is_none());
        assert!(m.quarantine_left().unwrap() > Duration::from_secs(50));
        // An old master votes at once.
        let m = inner(STRICT);
        assert!(m.observe_run("a", Duration::from_secs(61), true).is_none());
        assert!(m.quarantine_left().is_none());
    }

    #[test]
    fn a_new_run_whose_lineage_is_unknown_sits_out_a_whole_max_ttl() {
        let m = inner(STRICT);
        let hour = Duration::from_secs(3_600);
        assert!(m.observe_run("a", hour, false).is_none());
        assert!(m.votes() && !m.fences_lost());
        // Another server behind the same address (a promoted replica), up for an hour.
        assert!(m.observe_run("b", hour, false).is_some());
        let left = m.quarantine_left().unwrap();
        assert!(left > Duration::from_secs(59) && left <= TTL, "{left:?}");
        assert!(!m.votes() && m.fences_lost());
        assert_eq!(m.reason(), Some("new-run"));
        // Its later connections find the same run: the quarantine runs its course.
        assert!(m.observe_run("b", hour, false).is_none());
        assert!(m.quarantine_left().is_some());
    }

    #[test]
    fn a_new_run_whose_lineage_is_known_goes_by_the_recorded_end() {
        let m = inner(STRICT);
        assert!(m.observe(&seen("a", Verdict::Current)).is_none());
        // Another proxy recorded the new run's quarantine long enough ago that it is over: it
        // votes, and only its fences are in doubt.
        assert!(m.observe(&seen("b", Verdict::Current)).is_none());
        assert!(m.votes() && m.fences_lost());
        // Or it recorded one that still runs: held out until the end it recorded.
        let mut recorded = seen("c", Verdict::Recorded);
        recorded.lineage = Some(Lineage {
            verdict: Verdict::Recorded,
            left: Duration::from_secs(5),
        });
        assert!(m.observe(&recorded).is_some());
        let left = m.quarantine_left().unwrap();
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        assert_eq!(m.reason(), Some("recorded"));
        // Heard again, the same record is no news.
        assert!(m.observe(&recorded).is_none());
        // Once it is over and the marker is back, a new record of the same run (a flush another
        // proxy saw first) holds it out again.
        assert!(m.observe(&seen("c", Verdict::Current)).is_none());
        assert!(m.observe(&seen("c", Verdict::Recorded)).is_some());
        assert!(!m.votes());
    }

    #[test]
    fn flushed_foreign_and_unmarked_masters_sit_out_max_ttl() {
        let m = inner(STRICT);
        assert!(m.observe(&seen("a", Verdict::Current)).is_none() && m.votes());
        // Flushed: the marker vanished while watched.
        assert!(m.observe(&seen("a", Verdict::Unmarked)).is_some());
        assert!(!m.votes() && m.fences_lost());
        assert_eq!(m.reason(), Some("flushed"));
        // A new run without the marker restarted empty.
        let m = inner(STRICT);
        assert!(m.observe(&seen("a", Verdict::Current)).is_none());
        assert!(m.observe(&seen("b", Verdict::Unmarked)).is_some());
        assert_eq!(m.reason(), Some("restarted"));
        // Data from another run (a promoted replica's copy).
        let m = inner(STRICT);
        assert!(m.observe(&seen("a", Verdict::Foreign)).is_some());
        assert_eq!(m.reason(), Some("foreign-data"));
        // First contact with no marker at all: new or flushed, nobody can tell.
        let m = inner(STRICT);
        assert!(m.observe(&seen("a", Verdict::Unmarked)).is_some());
        assert_eq!(m.reason(), Some("unmarked"));
        assert!(!m.votes());
    }

    #[test]
    fn trust_in_unmarked_masters_is_explicit_and_ends_with_the_first_marker() {
        let m = inner(STRICT);
        assert_eq!(m.trust("a"), b"0");
        let persistent = inner(Quarantine {
            persistent_masters: true,
            ..STRICT
        });
        assert_eq!(persistent.trust("a"), b"2");
        let fresh = inner(Quarantine {
            fresh_at_start: true,
            ..STRICT
        });
        assert_eq!(fresh.trust("a"), b"1");
        fresh.observe(&seen("a", Verdict::New));
        // Marked once: a master without a marker now was flushed.
        assert_eq!(fresh.trust("a"), b"0");
        // And a later run is never vouched for.
        let fresh = inner(Quarantine {
            fresh_at_start: true,
            ..STRICT
        });
        fresh.observe_run("a", Duration::ZERO, false);
        assert_eq!(fresh.trust("b"), b"0");
    }

    #[test]
    fn exemptions_are_explicit() {
        let persistent = inner(Quarantine {
            persistent_masters: true,
            ..STRICT
        });
        assert!(persistent.observe_run("a", Duration::ZERO, false).is_none());
        assert!(persistent.observe_run("b", Duration::ZERO, false).is_none());
        // Known-empty masters are trusted for their first run only: a restart is quarantined.
        let fresh = inner(Quarantine {
            fresh_at_start: true,
            ..STRICT
        });
        assert!(fresh.observe_run("a", Duration::ZERO, true).is_none());
        assert!(
            fresh
                .observe_run("a", Duration::from_secs(1), true)
                .is_none()
        );
        assert!(fresh.observe_run("b", Duration::ZERO, true).is_some());
        assert!(fresh.quarantine_left().is_some());
    }
}
