//! Redis Clusters for tests: `redis-server --cluster-enabled yes` nodes on free loopback ports,
//! joined by `redis-cli --cluster create`, with an optional replica of the first shard. Each
//! wait polls with a bounded number of tries; every node dies with the handle.

use std::process::Command;
use std::time::{Duration, Instant};

use redlock_proxy::config::MasterAddr;
use redlock_proxy::embedded::RedisServer;

/// How long a cluster may take to agree on its slots, or a replica to sync.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One Redis Cluster: its shard masters first, then the replica if any.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// How many of `nodes` were started as shard masters.
    pub shards: usize,
}

/// A node: cluster mode, a short node timeout so that a killed master's replica takes over
/// within seconds, and a bus port of its own (by default the port plus 10000, past 65535 for a
/// high free port).
fn node() -> (RedisServer, u16) {
    let port = super::free_port();
    let bus = port.to_string();
    let args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        "--cluster-port",
        &bus,
    ];
    let server = RedisServer::start_with("redis-server", &args).expect("redis-server");
    (server, port)
}

impl RedisCluster {
    /// `shards` masters sharing the 16384 slots evenly, and with `replica` one replica of the
    /// first; returns once every node reports `cluster_state:ok` and the replica is in sync.
    pub fn start(shards: usize, replica: bool) -> RedisCluster {
        let (nodes, buses): (Vec<RedisServer>, Vec<u16>) = (0..shards).map(|_| node()).unzip();
        let mut cluster = RedisCluster { nodes, shards };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(
            cluster.nodes[..shards]
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        create.extend(["--cluster-yes".to_owned()]);
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        if replica {
            // Started now: a node alone reports a failed cluster until it joins.
            cluster.nodes.push(node().0);
            let (first, replica) = (cluster.nodes[0].port(), cluster.nodes[shards].port());
            let id = cluster.id(first);
            // With the first node's bus port: it is not the default.
            let (first_port, bus) = (first.to_string(), buses[0].to_string());
            cli(
                replica,
                &["CLUSTER", "MEET", "127.0.0.1", &first_port, &bus],
            );
            cluster.until("the replica meets the cluster", || {
                cli(replica, &["CLUSTER", "NODES"]).contains(&id)
            });
            cluster.until("the replica takes its master", || {
                cli(replica, &["CLUSTER", "REPLICATE", &id]).trim() == "OK"
            });
            cluster.until("the replica syncs", || {
                cli(replica, &["INFO", "replication"]).contains("master_link_status:up")
            });
            cluster.wait_ok();
        }
        cluster
    }

    /// The member's address for the proxy: every node as a seed.
    pub fn addr(&self) -> MasterAddr {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
            .parse()
            .unwrap()
    }

    /// The node id of the node on `port`.
    pub fn id(&self, port: u16) -> String {
        cli(port, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// Ports of the nodes that are masters with slots now, as the first live node sees it.
    pub fn masters(&self) -> Vec<u16> {
        let nodes = self.nodes_view();
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| {
                let at = l.split(' ').nth(1)?;
                at.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect()
    }

    /// `CLUSTER NODES` as the first node that answers tells it.
    fn nodes_view(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| cli(n.port(), &["CLUSTER", "NODES"]))
            .find(|v| v.contains("myself"))
            .unwrap_or_default()
    }

    /// Waits until every live node says `cluster_state:ok` and `redis-cli --cluster check`
    /// finds every slot covered and every node agreeing.
    pub fn wait_ok(&self) {
        let mut last = String::new();
        let start = Instant::now();
        let agreed = || {
            let live: Vec<u16> = self
                .nodes
                .iter()
                .filter(|n| n.pid().is_some())
                .map(RedisServer::port)
                .collect();
            let ok = live
                .iter()
                .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let check = Command::new("redis-cli")
                .args(["--cluster", "check", &format!("127.0.0.1:{}", live[0])])
                .output()
                .expect("redis-cli must be installed");
            last = String::from_utf8_lossy(&check.stdout).into_owned();
            ok && last.contains("All nodes agree") && last.contains("All 16384 slots covered")
        };
        let mut agreed = agreed;
        while !agreed() {
            assert!(
                start.elapsed() < READY_WITHIN,
                "the cluster did not agree on its slots within {READY_WITHIN:?}: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `done` every 50 ms until it holds, failing the test after [`READY_WITHIN`].
    pub fn until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < READY_WITHIN,
                "{what}: not within {READY_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `redis-cli -p port args...`, its output as text.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
