//! `lockbench`: a load generator for redlock-proxy (or anything that answers `LOCK`/`UNLOCK`).
//!
//! Each of `--connections` connections keeps `--pipeline` commands in flight. In `cycle` mode a
//! granted `LOCK key ttl` is followed by `UNLOCK key token` with the token it returned; in `lock`
//! mode only `LOCK`s are sent (the locks expire after `--ttl-ms`). Keys are `lockbench:<n>`, `n`
//! uniform in `0..--keys`. `--idle N` first opens N connections, checks each with a `PING`, and
//! holds them open for the whole run.
//!
//! `--fence` sends `LOCK key ttl FENCE` and takes the token from the `[token, fence]` reply.
//!
//! `wait-latency` mode measures how fast a waiter wakes: for each of `--rounds` fresh keys, a
//! holder takes the key through `--addr`, a waiter sends `LOCK key ttl WAIT ms` through
//! `--addr-b`, and after `--hold-ms` the holder releases through `--addr`; the time from the
//! `UNLOCK` reply to the waiter's token is recorded. With `--master` (each master's address) it
//! then runs `--fallback-rounds` where the holder's key is deleted on the masters directly, so
//! no release is announced and only the waiter's timer can notice.
//!
//! It prints cycles/s, `LOCK` latency percentiles and reply counts, then one JSON line with the
//! same numbers. Replies are counted when they arrive within the measured window (after
//! `--warmup-secs`); broken connections and timeouts whenever they happen. Errors are counted,
//! never fatal, and the first few distinct messages are printed. Every loop is bounded: nothing
//! new is sent after the run's end, and replies still missing `GRACE` later are timeouts.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, timeout, timeout_at};

/// How long after the end of the run missing replies are still waited for.
const GRACE: Duration = Duration::from_secs(5);
/// Deadline for one connect (and its AUTH).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before reconnecting after a broken connection, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Idle connections opened at once; more would only overflow the server's accept backlog.
const IDLE_CONNECT_PARALLELISM: usize = 256;
/// Longest reply line or bulk accepted; the lock commands' replies are far shorter.
const MAX_REPLY: usize = 64 * 1024;
/// Distinct error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 3;

/// LOCK→UNLOCK load generator for redlock-proxy: throughput, LOCK latency, reply counts.
#[derive(Debug, Parser)]
#[command(name = "lockbench", version)]
struct Args {
    /// Server address, HOST:PORT
    #[arg(long, default_value = "127.0.0.1:7379")]
    addr: String,
    /// Active connections
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,
    /// Measured time, in seconds (after the warm-up)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_secs: u64,
    /// Unmeasured load before the measured time, in seconds
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    warmup_secs: u64,
    /// Size of the random key space
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// TTL of each LOCK, in ms
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    ttl_ms: u64,
    /// Commands in flight per connection (the proxy's default limit is 1024)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pipeline: u32,
    /// Idle connections to open (each checked with PING) and hold during the run
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    idle: u32,
    /// cycle: LOCK then UNLOCK with the token; lock: LOCK only (locks expire by TTL)
    #[arg(long, value_enum, default_value_t = Mode::Cycle)]
    mode: Mode,
    /// Runtime threads; 1 is a single-threaded runtime (leaves the most CPU to the server)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: u32,
    /// Password sent with AUTH on every connection, for a server with requirepass
    #[arg(long, env = "LOCKBENCH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Lock with `LOCK key ttl FENCE` (the reply is `[token, fence]`)
    #[arg(long)]
    fence: bool,
    /// wait-latency: the second proxy, where the waiter waits
    #[arg(long)]
    addr_b: Option<String>,
    /// wait-latency: release-and-wake rounds
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rounds: u32,
    /// wait-latency: how long the holder keeps the key after the waiter's request was sent, ms
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    hold_ms: u64,
    /// wait-latency: the waiter's WAIT timeout, ms
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    wait_ms: u64,
    /// wait-latency: a master of the proxies (repeat for each), for the unannounced-release
    /// rounds; their lock keys are `redlock:0:<key>` (the default key_prefix, database 0)
    #[arg(long = "master")]
    masters: Vec<String>,
    /// wait-latency: rounds with an unannounced release (needs --master)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    fallback_rounds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Cycle,
    Lock,
    /// Wake-up latency of `LOCK ... WAIT` across two proxies (see the module docs).
    WaitLatency,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cycle => "cycle",
            Mode::Lock => "lock",
            Mode::WaitLatency => "wait-latency",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    raise_fd_limit(u64::from(args.connections) + u64::from(args.idle) + 64);
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads as usize)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lockbench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let addr = match tokio::net::lookup_host(&args.addr)
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) | Err(_) => {
            eprintln!("lockbench: cannot resolve {}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let args = Arc::new(args);
    if args.mode == Mode::WaitLatency {
        return wait::run(addr, &args).await;
    }

    let idle = open_idle(addr, &args).await;
    if args.idle > 0 {
        eprintln!(
            "lockbench: holding {} idle connections ({} failed)",
            idle.open.len(),
            idle.failed
        );
    }

    let start = Instant::now();
    let window = Window {
        from: start + Duration::from_secs(args.warmup_secs),
        until: start + Duration::from_secs(args.warmup_secs + args.duration_secs),
    };
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::spawn(drive(addr, Arc::clone(&args), window, seed(i))))
        .collect();
    let mut total = Stats::new();
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
        idle_open: idle.count,
        idle_failed: idle.failed,
    };
    report.print();
    if total.answered() == 0 {
        eprintln!("lockbench: no command got a reply");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The measured part of the run: replies that arrive within it are counted.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Instant,
}

