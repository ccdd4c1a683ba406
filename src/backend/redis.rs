//! A Redis master over a few long-lived, multiplexed connections. Requests from every client
//! session are queued on a connection's channel; one task per connection writes everything queued
//! in one batch and matches replies to requests in order; a vote's reply is counted straight
//! into its round's [`Ballot`] by that task, so a round costs no task, future or channel per
//! master and wakes its client's session once. A connection that breaks fails its
//! pending requests at once and reconnects with backoff, so a dead master costs an operation
//! nothing and a hung one costs at most the caller's deadline — and never more than
//! `max_pending_per_connection` queued requests.
//!
//! Each request stays its own command inside the batch. Folding a batch's acquires and
//! releases into one Lua call was measured and does not pay on Redis 7.0: a `redis.call` inside
//! a script costs the master about what a pipelined command does, and the folded call cost the
//! masters more CPU per lock than the pipeline it replaced.

use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::resp::{self, Script};
use super::{Ask, BackendError, KeyState, Master, MasterStatus, Names, Votes};
use crate::config::{BackendConfig, MasterAddr};
use crate::protocol::client::{self, Frame};

/// Largest batch one connection writes at once; more waits for the next turn.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Room made in a read buffer before each read of a master's replies.
const READ_CHUNK: usize = 16 * 1024;

/// Makes room for a whole read: without it, `read_buf` on a full `BytesMut` reads 64 bytes at a
/// time, one system call per pub/sub message.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// A handle on one master; clones share the connections.
#[derive(Debug, Clone)]
pub struct RedisMaster(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    addr: MasterAddr,
    conns: Box<[Conn]>,
    conns_up: AtomicUsize,
    /// Unix seconds of the last up/down change, for INFO.
    changed_at: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    reconnects: AtomicU64,
    policy: Quarantine,
    identity: Mutex<Identity>,
    /// False while no quarantine is known to last, so voting needs no lock; set and cleared
    /// under `identity`'s lock.
    quarantined: AtomicBool,
    /// The proxy's names on the master besides lock keys.
    names: Names,
}

/// When a master may vote after (re)connecting.
#[derive(Debug, Clone, Copy)]
pub struct Quarantine {
    /// The longest lock a client can hold: a master up for less may have lost live locks.
    pub max_ttl: Duration,
    /// The operator asserts every write is fsynced: a restart loses nothing, never quarantine.
    pub persistent_masters: bool,
    /// The masters are known empty when the proxy starts (it started them): the first run
    /// seen of each needs no quarantine.
    pub fresh_at_start: bool,
}

/// What the proxy knows of a master's current run.
#[derive(Debug, Default)]
struct Identity {
    /// `run_id` from `INFO server`; changes when the process restarts.
    run_id: Option<String>,
    /// The first run seen, which `fresh_at_start` vouches for.
    first_run: Option<String>,
    /// The master does not vote before this instant.
    quarantined_until: Option<Instant>,
    /// This run may lack fence counters older than it: set with a quarantine, cleared by a
    /// repair.
    fences_lost: bool,
}

#[derive(Debug)]
struct Conn {
    tx: mpsc::UnboundedSender<Request>,
    /// Bounds what is queued or awaiting a reply, so a hung master cannot pile up work.
    slots: Arc<AtomicUsize>,
    capacity: usize,
    up: AtomicBool,
}

/// A request's place in its connection's bound, given back when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct Request {
    bytes: Bytes,
    waiter: Waiter,
}

/// Who gets a request's reply; it holds a slot until then (or until the connection ends).
#[derive(Debug)]
struct Waiter {
    reply: Reply,
    _slot: Slot,
}

#[derive(Debug)]
enum Reply {
    /// The whole frame, to a future.
    Frame(oneshot::Sender<Frame>),
    /// A yes or no, counted straight into a round's [`Ballot`].
    Vote(Vote),
}

/// One master's part in a vote. Dropped without an answer (connection lost, request never
/// sent), it counts as failed, so a round never waits for a reply that cannot come.
#[derive(Debug)]
struct Vote {
    ballot: Option<Arc<dyn Votes>>,
    counts: bool,
    master: Arc<Inner>,
    /// For a script: which one, the connection it went to, and (once written) the request, to
    /// load the script and send the request again if the master lost its scripts.
    script: Option<(&'static Script, usize, Bytes)>,
}

impl Vote {
    /// Counts `answer` (a failure already counted in the master's statistics).
    fn finish(mut self, answer: Result<bool, BackendError>) {
        if let Some(ballot) = self.ballot.take() {
            ballot.record(self.counts, answer);
        }
    }

