//! Masters as production runs them, with real processes: a failover behind one address (each
//! master behind a switchable forwarder standing for a DNS name or virtual IP, moved to a
//! replica that missed the latest lock), a master that may evict keys, a master demoted to a
//! replica. None of them may help grant a lock twice.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis_protocol::resp3::types::OwnedFrame;
use redlock_proxy::config::{Config, MasterAddr};
use redlock_proxy::embedded::RedisServer;
use redlock_proxy::embedded::forward::Forwarder;
use support::{Conn, error, flatten, is_null, text};

const MAX_TTL_MS: u64 = 3_000;

/// `field` of a Redis server's `INFO section`.
async fn info_field(c: &mut Conn, section: &str, field: &str) -> String {
    let info = flatten(&c.call(&["INFO", section]).await);
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .to_owned()
}

/// A test proxy's masters behind `forwarders`, with a short max-ttl, quick reconnects and
/// health checks.
fn through(cfg: &mut Config, forwarders: [&Forwarder; 3]) {
    cfg.backend.masters = forwarders
        .iter()
        .map(|f| MasterAddr::local(f.addr().port()))
        .collect();
    cfg.redlock.max_ttl_ms = MAX_TTL_MS;
    cfg.backend.reconnect_min_ms = 10;
    cfg.backend.reconnect_max_ms = 100;
    cfg.backend.health_check_ms = 20;
}

/// Asserts that `again`, a second `LOCK` of a key granted at `granted` with `token`, was not
/// granted while the first lock was surely still valid.
fn assert_not_granted_again(again: &OwnedFrame, granted: Instant, token: &str) {
    assert!(
        granted.elapsed() < Duration::from_millis(MAX_TTL_MS / 2),
        "too slow to test: the first lock may have expired"
    );
    let again_text = flatten(again);
    assert!(
        is_null(again),
        "granted twice: {again_text} (first holder {token})"
    );
}

