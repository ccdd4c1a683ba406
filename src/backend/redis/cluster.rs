//! A Redlock member that is a whole Redis Cluster: a router over one [`RedisMaster`] per
//! master node. A lock's vote from the member is the answer of the node that owns the slot of
//! the lock's hash tag (every name of one lock shares it: see `locks::keys`).
//!
//! - The slot map comes from `CLUSTER SLOTS`, asked of a known node (or a seed) at start, every
//!   [`REFRESH`], and at once when a node answers `MOVED`.
//! - Every [`Master`] operation goes through one path ([`ClusterMember::route`]): sent to the
//!   slot's node when called; on `MOVED` the map is refreshed and the request sent again where
//!   it says; on `ASK` it goes once behind an `ASKING` to the node named; after
//!   [`MAX_REDIRECTS`] the member's answer counts as not given.
//! - Each node keeps its own run marker, quarantine record, fence floor and release channel
//!   (`Names::on_node`) under a hash tag whose slot the node owns, picked from the map (the
//!   tag of the node's highest slot, so every proxy picks the same one). Node and marker are
//!   one: a node whose tag's slot moved away is dialled again with a new tag, and a node new
//!   to the map (a promoted replica) is a new [`RedisMaster`] — either way with no run seen
//!   before, so the lineage rules decide whether it votes (a marker of another run: a promoted
//!   replica, quarantined; no marker: quarantined unless known new).
//! - An answer counts only while the node that gave it votes (quarantine, replica, eviction):
//!   the member votes per key.
//!
//! See `docs/scaling.md` for why this keeps one grant per lock through resharding and failover.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::link::{dial, round_trip};
use super::{BackendTls, Inner, Quarantine, RedisMaster};
use crate::backend::{
    BackendError, FencePage, HeldAs, KeyState, Master, MasterStatus, Names, Take,
};
use crate::config::{BackendConfig, MasterAddr};
use crate::protocol::client::{self, Frame};

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;
/// How often the slot map is asked for when no `MOVED` asked sooner.
const REFRESH: Duration = Duration::from_secs(1);
/// Redirects one request may follow before the member's answer counts as not given.
const MAX_REDIRECTS: usize = 3;
/// No node owns the slot.
const NOBODY: u16 = u16::MAX;

/// CRC16 (XMODEM) of `data`, as Redis Cluster hashes keys.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: of its hash tag, the bytes between the first `{` and the next `}`, when
/// there are any; else of the whole key.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let len = key[open + 1..].iter().position(|&b| b == b'}')?;
        (len > 0).then(|| &key[open + 1..open + 1 + len])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS as u16
}

/// A hash tag for each slot: the smallest decimal number that hashes to it.
static TAGS: std::sync::LazyLock<Vec<u32>> = std::sync::LazyLock::new(|| {
    let mut tags = vec![u32::MAX; SLOTS];
    let mut left = SLOTS;
    let mut num = itoa::Buffer::new();
    // Bounded: every slot is reached well before a million (about 170,000 in fact).
    for n in 0..10_000_000u32 {
        let s = usize::from(slot(num.format(n).as_bytes()));
        if tags[s] == u32::MAX {
            tags[s] = n;
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    tags
});

/// A hash tag whose slot is `slot`.
fn tag_for(slot: u16) -> String {
    TAGS[usize::from(slot)].to_string()
}

/// One master node in the map.
#[derive(Debug)]
struct Node {
    /// `host:port` as the cluster names it.
    at: String,
    master: RedisMaster,
    /// The slot of the node's own names' hash tag.
    tag_slot: u16,
    /// The slot ranges it owns, first to last.
    ranges: Vec<(u16, u16)>,
}

impl Node {
    fn slots(&self) -> usize {
        self.ranges
            .iter()
            .map(|(a, b)| usize::from(b - a) + 1)
            .sum()
    }
}

/// Which node owns each slot.
#[derive(Debug)]
struct SlotMap {
    owner: Vec<u16>,
    nodes: Vec<Node>,
    /// Counts the maps installed: a fence scan started on one map must end on it.
    generation: u64,
}

impl SlotMap {
    fn empty() -> SlotMap {
        SlotMap {
            owner: vec![NOBODY; SLOTS],
            nodes: Vec::new(),
            generation: 0,
        }
    }

    fn node(&self, slot: u16) -> Option<&Node> {
        self.nodes.get(usize::from(self.owner[usize::from(slot)]))
    }

    fn by_addr(&self, at: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.at == at)
    }

    /// Slots a node owns.
    fn covered(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NOBODY).count()
    }
}

