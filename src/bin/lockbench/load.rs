//! The `cycle` and `lock` modes' load: each connection keeps `--pipeline` commands in flight on
//! random keys until the run ends, counting the replies that arrive within the measured window.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use redlock_proxy::protocol::client::Frame;
use tokio::time::{Instant, sleep, timeout_at};

use crate::args::{Args, Mode};
use crate::conn::{Conn, RECONNECT_PAUSE};
use crate::stats::Stats;

/// How long after the end of the run missing replies are still waited for.
const GRACE: Duration = Duration::from_secs(5);
const KEY_PREFIX: &[u8] = b"lockbench:";

/// The measured part of the run: replies that arrive within it are counted.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

/// A different seed per connection and per run, so concurrent runs do not walk the same keys.
pub fn seed(connection: u32) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    now ^ (u64::from(connection) << 32) ^ u64::from(std::process::id())
}

/// One active connection for the whole run, reconnecting (after a pause) when it breaks.
pub async fn drive(addr: SocketAddr, args: Arc<Args>, window: Window, seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let hard_stop = window.until + GRACE;
    while Instant::now() < window.until {
        let mut pipe = match Conn::open(addr, args.password.as_deref()).await {
            Ok(conn) => Pipeline::new(conn),
            Err(e) => {
                stats.io_errors += 1;
                stats.note_error(&format!("connect: {e}"));
                sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        match timeout_at(hard_stop, pipe.load(&args, window, &mut rng, &mut stats)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => {
                stats.io_errors += 1 + pipe.in_flight.len() as u64;
                stats.note_error(&format!("connection: {e}"));
                sleep(RECONNECT_PAUSE).await;
            }
            Err(_) => {
                stats.timeouts += pipe.in_flight.len() as u64;
                stats.note_error("no reply within the grace period after the run");
                break;
            }
        }
    }
    stats
}

/// A request awaiting its reply.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Lock { key: u64, at: Instant },
    Unlock { at: Instant },
}

/// One connection and the requests it has in flight, in order.
#[derive(Debug)]
struct Pipeline {
    conn: Conn,
    in_flight: VecDeque<Sent>,
    /// The last key name built, reused so the hot path does not allocate.
    key: Vec<u8>,
}

impl Pipeline {
    fn new(conn: Conn) -> Self {
        Pipeline {
            conn,
            in_flight: VecDeque::new(),
            key: Vec::with_capacity(KEY_PREFIX.len() + 20),
        }
    }

    /// Keeps `--pipeline` commands in flight until the window ends, then collects the replies
    /// still owed. Each batch of replies read is answered with one write.
    async fn load(
        &mut self,
        args: &Args,
        window: Window,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> io::Result<()> {
        let depth = args.pipeline as usize;
        let now = Instant::now();
        while self.in_flight.len() < depth && now < window.until {
            self.push_lock(rng.random_range(0..args.keys), args, now);
        }
        loop {
            self.conn.flush().await?;
            if self.in_flight.is_empty() {
                return Ok(());
            }
            self.conn.fill().await?;
            let now = Instant::now();
            let measuring = now >= window.from && now < window.until;
            while let Some(reply) = self.conn.next_reply()? {
                let Some(sent) = self.in_flight.pop_front() else {
                    return Err(io::Error::other("reply to no request"));
                };
                let follow_up = self.on_reply(sent, reply, now, measuring, args, stats);
                if !follow_up && now < window.until {
                    self.push_lock(rng.random_range(0..args.keys), args, now);
                }
            }
        }
    }

    /// Accounts one reply. True when it queued a follow-up (the UNLOCK of a granted lock).
    fn on_reply(
        &mut self,
        sent: Sent,
        reply: Frame,
        now: Instant,
        measuring: bool,
        args: &Args,
        stats: &mut Stats,
    ) -> bool {
        let (latency, what, at) = match sent {
            Sent::Lock { at, .. } => (&mut stats.lock_latency, "LOCK", at),
            Sent::Unlock { at } => (&mut stats.unlock_latency, "UNLOCK", at),
        };
        if measuring {
            latency.record(now - at);
        }
        match (sent, reply) {
            (_, Frame::Error(text)) => {
                stats.error_replies += u64::from(measuring);
                stats.note_error(&text);
            }
            (Sent::Lock { key, .. }, reply) => match grant_token(reply, args.fence) {
                Ok(token) => {
                    stats.granted += u64::from(measuring);
                    if args.mode == Mode::Cycle {
                        // Always release what was granted, even after the window: no lock
                        // outlives the run.
                        self.push_unlock(key, &token, now);
                        return true;
                    }
                }
                Err(Frame::Null) => stats.null += u64::from(measuring),
                Err(_) => stats.unexpected(measuring, what),
            },
            (Sent::Unlock { .. }, Frame::Integer(n)) if measuring => match n {
                1 => stats.cycles += 1,
                0 => stats.unlock_zero += 1,
                _ => {}
            },
            (Sent::Unlock { .. }, Frame::Integer(_)) => {}
            (Sent::Unlock { .. }, _) => stats.unexpected(measuring, what),
        }
        false
    }

    fn push_lock(&mut self, key: u64, args: &Args, now: Instant) {
        let mut ttl = itoa::Buffer::new();
        let ttl = ttl.format(args.ttl_ms).as_bytes();
        let name = key_name(&mut self.key, key);
        let mut n = itoa::Buffer::new();
        match args.permits {
            Some(permits) => {
                let n = n.format(permits).as_bytes();
                self.conn.push(&[b"LOCK", name, ttl, b"PERMITS", n]);
            }
            None if args.fence => self.conn.push(&[b"LOCK", name, ttl, b"FENCE"]),
            None => self.conn.push(&[b"LOCK", name, ttl]),
        }
        self.in_flight.push_back(Sent::Lock { key, at: now });
    }

    fn push_unlock(&mut self, key: u64, token: &[u8], now: Instant) {
        let name = key_name(&mut self.key, key);
        self.conn.push(&[b"UNLOCK", name, token]);
        self.in_flight.push_back(Sent::Unlock { at: now });
    }
}

/// `lockbench:<n>`, built in `buf`.
fn key_name(buf: &mut Vec<u8>, n: u64) -> &[u8] {
    buf.clear();
    buf.extend_from_slice(KEY_PREFIX);
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    buf
}

/// The token of a granted `LOCK`: a bulk string, or with `--fence` the first of
/// `[token, fence]`. Any other reply is handed back.
fn grant_token(reply: Frame, fence: bool) -> Result<Bytes, Frame> {
    match reply {
        Frame::BulkString(token) if !fence => Ok(token),
        Frame::Array(items) if fence => match <[Frame; 2]>::try_from(items) {
            Ok([Frame::BulkString(token), Frame::Integer(_)]) => Ok(token),
            Ok(pair) => Err(Frame::Array(pair.into())),
            Err(items) => Err(Frame::Array(items)),
        },
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_tokens_of_the_expected_shape() {
        let token = || Frame::BulkString(Bytes::from("abcd"));
        let fenced = || Frame::Array(vec![token(), Frame::Integer(17)]);
        assert_eq!(grant_token(token(), false), Ok(Bytes::from("abcd")));
        assert_eq!(grant_token(fenced(), true), Ok(Bytes::from("abcd")));
        assert_eq!(grant_token(token(), true), Err(token()));
        assert_eq!(grant_token(fenced(), false), Err(fenced()));
        assert_eq!(grant_token(Frame::Null, false), Err(Frame::Null));
        let backwards = Frame::Array(vec![Frame::Integer(17), token()]);
        assert_eq!(grant_token(backwards.clone(), true), Err(backwards));
        let three = Frame::Array(vec![token(), Frame::Integer(1), Frame::Integer(2)]);
        assert_eq!(grant_token(three.clone(), true), Err(three));
    }

    #[test]
    fn key_names_reuse_their_buffer() {
        let mut buf = Vec::new();
        assert_eq!(key_name(&mut buf, 42), b"lockbench:42");
        assert_eq!(key_name(&mut buf, 7), b"lockbench:7");
    }
}
