//! The clients: each loops lock → critical section → unlock against a random proxy and key,
//! recording every hold for the checker.
//!
//! How a client measures the validity it was promised (conservatively): it notes `sent` just
//! before writing `LOCK` and `received` just after reading the token. The proxy's clock for the
//! lock starts after `sent`, and its promise is `ttl − elapsed − drift` with drift =
//! ttl/100 + 2 ms (the documented contract), so the promise ends no earlier than
//! `sent + ttl − drift`. The client records `start = received` and
//! `promised = ttl − drift − ⌈received − sent⌉ ms`, whose end `start + promised` is at or
//! before that instant: a counted hold never outlives what the proxy promised. Asking `LOCKTTL`
//! would cost another round trip that itself must be subtracted, and can fail under faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use redlock_proxy::protocol::client::Frame;

use crate::checker::{Hold, Kind};
use crate::clock::now_us;
use crate::conn::Conn;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A proxy answers within its per-master deadline; far longer means it is gone or stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The drift allowance of the proxy's documented contract: 1% of the TTL plus 2 ms.
pub fn drift_ms(ttl_ms: u64) -> u64 {
    ttl_ms / 100 + 2
}

/// What every client adds to.
#[derive(Debug, Default)]
pub struct Counters {
    /// `LOCK` requests sent.
    pub attempts: AtomicU64,
    /// Tokens received.
    pub grants: AtomicU64,
    /// Null replies: held by someone else.
    pub refused: AtomicU64,
    /// `NOQUORUM` error replies.
    pub noquorum: AtomicU64,
    /// Other error replies, or replies of an unexpected shape.
    pub errors: AtomicU64,
    /// Connections refused, closed, or silent past the timeout.
    pub conn_errors: AtomicU64,
    /// `UNLOCK` answered `:1`.
    pub unlocked: AtomicU64,
    /// `UNLOCK` answered `:0`: the lock was already gone (expired, or lost).
    pub unlock_missed: AtomicU64,
    /// `UNLOCK` could not be done (no proxy, NOQUORUM): the lock expires by itself.
    pub unlock_failed: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// State the clients and the fault injector share.
#[derive(Debug)]
pub struct Shared {
    pub counters: Counters,
    pub proxies: Vec<SocketAddr>,
    pub keys: Vec<String>,
    pub max_ttl_ms: u64,
    /// Lock with `FENCE` and record each grant's fence.
    pub fence: bool,
    /// What the clients take.
    pub mode: Mode,
    /// The semaphores' permits in [`Mode::Permits`].
    pub permits: u32,
    /// Per key, the lock a client holds now, if any: the fault injector aims restarts and
    /// failovers at moments when a held lock has a long life left. A released lock is no
    /// target: its key is gone from the masters.
    pub held: Vec<Mutex<Option<Held>>>,
    /// Every hold so far, kept here rather than in the tasks so a stuck client loses nothing.
    pub holds: Mutex<Vec<Hold>>,
    /// No new lock attempts after this instant (µs).
    pub deadline_us: u64,
    /// Set on Ctrl-C.
    pub stop: AtomicBool,
}

impl Shared {
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || now_us() >= self.deadline_us
    }

    /// The longest promise left of a lock held now and granted at or after `since_us`, in ms.
    pub fn longest_promise_left_ms(&self, since_us: u64) -> u64 {
        let now = now_us();
        (0..self.held.len())
            .filter_map(|k| *self.held_of(k))
            .filter(|h| h.granted_us >= since_us)
            .map(|h| h.until_us.saturating_sub(now) / 1_000)
            .max()
            .unwrap_or(0)
    }

    /// Key `k`'s entry in `held`.
    fn held_of(&self, k: usize) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held[k].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Key `k`'s lock granted at `granted_us` is no longer held, unless a later grant (only
    /// possible in a violation) has replaced it.
    fn release_held(&self, k: usize, granted_us: u64) {
        let mut held = self.held_of(k);
        if held.is_some_and(|h| h.granted_us == granted_us) {
            *held = None;
        }
    }
}

/// What the clients take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Plain `LOCK`: mutexes.
    Mutex,
    /// `LOCK ... PERMITS n`: permits of counting semaphores.
    Permits,
    /// `LOCK ... SHARED` (readers) and plain `LOCK` (writers) on the same keys.
    Rw,
}

