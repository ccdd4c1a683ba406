//! `LOCK key ttl-ms [WAIT timeout-ms] [SESSION] [FENCE] [SHARED | PERMITS n]`: take a lock on
//! a quorum. A token when granted,
//! null when someone else holds it (never an error: benchmarks and pollers treat contention as
//! normal), `NOQUORUM` when the masters could not decide. With `WAIT` a held lock is waited for,
//! first come first served, and taken as soon as it is released or expires (see `waiters`); null
//! when the wait runs out. With `SESSION` the proxy keeps the lock alive while the connection
//! lives and releases it when the connection ends (see `session_locks`); its TTL must be at
//! least `session_min_ttl_ms`, and a connection holds at most `max_session_locks_per_client` of
//! them and has at most `max_waits_per_client` waits under way. With `FENCE` the reply
//! is `[token, fence]`: a number that strictly increases across successive holders of the key,
//! whichever proxy granted them (see `Redlock::lock_fenced`). With `SHARED` it is a read lock:
//! any number of readers at once, none while a writer (a plain `LOCK` of the key) holds it, and
//! no new reader while a writer waits for it. With `PERMITS n` it is one of a semaphore's n
//! permits (1 to `MAX_PERMITS`): at most n holders at once, each with its own token. Neither
//! takes `FENCE`: fences order holders that exclude each other. A key used as another kind (or
//! another count) than the request's is a `WRONGTYPE` error. The lock service does all of it
//! (see `locks`); this parses the options and shapes the reply.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;

use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_int, parse_ttl_ms};
use crate::error::Error;
use crate::locks::{Acquire, Kind, MAX_PERMITS};
use crate::protocol::Reply;

/// Longest `WAIT` a client may ask for: an hour.
const MAX_WAIT_MS: u64 = 3_600_000;

pub const SPEC: Spec = Spec {
    name: "lock",
    arity: -3,
    flags: &["write"],
    key_pos: 1,
    group: "generic",
    summary: "Takes a distributed lock on a quorum of masters; returns its token, or nil when it is held",
    complexity: "O(N) where N is the number of masters",
    args: &[
        ArgDoc::new("key", "key"),
        ArgDoc::new("ttl-ms", "integer"),
        ArgDoc::optional("WAIT timeout-ms", "string"),
        ArgDoc::optional("SESSION", "string"),
        ArgDoc::optional("FENCE", "string"),
        ArgDoc::optional("SHARED", "string"),
        ArgDoc::optional("PERMITS n", "string"),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let ttl_ms = parse_ttl_ms(&argv[2], "lock", shared)?;
    let mut session = false;
    let mut fence = false;
    let mut wait = None;
    let mut kind = Kind::Exclusive;
    let mut opts = argv[3..].iter();
    while let Some(opt) = opts.next() {
        match &opt.to_ascii_uppercase()[..] {
            b"SESSION" if !session => session = true,
            b"FENCE" if !fence => fence = true,
            b"SHARED" if kind == Kind::Exclusive => kind = Kind::Shared,
            b"PERMITS" if kind == Kind::Exclusive => {
                let n = parse_int(opts.next().ok_or(Error::Syntax)?)?;
                let n = u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=MAX_PERMITS).contains(n))
                    .ok_or_else(|| {
                        Error::Request(format!(
                            "invalid PERMITS in 'lock' command: must be between 1 and {MAX_PERMITS}"
                        ))
                    })?;
                kind = Kind::Permits(n);
            }
            b"WAIT" if wait.is_none() => {
                let ms = parse_int(opts.next().ok_or(Error::Syntax)?)?;
                let ms = u64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= MAX_WAIT_MS)
                    .ok_or_else(|| {
                        Error::Request(format!(
                            "invalid WAIT timeout in 'lock' command: must be between 0 and {MAX_WAIT_MS} ms"
                        ))
                    })?;
                wait = Some(Duration::from_millis(ms));
            }
            _ => return Err(Error::Syntax),
        }
    }
    if fence && kind != Kind::Exclusive {
        // A fence orders holders that exclude each other; readers and permits overlap.
        return Err(Error::Request(
            "FENCE does not combine with SHARED or PERMITS in 'lock' command".into(),
        ));
    }
    let session_min = shared.config.redlock.session_min_ttl_ms();
    if session && ttl_ms < session_min {
        // Kept alive every third of its TTL: a short one would cost the masters many
        // requests a second for as long as the connection lives.
        return Err(Error::Request(format!(
            "invalid expire time in 'lock' command: a SESSION lock's ttl-ms must be between \
             {session_min} and {} (session_min_ttl_ms)",
            shared.config.redlock.max_ttl_ms
        )));
    }
    let how = Acquire {
        ttl_ms,
        wait,
        fence,
        session,
        kind,
    };
    let granted = client.locks.lock(client.db, argv[1].clone(), how);
    Ok(Outcome::later(granted.map(|granted| {
        Ok(match granted? {
            Some(grant) => match grant.fence {
                Some(fence) => Reply::Array(vec![
                    Reply::Bulk(grant.token),
                    Reply::Integer(i64::try_from(fence).unwrap_or(i64::MAX)),
                ]),
                None => Reply::Bulk(grant.token),
            },
            None => Reply::Null,
        })
    })))
}
