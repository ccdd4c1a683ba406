//! `LOCKTTL key`: the lock's remaining validity in ms, as a quorum of masters sees it (the time
//! for which a quorum still holds the same token, less drift); `:-2` when no quorum holds it.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "lockttl",
    arity: 2,
    flags: &["readonly"],
    key_pos: 1,
    group: "generic",
    summary: "Returns a lock's remaining validity in milliseconds as a quorum sees it, or -2 when not held",
    complexity: "O(N) where N is the number of masters",
    args: &[ArgDoc::new("key", "key")],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let key = shared.lock_key(client.db, &argv[1]);
    if client.session_locks.is_lost(&key) {
        return Err(Error::LockLost(
            String::from_utf8_lossy(&argv[1]).into_owned(),
        ));
    }
    let shared = shared.clone();
    Ok(Outcome::later(async move {
        match shared.inspect(&key).await {
            Ok(Some((_, validity_ms))) => {
                Reply::Integer(i64::try_from(validity_ms).unwrap_or(i64::MAX))
            }
            Ok(None) => Reply::Integer(-2),
            Err(noquorum) => noquorum,
        }
    }))
}
