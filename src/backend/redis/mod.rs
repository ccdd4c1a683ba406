//! A Redis master over a few long-lived, multiplexed connections. Requests from every client
//! session are queued on a connection's channel; one task per connection writes everything queued
//! in one batch and matches replies to requests in order; a vote's reply is counted straight
//! into its round's ballot ([`Votes`](super::Votes)) by that task, so a round costs no task,
//! future or channel per master and wakes its client's session once. A connection that breaks
//! fails its pending requests at once and reconnects with backoff, so a dead master costs an
//! operation nothing and a hung one costs at most the caller's deadline — and never more than
//! `max_pending_per_connection` queued requests.
//!
//! - `mod.rs`: [`RedisMaster`], the handle its clones share, and queuing a request on the
//!   connection that owns its key;
//! - `link.rs`: one connection: connect and handshake, the batching writer and in-order
//!   reader, up and down, and the reconnect loop with backoff every connection runs;
//! - `master.rs`: the [`Master`] operations: each one's command and what its reply means, votes
//!   counted into a ballot, and the resend after a master lost its scripts;
//! - `identity.rs`: the master's run and lineage, the quarantines that keep a master whose data
//!   may lack live locks from voting, and the health check;
//! - `releases.rs`: the subscription that relays announced releases;
//! - `scripts.rs`: the Lua scripts sent to the masters;
//! - `tls.rs`: TLS to `rediss://` masters: the client configuration built once at start, and
//!   the plain-or-TLS stream each connection is dialled as;
//! - `cluster.rs`: [`ClusterMember`], a member that is a Redis Cluster: the slot map, and each
//!   operation routed to the node of its key's slot (one `RedisMaster` per master node), with
//!   `MOVED` and `ASK` followed.
//!
//! [`Master`]: super::Master

mod cluster;
mod identity;
mod link;
mod master;
mod releases;
pub mod scripts;
mod tls;

pub use cluster::{ClusterMember, NodeStatus, describe, slot};
pub use identity::Quarantine;
pub use tls::{BackendTls, MasterTls, Stream, TlsError, pem_certs, pem_key};

use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{BackendError, MasterStatus, Names};
use crate::config::{BackendConfig, MasterAddr};
use crate::metrics::Histogram;
use crate::protocol::client::Frame;
use identity::Identity;
use link::{Conn, Link, ReplyTo};
use master::as_result;
use releases::Relay;

/// A handle on one master; clones share the connections. The flag is set on a handle that sends
/// each request behind an `ASKING` (see [`RedisMaster::asking`]).
#[derive(Debug, Clone)]
pub struct RedisMaster(Arc<Inner>, bool);

#[derive(Debug)]
struct Inner {
    addr: MasterAddr,
    /// Set for a `rediss://` master: every connection to it, the subscription's too, runs TLS.
    tls: Option<MasterTls>,
    conns: Box<[Conn]>,
    conns_up: AtomicUsize,
    /// Unix seconds of the last up/down change, for INFO.
    changed_at: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    reconnects: AtomicU64,
    policy: Quarantine,
    identity: Mutex<Identity>,
    /// False while nothing is known to hold the master out (a quarantine, a replica's role, an
    /// eviction policy), so voting needs no lock; set and cleared under `identity`'s lock.
    quarantined: AtomicBool,
    /// The proxy's names on the master besides lock keys.
    names: Names,
    /// Wakes the health check at once: a vote found the run marker missing.
    check_now: Notify,
    /// Drops every connection, to be dialled again: the master left a health check unanswered.
    redial: Notify,
    /// Why the last attempt to connect failed, for INFO; cleared when a connection opens.
    last_error: Mutex<Option<String>>,
    /// Time from writing a request to reading its reply, for the metrics.
    round_trip: Histogram,
    /// Fence repairs completed on it (it had restarted empty), for the metrics.
    fence_repairs: AtomicU64,
    /// Stops its tasks: cancelled with the proxy's shutdown, or alone by [`RedisMaster::stop`].
    stop: CancellationToken,
}

impl Inner {
    fn new(
        addr: MasterAddr,
        tls: Option<MasterTls>,
        conns: Box<[Conn]>,
        policy: Quarantine,
        names: &Names,
        stop: CancellationToken,
    ) -> Inner {
        Inner {
            addr,
            tls,
            conns,
            conns_up: AtomicUsize::new(0),
            changed_at: AtomicU64::new(unix_now()),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            policy,
            identity: Mutex::new(Identity::default()),
            quarantined: AtomicBool::new(false),
            names: names.clone(),
            check_now: Notify::new(),
            redial: Notify::new(),
            last_error: Mutex::new(None),
            round_trip: Histogram::default(),
            fence_repairs: AtomicU64::new(0),
            stop,
        }
    }
}