struct Idle {
    open: Vec<TcpStream>,
    count: u64,
    failed: u64,
}

/// Opens `--idle` connections, each answering one PING, bounded in parallelism and time.
async fn open_idle(addr: SocketAddr, args: &Arc<Args>) -> Idle {
    let gate = Arc::new(Semaphore::new(IDLE_CONNECT_PARALLELISM));
    let tasks: Vec<_> = (0..args.idle)
        .map(|_| {
            let gate = Arc::clone(&gate);
            let args = Arc::clone(args);
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                let mut conn = connect(addr, &args).await.ok()?;
                let ping = timeout(CONNECT_TIMEOUT, async {
                    conn.stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
                    conn.read_one().await
                })
                .await;
                matches!(ping, Ok(Ok(Reply::Status))).then_some(conn.stream)
            })
        })
        .collect();
    let mut idle = Idle {
        open: Vec::with_capacity(args.idle as usize),
        count: 0,
        failed: 0,
    };
    for task in tasks {
        match task.await {
            Ok(Some(stream)) => idle.open.push(stream),
            _ => idle.failed += 1,
        }
    }
    idle.count = idle.open.len() as u64;
    idle
}

/// One active connection for the whole run, reconnecting (after a pause) when it breaks.
async fn drive(addr: SocketAddr, args: Arc<Args>, window: Window, seed: u64) -> Stats {
    let mut stats = Stats::new();
    let mut rng = SplitMix(seed);
    let hard_stop = window.until + GRACE;
    while Instant::now() < window.until {
        let mut conn = match connect(addr, &args).await {
            Ok(conn) => conn,
            Err(e) => {
                stats.io_errors += 1;
                stats.note_error(&format!("connect: {e}"));
                sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        match timeout_at(hard_stop, conn.load(&args, window, &mut rng, &mut stats)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => {
                stats.io_errors += 1 + conn.in_flight.len() as u64;
                stats.note_error(&format!("connection: {e}"));
                sleep(RECONNECT_PAUSE).await;
            }
            Err(_) => {
                stats.timeouts += conn.in_flight.len() as u64;
                stats.note_error("no reply within the grace period after the run");
                break;
            }
        }
    }
    stats
}

async fn connect(addr: SocketAddr, args: &Args) -> io::Result<Conn> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(16 * 1024),
        wbuf: Vec::with_capacity(4 * 1024),
        in_flight: VecDeque::new(),
    };
    if let Some(password) = &args.password {
        encode(&mut conn.wbuf, &[b"AUTH", password.as_bytes()]);
        let reply = timeout(CONNECT_TIMEOUT, async {
            conn.flush().await?;
            conn.read_one().await
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "AUTH timed out"))??;
        if reply != Reply::Status {
            return Err(io::Error::other("AUTH refused"));
        }
    }
    Ok(conn)
}

/// A request awaiting its reply.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Lock { key: u64, at: Instant },
    Unlock { at: Instant },
}

struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    in_flight: VecDeque<Sent>,
}

