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
    let p = support::proxy(&m).await;
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
    let marker = "redlock:waiting:0:loud";
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
    assert!(message.contains("redlock:0:loud"), "{message}");
    assert!(!message.contains("quiet"), "{message}");
    p.stop().await;
}
