//! Real clients against a proxy over three real masters: the Rust `redis` crate (async and sync,
//! RESP2 and RESP3, password and database in the URL), `redis-cli` (one-shot, REPL on a pipe,
//! `--pipe`, help from `COMMAND DOCS`) and `redis-benchmark` (which aborts on any error reply).

mod support;

use std::time::Duration;

use redis::Value;
use support::TestProxy;
use tokio::process::Command;

/// Bound on any one run of redis-cli or redis-benchmark.
const CHILD_WITHIN: Duration = Duration::from_secs(30);

fn is_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The token inside a LOCK reply, in whichever string type the protocol gives.
fn token_of(v: &Value) -> String {
    let s = match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("expected a token, got {other:?}"),
    };
    assert!(is_token(&s), "not a token: {s:?}");
    s
}

/// One `field:value` from the proxy's INFO.
async fn info_field(p: &TestProxy, section: &str, field: &str) -> i64 {
    let mut c = p.conn().await;
    let info = support::text(&c.call(&["INFO", section]).await);
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} in INFO:\n{info}"))
        .parse()
        .unwrap()
}

/// LOCK, contended LOCK, LOCKTTL, EXTEND, UNLOCK twice, all through the `redis` crate.
async fn async_lock_flow(con: &mut redis::aio::MultiplexedConnection, key: &str) {
    let granted: Value = redis::cmd("LOCK")
        .arg(key)
        .arg(5000)
        .query_async(con)
        .await
        .unwrap();
    let token = token_of(&granted);
    let held: Value = redis::cmd("LOCK")
        .arg(key)
        .arg(5000)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(held, Value::Nil);
    let ttl: i64 = redis::cmd("LOCKTTL")
        .arg(key)
        .query_async(con)
        .await
        .unwrap();
    assert!((1..=5000).contains(&ttl), "LOCKTTL {ttl}");
    let extended: i64 = redis::cmd("EXTEND")
        .arg(key)
        .arg(&token)
        .arg(20_000)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(extended, 1);
    let ttl: i64 = redis::cmd("LOCKTTL")
        .arg(key)
        .query_async(con)
        .await
        .unwrap();
    assert!((5001..=20_000).contains(&ttl), "LOCKTTL after EXTEND {ttl}");
    let released: i64 = redis::cmd("UNLOCK")
        .arg(key)
        .arg(&token)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(released, 1);
    let again: i64 = redis::cmd("UNLOCK")
        .arg(key)
        .arg(&token)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(again, 0);
    let ttl: i64 = redis::cmd("LOCKTTL")
        .arg(key)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(ttl, -2);
}

#[tokio::test]
async fn redis_rs_async_resp2() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let client = redis::Client::open(p.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    async_lock_flow(&mut con, "rs:async2").await;
    // No HELLO was sent: a RESP2 map arrives as a flat array.
    let cfg: Value = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        cfg,
        Value::Array(vec![
            Value::BulkString(b"save".to_vec()),
            Value::BulkString(vec![])
        ])
    );
    assert_eq!(info_field(&p, "stats", "noquorum_replies").await, 0);
    p.stop().await;
}

#[tokio::test]
async fn redis_rs_async_resp3() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let client = redis::Client::open(format!("{}?protocol=resp3", p.url())).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    async_lock_flow(&mut con, "rs:async3").await;
    // HELLO 3 took effect: the same reply is now a RESP3 map.
    let cfg: Value = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        cfg,
        Value::Map(vec![(
            Value::BulkString(b"save".to_vec()),
            Value::BulkString(vec![])
        )])
    );
    assert_eq!(info_field(&p, "stats", "noquorum_replies").await, 0);
    p.stop().await;
}

#[tokio::test]
async fn redis_rs_sync_connection() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let url = p.url();
    // The sync client blocks, so it runs off the runtime that serves the proxy.
    tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(url).unwrap();
        let mut con = client.get_connection().unwrap();
        let granted: Value = redis::cmd("LOCK")
            .arg("rs:sync")
            .arg(5000)
            .query(&mut con)
            .unwrap();
        let token = token_of(&granted);
        let held: Value = redis::cmd("LOCK")
            .arg("rs:sync")
            .arg(5000)
            .query(&mut con)
            .unwrap();
        assert_eq!(held, Value::Nil);
        let ttl: i64 = redis::cmd("LOCKTTL")
            .arg("rs:sync")
            .query(&mut con)
            .unwrap();
        assert!((1..=5000).contains(&ttl), "LOCKTTL {ttl}");
        let ext: i64 = redis::cmd("EXTEND")
            .arg("rs:sync")
            .arg(&token)
            .arg(9000)
            .query(&mut con)
            .unwrap();
        assert_eq!(ext, 1);
        let rel: i64 = redis::cmd("UNLOCK")
            .arg("rs:sync")
            .arg(&token)
            .query(&mut con)
            .unwrap();
        assert_eq!(rel, 1);
        let rel: i64 = redis::cmd("UNLOCK")
            .arg("rs:sync")
            .arg(&token)
            .query(&mut con)
            .unwrap();
        assert_eq!(rel, 0);
    })
    .await
    .unwrap();
    p.stop().await;
}