impl Conn {
    /// Keeps `--pipeline` commands in flight until the window ends, then collects the replies
    /// still owed. Each batch of replies read is answered with one write.
    async fn load(
        &mut self,
        args: &Args,
        window: Window,
        rng: &mut SplitMix,
        stats: &mut Stats,
    ) -> io::Result<()> {
        let depth = args.pipeline as usize;
        let now = Instant::now();
        while self.in_flight.len() < depth && now < window.until {
            self.push_lock(rng.below(args.keys), args.ttl_ms, args.fence, now);
        }
        loop {
            self.flush().await?;
            if self.in_flight.is_empty() {
                return Ok(());
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            let now = Instant::now();
            let measuring = now >= window.from && now < window.until;
            let mut used = 0;
            while let Some((reply, len)) = parse(&self.rbuf[used..])? {
                let Some(sent) = self.in_flight.pop_front() else {
                    return Err(io::Error::other("reply to no request"));
                };
                let follow_up = self.on_reply(sent, &reply, used, now, measuring, args, stats);
                used += len;
                if follow_up {
                    continue;
                }
                if now < window.until {
                    self.push_lock(rng.below(args.keys), args.ttl_ms, args.fence, now);
                }
            }
            self.rbuf.advance(used);
        }
    }

    /// Accounts one reply. True when it queued a follow-up (the UNLOCK of a granted lock).
    #[allow(clippy::too_many_arguments)]
    fn on_reply(
        &mut self,
        sent: Sent,
        reply: &Reply,
        at: usize,
        now: Instant,
        measuring: bool,
        args: &Args,
        stats: &mut Stats,
    ) -> bool {
        match (sent, reply) {
            (Sent::Lock { key, at: t0 }, _) => {
                if measuring {
                    stats.lock_latency.record(now - t0);
                }
                match reply {
                    Reply::Bulk(Some(range)) | Reply::Fenced(range)
                        if matches!(reply, Reply::Fenced(_)) == args.fence =>
                    {
                        if measuring {
                            stats.granted += 1;
                        }
                        if args.mode == Mode::Cycle {
                            // Always release what was granted, even after the window: no lock
                            // outlives the run.
                            let token = &self.rbuf[at + range.0..at + range.1];
                            push_unlock(&mut self.wbuf, key, token);
                            self.in_flight.push_back(Sent::Unlock { at: now });
                            return true;
                        }
                    }
                    Reply::Bulk(None) if measuring => stats.null += 1,
                    Reply::Error(range) => {
                        stats.error_replies += u64::from(measuring);
                        let text = String::from_utf8_lossy(&self.rbuf[at + range.0..at + range.1])
                            .into_owned();
                        stats.note_error(&text);
                    }
                    Reply::Bulk(None) => {}
                    _ => {
                        stats.unexpected += u64::from(measuring);
                        stats.note_error("unexpected reply type to LOCK");
                    }
                }
            }
            (Sent::Unlock { at: t0 }, _) => {
                if measuring {
                    stats.unlock_latency.record(now - t0);
                }
                match reply {
                    Reply::Int(1) if measuring => stats.cycles += 1,
                    Reply::Int(0) if measuring => stats.unlock_zero += 1,
                    Reply::Int(_) => {}
                    Reply::Error(range) => {
                        stats.error_replies += u64::from(measuring);
                        let text = String::from_utf8_lossy(&self.rbuf[at + range.0..at + range.1])
                            .into_owned();
                        stats.note_error(&text);
                    }
                    _ => {
                        stats.unexpected += u64::from(measuring);
                        stats.note_error("unexpected reply type to UNLOCK");
                    }
                }
            }
        }
        false
    }

    fn push_lock(&mut self, key: u64, ttl_ms: u64, fence: bool, now: Instant) {
        let mut kb = itoa::Buffer::new();
        let mut tb = itoa::Buffer::new();
        let key_num = kb.format(key).as_bytes();
        let ttl = tb.format(ttl_ms).as_bytes();
        if fence {
            self.wbuf.extend_from_slice(b"*4\r\n$4\r\nLOCK\r\n");
        } else {
            self.wbuf.extend_from_slice(b"*3\r\n$4\r\nLOCK\r\n");
        }
        put_key(&mut self.wbuf, key_num);
        put_bulk(&mut self.wbuf, ttl);
        if fence {
            put_bulk(&mut self.wbuf, b"FENCE");
        }
        self.in_flight.push_back(Sent::Lock { key, at: now });
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads exactly one reply (handshakes only).
    async fn read_one(&mut self) -> io::Result<Reply> {
        loop {
            if let Some((reply, len)) = parse(&self.rbuf)? {
                self.rbuf.advance(len);
                return Ok(reply);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
        }
    }
}

const KEY_PREFIX: &[u8] = b"lockbench:";

fn put_key(out: &mut Vec<u8>, key_num: &[u8]) {
    let mut lb = itoa::Buffer::new();
    out.push(b'$');
    out.extend_from_slice(lb.format(KEY_PREFIX.len() + key_num.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(KEY_PREFIX);
    out.extend_from_slice(key_num);
    out.extend_from_slice(b"\r\n");
}

fn put_bulk(out: &mut Vec<u8>, data: &[u8]) {
    let mut lb = itoa::Buffer::new();
    out.push(b'$');
    out.extend_from_slice(lb.format(data.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_unlock(out: &mut Vec<u8>, key: u64, token: &[u8]) {
    let mut kb = itoa::Buffer::new();
    out.extend_from_slice(b"*3\r\n$6\r\nUNLOCK\r\n");
    put_key(out, kb.format(key).as_bytes());
    put_bulk(out, token);
}

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    let mut lb = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(lb.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        put_bulk(out, a);
    }
}

/// One reply; byte ranges point into the buffer it was parsed from (no copies on the hot path).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status,
    Error((usize, usize)),
    Int(i64),
    Bulk(Option<(usize, usize)>),
    /// `[token, fence]`, the reply of `LOCK ... FENCE`: the token's range.
    Fenced((usize, usize)),
    /// Any other type (aggregates, doubles, ...), skipped whole.
    Other,
}

/// Parses one complete reply at the start of `buf`: `Ok(None)` when more bytes are needed.
/// Understands RESP2 and the RESP3 types, so an unexpected reply is skipped, not misframed.
fn parse(buf: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    parse_at(buf, 0, 0)
}

/// Deepest aggregate nesting accepted; lock replies are flat.
const MAX_DEPTH: usize = 8;

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> io::Result<Option<(Reply, usize)>> {
    let Some(line_end) = find_crlf(buf, pos) else {
        if buf.len() - pos > MAX_REPLY {
            return Err(invalid("reply line too long"));
        }
        return Ok(None);
    };
    if line_end == pos {
        return Err(invalid("empty reply line"));
    }
    let body = (pos + 1, line_end);
    let next = line_end + 2;
    let reply = match buf[pos] {
        b'+' => Reply::Status,
        b'-' => Reply::Error(body),
        b':' => Reply::Int(number(&buf[body.0..body.1])?),
        b'_' => Reply::Bulk(None),
        b',' | b'#' | b'(' => Reply::Other,
        b'$' | b'!' | b'=' => {
            let len = number(&buf[body.0..body.1])?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|_| invalid("bad length"))?;
            if len > MAX_REPLY {
                return Err(invalid("bulk reply too long"));
            }
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err(invalid("bulk reply without CRLF"));
            }
            let reply = if buf[pos] == b'$' {
                Reply::Bulk(Some((next, next + len)))
            } else {
                Reply::Other
            };
            return Ok(Some((reply, next + len + 2)));
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            if depth >= MAX_DEPTH {
                return Err(invalid("reply nested too deeply"));
            }
            let n = number(&buf[body.0..body.1])?;
            if n < 0 {
                // A null array: what a RESP2 null may look like besides `$-1`.
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let per = if matches!(buf[pos], b'%' | b'|') {
                2
            } else {
                1
            };
            let items = usize::try_from(n.max(0)).map_err(|_| invalid("bad length"))? * per;
            if items > MAX_REPLY {
                return Err(invalid("aggregate reply too long"));
            }
            let mut at = next;
            let mut parts = Vec::with_capacity(items.min(2));
            for _ in 0..items {
                match parse_at(buf, at, depth + 1)? {
                    Some((part, end)) => {
                        if parts.len() < 2 {
                            parts.push(part);
                        }
                        at = end;
                    }
                    None => return Ok(None),
                }
            }
            let reply = match (buf[pos], items, parts.as_slice()) {
                (b'*', 2, [Reply::Bulk(Some(token)), Reply::Int(_)]) => Reply::Fenced(*token),
                _ => Reply::Other,
            };
            return Ok(Some((reply, at)));
        }
        _ => return Err(invalid("unknown reply type")),
    };
    // Ranges are relative to `buf`; callers parse from 0, so they index the same slice.
    Ok(Some((reply, next)))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\r') {
        let at = i + off;
        if at + 1 >= buf.len() {
            return None;
        }
        if buf[at + 1] == b'\n' {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

fn number(text: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad number in reply"))
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// Latency histogram with log-linear buckets: exact below 128 ns, then 64 buckets per power of
/// two (under 1% error). Fixed size whatever the run length, and cheap to merge.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_ns: u128,
    max_ns: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Up to 2^40 ns (about 18 minutes); longer values are clamped.
const MAX_SHIFT: u32 = 40 - SUB_BITS;
const BUCKETS: usize = (2 * SUB + MAX_SHIFT as u64 * SUB) as usize;

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value at quantile `q` (0..=1), in µs: the middle of its bucket.
    fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return ((lo + hi) as f64 / 2.0).min(self.max_ns as f64) / 1000.0;
            }
        }
        self.max_ns as f64 / 1000.0
    }

    fn mean_us(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.total as f64 / 1000.0
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < 2 * SUB {
        return ns as usize;
    }
    let shift = (63 - ns.leading_zeros() - SUB_BITS).min(MAX_SHIFT);
    let mantissa = (ns >> shift).min(2 * SUB - 1);
    (SUB * (u64::from(shift) + 1) + mantissa - SUB) as usize
}

/// Lowest and highest value of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mantissa = i % SUB + SUB;
    (mantissa << shift, ((mantissa + 1) << shift) - 1)
}

#[derive(Debug, Clone)]
struct Stats {
    granted: u64,
    null: u64,
    cycles: u64,
    unlock_zero: u64,
    error_replies: u64,
    unexpected: u64,
    io_errors: u64,
    timeouts: u64,
    lock_latency: Histogram,
    unlock_latency: Histogram,
    error_samples: Vec<String>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            granted: 0,
            null: 0,
            cycles: 0,
            unlock_zero: 0,
            error_replies: 0,
            unexpected: 0,
            io_errors: 0,
            timeouts: 0,
            lock_latency: Histogram::new(),
            unlock_latency: Histogram::new(),
            error_samples: Vec::new(),
        }
    }

    fn merge(&mut self, o: Stats) {
        self.granted += o.granted;
        self.null += o.null;
        self.cycles += o.cycles;
        self.unlock_zero += o.unlock_zero;
        self.error_replies += o.error_replies;
        self.unexpected += o.unexpected;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.lock_latency.merge(&o.lock_latency);
        self.unlock_latency.merge(&o.unlock_latency);
        for e in o.error_samples {
            self.note_error(&e);
        }
    }

    fn note_error(&mut self, text: &str) {
        if self.error_samples.len() < MAX_ERROR_SAMPLES
            && !self.error_samples.iter().any(|e| e == text)
        {
            self.error_samples.push(text.to_owned());
        }
    }

    fn errors(&self) -> u64 {
        self.error_replies + self.unexpected + self.io_errors + self.timeouts
    }

    fn answered(&self) -> u64 {
        self.lock_latency.total + self.unlock_latency.total
    }
}

struct Report<'a> {
    args: &'a Args,
    stats: &'a Stats,
    idle_open: u64,
    idle_failed: u64,
}

impl Report<'_> {
    fn print(&self) {
        let a = self.args;
        let s = self.stats;
        let secs = a.duration_secs as f64;
        let cycles_per_sec = s.cycles as f64 / secs;
        let locks_per_sec = s.lock_latency.total as f64 / secs;
        let requests_per_sec = s.answered() as f64 / secs;
        let q = |h: &Histogram, p| h.quantile_us(p);
        let l = &s.lock_latency;
        println!(
            "lockbench: {} | {} connections x {} in flight | {} mode{} | {} s measured after {} s warm-up | {} idle connections held ({} failed)",
            a.addr,
            a.connections,
            a.pipeline,
            a.mode.name(),
            if a.fence { " (FENCE)" } else { "" },
            a.duration_secs,
            a.warmup_secs,
            self.idle_open,
            self.idle_failed
        );
        match a.mode {
            Mode::Cycle => println!("  LOCK→UNLOCK cycles/s  {cycles_per_sec:.0}"),
            Mode::Lock | Mode::WaitLatency => {
                println!("  LOCK/s                {locks_per_sec:.0}")
            }
        }
        println!(
            "  LOCK latency (µs)     p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            q(l, 0.5),
            q(l, 0.99),
            q(l, 0.999),
            l.max_ns as f64 / 1000.0,
            l.mean_us()
        );
        if a.mode == Mode::Cycle {
            let u = &s.unlock_latency;
            println!(
                "  UNLOCK latency (µs)   p50 {:.1}  p99 {:.1}",
                q(u, 0.5),
                q(u, 0.99)
            );
        }
        println!(
            "  granted {}  null {}  unlock:0 {}  errors {} (error replies {}, unexpected {}, I/O {}, timeouts {})",
            s.granted,
            s.null,
            s.unlock_zero,
            s.errors(),
            s.error_replies,
            s.unexpected,
            s.io_errors,
            s.timeouts
        );
        for e in &s.error_samples {
            println!("  error: {e}");
        }

        let mut json = String::with_capacity(512);
        let _ = write!(
            json,
            "{{\"tool\":\"lockbench\",\"addr\":{},\"mode\":\"{}\",\"fence\":{},\"connections\":{},\"pipeline\":{},\
             \"duration_secs\":{},\"warmup_secs\":{},\"keys\":{},\"ttl_ms\":{},\"idle_open\":{},\
             \"idle_failed\":{},\"cycles_per_sec\":{:.1},\"locks_per_sec\":{:.1},\"requests_per_sec\":{:.1},\
             \"lock_p50_us\":{:.1},\"lock_p99_us\":{:.1},\"lock_p999_us\":{:.1},\"lock_max_us\":{:.1},\
             \"lock_mean_us\":{:.1},\"unlock_p50_us\":{:.1},\"unlock_p99_us\":{:.1},\"granted\":{},\
             \"null\":{},\"cycles\":{},\"unlock_zero\":{},\"errors\":{},\"error_replies\":{},\
             \"unexpected\":{},\"io_errors\":{},\"timeouts\":{},\"first_error\":{}}}",
            json_str(&a.addr),
            a.mode.name(),
            a.fence,
            a.connections,
            a.pipeline,
            a.duration_secs,
            a.warmup_secs,
            a.keys,
            a.ttl_ms,
            self.idle_open,
            self.idle_failed,
            cycles_per_sec,
            locks_per_sec,
            requests_per_sec,
            q(l, 0.5),
            q(l, 0.99),
            q(l, 0.999),
            l.max_ns as f64 / 1000.0,
            l.mean_us(),
            q(&s.unlock_latency, 0.5),
            q(&s.unlock_latency, 0.99),
            s.granted,
            s.null,
            s.cycles,
            s.unlock_zero,
            s.errors(),
            s.error_replies,
            s.unexpected,
            s.io_errors,
            s.timeouts,
            json_str(s.error_samples.first().map_or("", String::as_str)),
        );
        println!("{json}");
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// SplitMix64: a tiny, fast PRNG for picking keys (no need for cryptographic quality).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for key spreading (modulo bias is negligible for n << 2^64).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A different seed per connection and per run, so concurrent runs do not walk the same keys.
fn seed(connection: u32) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ (u64::from(connection) << 32) ^ u64::from(std::process::id())
}

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

/// `--mode wait-latency`: one holder and one waiter, sequential rounds, every step bounded.
mod wait {
    use super::*;

