//! `torture`: runs real `redis-server` masters and `redlock-proxy` processes, drives concurrent
//! lock clients through them while injecting faults (masters killed and restarted empty,
//! masters frozen, proxies killed), then checks the recorded history: no two clients may have
//! held one key at the same time within the validity they were promised. With `--fence` every
//! lock is taken with `FENCE`, and fences must also increase per key in real-time order.
//!
//! Exit code: 0 no violation, 1 at least one violation or fence regression, 2 the run could not
//! be set up, 130 interrupted (Ctrl-C) without either.

#[path = "torture/clients.rs"]
mod clients;
#[path = "torture/faults.rs"]
mod faults;
#[path = "torture/procs.rs"]
mod procs;
#[path = "torture/resp.rs"]
mod resp;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;
use redlock_proxy::checker::{self, Hold, Report};
use redlock_proxy::embedded::RedisServer;

use clients::{Counters, Shared};
use faults::{FaultCounts, FaultKind, Injector};
use procs::{ProxyProc, ProxySpec, RunDir};

/// The run's clock: one monotonic origin for holds and faults alike.
mod clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    static ORIGIN: OnceLock<Instant> = OnceLock::new();

    /// Fixes the origin; later calls keep the first.
    pub fn start() {
        ORIGIN.get_or_init(Instant::now);
    }

    /// µs since the origin.
    pub fn now_us() -> u64 {
        let origin = *ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// `12.345s` for a µs timestamp.
    pub fn secs(us: u64) -> String {
        format!("{:>8.3}s", us as f64 / 1e6)
    }
}

/// Fault-injection torture test for redlock-proxy, with a history checker.
#[derive(Debug, Parser)]
#[command(name = "torture", version)]
struct Args {
    /// Seconds of client traffic (after the proxies are ready)
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_secs: u64,

    /// Redis masters to start
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    masters: u64,

    /// Proxies to start, each over all masters
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    proxies: u64,

    /// Concurrent clients
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    clients: u64,

    /// Lock keys the clients contend for
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    keys: u64,

