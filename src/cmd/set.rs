//! `SET key value NX [PX ms | EX s]`, options in any order: the way single-Redis lock code takes
//! a lock (redis-py's `Lock`, hand-written `SET ... NX PX`). Served as a Redlock acquire with the
//! client's value as the token: `+OK` when a quorum granted it, null when it is held. Without a
//! TTL the lock gets `default_ttl_ms`, since a lock that never expires would outlive a crashed
//! holder. A SET that is not lock-shaped (no NX, or XX, GET, KEEPTTL, EXAT, PXAT) is refused:
//! the proxy stores locks, not values.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_int, ttl_ms_in_range};
use crate::error::Error;
use crate::locks::Acquire;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "set",
    arity: -3,
    flags: &["write"],
    key_pos: 1,
    group: "string",
    summary: "Lock-shaped SET only (SET key token NX [PX ms|EX s]): takes the lock with the given token",
    complexity: "O(N) where N is the number of masters",
    args: &[
        ArgDoc::new("key", "key"),
        ArgDoc::new("token", "string"),
        ArgDoc::new("NX", "string"),
        ArgDoc::optional("PX milliseconds | EX seconds", "string"),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let ttl_ms = parse_options(&argv[3..], shared)?;
    let (db, locks) = (client.db, client.locks.service().clone());
    Ok(Outcome::later(async move {
        let (key, token) = (&argv[1], argv[2].clone());
        let granted = locks.acquire(db, key, token, Acquire::once(ttl_ms)).await?;
        Ok(if granted.is_some() {
            Reply::ok()
        } else {
            Reply::Null
        })
    }))
}

/// The lock TTL a lock-shaped SET asks for.
fn parse_options(opts: &[Bytes], shared: &Shared) -> Result<u64, Error> {
    let mut nx = false;
    let mut ttl_ms = None;
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_uppercase();
        match &opt[..] {
            b"NX" if !nx => nx = true,
            b"PX" | b"EX" if ttl_ms.is_none() => {
                let value = opts.get(i + 1).ok_or(Error::Syntax)?;
                let n = parse_int(value)?;
                let ms = if &opt[..] == b"EX" {
                    // Past i64, certainly past the maximum.
                    n.checked_mul(1000).unwrap_or(i64::MAX)
                } else {
                    n
                };
                ttl_ms = Some(ttl_ms_in_range(ms, "set", shared)?);
                i += 1;
            }
            b"XX" | b"GET" | b"KEEPTTL" | b"EXAT" | b"PXAT" => return Err(not_a_lock()),
            _ => return Err(Error::Syntax),
        }
        i += 1;
    }
    if !nx {
        return Err(not_a_lock());
    }
    Ok(ttl_ms.unwrap_or(shared.config.redlock.default_ttl_ms()))
}

fn not_a_lock() -> Error {
    Error::Request(
        "the proxy serves only lock-shaped SET: SET key token NX [PX milliseconds|EX seconds]"
            .into(),
    )
}