/// Waits (bounded, about 10 s) until `cond` (which may await) holds.
macro_rules! until {
    ($what:expr, $cond:expr) => {{
        let mut held = false;
        for _ in 0..1_000 {
            if $cond {
                held = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(held, "never: {}", $what);
    }};
}

#[tokio::test]
async fn a_failover_to_a_lagging_replica_does_not_grant_a_held_lock_again() {
    let m = support::masters(4);
    let (a, b, c, d) = (&m[0], &m[1], &m[2], &m[3]);
    // D, a replica of A, is promoted before the lock is taken: it will not have it.
    let mut on_d = Conn::connect(d.socket_addr()).await;
    let a_port = a.port().to_string();
    on_d.call(&["REPLICAOF", "127.0.0.1", &a_port]).await;
    until!(
        "D replicates A",
        info_field(&mut on_d, "replication", "master_link_status").await == "up"
    );
    on_d.call(&["REPLICAOF", "NO", "ONE"]).await;
    let d_run = info_field(&mut on_d, "server", "run_id").await;
    aged(&mut on_d).await;

    let fa = Forwarder::start(a.socket_addr()).await;
    let fb = Forwarder::start(b.socket_addr()).await;
    let fc = Forwarder::start(c.socket_addr()).await;
    let p = support::proxy_with(&m[..3], |cfg| through(cfg, [&fa, &fb, &fc])).await;
    let mut client = p.conn().await;

    // C unreachable: the lock lives on A and B only.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    fc.switch(nowhere);
    p.wait_for_masters_line("masters_up:2").await;
    let ttl = MAX_TTL_MS.to_string();
    let token = text(&client.call(&["LOCK", "k", &ttl]).await);
    let granted = Instant::now();
    fc.switch(c.socket_addr());
    p.wait_for_masters_line("masters_up:3").await;

    // A's address fails over to D.
    fa.switch(d.socket_addr());
    let d_line = format!("run_id={d_run},");
    until!(
        "the proxy reaches D at A's address",
        flatten(&client.call(&["INFO", "masters"]).await).contains(&d_line)
    );

    // D (no lock, long uptime) and C (never got it) must not make a second holder.
    let again = client.call(&["LOCK", "k", &ttl]).await;
    assert_not_granted_again(&again, granted, &token);
    let info = flatten(&client.call(&["INFO", "masters"]).await);
    let master0 = info.lines().find(|l| l.starts_with("master0:")).unwrap();
    assert!(master0.contains("state=quarantined"), "{master0}");
    p.stop().await;
}

#[tokio::test]
async fn masters_that_may_evict_or_are_replicas_do_not_vote() {
    let mut m = support::masters(4);
    let p = support::proxy_with(&m[..3], |cfg| cfg.backend.health_check_ms = 20).await;
    let mut client = p.conn().await;
    // One master dead, one that may evict lock keys: one safe master is not a quorum.
    m[2].kill();
    p.wait_for_masters_line("masters_up:2").await;
    let mut on_a = Conn::connect(m[0].socket_addr()).await;
    on_a.call(&["CONFIG", "SET", "maxmemory", "100mb"]).await;
    on_a.call(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .await;
    p.wait_for_masters_line("masters_voting:1").await;
    let refused = client.call(&["LOCK", "k", "5000"]).await;
    assert!(error(&refused).starts_with("NOQUORUM "), "{refused:?}");
    let info = flatten(&client.call(&["INFO", "masters"]).await);
    assert!(
        info.contains("master0:") && info.contains("state=evicting"),
        "{info}"
    );
    // A policy that evicts nothing: it votes again.
    on_a.call(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    p.wait_for_masters_line("masters_voting:2").await;
    assert!(!is_null(&client.call(&["LOCK", "k", "5000"]).await));
    // A master demoted to a replica of another server does not vote.
    let mut on_b = Conn::connect(m[1].socket_addr()).await;
    let other = m[3].port().to_string();
    on_b.call(&["REPLICAOF", "127.0.0.1", &other]).await;
    p.wait_for_masters_line("masters_voting:1").await;
    let info = flatten(&client.call(&["INFO", "masters"]).await);
    let master1 = info.lines().find(|l| l.starts_with("master1:")).unwrap();
    // The state may read `down` for a moment: a replica is dialled again, in case its name
    // moved to the new primary. The rule holding it out stays named.
    assert!(master1.contains("reason=replica"), "{master1}");
    p.stop().await;
}

/// Waits (bounded) until the server behind `on`, and every one started before it, is older than
/// max-ttl-ms (and the second by which Redis's uptime may overstate), so the uptime rule alone
/// would let them all vote.
async fn aged(on: &mut Conn) {
    until!("the servers are older than max-ttl", {
        let up = info_field(on, "server", "uptime_in_seconds").await;
        up.parse::<u64>().unwrap_or(0) * 1_000 >= MAX_TTL_MS + 1_000
    });
}

/// Waits (bounded) until the proxy has written its run marker on `on`.
async fn marker_written(on: &mut Conn) {
    until!(
        "the run marker is written",
        !is_null(&on.call(&["GET", "redlock:run"]).await)
    );
}

/// `field` of master `i`'s line in a proxy's `INFO masters`.
async fn master_field(p: &support::TestProxy, i: usize, field: &str) -> String {
    let info = flatten(&p.conn().await.call(&["INFO", "masters"]).await);
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix(&format!("master{i}:")))
        .unwrap_or_default();
    line.split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_flush_on_two_masters_does_not_grant_a_held_lock_again() {
    let m = support::masters(3);
    let mut on_a = Conn::connect(m[0].socket_addr()).await;
    let mut on_b = Conn::connect(m[1].socket_addr()).await;
    aged(&mut Conn::connect(m[2].socket_addr()).await).await;
    // Health checks a minute apart: only the check each acquire makes can see the flush in time.
    let long = |cfg: &mut Config| {
        cfg.backend.health_check_ms = 60_000;
        cfg.redlock.max_ttl_ms = MAX_TTL_MS;
    };
    let p = support::proxy_with(&m, long).await;
    let mut client = p.conn().await;
    marker_written(&mut on_a).await;
    marker_written(&mut on_b).await;
    let ttl = MAX_TTL_MS.to_string();
    let token = text(&client.call(&["LOCK", "k", &ttl]).await);
    let granted = Instant::now();
    on_a.call(&["FLUSHALL"]).await;
    on_b.call(&["FLUSHALL"]).await;
    // At once, before any health check: the flushed masters' votes fail.
    let again = client.call(&["LOCK", "k", &ttl]).await;
    assert!(
        granted.elapsed() < Duration::from_millis(MAX_TTL_MS / 2),
        "too slow to test: the first lock may have expired"
    );
    assert!(
        !is_granted(&again),
        "granted twice: {again:?} (first holder {token})"
    );
    // The failed votes woke the health check: both sit out a quarantine recorded on themselves.
    p.wait_for_masters_line("masters_voting:1").await;
    assert_eq!(master_field(&p, 0, "reason").await, "flushed");
    // A proxy that never saw the flush holds them out until the same end.
    let second = strict_proxy(&m, long).await;
    second.wait_for_masters_line("masters_voting:1").await;
    assert_eq!(master_field(&second, 0, "reason").await, "recorded");
    let left = |s: String| s.parse::<i64>().unwrap();
    let (first_left, second_left) = (
        left(master_field(&p, 1, "quarantine_left_ms").await),
        left(master_field(&second, 1, "quarantine_left_ms").await),
    );
    assert!(
        second_left > 0 && (first_left - second_left).abs() < 500,
        "the proxies disagree on the quarantine's end: {first_left} ms and {second_left} ms left"
    );
    second.stop().await;
    p.stop().await;
}

/// A proxy over `m` that trusts no master as new (as in production), once all three are up.
async fn strict_proxy(m: &[RedisServer], tweak: impl FnOnce(&mut Config)) -> support::TestProxy {
    let p = support::proxy_with(m, |cfg| {
        tweak(cfg);
        cfg.backend.fresh_at_start = false;
    })
    .await;
    p.wait_for_masters_line("masters_up:3").await;
    p
}

/// True when a `LOCK` reply is a token.
fn is_granted(reply: &OwnedFrame) -> bool {
    !is_null(reply) && !flatten(reply).starts_with("NOQUORUM")
}

#[tokio::test]
async fn masters_without_a_run_marker_sit_out_unless_the_deployment_is_new() {
    let m = support::masters(3);
    aged(&mut Conn::connect(m[2].socket_addr()).await).await;
    let short = |cfg: &mut Config| cfg.redlock.max_ttl_ms = MAX_TTL_MS;
    // Old enough to vote, but nothing vouches for their data: new or flushed, nobody can tell.
    let strict = strict_proxy(&m, short).await;
    strict.wait_for_masters_line("masters_voting:0").await;
    assert_eq!(master_field(&strict, 0, "reason").await, "unmarked");
    let refused = strict.conn().await.call(&["LOCK", "k", "1000"]).await;
    assert!(flatten(&refused).starts_with("NOQUORUM"), "{refused:?}");
    strict.stop().await;
    // The operator says they are new (or the proxy started them): they vote at once.
    let m = support::masters(3);
    let trusting = support::proxy_with(&m, short).await;
    trusting.wait_for_masters_line("masters_voting:3").await;
    let granted = trusting.conn().await.call(&["LOCK", "k", "1000"]).await;
    assert!(is_granted(&granted), "{granted:?}");
    trusting.stop().await;
}

#[tokio::test]
async fn a_proxy_started_after_a_failover_does_not_grant_a_held_lock_again() {
    let mut m = support::masters(4);
    let mut on_d = Conn::connect(m[3].socket_addr()).await;
    aged(&mut on_d).await;
    let fa = Forwarder::start(m[0].socket_addr()).await;
    let fb = Forwarder::start(m[1].socket_addr()).await;
    let fc = Forwarder::start(m[2].socket_addr()).await;
    let first = support::proxy_with(&m[..3], |cfg| through(cfg, [&fa, &fb, &fc])).await;
    let mut on_a = Conn::connect(m[0].socket_addr()).await;
    marker_written(&mut on_a).await;
    marker_written(&mut Conn::connect(m[2].socket_addr()).await).await;
    // D copies A, marker included, and is promoted before the lock is taken.
    let a_port = m[0].port().to_string();
    on_d.call(&["REPLICAOF", "127.0.0.1", &a_port]).await;
    until!(
        "D replicates A",
        info_field(&mut on_d, "replication", "master_link_status").await == "up"
    );
    on_d.call(&["REPLICAOF", "NO", "ONE"]).await;
    // C unreachable: the lock lives on A and B.
    let mut client = first.conn().await;
    fc.switch(SocketAddr::from(([127, 0, 0, 1], support::free_port())));
    first.wait_for_masters_line("masters_up:2").await;
    let ttl = MAX_TTL_MS.to_string();
    let token = text(&client.call(&["LOCK", "k", &ttl]).await);
    let granted = Instant::now();
    fc.switch(m[2].socket_addr());
    first.wait_for_masters_line("masters_up:3").await;
    drop(client);
    first.stop().await;

    // A fails over to D; a new proxy, which never saw A, starts behind the same addresses.
    fa.switch(m[3].socket_addr());
    m[0].kill();
    let second = support::proxy_with(&m[..3], |cfg| {
        through(cfg, [&fa, &fb, &fc]);
        cfg.backend.fresh_at_start = false;
    })
    .await;
    second.wait_for_masters_line("masters_up:3").await;
    let mut client = second.conn().await;
    let again = client.call(&["LOCK", "k", &ttl]).await;
    assert_not_granted_again(&again, granted, &token);
    second.stop().await;
}

/// A proxy over one master behind a host name (a forwarder); `fault` makes the old server
/// unfit while the name is pointed at a new one (open connections stay with the old server, as
/// with a changed DNS record). Asserts the proxy reaches the new server.
async fn follows_a_moved_name(fault: impl AsyncFnOnce(&[RedisServer])) {
    let m = support::masters(2);
    let mut on_new = Conn::connect(m[1].socket_addr()).await;
    let new_run = info_field(&mut on_new, "server", "run_id").await;
    let name = Forwarder::start(m[0].socket_addr()).await;
    let p = support::proxy_with(&m[..1], |cfg| {
        cfg.backend.masters = vec![MasterAddr::local(name.addr().port())];
        cfg.backend.health_check_ms = 20;
        cfg.backend.health_timeout_ms = 200;
        cfg.backend.reconnect_min_ms = 10;
        cfg.backend.reconnect_max_ms = 100;
    })
    .await;
    name.point(m[1].socket_addr());
    fault(&m).await;
    until!(
        "the proxy reaches the server the name now points at",
        master_field(&p, 0, "run_id").await == new_run
    );
    m[0].resume();
    p.stop().await;
}

#[tokio::test]
async fn a_hung_master_whose_name_moved_is_dialled_again() {
    // The old server hangs with its connections open (keepalive probes still get answers from
    // its kernel): only the health check's deadline ends them.
    follows_a_moved_name(async |m: &[RedisServer]| m[0].pause()).await;
}

#[tokio::test]
async fn a_demoted_master_whose_name_moved_is_dialled_again() {
    // The old server lives on as a replica of the new one, answering every check.
    follows_a_moved_name(async |m: &[RedisServer]| {
        let port = m[1].port().to_string();
        let mut old = Conn::connect(m[0].socket_addr()).await;
        old.call(&["REPLICAOF", "127.0.0.1", &port]).await;
    })
    .await;
}
