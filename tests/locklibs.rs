//! The lock libraries that cannot be installed here (redsync, Redisson, redlock-rb,
//! RedLock.net), replayed: their exact command sequences, with the exact script bodies of
//! `tests/compat/locklibs-scripts.json` (extracted from each library's tagged sources), sent
//! over the wire in RESP2 and RESP3 to two proxies over the same three masters, with the exact
//! replies each library expects. Their fallbacks are replayed too: `EVAL body` after a
//! `NOSCRIPT` (redsync, Redisson before 3.46), `SCRIPT LOAD` then `EVALSHA` (redlock-rb,
//! RedLock.net). So are the side channels: python-redis-lock's `BLPOP` on its signal list and
//! Redisson's subscription to its lock channel, each woken by a release through either proxy.
//! The libraries that install here run for real in `tests/compat.rs`.

mod support;

use std::time::{Duration, Instant};

use redis_protocol::resp3::types::OwnedFrame;
use support::{Cluster, Conn, TestProxy};

/// A connection speaking `protocol`.
async fn conn(p: &TestProxy, protocol: u8) -> Conn {
    let mut c = p.conn().await;
    if protocol == 3 {
        let hello = c.call(&["HELLO", "3"]).await;
        assert!(support::flatten(&hello).contains("proto 3"), "{hello:?}");
    }
    c
}

/// The cluster, and a connection speaking `protocol` to each proxy.
async fn two(protocol: u8) -> (Cluster, Conn, Conn) {
    let cluster = Cluster::start().await;
    let a = conn(&cluster.a, protocol).await;
    let b = conn(&cluster.b, protocol).await;
    (cluster, a, b)
}

/// The exact null of `protocol`.
fn null(protocol: u8) -> &'static [u8] {
    if protocol == 3 { b"_\r\n" } else { b"$-1\r\n" }
}

