//! One client connection: read whatever requests have arrived, dispatch each at once so
//! requests that wait on the masters run concurrently, and write replies in request order with
//! one write per batch. At most `max_pipeline` requests are in flight; beyond that the session
//! stops reading, so a client that pipelines without end gets backpressure, not memory.
//! Before AUTH a request may be small only (Redis's caps for strangers), and a connection that
//! does not authenticate in time, or (with `idle_timeout_ms`) sends nothing for that long, is
//! closed: one timer per connection, looked at only when it fires, so reads never touch it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

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

/// A reply in its place in the pipeline, with the protocol in force when its request ran
/// (a `HELLO` later in the pipeline must not change how an earlier reply is encoded).
enum Slot {
    Ready(Option<(Protocol, Reply)>),
    Waiting(Protocol, ReplyFuture),
}

impl Future for Slot {
    type Output = (Protocol, Result<Reply, Error>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Slot::Ready(r) => {
                let (proto, reply) = r.take().expect("a slot is polled to completion once");
                Poll::Ready((proto, Ok(reply)))
            }
            Slot::Waiting(proto, fut) => fut.as_mut().poll(cx).map(|r| (*proto, r)),
        }
    }
}

/// Serves `stream` until the client leaves, sends QUIT, breaks the protocol, or `shutdown` —
/// in which case requests already read are answered before closing.
pub async fn run(
    mut stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
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
    let mut client = Client::new(shared.next_client_id(), addr, &shared);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut in_flight: FuturesOrdered<Slot> = FuturesOrdered::new();
    // The socket is still read (false after EOF, shutdown, QUIT or a protocol error).
    let mut reading = true;
    // QUIT or a protocol error: nothing after it runs, not even what is already buffered.
    let mut ended = false;
    // Made once: a fresh one per turn would register with the token and leave again each time.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut deadlines = Deadlines::new(&shared, client.authenticated);
    let timer = tokio::time::sleep_until(deadlines.next().unwrap_or_else(Instant::now));
    tokio::pin!(timer);
    let mut timing = deadlines.next().is_some();
    loop {
        // Dispatch every complete request, as far as the in-flight bound allows, and stop to
        // write when the replies pile up (small requests can ask for large replies).
        let mut paused = false;
        while !ended && in_flight.len() < max_in_flight {
            if wbuf.len() >= WRITE_HIGH {
                paused = true;
                break;
            }
            let caps = if client.authenticated {
                &limits
            } else {
                &strangers
            };
            let argv = match protocol::decode(&mut rbuf, caps) {
                Ok(Some(argv)) if argv.is_empty() => continue,
                Ok(Some(argv)) => argv,
                Ok(None) if rbuf.len() > max_request => {
                    let e = format!("ERR Protocol error: request larger than {max_request} bytes");
                    end_with(&shared, &mut in_flight, &mut wbuf, client.proto, e);
                    (reading, ended) = (false, true);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    end_with(
                        &shared,
                        &mut in_flight,
                        &mut wbuf,
                        client.proto,
                        format!("ERR {e}"),
                    );
                    (reading, ended) = (false, true);
                    break;
                }
            };
            let outcome = cmd::dispatch(argv, &mut client, &shared);
            // After dispatch: HELLO's own reply is in the protocol it switches to.
            let proto = client.proto;
            match outcome {
                Outcome::Reply(reply) => push(&mut in_flight, &mut wbuf, proto, reply),
                Outcome::Later(fut) => in_flight.push_back(Slot::Waiting(proto, fut)),
                Outcome::Close(reply) => {
                    push(&mut in_flight, &mut wbuf, proto, reply);
                    (reading, ended) = (false, true);
                }
            }
        }
        // Collect every reply that is ready now, then write them in one go.
        while let Some(Some((proto, result))) = in_flight.next().now_or_never() {
            cmd::reply(result, &shared.stats).encode(proto, &mut wbuf);
        }
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                break;
            }
            wbuf.clear();
        }
        // Done when nothing more can arrive and nothing is in flight: with room in flight, the
        // dispatch loop above already took every whole request left in the buffer.
        if paused {
            continue;
        }
        if !reading && in_flight.is_empty() {
            break;
        }
        let can_read = reading && in_flight.len() < max_in_flight;
        if in_flight.is_empty() && rbuf.is_empty() {
            // Idle: hold no buffers while waiting, so thousands of idle clients cost little.
            rbuf = BytesMut::new();
            wbuf = BytesMut::new();
        }
        tokio::select! {
            ready = stream.readable(), if can_read => {
                if ready.is_err() {
                    reading = false;
                } else {
                    let room = if rbuf.is_empty() { FIRST_READ } else { READ_CHUNK };
                    if rbuf.capacity() - rbuf.len() < room / 4 {
                        rbuf.reserve(room);
                    }
                    // `read_buf` rather than `try_read_buf`: a short read tells tokio the socket
                    // is drained, which saves a system call that would only say so. It is
                    // polled once: readiness can be stale, and replies must not wait on a read.
                    match stream.read_buf(&mut rbuf).now_or_never() {
                        // The client is gone (a keepalive found it dead, say) or half-closed:
                        // answer what it sent, then close.
                        Some(Ok(0)) | Some(Err(_)) => reading = false,
                        Some(Ok(_)) => deadlines.heard(),
                        None => {}
                    }
                }
            }
            Some((proto, result)) = in_flight.next(), if !in_flight.is_empty() => {
                cmd::reply(result, &shared.stats).encode(proto, &mut wbuf);
            }
            () = &mut timer, if timing => {
                if let Some(why) = deadlines.expired(client.authenticated, !in_flight.is_empty()) {
                    debug!("closing the connection from {addr}: {why}");
                    Stats::bump(&shared.stats.timed_out_clients);
                    break;
                }
                match deadlines.next() {
                    Some(at) => timer.as_mut().reset(at),
                    None => timing = false,
                }
            }
            _ = &mut cancelled, if reading => {
                // What the client sent before shutdown is answered; nothing after it is read.
                drain_readable(&mut stream, &mut rbuf, max_request);
                reading = false;
            }
        }
    }
    let _ = stream.shutdown().await;
    // However the connection ended, the locks it kept alive end with it.
    client.close().await;
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
fn drain_readable(stream: &mut TcpStream, rbuf: &mut BytesMut, limit: usize) {
    while rbuf.len() < limit {
        rbuf.reserve(READ_CHUNK);
        match stream.try_read_buf(rbuf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Answers a fatal protocol error; the connection closes after it.
fn end_with(
    shared: &Shared,
    in_flight: &mut FuturesOrdered<Slot>,
    wbuf: &mut BytesMut,
    proto: Protocol,
    error: String,
) {
    Stats::bump(&shared.stats.error_replies);
    push(in_flight, wbuf, proto, Reply::error(error));
}

/// Queues a ready reply behind the ones still in flight, or straight into the write buffer
/// when nothing is ahead of it.
fn push(in_flight: &mut FuturesOrdered<Slot>, wbuf: &mut BytesMut, proto: Protocol, reply: Reply) {
    if in_flight.is_empty() {
        reply.encode(proto, wbuf);
    } else {
        in_flight.push_back(Slot::Ready(Some((proto, reply))));
    }
}