    /// Counts the master's reply, first loading the script and repeating the request (on a task
    /// of its own) if the master lost its scripts.
    fn answer(mut self, frame: Frame) {
        if let Frame::Error(e) = &frame
            && e.starts_with("NOSCRIPT")
            && let Some((script, home, request)) = self.script.take()
            && !request.is_empty()
        {
            let master = RedisMaster(self.master.clone());
            tokio::spawn(async move {
                let load = encode(&[b"SCRIPT", b"LOAD", script.body.as_bytes()]);
                let again = match master.send(home, load).await {
                    Ok(_) => master.send(home, request).await,
                    Err(e) => Err(e),
                };
                self.finish(again.and_then(|frame| expect_bool(Ok(frame))));
            });
            return;
        }
        let answer = expect_bool(as_result(frame));
        if answer.is_err() {
            self.master.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.finish(answer);
    }
}

impl Drop for Vote {
    fn drop(&mut self) {
        if let Some(ballot) = self.ballot.take() {
            self.master.failures.fetch_add(1, Ordering::Relaxed);
            ballot.record(self.counts, Err(BackendError::Disconnected));
        }
    }
}

impl Waiter {
    /// Keeps the written request when a retry may need it.
    fn written(&mut self, bytes: Bytes) {
        if let Reply::Vote(Vote {
            script: Some((_, _, request)),
            ..
        }) = &mut self.reply
        {
            *request = bytes;
        }
    }

