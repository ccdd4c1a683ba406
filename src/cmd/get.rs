//! `GET key`: the token a quorum of masters agree on, or null — how redis-py's `locked()` and
//! `owned()` look at a lock.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "get",
    arity: 2,
    flags: &["readonly", "fast"],
    key_pos: 1,
    group: "string",
    summary: "Returns the token a quorum of masters holds for a lock, or nil",
    complexity: "O(N) where N is the number of masters",
    args: &[ArgDoc::new("key", "key")],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    if argv[1].starts_with(b"redisson_lock_token:") {
        // The proxy's fences are its own counters, read only with a grant.
        return Err(Error::Request(
            "Redisson FencedLock's getToken() is not supported by the proxy: use the token \
             lockAndGetToken() or tryLockAndGetToken() returns"
                .into(),
        ));
    }
    let (db, locks) = (client.db, client.locks.service().clone());
    Ok(Outcome::later(async move {
        let holder = locks.inspect(db, &argv[1]).await?;
        Ok(holder.map_or(Reply::Null, |h| Reply::Bulk(h.token)))
    }))
}
