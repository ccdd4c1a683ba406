//! One client connection: read whatever requests have arrived, dispatch each at once so
//! requests that wait on the masters run concurrently, and write replies in request order with
//! one write per batch.
//!
//! What a connection holds for its client is bounded: at most `max_pipeline` requests are in
//! flight, and every byte queued for the client counts against `client_output_soft_bytes` —
//! replies not yet written, replies ready but held behind one still in flight (a `LOCK ...
//! WAIT` that blocks), and the requests still awaiting theirs. Past the soft mark the session
//! stops reading, so a client that pipelines without reading gets backpressure, not memory;
//! past `client_output_hard_bytes` (only one huge reply gets there) it closes the connection.
//!
//! A client that leaves ends its waits at once (they answer null and hold nothing), noticed
//! even while the session is not reading it; so does shutdown.
//!
//! Before AUTH a request may be small only (Redis's caps for strangers), and a connection that
//! does not authenticate in time, or (with `idle_timeout_ms`) sends nothing for that long, is
//! closed: one timer per connection, looked at only when it fires, so reads never touch it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::tls::Transport;
use crate::cmd::{self, Client, Outcome, ReplyFuture, Shared};
use crate::error::Error;
use crate::protocol::{self, Limits, Protocol, Reply};
use crate::stats::Stats;

/// Buffer for the first read after idling: a few pipelined lock commands.
const FIRST_READ: usize = 4 * 1024;
/// Bytes read per call while requests keep coming.
const READ_CHUNK: usize = 16 * 1024;
/// Replies buffered before the session writes them out and dispatches more.
const WRITE_HIGH: usize = 256 * 1024;
/// How long closing a connection may wait on the client (a TLS close is a write).
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
/// While the session does not read a client that has sent more, how often it looks whether
/// the client has closed its side meanwhile.
const CLOSE_CHECK: Duration = Duration::from_millis(100);

/// A reply in its place in the pipeline.
enum Slot {
    /// Ready when its request ran, behind replies still in flight: its length in the held
    /// buffer, already encoded (so it pins no request buffer and its size is exact).
    Held(usize),
    /// Still being computed, with the protocol in force when its request ran (a `HELLO` later
    /// in the pipeline must not change how an earlier reply is encoded) and what its request
    /// counts against the output limit until the reply is encoded.
    Waiting(Protocol, usize, ReplyFuture),
}

/// A slot's outcome.
enum Done {
    Held(usize),
    Reply(Protocol, usize, Result<Reply, Error>),
}

impl Future for Slot {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        match self.get_mut() {
            Slot::Held(len) => Poll::Ready(Done::Held(*len)),
            Slot::Waiting(proto, cost, fut) => {
                fut.as_mut().poll(cx).map(|r| Done::Reply(*proto, *cost, r))
            }
        }
    }
}

