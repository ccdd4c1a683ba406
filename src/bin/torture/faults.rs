//! The fault schedule. Runs on the main thread, which spawned every child process: on Linux a
//! child dies with the thread that spawned it, so restarts must not happen on a pool thread
//! that may exit.
//!
//! A fault fires every `interval` (randomised ±50%). Its kind is drawn from the enabled ones;
//! with more than one enabled, a quarter of faults bring a second kind along within 200 ms.
//! Follow-up actions (restart after a downtime, resume after a pause, a failover's second
//! promotion and its rejoins) are queued and run when due, so faults overlap freely.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rand::RngExt;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::clients::Shared;
use crate::clock::{now_us, secs};
use crate::cluster::{ClusterMember, Cut};
use crate::masters::Master;
use crate::procs::ProxyProc;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a master and start it again empty on the same port after a short downtime;
    /// half the time a second master follows within 60 ms.
    RestartEmpty,
    /// SIGSTOP a master for 100–2000 ms, then SIGCONT.
    Pause,
    /// SIGKILL a proxy mid-traffic and start it again on the same port.
    KillProxy,
    /// Move a master's address to its replica after cutting the replica off for a while: the
    /// promoted replica lacks the latest locks. Half the time two masters fail over together.
    Failover,
    /// With `--cluster-shards`: move 1–32 slots, with their keys, from one shard master of a
    /// member to another under traffic (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE).
    Reshard,
    /// With `--cluster-shards`: `CLUSTER FAILOVER` on a replica in sync of a member's shard.
    ClusterFailover,
    /// With `--cluster-shards`: cut a member's shard replica off (half the time on two
    /// members), SIGKILL its master when a lock granted since then is held (aimed like
    /// `failover`), `CLUSTER FAILOVER TAKEOVER` on the replica, and the killed node back empty
    /// after a short downtime, as a replica.
    KillShard,
    /// No faults (only meaningful alone).
    None,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::RestartEmpty => "restart-empty",
            FaultKind::Pause => "pause",
            FaultKind::KillProxy => "kill-proxy",
            FaultKind::Failover => "failover",
            FaultKind::Reshard => "reshard",
            FaultKind::ClusterFailover => "cluster-failover",
            FaultKind::KillShard => "kill-shard",
            FaultKind::None => "none",
        }
    }
}

/// How many of each were injected. Serialized as they appear in the summary's JSON line.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct FaultCounts {
    /// Masters killed and restarted empty.
    pub master_restarts: u64,
    /// Restart faults that took down two masters in quick succession.
    pub double_restarts: u64,
    pub pauses: u64,
    pub proxy_kills: u64,
    /// Masters whose address moved to a promoted, lagging replica.
    pub failovers: u64,
    /// Failover faults that moved two masters.
    pub double_failovers: u64,
    /// Faults that brought a second kind along.
    #[serde(rename = "compound_faults")]
    pub compound: u64,
    /// Restarts and rejoins that failed (the process stayed down until the next attempt), and
    /// failovers whose lag or promotion did not go through.
    pub restart_failures: u64,
    /// Reshards that moved their slots, and the slots' keys they migrated.
    pub reshards: u64,
    pub resharded_keys: u64,
    /// `CLUSTER FAILOVER`s that swapped a shard's roles.
    pub cluster_failovers: u64,
    /// Shard masters killed with their replica promoted.
    pub shard_kills: u64,
    /// Cluster faults that did not go through (see the log).
    pub cluster_fault_failures: u64,
}

/// One logged injection.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub at_us: u64,
    pub what: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterState {
    Up,
    Paused,
    Down,
    /// Its replica is cut off and frozen; it fails over soon.
    Lagging,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Inject(FaultKind),
    KillMaster {
        index: usize,
        downtime_ms: u64,
    },
    RestartMaster {
        index: usize,
        attempt: u32,
    },
    ResumeMaster(usize),
    RestartProxy {
        index: usize,
        attempt: u32,
    },
    /// The second master of a double failover.
    Promote(usize),
    /// A paused cluster node thaws.
    ResumeNode {
        member: usize,
        node: usize,
    },
    /// A killed shard master comes back empty (as its successor's replica).
    RejoinNode {
        member: usize,
        node: usize,
        attempt: u32,
    },
    /// The old primary comes back as the new one's replica.
    Rejoin {
        index: usize,
        attempt: u32,
    },
}