    fn answer(self, frame: Frame) {
        match self.reply {
            // The caller may have given up (deadline); its reply is dropped here.
            Reply::Frame(tx) => drop(tx.send(frame)),
            Reply::Vote(vote) => vote.answer(frame),
        }
    }
}

/// A master's error reply as an error.
fn as_result(frame: Frame) -> Result<Frame, BackendError> {
    match frame {
        Frame::Error(e) => Err(BackendError::Reply(e.to_string())),
        other => Ok(other),
    }
}

impl RedisMaster {
    /// Starts the connections to `addr` on `tracker`; they run until `shutdown`. The key of
    /// every release announced on `names.release_channel` goes to `released`.
    pub fn start(
        addr: MasterAddr,
        cfg: &BackendConfig,
        policy: Quarantine,
        names: &Names,
        released: mpsc::UnboundedSender<Bytes>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> RedisMaster {
        let mut conns = Vec::with_capacity(cfg.connections_per_master);
        let mut receivers = Vec::with_capacity(cfg.connections_per_master);
        for _ in 0..cfg.connections_per_master {
            let (tx, rx) = mpsc::unbounded_channel();
            conns.push(Conn {
                tx,
                slots: Arc::new(AtomicUsize::new(0)),
                capacity: cfg.max_pending_per_connection,
                up: AtomicBool::new(false),
            });
            receivers.push(rx);
        }
        let master = RedisMaster(Arc::new(Inner {
            addr,
            conns: conns.into_boxed_slice(),
            conns_up: AtomicUsize::new(0),
            changed_at: AtomicU64::new(unix_now()),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            policy,
            identity: Mutex::new(Identity::default()),
            quarantined: AtomicBool::new(false),
            names: names.clone(),
        }));
        tracker.spawn(listen_for_releases(
            master.0.clone(),
            cfg.clone(),
            released,
            shutdown.clone(),
        ));
        for (i, rx) in receivers.into_iter().enumerate() {
            let link = Link {
                master: master.0.clone(),
                index: i,
                cfg: cfg.clone(),
                shutdown: shutdown.clone(),
            };
            tracker.spawn(link.run(rx));
        }
        master
    }

    /// The address it was started with.
    pub fn addr(&self) -> &MasterAddr {
        &self.0.addr
    }

    /// A snapshot of its health.
    pub fn status(&self) -> MasterStatus {
        let inner = &self.0;
        let conns_up = inner.conns_up.load(Ordering::Relaxed);
        // Two statements: each takes the identity lock once and lets it go.
        let run_id = inner.identity().run_id.clone();
        let quarantine_left_ms = inner
            .quarantine_left()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        MasterStatus {
            addr: inner.addr.to_string(),
            up: conns_up > 0,
            conns_up,
            conns: inner.conns.len(),
            pending: inner.conns.iter().map(|c| c.slots_in_use()).sum(),
            requests: inner.requests.load(Ordering::Relaxed),
            failures: inner.failures.load(Ordering::Relaxed),
            reconnects: inner.reconnects.load(Ordering::Relaxed),
            changed_at: inner.changed_at.load(Ordering::Relaxed),
            run_id,
            quarantine_left_ms,
        }
    }

    /// Queues `args` on the connection that owns `key` (so one key's requests stay in order)
    /// and returns the reply's future. Queuing happens now; failing to queue fails at once.
    fn call(
        &self,
        key: &[u8],
        args: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.send(self.home(key), encode(args))
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
        let (tx, rx) = oneshot::channel();
        let queued = self.queue(home, bytes, Reply::Frame(tx));
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
    fn queue(&self, home: usize, bytes: Bytes, reply: Reply) -> Result<(), BackendError> {
        let inner = &self.0;
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let n = inner.conns.len();
        // The key's own connection first; another one only if that one is down.
        let conn = (0..n)
            .map(|i| &inner.conns[(home + i) % n])
            .find(|c| c.up.load(Ordering::Acquire))
            .ok_or(BackendError::Down)?;
        if conn.slots.fetch_add(1, Ordering::AcqRel) >= conn.capacity {
            conn.slots.fetch_sub(1, Ordering::AcqRel);
            return Err(BackendError::Overloaded);
        }
        let slot = Slot(conn.slots.clone());
        let waiter = Waiter { reply, _slot: slot };
        conn.tx
            .send(Request { bytes, waiter })
            .map_err(|_| BackendError::Down)
    }

    /// Queues a vote (`request`, which runs `script` if any): its answer goes straight into
    /// `ballot`.
    fn cast_request(
        &self,
        home_key: &[u8],
        request: Bytes,
        script: Option<&'static Script>,
        ballot: &Arc<dyn Votes>,
        counts: bool,
    ) {
        let home = self.home(home_key);
        let vote = Vote {
            ballot: Some(ballot.clone()),
            counts,
            master: self.0.clone(),
            script: script.map(|s| (s, home, Bytes::new())),
        };
        // A refusal drops the vote, which counts it as failed.
        let _ = self.queue(home, request, Reply::Vote(vote));
    }

    /// Runs a script by SHA, falling back to sending its body once if the master lost it.
    fn eval(
        &self,
        script: &'static Script,
        key: &[u8],
        argv: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.eval_keys(script, &[key], argv)
    }

    /// Runs a script with several keys; the first one picks the connection.
    fn eval_keys(
        &self,
        script: &'static Script,
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        self.eval_on(keys[0], script, keys, argv)
    }

    /// Runs a script on the connection of `owner` (whose requests it must stay in order with).
    /// If the master lost its scripts (a restart, `SCRIPT FLUSH`), they are loaded again on that
    /// connection and the same request is sent once more — nothing is copied unless that
    /// happens.
    fn eval_on(
        &self,
        owner: &[u8],
        script: &'static Script,
        keys: &[&[u8]],
        argv: &[&[u8]],
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        let mut num = itoa::Buffer::new();
        let numkeys = num.format(keys.len()).as_bytes();
        let mut args: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + argv.len());
        args.extend([b"EVALSHA".as_slice(), script.sha.as_bytes(), numkeys]);
        args.extend_from_slice(keys);
        args.extend_from_slice(argv);
        self.send_script(self.home(owner), script, encode(&args))
    }

    /// Sends `request`, which runs `script`, on connection `home`; if the master lost its scripts
    /// (a restart, `SCRIPT FLUSH`), loads it on that connection and sends the same request once
    /// more — nothing is copied unless that happens.
    fn send_script(
        &self,
        home: usize,
        script: &'static Script,
        request: Bytes,
    ) -> impl Future<Output = Result<Frame, BackendError>> + Send + use<> {
        let first = self.send(home, request.clone());
        let this = self.clone();
        async move {
            match first.await {
                Err(BackendError::Reply(e)) if e.starts_with("NOSCRIPT") => {
                    this.send(home, encode(&[b"SCRIPT", b"LOAD", script.body.as_bytes()]))
                        .await?;
                    this.send(home, request).await
                }
                other => other,
            }
        }
    }

    /// The command that asks this master `ask`, and the script it runs, if any. Votes
    /// ([`Master::cast`]) and the operations that return a future send the same bytes.
    fn command(&self, ask: Ask<'_>) -> (Bytes, Option<&'static Script>) {
        let (mut ttl, mut f) = (itoa::Buffer::new(), itoa::Buffer::new());
        match ask {
            Ask::Acquire { key, token, ttl_ms } => {
                let ttl = ttl.format(ttl_ms).as_bytes();
                (encode(&[b"SET", key, token, b"NX", b"PX", ttl]), None)
            }
            Ask::Release { key, marker, token } => {
                let script = &*resp::RELEASE;
                let channel = &self.0.names.release_channel[..];
                let sha = script.sha.as_bytes();
                let args: [&[u8]; 7] = [b"EVALSHA", sha, b"2", key, marker, token, channel];
                (encode(&args), Some(script))
            }
            Ask::Extend { key, token, ttl_ms } => {
                let script = &*resp::EXTEND;
                let ttl = ttl.format(ttl_ms).as_bytes();
                let sha = script.sha.as_bytes();
                let args: [&[u8]; 6] = [b"EVALSHA", sha, b"1", key, token, ttl];
                (encode(&args), Some(script))
            }
            Ask::AcquireFenced {
                key,
                fence_key,
                token,
                ttl_ms,
                fence,
            } => {
                let script = &*resp::ACQUIRE_FENCED;
                let floor = &self.0.names.fence_floor[..];
                let (ttl, fence) = (ttl.format(ttl_ms).as_bytes(), f.format(fence).as_bytes());
                let sha = script.sha.as_bytes();
                let args: [&[u8]; 9] = [
                    b"EVALSHA", sha, b"3", key, fence_key, floor, token, ttl, fence,
                ];
                (encode(&args), Some(script))
            }
        }
    }

    /// Sends `ask` on its key's connection; its yes or no.
    fn ask(&self, ask: Ask<'_>) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        let home = self.home(ask.key());
        let reply = match self.command(ask) {
            (request, Some(script)) => Either::Left(self.send_script(home, script, request)),
            (request, None) => Either::Right(self.send(home, request)),
        };
        async move { expect_bool(reply.await) }
    }
}

use client::command as encode;

impl Inner {
    fn identity(&self) -> std::sync::MutexGuard<'_, Identity> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn quarantine_left(&self) -> Option<Duration> {
        let until = self.identity().quarantined_until?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// Records the run a new connection found. Returns when quarantine ends, if this run must
    /// sit one out: a master up for less than the longest TTL may have restarted without
    /// locks that are still live elsewhere, and letting it vote could grant one twice.
    fn observe_run(&self, run_id: &str, uptime: Duration) -> Option<Instant> {
        let mut id = self.identity();
        if id.first_run.is_none() {
            id.first_run = Some(run_id.to_owned());
        }
        if id.run_id.as_deref() != Some(run_id) {
            if id.run_id.is_some() {
                warn!(master = %self.addr, run_id, "master restarted (run_id changed)");
            }
            id.run_id = Some(run_id.to_owned());
        }
        let vouched = self.policy.fresh_at_start && id.first_run.as_deref() == Some(run_id);
        let exempt = self.policy.persistent_masters || vouched;
        // Redis computes uptime from two whole-second clock readings, so it can read up to a
        // second more than the process has really run: count one second less.
        let uptime = uptime.saturating_sub(Duration::from_secs(1));
        let left = self
            .policy
            .max_ttl
            .checked_sub(uptime)
            .filter(|d| !d.is_zero());
        let until = Instant::now() + left.filter(|_| !exempt)?;
        if id.quarantined_until.is_some_and(|u| u >= until) {
            return None;
        }
        id.quarantined_until = Some(until);
        self.quarantined.store(true, Ordering::Release);
        id.fences_lost = true;
        warn!(
            master = %self.addr,
            uptime_s = uptime.as_secs(),
            quarantine_ms = (until - Instant::now()).as_millis() as u64,
            "master quarantined: up for less than max-ttl-ms, it may have lost live locks; \
             it gets requests but no vote until then"
        );
        Some(until)
    }
}

impl Conn {
    /// Requests queued or awaiting a reply: each holds a slot until its reply or its
    /// connection's end.
    fn slots_in_use(&self) -> usize {
        self.slots.load(Ordering::Acquire).min(self.capacity)
    }
}

fn expect_bool(frame: Result<Frame, BackendError>) -> Result<bool, BackendError> {
    match frame? {
        Frame::Integer(n) => Ok(n == 1),
        Frame::SimpleString(s) if &s[..] == b"OK" => Ok(true),
        Frame::Null => Ok(false),
        other => Err(BackendError::Unexpected(format!("{other:?}"))),
    }
}

impl Master for RedisMaster {
    fn votes(&self) -> bool {
        let inner = &self.0;
        if !inner.quarantined.load(Ordering::Acquire) {
            return true;
        }
        let id = inner.identity();
        let ended = id
            .quarantined_until
            .is_none_or(|until| Instant::now() >= until);
        if ended {
            inner.quarantined.store(false, Ordering::Release);
        }
        ended
    }