impl Mode {
    /// As `--mode` and the JSON line name it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mutex => "mutex",
            Mode::Permits => "permits",
            Mode::Rw => "rw",
        }
    }

    /// As the run's first line names it.
    pub fn describe(self, permits: u32) -> String {
        match self {
            Mode::Mutex => "mutex".into(),
            Mode::Permits => format!("permits ({permits} per key)"),
            Mode::Rw => "rw (3 readers to 1 writer)".into(),
        }
    }

    /// What the next lock is: readers outnumber writers three to one in `rw`.
    fn pick(self, rng: &mut StdRng, permits: u32) -> Kind {
        match self {
            Mode::Mutex => Kind::Exclusive,
            Mode::Permits => Kind::Permits(permits),
            Mode::Rw if rng.random_range(0..4) == 0 => Kind::Exclusive,
            Mode::Rw => Kind::Shared,
        }
    }
}

/// A lock held now.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    /// When the grant arrived (µs).
    pub granted_us: u64,
    /// When its promise ends (µs).
    pub until_us: u64,
}

/// One client's loop. Bounded by the run's deadline, and by an iteration cap as a backstop
/// (every iteration sleeps at least a millisecond).
pub async fn run(id: u32, seed: u64, shared: Arc<Shared>) {
    let mut rng = StdRng::seed_from_u64(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut conns: Vec<Option<Conn>> = shared.proxies.iter().map(|_| None).collect();
    let max_iterations = shared.deadline_us / 1_000 + 1_000;
    for _ in 0..max_iterations {
        if shared.should_stop() {
            break;
        }
        let k = rng.random_range(0..shared.keys.len());
        let p = rng.random_range(0..shared.proxies.len());
        let key = shared.keys[k].as_bytes();
        let (plan, ttl) = pick_plan(&mut rng, shared.max_ttl_ms);
        let ttl_arg = ttl.to_string();
        let kind = shared.mode.pick(&mut rng, shared.permits);
        let permits_arg = shared.permits.to_string();
        let mut lock: Vec<&[u8]> = vec![b"LOCK", key, ttl_arg.as_bytes()];
        if shared.fence {
            lock.push(b"FENCE");
        }
        match kind {
            Kind::Exclusive => {}
            Kind::Shared => lock.push(b"SHARED"),
            Kind::Permits(_) => lock.extend([b"PERMITS".as_slice(), permits_arg.as_bytes()]),
        }
        Counters::bump(&shared.counters.attempts);
        let sent = now_us();
        let reply = call(&mut conns, &shared.proxies, p, &lock).await;
        let received = now_us();
        let backoff_ms = match reply.map(|r| grant_of(r, shared.fence)) {
            Ok(Ok((token, fence))) => {
                Counters::bump(&shared.counters.grants);
                let rtt_ms = (received - sent).div_ceil(1_000);
                let promised = ttl.saturating_sub(drift_ms(ttl)).saturating_sub(rtt_ms);
                *shared.held_of(k) = Some(Held {
                    granted_us: received,
                    until_us: received + promised * 1_000,
                });
                tokio::time::sleep(Duration::from_millis(section_ms(&mut rng, plan, promised)))
                    .await;
                let end = now_us();
                shared.release_held(k, received);
                let hold = Hold {
                    key: shared.keys[k].clone(),
                    client: id,
                    proxy: p as u32,
                    token: String::from_utf8_lossy(&token).into_owned(),
                    sent_us: sent,
                    start_us: received,
                    promised_validity_ms: promised,
                    end_us: end,
                    fence,
                    kind,
                };
                shared
                    .holds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(hold);
                unlock(&mut conns, &shared, p, key, &token).await;
                0
            }
            Ok(Err(Frame::Null)) => {
                Counters::bump(&shared.counters.refused);
                rng.random_range(2..=30)
            }
            Ok(Err(Frame::Error(e))) if e.starts_with("NOQUORUM") => {
                Counters::bump(&shared.counters.noquorum);
                rng.random_range(20..=100)
            }
            Ok(_) => {
                Counters::bump(&shared.counters.errors);
                rng.random_range(20..=100)
            }
            Err(_) => {
                Counters::bump(&shared.counters.conn_errors);
                rng.random_range(50..=200)
            }
        };
        if backoff_ms > 0 {
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        }
    }
}

/// The token and fence of a grant, or the reply that was not one. With `fenced` only
/// `[token, fence]` is a grant: a bare token there would be a fence the proxy failed to give.
fn grant_of(reply: Frame, fenced: bool) -> Result<(Bytes, Option<u64>), Frame> {
    match reply {
        Frame::BulkString(token) if !fenced => Ok((token, None)),
        Frame::Array(items) if fenced => match <[Frame; 2]>::try_from(items) {
            Ok([Frame::BulkString(token), Frame::Integer(fence)]) if fence >= 0 => {
                Ok((token, Some(fence as u64)))
            }
            Ok(pair) => Err(Frame::Array(pair.into())),
            Err(items) => Err(Frame::Array(items)),
        },
        other => Err(other),
    }
}

/// How a client means to use its next lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// A few ms: most locks, so the keys change hands often.
    Brief,
    /// Up to half the validity.
    Medium,
    /// A TTL near the maximum, held for most of its validity: such locks are likely to be live
    /// when a master restarts, which is when the restart hazard bites.
    Long,
    /// Past the validity, to exercise the not-counted path.
    Overrun,
}