/// A kill-shard under way: shard replicas of one or two members cut off, the kill pending.
#[derive(Debug)]
struct ShardLag {
    /// (member, its cut shard).
    cuts: Vec<(usize, Cut)>,
    since: Instant,
    since_us: u64,
}

/// A failover under way: replicas cut off, promotion pending.
#[derive(Debug)]
struct Lag {
    /// The masters, promoted in this order.
    masters: Vec<usize>,
    /// When the replicas were cut off.
    since: Instant,
    since_us: u64,
}

const RESTART_ATTEMPTS: u32 = 5;

/// What to inject and when.
#[derive(Debug)]
pub struct Schedule {
    /// The kinds to draw from.
    pub kinds: Vec<FaultKind>,
    /// Mean time between faults.
    pub interval_ms: u64,
    /// Every draw of the schedule, seeded so a run can be repeated.
    pub rng: StdRng,
}

/// The injector and what it has done.
#[derive(Debug)]
pub struct Injector<'a> {
    masters: &'a mut [Master],
    /// With `--cluster-shards` the members are these instead of `masters`.
    clusters: &'a mut [ClusterMember],
    /// Per cluster member: Up, Paused (one node frozen) or Down (one node killed).
    cluster_state: Vec<MasterState>,
    proxies: &'a mut [ProxyProc],
    schedule: Schedule,
    shared: Arc<Shared>,
    state: Vec<MasterState>,
    pending: Vec<(Instant, Action)>,
    lag: Option<Lag>,
    shard_lag: Option<ShardLag>,
    pub counts: FaultCounts,
    pub events: Vec<FaultEvent>,
}

impl<'a> Injector<'a> {
    pub fn new(
        masters: &'a mut [Master],
        clusters: &'a mut [ClusterMember],
        proxies: &'a mut [ProxyProc],
        mut schedule: Schedule,
        shared: Arc<Shared>,
    ) -> Self {
        let state = vec![MasterState::Up; masters.len()];
        schedule.kinds.retain(|k| *k != FaultKind::None);
        let cluster_state = vec![MasterState::Up; clusters.len()];
        Injector {
            masters,
            clusters,
            cluster_state,
            proxies,
            schedule,
            shared,
            state,
            pending: Vec::new(),
            lag: None,
            shard_lag: None,
            counts: FaultCounts::default(),
            events: Vec::new(),
        }
    }

    /// Injects faults until the run's deadline or a stop, then undoes what is still pending
    /// (restarts the dead, resumes the paused). Each iteration sleeps at most 10 ms; the
    /// iteration count is capped as well.
    pub fn run(&mut self) {
        let max_wait = Duration::from_millis(self.shared.max_ttl_ms / 2);
        // A restart is aimed at a moment when some held lock still has this much promise left;
        // a failover at a moment when one granted since its replicas were cut off has.
        let aim_ms = self.shared.max_ttl_ms * 2 / 5;
        let mut next = Instant::now() + self.next_interval();
        let mut armed: Option<Instant> = None;
        let max_iterations = self.shared.deadline_us / 1_000 * 4 + 10_000;
        let mut iterations = 0;
        while !self.shared.should_stop() {
            iterations += 1;
            if iterations > max_iterations {
                self.log("fault loop hit its iteration cap: no more faults".into());
                break;
            }
            let now = Instant::now();
            self.run_due(now);
            if let Some(lag) = &self.shard_lag {
                let ready = self.shared.longest_promise_left_ms(lag.since_us) >= aim_ms;
                if ready || now.duration_since(lag.since) >= max_wait {
                    self.kill_shards();
                }
            }
            if let Some(lag) = &self.lag {
                let ready = self.shared.longest_promise_left_ms(lag.since_us) >= aim_ms;
                if ready || now.duration_since(lag.since) >= max_wait {
                    self.fail_over();
                }
            }
            if let Some(since) = armed {
                let ready = self.shared.longest_promise_left_ms(0) >= aim_ms;
                if ready || now.duration_since(since) >= max_wait {
                    armed = None;
                    self.inject(FaultKind::RestartEmpty);
                }
            } else if now >= next && !self.schedule.kinds.is_empty() {
                let n = self.schedule.kinds.len();
                let i = self.rng().random_range(0..n);
                let kind = self.schedule.kinds[i];
                if kind == FaultKind::RestartEmpty {
                    armed = Some(now);
                } else {
                    self.inject(kind);
                }
                if self.schedule.kinds.len() > 1 && self.rng().random_bool(0.25) {
                    let others: Vec<FaultKind> = self
                        .schedule
                        .kinds
                        .iter()
                        .copied()
                        .filter(|k| *k != kind)
                        .collect();
                    let second = others[self.rng().random_range(0..others.len())];
                    let delay = Duration::from_millis(self.rng().random_range(0..=200));
                    self.counts.compound += 1;
                    self.pending.push((now + delay, Action::Inject(second)));
                }
                next = now + self.next_interval();
            }
            // While a restart is armed `next` may be past: the 10 ms tick paces the loop then,
            // and also while a failover waits for its moment.
            let tick = now + Duration::from_millis(10);
            let wake = self
                .pending
                .iter()
                .map(|(t, _)| *t)
                .chain([if armed.is_some() { tick } else { next }, tick])
                .min()
                .unwrap_or(tick);
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        }
        self.settle();
    }

