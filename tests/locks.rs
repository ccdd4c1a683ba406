//! Lock semantics against real masters: what lands on each master, contention across
//! connections and across proxies, expiry, and cleanup after a refused acquire.

mod support;

use std::time::Duration;

use redlock_proxy::embedded::RedisServer;
use support::{Conn, int, is_null, text};

/// A raw connection straight to a master, to look at what the proxy stored.
async fn master_conn(m: &RedisServer) -> Conn {
    Conn::connect(([127, 0, 0, 1], m.port()).into()).await
}

#[tokio::test]
async fn a_granted_lock_is_on_every_master_under_the_prefix() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let token = text(&c.call(&["LOCK", "orders:1", "5000"]).await);
    for master in &m {
        let mut mc = master_conn(master).await;
        assert_eq!(
            text(&mc.call(&["GET", &support::lock_key("orders:1")]).await),
            token
        );
        let pttl = int(&mc.call(&["PTTL", &support::lock_key("orders:1")]).await);
        assert!((4_000..=5_000).contains(&pttl), "pttl {pttl}");
        // The application's own key space is untouched.
        assert!(is_null(&mc.call(&["GET", "orders:1"]).await));
    }
    assert_eq!(int(&c.call(&["UNLOCK", "orders:1", &token]).await), 1);
    for master in &m {
        let mut mc = master_conn(master).await;
        assert_eq!(
            int(&mc.call(&["EXISTS", &support::lock_key("orders:1")]).await),
            0
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn concurrent_contenders_get_exactly_one_grant() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(p.conn().await);
    }
    for c in &mut conns {
        c.send_cmd(&["LOCK", "hot", "10000"]).await;
    }
    let mut granted = 0;
    for c in &mut conns {
        let reply = c.reply().await;
        if !is_null(&reply) {
            assert_eq!(text(&reply).len(), 32);
            granted += 1;
        }
    }
    assert_eq!(granted, 1);
    p.stop().await;
}

#[tokio::test]
async fn two_proxies_over_the_same_masters_see_one_lock() {
    let m = support::masters(3);
    let a = support::proxy(&m).await;
    let b = support::proxy(&m).await;
    let mut ca = a.conn().await;
    let mut cb = b.conn().await;
    let token = text(&ca.call(&["LOCK", "shared", "10000"]).await);
    assert!(is_null(&cb.call(&["LOCK", "shared", "10000"]).await));
    assert!(int(&cb.call(&["LOCKTTL", "shared"]).await) > 9_000);
    assert_eq!(
        int(&cb.call(&["EXTEND", "shared", &token, "20000"]).await),
        1
    );
    assert!(int(&ca.call(&["LOCKTTL", "shared"]).await) > 10_000);
    assert_eq!(int(&cb.call(&["UNLOCK", "shared", &token]).await), 1);
    assert_eq!(text(&ca.call(&["LOCK", "shared", "10000"]).await).len(), 32);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_lock_expires_after_its_ttl_and_can_be_taken_again() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let first = text(&c.call(&["LOCK", "brief", "200"]).await);
    assert!(is_null(&c.call(&["LOCK", "brief", "200"]).await));
    // Bounded: the TTL is 200 ms; give it up to 3 s of 20 ms polls.
    let mut second = None;
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reply = c.call(&["LOCK", "brief", "200"]).await;
        if !is_null(&reply) {
            second = Some(text(&reply));
            break;
        }
    }
    let second = second.expect("the lock expired");
    assert_ne!(first, second);
    assert_eq!(int(&c.call(&["EXTEND", "brief", &first, "5000"]).await), 0);
    assert_eq!(int(&c.call(&["UNLOCK", "brief", &first]).await), 0);
    p.stop().await;
}

#[tokio::test]
async fn a_refused_acquire_leaves_nothing_behind() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    // Another client holds the key on two masters; the third is free.
    for master in &m[..2] {
        let mut mc = master_conn(master).await;
        mc.roundtrip(
            &["SET", &support::lock_key("k"), "theirs", "PX", "10000"],
            b"+OK\r\n",
        )
        .await;
    }
    let mut c = p.conn().await;
    assert!(is_null(&c.call(&["LOCK", "k", "10000"]).await));
    // The proxy's SET on the free master was undone (the release is queued before the reply).
    let mut mc = master_conn(&m[2]).await;
    let mut cleared = false;
    for _ in 0..100 {
        if int(&mc.call(&["EXISTS", &support::lock_key("k")]).await) == 0 {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cleared,
        "the failed acquire's SET stayed on the free master"
    );
    // And the other holder's token is untouched.
    let mut mc = master_conn(&m[0]).await;
    assert_eq!(
        text(&mc.call(&["GET", &support::lock_key("k")]).await),
        "theirs"
    );
    p.stop().await;
}

#[tokio::test]
async fn one_master_is_a_quorum_of_one() {
    let m = support::masters(1);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let token = text(&c.call(&["LOCK", "k", "1000"]).await);
    assert!(is_null(&c.call(&["LOCK", "k", "1000"]).await));
    assert_eq!(int(&c.call(&["UNLOCK", "k", &token]).await), 1);
    p.stop().await;
}

#[tokio::test]
async fn two_masters_need_both() {
    let mut m = support::masters(2);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    assert_eq!(text(&c.call(&["LOCK", "k", "1000"]).await).len(), 32);
    m[1].kill();
    let err = support::error(&c.call(&["LOCK", "j", "1000"]).await);
    assert_eq!(err, "NOQUORUM 1 of 2 masters answered, 2 needed");
    p.stop().await;
}

#[tokio::test]
async fn masters_that_lost_their_scripts_get_them_again() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let token = text(&c.call(&["LOCK", "s", "5000"]).await);
    for master in &m {
        master_conn(master)
            .await
            .roundtrip(&["SCRIPT", "FLUSH"], b"+OK\r\n")
            .await;
    }
    // Each script comes back with NOSCRIPT once per master, is loaded, and the request repeated.
    assert!(int(&c.call(&["LOCKTTL", "s"]).await) > 4_000);
    assert_eq!(int(&c.call(&["EXTEND", "s", &token, "5000"]).await), 1);
    assert_eq!(int(&c.call(&["UNLOCK", "s", &token]).await), 1);
    p.stop().await;
}

#[tokio::test]
async fn several_connections_per_master_keep_each_keys_requests_in_order() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| c.backend.connections_per_master = 4).await;
    let mut c = p.conn().await;
    for _ in 0..500 {
        let info = support::flatten(&c.call(&["INFO", "masters"]).await);
        if info.matches("connections=4/4").count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let info = support::flatten(&c.call(&["INFO", "masters"]).await);
    assert_eq!(info.matches("connections=4/4").count(), 3, "{info}");
    let keys: Vec<String> = (0..200).map(|i| format!("multi:{i}")).collect();
    for key in &keys {
        c.send_cmd(&["LOCK", key, "10000"]).await;
    }
    let mut tokens = Vec::new();
    for _ in &keys {
        let token = text(&c.reply().await);
        assert_eq!(token.len(), 32);
        tokens.push(token);
    }
    // Pipelined, so each key's EXTEND and UNLOCK are in flight together: they reach every
    // master in this order only because one key's requests share a connection.
    for (key, token) in keys.iter().zip(&tokens) {
        c.send_cmd(&["EXTEND", key, token, "10000"]).await;
        c.send_cmd(&["UNLOCK", key, token]).await;
    }
    for key in &keys {
        assert_eq!(int(&c.reply().await), 1, "EXTEND {key}");
        assert_eq!(int(&c.reply().await), 1, "UNLOCK {key}");
    }
    p.stop().await;
}
