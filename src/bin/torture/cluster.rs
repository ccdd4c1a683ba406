//! Members that are Redis Clusters (`--cluster-shards N`): each member is N shard masters,
//! each with one replica when a fault kind needs one, joined by `redis-cli --cluster create`;
//! the proxies reach it as `redis+cluster://` with every node as a seed. The cluster faults act
//! on one member at a time:
//!
//! - reshard: a range of slots, with their keys, moves from one shard master to another under
//!   traffic, slot by slot as `redis-cli --cluster reshard` does it (`SETSLOT IMPORTING` on
//!   the target, `SETSLOT MIGRATING` on the source, `MIGRATE` of every key, `SETSLOT NODE` on
//!   every master), starting at the slot of a key the source holds;
//! - failover: `CLUSTER FAILOVER` on a replica in sync, which waits for the replica to catch
//!   up before the roles swap;
//! - kill: a shard master's replica cut off from it (the injector aims the rest), SIGKILL of
//!   the master, `CLUSTER FAILOVER TAKEOVER` on the replica (what it missed is lost), and the
//!   killed node back, empty, with its cluster configuration: it learns the newer epoch and
//!   turns replica of the promoted one.
//!
//! Nodes are started from the main thread only (see `procs`); every command sent to one is
//! bounded by short timeouts, every wait by a count and a time.

use std::process::Command;
use std::time::{Duration, Instant};

use rand::RngExt;
use rand::rngs::StdRng;
use redlock_proxy::embedded::RedisServer;
use redlock_proxy::protocol::client::Frame;
use tokio::runtime::Handle;

use crate::conn::Conn;
use crate::procs::free_port;

/// How long a new cluster gets to agree on its slots and sync its replicas.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a promotion may take before the fault counts as failed.
const PROMOTED_WITHIN: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Node timeout of every node: a node silent this long is marked failing. Longer than the
/// longest pause (2 s), so a pause alone does not fail a shard over.
const NODE_TIMEOUT_MS: &str = "3000";
/// Most slots one reshard moves.
const MAX_RESHARD_SLOTS: u16 = 32;
/// Keys per `MIGRATE`, and batches per slot (the lock keys of a slot are few).
const MIGRATE_BATCH: usize = 100;
const MIGRATE_ROUNDS: usize = 1_000;

/// A shard whose replica is cut off from its master: indexes into the member's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub master: usize,
    pub replica: usize,
}

/// One node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    port: u16,
    master: bool,
    /// Flagged `fail` or `fail?`, or disconnected.
    failing: bool,
    /// A replica's master.
    master_id: Option<String>,
    /// Slot ranges it owns (inclusive).
    slots: Vec<(u16, u16)>,
}

impl Node {
    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// One member: a Redis Cluster.
#[derive(Debug)]
pub struct ClusterMember {
    /// Every node, shard masters and replicas alike (roles change with failovers).
    nodes: Vec<RedisServer>,
    /// The runtime that carries the commands sent to the nodes.
    rt: Handle,
}

impl ClusterMember {
    /// Starts `shards` shard masters (with `replicas`, one replica each), creates the cluster
    /// and waits until every node reports it ok and every replica is in sync.
    pub fn start(
        program: &str,
        shards: usize,
        replicas: bool,
        rt: &Handle,
    ) -> Result<ClusterMember, String> {
        let count = if replicas { shards * 2 } else { shards };
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            // A bus port of its own: the default, port + 10000, is past 65535 for high ports.
            let bus = free_port()
                .map_err(|e| format!("no free port: {e}"))?
                .to_string();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                NODE_TIMEOUT_MS,
                "--cluster-port",
                &bus,
                // A rejoined replica starts its full sync at once.
                "--repl-diskless-sync-delay",
                "0",
            ];
            nodes.push(RedisServer::start_with(program, &args).map_err(|e| e.to_string())?);
        }
        let member = ClusterMember {
            nodes,
            rt: rt.clone(),
        };
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(
            member
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        if replicas {
            create.extend(["--cluster-replicas".into(), "1".into()]);
        }
        create.push("--cluster-yes".into());
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        member.wait_ready(shards, replicas)?;
        Ok(member)
    }

