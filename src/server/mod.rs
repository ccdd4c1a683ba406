//! The running proxy: connections to the masters, the listeners (plain and TLS) with one
//! connection limit and TCP keepalive on every client socket, and graceful shutdown (stop
//! accepting → sessions answer what they have read → masters' connections close).

pub mod metrics;
pub mod session;
pub mod tls;

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
use crate::backend::redis::{BackendTls, ClusterMember, Quarantine, RedisMaster};
use crate::cmd::Shared;
use crate::config::Config;
use crate::locks::Locks;
use crate::stats::{LOG_EVERY, Stats};
use tls::{ServerTls, TlsClient};

/// How long the masters' connections get to close after the sessions are done.
const BACKEND_CLOSE: Duration = Duration::from_secs(1);

/// The listening sockets a proxy serves: plain, TLS, or both.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Cleartext RESP.
    pub plain: Option<TcpListener>,
    /// RESP over TLS, with the certificate `[server] tls_*` names.
    pub tls: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names.
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        let bind = |listen: crate::config::Listen| async move {
            match listen.0 {
                Some(addr) => TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))),
                None => Ok(None),
            }
        };
        Ok(Listeners {
            plain: bind(config.server.listen).await?,
            tls: bind(config.server.tls_listen).await?,
        })
    }
}

