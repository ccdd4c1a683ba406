//! `redlock-proxy`: flags → configuration → logging → the open-files limit → local masters if
//! none are configured → serve until SIGINT/SIGTERM → drain → exit 0. SIGHUP re-reads the TLS
//! listener's files and the log filter from the configuration file.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};

use redlock_proxy::backend::redis::{self, BackendTls};
use redlock_proxy::cli::Cli;
use redlock_proxy::config::{Config, MasterAddr};
use redlock_proxy::embedded::{self, RedisServer};
use redlock_proxy::logging;
use redlock_proxy::redlock::quorum::quorum;
use redlock_proxy::server::Proxy;
use redlock_proxy::server::tls::ServerTls;

// Every request allocates a few small buffers and futures; mimalloc's thread-local size classes
// serve them much faster than glibc's allocator (redis-benchmark LOCK: about 40% more per
// second on 2 cores).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// For `--check-config`: each cluster member's master nodes and slot coverage, as its seeds
/// tell now.
fn describe_clusters(config: &Config, tls: Option<&BackendTls>) -> String {
    let clusters: Vec<(usize, &MasterAddr)> = config
        .backend
        .masters
        .iter()
        .enumerate()
        .filter(|(_, m)| m.cluster.is_some())
        .collect();
    if clusters.is_empty() {
        return String::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return "# cannot start a runtime to ask the clusters for their slots\n".into();
    };
    let timeout = Duration::from_millis(config.backend.connect_timeout_ms);
    runtime.block_on(async {
        let mut out = String::new();
        for (i, addr) in clusters {
            out.push_str(&format!("# master{i}: cluster {addr}\n"));
            out.push_str(&redis::describe(addr, tls, timeout).await);
        }
        out
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match cli.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("redlock-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        // The TLS files are read now too, so a bad one fails the check, not the start.
        let backend_tls = match BackendTls::new(&config.backend) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("redlock-proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = ServerTls::new(&config.server) {
            eprintln!("redlock-proxy: {e}");
            return ExitCode::FAILURE;
        }
        print!("{}", config.to_toml());
        if config.backend.masters.is_empty() {
            println!(
                "# no masters configured: {} local redis-server masters will be started",
                config.embedded.masters
            );
        }
        print!("{}", describe_clusters(&config, backend_tls.as_ref()));
        return ExitCode::SUCCESS;
    }
    let log = logging::init(&config.log);

    if cli.new_deployment {
        warn!(
            "--new-deployment: masters without a run marker are taken as new and vote at once; \
             drop the flag after this start, or a flushed master can grant a live lock twice"
        );
    }
    raise_open_files_limit(&config);
    // Started on the main thread, which lives as long as the process: they die with it.
    let mut local: Vec<RedisServer> = Vec::new();
    if config.backend.masters.is_empty() {
        match embedded::start_masters(config.embedded.masters, &config.embedded.redis_server) {
            Ok(servers) => local = servers,
            Err(e) => {
                error!("{e}");
                eprintln!("redlock-proxy: {e}");
                return ExitCode::FAILURE;
            }
        }
        let ports: Vec<u16> = local.iter().map(RedisServer::port).collect();
        info!(
            "no backend configured: started {} local redis-server masters on 127.0.0.1 ports {ports:?} \
             (no persistence, stopped when the proxy exits)",
            local.len()
        );
        config.backend.masters = local.iter().map(RedisServer::addr).collect();
        config.backend.fresh_at_start = true;
    }

    let runtime = match config.server.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redlock-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        logging::reload_on_hangup(log, move || cli.load_config());
        let grace = Duration::from_millis(config.server.shutdown_grace_ms);
        let masters: Vec<String> = config
            .backend
            .masters
            .iter()
            .map(ToString::to_string)
            .collect();
        let n = masters.len();
        let proxy = match Proxy::start(config).await {
            Ok(proxy) => proxy,
            Err(e) => {
                error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let shown = |addr: Option<std::net::SocketAddr>| {
            addr.map_or_else(|| "none".to_owned(), |a| a.to_string())
        };
        info!(
            listen = %shown(proxy.plain_addr()),
            tls_listen = %shown(proxy.tls_addr()),
            masters = ?masters,
            quorum = quorum(n),
            "redlock-proxy {} ready",
            env!("CARGO_PKG_VERSION")
        );
        wait_for_signal(&proxy).await;
        info!("shutting down: no new connections; finishing in-flight commands");
        proxy.shutdown(grace).await;
        ExitCode::SUCCESS
    });
    drop(local);
    code
}

/// File descriptors needed besides the clients' and the masters': the listener, the runtime,
/// standard streams, local masters' pipes, and slack.
const FD_MARGIN: u64 = 64;

/// Raises the soft open-files limit to the hard one, so `max_clients` is not cut short by a
/// soft limit left at 1024, and warns when even that is too low. libc, already a dependency
/// for signals in the tests, has both calls; a crate for two system calls is not needed.
fn raise_open_files_limit(config: &Config) {
    let masters = match config.backend.masters.len() {
        0 => config.embedded.masters,
        n => n,
    };
    // Each master: its multiplexed connections and its subscription to releases.
    let per_master = config.backend.connections_per_master + 1;
    let others = u64::try_from(masters * per_master)
        .unwrap_or(u64::MAX)
        .saturating_add(FD_MARGIN);
    let needed = u64::try_from(config.server.max_clients)
        .unwrap_or(u64::MAX)
        .saturating_add(others);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into memory this function owns.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(
            "cannot read the open-files limit: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let before = limit.rlim_cur;
    // An unlimited hard limit is still capped by the kernel (fs.nr_open, 1048576 by default).
    let target = limit.rlim_max.min(1 << 20);
    if before < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit this function owns.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = target;
            info!("open-files limit raised from {before} to {target}");
        } else {
            warn!(
                "cannot raise the open-files limit from {before} to {target}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if limit.rlim_cur < needed {
        warn!(
            "the open-files limit is {}, below the {needed} that max_clients ({}) and the \
             masters' connections need: clients past about {} will be refused. Raise the hard \
             limit (ulimit -Hn, or LimitNOFILE= under systemd) or lower max_clients",
            limit.rlim_cur,
            config.server.max_clients,
            limit.rlim_cur.saturating_sub(others),
        );
    }
}

/// Returns on SIGINT or SIGTERM; on each SIGHUP, re-reads what can change without a restart.
async fn wait_for_signal(proxy: &Proxy) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        warn!("cannot catch SIGTERM or SIGHUP: only SIGINT stops the proxy cleanly");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hangup.recv() => proxy.reload(),
        }
    }
}
