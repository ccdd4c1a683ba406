//! One connection to a master: connecting and the handshake, the task that writes queued
//! requests in batches and matches replies to them in order, whether the connection is up, and
//! the reconnect loop (backoff with jitter) that every connection to a master runs, the release
//! subscription's too.
//!
//! Each request stays its own command inside the batch. Folding a batch's acquires and
//! releases into one Lua call was measured and does not pay on Redis 7.0: a `redis.call` inside
//! a script costs the master about what a pipelined command does, and the folded call cost the
//! masters more CPU per lock than the pipeline it replaced.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::identity::{
    INFO, Observed, announce_release, lineage_command, parse_info, parse_lineage,
};
use super::master::Vote;
use super::scripts;
use super::tls::Stream;
use super::{Inner, unix_now};
use crate::backend::BackendError;
use crate::config::BackendConfig;
use crate::protocol::client::{self, Frame, InvalidReply};

/// Largest batch one connection writes at once; more waits for the next turn.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Room made in a read buffer before each read of a master's replies.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// TCP keepalive on every connection to a master, so one that vanished without a FIN or RST
/// (power loss, a partition) is noticed on a quiet connection, the subscription above all, which
/// only ever reads: probes start after `KEEPALIVE_IDLE` of silence and repeat every
/// `KEEPALIVE_INTERVAL`; `KEEPALIVE_RETRIES` unanswered ones end it, about a minute in all.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// Why a connection to a master could not be opened, or ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connect timed out")]
    TimedOut,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("master closed the connection")]
    Closed,
    #[error("master closed the connection during the handshake")]
    ClosedInHandshake,
    #[error("{step} {}", answered(reply))]
    Handshake { step: &'static str, reply: Frame },
    #[error("INFO server lacks run_id or uptime")]
    NoRunId,
    #[error("dropped to be dialled again")]
    Redial,
    #[error(transparent)]
    InvalidReply(#[from] InvalidReply),
    #[error("reply without a request")]
    Unrequested,
}

/// A handshake reply in words: a master's error (`WRONGPASS ...`, `NOPERM ...`) as its text.
fn answered(reply: &Frame) -> String {
    match reply {
        Frame::Error(text) => format!("refused: {text}"),
        reply => format!("answered {reply:?}"),
    }
}

/// Makes room for a whole read: without it, `read_buf` on a full `BytesMut` reads 64 bytes at a
/// time, one system call per pub/sub message.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// The handle's side of one connection: where its requests are queued.
#[derive(Debug)]
pub(super) struct Conn {
    tx: mpsc::UnboundedSender<Request>,
    /// Bounds what is queued or awaiting a reply, so a hung master cannot pile up work.
    permits: Arc<AtomicUsize>,
    capacity: usize,
    up: AtomicBool,
}

impl Conn {
    /// A connection that is down, bounded to `capacity` requests, and the queue its task reads.
    pub(super) fn new(capacity: usize) -> (Conn, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Conn {
            tx,
            permits: Arc::new(AtomicUsize::new(0)),
            capacity,
            up: AtomicBool::new(false),
        };
        (conn, rx)
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Requests queued or awaiting a reply: each holds a permit until its reply or its
    /// connection's end.
    pub(super) fn in_use(&self) -> usize {
        self.permits.load(Ordering::Acquire).min(self.capacity)
    }

    /// Queues `bytes` unless the bound is reached. On failure `reply` is dropped unsent. A
    /// `checked` request's reply counts only if the run marker exists after it (see
    /// [`Link::carry`]); else the waiter gets an error.
    ///
    /// With `asking` the request goes right behind an `ASKING` on the same connection, nothing
    /// between them: a cluster node redirected it there with `ASK` (a slot being moved).
    pub(super) fn queue(
        &self,
        bytes: Bytes,
        reply: ReplyTo,
        checked: bool,
        asking: bool,
    ) -> Result<(), BackendError> {
        if self.permits.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.permits.fetch_sub(1, Ordering::AcqRel);
            return Err(BackendError::Overloaded);
        }
        let permit = Permit(self.permits.clone());
        let waiter = Waiter {
            reply,
            checked,
            _permit: permit,
        };
        self.tx
            .send(Request {
                bytes,
                waiter,
                asking,
            })
            .map_err(|_| BackendError::Down)
    }
}

/// A request's place in its connection's bound, given back when dropped.
#[derive(Debug)]
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(super) struct Request {
    bytes: Bytes,
    waiter: Waiter,
    /// Sent right after an `ASKING`, whose reply nobody waits for.
    asking: bool,
}

/// Who gets a request's reply; it holds a permit until then (or until the connection ends).
#[derive(Debug)]
struct Waiter {
    reply: ReplyTo,
    /// Its reply counts only if the run marker exists after it.
    checked: bool,
    _permit: Permit,
}

/// What a reply read from the master answers, in the order the requests were written.
#[derive(Debug)]
enum Awaiting {
    /// The requests after it, up to the next one, were written at this instant: their round
    /// trips are timed from it.
    Batch(Instant),
    /// A request.
    Reply(Waiter),
    /// The `EXISTS` of the run marker written after a batch with checked requests.
    MarkerCheck,
    /// The `ASKING` written before a redirected request: its `+OK` is dropped (an error there
    /// shows in the request's own reply, which the node then refuses with `MOVED`).
    Asking,
}

/// Where a request's reply goes.
#[derive(Debug)]
pub(super) enum ReplyTo {
    /// The whole frame, to a future.
    Frame(oneshot::Sender<Frame>),
    /// A yes or no, counted straight into a round's ballot.
    Vote(Vote),
}

impl ReplyTo {
    /// Hands the written request to a vote that may need to send it again.
    fn written(&mut self, bytes: Bytes) {
        if let ReplyTo::Vote(vote) = self {
            vote.written(bytes);
        }
    }
}

/// The error a checked request gets when the run marker was missing.
const NO_MARKER: &str = "ERR the run marker is missing: flushed or quarantined, no vote";

/// Replies to checked requests, held until the marker check of their batch answers.
#[derive(Debug, Default)]
struct Held(Vec<(Waiter, Frame)>);

impl Held {
    /// Hands every held reply over if the marker check said the marker exists, else fails them
    /// all, and wakes the health check if the master still votes.
    fn release(&mut self, exists: &Frame, master: &Inner) {
        let present = *exists == Frame::Integer(1);
        if !present && !master.quarantined.load(Ordering::Acquire) {
            master.check_now.notify_one();
        }
        for (waiter, reply) in self.0.drain(..) {
            waiter.answer(if present {
                reply
            } else {
                Frame::Error(NO_MARKER.into())
            });
        }
    }
}

impl Waiter {
    fn answer(self, frame: Frame) {
        match self.reply {
            // The caller may have given up (deadline); its reply is dropped here.
            ReplyTo::Frame(tx) => drop(tx.send(frame)),
            ReplyTo::Vote(vote) => vote.answer(frame),
        }
    }
}

/// A task that keeps a connection to a master: what it opens, and what it does with it.
pub(super) trait Reconnect {
    /// A connection ready for use.
    type Open: Send;

    /// Opens and prepares a connection; [`reconnecting`] bounds it by the connect timeout.
    fn open(&mut self) -> impl Future<Output = Result<Self::Open, LinkError>> + Send;

    /// Uses the connection until it breaks or shutdown.
    fn serve(&mut self, open: Self::Open) -> impl Future<Output = ()> + Send;

    /// An attempt to open one failed.
    fn failed(&mut self, e: LinkError);

    /// Called before and after each pause between attempts.
    fn pausing(&mut self) {}
}

/// Keeps `task` connected until `shutdown`: opens a connection, hands it over until it ends,
/// and after each end or failed attempt pauses before the next one: from `reconnect_min_ms`,
/// doubling up to `reconnect_max_ms`, back to the shortest once a connection opens.
pub(super) async fn reconnecting(
    mut task: impl Reconnect,
    cfg: BackendConfig,
    shutdown: CancellationToken,
) {
    let min = Duration::from_millis(cfg.reconnect_min_ms);
    let max = Duration::from_millis(cfg.reconnect_max_ms);
    let timeout = Duration::from_millis(cfg.connect_timeout_ms);
    let mut backoff = min;
    loop {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(timeout, task.open()) => r.unwrap_or(Err(LinkError::TimedOut)),
        };
        match opened {
            Ok(open) => {
                backoff = min;
                task.serve(open).await;
            }
            Err(e) => task.failed(e),
        }
        if shutdown.is_cancelled() {
            return;
        }
        task.pausing();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        task.pausing();
        backoff = (backoff * 2).min(max);
    }
}

