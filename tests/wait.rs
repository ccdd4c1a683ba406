//! `LOCK key ttl WAIT ms`: waiting without polling. A release through any proxy wakes waiters
//! on every proxy at once; waiters on one proxy are served first come, first served; an expired
//! holder is noticed by the timer fallback; the wait ends in null.

mod support;

use std::time::{Duration, Instant};

use support::{is_null, text};

#[tokio::test]
async fn a_release_through_another_proxy_wakes_the_waiter_at_once() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let mut holder = a.conn().await;
    let mut waiter = b.conn().await;
    let token = text(&holder.call(&["LOCK", "w", "10000"]).await);
    waiter
        .send_cmd(&["LOCK", "w", "5000", "WAIT", "4000"])
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.roundtrip(&["UNLOCK", "w", &token], b":1\r\n").await;
    let released = Instant::now();
    let granted = text(&waiter.reply().await);
    let latency = released.elapsed();
    assert_eq!(granted.len(), 32);
    // The timer fallback would take a second; the announcement takes a round trip or two.
    assert!(
        latency < Duration::from_millis(300),
        "woke after {latency:?}"
    );
    assert!(is_null(&holder.call(&["LOCK", "w", "1000"]).await));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let mut holder = a.conn().await;
    let token = text(&holder.call(&["LOCK", "q", "10000"]).await);
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let mut w = b.conn().await;
        w.send_cmd(&["LOCK", "q", "10000", "WAIT", "8000"]).await;
        // Each joins the line before the next one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiters.push(w);
    }
    // INFO counts the waits as blocked clients (bounded poll: the last may still be joining).
    let mut info = b.conn().await;
    let mut seen = String::new();
    for _ in 0..200 {
        seen = text(&info.call(&["INFO", "clients"]).await);
        if seen.contains("blocked_clients:3\r\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.contains("blocked_clients:3\r\n"), "{seen}");
    holder.roundtrip(&["UNLOCK", "q", &token], b":1\r\n").await;
    for (i, w) in waiters.iter_mut().enumerate() {
        let token = text(&w.reply().await);
        assert_eq!(token.len(), 32, "waiter {i}");
        // Hold briefly, then hand over to the next in line.
        tokio::time::sleep(Duration::from_millis(30)).await;
        w.roundtrip(&["UNLOCK", "q", &token], b":1\r\n").await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_expiring_holder_is_noticed_without_any_release() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut holder = p.conn().await;
    text(&holder.call(&["LOCK", "e", "300"]).await);
    let mut waiter = p.conn().await;
    let start = Instant::now();
    let token = text(&waiter.call(&["LOCK", "e", "5000", "WAIT", "3000"]).await);
    assert_eq!(token.len(), 32);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1_500),
        "took {waited:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn the_wait_ends_in_null_and_options_combine() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, support::short_sessions).await;
    let mut holder = p.conn().await;
    let token = text(&holder.call(&["LOCK", "t", "10000"]).await);
    let mut waiter = p.conn().await;
    let start = Instant::now();
    assert!(is_null(
        &waiter.call(&["LOCK", "t", "1000", "WAIT", "200"]).await
    ));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    // WAIT 0 is a single try.
    assert!(is_null(
        &waiter.call(&["LOCK", "t", "1000", "WAIT", "0"]).await
    ));
    // SESSION with WAIT: granted after the wait, released when the waiter's connection ends.
    waiter
        .send_cmd(&["LOCK", "t", "300", "SESSION", "WAIT", "3000"])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.roundtrip(&["UNLOCK", "t", &token], b":1\r\n").await;
    assert_eq!(text(&waiter.reply().await).len(), 32);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        is_null(&holder.call(&["LOCK", "t", "1000"]).await),
        "kept alive past its TTL"
    );
    drop(waiter);
    let mut freed = false;
    for _ in 0..100 {
        if !is_null(&holder.call(&["LOCK", "t", "1000"]).await) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed);
    let bad = b"-ERR invalid WAIT timeout in 'lock' command: must be between 0 and 3600000 ms\r\n";
    holder
        .roundtrip(&["LOCK", "x", "1000", "WAIT", "-1"], bad)
        .await;
    holder
        .roundtrip(&["LOCK", "x", "1000", "WAIT", "3600001"], bad)
        .await;
    holder
        .roundtrip(
            &["LOCK", "x", "1000", "WAIT", "soon"],
            b"-ERR value is not an integer or out of range\r\n",
        )
        .await;
    holder
        .roundtrip(&["LOCK", "x", "1000", "WAIT"], b"-ERR syntax error\r\n")
        .await;
    holder
        .roundtrip(
            &["LOCK", "x", "1000", "WAIT", "1", "WAIT", "1"],
            b"-ERR syntax error\r\n",
        )
        .await;
    p.stop().await;
}

