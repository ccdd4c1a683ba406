//! Faults on real masters: killed, hung (SIGSTOP), restarted. A dead master costs nothing, a
//! hung one at most the per-master deadline, and too few masters give NOQUORUM, not a hang.

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp3::types::OwnedFrame;
use redlock_proxy::embedded::RedisServer;
use support::{TestProxy, error, flatten, int, is_null, text};

/// Resumes paused masters even when an assertion fails, so their drop can kill them.
struct Paused<'a>(&'a [RedisServer]);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.iter().for_each(RedisServer::resume);
    }
}

/// Waits (bounded) until INFO shows `count` masters up.
async fn wait_masters_up(p: &TestProxy, count: usize) {
    p.wait_for_masters_line(&format!("masters_up:{count}"))
        .await;
}

#[tokio::test]
async fn one_of_three_killed_still_grants_and_releases() {
    let mut m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    m[0].kill();
    let token = text(&c.call(&["LOCK", "k", "5000"]).await);
    assert!(is_null(&c.call(&["LOCK", "k", "5000"]).await));
    assert!(int(&c.call(&["LOCKTTL", "k"]).await) > 4_000);
    assert_eq!(int(&c.call(&["EXTEND", "k", &token, "5000"]).await), 1);
    assert_eq!(int(&c.call(&["UNLOCK", "k", &token]).await), 1);
    wait_masters_up(&p, 2).await;
    let info = flatten(&c.call(&["INFO", "masters"]).await);
    assert!(
        info.contains("master0:") && info.contains("state=down"),
        "{info}"
    );
    p.stop().await;
}

#[tokio::test]
async fn two_of_three_killed_is_noquorum_for_every_lock_command() {
    let mut m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let token = text(&c.call(&["LOCK", "k", "5000"]).await);
    m[0].kill();
    m[1].kill();
    let expected = "NOQUORUM 1 of 3 masters answered, 2 needed";
    assert_eq!(error(&c.call(&["LOCK", "j", "5000"]).await), expected);
    assert_eq!(error(&c.call(&["UNLOCK", "k", &token]).await), expected);
    assert_eq!(
        error(&c.call(&["EXTEND", "k", &token, "5000"]).await),
        expected
    );
    assert_eq!(error(&c.call(&["LOCKTTL", "k"]).await), expected);
    // The connection and the proxy live on.
    c.roundtrip(&["PING"], b"+PONG\r\n").await;
    let stats = flatten(&c.call(&["INFO", "stats"]).await);
    assert!(stats.contains("noquorum_replies:4"), "{stats}");
    p.stop().await;
}

#[tokio::test]
async fn a_hung_master_costs_a_lock_at_most_its_deadline() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| c.redlock.master_deadline_ms = 50).await;
    let mut c = p.conn().await;
    let _resume = Paused(&m);
    m[2].pause();
    let deadline = Duration::from_millis(50);
    let margin = Duration::from_millis(150);
    for i in 0..20 {
        let key = format!("k{i}");
        let start = Instant::now();
        let token = text(&c.call(&["LOCK", &key, "5000"]).await);
        assert!(
            start.elapsed() < deadline + margin,
            "LOCK took {:?}",
            start.elapsed()
        );
        let start = Instant::now();
        assert_eq!(int(&c.call(&["UNLOCK", &key, &token]).await), 1);
        assert!(
            start.elapsed() < deadline + margin,
            "UNLOCK took {:?}",
            start.elapsed()
        );
    }
    // With two hung, nothing can be decided: NOQUORUM after the deadline, not a hang.
    m[1].pause();
    let start = Instant::now();
    let err = error(&c.call(&["LOCK", "x", "5000"]).await);
    let took = start.elapsed();
    assert_eq!(err, "NOQUORUM 1 of 3 masters answered, 2 needed");
    assert!(
        took >= deadline && took < deadline + margin,
        "took {took:?}"
    );
    // Replies behind a slow one keep their order.
    c.send_cmd(&["LOCK", "y", "5000"]).await;
    c.send_cmd(&["PING"]).await;
    assert!(error(&c.reply().await).starts_with("NOQUORUM"));
    c.expect(b"+PONG\r\n").await;
    p.stop().await;
}

#[tokio::test]
async fn a_hung_master_cannot_pile_up_requests() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| {
        c.backend.connections_per_master = 1;
        c.backend.max_pending_per_connection = 64;
    })
    .await;
    let _resume = Paused(&m);
    m[0].pause();
    let mut c = p.conn().await;
    // Waves of 50 stay under the healthy masters' bound; the hung one fills up and then
    // refuses at once instead of queueing without end.
    for wave in 0..6 {
        let mut batch = String::new();
        for i in 0..50 {
            batch.push_str(&format!(
                "*3\r\n$4\r\nLOCK\r\n$4\r\nq{wave}{i:02}\r\n$4\r\n5000\r\n"
            ));
        }
        c.send(batch.as_bytes()).await;
        for i in 0..50 {
            assert_eq!(text(&c.reply().await).len(), 32, "LOCK {wave}/{i}");
        }
    }
    let info = flatten(&c.call(&["INFO", "masters"]).await);
    let master0 = info
        .split("\r\n")
        .find(|l| l.starts_with("master0:"))
        .unwrap()
        .to_owned();
    let pending: usize = master0
        .split(',')
        .find_map(|kv| kv.strip_prefix("pending="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=64).contains(&pending), "{master0}");
    p.stop().await;
}

#[tokio::test]
async fn a_restarted_master_is_quarantined_then_used_again() {
    let mut m = support::masters(3);
    let p = support::proxy_for_restarts(&m).await;
    let mut c = p.conn().await;
    m[0].kill();
    wait_masters_up(&p, 2).await;
    m[0].restart().expect("restart on the same port");
    wait_masters_up(&p, 3).await;
    // Up, but younger than max-ttl-ms: it may have lost live locks, so it must not vote.
    let info = flatten(&c.call(&["INFO", "masters"]).await);
    assert!(info.contains("masters_voting:2"), "{info}");
    assert!(info.contains("state=quarantined"), "{info}");
    m[1].kill();
    assert_eq!(
        error(&c.call(&["LOCK", "k", "1000"]).await),
        "NOQUORUM 1 of 3 masters answered, 2 needed"
    );
    // Once it has been up for max-ttl-ms it votes again (bounded wait: 1 s quarantine).
    let mut token = None;
    for _ in 0..300 {
        let reply = c.call(&["LOCK", "k", "1000"]).await;
        if let OwnedFrame::BlobString { .. } = reply {
            token = Some(text(&reply));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = token.expect("granted once the quarantine ended");
    let mut direct = support::Conn::connect(([127, 0, 0, 1], m[0].port()).into()).await;
    assert_eq!(
        text(&direct.call(&["GET", &support::lock_key("k")]).await),
        token
    );
    let info = flatten(&c.call(&["INFO", "masters"]).await);
    assert!(
        info.contains("reconnects=1") || info.contains("reconnects=2"),
        "{info}"
    );
    p.stop().await;
}