/// Everything a connection holds for its client, in request order: the replies in flight and
/// the bytes that count against the output limits.
struct Queue {
    in_flight: FuturesOrdered<Slot>,
    /// Encoded replies, in order, being written.
    wbuf: BytesMut,
    /// Encoded replies behind one still in flight; [`Slot::Held`] says where each ends.
    held: BytesMut,
    /// Request bytes of the slots still waiting.
    waiting: usize,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            in_flight: FuturesOrdered::new(),
            wbuf: BytesMut::new(),
            held: BytesMut::new(),
            waiting: 0,
        }
    }

    /// Bytes queued for the client in any form.
    fn queued(&self) -> usize {
        self.wbuf.len() + self.held.len() + self.waiting
    }

    /// Queues a ready reply behind the ones still in flight, or straight into the write buffer
    /// when nothing is ahead of it.
    fn push(&mut self, proto: Protocol, reply: Reply) {
        if self.in_flight.is_empty() {
            reply.encode(proto, &mut self.wbuf);
        } else {
            let before = self.held.len();
            reply.encode(proto, &mut self.held);
            self.in_flight
                .push_back(Slot::Held(self.held.len() - before));
        }
    }

    /// Queues a reply still being computed for a request of `cost` bytes.
    fn push_later(&mut self, proto: Protocol, cost: usize, fut: ReplyFuture) {
        self.waiting += cost;
        self.in_flight.push_back(Slot::Waiting(proto, cost, fut));
    }

    /// Moves the next reply in order into the write buffer.
    fn take(&mut self, done: Done, stats: &Stats) {
        match done {
            Done::Held(len) => {
                let reply = self.held.split_to(len);
                self.wbuf.extend_from_slice(&reply);
            }
            Done::Reply(proto, cost, result) => {
                self.waiting -= cost;
                cmd::reply(result, stats).encode(proto, &mut self.wbuf);
            }
        }
    }

    /// Takes every reply that is ready now, in order.
    fn collect(&mut self, stats: &Stats) {
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            self.take(done, stats);
        }
    }

    /// Writes what the socket takes now, without waiting; false when the client is gone.
    fn flush<S: Transport>(&mut self, stream: &mut S, stats: &Stats) -> bool {
        while !self.wbuf.is_empty() {
            let written = stream.try_write_now(&self.wbuf);
            if let Ok(n) = written {
                Stats::add(&stats.net_output_bytes, n);
            }
            match written {
                Ok(0) => return false,
                Ok(n) if n == self.wbuf.len() => self.wbuf.clear(),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        stream.push_out().is_ok()
    }
}

/// Serves `stream` until the client leaves, sends QUIT, breaks the protocol, queues more than
/// the hard output limit, or `shutdown` — in which case requests already read are answered
/// (waits with null, at once) before closing.
pub async fn run<S: Transport>(
    mut stream: S,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.tcp().set_nodelay(true);
    let mut client = Client::new(shared.next_client_id(), addr, &shared);
    serve(&mut stream, &mut client, &shared, &shutdown).await;
    // Bounded: closing TLS writes, and a client that stopped reading must not hold the
    // connection open.
    let _ = tokio::time::timeout(CLOSE_WITHIN, stream.shutdown()).await;
    // However the connection ended, the locks it kept alive end with it.
    client.close().await;
}

async fn serve<S: Transport>(
    stream: &mut S,
    client: &mut Client,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let server = &shared.config.server;
    let limits = Limits {
        max_args: server.max_args,
        max_bulk_bytes: server.max_arg_bytes,
        max_inline_bytes: server.max_inline_bytes,
        unauthenticated: false,
    };
    let strangers = limits.unauthenticated();
    let max_in_flight = server.max_pipeline;
    let max_request = server.max_request_bytes;
    let (soft, hard) = (
        server.client_output_soft_bytes,
        server.client_output_hard_bytes,
    );
    let stats = &shared.stats;
    let mut rbuf = BytesMut::new();
    let mut q = Queue::new();
    // Room for another request: the in-flight bound, a batch of replies to write first, and
    // the soft output mark all leave some.
    let room = |q: &Queue| {
        q.in_flight.len() < max_in_flight && q.wbuf.len() < WRITE_HIGH && q.queued() < soft
    };
    // The socket is still read (false after EOF, shutdown, QUIT or a protocol error).
    let mut reading = true;
    // QUIT or a protocol error: nothing after it runs, not even what is already buffered.
    let mut ended = false;
    // Data arrived while the session was not reading: from then on it looks for a close by
    // the clock, since the socket stays readable.
    let mut unread = false;
    // Made once: a fresh one per turn would register with the token and leave again each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut deadlines = Deadlines::new(shared, client.authenticated);
    let timer = tokio::time::sleep_until(deadlines.next().unwrap_or_else(Instant::now));
    tokio::pin!(timer);
    let mut timing = deadlines.next().is_some();
    loop {
        // Dispatch every complete request, as far as the bounds allow.
        let mut paused = false;
        while !ended {
            if !room(&q) {
                paused = true;
                break;
            }
            let caps = if client.authenticated {
                &limits
            } else {
                &strangers
            };
            let before = rbuf.len();
            let argv = match protocol::decode(&mut rbuf, caps) {
                Ok(Some(argv)) if argv.is_empty() => continue,
                Ok(Some(argv)) => argv,
                Ok(None) if rbuf.len() > max_request => {
                    let e = format!("ERR Protocol error: request larger than {max_request} bytes");
                    end_with(stats, &mut q, client.proto, e);
                    (reading, ended) = (false, true);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    end_with(stats, &mut q, client.proto, format!("ERR {e}"));
                    (reading, ended) = (false, true);
                    break;
                }
            };
            let cost = before - rbuf.len();
            let outcome = cmd::dispatch(argv, client, shared);
            // After dispatch: HELLO's own reply is in the protocol it switches to.
            let proto = client.proto;
            match outcome {
                Outcome::Reply(reply) => q.push(proto, reply),
                Outcome::Later(fut) => q.push_later(proto, cost, fut),
                Outcome::Close(reply) => {
                    q.push(proto, reply);
                    (reading, ended) = (false, true);
                }
            }
        }
        // Collect every reply that is ready now, then write them in one go.
        q.collect(stats);
        if q.queued() > hard {
            overflow(client, shared, q.queued());
            return;
        }
        if !q.flush(stream, stats) {
            return;
        }
        // The write made room: dispatch what is left in the buffer.
        if paused && room(&q) {
            continue;
        }
        // Done when nothing more can arrive, nothing is in flight and all is written: with room
        // in flight, the dispatch loop above already took every whole request in the buffer.
        if !reading && q.in_flight.is_empty() && q.wbuf.is_empty() && !stream.unsent() {
            return;
        }
        let can_read = reading && room(&q);
        if can_read {
            unread = false;
        }
        // Not reading while requests are pending: a client that closes must still be noticed.
        let watch = reading && !can_read && !q.in_flight.is_empty();
        if q.in_flight.is_empty() && rbuf.is_empty() && q.wbuf.is_empty() {
            // Idle: hold no buffers while waiting, so thousands of idle clients cost little.
            rbuf = BytesMut::new();
            q.wbuf = BytesMut::new();
            q.held = BytesMut::new();
        }
        let mut gone = false;
        tokio::select! {
            ready = readable(stream), if can_read => {
                if ready.is_err() {
                    gone = true;
                } else {
                    let room = if rbuf.is_empty() { FIRST_READ } else { READ_CHUNK };
                    if rbuf.capacity() - rbuf.len() < room / 4 {
                        rbuf.reserve(room);
                    }
                    // Polled once (see `Transport::read_now`): readiness can be stale, and
                    // replies must not wait on a read.
                    match stream.read_now(&mut rbuf) {
                        // The client is gone (a keepalive found it dead, say) or half-closed:
                        // answer what it sent, then close.
                        Some(Ok(0)) | Some(Err(_)) => gone = true,
                        Some(Ok(n)) => {
                            Stats::add(&stats.net_input_bytes, n);
                            deadlines.heard();
                        }
                        None => {}
                    }
                }
            }
            written = stream.tcp().writable(), if !q.wbuf.is_empty() || stream.unsent() => {
                if written.is_err() || !q.flush(stream, stats) {
                    return;
                }
            }
            Some(done) = q.in_flight.next(), if !q.in_flight.is_empty() => {
                q.take(done, stats);
            }
            // A message on a channel it subscribed to (`cmd::subscribe`).
            message = client.subscriptions.next(), if !client.subscriptions.is_empty() => {
                q.push(client.proto, message);
            }
            ready = stream.tcp().ready(Interest::READABLE), if watch && !unread => {
                match ready {
                    Ok(r) if !r.is_read_closed() => unread = true,
                    _ => gone = true,
                }
            }
            _ = tokio::time::sleep(CLOSE_CHECK), if watch && unread => {
                gone = stream
                    .tcp()
                    .ready(Interest::READABLE)
                    .now_or_never()
                    .is_some_and(|r| r.map_or(true, |r| r.is_read_closed()));
            }
            () = &mut timer, if timing => {
                // A subscriber waits for messages: that is not idleness either.
                let busy = !q.in_flight.is_empty() || !client.subscriptions.is_empty();
                if let Some(why) = deadlines.expired(client.authenticated, busy) {
                    debug!(client = %client.addr, "closing the connection: {why}");
                    Stats::bump(&shared.stats.timed_out_clients);
                    break;
                }
                match deadlines.next() {
                    Some(at) => timer.as_mut().reset(at),
                    None => timing = false,
                }
            }
            _ = &mut cancelled, if reading => {
                // What the client sent before shutdown is answered, waits with null at once;
                // nothing after it is read.
                drain_readable(stream, &mut rbuf, max_request);
                client.locks.end_waits();
                reading = false;
            }
        }
        if gone {
            // The client left (or half-closed: it still gets the replies to what it sent).
            // Whatever it waits for, it no longer wants: its waits end now, holding nothing.
            client.locks.end_waits();
            reading = false;
        }
    }
}

/// When a connection is closed for what it did not do: authenticate in time (counted from the
/// connection, while it has not authenticated), or send anything for `idle_timeout_ms` with
/// nothing in flight (a command waiting on the masters or on a lock is not idleness).
struct Deadlines {
    auth: Option<Instant>,
    idle: Option<Duration>,
    last_heard: Instant,
}

impl Deadlines {
    fn new(shared: &Shared, authenticated: bool) -> Deadlines {
        let server = &shared.config.server;
        let now = Instant::now();
        let after = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Deadlines {
            auth: after(server.auth_timeout_ms)
                .filter(|_| !authenticated)
                .map(|d| now + d),
            idle: after(server.idle_timeout_ms),
            last_heard: now,
        }
    }

    /// Bytes arrived: the idle time starts again.
    fn heard(&mut self) {
        if self.idle.is_some() {
            self.last_heard = Instant::now();
        }
    }

    /// When to look next; `None` when no deadline is left.
    fn next(&self) -> Option<Instant> {
        let idle = self.idle.map(|d| self.last_heard + d);
        match (self.auth, idle) {
            (Some(a), Some(i)) => Some(a.min(i)),
            (a, i) => a.or(i),
        }
    }

    /// The timer fired: why the connection must close, if it must.
    fn expired(&mut self, authenticated: bool, busy: bool) -> Option<&'static str> {
        let now = Instant::now();
        if authenticated {
            self.auth = None;
        }
        if self.auth.is_some_and(|at| now >= at) {
            return Some("not authenticated within auth_timeout_ms");
        }
        let idle = self.idle?;
        if busy {
            self.last_heard = now;
        } else if now >= self.last_heard + idle {
            return Some("idle for idle_timeout_ms");
        }
        None
    }
}