    fn acquire(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Acquire { key, token, ttl_ms })
    }

    fn release(
        &self,
        key: &[u8],
        marker: &[u8],
        token: &[u8],
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Release { key, marker, token })
    }

    fn mark_waiting(
        &self,
        key: &[u8],
        marker: &[u8],
        ms: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let mut ttl = itoa::Buffer::new();
        // On the lock key's connection: it reaches the master before the attempt that follows.
        let reply = self.eval_on(
            key,
            &resp::MARK_WAITING,
            &[marker],
            &[ttl.format(ms).as_bytes()],
        );
        async move { reply.await.map(|_| ()) }
    }

    fn extend(
        &self,
        key: &[u8],
        token: &[u8],
        ttl_ms: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::Extend { key, token, ttl_ms })
    }

    fn inspect(
        &self,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<KeyState>, BackendError>> + Send + use<> {
        let reply = self.eval(&resp::INSPECT, key, &[]);
        async move {
            match reply.await? {
                Frame::Null => Ok(None),
                Frame::Array(items) => match &items[..] {
                    [Frame::BulkString(token), Frame::Integer(pttl)] => Ok(Some(KeyState {
                        token: token.clone(),
                        pttl_ms: u64::try_from(*pttl).ok(),
                    })),
                    _ => Err(BackendError::Unexpected(format!("{items:?}"))),
                },
                other => Err(BackendError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    fn read_fence(
        &self,
        fence_key: &[u8],
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + use<> {
        let reply = self.eval_keys(
            &resp::READ_FENCE,
            &[fence_key, &self.0.names.fence_floor],
            &[],
        );
        async move { expect_count(reply.await?) }
    }

    fn acquire_fenced(
        &self,
        key: &[u8],
        fence_key: &[u8],
        token: &[u8],
        ttl_ms: u64,
        fence: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + use<> {
        self.ask(Ask::AcquireFenced {
            key,
            fence_key,
            token,
            ttl_ms,
            fence,
        })
    }

    fn raise_fence(
        &self,
        fence_key: &[u8],
        fence: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let mut f = itoa::Buffer::new();
        let reply = self.eval(&resp::RAISE_FENCE, fence_key, &[f.format(fence).as_bytes()]);
        async move { reply.await.map(|_| ()) }
    }

    fn fences(
        &self,
    ) -> impl Future<Output = Result<Vec<(Bytes, u64)>, BackendError>> + Send + use<> {
        let this = self.clone();
        async move {
            let pattern = this.0.names.fence_pattern.clone();
            let mut found = Vec::new();
            let mut cursor = Bytes::from_static(b"0");
            // Bounded: SCAN ends when the cursor returns to 0; the cap only guards a broken one.
            for _ in 0..1_000_000 {
                let page = this
                    .call(
                        &pattern,
                        &[b"SCAN", &cursor, b"MATCH", &pattern, b"COUNT", b"1000"],
                    )
                    .await?;
                let Frame::Array(parts) = page else {
                    return Err(BackendError::Unexpected(format!("{page:?}")));
                };
                let [Frame::BulkString(next), Frame::Array(keys)] = &parts[..] else {
                    return Err(BackendError::Unexpected(format!("{parts:?}")));
                };
                let keys: Vec<Bytes> = keys
                    .iter()
                    .filter_map(|k| match k {
                        Frame::BulkString(k) => Some(k.clone()),
                        _ => None,
                    })
                    .collect();
                if !keys.is_empty() {
                    let mut args: Vec<&[u8]> = vec![b"MGET"];
                    args.extend(keys.iter().map(|k| &k[..]));
                    if let Frame::Array(values) = this.call(&pattern, &args).await? {
                        for (key, value) in keys.into_iter().zip(values) {
                            if let Frame::BulkString(v) = value
                                && let Some(n) =
                                    std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok())
                            {
                                found.push((key, n));
                            }
                        }
                    }
                }
                if &next[..] == b"0" {
                    return Ok(found);
                }
                cursor = next.clone();
            }
            Err(BackendError::Unexpected("SCAN never finished".into()))
        }
    }

    fn raise_fence_floor(
        &self,
        floor: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + use<> {
        let mut f = itoa::Buffer::new();
        let reply = self.eval(
            &resp::RAISE_FENCE,
            &self.0.names.fence_floor,
            &[f.format(floor).as_bytes()],
        );
        async move { reply.await.map(|_| ()) }
    }

    fn cast(&self, ask: Ask<'_>, ballot: &Arc<dyn Votes>, counts: bool) {
        let (request, script) = self.command(ask);
        self.cast_request(ask.key(), request, script, ballot, counts);
    }

    fn fences_lost(&self) -> bool {
        self.0.identity().fences_lost
    }

    fn fences_repaired(&self) {
        self.0.identity().fences_lost = false;
    }
}

fn expect_count(frame: Frame) -> Result<u64, BackendError> {
    match frame {
        Frame::Integer(n) => u64::try_from(n).map_err(|_| BackendError::Unexpected(n.to_string())),
        other => Err(BackendError::Unexpected(format!("{other:?}"))),
    }
}

/// The task behind one connection: connect, serve until it breaks, back off, repeat.
struct Link {
    master: Arc<Inner>,
    index: usize,
    cfg: BackendConfig,
    shutdown: CancellationToken,
}

impl Link {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let min = Duration::from_millis(self.cfg.reconnect_min_ms);
        let max = Duration::from_millis(self.cfg.reconnect_max_ms);
        let mut backoff = min;
        let mut ever_up = false;
        let mut failures_in_a_row = 0u32;
        loop {
            let connect = tokio::time::timeout(
                Duration::from_millis(self.cfg.connect_timeout_ms),
                connect(&self.master.addr),
            );
            let attempt = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = connect => r.unwrap_or_else(|_| Err("connect timed out".to_owned())),
            };
            match attempt {
                Ok((stream, run_id, uptime)) => {
                    if let Some(until) = self.master.observe_run(&run_id, uptime) {
                        self.announce_release(until);
                    }
                    backoff = min;
                    failures_in_a_row = 0;
                    if ever_up {
                        self.master.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    ever_up = true;
                    self.set_up(true);
                    let ended = self.serve(stream, &mut rx).await;
                    self.set_up(false);
                    if let Err(e) = ended {
                        debug!(master = %self.master.addr, conn = self.index, "connection lost: {e}");
                    }
                }
                Err(e) => {
                    failures_in_a_row += 1;
                    if failures_in_a_row == 1 && self.index == 0 {
                        warn!(master = %self.master.addr, "cannot connect: {e}");
                    } else {
                        debug!(master = %self.master.addr, conn = self.index, "cannot connect: {e}");
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                return;
            }
            // Whatever raced into the queue while the connection went down fails now, rather
            // than reaching the master late on the next connection.
            while rx.try_recv().is_ok() {}
            let pause = jitter(backoff);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            while rx.try_recv().is_ok() {}
            backoff = (backoff * 2).min(max);
        }
    }

    /// Logs the end of a quarantine when it comes (unless a later one replaced it).
    fn announce_release(&self, until: Instant) {
        let master = self.master.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep_until(until.into()) => {
                    if master.identity().quarantined_until == Some(until) {
                        info!(master = %master.addr, "master left quarantine: it votes again");
                    }
                }
            }
        });
    }

    fn set_up(&self, up: bool) {
        let conn = &self.master.conns[self.index];
        if conn.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        let addr = &self.master.addr;
        let total = self.master.conns.len();
        if up {
            if self.master.conns_up.fetch_add(1, Ordering::AcqRel) == 0 {
                self.master.changed_at.store(unix_now(), Ordering::Relaxed);
                info!(master = %addr, "master up");
            }
        } else if self.master.conns_up.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.master.changed_at.store(unix_now(), Ordering::Relaxed);
            if self.shutdown.is_cancelled() {
                debug!(master = %addr, "master connections closed");
            } else {
                warn!(master = %addr, connections = total, "master down");
            }
        }
    }

    /// Writes queued requests in batches and hands replies back in order, until the connection
    /// breaks or shutdown. Requests still pending at the end fail when their senders drop.
    async fn serve(
        &self,
        stream: TcpStream,
        rx: &mut mpsc::UnboundedReceiver<Request>,
    ) -> Result<(), String> {
        let (mut rd, mut wr) = stream.into_split();
        let pending: Mutex<VecDeque<Waiter>> = Mutex::new(VecDeque::new());
        let writer = async {
            let mut buf = BytesMut::with_capacity(MAX_BATCH_BYTES);
            loop {
                let Some(first) = rx.recv().await else {
                    return Ok(());
                };
                // Let the other sessions that are ready run first, so their requests join this
                // batch: one write per turn of the event loop instead of one per request.
                tokio::task::yield_now().await;
                buf.clear();
                {
                    let mut queue = pending.lock().expect("pending queue poisoned");
                    let mut next = Some(first);
                    while let Some(Request { bytes, mut waiter }) = next {
                        buf.extend_from_slice(&bytes);
                        waiter.written(bytes);
                        queue.push_back(waiter);
                        if buf.len() >= MAX_BATCH_BYTES {
                            break;
                        }
                        next = rx.try_recv().ok();
                    }
                }
                wr.write_all(&buf).await.map_err(|e| e.to_string())?;
            }
        };
        let reader = async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                make_room(&mut buf);
                if rd.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("master closed the connection".to_owned());
                }
                while let Some(frame) = client::decode_reply(&mut buf).map_err(|e| e.to_string())? {
                    let waiter = pending
                        .lock()
                        .expect("pending queue poisoned")
                        .pop_front()
                        .ok_or("reply without a request")?;
                    waiter.answer(frame);
                }
            }
        };
        tokio::select! {
            r = writer => r,
            r = reader => r,
            _ = self.shutdown.cancelled() => Ok(()),
        }
    }
}

/// Keeps a subscription to the release channel on this master, passing each released key on.
/// A notification lost while the subscription is down only delays waiters: they also retry on
/// a timer.
async fn listen_for_releases(
    master: Arc<Inner>,
    cfg: BackendConfig,
    released: mpsc::UnboundedSender<Bytes>,
    shutdown: CancellationToken,
) {
    let min = Duration::from_millis(cfg.reconnect_min_ms);
    let max = Duration::from_millis(cfg.reconnect_max_ms);
    let mut backoff = min;
    loop {
        let subscribed = async {
            let (mut stream, _, _) = tokio::time::timeout(
                Duration::from_millis(cfg.connect_timeout_ms),
                connect(&master.addr),
            )
            .await
            .map_err(|_| "connect timed out".to_owned())??;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            round_trip(
                &mut stream,
                &mut buf,
                &[b"SUBSCRIBE", &master.names.release_channel],
            )
            .await?;
            Ok::<_, String>((stream, buf))
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = subscribed => r,
        };
        if let Ok((mut stream, mut buf)) = result {
            backoff = min;
            let relay = async {
                loop {
                    while let Some(frame) =
                        client::decode_reply(&mut buf).map_err(|e| e.to_string())?
                    {
                        if let Frame::Array(parts) = frame
                            && let [Frame::BulkString(kind), _, Frame::BulkString(key)] = &parts[..]
                            && &kind[..] == b"message"
                        {
                            let _ = released.send(key.clone());
                        }
                    }
                    make_room(&mut buf);
                    if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Err::<(), String>("master closed the subscription".into());
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = relay => debug!(master = %master.addr, "release subscription ended: {r:?}"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Opens a connection and prepares it: credentials, database, scripts; returns it with the
/// master's run id and uptime.
async fn connect(addr: &MasterAddr) -> Result<(TcpStream, String, Duration), String> {
    let mut stream = TcpStream::connect(addr.host_port())
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    if let Some(password) = &addr.password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &addr.username {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        expect_ok(round_trip(&mut stream, &mut buf, &args).await?, "AUTH")?;
    }
    if addr.db != 0 {
        let db = addr.db.to_string();
        expect_ok(
            round_trip(&mut stream, &mut buf, &[b"SELECT", db.as_bytes()]).await?,
            "SELECT",
        )?;
    }
    for script in resp::all_scripts() {
        match round_trip(
            &mut stream,
            &mut buf,
            &[b"SCRIPT", b"LOAD", script.body.as_bytes()],
        )
        .await?
        {
            Frame::BulkString(sha) if sha[..] == *script.sha.as_bytes() => {}
            other => return Err(format!("SCRIPT LOAD answered {other:?}")),
        }
    }
    let info = match round_trip(&mut stream, &mut buf, &[b"INFO", b"server"]).await? {
        Frame::BulkString(text) => String::from_utf8_lossy(&text).into_owned(),
        other => return Err(format!("INFO server answered {other:?}")),
    };
    let (run_id, uptime) = parse_run(&info).ok_or("INFO server lacks run_id or uptime")?;
    Ok((stream, run_id, uptime))
}

/// `run_id` and `uptime_in_seconds` from `INFO server` text (whole seconds; see
/// `observe_run` for why one is taken off).
fn parse_run(info: &str) -> Option<(String, Duration)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let run_id = field("run_id")?.to_owned();
    let uptime = field("uptime_in_seconds")?.parse().ok()?;
    Some((run_id, Duration::from_secs(uptime)))
}

async fn round_trip(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    args: &[&[u8]],
) -> Result<Frame, String> {
    let mut out = BytesMut::new();
    client::encode_command(&mut out, args);
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    loop {
        if let Some(frame) = client::decode_reply(buf).map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        make_room(buf);
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("master closed the connection during the handshake".to_owned());
        }
    }
}

fn expect_ok(frame: Frame, what: &str) -> Result<(), String> {
    match frame {
        Frame::SimpleString(s) if &s[..] == b"OK" => Ok(()),
        other => Err(format!("{what} failed: {other:?}")),
    }
}

/// Backoff with ±25% jitter, so proxies reconnecting to one master spread out.
fn jitter(d: Duration) -> Duration {
    use rand::RngExt;
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_identity_parses_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\nuptime_in_seconds:42\r\n";
        assert_eq!(
            parse_run(info),
            Some(("abc123".to_owned(), Duration::from_secs(42)))
        );
        assert_eq!(parse_run("run_id:x\r\n"), None);
    }

    fn inner(policy: Quarantine) -> Inner {
        Inner {
            addr: MasterAddr::local(1),
            conns: Box::new([]),
            conns_up: AtomicUsize::new(0),
            changed_at: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            policy,
            identity: Mutex::new(Identity::default()),
            quarantined: AtomicBool::new(false),
            names: Names {
                release_channel: Bytes::new(),
                fence_pattern: Bytes::new(),
                fence_floor: Bytes::new(),
            },
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn young_masters_sit_out_until_max_ttl() {
        let m = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: false,
        });
        assert!(m.observe_run("a", Duration::from_secs(10)).is_some());
        let left = m.quarantine_left().unwrap();
        // 60 s − 10 s of reported uptime, plus the second by which Redis's whole-second
        // uptime can overstate.
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(51),
            "{left:?}"
        );
        // A second connection to the same run does not shorten it.
        assert!(m.observe_run("a", Duration::from_secs(11)).is_none());
        assert!(m.quarantine_left().unwrap() > Duration::from_secs(50));
        // An old master votes at once.
        let m = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: false,
        });
        assert!(m.observe_run("a", Duration::from_secs(61)).is_none());
        assert!(m.quarantine_left().is_none());
    }

    #[test]
    fn exemptions_are_explicit() {
        let persistent = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: true,
            fresh_at_start: false,
        });
        assert!(persistent.observe_run("a", Duration::ZERO).is_none());
        assert!(persistent.observe_run("b", Duration::ZERO).is_none());
        // Known-empty masters are trusted for their first run only: a restart is quarantined.
        let fresh = inner(Quarantine {
            max_ttl: TTL,
            persistent_masters: false,
            fresh_at_start: true,
        });
        assert!(fresh.observe_run("a", Duration::ZERO).is_none());
        assert!(fresh.observe_run("a", Duration::from_secs(1)).is_none());
        assert!(fresh.observe_run("b", Duration::ZERO).is_some());
        assert!(fresh.quarantine_left().is_some());
        assert!(fresh.quarantine_left().is_some());
    }
}
