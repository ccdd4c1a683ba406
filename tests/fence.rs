//! `LOCK key ttl FENCE`: `[token, fence]`, with fences that strictly increase across successive
//! holders of a key through any proxy — also across a master that restarted empty, whose
//! counters are repaired from a majority before its reads count.

mod support;

use std::time::Duration;

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
    assert!(is_null(&direct.call(&["GET", "redlock:fence:0:r"]).await));
    let (token, fence) = fenced(&mut c, "r").await;
    assert_eq!(fence, 6);
    assert_eq!(int(&c.call(&["UNLOCK", "r", &token]).await), 1);
    assert_eq!(text(&direct.call(&["GET", "redlock:fence:0:r"]).await), "6");
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