    fn rng(&mut self) -> &mut StdRng {
        &mut self.schedule.rng
    }

    fn next_interval(&mut self) -> Duration {
        let i = self.schedule.interval_ms;
        Duration::from_millis(self.rng().random_range(i / 2..=i + i / 2))
    }

    /// Runs every queued action that is due, earliest first.
    fn run_due(&mut self, now: Instant) {
        // Bounded: each pass removes one action; actions queue at most two follow-ups.
        for _ in 0..64 {
            let Some(i) = self
                .pending
                .iter()
                .enumerate()
                .filter(|(_, (t, _))| *t <= now)
                .min_by_key(|(_, (t, _))| *t)
                .map(|(i, _)| i)
            else {
                return;
            };
            let (_, action) = self.pending.swap_remove(i);
            self.act(action);
        }
    }

    /// After the run: restart what is down and resume what is paused, so the last unlocks go
    /// through and the processes end cleanly. No new faults.
    fn settle(&mut self) {
        for (m, cut) in self.shard_lag.take().map(|l| l.cuts).unwrap_or_default() {
            self.clusters[m].uncut(cut);
            self.cluster_state[m] = MasterState::Up;
            self.log(format!(
                "end of run: member {m}'s cut-off replica thawed, no kill"
            ));
        }
        for i in self.lag.take().map(|l| l.masters).unwrap_or_default() {
            self.call_off_failover(i);
        }
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|(t, _)| *t);
        for (_, action) in pending {
            match action {
                Action::RestartMaster { index, .. } => {
                    let outcome = self.masters[index]
                        .primary
                        .restart()
                        .map_err(|e| e.to_string());
                    self.state[index] = MasterState::Up;
                    self.log(format!("end of run: master {index} restarted: {outcome:?}"));
                }
                Action::ResumeMaster(i) => {
                    self.masters[i].primary.resume();
                    self.state[i] = MasterState::Up;
                    self.log(format!("end of run: master {i} resumed"));
                }
                Action::Promote(i) => self.call_off_failover(i),
                Action::Rejoin { index, .. } => {
                    let outcome = self.masters[index].rejoin();
                    self.log(format!(
                        "end of run: master {index}'s replica rejoined: {outcome:?}"
                    ));
                }
                Action::RestartProxy { index, .. } => {
                    let outcome = self.proxies[index].restart();
                    self.log(format!("end of run: proxy {index} restarted: {outcome:?}"));
                }
                Action::ResumeNode { member, node } => {
                    self.clusters[member].node(node).resume();
                    self.cluster_state[member] = MasterState::Up;
                }
                Action::RejoinNode { member, node, .. } => {
                    let outcome = self.clusters[member].rejoin(node);
                    self.cluster_state[member] = MasterState::Up;
                    self.log(format!(
                        "end of run: member {member}'s killed node back: {outcome:?}"
                    ));
                }
                Action::Inject(_) | Action::KillMaster { .. } => {}
            }
        }
    }

    /// A failover that will not come now: master `i`'s replica thaws and catches up instead.
    fn call_off_failover(&mut self, i: usize) {
        self.masters[i].unlag();
        self.state[i] = MasterState::Up;
        self.log(format!(
            "end of run: the replica of master {i} thawed, no failover"
        ));
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Inject(kind) => self.inject(kind),
            Action::KillMaster { index, downtime_ms } => {
                if matches!(self.state[index], MasterState::Up | MasterState::Paused) {
                    self.kill_master(index, downtime_ms, "second of a double restart");
                }
            }
            Action::RestartMaster { index, attempt } => match self.masters[index].primary.restart()
            {
                Ok(()) => {
                    self.state[index] = MasterState::Up;
                    self.log(format!("master {index} restarted empty"));
                }
                Err(e) => self.retry_later(
                    format!("master {index} restart failed: {e}"),
                    attempt,
                    Action::RestartMaster {
                        index,
                        attempt: attempt + 1,
                    },
                ),
            },
            Action::ResumeMaster(i) => {
                if self.state[i] == MasterState::Paused {
                    self.masters[i].primary.resume();
                    self.state[i] = MasterState::Up;
                    self.log(format!("master {i} resumed (SIGCONT)"));
                }
            }
            Action::RestartProxy { index, attempt } => match self.proxies[index].restart() {
                Ok(()) => self.log(format!("proxy {index} restarted")),
                Err(e) => self.retry_later(
                    format!("proxy {index} restart failed: {e}"),
                    attempt,
                    Action::RestartProxy {
                        index,
                        attempt: attempt + 1,
                    },
                ),
            },
            Action::Promote(i) => self.promote(i),
            Action::ResumeNode { member, node } => {
                let port = self.clusters[member].node(node).port();
                self.clusters[member].node(node).resume();
                self.cluster_state[member] = MasterState::Up;
                self.log(format!("member {member}'s node {port} resumed (SIGCONT)"));
            }
            Action::RejoinNode {
                member,
                node,
                attempt,
            } => match self.clusters[member].rejoin(node) {
                Ok(()) => {
                    self.cluster_state[member] = MasterState::Up;
                    let port = self.clusters[member].node(node).port();
                    self.log(format!(
                        "member {member}'s killed node {port} back, empty, with its cluster \
                         configuration"
                    ));
                }
                Err(e) => self.retry_later(
                    format!("member {member}'s killed node did not come back: {e}"),
                    attempt,
                    Action::RejoinNode {
                        member,
                        node,
                        attempt: attempt + 1,
                    },
                ),
            },
            Action::Rejoin { index, attempt } => match self.masters[index].rejoin() {
                Ok(()) => self.log(format!(
                    "master {index}'s old primary back, empty, as the new one's replica ({})",
                    self.masters[index].describe()
                )),
                Err(e) => self.retry_later(
                    format!("master {index}'s old primary did not rejoin: {e}"),
                    attempt,
                    Action::Rejoin {
                        index,
                        attempt: attempt + 1,
                    },
                ),
            },
        }
    }

    fn retry_later(&mut self, why: String, attempt: u32, again: Action) {
        self.counts.restart_failures += 1;
        self.log(why);
        if attempt + 1 < RESTART_ATTEMPTS {
            self.after(200, again);
        }
    }

    fn inject(&mut self, kind: FaultKind) {
        match kind {
            FaultKind::RestartEmpty => {
                let up = self.masters_in(&[MasterState::Up]);
                let Some(a) = self.pick(&up, "restart-empty skipped: no master up") else {
                    return;
                };
                let downtime = self.rng().random_range(20..=150);
                let left = self.shared.longest_promise_left_ms(0);
                // Two restarts inside one lock's life can hand its majority to someone else
                // when restarted masters vote at once.
                let others: Vec<usize> = self
                    .masters_in(&[MasterState::Up, MasterState::Paused])
                    .into_iter()
                    .filter(|&i| i != a)
                    .collect();
                let double = !others.is_empty() && self.rng().random_bool(0.5);
                let what = format!(
                    "restart-empty{} (longest lock promise left: {left} ms)",
                    if double { ", double" } else { "" }
                );
                self.kill_master(a, downtime, &what);
                if double {
                    let b = others[self.rng().random_range(0..others.len())];
                    let gap_ms = self.rng().random_range(0..=60);
                    let downtime_ms = self.rng().random_range(20..=150);
                    self.counts.double_restarts += 1;
                    self.after(
                        gap_ms,
                        Action::KillMaster {
                            index: b,
                            downtime_ms,
                        },
                    );
                }
            }
            FaultKind::Pause if !self.clusters.is_empty() => self.pause_node(),
            FaultKind::Pause => {
                let up = self.masters_in(&[MasterState::Up]);
                let Some(i) = self.pick(&up, "pause skipped: no master up") else {
                    return;
                };
                let ms = self.rng().random_range(100..=2_000);
                self.masters[i].primary.pause();
                self.state[i] = MasterState::Paused;
                self.counts.pauses += 1;
                self.after(ms, Action::ResumeMaster(i));
                self.log(format!(
                    "pause: master {i} (port {}) SIGSTOP for {ms} ms",
                    self.masters[i].primary.port()
                ));
            }
            FaultKind::KillProxy => {
                let up: Vec<usize> = (0..self.proxies.len())
                    .filter(|&i| self.proxies[i].is_up())
                    .collect();
                let Some(i) = self.pick(&up, "kill-proxy skipped: no proxy up") else {
                    return;
                };
                let ms = self.rng().random_range(50..=500);
                self.proxies[i].kill();
                self.counts.proxy_kills += 1;
                self.after(
                    ms,
                    Action::RestartProxy {
                        index: i,
                        attempt: 0,
                    },
                );
                self.log(format!(
                    "kill-proxy: proxy {i} ({}) SIGKILL, restart in {ms} ms",
                    self.proxies[i].addr()
                ));
            }
            FaultKind::Failover => self.cut_off_replicas(),
            FaultKind::Reshard | FaultKind::ClusterFailover | FaultKind::KillShard => {
                self.cluster_fault(kind)
            }
            FaultKind::None => {}
        }
    }

    /// A pause in cluster mode: one node (master or replica) of a member that is up, SIGSTOP
    /// for 100–2000 ms.
    fn pause_node(&mut self) {
        let up = self.members_up();
        let Some(m) = self.pick(&up, "pause skipped: no member up") else {
            return;
        };
        let nodes = self.clusters[m].len();
        let node = self.rng().random_range(0..nodes);
        let ms = self.rng().random_range(100..=2_000);
        self.clusters[m].node(node).pause();
        self.cluster_state[m] = MasterState::Paused;
        self.counts.pauses += 1;
        self.after(ms, Action::ResumeNode { member: m, node });
        let port = self.clusters[m].node(node).port();
        self.log(format!(
            "pause: member {m}'s node {port} SIGSTOP for {ms} ms"
        ));
    }

    /// A reshard or a `CLUSTER FAILOVER` on a member that is up (no node paused, down or cut
    /// off: its commands would time out), run to its end here; or the first half of a
    /// shard master's kill.
    fn cluster_fault(&mut self, kind: FaultKind) {
        let up = self.members_up();
        let skipped = format!("{} skipped: no member up", kind.name());
        let Some(m) = self.pick(&up, &skipped) else {
            return;
        };
        let started = Instant::now();
        let rng = &mut self.schedule.rng;
        let outcome = match kind {
            FaultKind::Reshard => self.clusters[m].reshard(rng).map(|(keys, what)| {
                self.counts.reshards += 1;
                self.counts.resharded_keys += keys;
                what
            }),
            FaultKind::ClusterFailover => self.clusters[m]
                .failover(rng)
                .inspect(|_| self.counts.cluster_failovers += 1),
            _ => {
                self.cut_shards(m);
                return;
            }
        };
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok(what) => self.log(format!("{}: member {m}: {what} ({ms} ms)", kind.name())),
            Err(e) => {
                self.counts.cluster_fault_failures += 1;
                self.log(format!(
                    "{} on member {m} failed after {ms} ms: {e}",
                    kind.name()
                ));
            }
        }
    }

    /// The first half of a kill-shard: a shard replica of member `m` (half the time of a
    /// second member too) cut off from its master. The kill follows once a lock granted since
    /// then is held with much of its promise left (see `run`): that lock is on the masters
    /// only. One member losing it leaves it on a majority; two can hand it to someone else.
    fn cut_shards(&mut self, m: usize) {
        if self.shard_lag.is_some() {
            self.log("kill-shard skipped: another one is under way".into());
            return;
        }
        let others: Vec<usize> = self.members_up().into_iter().filter(|&i| i != m).collect();
        let mut members = vec![m];
        if !others.is_empty() && self.rng().random_bool(0.5) {
            members.push(others[self.rng().random_range(0..others.len())]);
        }
        let mut cuts = Vec::new();
        for i in members {
            match self.clusters[i].cut(&mut self.schedule.rng) {
                Ok(cut) => {
                    self.cluster_state[i] = MasterState::Lagging;
                    let (master, replica) = (
                        self.clusters[i].node(cut.master).port(),
                        self.clusters[i].node(cut.replica).port(),
                    );
                    self.log(format!(
                        "kill-shard: member {i}'s replica {replica} frozen (SIGSTOP) and cut off \
                         from its master {master}"
                    ));
                    cuts.push((i, cut));
                }
                Err(e) => {
                    self.counts.cluster_fault_failures += 1;
                    self.log(format!("kill-shard on member {i}: no replica cut off: {e}"));
                }
            }
        }
        if !cuts.is_empty() {
            // Taken after the cuts: a lock granted from now on is surely not on the replicas.
            self.shard_lag = Some(ShardLag {
                cuts,
                since: Instant::now(),
                since_us: now_us(),
            });
        }
    }

    /// The second half: each cut shard's master killed and its replica promoted; the killed
    /// nodes come back after a short downtime.
    fn kill_shards(&mut self) {
        let Some(lag) = self.shard_lag.take() else {
            return;
        };
        let left = self.shared.longest_promise_left_ms(lag.since_us);
        let lag_ms = lag.since.elapsed().as_millis();
        for (m, cut) in lag.cuts {
            let outcome = self.clusters[m].take_over(cut);
            self.counts.shard_kills += 1;
            self.cluster_state[m] = MasterState::Down;
            let downtime_ms = self.rng().random_range(20..=150);
            self.after(
                downtime_ms,
                Action::RejoinNode {
                    member: m,
                    node: cut.master,
                    attempt: 0,
                },
            );
            match outcome {
                Ok(what) => self.log(format!(
                    "kill-shard: member {m}: {what} after {lag_ms} ms of lag (longest promise \
                     left of a lock granted meanwhile: {left} ms); back in {downtime_ms} ms"
                )),
                Err(e) => {
                    self.counts.cluster_fault_failures += 1;
                    self.log(format!("kill-shard: member {m}: the takeover failed: {e}"));
                }
            }
        }
    }

    fn members_up(&self) -> Vec<usize> {
        (0..self.clusters.len())
            .filter(|&i| self.cluster_state[i] == MasterState::Up)
            .collect()
    }

    /// The first half of a failover: one master's replica (half the time two masters')
    /// frozen and cut off from its primary, so it misses every write from now on. The
    /// promotion follows once a lock granted since then is held with much of its promise left
    /// (see `run`): that lock is on the primaries only.
    fn cut_off_replicas(&mut self) {
        if self.lag.is_some() {
            self.log("failover skipped: another one is under way".into());
            return;
        }
        let ready: Vec<usize> = self
            .masters_in(&[MasterState::Up])
            .into_iter()
            .filter(|&i| self.masters[i].replica_in_sync())
            .collect();
        let Some(a) = self.pick(
            &ready,
            "failover skipped: no master up with a replica in sync",
        ) else {
            return;
        };
        // One promoted replica lacking a lock leaves the lock on a majority of three masters;
        // two can hand that majority to someone else.
        let others: Vec<usize> = ready.into_iter().filter(|&i| i != a).collect();
        let mut masters = vec![a];
        if !others.is_empty() && self.rng().random_bool(0.5) {
            masters.push(others[self.rng().random_range(0..others.len())]);
            self.counts.double_failovers += 1;
        }
        for &i in &masters {
            if let Err(e) = self.masters[i].lag() {
                // The replica may have caught up: the failover still happens, with less lag.
                self.counts.restart_failures += 1;
                self.log(format!("failover: master {i}'s replica not cut off: {e}"));
            }
            self.state[i] = MasterState::Lagging;
        }
        self.log(format!(
            "failover{}: replica of master {} frozen (SIGSTOP) and cut off from its primary; \
             promoted when a lock granted from now on has {} ms of promise left, or within {} ms",
            if masters.len() > 1 { ", double" } else { "" },
            masters
                .iter()
                .map(|&i| format!("{i} ({})", self.masters[i].describe()))
                .collect::<Vec<_>>()
                .join(" and "),
            self.shared.max_ttl_ms * 2 / 5,
            self.shared.max_ttl_ms / 2
        ));
        // Taken after the cuts: a lock granted from now on is surely not on the replicas.
        self.lag = Some(Lag {
            masters,
            since: Instant::now(),
            since_us: now_us(),
        });
    }

    /// The second half: the first master fails over now, the second (if any) within 60 ms.
    fn fail_over(&mut self) {
        let Some(lag) = self.lag.take() else {
            return;
        };
        let left = self.shared.longest_promise_left_ms(lag.since_us);
        let lag_ms = lag.since.elapsed().as_millis();
        self.log(format!(
            "failover after {lag_ms} ms of lag (longest promise left of a lock granted \
             meanwhile: {left} ms)"
        ));
        let mut masters = lag.masters.into_iter();
        if let Some(first) = masters.next() {
            self.promote(first);
        }
        for i in masters {
            let gap_ms = self.rng().random_range(0..=60);
            self.after(gap_ms, Action::Promote(i));
        }
    }

    /// Moves master `i`'s address to its replica, and queues the old primary's return as a
    /// replica.
    fn promote(&mut self, i: usize) {
        let outcome = self.masters[i].promote();
        self.state[i] = MasterState::Up;
        self.counts.failovers += 1;
        let downtime_ms = self.rng().random_range(20..=150);
        self.after(
            downtime_ms,
            Action::Rejoin {
                index: i,
                attempt: 0,
            },
        );
        match outcome {
            Ok(()) => self.log(format!(
                "failover: master {i}'s primary SIGKILL, its replica promoted (REPLICAOF NO ONE) \
                 and the address moved to it ({}); old primary back in {downtime_ms} ms",
                self.masters[i].describe()
            )),
            Err(e) => {
                self.counts.restart_failures += 1;
                self.log(format!(
                    "failover: master {i}'s address moved ({}), but the promotion failed: {e}",
                    self.masters[i].describe()
                ));
            }
        }
    }

    fn kill_master(&mut self, i: usize, downtime_ms: u64, why: &str) {
        // A paused master may be killed too; its resume is then moot.
        self.pending.retain(|(_, a)| *a != Action::ResumeMaster(i));
        self.masters[i].primary.kill();
        self.state[i] = MasterState::Down;
        self.counts.master_restarts += 1;
        self.after(
            downtime_ms,
            Action::RestartMaster {
                index: i,
                attempt: 0,
            },
        );
        self.log(format!(
            "{why}: master {i} (port {}) SIGKILL, restart empty in {downtime_ms} ms",
            self.masters[i].primary.port()
        ));
    }

    /// A random one of `candidates`; with none, `skipped` is logged instead.
    fn pick(&mut self, candidates: &[usize], skipped: &str) -> Option<usize> {
        if candidates.is_empty() {
            self.log(skipped.to_owned());
            return None;
        }
        Some(candidates[self.rng().random_range(0..candidates.len())])
    }

    /// Queues `action` to run `ms` from now.
    fn after(&mut self, ms: u64, action: Action) {
        self.pending
            .push((Instant::now() + Duration::from_millis(ms), action));
    }

    fn masters_in(&self, states: &[MasterState]) -> Vec<usize> {
        (0..self.masters.len())
            .filter(|&i| states.contains(&self.state[i]))
            .collect()
    }

    fn log(&mut self, what: String) {
        let at_us = now_us();
        println!("[{}] fault {what}", secs(at_us));
        self.events.push(FaultEvent { at_us, what });
    }
}

/// The faults logged between `from_us` and `to_us`, one per line, for a violation's report.
pub fn events_between(events: &[FaultEvent], from_us: u64, to_us: u64) -> String {
    let mut out = String::new();
    for e in events
        .iter()
        .filter(|e| e.at_us >= from_us && e.at_us <= to_us)
    {
        let _ = writeln!(out, "      [{}] {}", secs(e.at_us), e.what);
    }
    out
}
