//! `redlock-proxy`: flags → configuration → logging → local masters if none are configured →
//! serve until SIGINT/SIGTERM → drain → exit 0.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use redlock_proxy::cli::Cli;
use redlock_proxy::embedded::{self, RedisServer};
use redlock_proxy::redlock::quorum::quorum;
use redlock_proxy::server::Proxy;

// Every request allocates a few small buffers and futures; mimalloc's thread-local size classes
// serve them much faster than glibc's allocator (redis-benchmark LOCK: about 40% more per
// second on 2 cores).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        print!("{}", config.to_toml());
        if config.backend.masters.is_empty() {
            println!(
                "# no masters configured: {} local redis-server masters will be started",
                config.embedded.masters
            );
        }
        return ExitCode::SUCCESS;
    }
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    if cli.new_deployment {
        warn!(
            "--new-deployment: masters without a run marker are taken as new and vote at once; \
             drop the flag after this start, or a flushed master can grant a live lock twice"
        );
    }
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
                error!("cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        info!(
            listen = %proxy.local_addr(),
            masters = ?masters,
            quorum = quorum(n),
            "redlock-proxy {} ready",
            env!("CARGO_PKG_VERSION")
        );
        wait_for_signal().await;
        info!("shutting down: no new connections; finishing in-flight commands");
        proxy.shutdown(grace).await;
        ExitCode::SUCCESS
    });
    drop(local);
    code
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