    /// Polls every 50 ms until every node says `cluster_state:ok`, `shards` masters own all
    /// 16384 slots and (with `replicas`) each master has a replica in sync.
    fn wait_ready(&self, shards: usize, replicas: bool) -> Result<(), String> {
        let started = Instant::now();
        for _ in 0..10_000 {
            let ok = self.nodes.iter().all(|n| {
                self.text(n.port(), &[b"CLUSTER", b"INFO"])
                    .is_ok_and(|t| t.contains("cluster_state:ok"))
            });
            let nodes = self.view().unwrap_or_default();
            let masters = nodes.iter().filter(|n| n.master && !n.slots.is_empty());
            let synced = nodes.iter().filter(|n| self.in_sync(n)).count();
            if ok && masters.count() == shards && (!replicas || synced == shards) {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the cluster on ports {:?} was not ready within {READY_WITHIN:?}",
            self.ports()
        ))
    }

    /// The member's address for the proxies: every node as a seed.
    pub fn backend(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Its nodes' ports, for the log.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// How many nodes it has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s process, for pauses and the end of the run.
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Moves up to [`MAX_RESHARD_SLOTS`] slots with their keys from one shard master to
    /// another, starting at the slot of a key the source holds. Returns the keys moved, and what moved.
    pub fn reshard(&self, rng: &mut StdRng) -> Result<(u64, String), String> {
        let nodes = self.view()?;
        let masters: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.master && !n.failing && !n.slots.is_empty())
            .collect();
        if masters.len() < 2 {
            return Err("fewer than two shard masters up".into());
        }
        let src = masters[rng.random_range(0..masters.len())];
        let others: Vec<&&Node> = masters.iter().filter(|n| n.id != src.id).collect();
        let dst = others[rng.random_range(0..others.len())];
        let first = self.slot_with_a_key(src, rng)?;
        let want = rng.random_range(1..=MAX_RESHARD_SLOTS);
        let range: Vec<u16> = (first..first.saturating_add(want))
            .take_while(|&s| usize::from(s) < 16_384 && src.owns(s))
            .collect();
        let mut keys = 0;
        for &slot in &range {
            keys += self
                .move_slot(slot, src, dst, &masters)
                .map_err(|e| format!("slot {slot} from {} to {}: {e}", src.port, dst.port))?;
        }
        Ok((
            keys,
            format!(
                "{} slots ({}..={}) with {keys} keys from shard master {} to {}",
                range.len(),
                first,
                range.last().copied().unwrap_or(first),
                src.port,
                dst.port
            ),
        ))
    }