    /// Fault kinds, comma-separated, or `none`
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "restart-empty,pause,kill-proxy"
    )]
    faults: Vec<FaultKind>,

    /// Mean time between faults, in ms (each gap is drawn from half to one and a half times it)
    #[arg(long, default_value_t = 1_500, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    fault_interval_ms: u64,

    /// Seed for the fault schedule and the clients' choices [default: from the clock]; timing
    /// still varies between runs
    #[arg(long)]
    seed: Option<u64>,

    /// The proxies' --max-ttl-ms; clients ask for TTLs up to it
    #[arg(long, default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    max_ttl_ms: u64,

    /// Write `[backend] persistent_masters = true` into the proxies' configuration: the operator
    /// asserts masters fsync every write, which disables restart quarantine. The masters here
    /// persist nothing, so this shows what happens when that assertion is false.
    #[arg(long)]
    persistent_masters: bool,

    /// Lock with `LOCK key ttl FENCE` and check that fences strictly increase per key across
    /// grants that follow one another in time, whichever proxy granted them
    #[arg(long)]
    fence: bool,

    /// The redis-server program
    #[arg(long, default_value = "redis-server")]
    redis_server: String,

    /// The redlock-proxy program [default: next to this executable]
    #[arg(long, value_name = "PATH")]
    proxy_bin: Option<PathBuf>,

    /// Keep the proxies' configuration and logs in this directory [default: a temporary one,
    /// removed at exit]
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    clock::start();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("torture: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let kinds: Vec<FaultKind> = args
        .faults
        .iter()
        .copied()
        .filter(|k| *k != FaultKind::None)
        .collect();
    let kind_names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    println!(
        "torture: seed {seed}, {} masters, {} proxies, {} clients, {} keys, max-ttl {} ms, \
         faults [{}] every ~{} ms, {} s of traffic{}{}",
        args.masters,
        args.proxies,
        args.clients,
        args.keys,
        args.max_ttl_ms,
        kind_names.join(","),
        args.fault_interval_ms,
        args.duration_secs,
        if args.persistent_masters {
            ", persistent_masters = true (restart quarantine off)"
        } else {
            ""
        },
        if args.fence { ", FENCE" } else { "" }
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        runtime.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("torture: interrupted; stopping the run");
                stop.store(true, Ordering::Relaxed);
            }
        });
    }

    // Children are spawned from this (main) thread only: they die with it.
    let dir = RunDir::new(args.log_dir.clone()).map_err(|e| format!("scratch dir: {e}"))?;
    let mut masters: Vec<RedisServer> = Vec::new();
    for _ in 0..args.masters {
        masters.push(RedisServer::start(&args.redis_server).map_err(|e| e.to_string())?);
    }
    let program = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .with_file_name("redlock-proxy"),
    };
    let spec = ProxySpec {
        program,
        config: procs::write_config(&dir.path, args.persistent_masters)
            .map_err(|e| format!("cannot write the proxy configuration: {e}"))?,
        masters: masters.iter().map(RedisServer::port).collect(),
        max_ttl_ms: args.max_ttl_ms,
    };
    let mut proxies: Vec<ProxyProc> = Vec::new();
    for i in 0..args.proxies as usize {
        proxies.push(ProxyProc::start(i, &spec, &dir.path)?);
    }
    println!(
        "[{}] masters on ports {:?}; proxies on {:?}",
        clock::secs(clock::now_us()),
        spec.masters,
        proxies.iter().map(|p| p.addr().port()).collect::<Vec<_>>()
    );

    // Young masters may be quarantined by the proxies for up to max-ttl-ms: wait for grants.
    let within = Duration::from_millis(args.max_ttl_ms) + Duration::from_secs(15);
    for p in &proxies {
        let waited = runtime.block_on(clients::wait_until_granting(
            p.addr(),
            &format!("torture:probe:{}", p.index),
            within,
            &stop,
        ))?;
        println!(
            "[{}] proxy {} grants locks (after {} ms)",
            clock::secs(clock::now_us()),
            p.index,
            waited.as_millis()
        );
    }

    let traffic_start = clock::now_us();
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        proxies: proxies.iter().map(ProxyProc::addr).collect(),
        keys: (0..args.keys).map(|k| format!("torture:{k}")).collect(),
        max_ttl_ms: args.max_ttl_ms,
        fence: args.fence,
        promised_until_us: (0..args.keys).map(|_| AtomicU64::new(0)).collect(),
        holds: Mutex::new(Vec::new()),
        deadline_us: traffic_start + args.duration_secs * 1_000_000,
        stop: AtomicBool::new(false),
    });
    {
        // Ctrl-C reaches the clients through the shared flag.
        let (stop, shared) = (stop.clone(), shared.clone());
        runtime.spawn(async move {
            for _ in 0..u32::MAX {
                if stop.load(Ordering::Relaxed) {
                    shared.stop.store(true, Ordering::Relaxed);
                    return;
                }
                if clock::now_us() >= shared.deadline_us {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    let tasks: Vec<_> = (0..args.clients as u32)
        .map(|id| runtime.spawn(clients::run(id, seed, shared.clone())))
        .collect();

    let mut injector = Injector::new(
        &mut masters,
        &mut proxies,
        kinds,
        args.fault_interval_ms,
        StdRng::seed_from_u64(seed),
        shared.clone(),
    );
    injector.run();
    let fault_counts = injector.counts;
    let events = std::mem::take(&mut injector.events);
    drop(injector);

    // Clients finish their current hold (at most max-ttl) and their unlock (bounded timeouts).
    let grace = Duration::from_millis(args.max_ttl_ms) + Duration::from_secs(10);
    let to_deadline = Duration::from_micros(shared.deadline_us.saturating_sub(clock::now_us()));
    let stuck = runtime.block_on(async {
        let mut stuck = 0;
        let until = tokio::time::Instant::now() + to_deadline + grace;
        for t in tasks {
            let abort = t.abort_handle();
            match tokio::time::timeout_at(until, t).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => stuck += 1,
                Err(_) => {
                    abort.abort();
                    stuck += 1;
                }
            }
        }
        stuck
    });
    // The window in which locks were requested: to the deadline, or to the stop.
    let traffic_us = clock::now_us()
        .min(shared.deadline_us)
        .saturating_sub(traffic_start);
    let holds: Vec<Hold> = {
        let mut guard = shared.holds.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *guard)
    };
    let report = checker::check(&holds);
    let summary = Summary {
        args,
        seed,
        kinds: &kind_names,
        traffic_us,
        counters: &shared.counters,
        faults: fault_counts,
        report: &report,
        stuck_clients: stuck,
    };
    print!("{}", summary.human(&events));
    println!("{}", summary.json());
    drop(proxies);
    drop(masters);
    Ok(if !report.is_safe() {
        ExitCode::from(1)
    } else if stop.load(Ordering::Relaxed) {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Violations printed in detail.
const SHOWN: usize = 5;

struct Summary<'a> {
    args: &'a Args,
    seed: u64,
    kinds: &'a [&'a str],
    traffic_us: u64,
    counters: &'a Counters,
    faults: FaultCounts,
    report: &'a Report,
    stuck_clients: usize,
}

impl Summary<'_> {
    /// Distinct holds taking part in some violation (one long hold can overlap many).
    fn violating_holds(&self) -> usize {
        let mut tokens: Vec<&str> = self
            .report
            .violations
            .iter()
            .flat_map(|v| [v.first.token.as_str(), v.second.token.as_str()])
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens.len()
    }

    fn grants_per_s(&self) -> f64 {
        Counters::get(&self.counters.grants) as f64 / (self.traffic_us.max(1) as f64 / 1e6)
    }

    fn human(&self, events: &[faults::FaultEvent]) -> String {
        let c = self.counters;
        let f = &self.faults;
        let r = self.report;
        let mut out = String::new();
        let _ = writeln!(out, "\n=== torture summary (seed {}) ===", self.seed);
        let _ = writeln!(
            out,
            "traffic      {:.1} s, {} lock attempts, {} grants ({:.1}/s)",
            self.traffic_us as f64 / 1e6,
            Counters::get(&c.attempts),
            Counters::get(&c.grants),
            self.grants_per_s()
        );
        let _ = writeln!(
            out,
            "holds        {} counted, {} not counted (overran their validity)",
            r.counted(),
            r.not_counted()
        );
        for (key, k) in &r.keys {
            let _ = writeln!(
                out,
                "  {key:<14} {} counted, {} not counted",
                k.counted, k.not_counted
            );
        }
        let _ = writeln!(
            out,
            "replies      {} refused (held), {} NOQUORUM, {} other errors, {} connection errors",
            Counters::get(&c.refused),
            Counters::get(&c.noquorum),
            Counters::get(&c.errors),
            Counters::get(&c.conn_errors)
        );
        let _ = writeln!(
            out,
            "unlocks      {} released, {} already gone, {} failed",
            Counters::get(&c.unlocked),
            Counters::get(&c.unlock_missed),
            Counters::get(&c.unlock_failed)
        );
        let _ = writeln!(
            out,
            "faults       {} master restarts ({} double), {} pauses, {} proxy kills, {} compound, \
             {} failed restarts",
            f.master_restarts,
            f.double_restarts,
            f.pauses,
            f.proxy_kills,
            f.compound,
            f.restart_failures
        );
        if self.stuck_clients > 0 {
            let _ = writeln!(
                out,
                "WARNING      {} client tasks did not finish",
                self.stuck_clients
            );
        }
        let _ = writeln!(
            out,
            "violations   {} overlapping pairs of counted holds, among {} holds",
            r.violations.len(),
            self.violating_holds()
        );
        for v in r.violations.iter().take(SHOWN) {
            let _ = writeln!(
                out,
                "  key {}: overlap {:.1} ms\n    {}\n    {}",
                v.key(),
                v.overlap_us() as f64 / 1e3,
                describe(&v.first),
                describe(&v.second)
            );
            let from = v
                .first
                .start_us
                .saturating_sub(self.args.max_ttl_ms * 1_000);
            let faults = faults::events_between(events, from, v.second.end_us);
            if !faults.is_empty() {
                let _ = write!(out, "    faults around it:\n{faults}");
            }
        }
        if r.violations.len() > SHOWN {
            let _ = writeln!(out, "  ... and {} more", r.violations.len() - SHOWN);
        }
        if self.args.fence {
            let _ = writeln!(
                out,
                "fences       {} fenced grants, {} fence regressions",
                r.fenced,
                r.fence_regressions.len()
            );
            for g in r.fence_regressions.iter().take(SHOWN) {
                let _ = writeln!(
                    out,
                    "  key {}: fence {:?} asked for at {} after fence {:?} ended at {}\n    {}\n    {}",
                    g.key(),
                    g.later.fence,
                    clock::secs(g.later.sent_us).trim(),
                    g.earlier.fence,
                    clock::secs(g.earlier.ended_us()).trim(),
                    describe(&g.earlier),
                    describe(&g.later)
                );
                let from = g
                    .earlier
                    .start_us
                    .saturating_sub(self.args.max_ttl_ms * 1_000);
                let faults = faults::events_between(events, from, g.later.end_us);
                if !faults.is_empty() {
                    let _ = write!(out, "    faults around it:\n{faults}");
                }
            }
            if r.fence_regressions.len() > SHOWN {
                let _ = writeln!(out, "  ... and {} more", r.fence_regressions.len() - SHOWN);
            }
        }
        out
    }

    /// One line of JSON, hand-formatted (every string in it is plain ASCII from this tool).
    fn json(&self) -> String {
        let c = self.counters;
        let f = &self.faults;
        let r = self.report;
        let a = self.args;
        let kinds: Vec<String> = self.kinds.iter().map(|k| format!("\"{k}\"")).collect();
        let fence_examples: Vec<String> = r
            .fence_regressions
            .iter()
            .take(SHOWN)
            .map(|g| {
                format!(
                    "{{\"key\":\"{}\",\"earlier\":{},\"later\":{}}}",
                    escape(g.key()),
                    hold_json(&g.earlier),
                    hold_json(&g.later)
                )
            })
            .collect();
        let examples: Vec<String> = r
            .violations
            .iter()
            .take(SHOWN)
            .map(|v| {
                format!(
                    "{{\"key\":\"{}\",\"overlap_us\":{},\"first\":{},\"second\":{}}}",
                    escape(v.key()),
                    v.overlap_us(),
                    hold_json(&v.first),
                    hold_json(&v.second)
                )
            })
            .collect();
        format!(
            "{{\"torture\":1,\"seed\":{},\"duration_s\":{:.3},\"masters\":{},\"proxies\":{},\
             \"clients\":{},\"keys\":{},\"max_ttl_ms\":{},\"persistent_masters\":{},\
             \"faults\":[{}],\"attempts\":{},\"grants\":{},\"grants_per_s\":{:.2},\
             \"counted\":{},\"not_counted\":{},\"refused\":{},\"noquorum\":{},\"errors\":{},\
             \"conn_errors\":{},\"unlocked\":{},\"unlock_missed\":{},\"unlock_failed\":{},\
             \"master_restarts\":{},\"double_restarts\":{},\"pauses\":{},\"proxy_kills\":{},\
             \"compound_faults\":{},\"restart_failures\":{},\"stuck_clients\":{},\
             \"violations\":{},\"violating_holds\":{},\"violation_examples\":[{}],\
             \"fence\":{},\"fenced\":{},\"fence_regressions\":{},\"fence_regression_examples\":[{}]}}",
            self.seed,
            self.traffic_us as f64 / 1e6,
            a.masters,
            a.proxies,
            a.clients,
            a.keys,
            a.max_ttl_ms,
            a.persistent_masters,
            kinds.join(","),
            Counters::get(&c.attempts),
            Counters::get(&c.grants),
            self.grants_per_s(),
            r.counted(),
            r.not_counted(),
            Counters::get(&c.refused),
            Counters::get(&c.noquorum),
            Counters::get(&c.errors),
            Counters::get(&c.conn_errors),
            Counters::get(&c.unlocked),
            Counters::get(&c.unlock_missed),
            Counters::get(&c.unlock_failed),
            f.master_restarts,
            f.double_restarts,
            f.pauses,
            f.proxy_kills,
            f.compound,
            f.restart_failures,
            self.stuck_clients,
            r.violations.len(),
            self.violating_holds(),
            examples.join(","),
            a.fence,
            r.fenced,
            r.fence_regressions.len(),
            fence_examples.join(",")
        )
    }
}

fn describe(h: &Hold) -> String {
    format!(
        "client {:>3} via proxy {} token {}{}: asked {}, held {} → {} (promised {} ms, used {:.1} ms)",
        h.client,
        h.proxy,
        h.token,
        h.fence.map_or(String::new(), |f| format!(" fence {f}")),
        clock::secs(h.sent_us).trim(),
        clock::secs(h.start_us).trim(),
        clock::secs(h.end_us).trim(),
        h.promised_validity_ms,
        h.end_us.saturating_sub(h.start_us) as f64 / 1e3
    )
}

fn hold_json(h: &Hold) -> String {
    format!(
        "{{\"client\":{},\"proxy\":{},\"token\":\"{}\",\"sent_us\":{},\"start_us\":{},\
         \"end_us\":{},\"promised_validity_ms\":{},\"fence\":{}}}",
        h.client,
        h.proxy,
        escape(&h.token),
        h.sent_us,
        h.start_us,
        h.end_us,
        h.promised_validity_ms,
        h.fence.map_or("null".to_owned(), |f| f.to_string())
    )
}

/// Minimal JSON string escaping: quotes, backslashes and control characters.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}
