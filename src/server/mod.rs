//! The running proxy: connections to the masters, the accept loop with its connection limit
//! and TCP keepalive on every client socket, and graceful shutdown (stop accepting → sessions
//! answer what they have read → masters' connections close).

pub mod metrics;
pub mod session;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::Member;
use crate::backend::redis::{BackendTls, Quarantine, RedisMaster};
use crate::cmd::Shared;
use crate::config::Config;
use crate::locks::Locks;
use crate::stats::{LOG_EVERY, Stats};

/// How long the masters' connections get to close after the sessions are done.
const BACKEND_CLOSE: Duration = Duration::from_secs(1);

/// A started proxy. Dropping it leaves its tasks running; call [`Proxy::shutdown`].
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// Stops the accept loop and tells sessions to finish.
    clients_stop: CancellationToken,
    /// The accept loop and every session, so shutdown can wait for them.
    sessions: TaskTracker,
    /// Stops the masters' connections, after the sessions no longer need them.
    backend_stop: CancellationToken,
    backend: TaskTracker,
    /// Where the metrics listener serves, when `metrics.listen` is set.
    metrics_addr: Option<SocketAddr>,
}

impl Proxy {
    /// Binds `config.server.listen` and starts serving.
    pub async fn start(config: Config) -> io::Result<Proxy> {
        let listener = TcpListener::bind(config.server.listen).await?;
        Proxy::start_on(config, listener)
    }

    /// Starts serving on `listener` (tests bind `127.0.0.1:0`). `config` must be validated and
    /// name at least one master. Fails when the backend's TLS files cannot be used.
    pub fn start_on(config: Config, listener: TcpListener) -> io::Result<Proxy> {
        let local_addr = listener.local_addr()?;
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        // Once for all connections to all masters.
        let tls = BackendTls::new(&config.backend).map_err(invalid)?;
        // Bound before anything starts, so an address in use fails the start cleanly.
        let metrics_listener = config.metrics.listen.map(metrics::bind).transpose()?;
        let backend_stop = CancellationToken::new();
        let backend = TaskTracker::new();
        let policy = Quarantine {
            max_ttl: Duration::from_millis(config.redlock.max_ttl_ms),
            persistent_masters: config.backend.persistent_masters,
            fresh_at_start: config.backend.fresh_at_start,
            allow_evicting: config.backend.allow_evicting_masters,
        };
        if policy.allow_evicting {
            warn!(
                "allow_evicting_masters is set: masters that may evict keys vote, and a lock key \
                 they evict can be granted twice"
            );
        }
        let (released, mut announcements) = tokio::sync::mpsc::unbounded_channel();
        let names = Locks::names(&config.redlock.key_prefix);
        // Every master's TLS first, so a bad name starts none of them.
        let tls: Vec<_> = config
            .backend
            .masters
            .iter()
            .map(|addr| match &tls {
                Some(tls) if addr.tls => tls.for_master(addr).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        let masters: Vec<Member> = config
            .backend
            .masters
            .iter()
            .zip(tls)
            .map(|(addr, master_tls)| {
                Member::Redis(RedisMaster::start(
                    addr.clone(),
                    master_tls,
                    &config.backend,
                    policy,
                    &names,
                    released.clone(),
                    backend_stop.clone(),
                    &backend,
                ))
            })
            .collect();
        drop(released);
        let locks = Locks::new(
            masters,
            config.master_deadline(),
            &config.redlock.key_prefix,
        );
        let shared = Arc::new(Shared::new(config, Arc::new(locks), local_addr.port()));
        // Every master announces each release of a waited-for lock: wake this proxy's waiters
        // on that key. Ends when the masters' subscriptions do.
        let waking = shared.locks.clone();
        backend.spawn(async move {
            while let Some(key) = announcements.recv().await {
                waking.released(&key);
            }
        });
        let idle_ms = shared.config.redlock.fence_idle_ms;
        if idle_ms > 0 {
            backend.spawn(sweep_fences(
                shared.locks.clone(),
                idle_ms,
                backend_stop.clone(),
            ));
        }
        let clients_stop = CancellationToken::new();
        // Stops with the masters' connections, so it answers (not ready) through the drain.
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let bound = listener.local_addr()?;
                metrics::spawn(
                    listener,
                    shared.clone(),
                    clients_stop.clone(),
                    backend_stop.clone(),
                    &backend,
                );
                info!("metrics, /healthz and /readyz on http://{bound}");
                Some(bound)
            }
            None => None,
        };
        let sessions = TaskTracker::new();
        sessions.spawn(accept_loop(
            listener,
            shared.clone(),
            clients_stop.clone(),
            sessions.clone(),
        ));
        Ok(Proxy {
            shared,
            local_addr,
            clients_stop,
            sessions,
            backend_stop,
            backend,
            metrics_addr,
        })
    }

