//! `--mode wait-latency`: how fast a waiter wakes. One holder and one waiter, sequential
//! rounds, every step bounded.

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redlock_proxy::locks::keys::Schema;
use redlock_proxy::protocol::client::Frame;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep};

use crate::args::Args;
use crate::conn::{Conn, RECONNECT_PAUSE, resolve};
use crate::report::{decimals, json};

/// Longest any single request of a round may take, besides the waiter's `WAIT`.
const STEP: Duration = Duration::from_secs(3);

/// What one set of rounds measured.
#[derive(Debug, Default)]
struct Tally {
    /// µs from the release (UNLOCK reply, or the last master's DEL reply) to the token.
    wake_us: Vec<f64>,
    /// Tokens that arrived before the release's reply did (counted as 0 µs above).
    early: u32,
    failed: u32,
    first_error: Option<String>,
}

/// A set of rounds in the JSON line.
#[derive(Debug, Serialize)]
struct TallyLine {
    rounds: usize,
    p50_ms: Box<RawValue>,
    p99_ms: Box<RawValue>,
    max_ms: Box<RawValue>,
    early: u32,
    failed: u32,
}

/// The JSON line; field order is the order of the keys.
#[derive(Debug, Serialize)]
struct Line<'a> {
    tool: &'static str,
    mode: &'static str,
    addr: &'a str,
    addr_b: String,
    ttl_ms: u64,
    hold_ms: u64,
    wait_ms: u64,
    released: TallyLine,
    #[serde(skip_serializing_if = "Option::is_none")]
    unannounced: Option<TallyLine>,
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

    /// Prints the human-readable line as `name`; returns the JSON form.
    fn print(&self, name: &str) -> TallyLine {
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
        TallyLine {
            rounds: self.wake_us.len(),
            p50_ms: decimals(self.quantile(0.5) / 1e3, 3),
            p99_ms: decimals(self.quantile(0.99) / 1e3, 3),
            max_ms: decimals(max / 1e3, 3),
            early: self.early,
            failed: self.failed,
        }
    }
}

pub async fn run(addr: SocketAddr, args: &Args) -> ExitCode {
    let Some(addr_b) = &args.addr_b else {
        eprintln!("lockbench: --mode wait-latency needs --addr-b");
        return ExitCode::FAILURE;
    };
    let mut others = Vec::new();
    for a in std::iter::once(addr_b).chain(&args.masters) {
        match resolve(a).await {
            Some(resolved) => others.push(resolved),
            None => {
                eprintln!("lockbench: cannot resolve {a}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (addr_b, masters) = (others[0], &others[1..]);
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
            masters,
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
    let released = announced.print("released");
    let unannounced = (!masters.is_empty()).then(|| fallback.print("unannounced"));
    let line = Line {
        tool: "lockbench",
        mode: "wait-latency",
        addr: &args.addr,
        addr_b: addr_b.to_string(),
        ttl_ms: args.ttl_ms,
        hold_ms: args.hold_ms,
        wait_ms: args.wait_ms,
        released,
        unannounced,
    };
    println!("{}", json(&line));
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
    let password = args.password.as_deref();
    let mut tally = Tally::default();
    let mut links: Option<(Conn, Conn)> = None;
    for round in 0..count {
        if links.is_none() {
            match (
                Conn::open(addr, password).await,
                Conn::open(addr_b, password).await,
            ) {
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

fn token_of(reply: Frame) -> Option<Bytes> {
    match reply {
        Frame::BulkString(token) => Some(token),
        _ => None,
    }
}

/// One round: µs from the release to the waiter's token, and whether the token came first.
async fn one_round(
    holder: &mut Conn,
    waiter: &mut Conn,
    masters: &[SocketAddr],
    key: &str,
    args: &Args,
) -> io::Result<(f64, bool)> {
    let ttl = args.ttl_ms.to_string();
    let wait = args.wait_ms.to_string();
    let held = holder
        .call(&[b"LOCK", key.as_bytes(), ttl.as_bytes()], STEP)
        .await?;
    let token = token_of(held).ok_or_else(|| io::Error::other("the holder got no token"))?;
    waiter.push(&[
        b"LOCK",
        key.as_bytes(),
        ttl.as_bytes(),
        b"WAIT",
        wait.as_bytes(),
    ]);
    waiter.flush().await?;
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
            match holder
                .call(&[b"UNLOCK", key.as_bytes(), &token], STEP)
                .await?
            {
                Frame::Integer(1) => {}
                other => return Err(io::Error::other(format!("UNLOCK: {other:?}"))),
            }
        } else {
            let master_key = Schema::new("redlock:").key(0, key.as_bytes());
            for m in masters {
                let mut link = Conn::open(*m, args.password.as_deref()).await?;
                link.call(&[b"DEL", &master_key], STEP).await?;
            }
        }
        Ok(Instant::now())
    };
    let ((reply, woke), released) = tokio::join!(waited, release);
    let released = released?;
    let granted = reply?;
    let token_b = token_of(granted).ok_or_else(|| io::Error::other("the waiter got no token"))?;
    // Leave nothing behind for the next round.
    waiter
        .call(&[b"UNLOCK", key.as_bytes(), &token_b], STEP)
        .await?;
    let early = woke < released;
    Ok((
        woke.saturating_duration_since(released).as_secs_f64() * 1e6,
        early,
    ))
}
