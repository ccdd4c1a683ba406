//! The operators' listener over real HTTP: counters grow by exactly the traffic sent, the
//! voting gauge and `/readyz` follow masters killed and restarted, `promtool` finds the
//! exposition clean and runs the alert rules' unit tests, and the binary logs JSON lines and
//! reloads its log filter on SIGHUP.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use redlock_proxy::config::Config;
use support::{Conn, TempDir, is_null, text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// How long one HTTP exchange may take.
const HTTP_WITHIN: Duration = Duration::from_secs(5);

/// A proxy over `masters` with the metrics listener on a free loopback port.
async fn proxy(
    masters: &[redlock_proxy::embedded::RedisServer],
    tweak: impl FnOnce(&mut Config),
) -> (support::TestProxy, SocketAddr) {
    let p = support::proxy_with(masters, |c| {
        c.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(c);
    })
    .await;
    let addr = p.inner().metrics_addr().expect("the metrics listener runs");
    (p, addr)
}

/// `GET path` over HTTP/1.1: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        s.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(HTTP_WITHIN, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no response within {HTTP_WITHIN:?}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a header and a body");
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head}"));
    (status, body.to_owned())
}

/// The exposition's samples, `name{labels}` → value.
async fn scrape(addr: SocketAddr) -> Vec<(String, f64)> {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// The value of `series` (exact text, labels in the exposition's order); panics when absent.
fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no sample {series}"))
        .1
}

