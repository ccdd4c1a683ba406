//! `PTTL key` and `TTL key`: a lock's remaining validity as a quorum sees it, in milliseconds or
//! seconds (rounded as Redis rounds TTL); -2 when no quorum holds it.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const PTTL: Spec = Spec {
    name: "pttl",
    arity: 2,
    flags: &["readonly", "fast"],
    key_pos: 1,
    group: "generic",
    summary: "Returns a lock's remaining validity in milliseconds, or -2 when not held",
    complexity: "O(N) where N is the number of masters",
    args: &[ArgDoc::new("key", "key")],
    no_auth: false,
    run: |argv, client, shared| remaining(argv, client, shared, 1),
};

pub const TTL: Spec = Spec {
    name: "ttl",
    summary: "Returns a lock's remaining validity in seconds, or -2 when not held",
    run: |argv, client, shared| remaining(argv, client, shared, 1000),
    ..PTTL
};

fn remaining(
    argv: Vec<Bytes>,
    client: &mut Client,
    _: &Arc<Shared>,
    unit_ms: u64,
) -> Result<Outcome, Error> {
    let (db, locks) = (client.db, client.locks.service().clone());
    Ok(Outcome::later(async move {
        Ok(Reply::Integer(match locks.inspect(db, &argv[1]).await? {
            Some(holder) => {
                let rounded = (holder.validity_ms + unit_ms / 2) / unit_ms;
                i64::try_from(rounded).unwrap_or(i64::MAX)
            }
            None => -2,
        }))
    }))
}