/// A script body of the catalogue, by library and name.
fn body(lib: &str, name: &str) -> String {
    let catalogue: serde_json::Value =
        serde_json::from_str(include_str!("compat/locklibs-scripts.json")).unwrap();
    catalogue
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["lib"] == lib && e["name"] == name)
        .unwrap_or_else(|| panic!("no script {lib} {name}"))["body"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn sha1(body: &str) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// An integer reply in (low, high].
async fn int_in(c: &mut Conn, args: &[&str], low: i64, high: i64) -> i64 {
    let n = support::int(&c.call(args).await);
    assert!(
        low < n && n <= high,
        "{args:?} = {n}, not in ({low}, {high}]"
    );
    n
}

/// An error reply that mentions every one of `needles`; its text.
async fn err_with(c: &mut Conn, args: &[&str], needles: &[&str]) -> String {
    let reply = c.call(args).await;
    let OwnedFrame::SimpleError { data, .. } = &reply else {
        panic!("{args:?}: expected an error, got {reply:?}");
    };
    for needle in needles {
        assert!(data.contains(needle), "{args:?}: {data:?} lacks {needle:?}");
    }
    data.clone()
}

/// Reads the next frame within `within`, or `None`.
async fn next_within(c: &mut Conn, within: Duration) -> Option<OwnedFrame> {
    tokio::time::timeout(within, c.reply()).await.ok()
}

// ---------------------------------------------------------------------------------------------
// Every catalogued script

/// Every script of every library loads to the true SHA1 of its body, and `SCRIPT EXISTS`
/// knows it, on both proxies and in both protocols.
#[tokio::test]
async fn every_catalogued_script_loads_to_its_sha1() {
    let cluster = Cluster::start().await;
    let catalogue: serde_json::Value =
        serde_json::from_str(include_str!("compat/locklibs-scripts.json")).unwrap();
    for (protocol, proxy) in [(2, &cluster.a), (3, &cluster.b)] {
        let mut c = conn(proxy, protocol).await;
        for e in catalogue.as_array().unwrap() {
            let body = e["body"].as_str().unwrap();
            let sha = e["sha1"].as_str().unwrap();
            let loaded = c.call(&["SCRIPT", "LOAD", body]).await;
            assert_eq!(support::text(&loaded), sha, "{} {}", e["lib"], e["name"]);
            let exists = c.call(&["SCRIPT", "EXISTS", sha]).await;
            assert_eq!(support::flatten(&exists), "1", "{}", e["name"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redsync (Go): SET NX with EX or PX, then its scripts by hard-coded SHA, EVAL on NOSCRIPT

async fn redsync(protocol: u8) {
    let (_cluster, mut a, mut b) = two(protocol).await;
    let delete = "e950836ed1e694540c503ef9972b8de518044d3b";
    let touch = "d75bb8b5bd13532ddedd17762e772346e39b321e";
    let touch_nx = "b6b55c439e02c6f52ffb8be7ec8c0d0ac816ea79";
    // go-redis sends whole seconds as EX, options after the value.
    a.roundtrip(&["set", "job", "dG9rZW4tYQ==", "ex", "8", "nx"], b"+OK\r\n")
        .await;
    b.roundtrip(
        &["set", "job", "dG9rZW4tYg==", "px", "8500", "nx"],
        null(protocol),
    )
    .await;
    // Valid() is GET.
    b.roundtrip(&["get", "job"], b"$12\r\ndG9rZW4tYQ==\r\n")
        .await;
    let args =
        |sha: &'static str, token: &'static str| vec!["evalsha", sha, "1", "job", token, "8000"];
    a.roundtrip(&args(touch, "dG9rZW4tYQ=="), b":1\r\n").await;
    b.roundtrip(&args(touch, "dG9rZW4tYg=="), b":0\r\n").await;
    b.roundtrip(&args(touch_nx, "dG9rZW4tYg=="), b":0\r\n")
        .await;
    // Held by another: 0 ("taken"); released: 1; gone: -1 (ErrLockAlreadyExpired).
    b.roundtrip(&["evalsha", delete, "1", "job", "dG9rZW4tYg=="], b":0\r\n")
        .await;
    a.roundtrip(&["evalsha", delete, "1", "job", "dG9rZW4tYQ=="], b":1\r\n")
        .await;
    a.roundtrip(&["evalsha", delete, "1", "job", "dG9rZW4tYQ=="], b":-1\r\n")
        .await;
    // WithSetNXOnExtend takes a lock that is gone.
    b.roundtrip(&args(touch_nx, "dG9rZW4tYg=="), b":1\r\n")
        .await;
    a.roundtrip(&["get", "job"], b"$12\r\ndG9rZW4tYg==\r\n")
        .await;
    // A script the proxy does not know: NOSCRIPT, then redsync sends the body.
    let unknown = "ffffffffffffffffffffffffffffffffffffffff";
    let noscript = err_with(
        &mut b,
        &["evalsha", unknown, "1", "job", "x"],
        &["NOSCRIPT"],
    )
    .await;
    assert_eq!(noscript, "NOSCRIPT No matching script. Please use EVAL.");
    let del = body("redsync", "deleteScript");
    b.roundtrip(&["eval", &del, "1", "job", "dG9rZW4tYg=="], b":1\r\n")
        .await;
    // v4.11 and before: the old scripts, 1/0 only.
    let old_delete = body("redsync", "deleteScript (old)");
    a.roundtrip(&["set", "job", "old", "px", "8000", "nx"], b"+OK\r\n")
        .await;
    a.roundtrip(
        &[
            "eval",
            &body("redsync", "touchScript (old)"),
            "1",
            "job",
            "old",
            "9000",
        ],
        b":1\r\n",
    )
    .await;
    a.roundtrip(&["eval", &old_delete, "1", "job", "old"], b":1\r\n")
        .await;
    a.roundtrip(&["eval", &old_delete, "1", "job", "old"], b":0\r\n")
        .await;
}

#[tokio::test]
async fn redsync_resp2() {
    redsync(2).await;
}

#[tokio::test]
async fn redsync_resp3() {
    redsync(3).await;
}

// ---------------------------------------------------------------------------------------------
// redlock-rb (Ruby): every call is EVALSHA; on NOSCRIPT it loads all three and retries

async fn redlock_rb(protocol: u8) {
    let (_cluster, mut a, mut b) = two(protocol).await;
    let lock = "ceb2b2062e40c51a2b3963fd078bc71f11bdc65c";
    let unlock = "8e4905cee18e7c3188d10f2b8b170e403baed34f";
    let pttl = "78d2ca48a6dc9ef6892059792a3a0c5237733d64";
    // The fallback: SCRIPT LOAD of the three bodies returns the SHAs it computed itself.
    for name in ["LOCK_SCRIPT", "UNLOCK_SCRIPT", "PTTL_SCRIPT"] {
        let sha = sha1(&body("redlock-rb", name));
        let loaded = a.call(&["SCRIPT", "LOAD", &body("redlock-rb", name)]).await;
        assert_eq!(support::text(&loaded), sha);
    }
    let uuid_a = "3f1e7a2c-aaaa-4bbb-8ccc-000000000001";
    let uuid_b = "3f1e7a2c-aaaa-4bbb-8ccc-000000000002";
    a.roundtrip(
        &["EVALSHA", lock, "1", "res", uuid_a, "10000", "yes"],
        b"+OK\r\n",
    )
    .await;
    b.roundtrip(
        &["EVALSHA", lock, "1", "res", uuid_b, "10000", "yes"],
        null(protocol),
    )
    .await;
    // extend: the holder's own LOCK again; extend_only_if_locked sends "no".
    a.roundtrip(
        &["EVALSHA", lock, "1", "res", uuid_a, "20000", "no"],
        b"+OK\r\n",
    )
    .await;
    b.roundtrip(
        &["EVALSHA", lock, "1", "res", uuid_b, "20000", "no"],
        null(protocol),
    )
    .await;
    // lock_info / remaining TTL: [value, pttl].
    let info = b.call(&["EVALSHA", pttl, "1", "res"]).await;
    let flat = support::flatten(&info);
    let (value, ms) = flat.split_once(' ').unwrap();
    assert_eq!(value, uuid_a);
    let ms: i64 = ms.parse().unwrap();
    assert!(10_000 < ms && ms <= 20_000, "{ms}");
    b.roundtrip(&["EVALSHA", unlock, "1", "res", uuid_b], b":0\r\n")
        .await;
    a.roundtrip(&["EVALSHA", unlock, "1", "res", uuid_a], b":1\r\n")
        .await;
    let gone: &[u8] = if protocol == 3 {
        b"*2\r\n_\r\n:-2\r\n"
    } else {
        b"*2\r\n$-1\r\n:-2\r\n"
    };
    b.roundtrip(&["EVALSHA", pttl, "1", "res"], gone).await;
    // "no" never takes a free lock.
    b.roundtrip(
        &["EVALSHA", lock, "1", "res", uuid_b, "10000", "no"],
        null(protocol),
    )
    .await;
    // Before 1.2.2 (8-space heredocs).
    let old_lock = body("redlock-rb", "LOCK_SCRIPT (old)");
    b.roundtrip(
        &["EVAL", &old_lock, "1", "res", uuid_b, "10000", "yes"],
        b"+OK\r\n",
    )
    .await;
    let old_unlock = body("redlock-rb", "UNLOCK_SCRIPT (old)");
    b.roundtrip(&["EVAL", &old_unlock, "1", "res", uuid_b], b":1\r\n")
        .await;
}

#[tokio::test]
async fn redlock_rb_resp2() {
    redlock_rb(2).await;
}

#[tokio::test]
async fn redlock_rb_resp3() {
    redlock_rb(3).await;
}

// ---------------------------------------------------------------------------------------------
// RedLock.net: SCRIPT LOAD once per endpoint, SET ... EX|PX ... NX, then EVALSHA

async fn redlock_net(protocol: u8) {
    let (cluster, mut a, mut b) = two(protocol).await;
    let unlock_lf = body("RedLock.net", "Unlock.lua (LF)");
    let extend_lf = body("RedLock.net", "Extend.lua (LF)");
    let (unlock, extend) = (sha1(&unlock_lf), sha1(&extend_lf));
    for body in [&unlock_lf, &extend_lf] {
        assert_eq!(
            support::text(&a.call(&["SCRIPT", "LOAD", body]).await),
            sha1(body)
        );
    }
    // A build that embedded the files with CRLF line ends sends other bytes, and other SHAs.
    let unlock_crlf = body("RedLock.net", "Unlock.lua (CRLF)");
    let crlf = sha1(&unlock_crlf);
    assert_eq!(
        support::text(&b.call(&["SCRIPT", "LOAD", &unlock_crlf]).await),
        crlf
    );
    let key = "redlock:{invoice-7}";
    // StackExchange.Redis's configuration channel: accepted on its subscription connection.
    let mut sub = conn(&cluster.a, protocol).await;
    let channel = "__Booksleeve_MasterChanged";
    let confirmed = support::flatten(&sub.call(&["SUBSCRIBE", channel]).await);
    assert_eq!(confirmed, format!("subscribe {channel} 1"));
    a.roundtrip(&["SET", key, "id-a", "EX", "30", "NX"], b"+OK\r\n")
        .await;
    b.roundtrip(&["SET", key, "id-b", "PX", "30500", "NX"], null(protocol))
        .await;
    // Extend: 1 extended, -1 someone else holds it.
    a.roundtrip(&["EVALSHA", &extend, "1", key, "id-a", "30000"], b":1\r\n")
        .await;
    b.roundtrip(&["EVALSHA", &extend, "1", key, "id-b", "30000"], b":-1\r\n")
        .await;
    b.roundtrip(&["EVALSHA", &unlock, "1", key, "id-b"], b":0\r\n")
        .await;
    a.roundtrip(&["EVALSHA", &crlf, "1", key, "id-a"], b":1\r\n")
        .await;
    // Extend of a lock that is gone takes it again (Extend.lua re-SETs a missing key).
    a.roundtrip(&["EVALSHA", &extend, "1", key, "id-a", "30000"], b":1\r\n")
        .await;
    b.roundtrip(&["SET", key, "id-b", "EX", "30", "NX"], null(protocol))
        .await;
    a.roundtrip(&["EVALSHA", &unlock, "1", key, "id-a"], b":1\r\n")
        .await;
}

#[tokio::test]
async fn redlock_net_resp2() {
    redlock_net(2).await;
}

#[tokio::test]
async fn redlock_net_resp3() {
    redlock_net(3).await;
}

// ---------------------------------------------------------------------------------------------
// Redisson (Java): the reentrant lock, the watchdog, unlock with its latch, force-unlock,
// FencedLock, and the lock channel its waiters subscribe to

const TRY_LOCK: &str = "149c5a8bf18676fd99e9e6e24923bd64d9b62f94";
const UNLOCK: &str = "6866459238a13a701d42f4971f12d9f3a50e2442";
const RENEW: &str = "8e19a1ddbdee9138df9f32a480c57addab4353d1";
const RENEW_ALL: &str = "6a3d31570dc6f4b0bd32bcdc8e75667747c6f635";
const FORCE_UNLOCK: &str = "605e338249a7a1d40df83b04f7658354f883b41b";
const FENCED_TOKEN: &str = "49babb5a1e6a0c5f188c2ae62b93b51cdfd63e45";

/// Redisson's unlock of `name` by `owner`, request `n`: KEYS name, channel, latch.
fn unlock_args(name: &str, owner: &str, n: u32) -> Vec<String> {
    [
        "EVALSHA",
        UNLOCK,
        "3",
        name,
        &format!("redisson_lock__channel:{{{name}}}"),
        &format!("redisson_unlock_latch:{{{name}}}:req-{n}"),
        "0",
        "30000",
        owner,
        "PUBLISH",
        "13500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn call_strings(c: &mut Conn, args: &[String]) -> OwnedFrame {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.call(&args).await
}

/// The message Redisson's waiters get when the lock is released, as RESP2 or RESP3 bytes.
fn unlock_message(protocol: u8, channel: &str) -> Vec<u8> {
    let head = if protocol == 3 { '>' } else { '*' };
    format!(
        "{head}3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n$1\r\n0\r\n",
        channel.len()
    )
    .into_bytes()
}

async fn redisson(protocol: u8) {
    let (cluster, mut a, mut b) = two(protocol).await;
    let owner_a = "9b3c0e5a-1111-4a2b-9c3d-4e5f60718293:1";
    let owner_b = "0d8e1f2a-2222-4b3c-8d4e-5f6071829304:57";
    let channel = "redisson_lock__channel:{orders}";
    // A waiter on proxy B subscribes on a connection of its own.
    let mut sub = conn(&cluster.b, protocol).await;
    let head = if protocol == 3 { '>' } else { '*' };
    sub.roundtrip(
        &["SUBSCRIBE", channel],
        format!(
            "{head}3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:1\r\n",
            channel.len()
        )
        .as_bytes(),
    )
    .await;
    // tryLock: nil when taken (and again by its owner: reentrant); the holder's pttl otherwise.
    a.roundtrip(
        &["EVALSHA", TRY_LOCK, "1", "orders", "30000", owner_a],
        null(protocol),
    )
    .await;
    a.roundtrip(
        &["EVALSHA", TRY_LOCK, "1", "orders", "30000", owner_a],
        null(protocol),
    )
    .await;
    int_in(
        &mut b,
        &["EVALSHA", TRY_LOCK, "1", "orders", "30000", owner_b],
        20_000,
        30_000,
    )
    .await;
    // getHoldCount() and isHeldByCurrentThread() read the lock's hash.
    b.roundtrip(&["HGET", "orders", owner_a], b"$1\r\n2\r\n")
        .await;
    b.roundtrip(&["HGET", "orders", owner_b], null(protocol))
        .await;
    b.roundtrip(&["HEXISTS", "orders", owner_a], b":1\r\n")
        .await;
    b.roundtrip(&["HEXISTS", "orders", owner_b], b":0\r\n")
        .await;
    // isLocked() and remainTimeToLive().
    b.roundtrip(&["EXISTS", "orders"], b":1\r\n").await;
    int_in(&mut b, &["PTTL", "orders"], 20_000, 30_000).await;
    // The watchdog: single and batched renewals.
    a.roundtrip(
        &["EVALSHA", RENEW, "1", "orders", "30000", owner_a],
        b":1\r\n",
    )
    .await;
    b.roundtrip(
        &["EVALSHA", RENEW, "1", "orders", "30000", owner_b],
        b":0\r\n",
    )
    .await;
    let renewed = a
        .call(&[
            "EVALSHA", RENEW_ALL, "2", "orders", "invoices", "30000", owner_a, owner_a,
        ])
        .await;
    assert_eq!(support::flatten(&renewed), "1 0");
    // Unlock by someone else: nil (IllegalMonitorStateException). By the owner: 0 while it
    // still holds it, then 1, and the waiter hears "0" through the other proxy.
    let not_held = call_strings(&mut b, &unlock_args("orders", owner_b, 1)).await;
    assert!(support::is_null(&not_held), "{not_held:?}");
    let once = call_strings(&mut a, &unlock_args("orders", owner_a, 2)).await;
    assert_eq!(support::int(&once), 0);
    assert!(
        next_within(&mut sub, Duration::from_millis(300))
            .await
            .is_none(),
        "a message while the lock is still held"
    );
    let started = Instant::now();
    let released = call_strings(&mut a, &unlock_args("orders", owner_a, 3)).await;
    // (Each master announces the release: the copies are reported once.)
    assert_eq!(support::int(&released), 1);
    sub.expect(&unlock_message(protocol, channel)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A retry of the same request (its reply lost) gets the same answer, from the latch.
    let retried = call_strings(&mut a, &unlock_args("orders", owner_a, 3)).await;
    assert_eq!(support::int(&retried), 1);
    let again = call_strings(&mut a, &unlock_args("orders", owner_a, 4)).await;
    assert!(support::is_null(&again), "{again:?}");
    // The client deletes the unlock latch afterwards.
    a.roundtrip(&["DEL", "redisson_unlock_latch:{orders}:req-3"], b":1\r\n")
        .await;
    let after = call_strings(&mut a, &unlock_args("orders", owner_a, 3)).await;
    assert!(support::is_null(&after), "{after:?}");
    // The waiter's retry takes it.
    b.roundtrip(
        &["EVALSHA", TRY_LOCK, "1", "orders", "30000", owner_b],
        null(protocol),
    )
    .await;
    // forceUnlock, whoever holds it; the waiter hears it too.
    let force = [
        "EVALSHA",
        FORCE_UNLOCK,
        "2",
        "orders",
        channel,
        "0",
        "PUBLISH",
    ];
    a.roundtrip(&force, b":1\r\n").await;
    sub.expect(&unlock_message(protocol, channel)).await;
    a.roundtrip(&force, b":0\r\n").await;
    // A release may be reported twice (each master announces it), never not at all.
    while let Some(more) = next_within(&mut sub, Duration::from_millis(300)).await {
        assert_eq!(support::flatten(&more), format!("message {channel} 0"));
    }
    // A subscribed RESP2 connection answers PING as Redis does, and only pub/sub commands.
    if protocol == 2 {
        sub.roundtrip(&["PING"], b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
            .await;
        err_with(&mut sub, &["GET", "orders"], &["Can't execute 'get'"]).await;
    }
    sub.roundtrip(
        &["UNSUBSCRIBE", channel],
        format!(
            "{head}3\r\n$11\r\nunsubscribe\r\n${}\r\n{channel}\r\n:0\r\n",
            channel.len()
        )
        .as_bytes(),
    )
    .await;
    sub.roundtrip(&["PING"], b"+PONG\r\n").await;
    // Channels nobody feeds are refused, never left silent.
    err_with(
        &mut sub,
        &["SUBSCRIBE", "news"],
        &["Redisson", "redisson_lock__channel"],
    )
    .await;
    err_with(
        &mut sub,
        &["PSUBSCRIBE", "redisson_lock__channel:*"],
        &["pattern"],
    )
    .await;
    // Before 3.46 Redisson sends the body: EVAL.
    let try_lock = body("redisson", "RedissonLock.tryLockInnerAsync");
    a.roundtrip(
        &["EVAL", &try_lock, "1", "ledger", "30000", owner_a],
        null(protocol),
    )
    .await;
    let old_unlock = body("redisson", "RedissonLock.unlockInnerAsync (old)");
    let old_unlock_args = [
        "EVAL",
        &old_unlock,
        "2",
        "ledger",
        "redisson_lock__channel:{ledger}",
        "0",
        "30000",
        owner_a,
        "PUBLISH",
    ];
    a.roundtrip(&old_unlock_args, b":1\r\n").await;
}

#[tokio::test]
async fn redisson_resp2() {
    redisson(2).await;
}

#[tokio::test]
async fn redisson_resp3() {
    redisson(3).await;
}

/// FencedLock: lockAndGetToken returns `[-1, fence]` with fences increasing across holds, and
/// `[pttl, -1]` while someone else holds it; getToken() (a plain GET) is refused.
#[tokio::test]
async fn redisson_fenced_lock() {
    let cluster = Cluster::start().await;
    let (mut a, mut b) = (conn(&cluster.a, 3).await, conn(&cluster.b, 2).await);
    let (owner_a, owner_b) = ("aaaa:1", "bbbb:2");
    let token_key = "redisson_lock_token:{fenced}";
    let fenced = |owner| {
        [
            "EVALSHA",
            FENCED_TOKEN,
            "2",
            "fenced",
            token_key,
            "30000",
            owner,
        ]
    };
    let first = a.call(&fenced(owner_a)).await;
    let flat = support::flatten(&first);
    let (minus_one, fence) = flat.split_once(' ').unwrap();
    assert_eq!(minus_one, "-1");
    let fence: i64 = fence.parse().unwrap();
    assert!(fence > 0);
    let held = support::flatten(&b.call(&fenced(owner_b)).await);
    let (pttl, minus_one) = held.split_once(' ').unwrap();
    assert_eq!(minus_one, "-1");
    assert!(
        (20_000..=30_000).contains(&pttl.parse::<i64>().unwrap()),
        "{pttl}"
    );
    err_with(&mut a, &fenced(owner_a), &["Redisson FencedLock"]).await;
    assert_eq!(
        support::int(&call_strings(&mut a, &unlock_args("fenced", owner_a, 1)).await),
        1
    );
    let second = support::flatten(&b.call(&fenced(owner_b)).await);
    let next: i64 = second.split_once(' ').unwrap().1.parse().unwrap();
    assert!(next > fence, "{next} after {fence}");
    err_with(
        &mut a,
        &["GET", token_key],
        &["Redisson", "lockAndGetToken"],
    )
    .await;
    // The plain lock() of a FencedLock takes a fence too, and is reentrant.
    let plain = |owner| {
        let sha = "46b5551ba403d6152a7a6eca122e08728d6c8c66";
        [
            "EVALSHA",
            sha,
            "2",
            "plain",
            "redisson_lock_token:{plain}",
            "30000",
            owner,
        ]
    };
    a.roundtrip(&plain(owner_a), b"_\r\n").await;
    a.roundtrip(&plain(owner_a), b"_\r\n").await;
    int_in(&mut b, &plain(owner_b), 20_000, 30_000).await;
    b.roundtrip(&["HGET", "plain", owner_a], b"$1\r\n2\r\n")
        .await;
    // Redisson's sentinel, cluster and replicated modes: refused, saying what to use.
    err_with(
        &mut b,
        &["WAIT", "1", "1000"],
        &["Redisson", "useSingleServer"],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// python-redis-lock's signal list, replayed (the library itself runs in tests/compat.rs)

async fn signal_wakes_a_blocked_waiter(protocol: u8) {
    let (_cluster, mut holder, mut waiter) = two(protocol).await;
    let unlock = "90da91872223f85eb1376a17e3c4df21ace8c54b";
    holder
        .roundtrip(
            &["SET", "lock:report", "aWQtYQ==", "NX", "EX", "10"],
            b"+OK\r\n",
        )
        .await;
    waiter
        .roundtrip(
            &["SET", "lock:report", "aWQtYg==", "NX", "EX", "10"],
            null(protocol),
        )
        .await;
    waiter
        .send_cmd(&["BLPOP", "lock-signal:report", "10"])
        .await;
    assert!(
        next_within(&mut waiter, Duration::from_millis(300))
            .await
            .is_none(),
        "BLPOP answered while the lock is held"
    );
    let started = Instant::now();
    holder
        .roundtrip(
            &[
                "EVALSHA",
                unlock,
                "2",
                "lock:report",
                "lock-signal:report",
                "aWQtYQ==",
                "1000",
            ],
            b":0\r\n",
        )
        .await;
    waiter
        .expect(b"*2\r\n$18\r\nlock-signal:report\r\n$1\r\n1\r\n")
        .await;
    let woke = started.elapsed();
    assert!(woke < Duration::from_secs(1), "woken after {woke:?}");
    waiter
        .roundtrip(
            &["SET", "lock:report", "aWQtYg==", "NX", "EX", "10"],
            b"+OK\r\n",
        )
        .await;
    // Not the owner: 1.
    holder
        .roundtrip(
            &[
                "EVALSHA",
                unlock,
                "2",
                "lock:report",
                "lock-signal:report",
                "aWQtYQ==",
                "1000",
            ],
            b":1\r\n",
        )
        .await;
    // A timeout: a null array.
    let timeout: &[u8] = if protocol == 3 { b"_\r\n" } else { b"*-1\r\n" };
    holder
        .roundtrip(&["BLPOP", "lock-signal:report", "0.2"], timeout)
        .await;
    // A free lock: at once.
    let reset = "afbc8014508f92e446b56567e8ba600e811c1bd5";
    holder
        .roundtrip(
            &[
                "EVALSHA",
                reset,
                "2",
                "lock:report",
                "lock-signal:report",
                "x",
                "1000",
            ],
            b":1\r\n",
        )
        .await;
    holder
        .roundtrip(
            &["BLPOP", "lock-signal:report", "0"],
            b"*2\r\n$18\r\nlock-signal:report\r\n$1\r\n1\r\n",
        )
        .await;
    err_with(
        &mut holder,
        &["BLPOP", "jobs", "1"],
        &["python-redis-lock", "lock-signal"],
    )
    .await;
    let reset_all = "b121d3548d693116c3851b63befe947e49f28c7c";
    err_with(
        &mut holder,
        &["EVALSHA", reset_all, "0"],
        &["python-redis-lock", "reset()"],
    )
    .await;
}

#[tokio::test]
async fn python_redis_lock_signal_resp2() {
    signal_wakes_a_blocked_waiter(2).await;
}

#[tokio::test]
async fn python_redis_lock_signal_resp3() {
    signal_wakes_a_blocked_waiter(3).await;
}

// ---------------------------------------------------------------------------------------------
// redis-semaphore's counting semaphores, mapped onto PERMITS: holders by their identifiers

const SEM_ACQUIRE: &str = "43ebdb49120d170e08af560cb4e46e36f8585936";
const SEM_REFRESH: &str = "999a49a1d07671a8027165641001f5bad44608b3";
const SEM_REFRESH_OLD: &str = "e30ad491f44e8ff122037a52cb0b0148234a6a4e";
const MULTI_ACQUIRE: &str = "10c1c2e05e7c48aa5824d227b8c51abcde87b18e";
const MULTI_REFRESH: &str = "2327bcdc5edb5b8687f6d19b5e1f42b815ebddab";
const MULTI_RELEASE: &str = "0bd1010c98f1ddd70a6024fd374489a8ea3d2c12";

/// redis-semaphore's `Semaphore` script `sha` on `key` for `id`: ARGV limit, identifier,
/// lock timeout, the client's time.
async fn semaphore(c: &mut Conn, sha: &str, key: &str, limit: &str, id: &str) -> i64 {
    let now = "1767225600000";
    support::int(
        &c.call(&["evalsha", sha, "1", key, limit, id, "2000", now])
            .await,
    )
}

/// redis-semaphore's `MultiSemaphore` script `sha` on `key`: `permits` of `limit` for `id`.
async fn multi(c: &mut Conn, sha: &str, key: &str, limit: &str, permits: &str, id: &str) -> i64 {
    let now = "1767225600000";
    let args = ["evalsha", sha, "1", key, limit, permits, id, "2000", now];
    support::int(&c.call(&args).await)
}

/// A `Semaphore` of 2 holds at most two identifiers through either proxy; its refresh keeps
/// only a holder's permit; a plain `ZREM` of the identifier releases it through the other
/// proxy; a `MultiSemaphore` takes its permits all or none from the same count; and every
/// misuse is an error naming it.
#[tokio::test]
async fn redis_semaphore_semaphores_map_onto_permits() {
    for protocol in [2, 3] {
        let (_cluster, mut a, mut b) = two(protocol).await;
        let key = "semaphore:printer";
        assert_eq!(semaphore(&mut a, SEM_ACQUIRE, key, "2", "id-1").await, 1);
        assert_eq!(semaphore(&mut b, SEM_ACQUIRE, key, "2", "id-2").await, 1);
        assert_eq!(semaphore(&mut a, SEM_ACQUIRE, key, "2", "id-3").await, 0);
        assert_eq!(semaphore(&mut b, SEM_ACQUIRE, key, "2", "id-3").await, 0);
        // The refresh extends a holder's permit, and takes none for anyone else; the old one
        // (before 5.3.1) takes one where there is room.
        assert_eq!(semaphore(&mut b, SEM_REFRESH, key, "2", "id-1").await, 1);
        assert_eq!(semaphore(&mut a, SEM_REFRESH, key, "2", "id-3").await, 0);
        assert_eq!(
            semaphore(&mut a, SEM_REFRESH_OLD, key, "2", "id-3").await,
            0
        );
        // Released with a plain ZREM of the identifier, through the other proxy.
        assert_eq!(support::int(&b.call(&["zrem", key, "id-1"]).await), 1);
        assert_eq!(support::int(&b.call(&["zrem", key, "id-1"]).await), 0);
        assert_eq!(semaphore(&mut a, SEM_REFRESH, key, "2", "id-1").await, 0);
        assert_eq!(
            semaphore(&mut a, SEM_REFRESH_OLD, key, "2", "id-3").await,
            1
        );
        assert_eq!(semaphore(&mut b, SEM_ACQUIRE, key, "2", "id-4").await, 0);
        let released = b.call(&["zrem", key, "id-2", "id-3", "nobody"]).await;
        assert_eq!(support::int(&released), 2);
        // Another limit on a semaphore in use is a conflict naming both counts.
        assert_eq!(semaphore(&mut a, SEM_ACQUIRE, key, "2", "id-5").await, 1);
        let args = ["evalsha", SEM_ACQUIRE, "1", key, "3", "id-6", "2000", "1"];
        err_with(&mut b, &args, &["WRONGTYPE", "PERMITS 2", "PERMITS 3"]).await;
        assert_eq!(support::int(&a.call(&["zrem", key, "id-5"]).await), 1);

        // A MultiSemaphore of 3 takes 2 permits, all or none, from the count a Semaphore of 3
        // shares.
        let key = "semaphore:scanner";
        assert_eq!(multi(&mut a, MULTI_ACQUIRE, key, "3", "2", "m").await, 1);
        assert_eq!(multi(&mut b, MULTI_ACQUIRE, key, "3", "2", "n").await, 0);
        assert_eq!(semaphore(&mut b, SEM_ACQUIRE, key, "3", "s").await, 1);
        assert_eq!(semaphore(&mut a, SEM_ACQUIRE, key, "3", "t").await, 0);
        assert_eq!(multi(&mut b, MULTI_REFRESH, key, "3", "2", "m").await, 1);
        assert_eq!(multi(&mut b, MULTI_REFRESH, key, "3", "2", "n").await, 0);
        let release = ["evalsha", MULTI_RELEASE, "1", key, "2", "m"];
        assert_eq!(support::int(&b.call(&release).await), 2);
        assert_eq!(support::int(&a.call(&release).await), 0);
        assert_eq!(multi(&mut a, MULTI_ACQUIRE, key, "3", "2", "n").await, 1);
        // ZREM of one of its members releases that permit alone, as in Redis.
        assert_eq!(support::int(&a.call(&["zrem", key, "n_1"]).await), 1);
        assert_eq!(semaphore(&mut a, SEM_ACQUIRE, key, "3", "t").await, 1);

        // Misuse: more permits than the limit, a limit out of range, ZREM on another kind.
        let args = [
            "evalsha",
            MULTI_ACQUIRE,
            "1",
            key,
            "3",
            "4",
            "x",
            "2000",
            "1",
        ];
        err_with(&mut a, &args, &["permits", "between 1 and the limit (3)"]).await;
        let args = [
            "evalsha",
            SEM_ACQUIRE,
            "1",
            "semaphore:z",
            "0",
            "x",
            "2000",
            "1",
        ];
        err_with(&mut a, &args, &["limit", "between 1 and 1024"]).await;
        let args = [
            "evalsha",
            SEM_ACQUIRE,
            "1",
            "semaphore:z",
            "2",
            "x",
            "abc",
            "1",
        ];
        err_with(&mut a, &args, &["ERR"]).await;
        a.call(&["LOCK", "plain", "5000"]).await;
        err_with(
            &mut b,
            &["zrem", "plain", "x"],
            &["WRONGTYPE", "exclusive", "ZREM"],
        )
        .await;
        assert_eq!(support::int(&b.call(&["zrem", "free", "x"]).await), 0);
    }
}

/// The scripts' bodies run by `EVAL` too (redis-semaphore falls back to it after NOSCRIPT).
#[tokio::test]
async fn redis_semaphore_scripts_run_by_their_bodies() {
    let (_cluster, mut a, mut b) = two(2).await;
    let acquire = body("redis-semaphore", "semaphore acquire");
    let take = |id| ["eval", &acquire, "1", "semaphore:s", "1", id, "2000", "1"];
    assert_eq!(support::int(&a.call(&take("x")).await), 1);
    assert_eq!(support::int(&b.call(&take("y")).await), 0);
    let release = body("redis-semaphore", "multiSemaphore release");
    let args = ["eval", &release, "1", "semaphore:s", "1", "x"];
    assert_eq!(support::int(&b.call(&args).await), 0);
    assert_eq!(
        support::int(&b.call(&["zrem", "semaphore:s", "x"]).await),
        1
    );
    assert_eq!(support::int(&b.call(&take("y")).await), 1);
}
