//! `HGET key field` and `HEXISTS key field` on a Redisson lock: how Redisson's
//! `getHoldCount()` and `isHeldByCurrentThread()` read the hash its locks are, with the owner
//! (`<uuid>:<threadId>`) as the field. The proxy keeps the hold count in the lock's token (see
//! `redisson`), so these answer from the token a quorum holds: the count, or 1/0. A lock that
//! is not a Redisson lock holds no fields. The proxy stores no other hashes.

use std::sync::Arc;

use bytes::Bytes;

use super::redisson;
use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const HGET: Spec = Spec {
    name: "hget",
    arity: 3,
    flags: &["readonly", "fast"],
    key_pos: 1,
    group: "hash",
    summary: "Redisson's hold count: how many times the owner named as the field holds the lock",
    complexity: "O(N) where N is the number of masters",
    args: &[ArgDoc::new("key", "key"), ArgDoc::new("field", "string")],
    no_auth: false,
    run: |argv, client, shared| holds(argv, client, shared, false),
};

pub const HEXISTS: Spec = Spec {
    name: "hexists",
    summary: "Redisson's isHeldByCurrentThread: 1 when the owner named as the field holds the lock",
    run: |argv, client, shared| holds(argv, client, shared, true),
    ..HGET
};

fn holds(
    argv: Vec<Bytes>,
    client: &mut Client,
    _: &Arc<Shared>,
    exists: bool,
) -> Result<Outcome, Error> {
    let (db, locks) = (client.db, client.locks.service().clone());
    Ok(Outcome::later(async move {
        let holder = locks.inspect(db, &argv[1]).await?;
        let count = holder.and_then(|h| redisson::holds(&h.token, &argv[2]));
        Ok(match (exists, count) {
            (true, count) => Reply::Integer(i64::from(count.is_some())),
            (false, Some(count)) => Reply::bulk(count.to_string()),
            (false, None) => Reply::Null,
        })
    }))
}