#[tokio::test]
async fn redis_rs_password_and_database_in_the_url() {
    let m = support::masters(3);
    let p = support::proxy_with(&m, |c| c.server.requirepass = "s3cret".into()).await;
    let base = format!("{}:{}", p.addr.ip(), p.addr.port());

    // RESP2: AUTH then SELECT 3; RESP3: HELLO 3 AUTH default s3cret then SELECT 3.
    let mut db3 = redis::Client::open(format!("redis://:s3cret@{base}/3"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut db3_resp3 = redis::Client::open(format!("redis://:s3cret@{base}/3?protocol=resp3"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut db0 = redis::Client::open(format!("redis://:s3cret@{base}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let t: Value = redis::cmd("LOCK")
        .arg("shared")
        .arg(5000)
        .query_async(&mut db3)
        .await
        .unwrap();
    token_of(&t);
    // Same database, other connection: held.
    let held: Value = redis::cmd("LOCK")
        .arg("shared")
        .arg(5000)
        .query_async(&mut db3_resp3)
        .await
        .unwrap();
    assert_eq!(held, Value::Nil);
    // Database 0 is a different lock space, so SELECT 3 really was applied above.
    let other: Value = redis::cmd("LOCK")
        .arg("shared")
        .arg(5000)
        .query_async(&mut db0)
        .await
        .unwrap();
    token_of(&other);

    // Wrong password and no password are both refused.
    let wrong = redis::Client::open(format!("redis://:nope@{base}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    let e = wrong.expect_err("a wrong password is refused");
    assert_eq!(e.kind(), redis::ErrorKind::AuthenticationFailed, "{e}");
    let mut anon = redis::Client::open(format!("redis://{base}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let e = redis::cmd("LOCK")
        .arg("x")
        .arg(5000)
        .query_async::<Value>(&mut anon)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("NOAUTH"), "{e}");
    p.stop().await;
}

fn redis_cli(p: &TestProxy) -> Command {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &p.addr.port().to_string()]);
    cmd
}

/// Runs redis-cli with `args` and `stdin`; asserts exit 0 and an empty stderr; gives stdout.
async fn cli_ok(p: &TestProxy, args: &[&str], stdin: &[u8]) -> String {
    let out = support::run_bounded(redis_cli(p).args(args), stdin, CHILD_WITHIN).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stderr.is_empty(),
        "redis-cli {args:?}: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

#[tokio::test]
async fn redis_cli_one_shot() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let token = cli_ok(&p, &["LOCK", "cli:a", "5000"], b"").await;
    let token = token.strip_suffix('\n').unwrap();
    assert!(is_token(token), "{token:?}");
    // Raw mode prints nil as an empty line.
    assert_eq!(cli_ok(&p, &["LOCK", "cli:a", "5000"], b"").await, "\n");
    let ttl: i64 = cli_ok(&p, &["LOCKTTL", "cli:a"], b"")
        .await
        .trim_end()
        .parse()
        .unwrap();
    assert!((1..=5000).contains(&ttl), "{ttl}");
    assert_eq!(cli_ok(&p, &["UNLOCK", "cli:a", token], b"").await, "1\n");
    assert_eq!(cli_ok(&p, &["UNLOCK", "cli:a", token], b"").await, "0\n");
    // redis-cli ends an error with an empty line in raw mode, as against Redis.
    assert_eq!(
        cli_ok(&p, &["LOCK", "cli:a", "1"], b"").await,
        "ERR invalid expire time in 'lock' command: ttl-ms must be between 4 and 60000\n\n"
    );

    // -3 sends HELLO 3 first; the map prints one pair per line in raw mode.
    let hello = cli_ok(&p, &["-3", "HELLO", "3"], b"").await;
    let lines: Vec<&str> = hello.lines().collect();
    assert!(lines.contains(&"server redlock-proxy"), "{hello}");
    assert!(lines.contains(&"proto 3"), "{hello}");
    let nil = cli_ok(&p, &["-3", "--no-raw", "LOCK", "cli:b", "5000"], b"").await;
    assert!(nil.starts_with('"') && nil.len() == 35, "{nil:?}");
    assert_eq!(
        cli_ok(&p, &["-3", "--no-raw", "LOCK", "cli:b", "5000"], b"").await,
        "(nil)\n"
    );
    p.stop().await;
}

#[tokio::test]
async fn redis_cli_repl_on_a_pipe() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    // Commands on stdin put redis-cli in REPL mode, which first fetches COMMAND DOCS.
    let out = cli_ok(&p, &[], b"LOCK a 5000\nLOCKTTL a\nLOCK a 5000\n").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    assert!(is_token(lines[0]), "{out:?}");
    let ttl: i64 = lines[1].parse().unwrap();
    assert!((1..=5000).contains(&ttl), "{out:?}");
    assert_eq!(lines[2], "");
    p.stop().await;
}

#[tokio::test]
async fn redis_cli_help_lock_uses_command_docs() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let out = cli_ok(&p, &[], b"help LOCK\n").await;
    // redis-cli colours help even on a pipe; compare the text without escape sequences.
    let plain = strip_ansi(&out);
    assert!(plain.contains("LOCK key ttl-ms"), "{plain:?}");
    assert!(
        plain.contains(
            "summary: Takes a distributed lock on a quorum of masters; returns its token, or nil when it is held"
        ),
        "{plain:?}"
    );
    assert!(plain.contains("group: generic"), "{plain:?}");
    p.stop().await;
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn redis_cli_command_docs() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    let raw = cli_ok(&p, &["COMMAND", "DOCS", "lock"], b"").await;
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines[0], "lock", "{raw}");
    assert!(lines.contains(&"ttl-ms"), "{raw}");
    let pretty = cli_ok(&p, &["--no-raw", "COMMAND", "DOCS", "lock"], b"").await;
    // The argument list redis-cli builds its hints from: name and type of each argument.
    let args: Vec<&str> = pretty
        .lines()
        .skip_while(|l| !l.contains("\"arguments\""))
        .skip(1)
        .map(strip_indices)
        .collect();
    assert_eq!(
        args,
        [
            "\"name\"",
            "\"key\"",
            "\"type\"",
            "\"key\"",
            "\"key_spec_index\"",
            "(integer) 0",
            "\"name\"",
            "\"ttl-ms\"",
            "\"type\"",
            "\"integer\"",
            "\"name\"",
            "\"WAIT timeout-ms\"",
            "\"type\"",
            "\"string\"",
            "\"flags\"",
            "optional",
            "\"name\"",
            "\"SESSION\"",
            "\"type\"",
            "\"string\"",
            "\"flags\"",
            "optional",
            "\"name\"",
            "\"FENCE\"",
            "\"type\"",
            "\"string\"",
            "\"flags\"",
            "optional",
            "\"name\"",
            "\"SHARED\"",
            "\"type\"",
            "\"string\"",
            "\"flags\"",
            "optional",
            "\"name\"",
            "\"PERMITS n\"",
            "\"type\"",
            "\"string\"",
            "\"flags\"",
            "optional",
        ],
        "{pretty}"
    );
    // The whole table once more, as the REPL asks for it: every entry must be well formed.
    let all = cli_ok(&p, &["--no-raw", "COMMAND", "DOCS"], b"").await;
    for name in ["lock", "unlock", "extend", "lockttl", "hello", "command"] {
        assert!(
            all.contains(&format!(") \"{name}\"")),
            "{name} missing:\n{all}"
        );
    }
    p.stop().await;
}

/// A `--no-raw` line without its indentation and `N) ` element numbers.
fn strip_indices(line: &str) -> &str {
    let mut rest = line.trim_start();
    while let Some((num, tail)) = rest.split_once(") ") {
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        rest = tail.trim_start();
    }
    rest
}

/// `n` LOCK commands as RESP, over `keys` distinct keys.
fn resp_locks(n: usize, keys: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("pipe:{}", i % keys);
        out.extend_from_slice(
            format!(
                "*3\r\n$4\r\nLOCK\r\n${}\r\n{key}\r\n$4\r\n5000\r\n",
                key.len()
            )
            .as_bytes(),
        );
    }
    out
}

#[tokio::test]
async fn redis_cli_pipe_mode() {
    let m = support::masters(3);
    let p = support::proxy(&m).await;
    // 200 LOCKs over 50 keys: 50 tokens and 150 nulls, none of them errors.
    let out = cli_ok(&p, &["--pipe"], &resp_locks(200, 50)).await;
    assert!(out.contains("errors: 0, replies: 200"), "{out}");
    assert_eq!(info_field(&p, "stats", "locks_granted").await, 50);
    assert_eq!(info_field(&p, "stats", "locks_refused").await, 150);
    p.stop().await;
}

/// Runs redis-benchmark against the proxy; asserts exit 0, no error, and a positive rate.
async fn bench(p: &TestProxy, args: &[&str]) -> String {
    let port = p.addr.port().to_string();
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port]).args(args);
    let out = support::run_bounded(&mut cmd, b"", CHILD_WITHIN).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && !stdout.contains("Error") && !stderr.contains("Error"),
        "redis-benchmark {args:?}: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    // The -q progress line is overwritten with \r; the final result is the last segment.
    let results: Vec<f64> = stdout
        .split(['\r', '\n'])
        .filter_map(|l| l.split_once(" requests per second"))
        .map(|(head, _)| head.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(!results.is_empty(), "no result in {stdout:?}");
    assert!(results.iter().all(|r| *r > 0.0), "{stdout:?}");
    stdout
}

/// A proxy whose masters get more time than the default 50 ms: the machine running the tests is
/// shared, and a slow scheduler must not turn into NOQUORUM, which aborts redis-benchmark.
async fn bench_proxy(m: &[redlock_proxy::embedded::RedisServer]) -> TestProxy {
    support::proxy_with(m, |c| c.redlock.master_deadline_ms = 1_000).await
}

async fn assert_lock_counts(p: &TestProxy, total: i64) {
    let granted = info_field(p, "stats", "locks_granted").await;
    let refused = info_field(p, "stats", "locks_refused").await;
    assert_eq!(
        granted + refused,
        total,
        "granted {granted}, refused {refused}"
    );
    assert_eq!(info_field(p, "stats", "noquorum_replies").await, 0);
    assert_eq!(info_field(p, "stats", "total_error_replies").await, 0);
}

#[tokio::test]
async fn redis_benchmark_lock_unpipelined() {
    let m = support::masters(3);
    let p = bench_proxy(&m).await;
    let out = bench(
        &p,
        &[
            "-q",
            "-c",
            "20",
            "-n",
            "2000",
            "-r",
            "100000",
            "-P",
            "1",
            "LOCK",
            "key:__rand_int__",
            "5000",
        ],
    )
    .await;
    assert!(out.contains("LOCK key:__rand_int__ 5000: "), "{out:?}");
    assert_lock_counts(&p, 2000).await;
    p.stop().await;
}

#[tokio::test]
async fn redis_benchmark_lock_pipelined() {
    let m = support::masters(3);
    let p = bench_proxy(&m).await;
    bench(
        &p,
        &[
            "-q",
            "-c",
            "20",
            "-n",
            "2000",
            "-r",
            "100000",
            "-P",
            "16",
            "LOCK",
            "key:__rand_int__",
            "5000",
        ],
    )
    .await;
    assert_lock_counts(&p, 2000).await;
    p.stop().await;
}

#[tokio::test]
async fn redis_benchmark_ping_inline_and_mbulk() {
    let m = support::masters(3);
    let p = bench_proxy(&m).await;
    let out = bench(&p, &["-t", "ping", "-n", "2000", "-q"]).await;
    assert!(out.contains("PING_INLINE: "), "{out:?}");
    assert!(out.contains("PING_MBULK: "), "{out:?}");
    p.stop().await;
}

#[tokio::test]
async fn redis_benchmark_resp3() {
    let m = support::masters(3);
    let p = bench_proxy(&m).await;
    // HELLO 3 is pipelined ahead of the first batch on every connection; nulls come back as `_`.
    bench(
        &p,
        &[
            "-3",
            "-q",
            "-c",
            "20",
            "-n",
            "2000",
            "-r",
            "1000",
            "-P",
            "4",
            "LOCK",
            "key:__rand_int__",
            "5000",
        ],
    )
    .await;
    assert_lock_counts(&p, 2000).await;
    bench(&p, &["-3", "-t", "ping", "-n", "2000", "-q"]).await;
    p.stop().await;
}

#[tokio::test]
async fn redis_benchmark_under_contention() {
    let m = support::masters(3);
    let p = bench_proxy(&m).await;
    // Three keys: after the first grant of each, every LOCK is refused with a null, which
    // redis-benchmark must take as a normal reply.
    bench(
        &p,
        &[
            "-q",
            "-c",
            "20",
            "-n",
            "2000",
            "-r",
            "3",
            "-P",
            "4",
            "LOCK",
            "key:__rand_int__",
            "5000",
        ],
    )
    .await;
    assert_lock_counts(&p, 2000).await;
    // Each key is granted exactly once: its 5 s lock outlives the run.
    assert_eq!(info_field(&p, "stats", "locks_granted").await, 3);
    p.stop().await;
}
