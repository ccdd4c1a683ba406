//! Drop-in lock commands on the wire: lock-shaped SET in every option order, GET / PTTL / TTL /
//! EXISTS / DEL on locks, and every known library script by SHA1 — each a quorum operation,
//! visible through a second proxy over the same masters.

mod support;

use support::{error, int, is_null, text};

const PY_RELEASE: &str = "c3f8721cbb97f72bc19e972846bd7aaf91901658";
const PY_EXTEND: &str = "a4e8783852e6b949f9ef3a97212805108459a890";
const PY_REACQUIRE: &str = "1cac51482acf5858da00f6d685d68f886cd6b6b2";
/// node-redlock (acquire, extend, release) for v5 and v4.
const REDLOCK: [[&str; 3]; 2] = [
    [
        "96da70f7716f27d278a5218544df37fd8b0a5e4c",
        "aed6f382e410db8ba7926d4e5e9aab410bf2a78a",
        "e4612211c9f8f51c257e26e056b0a654b3187242",
    ],
    [
        "e5a322e2634ef59a516e8ea150cb085afafee684",
        "ce46f80993d5dac20dd066eb301a4e37994bdbed",
        "0f0f23b9048b36752b5be114f357ba083449f908",
    ],
];

#[tokio::test]
async fn lock_shaped_set_in_every_order_is_a_quorum_acquire() {
    let m = support::masters(3);
    let a = support::proxy(&m).await;
    let b = support::proxy(&m).await;
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    let forms: &[&[&str]] = &[
        &["SET", "k1", "t1", "NX", "PX", "5000"],
        &["SET", "k2", "t2", "PX", "5000", "NX"],
        &["set", "k3", "t3", "nx", "ex", "5"],
        &["SET", "k4", "t4", "EX", "5", "NX"],
    ];
    for form in forms {
        ca.roundtrip(form, b"+OK\r\n").await;
        // Held: null through the other proxy too.
        let mut again = form.to_vec();
        again[2] = "other";
        cb.roundtrip(&again, b"$-1\r\n").await;
        assert_eq!(text(&cb.call(&["GET", form[1]]).await), form[2]);
        let pttl = int(&cb.call(&["PTTL", form[1]]).await);
        assert!((4_000..=4_948).contains(&pttl), "{form:?}: {pttl}");
        assert_eq!(int(&cb.call(&["TTL", form[1]]).await), 5);
    }
    // No TTL: the default (30 s), never a lock that lives forever.
    ca.roundtrip(&["SET", "k5", "t5", "NX"], b"+OK\r\n").await;
    let pttl = int(&cb.call(&["PTTL", "k5"]).await);
    assert!((29_000..=29_698).contains(&pttl), "{pttl}");
    assert_eq!(
        int(&cb.call(&["EXISTS", "k1", "k2", "nope", "k5"]).await),
        3
    );
    // The stored token is the client's own value, so its compare-and-delete works anywhere.
    cb.roundtrip(&["EVALSHA", PY_RELEASE, "1", "k1", "t1"], b":1\r\n")
        .await;
    assert!(is_null(&ca.call(&["GET", "k1"]).await));
    assert_eq!(int(&ca.call(&["PTTL", "k1"]).await), -2);
    assert_eq!(int(&ca.call(&["TTL", "k1"]).await), -2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn sets_that_are_not_locks_are_refused_clearly() {
    let m = support::masters(1);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let not_lock = b"-ERR the proxy serves only lock-shaped SET: SET key token NX [PX milliseconds|EX seconds]\r\n";
    for args in [
        &["SET", "k", "v"][..],
        &["SET", "k", "v", "PX", "100"],
        &["SET", "k", "v", "NX", "XX"],
        &["SET", "k", "v", "NX", "GET"],
        &["SET", "k", "v", "NX", "KEEPTTL"],
    ] {
        c.roundtrip(args, not_lock).await;
    }
    let bad_ttl =
        b"-ERR invalid expire time in 'set' command: ttl-ms must be between 4 and 60000\r\n";
    c.roundtrip(&["SET", "k", "v", "NX", "PX", "0"], bad_ttl)
        .await;
    c.roundtrip(&["SET", "k", "v", "NX", "EX", "61"], bad_ttl)
        .await;
    c.roundtrip(
        &["SET", "k", "v", "NX", "PX", "x"],
        b"-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.roundtrip(&["SET", "k", "v", "NX", "PX"], b"-ERR syntax error\r\n")
        .await;
    c.roundtrip(
        &["SET", "k", "v", "NX", "PX", "5", "PX", "5"],
        b"-ERR syntax error\r\n",
    )
    .await;
    c.roundtrip(
        &["SET", "k"],
        b"-ERR wrong number of arguments for 'set' command\r\n",
    )
    .await;
    p.stop().await;
}

#[tokio::test]
async fn del_force_releases_whoever_holds_it() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    let token = text(&c.call(&["LOCK", "stuck", "60000"]).await);
    assert_eq!(int(&c.call(&["DEL", "stuck", "free"]).await), 1);
    assert!(is_null(&c.call(&["GET", "stuck"]).await));
    assert_eq!(int(&c.call(&["UNLOCK", "stuck", &token]).await), 0);
    assert_eq!(text(&c.call(&["LOCK", "stuck", "1000"]).await).len(), 32);
    p.stop().await;
}

#[tokio::test]
async fn redis_py_scripts_by_sha() {
    let m = support::masters(3);
    let a = support::proxy(&m).await;
    let b = support::proxy(&m).await;
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    ca.roundtrip(&["SET", "py", "tok", "NX", "PX", "2000"], b"+OK\r\n")
        .await;
    // extend, add mode: 3000 ms on top of what is left.
    cb.roundtrip(
        &["EVALSHA", PY_EXTEND, "1", "py", "tok", "3000", "0"],
        b":1\r\n",
    )
    .await;
    let pttl = int(&ca.call(&["PTTL", "py"]).await);
    assert!((4_000..=4_950).contains(&pttl), "{pttl}");
    // extend, replace mode.
    cb.roundtrip(
        &["EVALSHA", PY_EXTEND, "1", "py", "tok", "1000", "1"],
        b":1\r\n",
    )
    .await;
    assert!(int(&ca.call(&["PTTL", "py"]).await) <= 1_000);
    cb.roundtrip(
        &["EVALSHA", PY_EXTEND, "1", "py", "nope", "1000", "1"],
        b":0\r\n",
    )
    .await;
    cb.roundtrip(
        &["EVALSHA", PY_EXTEND, "1", "py", "tok", "59900", "0"],
        b"-ERR invalid expire time in 'evalsha' command: ttl-ms must be between 4 and 60000\r\n",
    )
    .await;
    // reacquire.
    cb.roundtrip(
        &["EVALSHA", PY_REACQUIRE, "1", "py", "tok", "8000"],
        b":1\r\n",
    )
    .await;
    assert!(int(&ca.call(&["PTTL", "py"]).await) > 7_000);
    cb.roundtrip(
        &["EVALSHA", PY_REACQUIRE, "1", "py", "nope", "8000"],
        b":0\r\n",
    )
    .await;
    // release.
    ca.roundtrip(&["EVALSHA", PY_RELEASE, "1", "py", "nope"], b":0\r\n")
        .await;
    ca.roundtrip(
        &["evalsha", &PY_RELEASE.to_uppercase(), "1", "py", "tok"],
        b":1\r\n",
    )
    .await;
    ca.roundtrip(&["EVALSHA", PY_RELEASE, "1", "py", "tok"], b":0\r\n")
        .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn node_redlock_scripts_by_sha_take_several_keys_at_once() {
    let m = support::masters(3);
    let a = support::proxy(&m).await;
    let b = support::proxy(&m).await;
    let (mut ca, mut cb) = (a.conn().await, b.conn().await);
    for [acquire, extend, release] in REDLOCK {
        ca.roundtrip(
            &["EVALSHA", acquire, "2", "r:a", "r:b", "v1", "5000"],
            b":2\r\n",
        )
        .await;
        // Overlapping set through the other proxy: all or nothing, so r:c is not left taken.
        cb.roundtrip(
            &["EVALSHA", acquire, "2", "r:b", "r:c", "v2", "5000"],
            b":0\r\n",
        )
        .await;
        assert_eq!(int(&cb.call(&["EXISTS", "r:a", "r:b", "r:c"]).await), 2);
        cb.roundtrip(
            &["EVALSHA", extend, "2", "r:a", "r:b", "v1", "9000"],
            b":2\r\n",
        )
        .await;
        assert!(int(&ca.call(&["PTTL", "r:b"]).await) > 8_000);
        cb.roundtrip(
            &["EVALSHA", extend, "2", "r:a", "r:b", "v2", "9000"],
            b":0\r\n",
        )
        .await;
        cb.roundtrip(&["EVALSHA", release, "2", "r:a", "r:b", "v1"], b":2\r\n")
            .await;
        cb.roundtrip(&["EVALSHA", release, "2", "r:a", "r:b", "v1"], b":0\r\n")
            .await;
        assert_eq!(int(&ca.call(&["EXISTS", "r:a", "r:b", "r:c"]).await), 0);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unknown_scripts_get_noscript_or_a_clear_refusal() {
    let m = support::masters(1);
    let p = support::proxy(&m).await;
    let mut c = p.conn().await;
    c.roundtrip(
        &[
            "EVALSHA",
            "e9f69f2beb755be68b5e456ee2ce9aadfbc4ebf4",
            "1",
            "k",
            "t",
        ],
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
    )
    .await;
    let refusal = "ERR only the lock scripts of known client libraries are supported (redis-py Lock, node-redlock, redsync, Redisson RLock and FencedLock, python-redis-lock, pottery, aioredlock, redis-semaphore Mutex, Semaphore and MultiSemaphore, redlock-rb, RedLock.net; see docs/clients.md); this script's sha1 is e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
    assert_eq!(error(&c.call(&["EVAL", "return 1", "0"]).await), refusal);
    assert_eq!(
        error(&c.call(&["SCRIPT", "LOAD", "return 1"]).await),
        refusal
    );
    c.roundtrip(
        &[
            "SCRIPT",
            "EXISTS",
            PY_RELEASE,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db",
        ],
        b"*2\r\n:1\r\n:0\r\n",
    )
    .await;
    c.roundtrip(&["SCRIPT", "FLUSH"], b"+OK\r\n").await;
    c.roundtrip(
        &["EVALSHA", PY_RELEASE, "-1"],
        b"-ERR Number of keys can't be negative\r\n",
    )
    .await;
    c.roundtrip(
        &["EVALSHA", PY_RELEASE, "3", "k"],
        b"-ERR Number of keys can't be greater than number of args\r\n",
    )
    .await;
    c.roundtrip(
        &["EVALSHA", PY_RELEASE, "2", "a", "b", "t"],
        b"-ERR the redis-py Lock release script takes 1 key and a token\r\n",
    )
    .await;
    p.stop().await;
}
