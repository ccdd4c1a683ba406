//! `LOCK key ttl FENCE`: `[token, fence]`, with fences that strictly increase across successive
//! holders of a key through any proxy — also across a master that restarted empty, whose
//! counters are repaired from a majority before its reads count.

mod support;

use std::time::{Duration, Instant};

use redlock_proxy::backend::Master;
use support::{Conn, TestProxy, flatten, int, is_null, text};

/// Takes `key` with a fence through `c`; the token and the fence.
async fn fenced(c: &mut Conn, key: &str) -> (String, i64) {
    let reply = flatten(&c.call(&["LOCK", key, "900", "FENCE"]).await);
    let (token, fence) = reply.split_once(' ').unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(token.len(), 32, "{reply}");
    (token.to_owned(), fence.parse().unwrap())
}

async fn wait_voting(p: &TestProxy, count: usize) {
    p.wait_for_masters_line(&format!("masters_voting:{count}"))
        .await;
}

#[tokio::test]
async fn fences_increase_across_holders_and_proxies() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    let (token, fence) = fenced(&mut ca, "f").await;
    assert_eq!(fence, 1);
    assert!(is_null(&cb.call(&["LOCK", "f", "5000", "FENCE"]).await));
    // UNLOCK and EXTEND take the token alone.
    assert_eq!(int(&cb.call(&["EXTEND", "f", &token, "5000"]).await), 1);
    assert_eq!(int(&cb.call(&["UNLOCK", "f", &token]).await), 1);
    let mut last = 1;
    for round in 0..10 {
        let c = if round % 2 == 0 { &mut cb } else { &mut ca };
        let (token, fence) = fenced(c, "f").await;
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        assert_eq!(int(&c.call(&["UNLOCK", "f", &token]).await), 1);
    }
    // Keys have their own counters; a plain LOCK leaves them alone.
    assert_eq!(fenced(&mut ca, "other").await.1, 1);
    let plain = text(&ca.call(&["LOCK", "g", "5000"]).await);
    assert_eq!(int(&ca.call(&["UNLOCK", "g", &plain]).await), 1);
    assert_eq!(fenced(&mut ca, "g").await.1, 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn fences_survive_a_master_restarted_empty() {
    let mut m = support::masters(3);
    let p = support::proxy_for_restarts(&m).await;
    let mut c = p.conn().await;
    for _ in 0..5 {
        let (token, _) = fenced(&mut c, "r").await;
        assert_eq!(int(&c.call(&["UNLOCK", "r", &token]).await), 1);
    }
    m[0].kill();
    m[0].restart().unwrap();
    // Back, quarantined, then voting again: its counters are gone until a repair.
    wait_voting(&p, 2).await;
    wait_voting(&p, 3).await;
    let mut direct = Conn::connect(([127, 0, 0, 1], m[0].port()).into()).await;
    assert!(is_null(
        &direct.call(&["GET", &support::fence_key("r")]).await
    ));
    let (token, fence) = fenced(&mut c, "r").await;
    assert_eq!(fence, 6);
    assert_eq!(int(&c.call(&["UNLOCK", "r", &token]).await), 1);
    assert_eq!(
        text(&direct.call(&["GET", &support::fence_key("r")]).await),
        "6"
    );
    // Now the repaired master and one other are all that is left: still in order.
    m[1].kill();
    let (_, fence) = fenced(&mut c, "r").await;
    assert_eq!(fence, 7);
    p.stop().await;
}

#[tokio::test]
async fn fence_combines_with_wait() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut holder = p.conn().await;
    let (token, fence) = fenced(&mut holder, "w").await;
    let mut waiter = p.conn().await;
    waiter
        .send_cmd(&["LOCK", "w", "5000", "FENCE", "WAIT", "3000"])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(int(&holder.call(&["UNLOCK", "w", &token]).await), 1);
    let reply = flatten(&waiter.reply().await);
    let next: i64 = reply.split_once(' ').unwrap().1.parse().unwrap();
    assert_eq!(next, fence + 1);
    p.stop().await;
}

/// How long `count` fenced acquires (each followed by its release) on fresh keys take, each.
async fn fenced_latencies(c: &mut Conn, prefix: &str, count: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let start = Instant::now();
        let (token, _) = fenced(c, &key).await;
        took.push(start.elapsed());
        assert_eq!(int(&c.call(&["UNLOCK", &key, &token]).await), 1);
    }
    took.sort();
    took
}