    /// The slot of a random key of the first page `SCAN` returns on `src`, or a random slot
    /// of `src` when it holds none.
    fn slot_with_a_key(&self, src: &Node, rng: &mut StdRng) -> Result<u16, String> {
        let keys = match self.command(src.port, &[b"SCAN", b"0", b"COUNT", b"100"])? {
            Frame::Array(mut parts) if parts.len() == 2 => match parts.pop() {
                Some(Frame::Array(keys)) => keys,
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        if let Some(Frame::BulkString(key)) = keys.get(rng.random_range(0..keys.len().max(1))) {
            if let Frame::Integer(slot) = self.command(src.port, &[b"CLUSTER", b"KEYSLOT", key])? {
                return u16::try_from(slot).map_err(|_| format!("slot {slot}?"));
            }
        }
        let (a, b) = src.slots[rng.random_range(0..src.slots.len())];
        Ok(rng.random_range(a..=b))
    }

    /// One slot's move; returns the keys migrated.
    fn move_slot(
        &self,
        slot: u16,
        src: &Node,
        dst: &Node,
        masters: &[&Node],
    ) -> Result<u64, String> {
        let s = slot.to_string();
        let (s, src_id, dst_id) = (s.as_bytes(), src.id.as_bytes(), dst.id.as_bytes());
        self.command(dst.port, &[b"CLUSTER", b"SETSLOT", s, b"IMPORTING", src_id])?;
        self.command(src.port, &[b"CLUSTER", b"SETSLOT", s, b"MIGRATING", dst_id])?;
        let dst_port = dst.port.to_string();
        let batch = MIGRATE_BATCH.to_string();
        let mut moved = 0;
        for _ in 0..MIGRATE_ROUNDS {
            let keys = match self.command(
                src.port,
                &[b"CLUSTER", b"GETKEYSINSLOT", s, batch.as_bytes()],
            )? {
                Frame::Array(keys) => keys,
                other => return Err(format!("GETKEYSINSLOT: {other:?}")),
            };
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                dst_port.as_bytes(),
                b"",
                b"0",
                b"5000",
                b"KEYS",
            ];
            for k in &keys {
                if let Frame::BulkString(k) = k {
                    args.push(k);
                }
            }
            self.command(src.port, &args)?;
            moved += keys.len() as u64;
        }
        // The target first: once the source lets go, requests it redirects must find an owner.
        self.command(dst.port, &[b"CLUSTER", b"SETSLOT", s, b"NODE", dst_id])?;
        self.command(src.port, &[b"CLUSTER", b"SETSLOT", s, b"NODE", dst_id])?;
        for m in masters.iter().filter(|m| m.id != src.id && m.id != dst.id) {
            // Gossip tells the others too; this only makes it sooner.
            let _ = self.command(m.port, &[b"CLUSTER", b"SETSLOT", s, b"NODE", dst_id]);
        }
        Ok(moved)
    }

    /// `CLUSTER FAILOVER` on a random replica in sync, and waits until it is master.
    pub fn failover(&self, rng: &mut StdRng) -> Result<String, String> {
        let replica = self.pick_replica(rng)?;
        self.command(replica.port, &[b"CLUSTER", b"FAILOVER"])?;
        self.until_master(replica.port)?;
        Ok(format!(
            "replica {} took over its shard (CLUSTER FAILOVER)",
            replica.port
        ))
    }

    /// The first half of a shard master's kill: a random replica in sync is frozen (SIGSTOP)
    /// and its master drops the link (`CLIENT KILL TYPE replica`), so it misses every write
    /// from now on. Freezing alone would not do: the kernel keeps receiving what the master
    /// sends.
    pub fn cut(&mut self, rng: &mut StdRng) -> Result<Cut, String> {
        let replica = self.pick_replica(rng)?;
        let nodes = self.view()?;
        let master = nodes
            .iter()
            .find(|n| Some(&n.id) == replica.master_id.as_ref())
            .ok_or("the replica's master is not in the map")?;
        let index = |port: u16| {
            self.nodes
                .iter()
                .position(|n| n.port() == port)
                .ok_or(format!("{port} is not one of the member's nodes"))
        };
        let cut = Cut {
            master: index(master.port)?,
            replica: index(replica.port)?,
        };
        self.nodes[cut.replica].pause();
        if let Err(e) = self.command(master.port, &[b"CLIENT", b"KILL", b"TYPE", b"replica"]) {
            self.nodes[cut.replica].resume();
            return Err(e);
        }
        Ok(cut)
    }

    /// The second half: SIGKILL of the master, SIGCONT of the replica and `CLUSTER FAILOVER
    /// TAKEOVER` on it (what it missed is lost); waits until it is master. The killed node
    /// stays down until [`ClusterMember::rejoin`].
    pub fn take_over(&mut self, cut: Cut) -> Result<String, String> {
        let (master, replica) = (
            self.nodes[cut.master].port(),
            self.nodes[cut.replica].port(),
        );
        self.nodes[cut.master].kill();
        self.nodes[cut.replica].resume();
        self.command(replica, &[b"CLUSTER", b"FAILOVER", b"TAKEOVER"])?;
        self.until_master(replica)?;
        Ok(format!(
            "shard master {master} SIGKILL, its replica {replica} took over (CLUSTER FAILOVER \
             TAKEOVER)"
        ))
    }

    /// A kill called off: the replica thaws and catches up with its master.
    pub fn uncut(&mut self, cut: Cut) {
        self.nodes[cut.replica].resume();
    }

    /// Starts node `i` again, empty but with its cluster configuration: a master that lost
    /// its shard comes back as the new master's replica.
    pub fn rejoin(&mut self, i: usize) -> Result<(), String> {
        self.nodes[i].restart().map_err(|e| e.to_string())
    }

    /// A random replica that is up, whose master is up, and whose link to it is up.
    fn pick_replica(&self, rng: &mut StdRng) -> Result<Node, String> {
        let nodes = self.view()?;
        let ready: Vec<&Node> = nodes
            .iter()
            .filter(|n| {
                !n.master
                    && !n.failing
                    && nodes
                        .iter()
                        .any(|m| Some(&m.id) == n.master_id.as_ref() && m.master && !m.failing)
                    && self.in_sync(n)
            })
            .collect();
        if ready.is_empty() {
            return Err("no replica in sync".into());
        }
        Ok(ready[rng.random_range(0..ready.len())].clone())
    }

    /// Whether `node` is a replica whose link to its master is up.
    fn in_sync(&self, node: &Node) -> bool {
        !node.master
            && self
                .text(node.port, &[b"INFO", b"replication"])
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "master_link_status:up"))
    }

    /// Polls `ROLE` on `port` every 20 ms until it says master, for at most
    /// [`PROMOTED_WITHIN`].
    fn until_master(&self, port: u16) -> Result<(), String> {
        let started = Instant::now();
        for _ in 0..1_000 {
            if let Ok(Frame::Array(role)) = self.command(port, &[b"ROLE"]) {
                if matches!(role.first(), Some(Frame::BulkString(r)) if &r[..] == b"master") {
                    return Ok(());
                }
            }
            if started.elapsed() > PROMOTED_WITHIN {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{port} not master within {PROMOTED_WITHIN:?}"))
    }

    /// `CLUSTER NODES` as the first running node that answers tells it.
    fn view(&self) -> Result<Vec<Node>, String> {
        let mut last = String::from("no node runs");
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match self.text(n.port(), &[b"CLUSTER", b"NODES"]) {
                Ok(text) => return Ok(text.lines().filter_map(parse_node).collect()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A command whose reply is text (a bulk string).
    fn text(&self, port: u16, args: &[&[u8]]) -> Result<String, String> {
        match self.command(port, args)? {
            Frame::BulkString(b) => Ok(String::from_utf8_lossy(&b).into()),
            other => Err(format!("{port}: unexpected reply {other:?}")),
        }
    }

    /// Sends one command to the node on `port` on a new connection and returns its reply;
    /// an error reply is an error. Called from the main thread, outside the runtime.
    fn command(&self, port: u16, args: &[&[u8]]) -> Result<Frame, String> {
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let reply = self.rt.block_on(async {
            let mut conn = Conn::connect(addr, CONNECT_TIMEOUT).await?;
            conn.call(args, REPLY_TIMEOUT).await
        });
        match reply {
            Ok(Frame::Error(e)) => Err(format!("{port}: {e}")),
            Ok(frame) => Ok(frame),
            Err(e) => Err(format!("{port}: {e}")),
        }
    }
}

/// One line of `CLUSTER NODES`: `id ip:port@bus flags master-id ping pong epoch link slots...`.
fn parse_node(line: &str) -> Option<Node> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() < 8 {
        return None;
    }
    let port = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
    let flags = f[2];
    let slots = f[8..]
        .iter()
        // `[slot->-id]` and `[slot-<-id]` mark slots being migrated: not owned by that alone.
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|a| (a, a)),
        })
        .collect();
    Some(Node {
        id: f[0].to_owned(),
        port,
        master: flags.contains("master"),
        failing: flags.contains("fail") || flags.contains("noaddr") || f[7] != "connected",
        master_id: (f[3] != "-").then(|| f[3].to_owned()),
        slots,
    })
}
