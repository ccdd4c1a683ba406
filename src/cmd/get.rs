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

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let key = shared.lock_key(client.db, &argv[1]);
    let shared = shared.clone();
    Ok(Outcome::later(async move {
        match shared.inspect(&key).await {
            Ok(Some((token, _))) => Reply::Bulk(token),
            Ok(None) => Reply::Null,
            Err(noquorum) => noquorum,
        }
    }))
}