    /// Where the metrics listener serves, if it was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The state every session shares.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Waits until every master has a connection up and votes, or `within` passes; true if
    /// they did.
    pub async fn wait_for_masters(&self, within: Duration) -> bool {
        let all_up = || {
            self.shared.locks.masters().iter().all(|m| {
                let s = m.status();
                s.votes()
            })
        };
        let poll = async {
            while !all_up() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(within, poll).await.is_ok()
    }

    /// Stops accepting, lets sessions answer the requests they have read (for at most
    /// `grace`), then closes the masters' connections.
    pub async fn shutdown(self, grace: Duration) {
        self.clients_stop.cancel();
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            warn!(
                "{} connections still busy after the {} ms grace period; closing anyway",
                Stats::get(&self.shared.stats.connected_clients),
                grace.as_millis()
            );
        }
        self.backend_stop.cancel();
        self.backend.close();
        let _ = tokio::time::timeout(BACKEND_CLOSE, self.backend.wait()).await;
        info!("proxy stopped");
    }
}

/// Sweeps the masters' fence counters every half of `idle_ms` until `stop` (see
/// `LockService::sweep_fences`): each sweep gives the counters unused since the one before an
/// expiry of the other half, so a counter unused for `idle_ms` is gone. The first sweep comes
/// one period after start.
async fn sweep_fences(locks: Arc<Locks>, idle_ms: u64, stop: CancellationToken) {
    let half = (idle_ms / 2).max(1);
    let mut every = tokio::time::interval(Duration::from_millis(half));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            swept = locks.sweep_fences(half) => {
                if !swept {
                    tracing::debug!("a fence sweep did not reach every master; the next one tries again");
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    sessions: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(shared.config.server.max_clients));
    let keepalive = keepalive(shared.config.server.tcp_keepalive_secs);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, addr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning, and say so
                // once per period rather than at every retry.
                if let Some(unlogged) = shared.stats.accept_error_log.allow(Instant::now()) {
                    warn!(
                        "accept failed: {e} ({unlogged} more failures in the {} s before, not \
                         logged); if it is out of file descriptors, raise the open-files limit \
                         (ulimit -n) or lower max_clients",
                        LOG_EVERY.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A client whose host vanished without a FIN or RST is found dead by the probes; its
        // session then ends like any other, releasing its SESSION locks.
        if let Some(keepalive) = &keepalive {
            let _ = SockRef::from(&stream).set_tcp_keepalive(keepalive);
        }
        Stats::bump(&shared.stats.connections_received);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Stats::bump(&shared.stats.rejected_connections);
            sessions.spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        sessions.spawn(async move {
            let _connected = Connected::new(&shared.stats);
            session::run(stream, addr, shared.clone(), stop).await;
            drop(slot);
        });
    }
}

/// Redis's keepalive for `tcp-keepalive N`: the first probe after N idle seconds, the next ones
/// N/3 apart, and three unanswered drop the connection, so a dead peer goes after about 2N;
/// `None` for 0 (off).
fn keepalive(secs: u64) -> Option<TcpKeepalive> {
    (secs > 0).then(|| {
        let idle = Duration::from_secs(secs);
        TcpKeepalive::new()
            .with_time(idle)
            .with_interval((idle / 3).max(Duration::from_secs(1)))
            .with_retries(3)
    })
}

/// Counts a connection in `connected_clients` for as long as it lives.
struct Connected<'a>(&'a Stats);

impl<'a> Connected<'a> {
    fn new(stats: &'a Stats) -> Self {
        Stats::bump(&stats.connected_clients);
        Connected(stats)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0
            .connected_clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
