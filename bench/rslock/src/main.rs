//! rslock peer: `--tasks` tasks share one `LockManager` (one multiplexed connection per master)
//! and each loops `lock` → `unlock` on random keys for a fixed time, as a client-side Redlock
//! user would. Prints a summary and one JSON line: cycles/s and acquire latency percentiles.
//!
//! `--workers 0` runs on a current_thread runtime; `--workers N` on N worker threads.
//! `--start-on-stdin-close 1` holds the load (the warm-up) until standard input closes, at most
//! 10 minutes, so processes started one after the other run the same window.
//! `--latency-out FILE` also writes every timed acquire, as `µs count` lines lowest first, so
//! the runs of several processes merge into one distribution.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rslock::LockManager;

/// Samples kept per run in total; past it, later cycles are counted but not timed.
const MAX_SAMPLES: usize = 20_000_000;
/// How long after the end of the run a task may still be finishing its last cycle.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Args {
    servers: Vec<String>,
    tasks: usize,
    workers: usize,
    duration_secs: u64,
    warmup_secs: u64,
    keys: u64,
    ttl_ms: u64,
    latency_out: Option<String>,
    start_on_stdin_close: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        servers: Vec::new(),
        tasks: 50,
        workers: 0,
        duration_secs: 10,
        warmup_secs: 1,
        keys: 100_000,
        ttl_ms: 5000,
        latency_out: None,
        start_on_stdin_close: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--servers" => a.servers = value.split(',').map(str::to_owned).collect(),
            "--tasks" => a.tasks = num()?.clamp(1, 10_000) as usize,
            "--workers" => a.workers = num()?.min(256) as usize,
            "--duration-secs" => a.duration_secs = num()?.clamp(1, 3600),
            "--warmup-secs" => a.warmup_secs = num()?.min(600),
            "--keys" => a.keys = num()?.max(1),
            "--ttl-ms" => a.ttl_ms = num()?.max(1),
            "--latency-out" => a.latency_out = Some(value),
            "--start-on-stdin-close" => a.start_on_stdin_close = num()? != 0,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.servers.is_empty() {
        return Err("--servers redis://127.0.0.1:P1,redis://127.0.0.1:P2,... is required".into());
    }
    Ok(a)
}

#[derive(Debug, Default)]
struct TaskStats {
    cycles: u64,
    lock_errors: u64,
    samples_ns: Vec<u64>,
    first_error: Option<String>,
}

async fn task(
    manager: LockManager,
    args: Args,
    seed: u64,
    from: Instant,
    until: Instant,
    cap: usize,
) -> TaskStats {
    let mut stats = TaskStats::default();
    let mut rng = seed;
    let ttl = Duration::from_millis(args.ttl_ms);
    while Instant::now() < until {
        let key = format!("rslock:key:{}", splitmix(&mut rng) % args.keys);
        let t0 = Instant::now();
        let result = manager.lock(key.as_bytes(), ttl).await;
        let t1 = Instant::now();
        let measuring = t1 >= from && t1 < until;
        match result {
            Ok(lock) => {
                manager.unlock(&lock).await;
                if measuring {
                    stats.cycles += 1;
                    if stats.samples_ns.len() < cap {
                        stats.samples_ns.push((t1 - t0).as_nanos() as u64);
                    }
                }
            }
            Err(e) => {
                stats.lock_errors += 1;
                stats.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    stats
}

async fn run(args: Args) -> (Vec<TaskStats>, u64) {
    let mut manager = LockManager::new(args.servers.clone());
    // One try per lock, as the proxy's LOCK: a failure is counted, not retried after a sleep.
    manager.set_retry(1, Duration::from_millis(1));
    if args.start_on_stdin_close {
        // The line a script starting several processes waits for before it closes their input.
        eprintln!("rslock-peer: waiting for the start");
        let closed = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())
        });
        let _ = tokio::time::timeout(Duration::from_secs(600), closed).await;
    }
    let start = Instant::now();
    let from = start + Duration::from_secs(args.warmup_secs);
    let until = from + Duration::from_secs(args.duration_secs);
    let cap = MAX_SAMPLES / args.tasks;
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let handles: Vec<_> = (0..args.tasks)
        .map(|i| {
            tokio::spawn(task(
                manager.clone(),
                args.clone(),
                base ^ ((i as u64) << 32),
                from,
                until,
                cap,
            ))
        })
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    let mut lost = 0;
    for h in handles {
        match tokio::time::timeout_at((until + GRACE).into(), h).await {
            Ok(Ok(s)) => out.push(s),
            _ => lost += 1,
        }
    }
    (out, lost)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rslock-peer: {e}");
            std::process::exit(2);
        }
    };
    let rt = if args.workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let (stats, lost_tasks) = rt.block_on(run(args.clone()));
    // Tasks stuck past the grace period are abandoned with the runtime.
    rt.shutdown_background();

    let cycles: u64 = stats.iter().map(|s| s.cycles).sum();
    let errors: u64 = stats.iter().map(|s| s.lock_errors).sum::<u64>() + lost_tasks;
    let first_error = stats
        .iter()
        .find_map(|s| s.first_error.clone())
        .unwrap_or_default();
    let mut samples: Vec<u64> = stats.into_iter().flat_map(|s| s.samples_ns).collect();
    samples.sort_unstable();
    let q = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / 1000.0
    };
    if let Some(path) = &args.latency_out {
        if let Err(e) = write_samples(path, &samples) {
            eprintln!("rslock-peer: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    let secs = args.duration_secs as f64;
    let runtime = if args.workers == 0 {
        "current_thread".to_owned()
    } else {
        format!("multi_thread({})", args.workers)
    };
    println!(
        "rslock: {} tasks on {runtime}, {} masters, {} s after {} s warm-up",
        args.tasks,
        args.servers.len(),
        args.duration_secs,
        args.warmup_secs
    );
    println!("  lock→unlock cycles/s  {:.0}", cycles as f64 / secs);
    println!(
        "  acquire latency (µs)  p50 {:.1}  p99 {:.1}  p99.9 {:.1}",
        q(0.5),
        q(0.99),
        q(0.999)
    );
    println!("  cycles {cycles}  lock errors {errors}");
    println!(
        "{{\"tool\":\"rslock\",\"runtime\":\"{runtime}\",\"tasks\":{},\"duration_secs\":{},\
         \"cycles_per_sec\":{:.1},\"lock_p50_us\":{:.1},\"lock_p99_us\":{:.1},\"lock_p999_us\":{:.1},\
         \"cycles\":{cycles},\"errors\":{errors},\"first_error\":{:?}}}",
        args.tasks,
        args.duration_secs,
        cycles as f64 / secs,
        q(0.5),
        q(0.99),
        q(0.999),
        first_error
    );
}

/// Sorted samples as `µs count` lines, equal values (to the 0.1 µs) on one line.
fn write_samples(path: &str, sorted_ns: &[u64]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for run in sorted_ns.chunk_by(|a, b| a / 100 == b / 100) {
        writeln!(out, "{:.1} {}", run[0] as f64 / 1000.0, run.len())?;
    }
    out.flush()
}

/// SplitMix64, for spreading keys.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
