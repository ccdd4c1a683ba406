//! `torture`: runs real `redis-server` masters and `redlock-proxy` processes, drives concurrent
//! lock clients through them while injecting faults (masters killed and restarted empty,
//! masters frozen, proxies killed, masters failed over to lagging replicas), then checks the
//! recorded history: no two clients may have held one key at the same time within the validity
//! they were promised. With `--fence` every lock is taken with `FENCE`, and fences must also
//! increase per key in real-time order. With `--mode permits` the clients take permits of
//! `--permits N`-permit semaphores (`LOCK key ttl PERMITS N`) and at most N may hold a key at
//! once; with `--mode rw` they take read locks (`SHARED`) and write locks (plain `LOCK`) of
//! the same keys, and no writer may overlap any other holder. With `--cluster-shards N` every
//! member is a Redis Cluster, and the faults move slots between its shards, fail its shards
//! over and kill its shard masters (see `cluster`).
//!
//! Exit code: 0 no violation, 1 at least one violation or fence regression, 2 the run could not
//! be set up, 130 interrupted (Ctrl-C) without either.

mod checker;
mod clients;
mod cluster;
mod conn;
mod faults;
mod masters;
mod procs;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use rand::SeedableRng;
use rand::rngs::StdRng;

use checker::Hold;
use clients::{Counters, Mode, Shared};
use cluster::ClusterMember;
use faults::{FaultKind, Injector, Schedule};
use masters::Master;
use procs::{ProxyProc, ProxySpec, RunDir};
use summary::Summary;

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

    /// Redis masters to start (with `--cluster-shards`, members: one Redis Cluster each)
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

    /// Make every member a Redis Cluster of N shard masters (each with one replica when
    /// `cluster-failover` or `kill-shard` is among the faults), reached by the proxies as
    /// `redis+cluster://`. Takes the faults `pause` (any node), `kill-proxy`, `reshard`,
    /// `cluster-failover` and `kill-shard`. At least 3, as `redis-cli --cluster create` asks
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(3..=8))]
    cluster_shards: Option<u64>,

    /// Fault kinds, comma-separated, or `none`
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "restart-empty,pause,kill-proxy,failover"
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

    /// What the clients take: `mutex` (plain `LOCK`), `permits` (`LOCK ... PERMITS N`, see
    /// `--permits`) or `rw` (read locks with `SHARED` and write locks with plain `LOCK`, mixed
    /// on the same keys)
    #[arg(long, value_enum, default_value = "mutex")]
    mode: Mode,

    /// Permits per semaphore in `--mode permits`
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    permits: u32,

    /// Write `[redlock] fence_idle_ms = N` into the proxies' configuration, so fence counters
    /// idle that long expire during the run (after the floor was raised above them) and fences
    /// must keep increasing across the expiry [default: the proxy's, 7 days]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=604_800_000))]
    fence_idle_ms: Option<u64>,

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
    if args.fence && args.mode != Mode::Mutex {
        return Err("--fence takes --mode mutex: the proxy fences only exclusive locks".into());
    }
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
    let cluster_kinds = [
        FaultKind::Reshard,
        FaultKind::ClusterFailover,
        FaultKind::KillShard,
    ];
    let (for_clusters, for_masters): (Vec<FaultKind>, Vec<FaultKind>) =
        kinds.iter().partition(|k| {
            cluster_kinds.contains(k) || **k == FaultKind::Pause || **k == FaultKind::KillProxy
        });
    match args.cluster_shards {
        Some(_) if !for_masters.is_empty() => {
            return Err(
                "with --cluster-shards the faults are pause, kill-proxy, reshard, \
                        cluster-failover and kill-shard"
                    .into(),
            );
        }
        None if for_clusters.iter().any(|k| cluster_kinds.contains(k)) => {
            return Err("reshard, cluster-failover and kill-shard take --cluster-shards".into());
        }
        _ => {}
    }
    println!(
        "torture: seed {seed}, {} masters, {} proxies, {} clients, {} keys, max-ttl {} ms, \
         faults [{}] every ~{} ms, {} s of traffic, mode {}{}{}",
        args.masters,
        args.proxies,
        args.clients,
        args.keys,
        args.max_ttl_ms,
        kind_names.join(","),
        args.fault_interval_ms,
        args.duration_secs,
        args.mode.describe(args.permits),
        if args.persistent_masters {
            ", persistent_masters = true (restart quarantine off)"
        } else {
            ""
        },
        if args.fence { ", FENCE" } else { "" }
    );
    if let Some(n) = args.cluster_shards {
        println!("every member is a Redis Cluster of {n} shard masters");
    }
    if let Some(ms) = args.fence_idle_ms {
        println!("fence counters idle for {ms} ms expire");
    }

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
    // Failover needs a replica and a movable address per master; the forwarders run on the
    // clients' runtime (their traffic is small).
    let failover = kinds
        .contains(&FaultKind::Failover)
        .then(|| runtime.handle());
    let mut masters: Vec<Master> = Vec::new();
    let mut clusters: Vec<ClusterMember> = Vec::new();
    if let Some(shards) = args.cluster_shards {
        let replicas = kinds
            .iter()
            .any(|k| matches!(k, FaultKind::ClusterFailover | FaultKind::KillShard));
        for _ in 0..args.masters {
            clusters.push(ClusterMember::start(
                &args.redis_server,
                shards as usize,
                replicas,
                runtime.handle(),
            )?);
        }
    } else {
        for _ in 0..args.masters {
            masters.push(Master::start(&args.redis_server, failover)?);
        }
    }
    for m in &masters {
        m.wait_in_sync(masters::SYNC_WITHIN)?;
    }
    let program = match &args.proxy_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot locate this executable: {e}"))?
            .with_file_name("redlock-proxy"),
    };
    let spec = ProxySpec {
        program,
        config: procs::write_config(&dir.path, args.persistent_masters, args.fence_idle_ms)
            .map_err(|e| format!("cannot write the proxy configuration: {e}"))?,
        backends: masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port()))
            .chain(clusters.iter().map(ClusterMember::backend))
            .collect(),
        max_ttl_ms: args.max_ttl_ms,
    };
    let mut proxies: Vec<ProxyProc> = Vec::new();
    for i in 0..args.proxies as usize {
        proxies.push(ProxyProc::start(i, &spec, &dir.path)?);
    }
    println!(
        "[{}] masters on ports {:?}; proxies on {:?}",
        clock::secs(clock::now_us()),
        masters
            .iter()
            .map(Master::describe)
            .chain(clusters.iter().map(|c| format!("cluster {:?}", c.ports())))
            .collect::<Vec<_>>(),
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
        mode: args.mode,
        permits: args.permits,
        held: (0..args.keys).map(|_| Mutex::new(None)).collect(),
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

    let schedule = Schedule {
        kinds,
        interval_ms: args.fault_interval_ms,
        rng: StdRng::seed_from_u64(seed),
    };
    let mut injector = Injector::new(
        &mut masters,
        &mut clusters,
        &mut proxies,
        schedule,
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
    drop(clusters);
    Ok(if !report.is_safe() {
        ExitCode::from(1)
    } else if stop.load(Ordering::Relaxed) {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
