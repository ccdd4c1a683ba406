//! `LOCK key ttl-ms [SESSION]`: take a lock on a quorum. A token when granted, null when someone
//! else holds it (never an error: benchmarks and pollers treat contention as normal), `NOQUORUM`
//! when the masters could not decide. With `SESSION` the proxy keeps the lock alive while the
//! connection lives and releases it when the connection ends (see `session_locks`).

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_ttl_ms};
use crate::error::Error;
use crate::protocol::Reply;
use crate::redlock::token;

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
        ArgDoc::optional("SESSION", "string"),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let ttl_ms = parse_ttl_ms(&argv[2], "lock", shared)?;
    let mut session = false;
    for opt in &argv[3..] {
        match &opt.to_ascii_uppercase()[..] {
            b"SESSION" if !session => session = true,
            _ => return Err(Error::Syntax),
        }
    }
    let key = shared.lock_key(client.db, &argv[1]);
    let shared = shared.clone();
    let keeper = session.then(|| client.session_locks.clone());
    Ok(Outcome::later(async move {
        let token = token::generate();
        match shared.acquire(&key, token.clone(), ttl_ms).await {
            Ok(true) => {
                if let Some(keeper) = keeper {
                    keeper.keep(&shared, key, token.clone(), ttl_ms);
                }
                Reply::Bulk(token)
            }
            Ok(false) => Reply::Null,
            Err(noquorum) => noquorum,
        }
    }))
}
