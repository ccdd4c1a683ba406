//! `DEL key [key ...]`: force-release locks, whoever holds them — what an operator clearing a
//! stuck lock expects. Each key's current token is read from a quorum and released with a
//! compare-and-delete, so a holder who took the key in between is not touched. Returns how many
//! locks were released.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "del",
    arity: -2,
    flags: &["write"],
    key_pos: 1,
    group: "generic",
    summary: "Force-releases the given locks, whoever holds them; returns how many were released",
    complexity: "O(N*K) for N masters and K keys",
    args: &[ArgDoc {
        name: "key",
        kind: "key",
        optional: false,
        multiple: true,
    }],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let keys: Vec<Bytes> = argv[1..]
        .iter()
        .map(|k| shared.lock_key(client.db, k))
        .collect();
    let shared = shared.clone();
    Ok(Outcome::later(async move {
        let one = |key: &Bytes| {
            let shared = &shared;
            let key = key.clone();
            async move {
                match shared.inspect(&key).await? {
                    Some((token, _)) => shared.release(&key, &token).await,
                    None => Ok(false),
                }
            }
        };
        let mut released = 0;
        for r in join_all(keys.iter().map(one)).await {
            match r {
                Ok(done) => released += i64::from(done),
                Err(noquorum) => return noquorum,
            }
        }
        Reply::Integer(released)
    }))
}