/// A node's state in `INFO`: its address, its slot ranges, its health.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// `host:port`.
    pub at: String,
    /// Slot ranges it owns, as `a-b` joined by spaces.
    pub slots: String,
    /// How many slots that is.
    pub slot_count: usize,
    /// Its health, as for a single master.
    pub status: MasterStatus,
}

/// A Redis Cluster member; clones share the nodes.
#[derive(Debug, Clone)]
pub struct ClusterMember(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    addr: MasterAddr,
    tls: Option<BackendTls>,
    cfg: BackendConfig,
    policy: Quarantine,
    names: Names,
    released: mpsc::UnboundedSender<Bytes>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    map: RwLock<Arc<SlotMap>>,
    /// The generation of the map installed last; a request that met `MOVED` waits for it to
    /// move on.
    installed: watch::Sender<u64>,
    /// Asks the refresh task for a new map now.
    refresh_now: tokio::sync::Notify,
    redirects: AtomicU64,
}

/// What a routed answer needs of the node that gave it to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: a write that is not a vote (a waiting marker, a fence raise).
    Nothing,
    /// The node votes (a ballot's answer, an inspect).
    Vote,
    /// The node votes and its fence counters are not in doubt (a fence read).
    Fences,
}

/// A redirect in a node's error reply.
enum Redirect {
    Moved(String),
    Ask(String),
}

fn redirect(e: &BackendError) -> Option<Redirect> {
    let BackendError::Reply(text) = e else {
        return None;
    };
    let mut words = text.split(' ');
    let (kind, _slot, at) = (words.next()?, words.next()?, words.next()?);
    match kind {
        "MOVED" => Some(Redirect::Moved(at.to_owned())),
        "ASK" => Some(Redirect::Ask(at.to_owned())),
        _ => None,
    }
}

/// Copies each named slice into owned bytes and routes `$call` by `$key`'s slot: the request
/// goes out now, and again on a redirect.
macro_rules! routed {
    ($self:ident, $need:expr, $key:expr, [$($arg:ident),*], $m:ident => $call:expr) => {{
        let slot = slot($key);
        $(let $arg = Bytes::copy_from_slice($arg);)*
        $self.route(slot, $need, move |$m: &RedisMaster| $call)
    }};
}

impl ClusterMember {
    /// Starts asking `addr`'s seeds for the slot map and connecting to the master nodes, on
    /// `tracker`, until `shutdown`. Until a map is known every operation fails at once (no vote).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        addr: MasterAddr,
        tls: Option<BackendTls>,
        cfg: &BackendConfig,
        policy: Quarantine,
        names: &Names,
        released: mpsc::UnboundedSender<Bytes>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> ClusterMember {
        let member = ClusterMember(Arc::new(Shared {
            addr,
            tls,
            cfg: cfg.clone(),
            policy,
            names: names.clone(),
            released,
            shutdown,
            tracker: tracker.clone(),
            map: RwLock::new(Arc::new(SlotMap::empty())),
            installed: watch::Sender::new(0),
            refresh_now: tokio::sync::Notify::new(),
            redirects: AtomicU64::new(0),
        }));
        tracker.spawn(member.clone().keep_map());
        member
    }

    fn map(&self) -> Arc<SlotMap> {
        self.0.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks for the slot map until shutdown: every [`REFRESH`], and at once when asked.
    async fn keep_map(self) {
        let shutdown = self.0.shutdown.clone();
        loop {
            self.refresh().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
                _ = self.0.refresh_now.notified() => {}
            }
        }
        for node in &self.map().nodes {
            node.master.stop();
        }
    }