#[tokio::test]
async fn releases_are_announced_only_while_someone_waits() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut listener = support::Conn::connect(([127, 0, 0, 1], m[0].port()).into()).await;
    listener.call(&["SUBSCRIBE", "redlock:released"]).await;
    let mut c = p.conn().await;
    // Nobody waits for "quiet": its release is not published.
    let token = text(&c.call(&["LOCK", "quiet", "10000"]).await);
    c.roundtrip(&["UNLOCK", "quiet", &token], b":1\r\n").await;
    // Someone waits for "loud": its release is.
    let token = text(&c.call(&["LOCK", "loud", "10000"]).await);
    let mut waiter = p.conn().await;
    waiter
        .send_cmd(&["LOCK", "loud", "5000", "WAIT", "4000"])
        .await;
    // The waiter sets its marker on the masters after its first attempt is refused.
    let marker = &support::marker_key("loud");
    let mut master = support::Conn::connect(([127, 0, 0, 1], m[0].port()).into()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::int(&master.call(&["EXISTS", marker]).await) == 0 {
        assert!(Instant::now() < deadline, "no waiting marker");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.roundtrip(&["UNLOCK", "loud", &token], b":1\r\n").await;
    assert_eq!(text(&waiter.reply().await).len(), 32);
    // The first message on the channel is the waited-for key.
    let message = support::flatten(&listener.reply().await);
    assert!(message.contains(&support::lock_key("loud")), "{message}");
    assert!(!message.contains("quiet"), "{message}");
    p.stop().await;
}

/// Issue row 2: a waiter that sent `LOCK ... WAIT` and closed its socket. Its wait ends at
/// once: its slot in `max_clients` is free again, its waiting marker leaves the masters, and
/// when the holder's lock expires the next client takes it, not the departed waiter.
#[tokio::test]
async fn a_waiter_that_leaves_takes_nothing_and_frees_its_slot() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| c.server.max_clients = 3).await;
    let mut holder = p.conn().await;
    text(&holder.call(&["LOCK", "gone", "1500"]).await);
    let mut waiter = p.conn().await;
    waiter
        .send_cmd(&["LOCK", "gone", "5000", "WAIT", "5000"])
        .await;
    // The waiter's marker is on every master once its first attempt was refused.
    let marker = &support::marker_key("gone");
    let mut masters = Vec::new();
    for master in &m {
        masters.push(support::Conn::connect(([127, 0, 0, 1], master.port()).into()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for master in &mut masters {
        while support::int(&master.call(&["EXISTS", marker]).await) == 0 {
            assert!(Instant::now() < deadline, "no waiting marker");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    drop(waiter);
    // Well before the wait (5 s) or the holder's lock (1.5 s) would end.
    let left = Instant::now();
    let within = Duration::from_millis(1_000);
    let connected = |info: &str| info.contains("\r\nconnected_clients:1\r\n");
    while !connected(&support::flatten(&holder.call(&["INFO", "clients"]).await)) {
        assert!(
            left.elapsed() < within,
            "the waiter's connection still counts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for master in &mut masters {
        while support::int(&master.call(&["EXISTS", marker]).await) == 1 {
            assert!(left.elapsed() < within, "the waiting marker stayed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Its slot is free: two more connections fit under max_clients = 3.
    let mut third = p.conn().await;
    let mut fourth = p.conn().await;
    fourth.roundtrip(&["PING"], b"+PONG\r\n").await;
    // The holder's lock expires; the third client takes it.
    let expired = Instant::now() + Duration::from_secs(4);
    loop {
        let reply = third.call(&["LOCK", "gone", "5000"]).await;
        if !is_null(&reply) {
            assert_eq!(text(&reply).len(), 32);
            break;
        }
        assert!(
            Instant::now() < expired,
            "the lock never came free: the departed waiter took it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.stop().await;
}

/// The same departure while the proxy is not reading the waiter: a reply held behind the
/// blocked wait took it past its output soft mark, and its next request waits unread in the
/// socket. The close, which arrives behind that request, is still noticed at once.
#[tokio::test]
async fn a_waiter_that_leaves_while_not_read_is_noticed() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| c.server.client_output_soft_bytes = 64 * 1024).await;
    let mut holder = p.conn().await;
    let token = text(&holder.call(&["LOCK", "unread", "10000"]).await);
    let mut waiter = p.conn().await;
    waiter
        .send_cmd(&["LOCK", "unread", "10000", "WAIT", "8000"])
        .await;
    waiter.send_cmd(&["ECHO", &"x".repeat(64 * 1024)]).await;
    waiter.send_cmd(&["PING"]).await;
    drop(waiter);
    let left = Instant::now();
    let connected = |info: &str| info.contains("\r\nconnected_clients:1\r\n");
    while !connected(&support::flatten(&holder.call(&["INFO", "clients"]).await)) {
        assert!(
            left.elapsed() < Duration::from_secs(1),
            "the waiter's connection still counts"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder
        .roundtrip(&["UNLOCK", "unread", &token], b":1\r\n")
        .await;
    assert_eq!(
        text(&holder.call(&["LOCK", "unread", "1000"]).await).len(),
        32
    );
    p.stop().await;
}
