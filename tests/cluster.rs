//! Members that are Redis Clusters (issue 18), against real `redis-server --cluster-enabled yes`
//! nodes on loopback: every command over three clusters of three shards with keys on every
//! shard, a mixed configuration, `MOVED` and `ASK` during a slot moved by hand, failovers whose
//! promoted node sits out a quarantine, and a live slot move plus a failover under lock traffic
//! checked for double grants and fence regressions.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redlock_proxy::backend::redis::slot;
use redlock_proxy::config::MasterAddr;
use support::cluster::{RedisCluster, cli};
use support::{Conn, TestProxy, flatten, int, is_null, text};

/// Starts `n` clusters, one after the other: a node dies with the thread that started it.
fn clusters(n: usize, replica_in_first: bool) -> Vec<RedisCluster> {
    (0..n)
        .map(|i| RedisCluster::start(3, replica_in_first && i == 0))
        .collect()
}

fn addrs(clusters: &[RedisCluster]) -> Vec<MasterAddr> {
    clusters.iter().map(RedisCluster::addr).collect()
}

async fn info(p: &TestProxy) -> String {
    flatten(&p.conn().await.call(&["INFO", "masters"]).await)
}

/// Waits (bounded) until `INFO masters` satisfies `done`; returns it.
async fn until_info(p: &TestProxy, what: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..400 {
        last = info(p).await;
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: INFO masters never showed it; last:\n{last}");
}

/// The `INFO masters` line of the node on `port`.
fn node_line(info: &str, port: u16) -> Option<&str> {
    let at = format!("addr=127.0.0.1:{port},");
    info.split("\r\n")
        .find(|l| l.contains("_node") && l.contains(&at))
}

/// The master port that owns `key`'s slot in `cluster`.
fn owner(cluster: &RedisCluster, key: &str) -> u16 {
    cluster
        .masters()
        .into_iter()
        .find(|p| !cli(*p, &["GET", key]).contains("MOVED"))
        .expect("some master owns the slot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_serve_every_command_on_every_shard_and_mix_with_a_single_master() {
    let c = clusters(3, false);
    let a = support::proxy_on(addrs(&c), true, |_| {}).await;
    let b = support::proxy_on(addrs(&c), true, |_| {}).await;
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    // Many keys: each shard of each cluster holds some.
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let mut tokens = Vec::new();
    for k in &keys {
        let token = text(&ca.call(&["LOCK", k, "10000"]).await);
        assert_eq!(token.len(), 32, "{k}");
        assert!(is_null(&cb.call(&["LOCK", k, "10000"]).await), "{k}");
        tokens.push(token);
    }
    for cluster in &c {
        for node in &cluster.nodes {
            let held = cli(node.port(), &["--scan", "--pattern", "redlock:{????}0:k*"]);
            assert!(held.lines().count() > 5, "node {}: {held}", node.port());
        }
    }
    for (k, token) in keys.iter().zip(&tokens) {
        assert_eq!(int(&cb.call(&["EXTEND", k, token, "20000"]).await), 1);
        assert!(int(&ca.call(&["LOCKTTL", k]).await) > 10_000);
        assert_eq!(int(&cb.call(&["UNLOCK", k, token]).await), 1);
    }
    // Fences rise across proxies, per key.
    for k in ["f1", "f2", "f3"] {
        for i in 1..=3 {
            let c = if i == 2 { &mut cb } else { &mut ca };
            let reply = flatten(&c.call(&["LOCK", k, "5000", "FENCE"]).await);
            let (token, fence) = reply.split_once(' ').unwrap();
            assert_eq!(fence, i.to_string(), "{k}: {reply}");
            assert_eq!(int(&c.call(&["UNLOCK", k, token]).await), 1);
        }
    }
    // A release on one proxy wakes a waiter on the other through the nodes' sharded channels,
    // well before the waiter's own retry (once a second while the holder's TTL is long).
    let token = text(&ca.call(&["LOCK", "w", "30000"]).await);
    let mut waiter = b.conn().await;
    waiter
        .send_cmd(&["LOCK", "w", "5000", "WAIT", "4000"])
        .await;
    // Just past the waiter's first retry, so the next one is a second away.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let released = Instant::now();
    assert_eq!(int(&ca.call(&["UNLOCK", "w", &token]).await), 1);
    assert_eq!(text(&waiter.reply().await).len(), 32);
    let woke = released.elapsed();
    assert!(woke < Duration::from_millis(500), "woke after {woke:?}");
    for node in &c[0].nodes {
        let channels = cli(node.port(), &["PUBSUB", "SHARDCHANNELS"]);
        assert!(channels.contains("released"), "{}: {channels}", node.port());
    }
    // A session lock goes with its connection.
    let mut session = a.conn().await;
    text(&session.call(&["LOCK", "s", "10000", "SESSION"]).await);
    assert!(is_null(&cb.call(&["LOCK", "s", "10000"]).await));
    drop(session);
    let mut taken = false;
    for _ in 0..100 {
        if !is_null(&cb.call(&["LOCK", "s", "10000"]).await) {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken, "the session lock outlived its connection");
    // Semaphores and read/write locks: every slot of one semaphore shares its key's node, and the
    // node's run marker, in another slot, is still checked by each acquire.
    for k in ["sem:a", "sem:b", "sem:c"] {
        let first = text(&ca.call(&["LOCK", k, "5000", "PERMITS", "2"]).await);
        let second = text(&cb.call(&["LOCK", k, "5000", "PERMITS", "2"]).await);
        assert_ne!(first, second);
        assert!(is_null(
            &ca.call(&["LOCK", k, "5000", "PERMITS", "2"]).await
        ));
        assert_eq!(int(&cb.call(&["UNLOCK", k, &first]).await), 1);
        let again = text(&ca.call(&["LOCK", k, "5000", "PERMITS", "2"]).await);
        assert_eq!(int(&ca.call(&["UNLOCK", k, &again]).await), 1);
        assert_eq!(int(&ca.call(&["UNLOCK", k, &second]).await), 1);
    }
    // redis-semaphore's Semaphore by its identifiers: taken, refreshed (the slot found by
    // name on each node) and released by ZREM.
    let acquire = "43ebdb49120d170e08af560cb4e46e36f8585936";
    let refresh = "999a49a1d07671a8027165641001f5bad44608b3";
    for k in ["semaphore:a", "semaphore:b", "semaphore:c"] {
        let sem = |sha, id| ["EVALSHA", sha, "1", k, "1", id, "5000", "1"];
        assert_eq!(int(&ca.call(&sem(acquire, "x")).await), 1);
        assert_eq!(int(&cb.call(&sem(acquire, "y")).await), 0);
        assert_eq!(int(&cb.call(&sem(refresh, "x")).await), 1);
        assert_eq!(int(&cb.call(&["ZREM", k, "x"]).await), 1);
        assert_eq!(int(&cb.call(&sem(acquire, "y")).await), 1);
        assert_eq!(int(&ca.call(&["ZREM", k, "y"]).await), 1);
    }
    for k in ["rw:a", "rw:b", "rw:c"] {
        let r1 = text(&ca.call(&["LOCK", k, "5000", "SHARED"]).await);
        let r2 = text(&cb.call(&["LOCK", k, "5000", "SHARED"]).await);
        assert!(is_null(&ca.call(&["LOCK", k, "5000"]).await));
        assert_eq!(int(&ca.call(&["UNLOCK", k, &r1]).await), 1);
        assert_eq!(int(&cb.call(&["UNLOCK", k, &r2]).await), 1);
        let w = text(&ca.call(&["LOCK", k, "5000"]).await);
        assert!(is_null(&cb.call(&["LOCK", k, "5000", "SHARED"]).await));
        assert_eq!(int(&ca.call(&["UNLOCK", k, &w]).await), 1);
    }
    // INFO: each member's nodes and slot coverage.
    let shown = info(&a).await;
    assert!(shown.contains("masters_voting:3\r\n"), "{shown}");
    for i in 0..3 {
        let covered = format!("master{i}_cluster:slots_covered=16384,");
        assert!(shown.contains(&covered), "{shown}");
        for j in 0..3 {
            assert!(
                shown.contains(&format!("master{i}_node{j}:addr=")),
                "{shown}"
            );
        }
    }
    assert!(
        shown.contains(",slots=5461,slot_ranges=0-5460,state=up,"),
        "{shown}"
    );
    // --check-config asks the seeds.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redlock-proxy"))
        .args(["--backend", &c[0].addr().to_string(), "--check-config"])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("# master0: cluster redis+cluster://"), "{out}");
    assert_eq!(out.matches("#   node 127.0.0.1:").count(), 3, "{out}");
    assert!(out.contains("#   16384 of 16384 slots covered"), "{out}");
    // Mixed: two clusters and a single master.
    let single = support::masters(1);
    let mixed = vec![c[1].addr(), single[0].addr(), c[2].addr()];
    let m = support::proxy_on(mixed, true, |_| {}).await;
    let mut cm = m.conn().await;
    for k in &keys[..20] {
        let token = text(&cm.call(&["LOCK", k, "10000"]).await);
        assert_eq!(int(&cm.call(&["UNLOCK", k, &token]).await), 1);
    }
    let reply = flatten(&cm.call(&["LOCK", "f1", "5000", "FENCE"]).await);
    assert!(reply.ends_with(" 4"), "{reply}");
    let single_line = until_info(&m, "mixed", |i| i.contains("masters_voting:3\r\n")).await;
    assert!(
        single_line.contains("master1:addr=127.0.0.1:"),
        "{single_line}"
    );
    for p in [a, b, m] {
        p.stop().await;
    }
}

/// A key in `cluster` whose lock shares `like`'s hash tag (so its slot too).
fn same_tag(like: &str) -> String {
    let tag = |k: &str| support::lock_key(k)[8..14].to_owned();
    let want = tag(like);
    (0..1_000_000)
        .map(|i| format!("t{i}"))
        .find(|k| tag(k) == want)
        .expect("a key with the same tag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_and_ask_are_followed_while_a_slot_moves() {
    let c = clusters(1, false).remove(0);
    // One member: its answer alone decides, so every redirect it fails to follow shows.
    let p = support::proxy_on(vec![c.addr()], true, |_| {}).await;
    let mut pc = p.conn().await;
    let (fresh, held) = ("mv", same_tag("mv"));
    let (fresh_key, held_key) = (support::lock_key(fresh), support::lock_key(&held));
    let from = owner(&c, &held_key);
    let to = *c.masters().iter().find(|p| **p != from).unwrap();
    let slot = cli(from, &["CLUSTER", "KEYSLOT", &held_key])
        .trim()
        .to_owned();
    let held_token = text(&pc.call(&["LOCK", &held, "30000"]).await);
    let (from_id, to_id) = (c.id(from), c.id(to));
    cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    // Absent on the old node: ASK, and taken on the new one behind ASKING.
    let fresh_token = text(&pc.call(&["LOCK", fresh, "30000"]).await);
    assert_eq!(fresh_token.len(), 32);
    assert_eq!(cli(to, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim(), "1");
    assert!(cli(from, &["EXISTS", &fresh_key]).contains("ASK"));
    // Still on the old node: refused there.
    assert!(is_null(&pc.call(&["LOCK", &held, "30000"]).await));
    // Move the rest and hand the slot over: the old node answers MOVED.
    let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
    let mut migrate = vec!["MIGRATE", "127.0.0.1"];
    let to_port = to.to_string();
    migrate.extend([to_port.as_str(), "", "0", "5000", "KEYS"]);
    migrate.extend(keys.lines());
    assert_eq!(cli(from, &migrate).trim(), "OK");
    for m in c.masters() {
        cli(m, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    assert!(is_null(&pc.call(&["LOCK", &held, "30000"]).await));
    assert!(is_null(&pc.call(&["LOCK", fresh, "30000"]).await));
    assert_eq!(int(&pc.call(&["UNLOCK", &held, &held_token]).await), 1);
    assert_eq!(int(&pc.call(&["UNLOCK", fresh, &fresh_token]).await), 1);
    assert_eq!(text(&pc.call(&["LOCK", &held, "30000"]).await).len(), 32);
    let shown = info(&p).await;
    let redirects: u64 = shown
        .split("redirects=")
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    assert!(redirects >= 2, "{shown}");
    // A node that may evict keys is held out: its keys get no vote from the member, though its
    // run marker is there; the other nodes' keys still do.
    let evicting = c.masters()[0];
    cli(evicting, &["CONFIG", "SET", "maxmemory", "1gb"]);
    cli(
        evicting,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
    );
    until_info(&p, "the evicting node held out", |i| {
        node_line(i, evicting).is_some_and(|l| l.contains("state=evicting"))
    })
    .await;
    let there = same_shard_key(&c, evicting);
    let reply = flatten(&pc.call(&["LOCK", &there, "30000"]).await);
    assert!(reply.contains("NOQUORUM"), "{reply}");
    let elsewhere = same_shard_key(&c, c.masters()[1]);
    assert_eq!(
        text(&pc.call(&["LOCK", &elsewhere, "30000"]).await).len(),
        32
    );
    cli(evicting, &["CONFIG", "SET", "maxmemory", "0"]);
    until_info(&p, "the node votes again", |i| {
        node_line(i, evicting).is_some_and(|l| l.contains("state=up"))
    })
    .await;
    assert_eq!(text(&pc.call(&["LOCK", &there, "30000"]).await).len(), 32);
    // The slot of a node's own names moves away with its run marker: the node
    // stops voting at once, its names are placed anew under its new highest slot, and a node
    // without a marker there sits out a quarantine (no proof nothing flushed it meanwhile).
    let (node, other) = (c.masters()[2], c.masters()[0]);
    let marker = cli(node, &["--scan", "--pattern", "redlock:{*}run"]);
    let marker = marker.lines().next().expect("the node's run marker");
    let slot = cli(node, &["CLUSTER", "KEYSLOT", marker]).trim().to_owned();
    move_slot(&c, &slot, node, other);
    let shown = until_info(&p, "the node re-marked and held out", |i| {
        node_line(i, node).is_some_and(|l| l.contains("reason=unmarked"))
    })
    .await;
    assert!(
        node_line(&shown, node)
            .unwrap()
            .contains("state=quarantined"),
        "{shown}"
    );
    let reply = flatten(&pc.call(&["LOCK", &same_shard_key(&c, node), "30000"]).await);
    assert!(reply.contains("NOQUORUM"), "{reply}");
    p.stop().await;
}

/// Moves `slot` from `from` to `to` in `cluster`: IMPORTING, MIGRATING, its keys, NODE.
fn move_slot(cluster: &RedisCluster, slot: &str, from: u16, to: u16) {
    let (from_id, to_id) = (cluster.id(from), cluster.id(to));
    cli(to, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]);
    cli(from, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]);
    // Bounded: a slot holds a handful of this test's keys.
    for _ in 0..100 {
        let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", slot, "10"]);
        if keys.trim().is_empty() {
            break;
        }
        let to_port = to.to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        migrate.extend(keys.lines());
        cli(from, &migrate);
        std::thread::sleep(Duration::from_millis(20));
    }
    for m in cluster.masters() {
        cli(m, &["CLUSTER", "SETSLOT", slot, "NODE", &to_id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_sits_out_a_quarantine_after_failover_and_after_a_kill() {
    let mut c = clusters(1, true).remove(0);
    let (first, replica) = (c.nodes[0].port(), c.nodes[3].port());
    let short = |cfg: &mut redlock_proxy::config::Config| {
        cfg.redlock.max_ttl_ms = 3_000;
        cfg.backend.reconnect_min_ms = 10;
        cfg.backend.reconnect_max_ms = 100;
    };
    // One member: a key on the promoted node's shard gets no vote while it sits out.
    let p = support::proxy_on(vec![c.addr()], true, short).await;
    let mut pc = p.conn().await;
    // A key on the failing shard, and one on another.
    let on_first = same_shard_key(&c, first);
    let elsewhere = same_shard_key(&c, c.nodes[1].port());
    assert_eq!(text(&pc.call(&["LOCK", &on_first, "2000"]).await).len(), 32);
    assert_eq!(cli(replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
    c.until("the replica is promoted", || {
        cli(replica, &["ROLE"]).starts_with("master")
    });
    let shown = until_info(&p, "the promoted replica held out", |i| {
        node_line(i, replica).is_some_and(|l| l.contains("reason=foreign-data"))
    })
    .await;
    assert!(
        node_line(&shown, replica)
            .unwrap()
            .contains("state=quarantined"),
        "{shown}"
    );
    // Its shard gives no vote; the others still do.
    let other = text(&pc.call(&["LOCK", &elsewhere, "2000"]).await);
    assert_eq!(other.len(), 32);
    let same_shard = same_shard_key(&c, replica);
    let reply = flatten(&pc.call(&["LOCK", &same_shard, "2000"]).await);
    assert!(reply.contains("NOQUORUM"), "{reply}");
    // Quarantine over (max-ttl 3 s): it votes.
    until_info(&p, "the promoted replica votes", |i| {
        node_line(i, replica).is_some_and(|l| l.contains("state=up"))
    })
    .await;
    assert_eq!(
        text(&pc.call(&["LOCK", &same_shard, "2000"]).await).len(),
        32
    );
    // Now kill it: the old master, its replica since the failover, takes over, and sits out too.
    c.until("the old master follows", || {
        cli(first, &["INFO", "replication"]).contains("master_link_status:up")
    });
    c.nodes[3].kill();
    c.until("the old master is promoted", || {
        cli(first, &["ROLE"]).starts_with("master")
    });
    let shown = until_info(&p, "the re-promoted master held out", |i| {
        node_line(i, first).is_some_and(|l| l.contains("reason=foreign-data"))
    })
    .await;
    assert!(
        node_line(&shown, first)
            .unwrap()
            .contains("state=quarantined"),
        "{shown}"
    );
    p.stop().await;
}

/// A key whose lock lives on the master at `port`.
fn same_shard_key(c: &RedisCluster, port: u16) -> String {
    (0..1000)
        .map(|i| format!("s{i}"))
        .find(|k| owner(c, &support::lock_key(k)) == port)
        .unwrap()
}

/// Slots `redis-cli --cluster reshard` moves in the traffic test: the lowest of a shard.
const RESHARDED: u16 = 300;

/// One client's hold, as the history check sees it.
#[derive(Debug, Clone)]
struct Hold {
    key: String,
    fence: u64,
    /// From the grant's reply to the earlier of its release and its promised validity's end.
    from: Instant,
    until: Instant,
}

/// A client: takes one of `keys` with FENCE through `proxy`, holds it briefly, releases it;
/// records each hold until `stop`.
async fn client(
    proxy: std::net::SocketAddr,
    keys: Vec<String>,
    seed: usize,
    stop: Instant,
) -> Vec<Hold> {
    const TTL_MS: u64 = 1_000;
    let mut c = Conn::connect(proxy).await;
    let mut holds = Vec::new();
    let mut n = seed;
    while Instant::now() < stop {
        n = n.wrapping_mul(31).wrapping_add(7);
        let key = &keys[n % keys.len()];
        let sent = Instant::now();
        let reply = c.call(&["LOCK", key, &TTL_MS.to_string(), "FENCE"]).await;
        let got = Instant::now();
        let text = flatten(&reply);
        let Some((token, fence)) = text.split_once(' ').filter(|(t, _)| t.len() == 32) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let (token, fence) = (token.to_owned(), fence.parse().unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
        let released = Instant::now();
        c.call(&["UNLOCK", key, &token]).await;
        // The validity the proxy promised at most: the TTL from the request's start less the
        // clock drift allowance (1% + 2 ms).
        let validity = sent + Duration::from_millis(TTL_MS - TTL_MS / 100 - 2);
        holds.push(Hold {
            key: key.clone(),
            fence,
            from: got,
            until: released.min(validity),
        });
    }
    holds
}

/// Overlapping holds of one key, and fences that fail to rise in real-time order.
fn check(mut holds: Vec<Hold>) -> (usize, usize) {
    holds.sort_by_key(|h| h.from);
    let mut by_key: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for h in &holds {
        by_key.entry(&h.key).or_default().push(h);
    }
    let (mut overlaps, mut regressions) = (0, 0);
    for list in by_key.values() {
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if b.from < a.until {
                    overlaps += 1;
                }
                if b.from >= a.until && b.fence <= a.fence {
                    regressions += 1;
                }
            }
        }
    }
    (overlaps, regressions)
}

/// Moves the slot of each of `keys` away from its master in `cluster` by hand, as
/// `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE, NODE), while clients use
/// them; then back. Returns the slots moved.
fn move_slots(cluster: &RedisCluster, keys: &[String]) -> usize {
    let mut moved = 0;
    for round in 0..2 {
        for k in keys {
            let key = support::lock_key(k);
            let from = owner(cluster, &key);
            let masters = cluster.masters();
            let to = masters
                [(masters.iter().position(|p| *p == from).unwrap() + 1 + round) % masters.len()];
            if to == from {
                continue;
            }
            let slot = cli(from, &["CLUSTER", "KEYSLOT", &key]).trim().to_owned();
            move_slot(cluster, &slot, from, to);
            moved += 1;
        }
    }
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moving_and_a_failover_under_traffic_grant_no_lock_twice_and_keep_fences_rising() {
    let c = clusters(3, true);
    let short = |cfg: &mut redlock_proxy::config::Config| {
        cfg.redlock.max_ttl_ms = 3_000;
        cfg.redlock.master_deadline_ms = 500;
    };
    let a = support::proxy_on(addrs(&c), true, short).await;
    let b = support::proxy_on(addrs(&c), true, short).await;
    // Three keys among the lowest slots, which `redis-cli --cluster reshard` moves first, and
    // three anywhere.
    let low = (0..100_000)
        .map(|i| format!("h{i}"))
        .filter(|k| slot(support::lock_key(k).as_bytes()) < RESHARDED)
        .take(3);
    let keys: Vec<String> = low.chain((0..3).map(|i| format!("any{i}"))).collect();
    let stop = Instant::now() + Duration::from_secs(8);
    let mut clients = Vec::new();
    for i in 0..8 {
        let proxy = if i % 2 == 0 { a.addr } else { b.addr };
        clients.push(tokio::spawn(client(proxy, keys.clone(), i, stop)));
    }
    // Slots of every key move in the second cluster; the first fails over its first shard; the
    // third reshards the lowest slots of its first shard with redis-cli.
    let (moving, failing, resharding) = (&c[1], &c[0], &c[2]);
    let (moved, promoted, resharded) = std::thread::scope(|s| {
        let moves = s.spawn(|| move_slots(moving, &keys));
        let reshard = s.spawn(|| {
            let (from, to) = (resharding.nodes[0].port(), resharding.nodes[1].port());
            let out = std::process::Command::new("redis-cli")
                .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
                .args(["--cluster-from", &resharding.id(from)])
                .args(["--cluster-to", &resharding.id(to)])
                .args(["--cluster-slots", &RESHARDED.to_string(), "--cluster-yes"])
                .output()
                .expect("redis-cli");
            // The first key's slot went with the rest.
            out.status.success()
                && cli(from, &["GET", &support::lock_key(&keys[0])]).contains("MOVED")
        });
        let failover = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(1_500));
            let replica = failing.nodes[3].port();
            cli(replica, &["CLUSTER", "FAILOVER"]);
            failing.until("the replica is promoted", || {
                cli(replica, &["ROLE"]).starts_with("master")
            });
            true
        });
        let resharded = reshard.join().unwrap();
        (moves.join().unwrap(), failover.join().unwrap(), resharded)
    });
    let mut holds = Vec::new();
    for cl in clients {
        holds.extend(cl.await.unwrap());
    }
    let (overlaps, regressions) = check(holds.clone());
    println!(
        "{} holds, {moved} slot moves, failover {promoted}, reshard {resharded}: {overlaps} \
         double grants, {regressions} fence regressions",
        holds.len()
    );
    assert!(moved >= 6 && promoted && resharded);
    assert!(holds.len() > 50, "{} holds", holds.len());
    assert_eq!((overlaps, regressions), (0, 0));
    a.stop().await;
    b.stop().await;
}