/// The plan and the TTL to ask for. Brief and medium locks ask for a sixth to a half of the
/// maximum TTL.
fn pick_plan(rng: &mut StdRng, max_ttl_ms: u64) -> (Plan, u64) {
    let roll: f64 = rng.random();
    let plan = if roll < 0.05 {
        Plan::Long
    } else if roll < 0.08 {
        Plan::Overrun
    } else if roll < 0.18 {
        Plan::Medium
    } else {
        Plan::Brief
    };
    let (lo, hi) = match plan {
        Plan::Long => (max_ttl_ms * 2 / 3, max_ttl_ms),
        _ => (max_ttl_ms / 6, max_ttl_ms / 2),
    };
    (plan, rng.random_range(lo.max(4)..=hi.max(4)))
}

/// How long to hold a lock promised for `promised` ms, in ms.
fn section_ms(rng: &mut StdRng, plan: Plan, promised: u64) -> u64 {
    // Room for timer and scheduling lateness on a busy machine.
    let margin = (promised / 20).max(15);
    match plan {
        Plan::Overrun => promised + rng.random_range(5..=50),
        Plan::Long if promised > 2 * margin => rng.random_range(promised / 2..=promised - margin),
        Plan::Medium if promised > 2 * margin => rng.random_range(1..=promised / 2),
        _ => rng.random_range(1..=(promised / 2).clamp(1, 20)),
    }
}

/// Releases through the proxy that granted; if it is gone, through one other.
async fn unlock(conns: &mut [Option<Conn>], shared: &Shared, p: usize, key: &[u8], token: &[u8]) {
    let n = shared.proxies.len();
    for q in [p, (p + 1) % n].into_iter().take(n.min(2)) {
        match call(conns, &shared.proxies, q, &[b"UNLOCK", key, token]).await {
            Ok(Frame::Integer(1)) => return Counters::bump(&shared.counters.unlocked),
            Ok(Frame::Integer(0)) => return Counters::bump(&shared.counters.unlock_missed),
            Ok(_) => return Counters::bump(&shared.counters.unlock_failed),
            Err(_) => continue,
        }
    }
    Counters::bump(&shared.counters.unlock_failed);
}

/// One request to proxy `p`, connecting first if needed; a failed connection is dropped.
async fn call(
    conns: &mut [Option<Conn>],
    proxies: &[SocketAddr],
    p: usize,
    args: &[&[u8]],
) -> std::io::Result<Frame> {
    let slot = &mut conns[p];
    let conn = match slot {
        Some(c) => c,
        None => slot.insert(Conn::connect(proxies[p], CONNECT_TIMEOUT).await?),
    };
    let reply = conn.call(args, REQUEST_TIMEOUT).await;
    if reply.is_err() {
        *slot = None;
    }
    reply
}

/// Waits (bounded by `within`) until `proxy` grants a lock: the proxy is up and enough masters
/// vote. Right after start the masters are young, so a proxy with restart quarantine refuses to
/// count them until they have been up for the maximum TTL.
pub async fn wait_until_granting(
    proxy: SocketAddr,
    probe_key: &str,
    within: Duration,
    stop: &AtomicBool,
) -> Result<Duration, String> {
    let started = tokio::time::Instant::now();
    let mut last = String::from("no attempt");
    while started.elapsed() < within && !stop.load(Ordering::Relaxed) {
        match Conn::connect(proxy, CONNECT_TIMEOUT).await {
            Ok(mut c) => {
                let lock = [b"LOCK".as_slice(), probe_key.as_bytes(), b"100"];
                match c.call(&lock, REQUEST_TIMEOUT).await {
                    Ok(Frame::BulkString(token)) => {
                        let _ = c
                            .call(&[b"UNLOCK", probe_key.as_bytes(), &token], REQUEST_TIMEOUT)
                            .await;
                        return Ok(started.elapsed());
                    }
                    Ok(other) => last = format!("{other:?}"),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "proxy {proxy} granted no lock within {within:?}; last answer: {last}"
    ))
}