/// Polls (every 20 ms, at most `within`) until `ok` holds for a fresh scrape; the time it took.
async fn until_scraped(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    ok: impl Fn(&[(String, f64)]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let samples = scrape(addr).await;
        if ok(&samples) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not within {within:?}: {what}; last scrape: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn outcome(command: &str, outcome: &str) -> String {
    format!("redlock_proxy_lock_requests_total{{command=\"{command}\",outcome=\"{outcome}\"}}")
}

#[tokio::test]
async fn counters_grow_by_the_traffic_sent() {
    let m = support::masters(3);
    let (p, metrics) = proxy(&m, |_| {}).await;
    let before = scrape(metrics).await;
    let mut c = p.conn().await;
    let mut sent = 0;
    let mut received = 0;
    let mut call = async |c: &mut Conn, args: &[&str]| {
        let request: String = format!("*{}\r\n", args.len())
            + &args
                .iter()
                .map(|a| format!("${}\r\n{a}\r\n", a.len()))
                .collect::<String>();
        sent += request.len();
        let reply = c.call(args).await;
        received += encoded_len(&reply);
        reply
    };
    let mut tokens = Vec::new();
    for key in ["a", "b", "c", "d", "e"] {
        tokens.push(text(&call(&mut c, &["LOCK", key, "10000"]).await));
    }
    for _ in 0..3 {
        assert!(is_null(&call(&mut c, &["LOCK", "a", "10000"]).await));
    }
    for (key, token) in ["a", "b"].iter().zip(&tokens) {
        assert_eq!(
            support::int(&call(&mut c, &["UNLOCK", key, token]).await),
            1
        );
    }
    let wrong = "0".repeat(32);
    assert_eq!(
        support::int(&call(&mut c, &["UNLOCK", "c", &wrong]).await),
        0
    );
    support::error(&call(&mut c, &["LOCK", "c", "not-a-ttl"]).await);
    assert!(is_null(
        &call(&mut c, &["LOCK", "c", "1000", "WAIT", "20"]).await
    ));
    let after = scrape(metrics).await;
    let grew = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(grew(&outcome("lock", "granted")), 5.0);
    assert_eq!(grew(&outcome("lock", "held")), 3.0);
    assert_eq!(grew(&outcome("lock", "error")), 1.0);
    assert_eq!(grew(&outcome("lock", "no_quorum")), 0.0);
    assert_eq!(grew(&outcome("unlock", "granted")), 2.0);
    assert_eq!(grew(&outcome("unlock", "held")), 1.0);
    assert_eq!(grew(&outcome("lock_wait", "held")), 1.0);
    assert_eq!(grew("redlock_proxy_commands_total"), 13.0);
    assert_eq!(grew("redlock_proxy_locks_granted_total"), 5.0);
    let by_kind =
        |kind: &str| format!("redlock_proxy_locks_granted_by_kind_total{{kind=\"{kind}\"}}");
    assert_eq!(grew(&by_kind("exclusive")), 5.0);
    assert_eq!(grew(&by_kind("shared")), 0.0);
    // Histograms appear with their first observation.
    let count = |command: &str| {
        value(
            &after,
            &format!("redlock_proxy_request_duration_seconds_count{{command=\"{command}\"}}"),
        )
    };
    assert_eq!(count("lock"), 9.0);
    assert_eq!(count("unlock"), 3.0);
    assert_eq!(count("lock_wait"), 1.0);
    let wait = value(
        &after,
        "redlock_proxy_request_duration_seconds_sum{command=\"lock_wait\"}",
    );
    assert!((0.02..5.0).contains(&wait), "a 20 ms wait took {wait} s");
    // The buckets are cumulative, and every LOCK here took well under 5 s.
    let le = |bound: &str| {
        value(
            &after,
            &format!(
                "redlock_proxy_request_duration_seconds_bucket{{command=\"lock\",le=\"{bound}\"}}"
            ),
        )
    };
    assert_eq!(le("+Inf"), 9.0);
    assert_eq!(le("5"), 9.0);
    let bounds = ["5e-05", "0.0001", "0.001", "0.01", "0.1", "1", "5", "+Inf"];
    assert!(bounds.windows(2).all(|w| le(w[0]) <= le(w[1])));
    assert_eq!(
        grew("redlock_proxy_net_input_bytes_total"),
        sent as f64,
        "bytes in"
    );
    assert_eq!(
        grew("redlock_proxy_net_output_bytes_total"),
        received as f64,
        "bytes out"
    );
    assert_eq!(value(&after, "redlock_proxy_connected_clients"), 1.0);
    assert_eq!(value(&after, "redlock_proxy_masters_voting"), 3.0);
    for master in &m {
        let series = format!(
            "redlock_proxy_master_round_trip_seconds_count{{master=\"{}\"}}",
            master.addr()
        );
        assert!(value(&after, &series) > value(&before, &series), "{series}");
    }
    let (status, body) = get(metrics, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = get(metrics, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready: 3 of 3 masters vote, 2 needed\n")
    );
    assert_eq!(get(metrics, "/nope").await.0, 404);
    drop(c);
    p.stop().await;
}

/// The length of `reply` as the proxy encoded it in RESP2 (the replies this test gets).
fn encoded_len(reply: &redis_protocol::resp3::types::OwnedFrame) -> usize {
    use redis_protocol::resp3::types::OwnedFrame as F;
    match reply {
        F::BlobString { data, .. } => format!("${}\r\n", data.len()).len() + data.len() + 2,
        F::Number { data, .. } => format!(":{data}\r\n").len(),
        F::Null => 5,
        F::SimpleError { data, .. } => data.len() + 3,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test]
async fn readiness_and_the_voting_gauge_follow_masters_killed_and_restarted() {
    let mut m = support::masters(3);
    let (p, metrics) = proxy(&m, |c| {
        c.redlock.max_ttl_ms = 2_000;
        c.backend.reconnect_min_ms = 10;
        c.backend.reconnect_max_ms = 100;
    })
    .await;
    assert_eq!(get(metrics, "/readyz").await.0, 200);
    let voting = |n: f64| move |s: &[(String, f64)]| value(s, "redlock_proxy_masters_voting") == n;

    m[0].kill();
    until_scraped(metrics, Duration::from_secs(5), "2 voting", voting(2.0)).await;
    assert_eq!(get(metrics, "/readyz").await.0, 200, "a quorum still votes");
    let down = format!(
        "redlock_proxy_master_state{{master=\"{}\",state=\"down\"}}",
        m[0].addr()
    );
    assert_eq!(value(&scrape(metrics).await, &down), 1.0);

    // Losing the quorum: /readyz says so within 3 s.
    m[1].kill();
    let lost = Instant::now();
    loop {
        let (status, body) = get(metrics, "/readyz").await;
        if status == 503 {
            assert_eq!(body, "not ready: 1 of 3 masters vote, 2 needed\n");
            break;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(3),
            "/readyz still {status} 3 s after the quorum was lost: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        value(&scrape(metrics).await, "redlock_proxy_masters_voting"),
        1.0
    );
    let mut c = p.conn().await;
    let refused = c.call(&["LOCK", "k", "1000"]).await;
    assert!(
        support::error(&refused).starts_with("NOQUORUM"),
        "{refused:?}"
    );
    let noquorum = value(&scrape(metrics).await, &outcome("lock", "no_quorum"));
    assert_eq!(noquorum, 1.0);

    // Back: a restarted master sits out its quarantine (max_ttl_ms), which the metrics name,
    // then votes; /readyz is 200 again.
    m[0].restart().unwrap();
    m[1].restart().unwrap();
    let held_out = format!(
        "redlock_proxy_master_held_out{{master=\"{}\",reason=\"restarted\"}}",
        m[1].addr()
    );
    until_scraped(
        metrics,
        Duration::from_secs(10),
        "a restarted master is held out as restarted",
        |s| value(s, &held_out) == 1.0,
    )
    .await;
    until_scraped(metrics, Duration::from_secs(20), "3 voting", voting(3.0)).await;
    let (status, body) = get(metrics, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready: 3 of 3 masters vote, 2 needed\n")
    );
    let reconnects = format!(
        "redlock_proxy_master_reconnects_total{{master=\"{}\"}}",
        m[1].addr()
    );
    assert!(value(&scrape(metrics).await, &reconnects) >= 1.0);
    drop(c);
    p.stop().await;
}

/// Runs `promtool` with `args` (in `dir`) on `stdin`; its exit status and output.
async fn promtool(dir: &Path, args: &[&str], stdin: &[u8]) -> (bool, String) {
    let out = support::run_bounded(
        Command::new("promtool").args(args).current_dir(dir),
        stdin,
        Duration::from_secs(60),
    )
    .await;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn promtool_finds_the_exposition_clean_and_the_alert_rules_pass_their_tests() {
    let mut m = support::masters(3);
    let (p, metrics) = proxy(&m, |_| {}).await;
    let mut c = p.conn().await;
    c.call(&["LOCK", "k", "1000"]).await;
    c.call(&["LOCK", "k", "1000", "WAIT", "10"]).await;
    c.call(&["SET", "s", "v", "NX", "PX", "1000"]).await;
    m[2].kill();
    until_scraped(metrics, Duration::from_secs(5), "a master down", |s| {
        value(s, "redlock_proxy_masters_voting") == 2.0
    })
    .await;
    let (status, exposition) = get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let (ok, said) = promtool(&contrib, &["check", "metrics"], exposition.as_bytes()).await;
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    let (ok, said) = promtool(&contrib, &["check", "rules", "alerts.yml"], b"").await;
    assert!(ok && said.contains("SUCCESS: 5 rules found"), "{said}");
    let (ok, said) = promtool(&contrib, &["test", "rules", "alerts.test.yml"], b"").await;
    assert!(
        ok && said.contains("SUCCESS"),
        "promtool test rules: {said}"
    );
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn the_binary_logs_json_lines_and_reloads_its_filter_on_sighup() {
    let mut m = support::masters(3);
    let dir = TempDir::new();
    let config = dir.write(
        "proxy.toml",
        "[backend]\npersistent_masters = true\n[log]\nlevel = \"info\"\n",
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redlock-proxy"));
    cmd.env_remove("RUST_LOG").current_dir(&dir.0).args([
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    for master in &m {
        cmd.args(["--backend", &master.addr().to_string()]);
    }
    let (child, addr) = support::spawn_listening(&mut cmd, &dir);
    let log = dir.0.join("stderr.log");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let logged = async |what: &str, found: &dyn Fn(&serde_json::Value) -> bool| {
        let started = Instant::now();
        while !lines().iter().any(found) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "never logged: {what}; log: {:?}",
                lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let message = |v: &serde_json::Value| v["message"].as_str().unwrap_or("").to_owned();
    logged("ready", &|v| {
        message(v).contains("ready") && v["level"] == "INFO"
    })
    .await;
    let ready = lines()
        .into_iter()
        .find(|v| message(v).contains("ready"))
        .unwrap();
    assert_eq!(ready["listen"], addr.to_string());
    assert_eq!(ready["quorum"], 2);

    // Debug lines appear only after the file says debug and SIGHUP reloads it.
    let debug = |v: &serde_json::Value| v["level"] == "DEBUG";
    assert!(!lines().iter().any(debug));
    std::fs::write(
        &config,
        "[backend]\npersistent_masters = true\n[log]\nlevel = \"redlock_proxy=debug\"\n",
    )
    .unwrap();
    let pid = libc::pid_t::try_from(child.id().unwrap()).unwrap();
    // SAFETY: kill(2) on our own child with a valid signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    logged("the reload", &|v| {
        message(v).contains("log filter reloaded") && v["filter"] == "redlock_proxy=debug"
    })
    .await;
    // A master's lost connection is logged at debug.
    m[2].kill();
    logged("a debug line", &debug).await;
    drop(child);
}