/// Issue row 7: ~16k distinct FENCE keys, then one master restarted empty. The repair queued
/// every counter at once, overflowed the 4096 pending requests per connection, never finished,
/// and every `LOCK ... FENCE` then took 115–170 ms (each started the repair again). Now the
/// repair copies one page at a time and finishes; fenced acquires are fast again, and the
/// repaired master's counters answer for a quorum.
#[tokio::test]
async fn a_restarted_master_is_repaired_in_bounded_batches() {
    const KEYS: usize = 16_000;
    let mut m = support::masters(3);
    let p = support::proxy_for_restarts(&m).await;
    let mut c = p.conn().await;
    // Counters as 16k fenced grants would leave them (key i at fence i + 1), written straight
    // to the masters: a single MSET each instead of 32k rounds through the proxy.
    let mut mset = vec!["MSET".to_owned()];
    for i in 0..KEYS {
        mset.push(support::fence_key(&format!("f{i}")));
        mset.push((i + 1).to_string());
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    for master in &m {
        let mut direct = Conn::connect(([127, 0, 0, 1], master.port()).into()).await;
        assert_eq!(text(&direct.call(&mset).await), "OK");
    }
    let before = fenced_latencies(&mut c, "warm", 20).await;
    m[0].kill();
    m[0].restart().unwrap();
    wait_voting(&p, 2).await;
    wait_voting(&p, 3).await;
    // The first fenced acquire starts the repair; it goes on on its own.
    let start = Instant::now();
    let (token, fence) = fenced(&mut c, "f9").await;
    assert_eq!(fence, 11);
    assert_eq!(int(&c.call(&["UNLOCK", "f9", &token]).await), 1);
    let proxy = p.inner().shared().locks.clone();
    let mut repaired = None;
    for _ in 0..2_000 {
        if !proxy.masters()[0].fences_lost() {
            repaired = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let repaired = repaired.expect("the repair did not finish within 20 s");
    let mut direct = Conn::connect(([127, 0, 0, 1], m[0].port()).into()).await;
    let last = support::fence_key(&format!("f{}", KEYS - 1));
    assert_eq!(text(&direct.call(&["GET", &last]).await), KEYS.to_string());
    let after = fenced_latencies(&mut c, "cold", 20).await;
    let median = |l: &[Duration]| l[l.len() / 2];
    println!(
        "{KEYS} counters repaired in {repaired:?}; LOCK ... FENCE median {:?} before the \
         restart, {:?} after the repair",
        median(&before),
        median(&after)
    );
    assert!(
        repaired < Duration::from_secs(10),
        "repair took {repaired:?}"
    );
    assert!(
        median(&after) < Duration::from_millis(50).max(median(&before) * 5),
        "LOCK ... FENCE took {:?} after the repair, {:?} before",
        median(&after),
        median(&before)
    );
    // The repaired master answers for a quorum: with another one gone, fences still follow on.
    m[1].kill();
    let key = format!("f{}", KEYS - 1);
    let (_, fence) = fenced(&mut c, &key).await;
    assert_eq!(fence, i64::try_from(KEYS).unwrap() + 1);
    p.stop().await;
}

/// Fence counters no longer pile up for every key ever fenced: one unused for `fence_idle_ms`
/// is removed from the masters, and fences for its key still increase (the sweep raised the
/// floor to it before it could vanish).
#[tokio::test]
async fn idle_counters_expire_and_fences_keep_increasing() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| c.redlock.fence_idle_ms = 400).await;
    let mut c = p.conn().await;
    let mut last = 0;
    for _ in 0..3 {
        let (token, fence) = fenced(&mut c, "idle").await;
        assert!(fence > last, "fence {fence} after {last}");
        last = fence;
        assert_eq!(int(&c.call(&["UNLOCK", "idle", &token]).await), 1);
    }
    let (token, other) = fenced(&mut c, "other").await;
    assert_eq!(int(&c.call(&["UNLOCK", "other", &token]).await), 1);
    let mut direct = Vec::new();
    for master in &m {
        direct.push(Conn::connect(([127, 0, 0, 1], master.port()).into()).await);
    }
    let start = Instant::now();
    let mut gone = false;
    for _ in 0..500 {
        let mut left = 0;
        for d in &mut direct {
            let keys = d.call(&["KEYS", "redlock:{????}fence:*"]).await;
            left += flatten(&keys).split_whitespace().count();
        }
        if left == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gone,
        "fence counters still there after {:?}",
        start.elapsed()
    );
    println!("counters idle for 400 ms gone after {:?}", start.elapsed());
    // No counter left, and the next fences are still greater than any before.
    let (token, fence) = fenced(&mut c, "idle").await;
    assert!(fence > last, "fence {fence} after {last}: went back");
    assert_eq!(int(&c.call(&["UNLOCK", "idle", &token]).await), 1);
    let (_, again) = fenced(&mut c, "other").await;
    assert!(again > other, "fence {again} after {other}: went back");
    p.stop().await;
}