    /// One refresh: the slot map from the first node that answers: the known ones over their
    /// own connections (no new one each time), else the seeds, each dialled for the purpose.
    /// Installed if it differs from the one in use.
    async fn refresh(&self) {
        let old = self.map();
        let timeout = Duration::from_millis(self.0.cfg.connect_timeout_ms);
        let ask = client::command(&[b"CLUSTER", b"SLOTS"]);
        for n in &old.nodes {
            let reply = tokio::time::timeout(timeout, n.master.send(0, ask.clone())).await;
            let host = n.at.rsplit_once(':').map_or("", |(h, _)| h);
            if let Some(ranges) = reply
                .ok()
                .and_then(Result::ok)
                .and_then(|r| parse_slots(&r, host))
            {
                self.install(&old, ranges);
                return;
            }
        }
        for addr in self.0.addr.seeds() {
            match tokio::time::timeout(timeout, ask_slots(&addr, self.0.tls.as_ref())).await {
                Ok(Ok(ranges)) => {
                    self.install(&old, ranges);
                    return;
                }
                Ok(Err(e)) => warn!(node = %addr, "cannot read the slot map: {e}"),
                Err(_) => warn!(node = %addr, "cannot read the slot map: timed out"),
            }
        }
    }

    /// Installs the map `ranges` describe, unless it is `old`'s. A node keeps its connections
    /// while it is a master and its tag's slot is still its own; every other node of the new
    /// map is started afresh, and the nodes left out are stopped.
    fn install(&self, old: &SlotMap, ranges: Vec<(u16, u16, String)>) {
        let mut owner = vec![NOBODY; SLOTS];
        let mut at: Vec<String> = Vec::new();
        let mut node_ranges: Vec<Vec<(u16, u16)>> = Vec::new();
        for (first, last, node) in ranges {
            let i = match at.iter().position(|a| *a == node) {
                Some(i) => i,
                None => {
                    at.push(node);
                    node_ranges.push(Vec::new());
                    at.len() - 1
                }
            };
            node_ranges[i].push((first, last));
            for s in first..=last.min(SLOTS as u16 - 1) {
                owner[usize::from(s)] = i as u16;
            }
        }
        let unchanged = old.generation > 0
            && old.owner == owner
            && old.nodes.len() == at.len()
            && old.nodes.iter().zip(&at).all(|(n, a)| n.at == *a);
        if unchanged {
            return;
        }
        let mut nodes = Vec::with_capacity(at.len());
        for (i, (node_at, mut mine)) in at.into_iter().zip(node_ranges).enumerate() {
            mine.sort_unstable();
            let kept = old
                .by_addr(&node_at)
                .filter(|n| owner[usize::from(n.tag_slot)] == i as u16);
            let node = match kept {
                Some(n) => Node {
                    at: node_at,
                    master: n.master.clone(),
                    tag_slot: n.tag_slot,
                    ranges: mine,
                },
                None => {
                    // The node's highest slot: every proxy reading the same map picks it.
                    let tag_slot = mine.last().map_or(0, |r| r.1);
                    let master = self.start_node(&node_at, tag_slot, old.generation == 0);
                    Node {
                        at: node_at,
                        master,
                        tag_slot,
                        ranges: mine,
                    }
                }
            };
            nodes.push(node);
        }
        for gone in &old.nodes {
            let kept = nodes
                .iter()
                .any(|n| n.at == gone.at && n.tag_slot == gone.tag_slot);
            if !kept {
                gone.master.stop();
            }
        }
        let map = SlotMap {
            owner,
            nodes,
            generation: old.generation + 1,
        };
        info!(
            cluster = %self.0.addr,
            nodes = map.nodes.len(),
            slots_covered = map.covered(),
            "cluster slot map installed"
        );
        let generation = map.generation;
        *self.0.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        self.0.installed.send_replace(generation);
    }

    /// Connects to the master node at `at` with its own names under the tag of `tag_slot`. Only
    /// nodes of the first map may be vouched for as new (`fresh_at_start`): a node that shows up
    /// later is a promoted replica or a node re-marked, and the lineage rules judge it strictly.
    fn start_node(&self, at: &str, tag_slot: u16, first_map: bool) -> RedisMaster {
        let (host, port) = at.rsplit_once(':').unwrap_or((at, "0"));
        let addr = self.0.addr.node(host, port.parse().unwrap_or(0));
        let tls = match (&self.0.tls, addr.tls) {
            (Some(tls), true) => tls.for_master(&addr).ok(),
            _ => None,
        };
        let policy = Quarantine {
            fresh_at_start: self.0.policy.fresh_at_start && first_map,
            ..self.0.policy
        };
        let names = self.0.names.on_node(tag_for(tag_slot).as_bytes());
        RedisMaster::start(
            addr,
            tls,
            &self.0.cfg,
            policy,
            &names,
            self.0.released.clone(),
            self.0.shutdown.clone(),
            &self.0.tracker,
        )
    }