/// Backoff with ±25% jitter, so proxies reconnecting to one master spread out.
fn jitter(d: Duration) -> Duration {
    use rand::RngExt;
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// The task behind one connection: connect, serve until it breaks, back off, repeat.
pub(super) struct Link {
    master: Arc<Inner>,
    index: usize,
    rx: mpsc::UnboundedReceiver<Request>,
    shutdown: CancellationToken,
    ever_up: bool,
    failures_in_a_row: u32,
}

impl Link {
    pub(super) fn new(
        master: Arc<Inner>,
        index: usize,
        rx: mpsc::UnboundedReceiver<Request>,
        shutdown: CancellationToken,
    ) -> Link {
        Link {
            master,
            index,
            rx,
            shutdown,
            ever_up: false,
            failures_in_a_row: 0,
        }
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
    ///
    /// A batch with checked requests (acquires) ends with one `EXISTS` of the run marker, and
    /// their replies are held until it answers: they count only if the marker exists. A flush
    /// before or among them removes it, and nothing writes it again before a quarantine of
    /// max-ttl has run, so the check sees every flush that could have emptied a key under an
    /// acquire. One check per batch, not per acquire: under load it costs the master nothing
    /// measurable, alone it costs what an `EXISTS` does.
    async fn carry(&mut self, stream: Stream) -> Result<(), LinkError> {
        // Split once per connection: a plain socket into its lock-free owned halves, a TLS one
        // (one state for both directions) through tokio's shared split.
        match stream {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                self.carry_halves(rd, wr).await
            }
            Stream::Tls(tls) => {
                let (rd, wr) = tokio::io::split(*tls);
                self.carry_halves(rd, wr).await
            }
        }
    }

    /// [`Link::carry`] over a connection's two halves.
    async fn carry_halves(
        &mut self,
        mut rd: impl AsyncRead + Unpin,
        mut wr: impl AsyncWrite + Unpin,
    ) -> Result<(), LinkError> {
        let rx = &mut self.rx;
        let master = &*self.master;
        let marker_check = client::command(&[b"EXISTS", &master.names.run_marker]);
        let asking = client::command(&[b"ASKING"]);
        let pending: Mutex<VecDeque<Awaiting>> = Mutex::new(VecDeque::new());
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
                    queue.push_back(Awaiting::Batch(Instant::now()));
                    let mut next = Some(first);
                    let mut checked = false;
                    while let Some(Request {
                        bytes,
                        mut waiter,
                        asking: ask,
                    }) = next
                    {
                        if ask {
                            buf.extend_from_slice(&asking);
                            queue.push_back(Awaiting::Asking);
                        }
                        buf.extend_from_slice(&bytes);
                        waiter.reply.written(bytes);
                        checked |= waiter.checked;
                        queue.push_back(Awaiting::Reply(waiter));
                        if buf.len() >= MAX_BATCH_BYTES {
                            break;
                        }
                        next = rx.try_recv().ok();
                    }
                    if checked {
                        buf.extend_from_slice(&marker_check);
                        queue.push_back(Awaiting::MarkerCheck);
                    }
                }
                wr.write_all(&buf).await?;
                // TLS may hold written bytes until flushed; a socket's flush does nothing.
                wr.flush().await?;
            }
        };
        let reader = async {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let mut held = Held::default();
            let mut sent = Instant::now();
            loop {
                make_room(&mut buf);
                if rd.read_buf(&mut buf).await? == 0 {
                    return Err(LinkError::Closed);
                }
                while let Some(frame) = client::decode_reply(&mut buf)? {
                    let next = {
                        let mut queue = pending.lock().expect("pending queue poisoned");
                        loop {
                            match queue.pop_front() {
                                Some(Awaiting::Batch(at)) => sent = at,
                                next => break next,
                            }
                        }
                    };
                    match next.ok_or(LinkError::Unrequested)? {
                        Awaiting::Reply(waiter) => {
                            master.round_trip.observe(sent.elapsed());
                            if waiter.checked {
                                held.0.push((waiter, frame));
                            } else {
                                waiter.answer(frame);
                            }
                        }
                        Awaiting::MarkerCheck => held.release(&frame, master),
                        Awaiting::Asking => {}
                        // Taken out by the loop above.
                        Awaiting::Batch(_) => {}
                    }
                }
            }
        };
        tokio::select! {
            r = writer => r,
            r = reader => r,
            _ = self.master.redial.notified() => Err(LinkError::Redial),
            _ = self.shutdown.cancelled() => Ok(()),
        }
    }
}