impl RedisMaster {
    /// Starts the connections to `addr` on `tracker`; they run until `shutdown`. The key of
    /// every release announced on `names.release_channel` goes to `released`. `tls` is
    /// [`BackendTls::for_master`]'s, for a `rediss://` master.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        addr: MasterAddr,
        tls: Option<MasterTls>,
        cfg: &BackendConfig,
        policy: Quarantine,
        names: &Names,
        released: mpsc::UnboundedSender<Bytes>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> RedisMaster {
        let shutdown = shutdown.child_token();
        let (conns, receivers): (Vec<_>, Vec<_>) = (0..cfg.connections_per_master)
            .map(|_| Conn::new(cfg.max_pending_per_connection))
            .unzip();
        let master = Arc::new(Inner::new(
            addr,
            tls,
            conns.into_boxed_slice(),
            policy,
            names,
            shutdown.clone(),
        ));
        let relay = Relay::new(master.clone(), released, shutdown.clone());
        tracker.spawn(link::reconnecting(relay, cfg.clone(), shutdown.clone()));
        for (i, rx) in receivers.into_iter().enumerate() {
            let link = Link::new(master.clone(), i, rx, shutdown.clone());
            tracker.spawn(link::reconnecting(link, cfg.clone(), shutdown.clone()));
        }
        let period = Duration::from_millis(cfg.health_check_ms);
        let deadline = Duration::from_millis(cfg.health_timeout_ms);
        let master = RedisMaster(master, false);
        tracker.spawn(identity::check_health(
            master.clone(),
            period,
            deadline,
            shutdown,
        ));
        master
    }

    /// A handle on the same connections whose requests each go behind an `ASKING`: for a
    /// cluster node that answered `ASK` (its slot is being imported).
    pub fn asking(&self) -> RedisMaster {
        RedisMaster(self.0.clone(), true)
    }

    /// Stops its connections, its subscription and its health check (a cluster node that left
    /// the slot map, or whose own names must move to another slot).
    pub fn stop(&self) {
        self.0.stop.cancel();
    }

    /// The address it was started with.
    pub fn addr(&self) -> &MasterAddr {
        &self.0.addr
    }

    /// Its requests' round trips.
    pub fn round_trip(&self) -> &Histogram {
        &self.0.round_trip
    }

    /// Fence repairs completed on it.
    pub fn fence_repairs(&self) -> u64 {
        self.0.fence_repairs.load(Ordering::Relaxed)
    }

    /// A snapshot of its health.
    pub fn status(&self) -> MasterStatus {
        let inner = &self.0;
        let conns_up = inner.conns_up.load(Ordering::Relaxed);
        // Separate statements: each takes the identity lock once and lets it go.
        let run_id = inner.run_id();
        let held_out = inner.held_out();
        let reason = inner.reason();
        let quarantine_left_ms = inner
            .quarantine_left()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        MasterStatus {
            addr: inner.addr.to_string(),
            up: conns_up > 0,
            conns_up,
            conns: inner.conns.len(),
            pending: inner.conns.iter().map(Conn::in_use).sum(),
            requests: inner.requests.load(Ordering::Relaxed),
            failures: inner.failures.load(Ordering::Relaxed),
            reconnects: inner.reconnects.load(Ordering::Relaxed),
            changed_at: inner.changed_at.load(Ordering::Relaxed),
            run_id,
            quarantine_left_ms,
            held_out,
            reason,
            last_error: inner
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The connection that owns `key` (no hashing with one connection, the default).
    fn home(&self, key: &[u8]) -> usize {
        match self.0.conns.len() {
            1 => 0,
            n => BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize % n,
        }
    }

    /// Queues an encoded command on connection `home` (or, if that one is down, the next one
    /// up) and returns the reply's future.
    fn send(
        &self,
        home: usize,
        bytes: Bytes,
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.send_checked(home, bytes, false)
    }

    /// [`Self::send`]; with `checked`, the reply counts only if the run marker exists after it
    /// (else it is an error).
    fn send_checked(
        &self,
        home: usize,
        bytes: Bytes,
        checked: bool,
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue(home, bytes, ReplyTo::Frame(tx), checked);
        let inner = self.0.clone();
        async move {
            let result = match queued {
                Ok(()) => rx
                    .await
                    .map_err(|_| BackendError::Disconnected)
                    .and_then(as_result),
                Err(e) => Err(e),
            };
            if result.is_err() {
                inner.failures.fetch_add(1, Ordering::Relaxed);
            }
            result
        }
    }

    /// Queues `bytes` with whoever waits for the reply. On failure `reply` is dropped unsent.
    fn queue(
        &self,
        home: usize,
        bytes: Bytes,
        reply: ReplyTo,
        checked: bool,
    ) -> Result<(), BackendError> {
        let inner = &self.0;
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let n = inner.conns.len();
        // The key's own connection first; another one only if that one is down.
        let conn = (0..n)
            .map(|i| &inner.conns[(home + i) % n])
            .find(|c| c.is_up())
            .ok_or(BackendError::Down)?;
        conn.queue(bytes, reply, checked, self.1)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