/// Reads whatever the socket already holds, without waiting, up to `limit` bytes.
fn drain_readable<S: Transport>(stream: &mut S, rbuf: &mut BytesMut, limit: usize) {
    while rbuf.len() < limit {
        rbuf.reserve(READ_CHUNK);
        match stream.read_now(rbuf) {
            Some(Ok(0)) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
}

/// Ready when a read may make progress: the socket is readable, or the connection holds data
/// it already received.
async fn readable<S: Transport>(stream: &S) -> io::Result<()> {
    if stream.buffered() {
        return Ok(());
    }
    stream.tcp().readable().await
}

/// Answers a fatal protocol error; the connection closes after it.
fn end_with(stats: &Stats, q: &mut Queue, proto: Protocol, error: String) {
    Stats::bump(&stats.error_replies);
    q.push(proto, Reply::error(error));
}

/// Counts and logs a connection closed for queueing `queued` bytes, past the hard mark. Logged
/// at most once a second, so a flood of such clients cannot flood the log.
fn overflow(client: &Client, shared: &Shared, queued: usize) {
    /// Second (since the proxy started) of the last such log line, plus one; 0: none yet.
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    let closes = shared
        .stats
        .output_limit_closes
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    let now = shared.started.elapsed().as_secs() + 1;
    let last = LOGGED.load(Ordering::Relaxed);
    if now > last
        && LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        warn!(
            client = %client.addr,
            queued,
            limit = shared.config.server.client_output_hard_bytes,
            closes,
            "client closed: its queued replies passed client_output_hard_bytes"
        );
    }
}