    /// Sends `op` to the node owning `slot` now, and follows up to [`MAX_REDIRECTS`] redirects:
    /// `MOVED` waits for a new map and sends again by it, `ASK` sends once behind an `ASKING`
    /// to the node named. The answer counts when the node that gave it meets `need`.
    fn route<T, F, Fut>(
        &self,
        slot: u16,
        need: Need,
        op: F,
    ) -> impl Future<Output = Result<T, BackendError>> + Send + use<T, F, Fut>
    where
        T: Send + 'static,
        F: Fn(&RedisMaster) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let map = self.map();
        let first = map.node(slot).map(|n| (n.master.clone(), op(&n.master)));
        let this = self.clone();
        async move {
            let (mut node, mut answer) = match first {
                Some((node, pending)) => (node, pending.await),
                None => {
                    this.0.refresh_now.notify_one();
                    return Err(BackendError::Down);
                }
            };
            for _ in 0..MAX_REDIRECTS {
                let Some(to) = answer.as_ref().err().and_then(redirect) else {
                    break;
                };
                this.0.redirects.fetch_add(1, Ordering::Relaxed);
                let next = match to {
                    Redirect::Moved(at) => this.moved(slot, &at).await,
                    Redirect::Ask(at) => this.map().by_addr(&at).map(|n| n.master.asking()),
                };
                let Some(next) = next else {
                    this.0.refresh_now.notify_one();
                    return Err(BackendError::Down);
                };
                answer = op(&next).await;
                node = next;
            }
            let value = answer?;
            let counts = match need {
                Need::Nothing => true,
                Need::Vote => node.votes(),
                Need::Fences => node.votes() && !node.fences_lost(),
            };
            if counts {
                Ok(value)
            } else {
                Err(BackendError::Reply(
                    "the node that owns the key does not vote (quarantined or held out)".into(),
                ))
            }
        }
    }

    /// After `MOVED` to `at`: the slot's node once the map in use names `at` for it, waiting
    /// (up to the connect timeout) for a newer map if it does not yet.
    async fn moved(&self, slot: u16, at: &str) -> Option<RedisMaster> {
        let mut installed = self.0.installed.subscribe();
        let timeout = Duration::from_millis(self.0.cfg.connect_timeout_ms);
        let wait = async {
            // Bounded by the timeout around it; each turn waits for another map.
            loop {
                let map = self.map();
                if let Some(node) = map.node(slot).filter(|n| n.at == at) {
                    return Some(node.master.clone());
                }
                self.0.refresh_now.notify_one();
                installed.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Its health as one master's: up while every slot has a node that is up; voting while
    /// every node votes. The counts add up its nodes'.
    pub fn status(&self) -> MasterStatus {
        let map = self.map();
        let nodes: Vec<MasterStatus> = map.nodes.iter().map(|n| n.master.status()).collect();
        let sum = |f: fn(&MasterStatus) -> u64| nodes.iter().map(f).sum::<u64>();
        let covered = map.covered() == SLOTS;
        let held = nodes.iter().find(|s| s.up && !s.votes());
        MasterStatus {
            addr: self.0.addr.to_string(),
            up: covered && nodes.iter().all(|s| s.up),
            conns_up: nodes.iter().map(|s| s.conns_up).sum(),
            conns: nodes.iter().map(|s| s.conns).sum(),
            pending: nodes.iter().map(|s| s.pending).sum(),
            requests: sum(|s| s.requests),
            failures: sum(|s| s.failures),
            reconnects: sum(|s| s.reconnects),
            changed_at: nodes.iter().map(|s| s.changed_at).max().unwrap_or(0),
            run_id: None,
            quarantine_left_ms: nodes.iter().filter_map(|s| s.quarantine_left_ms).max(),
            held_out: held.and_then(|s| s.held_out),
            reason: held.and_then(|s| s.reason),
            last_error: if covered {
                nodes.iter().find_map(|s| s.last_error.clone())
            } else {
                Some(format!("{} of {SLOTS} slots covered", map.covered()))
            },
        }
    }

    /// Each master node with its slots and health, for `INFO`.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.map()
            .nodes
            .iter()
            .map(|n| NodeStatus {
                at: n.at.clone(),
                slots: n
                    .ranges
                    .iter()
                    .map(|(a, b)| format!("{a}-{b}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                slot_count: n.slots(),
                status: n.master.status(),
            })
            .collect()
    }

    /// Slots some node owns.
    pub fn slots_covered(&self) -> usize {
        self.map().covered()
    }

    /// Redirects (`MOVED`, `ASK`) followed since start.
    pub fn redirects(&self) -> u64 {
        self.0.redirects.load(Ordering::Relaxed)
    }

    /// Fence repairs completed on its nodes.
    pub fn fence_repairs(&self) -> u64 {
        self.map()
            .nodes
            .iter()
            .map(|n| n.master.fence_repairs())
            .sum()
    }

    /// The node of `n`-th place in `map`, for a fence scan's cursor `"<generation>:<n>:<node
    /// cursor>"`; the map and cursor must agree on the generation.
    fn scan_cursor(map: &SlotMap, cursor: &[u8]) -> Result<(usize, Bytes), BackendError> {
        if cursor.is_empty() {
            return Ok((0, Bytes::new()));
        }
        let text = std::str::from_utf8(cursor).map_err(|_| stale())?;
        let mut parts = text.splitn(3, ':');
        let (generation, n, rest) = (parts.next(), parts.next(), parts.next());
        let generation: u64 = generation.and_then(|g| g.parse().ok()).ok_or_else(stale)?;
        let n: usize = n.and_then(|n| n.parse().ok()).ok_or_else(stale)?;
        if generation != map.generation {
            return Err(stale());
        }
        Ok((n, Bytes::copy_from_slice(rest.unwrap_or("").as_bytes())))
    }
}

/// `CLUSTER SLOTS` of the node at `addr` (over TLS with `tls` for a `rediss+cluster://` one):
/// each range's first and last slot and its master's `host:port`.
async fn ask_slots(
    addr: &MasterAddr,
    tls: Option<&BackendTls>,
) -> Result<Vec<(u16, u16, String)>, String> {
    let tls = match (tls, addr.tls) {
        (Some(tls), true) => Some(tls.for_master(addr).map_err(|e| e.to_string())?),
        _ => None,
    };
    let probe = Inner::new(
        addr.clone(),
        tls,
        Box::new([]),
        Quarantine {
            max_ttl: Duration::ZERO,
            persistent_masters: false,
            fresh_at_start: false,
            allow_evicting: false,
        },
        &Names::default(),
        CancellationToken::new(),
    );
    let mut stream = dial(&probe).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let reply = round_trip(&mut stream, &mut buf, &[b"CLUSTER", b"SLOTS"])
        .await
        .map_err(|e| e.to_string())?;
    parse_slots(&reply, &addr.host).ok_or_else(|| format!("unexpected reply {reply:?}"))
}

/// What `--check-config` shows of a cluster member: its master nodes and the slots each owns
/// as the first seed that answers tells, and how many of the 16384 slots are covered; or why
/// no seed answered.
pub async fn describe(addr: &MasterAddr, tls: Option<&BackendTls>, timeout: Duration) -> String {
    let mut why = String::new();
    for seed in addr.seeds() {
        let ranges = match tokio::time::timeout(timeout, ask_slots(&seed, tls)).await {
            Ok(Ok(ranges)) => ranges,
            Ok(Err(e)) => {
                why = format!("{seed}: {e}");
                continue;
            }
            Err(_) => {
                why = format!("{seed}: timed out");
                continue;
            }
        };
        let mut nodes: Vec<(String, Vec<String>, usize)> = Vec::new();
        for (first, last, at) in ranges {
            let i = match nodes.iter().position(|n| n.0 == at) {
                Some(i) => i,
                None => {
                    nodes.push((at, Vec::new(), 0));
                    nodes.len() - 1
                }
            };
            nodes[i].1.push(format!("{first}-{last}"));
            nodes[i].2 += usize::from(last.saturating_sub(first)) + 1;
        }
        let covered: usize = nodes.iter().map(|n| n.2).sum();
        let mut out = String::new();
        for (at, ranges, count) in &nodes {
            out.push_str(&format!(
                "#   node {at}: {count} slots ({})\n",
                ranges.join(" ")
            ));
        }
        out.push_str(&format!("#   {covered} of {SLOTS} slots covered\n"));
        return out;
    }
    format!("#   no seed answered CLUSTER SLOTS ({why})\n")
}

/// Done when every node's part is, and there are parts; `Down` when there are none (no map
/// yet) or some of the work had no node (`complete` false).
async fn every_node(
    parts: Vec<impl Future<Output = Result<(), BackendError>>>,
    complete: bool,
) -> Result<(), BackendError> {
    if parts.is_empty() || !complete {
        return Err(BackendError::Down);
    }
    futures_util::future::try_join_all(parts).await?;
    Ok(())
}

/// A fence scan met a new slot map half way: it must start over, or it could miss counters.
fn stale() -> BackendError {
    BackendError::Unexpected("the slot map changed during a fence scan".into())
}

/// `CLUSTER SLOTS`: each range's first and last slot and its master's `host:port` (`host`, the
/// node asked, where the reply leaves the address empty).
fn parse_slots(reply: &Frame, host: &str) -> Option<Vec<(u16, u16, String)>> {
    let Frame::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|range| {
            let Frame::Array(parts) = range else {
                return None;
            };
            let [
                Frame::Integer(first),
                Frame::Integer(last),
                Frame::Array(master),
                ..,
            ] = &parts[..]
            else {
                return None;
            };
            let [Frame::BulkString(ip), Frame::Integer(port), ..] = &master[..] else {
                return None;
            };
            let ip = match std::str::from_utf8(ip).ok()? {
                "" | "?" => host,
                ip => ip,
            };
            let at = if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            };
            Some((u16::try_from(*first).ok()?, u16::try_from(*last).ok()?, at))
        })
        .collect()
}

impl Master for ClusterMember {
    /// Each key's node decides (see [`ClusterMember::route`]): the member itself always may.
    fn votes(&self) -> bool {
        true
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, token], m => m.acquire(&key, &token, ttl_ms))
    }

    fn release(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, marker, token], m => m.release(&key, &marker, &token))
    }

    fn mark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        waiter: &[u8],
        ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        routed!(self, Need::Nothing, key, [key, marker, waiter],
            m => m.mark_waiting(&key, &marker, &waiter, ms))
    }

    fn unmark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        waiter: &[u8],
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        routed!(self, Need::Nothing, key, [key, marker, waiter],
            m => m.unmark_waiting(&key, &marker, &waiter))
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, token], m => m.extend(&key, &token, ttl_ms))
    }

    fn swap(
        &self,
        key: &[u8],
        token: &[u8],
        new_token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, token, new_token],
            m => m.swap(&key, &token, &new_token, ttl_ms))
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key], m => m.inspect(&key))
    }

    fn held_as(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<HeldAs>, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key], m => m.held_as(&key))
    }

    /// A semaphore's slots carry its key's hash tag, so one node holds them all.
    fn acquire_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        base: &[u8],
        ttl_ms: u64,
        offset: u32,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        let slots = slots.to_vec();
        routed!(self, Need::Vote, key, [key, base],
            m => m.acquire_permit(&key, &slots, &base, ttl_ms, offset))
    }

    fn release_permit(
        &self,
        key: &[u8],
        marker: &[u8],
        slots: &[Bytes],
        base: &[u8],
        keep: Option<u32>,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let slots = slots.to_vec();
        routed!(self, Need::Vote, key, [key, marker, base],
            m => m.release_permit(&key, &marker, &slots, &base, keep))
    }

    fn extend_permit(
        &self,
        key: &[u8],
        slot: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, slot, token],
            m => m.extend_permit(&key, &slot, &token, ttl_ms))
    }

    fn extend_named_permit(
        &self,
        key: &[u8],
        slots: &[Bytes],
        names: &[Bytes],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Option<u32>, BackendError>> + Send + use<> {
        let (slots, names) = (slots.to_vec(), names.to_vec());
        routed!(self, Need::Vote, key, [key],
            m => m.extend_named_permit(&key, &slots, &names, ttl_ms))
    }

    fn acquire_shared(
        &self,
        key: &[u8],
        writers: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<Take, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, writers, token],
            m => m.acquire_shared(&key, &writers, &token, ttl_ms))
    }

    fn release_shared(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, marker, token],
            m => m.release_shared(&key, &marker, &token))
    }

    fn extend_shared(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, token], m => m.extend_shared(&key, &token, ttl_ms))
    }

    fn token_pttl(
        &self,
        key: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<Option<u64>, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, token], m => m.token_pttl(&key, &token))
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        routed!(self, Need::Fences, fence_key, [fence_key], m => m.read_fence(&fence_key))
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        routed!(self, Need::Vote, key, [key, fence_key, token],
            m => m.acquire_fenced(&key, &fence_key, &token, ttl_ms, fence))
    }

    /// Each counter goes to the node of its slot, and the floor to every node.
    fn raise_fences(
        &self,
        counters: &[(Bytes, u64)],
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let map = self.map();
        let mut parts: Vec<Vec<(Bytes, u64)>> = vec![Vec::new(); map.nodes.len()];
        let mut unowned = false;
        for (key, fence) in counters {
            match parts.get_mut(usize::from(map.owner[usize::from(slot(key))])) {
                Some(part) => part.push((key.clone(), *fence)),
                None => unowned = true,
            }
        }
        let raises: Vec<_> = map
            .nodes
            .iter()
            .zip(&parts)
            .map(|(n, part)| n.master.raise_fences(part, floor))
            .collect();
        every_node(raises, !unowned)
    }

    /// Node by node, each node's pages in turn; the cursor names the map it started on.
    fn fence_page(
        &self,
        cursor: &[u8],
    ) -> impl Future<Output = Result<FencePage, BackendError>> + Send + use<> {
        let map = self.map();
        let start = Self::scan_cursor(&map, cursor);
        async move {
            let (n, node_cursor) = start?;
            let node = map.nodes.get(n).ok_or(BackendError::Down)?;
            let mut page = node.master.fence_page(&node_cursor).await?;
            let generation = map.generation;
            page.next = match page.next.take() {
                Some(next) => {
                    let place = format!("{generation}:{n}:");
                    Some(Bytes::from([place.as_bytes(), &next[..]].concat()))
                }
                None if n + 1 < map.nodes.len() => {
                    Some(Bytes::from(format!("{generation}:{}:", n + 1)))
                }
                None => None,
            };
            Ok(page)
        }
    }

    /// Nothing to do: a cluster member's counters never expire. An expiry is safe only at or
    /// under the floor of the node that holds the counter, and a reshard can move the counter
    /// to a node whose floor is lower (`docs/scaling.md`).
    fn sweep_fences(
        &self,
        _cursor: &[u8],
        _expire_ms: u64,
    ) -> impl Future<Output = Result<Option<Bytes>, BackendError>> + Send + use<> {
        std::future::ready(Ok(None))
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let map = self.map();
        let raises: Vec<_> = map
            .nodes
            .iter()
            .map(|n| n.master.raise_fence_floor(floor))
            .collect();
        every_node(raises, true)
    }

    /// While any node may have lost counters.
    fn fences_lost(&self) -> bool {
        self.map().nodes.iter().any(|n| n.master.fences_lost())
    }

    fn fences_repaired(&self) {
        for n in &self.map().nodes {
            if n.master.fences_lost() {
                n.master.fences_repaired();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot(b"a"), 15495);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"x{bar}y"), 5061);
        // An empty tag hashes the whole key; only the first `{` opens one.
        assert_eq!(slot(b"{}bar"), crc16(b"{}bar") % 16384);
        assert_eq!(slot(b"{bar}{foo}"), 5061);
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in [0, 1, 5460, 5461, 16383] {
            let name = format!("p:{{{}}}run", tag_for(s));
            assert_eq!(slot(name.as_bytes()), s);
        }
        assert!(TAGS.iter().all(|&t| t != u32::MAX));
    }

    #[test]
    fn cluster_slots_replies_are_read() {
        let node = |ip: &'static str, port| {
            Frame::Array(vec![
                Frame::BulkString(Bytes::from_static(ip.as_bytes())),
                Frame::Integer(port),
                Frame::BulkString(Bytes::from_static(b"id")),
            ])
        };
        let reply = Frame::Array(vec![
            Frame::Array(vec![
                Frame::Integer(0),
                Frame::Integer(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.9", 7009),
            ]),
            Frame::Array(vec![
                Frame::Integer(5461),
                Frame::Integer(16383),
                node("", 7001),
            ]),
        ]);
        let ranges = parse_slots(&reply, "seed").unwrap();
        assert_eq!(ranges[0], (0, 5460, "10.0.0.1:7000".to_owned()));
        assert_eq!(ranges[1], (5461, 16383, "seed:7001".to_owned()));
        assert!(parse_slots(&Frame::Null, "seed").is_none());
    }
}
