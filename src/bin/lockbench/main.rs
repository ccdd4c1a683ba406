//! `lockbench`: a load generator for redlock-proxy (or anything that answers `LOCK`/`UNLOCK`).
//!
//! Each of `--connections` connections keeps `--pipeline` commands in flight. In `cycle` mode a
//! granted `LOCK key ttl` is followed by `UNLOCK key token` with the token it returned; in `lock`
//! mode only `LOCK`s are sent (the locks expire after `--ttl-ms`). Keys are `lockbench:<n>`, `n`
//! uniform in `0..--keys`. `--idle N` first opens N connections, checks each with a `PING`, and
//! holds them open for the whole run.
//!
//! `--fence` sends `LOCK key ttl FENCE` and takes the token from the `[token, fence]` reply;
//! `--permits N` sends `LOCK key ttl PERMITS N` (permits of N-permit semaphores).
//!
//! `wait-latency` mode measures how fast a waiter wakes: for each of `--rounds` fresh keys, a
//! holder takes the key through `--addr`, a waiter sends `LOCK key ttl WAIT ms` through
//! `--addr-b`, and after `--hold-ms` the holder releases through `--addr`; the time from the
//! `UNLOCK` reply to the waiter's token is recorded. With `--master` (each master's address) it
//! then runs `--fallback-rounds` where the holder's key is deleted on the masters directly, so
//! no release is announced and only the waiter's timer can notice.
//!
//! It prints cycles/s, `LOCK` latency percentiles and reply counts, then one JSON line with the
//! same numbers. For runs of several processes at once, `--start-on-stdin-close` holds the load
//! until standard input closes and `--latency-out` writes the LOCK latency histogram to a file,
//! to merge. Replies are counted when they arrive within the measured window (after
//! `--warmup-secs`); broken connections and timeouts whenever they happen. Errors are counted,
//! never fatal, and the first few distinct messages are printed. Every loop is bounded: nothing
//! new is sent after the run's end, and replies still missing a grace period later are timeouts.
//!
//! This file: the process (runtime, open-files limit) and the order of a run.

mod args;
mod conn;
mod histogram;
mod idle;
mod load;
mod report;
mod stats;
mod wait;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use redlock_proxy::backend::redis::{BackendTls, MasterTls};
use redlock_proxy::config::{BackendConfig, MasterAddr};
use tokio::time::Instant;

use args::{Args, Mode};
use load::Window;
use report::Report;
use stats::Stats;

fn main() -> ExitCode {
    let args = Args::parse();
    raise_fd_limit(u64::from(args.connections) + u64::from(args.idle) + 64);
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(args.threads as usize);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockbench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

/// TLS to the server at `addr`, whose certificate must chain to the CA in `ca`: the proxy's
/// own TLS client for masters, given the server as a `rediss://` master.
fn server_tls(addr: &str, ca: &str) -> Result<MasterTls, String> {
    let server: MasterAddr = format!("rediss://{addr}").parse()?;
    let backend = BackendConfig {
        masters: vec![server.clone()],
        tls_ca_cert_file: ca.to_owned(),
        ..BackendConfig::default()
    };
    let tls = BackendTls::new(&backend).map_err(|e| e.to_string())?;
    let tls = tls.ok_or("no TLS configuration")?;
    tls.for_master(&server).map_err(|e| e.to_string())
}

async fn run(args: Args) -> ExitCode {
    let Some(addr) = conn::resolve(&args.addr).await else {
        eprintln!("lockbench: cannot resolve {}", args.addr);
        return ExitCode::FAILURE;
    };
    if let Some(ca) = &args.tls_ca_cert_file {
        match server_tls(&args.addr, ca) {
            Ok(tls) => {
                let _ = conn::TLS.set(tls);
            }
            Err(e) => {
                eprintln!("lockbench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let args = Arc::new(args);
    if args.mode == Mode::WaitLatency {
        return wait::run(addr, &args).await;
    }

    let idle = idle::open(addr, &args).await;
    let idle_open = idle.open.len() as u64;
    if args.idle > 0 {
        eprintln!(
            "lockbench: holding {idle_open} idle connections ({} failed)",
            idle.failed
        );
    }

    if args.start_on_stdin_close {
        // The line a script starting several processes waits for before it closes their input.
        eprintln!("lockbench: waiting for the start");
        // A thread of its own, not the runtime's blocking pool: the runtime waits for those when
        // it ends, and a run given up on after MAX_START_WAIT must still end.
        let (tx, closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        });
        let _ = tokio::time::timeout(MAX_START_WAIT, closed).await;
    }
    let start = Instant::now();
    let window = Window {
        from: start + Duration::from_secs(args.warmup_secs),
        until: start + Duration::from_secs(args.warmup_secs + args.duration_secs),
    };
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(load::drive(addr, Arc::clone(&args), window, load::seed(i))))
        .collect();
    let mut total = Stats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => total.note_error(&format!("connection task failed: {e}")),
        }
    }
    drop(idle.open);

    let report = Report {
        args: &args,
        stats: &total,
        idle_open,
        idle_failed: idle.failed,
    };
    report.print();
    if let Some(path) = &args.latency_out {
        let written = std::fs::File::create(path).and_then(|f| {
            let mut out = std::io::BufWriter::new(f);
            total.lock_latency.write_buckets(&mut out)?;
            out.flush()
        });
        if let Err(e) = written {
            eprintln!("lockbench: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    if total.answered() == 0 {
        eprintln!("lockbench: no command got a reply");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The longest `--start-on-stdin-close` makes a run wait.
const MAX_START_WAIT: Duration = Duration::from_secs(600);

/// Raises the soft open-files limit toward `wanted` (never above the hard limit), so thousands
/// of idle connections do not fail on the default soft limit of 1024.
fn raise_fd_limit(wanted: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= wanted {
            return;
        }
        lim.rlim_cur = wanted.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            eprintln!("lockbench: cannot raise the open-files limit");
        }
    }
    if lim.rlim_cur < wanted {
        eprintln!(
            "lockbench: open-files limit is {} (hard), {wanted} wanted: raise it with ulimit -n",
            lim.rlim_max
        );
    }
}
