//! Counting semaphores (`LOCK key ttl PERMITS n`) and read/write locks (`LOCK key ttl SHARED`)
//! through real proxies over real masters: the bound on holders, readers against writers, the
//! `WRONGTYPE` errors for a key used as two kinds, the writer's preference under `WAIT`,
//! `SESSION`, per-token `EXTEND` and `LOCKTTL`, and `INFO`'s counts per kind.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::{Conn, TestProxy, error, int, is_null, text};

/// `INFO stats` field `field` of `p`.
async fn info_stat(c: &mut Conn, field: &str) -> i64 {
    let info = text(&c.call(&["INFO", "stats"]).await);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Waits (bounded) until `p` has `n` blocked clients: its waits are in line.
async fn blocked(p: &TestProxy, n: usize) {
    let mut c = p.conn().await;
    let want = format!("blocked_clients:{n}\r\n");
    for _ in 0..500 {
        if text(&c.call(&["INFO", "clients"]).await).contains(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never {want}");
}

#[tokio::test]
async fn a_semaphore_admits_n_holders_through_any_proxy_and_no_more() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    let mut tokens = Vec::new();
    for i in 0..3 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let token = text(&c.call(&["LOCK", "jobs", "10000", "PERMITS", "3"]).await);
        assert!(token.ends_with(":3"), "{token}");
        tokens.push(token);
    }
    let slots: HashSet<&str> = tokens.iter().map(|t| &t[33..34]).collect();
    assert_eq!(slots.len(), 3, "each permit has its own slot: {tokens:?}");
    assert!(is_null(
        &ca.call(&["LOCK", "jobs", "10000", "PERMITS", "3"]).await
    ));
    assert!(is_null(
        &cb.call(&["LOCK", "jobs", "10000", "PERMITS", "3"]).await
    ));
    // Per token: EXTEND and LOCKTTL reach the permit's slot; a foreign token reaches nothing.
    assert_eq!(
        int(&cb.call(&["EXTEND", "jobs", &tokens[0], "20000"]).await),
        1
    );
    let left = int(&cb.call(&["LOCKTTL", "jobs", &tokens[0]]).await);
    assert!((10_000..=20_000).contains(&left), "{left}");
    assert_eq!(int(&cb.call(&["LOCKTTL", "jobs", "nope"]).await), -2);
    assert_eq!(int(&ca.call(&["UNLOCK", "jobs", "nope"]).await), 0);
    // A permit returned through the other proxy is free for the next taker.
    assert_eq!(int(&cb.call(&["UNLOCK", "jobs", &tokens[0]]).await), 1);
    assert_eq!(int(&cb.call(&["UNLOCK", "jobs", &tokens[0]]).await), 0);
    let again = text(&ca.call(&["LOCK", "jobs", "10000", "PERMITS", "3"]).await);
    assert_eq!(
        &again[33..34],
        &tokens[0][33..34],
        "the freed slot is the free one"
    );
    // PERMITS 1 is a mutex.
    let one = text(&ca.call(&["LOCK", "solo", "10000", "PERMITS", "1"]).await);
    assert!(is_null(
        &cb.call(&["LOCK", "solo", "10000", "PERMITS", "1"]).await
    ));
    assert_eq!(int(&cb.call(&["UNLOCK", "solo", &one]).await), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn readers_share_a_key_and_exclude_a_writer() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    let r1 = text(&ca.call(&["LOCK", "doc", "10000", "SHARED"]).await);
    let r2 = text(&cb.call(&["LOCK", "doc", "10000", "SHARED"]).await);
    assert_ne!(r1, r2);
    assert!(r1.ends_with(":s"), "{r1}");
    // A writer is refused while any reader holds the key, through either proxy.
    assert!(is_null(&ca.call(&["LOCK", "doc", "10000"]).await));
    assert_eq!(int(&cb.call(&["EXTEND", "doc", &r1, "15000"]).await), 1);
    assert!(int(&ca.call(&["LOCKTTL", "doc", &r2]).await) > 5_000);
    assert_eq!(int(&ca.call(&["UNLOCK", "doc", &r1]).await), 1);
    assert!(is_null(&cb.call(&["LOCK", "doc", "10000"]).await));
    assert_eq!(int(&cb.call(&["UNLOCK", "doc", &r2]).await), 1);
    // The last reader gone, the writer takes it, and readers are refused in turn.
    let w = text(&cb.call(&["LOCK", "doc", "10000"]).await);
    assert!(is_null(&ca.call(&["LOCK", "doc", "10000", "SHARED"]).await));
    assert_eq!(int(&ca.call(&["UNLOCK", "doc", &r2]).await), 0);
    assert_eq!(int(&ca.call(&["UNLOCK", "doc", &w]).await), 1);
    text(&ca.call(&["LOCK", "doc", "10000", "SHARED"]).await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_key_used_as_another_kind_is_a_wrongtype_error() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let permit = text(&c.call(&["LOCK", "k", "10000", "PERMITS", "2"]).await);
    for (args, held, asked) in [
        (
            &["LOCK", "k", "10000", "PERMITS", "3"][..],
            "a semaphore of 2 permits (PERMITS 2)",
            "a semaphore of 3 permits (PERMITS 3)",
        ),
        (
            &["LOCK", "k", "10000"][..],
            "a semaphore of 2 permits (PERMITS 2)",
            "an exclusive lock",
        ),
        (
            &["LOCK", "k", "10000", "SHARED"][..],
            "a semaphore of 2 permits (PERMITS 2)",
            "a read lock (SHARED)",
        ),
    ] {
        assert_eq!(
            error(&c.call(args).await),
            format!("WRONGTYPE 'k' is held as {held}, not as {asked}"),
            "{args:?}"
        );
    }
    // Returned, the key is free for any kind at once: the count went with the last permit.
    assert_eq!(int(&c.call(&["UNLOCK", "k", &permit]).await), 1);
    let reader = text(&c.call(&["LOCK", "k", "10000", "SHARED"]).await);
    assert_eq!(
        error(&c.call(&["LOCK", "k", "10000", "PERMITS", "2"]).await),
        "WRONGTYPE 'k' is held as a read lock (SHARED), not as a semaphore of 2 permits (PERMITS 2)"
    );
    assert_eq!(int(&c.call(&["UNLOCK", "k", &reader]).await), 1);
    let writer = text(&c.call(&["LOCK", "k", "10000"]).await);
    assert_eq!(
        error(&c.call(&["LOCK", "k", "10000", "PERMITS", "2"]).await),
        "WRONGTYPE 'k' is held as an exclusive lock, not as a semaphore of 2 permits (PERMITS 2)"
    );
    assert_eq!(int(&c.call(&["UNLOCK", "k", &writer]).await), 1);
    text(&c.call(&["LOCK", "k", "10000", "PERMITS", "3"]).await);
    p.stop().await;
}

#[tokio::test]
async fn bad_options_and_forged_tokens_are_refused_cleanly() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let range = "ERR invalid PERMITS in 'lock' command: must be between 1 and 1024";
    for (args, expected) in [
        (&["LOCK", "k", "1000", "PERMITS", "0"][..], range),
        (&["LOCK", "k", "1000", "PERMITS", "1025"][..], range),
        (&["LOCK", "k", "1000", "PERMITS", "-1"][..], range),
        (
            &["LOCK", "k", "1000", "PERMITS", "x"][..],
            "ERR value is not an integer or out of range",
        ),
        (&["LOCK", "k", "1000", "PERMITS"][..], "ERR syntax error"),
        (
            &["LOCK", "k", "1000", "SHARED", "PERMITS", "2"][..],
            "ERR syntax error",
        ),
        (
            &["LOCK", "k", "1000", "SHARED", "SHARED"][..],
            "ERR syntax error",
        ),
        (
            &["LOCK", "k", "1000", "SHARED", "FENCE"][..],
            "ERR FENCE does not combine with SHARED or PERMITS in 'lock' command",
        ),
        (
            &["LOCKTTL", "k", "t", "x"][..],
            "ERR wrong number of arguments for 'lockttl' command",
        ),
    ] {
        assert_eq!(error(&c.call(args).await), expected, "{args:?}");
    }
    // A token claiming a huge semaphore names no slot: nothing to release, nothing allocated.
    let forged = format!("{}:0:4294967295", "a".repeat(32));
    assert_eq!(int(&c.call(&["UNLOCK", "k", &forged]).await), 0);
    assert_eq!(int(&c.call(&["EXTEND", "k", &forged, "1000"]).await), 0);
    assert_eq!(int(&c.call(&["LOCKTTL", "k", &forged]).await), -2);
    p.stop().await;
}

#[tokio::test]
async fn a_waiting_writer_is_not_starved_by_new_readers() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let mut reader = a.conn().await;
    let r1 = text(&reader.call(&["LOCK", "rw", "10000", "SHARED"]).await);
    let mut writer = b.conn().await;
    writer
        .send_cmd(&["LOCK", "rw", "10000", "WAIT", "8000"])
        .await;
    blocked(&b, 1).await;
    // Bounded poll: the writer names itself on the masters right after its first refusal.
    let mut late = a.conn().await;
    let mut refused = false;
    for _ in 0..200 {
        match late.call(&["LOCK", "rw", "10000", "SHARED"]).await {
            f if is_null(&f) => {
                refused = true;
                break;
            }
            f => {
                assert_eq!(int(&late.call(&["UNLOCK", "rw", &text(&f)]).await), 1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(refused, "new readers kept coming in while a writer waited");
    assert_eq!(int(&reader.call(&["UNLOCK", "rw", &r1]).await), 1);
    let w = text(&writer.reply().await);
    assert_eq!(w.len(), 32);
    assert!(is_null(
        &late.call(&["LOCK", "rw", "10000", "SHARED"]).await
    ));
    assert_eq!(int(&writer.call(&["UNLOCK", "rw", &w]).await), 1);
    // The writer is done waiting: readers come in again.
    text(&late.call(&["LOCK", "rw", "10000", "SHARED"]).await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_permit_waiter_takes_the_permit_returned() {
    let m = support::masters(3);
    let (a, b) = (support::proxy(&m).await, support::proxy(&m).await);
    let mut holder = a.conn().await;
    let t1 = text(
        &holder
            .call(&["LOCK", "pool", "10000", "PERMITS", "2"])
            .await,
    );
    text(
        &holder
            .call(&["LOCK", "pool", "10000", "PERMITS", "2"])
            .await,
    );
    let mut waiter = b.conn().await;
    waiter
        .send_cmd(&["LOCK", "pool", "10000", "PERMITS", "2", "WAIT", "8000"])
        .await;
    blocked(&b, 1).await;
    assert_eq!(int(&holder.call(&["UNLOCK", "pool", &t1]).await), 1);
    let got = text(&waiter.reply().await);
    assert_eq!(&got[33..], &t1[33..], "the waiter took the slot returned");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn session_permits_and_readers_are_kept_then_released_with_the_connection() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, support::short_sessions).await;
    let mut c = p.conn().await;
    let permits: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(text(
                &c.call(&["LOCK", "s", "300", "PERMITS", "2", "SESSION"])
                    .await,
            ));
        }
        v
    };
    let reader = text(&c.call(&["LOCK", "r", "300", "SHARED", "SESSION"]).await);
    // Past three TTLs, both permits and the reader are still held: each is kept on its own.
    tokio::time::sleep(Duration::from_millis(900)).await;
    for t in &permits {
        assert!(int(&c.call(&["LOCKTTL", "s", t]).await) > 0, "{t}");
    }
    assert!(int(&c.call(&["LOCKTTL", "r", &reader]).await) > 0);
    let mut other = p.conn().await;
    assert!(is_null(
        &other.call(&["LOCK", "s", "1000", "PERMITS", "2"]).await
    ));
    assert!(is_null(&other.call(&["LOCK", "r", "1000"]).await));
    drop(c);
    // Bounded poll: the proxy releases them when it sees the connection close.
    let mut freed = false;
    for _ in 0..200 {
        let f = other.call(&["LOCK", "r", "1000"]).await;
        if !is_null(&f) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "the reader outlived its connection");
    text(&other.call(&["LOCK", "s", "1000", "PERMITS", "2"]).await);
    text(&other.call(&["LOCK", "s", "1000", "PERMITS", "2"]).await);
    p.stop().await;
}

#[tokio::test]
async fn info_counts_grants_of_each_kind() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    text(&c.call(&["LOCK", "x", "10000"]).await);
    for _ in 0..2 {
        text(&c.call(&["LOCK", "y", "10000", "SHARED"]).await);
    }
    for _ in 0..3 {
        text(&c.call(&["LOCK", "z", "10000", "PERMITS", "5"]).await);
    }
    assert_eq!(info_stat(&mut c, "locks_granted").await, 6);
    assert_eq!(info_stat(&mut c, "locks_granted_exclusive").await, 1);
    assert_eq!(info_stat(&mut c, "locks_granted_shared").await, 2);
    assert_eq!(info_stat(&mut c, "locks_granted_permits").await, 3);
    p.stop().await;
}
