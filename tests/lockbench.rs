//! The `lockbench` binary as `bench/compare`'s fleet step runs it: the load held until standard
//! input closes, and the LOCK latencies written to a file that several processes' runs merge
//! from.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lockbench");
/// Bound on the whole run once started.
const WITHIN: Duration = Duration::from_secs(20);
/// How long the test keeps the input open: longer than the run itself (1 s), so a lockbench
/// that did not wait would have run by then.
const HOLD: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn the_load_waits_for_stdin_to_close_and_its_latencies_sum_to_the_locks() {
    let masters = support::masters(3);
    let proxy = support::proxy(&masters).await;
    let dir = support::TempDir::new();
    let latencies = dir.0.join("latency.txt");
    let mut child = Command::new(BIN)
        .args(["--addr", &proxy.addr.to_string(), "--connections", "2"])
        .args(["--duration-secs", "1", "--warmup-secs", "0"])
        .arg("--start-on-stdin-close")
        .arg("--latency-out")
        .arg(&latencies)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(WITHIN, stderr.next_line())
        .await
        .expect("lockbench says it waits")
        .unwrap();
    assert_eq!(line.as_deref(), Some("lockbench: waiting for the start"));

    tokio::time::sleep(HOLD).await;
    drop(child.stdin.take());
    let closed = Instant::now();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    tokio::time::timeout(WITHIN, stdout.read_to_string(&mut out))
        .await
        .expect("lockbench ends after its run")
        .unwrap();
    let status = tokio::time::timeout(WITHIN, child.wait()).await.unwrap();
    assert!(status.unwrap().success(), "{out}");
    // The whole 1 s run came after the input closed, none of it before.
    assert!(
        closed.elapsed() >= Duration::from_millis(950),
        "lockbench ran before its input closed: done {:?} after\n{out}",
        closed.elapsed()
    );

    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let locks = json["locks_per_sec"].as_f64().unwrap() * json["duration_secs"].as_f64().unwrap();
    assert!(locks >= 1.0, "{out}");
    let written = std::fs::read_to_string(&latencies).unwrap();
    let mut counted = 0u64;
    let mut last = 0.0f64;
    for line in written.lines() {
        let (us, n) = line.split_once(' ').expect("`µs count` lines");
        let us: f64 = us.parse().unwrap();
        assert!(us >= last, "lowest first: {written}");
        last = us;
        counted += n.parse::<u64>().unwrap();
    }
    assert_eq!(counted, locks.round() as u64, "{written}\n{out}");
    assert!(
        (last - json["lock_max_us"].as_f64().unwrap()).abs() <= last / 64.0 + 0.1,
        "the highest bucket is the slowest LOCK: {written}\n{out}"
    );
    proxy.stop().await;
}