impl Reconnect for Link {
    type Open = (Stream, Observed);

    async fn open(&mut self) -> Result<Self::Open, LinkError> {
        let mut stream = dial(&self.master).await?;
        let seen = prepare(&mut stream, &self.master).await?;
        Ok((stream, seen))
    }

    async fn serve(&mut self, (stream, seen): Self::Open) {
        if let Some(until) = self.master.observe(&seen) {
            announce_release(&self.master, until, &self.shutdown);
        }
        self.failures_in_a_row = 0;
        *self.master.last_error.lock().expect("last_error poisoned") = None;
        if self.ever_up {
            self.master.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_up = true;
        self.set_up(true);
        let ended = self.carry(stream).await;
        self.set_up(false);
        if let Err(e) = ended {
            debug!(master = %self.master.addr, conn = self.index, "connection lost: {e}");
        }
    }

    fn failed(&mut self, e: LinkError) {
        self.failures_in_a_row += 1;
        *self.master.last_error.lock().expect("last_error poisoned") = Some(e.to_string());
        if self.failures_in_a_row == 1 && self.index == 0 {
            warn!(master = %self.master.addr, "cannot connect: {e}");
        } else {
            debug!(master = %self.master.addr, conn = self.index, "cannot connect: {e}");
        }
    }

    /// Whatever raced into the queue while the connection went down fails now, rather than
    /// reaching the master late on the next connection.
    fn pausing(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// Opens a connection: TCP (the host name resolved anew each time, so a name a failover moved
/// is followed), keepalive, TLS for a `rediss://` master, credentials and database.
pub(super) async fn dial(master: &Inner) -> Result<Stream, LinkError> {
    let addr = &master.addr;
    let tcp = TcpStream::connect(addr.host_port()).await?;
    // On the socket itself, so they hold under TLS too.
    tcp.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    let mut stream = match &master.tls {
        None => Stream::Plain(tcp),
        Some(tls) => tls.connect(tcp).await.map_err(LinkError::Tls)?,
    };
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
    Ok(stream)
}

/// Prepares a dialled connection to carry votes: loads the scripts, and returns what the
/// master's `INFO` says of its run, role and eviction policy, and (unless it is a replica,
/// which can record nothing) what its lineage check answered — before any vote.
async fn prepare(stream: &mut Stream, master: &Inner) -> Result<Observed, LinkError> {
    let mut buf = BytesMut::new();
    for script in scripts::all_scripts() {
        match round_trip(
            stream,
            &mut buf,
            &[b"SCRIPT", b"LOAD", script.body.as_bytes()],
        )
        .await?
        {
            Frame::BulkString(sha) if sha[..] == *script.sha.as_bytes() => {}
            reply => {
                return Err(LinkError::Handshake {
                    step: "SCRIPT LOAD",
                    reply,
                });
            }
        }
    }
    let info = match round_trip(stream, &mut buf, &INFO).await? {
        Frame::BulkString(text) => String::from_utf8_lossy(&text).into_owned(),
        reply => {
            return Err(LinkError::Handshake {
                step: "INFO",
                reply,
            });
        }
    };
    let mut seen = parse_info(&info).ok_or(LinkError::NoRunId)?;
    if !seen.replica {
        let check = lineage_command(master, &seen.run_id);
        let reply = send_round_trip(stream, &mut buf, &check).await?;
        seen.lineage = parse_lineage(&reply);
        if seen.lineage.is_none() {
            return Err(LinkError::Handshake {
                step: "lineage check",
                reply,
            });
        }
    }
    Ok(seen)
}

/// Sends one command and reads its reply, during a handshake.
pub(super) async fn round_trip(
    stream: &mut Stream,
    buf: &mut BytesMut,
    args: &[&[u8]],
) -> Result<Frame, LinkError> {
    let mut out = BytesMut::new();
    client::encode_command(&mut out, args);
    send_round_trip(stream, buf, &out).await
}

/// Sends one encoded command and reads its reply, during a handshake.
async fn send_round_trip(
    stream: &mut Stream,
    buf: &mut BytesMut,
    command: &[u8],
) -> Result<Frame, LinkError> {
    stream.write_all(command).await?;
    stream.flush().await?;
    loop {
        if let Some(frame) = client::decode_reply(buf)? {
            return Ok(frame);
        }
        make_room(buf);
        if stream.read_buf(buf).await? == 0 {
            return Err(LinkError::ClosedInHandshake);
        }
    }
}

fn expect_ok(reply: Frame, step: &'static str) -> Result<(), LinkError> {
    match reply {
        Frame::SimpleString(s) if &s[..] == b"OK" => Ok(()),
        reply => Err(LinkError::Handshake { step, reply }),
    }
}