    /// Longest any single request of a round may take, besides the waiter's `WAIT`.
    const STEP: Duration = Duration::from_secs(3);

    /// One connection with whole replies copied out (no pipelining here).
    struct Link {
        conn: Conn,
    }

    impl Link {
        async fn open(addr: SocketAddr, args: &Args) -> io::Result<Link> {
            Ok(Link {
                conn: connect(addr, args).await?,
            })
        }

        async fn send(&mut self, cmd: &[&[u8]]) -> io::Result<()> {
            encode(&mut self.conn.wbuf, cmd);
            self.conn.flush().await
        }

        /// The next reply and its bytes (ranges in the reply index those bytes).
        async fn reply(&mut self, within: Duration) -> io::Result<(Reply, Vec<u8>)> {
            timeout(within, async {
                loop {
                    if let Some((reply, len)) = parse(&self.conn.rbuf)? {
                        let bytes = self.conn.rbuf[..len].to_vec();
                        self.conn.rbuf.advance(len);
                        return Ok((reply, bytes));
                    }
                    if self.conn.stream.read_buf(&mut self.conn.rbuf).await? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
                    }
                }
            })
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))?
        }

        async fn call(&mut self, cmd: &[&[u8]]) -> io::Result<(Reply, Vec<u8>)> {
            self.send(cmd).await?;
            self.reply(STEP).await
        }
    }

    fn token_of(reply: &(Reply, Vec<u8>)) -> Option<Vec<u8>> {
        match reply.0 {
            Reply::Bulk(Some((a, b))) => Some(reply.1[a..b].to_vec()),
            _ => None,
        }
    }

    /// What one set of rounds measured.
    #[derive(Default)]
    struct Tally {
        /// µs from the release (UNLOCK reply, or the last master's DEL reply) to the token.
        wake_us: Vec<f64>,
        /// Tokens that arrived before the release's reply did (counted as 0 µs above).
        early: u32,
        failed: u32,
        first_error: Option<String>,
    }

    impl Tally {
        fn fail(&mut self, why: String) {
            self.failed += 1;
            self.first_error.get_or_insert(why);
        }

        fn quantile(&self, q: f64) -> f64 {
            let mut v = self.wake_us.clone();
            v.sort_by(f64::total_cmp);
            if v.is_empty() {
                return 0.0;
            }
            v[((v.len() - 1) as f64 * q).round() as usize]
        }

        fn print(&self, name: &str) -> String {
            let max = self.wake_us.iter().copied().fold(0.0, f64::max);
            println!(
                "  {name:<12} rounds {}  wake-up (ms) p50 {:.2}  p99 {:.2}  max {:.2}  early {}  failed {}{}",
                self.wake_us.len(),
                self.quantile(0.5) / 1e3,
                self.quantile(0.99) / 1e3,
                max / 1e3,
                self.early,
                self.failed,
                self.first_error
                    .as_deref()
                    .map_or(String::new(), |e| format!("  first error: {e}"))
            );
            format!(
                "\"{name}\":{{\"rounds\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\
                 \"early\":{},\"failed\":{}}}",
                self.wake_us.len(),
                self.quantile(0.5) / 1e3,
                self.quantile(0.99) / 1e3,
                max / 1e3,
                self.early,
                self.failed
            )
        }
    }

    pub async fn run(addr: SocketAddr, args: &Args) -> ExitCode {
        let resolve = |a: &str| {
            let a = a.to_owned();
            async move {
                tokio::net::lookup_host(&a)
                    .await
                    .ok()
                    .and_then(|mut i| i.next())
                    .ok_or(a)
            }
        };
        let Some(addr_b) = &args.addr_b else {
            eprintln!("lockbench: --mode wait-latency needs --addr-b");
            return ExitCode::FAILURE;
        };
        let addr_b = match resolve(addr_b).await {
            Ok(a) => a,
            Err(a) => {
                eprintln!("lockbench: cannot resolve {a}");
                return ExitCode::FAILURE;
            }
        };
        let mut masters = Vec::new();
        for m in &args.masters {
            match resolve(m).await {
                Ok(a) => masters.push(a),
                Err(a) => {
                    eprintln!("lockbench: cannot resolve {a}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // Fresh keys per run and round, so no round meets a lock left by another.
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let announced = rounds(addr, addr_b, &[], args.rounds, run_id, "a", args).await;
        let fallback = if masters.is_empty() {
            Tally::default()
        } else {
            rounds(
                addr,
                addr_b,
                &masters,
                args.fallback_rounds,
                run_id,
                "f",
                args,
            )
            .await
        };
        println!(
            "lockbench: wait-latency | holder via {} | waiter via {} | ttl {} ms | hold {} ms after the waiter asked | WAIT {} ms",
            args.addr, addr_b, args.ttl_ms, args.hold_ms, args.wait_ms
        );
        let mut json = format!(
            "{{\"tool\":\"lockbench\",\"mode\":\"wait-latency\",\"addr\":{},\"addr_b\":{},\
             \"ttl_ms\":{},\"hold_ms\":{},\"wait_ms\":{},",
            json_str(&args.addr),
            json_str(&addr_b.to_string()),
            args.ttl_ms,
            args.hold_ms,
            args.wait_ms
        );
        json.push_str(&announced.print("released"));
        if !masters.is_empty() {
            json.push(',');
            json.push_str(&fallback.print("unannounced"));
        }
        json.push('}');
        println!("{json}");
        if announced.wake_us.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    /// `count` rounds; with `masters` the release is a DEL on each master (no announcement).
    async fn rounds(
        addr: SocketAddr,
        addr_b: SocketAddr,
        masters: &[SocketAddr],
        count: u32,
        run_id: u128,
        tag: &str,
        args: &Args,
    ) -> Tally {
        let mut tally = Tally::default();
        let mut links: Option<(Link, Link)> = None;
        for round in 0..count {
            if links.is_none() {
                match (Link::open(addr, args).await, Link::open(addr_b, args).await) {
                    (Ok(h), Ok(w)) => links = Some((h, w)),
                    (Err(e), _) | (_, Err(e)) => {
                        tally.fail(format!("connect: {e}"));
                        sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                }
            }
            let Some((holder, waiter)) = links.as_mut() else {
                continue;
            };
            let key = format!("lockbench:wait:{run_id}:{tag}{round}");
            match one_round(holder, waiter, masters, &key, args).await {
                Ok((us, early)) => {
                    tally.wake_us.push(us);
                    tally.early += u32::from(early);
                }
                Err(e) => {
                    tally.fail(e.to_string());
                    // A connection in an unknown state is not reused.
                    links = None;
                }
            }
        }
        tally
    }

    /// One round: µs from the release to the waiter's token, and whether the token came first.
    async fn one_round(
        holder: &mut Link,
        waiter: &mut Link,
        masters: &[SocketAddr],
        key: &str,
        args: &Args,
    ) -> io::Result<(f64, bool)> {
        let ttl = args.ttl_ms.to_string();
        let wait = args.wait_ms.to_string();
        let held = holder
            .call(&[b"LOCK", key.as_bytes(), ttl.as_bytes()])
            .await?;
        let token = token_of(&held).ok_or_else(|| io::Error::other("the holder got no token"))?;
        waiter
            .send(&[
                b"LOCK",
                key.as_bytes(),
                ttl.as_bytes(),
                b"WAIT",
                wait.as_bytes(),
            ])
            .await?;
        // The waiter's reply is read concurrently with the release, stamped on arrival.
        let wait_for = Duration::from_millis(args.wait_ms) + STEP;
        let waited = async {
            let reply = waiter.reply(wait_for).await;
            (reply, Instant::now())
        };
        let release = async {
            // Part of the scenario, not a readiness check: the holder keeps the lock a while
            // after the waiter asked, as a real holder would.
            sleep(Duration::from_millis(args.hold_ms)).await;
            if masters.is_empty() {
                match holder.call(&[b"UNLOCK", key.as_bytes(), &token]).await? {
                    (Reply::Int(1), _) => {}
                    other => return Err(io::Error::other(format!("UNLOCK: {:?}", other.0))),
                }
            } else {
                let master_key = format!("redlock:0:{key}");
                for m in masters {
                    let mut link = Link::open(*m, args).await?;
                    link.call(&[b"DEL", master_key.as_bytes()]).await?;
                }
            }
            Ok(Instant::now())
        };
        let ((reply, woke), released) = tokio::join!(waited, release);
        let released = released?;
        let granted = reply?;
        let token_b =
            token_of(&granted).ok_or_else(|| io::Error::other("the waiter got no token"))?;
        // Leave nothing behind for the next round.
        waiter.call(&[b"UNLOCK", key.as_bytes(), &token_b]).await?;
        let early = woke < released;
        Ok((
            woke.saturating_duration_since(released).as_secs_f64() * 1e6,
            early,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_one_percent() {
        for ns in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            65_535,
            1_000_000,
            123_456_789,
            1 << 39,
        ] {
            let (lo, hi) = bucket_range(bucket(ns));
            assert!(lo <= ns && ns <= hi, "{ns} not in [{lo}, {hi}]");
            assert!((hi - lo) as f64 <= ns as f64 / 64.0 + 1.0);
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        assert!((h.quantile_us(0.5) - 50.0).abs() < 1.0);
        assert!((h.quantile_us(0.99) - 99.0).abs() < 1.0);
    }

    #[test]
    fn parses_lock_replies() {
        let buf = b"$4\r\nabcd\r\n$-1\r\n:1\r\n-NOQUORUM x\r\n_\r\n*2\r\n:1\r\n$1\r\na\r\n+OK\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, len)) = parse(&buf[at..]).unwrap() {
            got.push(r);
            at += len;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got,
            vec![
                Reply::Bulk(Some((4, 8))),
                Reply::Bulk(None),
                Reply::Int(1),
                Reply::Error((1, 11)),
                Reply::Bulk(None),
                Reply::Other,
                Reply::Status,
            ]
        );
        assert_eq!(
            parse(b"*2\r\n$2\r\nab\r\n:17\r\n").unwrap(),
            Some((Reply::Fenced((8, 10)), 17))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(parse(b"*2\r\n$2\r\nab\r\n").unwrap(), None);
        assert_eq!(parse(b"$4\r\nab").unwrap(), None);
        assert_eq!(parse(b"*2\r\n:1\r\n").unwrap(), None);
        assert!(parse(b"?\r\n").is_err());
    }
}
