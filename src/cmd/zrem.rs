//! `ZREM key member [member ...]`: releases the semaphore permits the named holders hold on
//! `key` (redis-semaphore's `Semaphore` releases with a plain `ZREM` of its identifier, see
//! `lock_scripts`). Returns how many permits were released; a free key releases nothing, and a
//! key in use as another kind of lock is a `WRONGTYPE` error.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "zrem",
    arity: -3,
    flags: &["write", "fast"],
    key_pos: 1,
    group: "sorted-set",
    summary: "Releases the semaphore permits of the given holders (redis-semaphore's Semaphore \
              release); returns how many were released",
    complexity: "O(N*M) for N masters and M holders",
    args: &[
        ArgDoc::new("key", "key"),
        ArgDoc::many("member", "string", false),
    ],
    no_auth: false,
    run,
};

fn run(mut argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let (db, locks) = (client.db, client.locks.service().clone());
    let holders = argv.split_off(2);
    let key = argv.swap_remove(1);
    Ok(Outcome::later(async move {
        let released = locks.release_named(db, &key, &holders).await?;
        Ok(Reply::Integer(i64::try_from(released).unwrap_or(i64::MAX)))
    }))
}