/// A started proxy. Dropping it leaves its tasks running; call [`Proxy::shutdown`].
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// There is a plain listener (at `local_addr`).
    plain: bool,
    tls_addr: Option<SocketAddr>,
    /// The TLS listener's certificate, re-read by [`Proxy::reload`].
    tls: Option<Arc<ServerTls>>,
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
    /// Binds `config.server.listen` and `tls_listen` and starts serving.
    pub async fn start(config: Config) -> io::Result<Proxy> {
        let listeners = Listeners::bind(&config).await?;
        Proxy::start_with(config, listeners)
    }

    /// Starts serving plain RESP on `listener` (tests bind `127.0.0.1:0`); see
    /// [`Proxy::start_with`].
    pub fn start_on(config: Config, listener: TcpListener) -> io::Result<Proxy> {
        Proxy::start_with(
            config,
            Listeners {
                plain: Some(listener),
                tls: None,
            },
        )
    }

    /// Starts serving on `listeners`. `config` must be validated and name at least one master,
    /// and name the TLS files when there is a TLS listener. Fails when a TLS file cannot be
    /// used.
    pub fn start_with(config: Config, listeners: Listeners) -> io::Result<Proxy> {
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let tls_addr = listeners
            .tls
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let plain = listeners.plain.is_some();
        let local_addr = match &listeners.plain {
            Some(plain) => plain.local_addr()?,
            None => tls_addr.ok_or_else(|| invalid("no listener to serve on".to_owned()))?,
        };
        let server_tls = match &listeners.tls {
            Some(_) => Some(Arc::new(
                ServerTls::new(&config.server)
                    .map_err(invalid)?
                    .ok_or_else(|| {
                        invalid("a TLS listener needs [server] tls_listen".to_owned())
                    })?,
            )),
            None => None,
        };
        // Once for all connections to all masters.
        let tls = BackendTls::new(&config.backend).map_err(|e| invalid(e.to_string()))?;
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
        if config.backend.tls_insecure {
            warn!(
                "backend.tls_insecure is set: the masters' certificates are NOT verified; the \
                 traffic is encrypted, but anyone on the path can pose as a master and read \
                 every lock's token"
            );
        }
        if policy.allow_evicting {
            warn!(
                "allow_evicting_masters is set: masters that may evict keys vote, and a lock key \
                 they evict can be granted twice"
            );
        }
        let (released, mut announcements) = tokio::sync::mpsc::unbounded_channel();
        let names = Locks::names(&config.redlock.key_prefix);
        // Every master's TLS first, so a bad name starts none of them.
        let backend_tls = tls;
        let tls: Vec<_> = config
            .backend
            .masters
            .iter()
            .map(|addr| match &backend_tls {
                Some(tls) if addr.tls => tls.for_master(addr).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let masters: Vec<Member> = config
            .backend
            .masters
            .iter()
            .zip(tls)
            .map(|(addr, master_tls)| match &addr.cluster {
                Some(_) => Member::Cluster(ClusterMember::start(
                    addr.clone(),
                    backend_tls.clone(),
                    &config.backend,
                    policy,
                    &names,
                    released.clone(),
                    backend_stop.clone(),
                    &backend,
                )),
                None => Member::Redis(RedisMaster::start(
                    addr.clone(),
                    master_tls,
                    &config.backend,
                    policy,
                    &names,
                    released.clone(),
                    backend_stop.clone(),
                    &backend,
                )),
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
        // One connection limit over both listeners.
        let slots = Arc::new(Semaphore::new(shared.config.server.max_clients));
        for (listener, tls) in [(listeners.plain, None), (listeners.tls, server_tls.clone())] {
            if let Some(listener) = listener {
                sessions.spawn(accept_loop(
                    listener,
                    tls,
                    slots.clone(),
                    shared.clone(),
                    clients_stop.clone(),
                    sessions.clone(),
                ));
            }
        }
        Ok(Proxy {
            shared,
            local_addr,
            plain,
            tls_addr,
            tls: server_tls,
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

    /// The address clients connect to: the plain listener's, or the TLS one's when there is
    /// no plain listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The plain listener's address, if there is one.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr).filter(|_| self.plain)
    }

    /// What SIGHUP does: re-reads the TLS listener's certificate, key and CA. New connections
    /// get the new ones and open connections keep theirs; if a file cannot be used, the old
    /// ones stay and the log says why.
    pub fn reload(&self) {
        let Some(tls) = &self.tls else {
            tracing::debug!("SIGHUP: no TLS listener to re-read");
            return;
        };
        match tls.reload() {
            Ok(()) => info!("SIGHUP: the TLS listener re-read {}", tls.files()),
            Err(e) => warn!("SIGHUP: {e}; the TLS listener keeps its previous certificate"),
        }
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

/// Accepts clients on `listener` until `stop`: plain RESP, or TLS with `tls`. Every client
/// takes one of `slots` for as long as it is connected.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    sessions: TaskTracker,
) {
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
            // A TLS client could not read the error in clear text: it is only closed.
            if tls.is_none() {
                sessions.spawn(async move {
                    let _ = stream
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                });
            }
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        match &tls {
            None => sessions.spawn(async move {
                let _connected = Connected::new(&shared.stats);
                session::run(stream, addr, shared.clone(), stop).await;
                drop(slot);
            }),
            Some(tls) => {
                let acceptor = tls.acceptor();
                sessions.spawn(async move {
                    let _connected = Connected::new(&shared.stats);
                    let handshake = tokio::time::timeout(HANDSHAKE, acceptor.accept(stream));
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        done = handshake => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return handshake_failed(&shared, addr, &e.to_string()),
                            Err(_) => return handshake_failed(&shared, addr, "timed out"),
                        },
                    };
                    session::run(TlsClient::new(stream), addr, shared.clone(), stop).await;
                    drop(slot);
                })
            }
        };
    }
}

/// How long a TLS client gets to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Counts a TLS handshake that failed (a client without the certificate required, a client
/// that speaks clear text to the TLS port) and says why, at most once per period.
fn handshake_failed(shared: &Shared, addr: SocketAddr, why: &str) {
    Stats::bump(&shared.stats.tls_handshake_failures);
    if let Some(unlogged) = shared.stats.tls_error_log.allow(Instant::now()) {
        let more = match unlogged {
            0 => String::new(),
            n => format!(
                " ({n} more in the {} s before, not logged)",
                LOG_EVERY.as_secs()
            ),
        };
        warn!(client = %addr, "TLS handshake failed: {why}{more}");
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
