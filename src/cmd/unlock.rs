//! `UNLOCK key token`: release a lock on every master where it still holds `token`. `:1` when a
//! quorum released it, `:0` when the key is not held with that token.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "unlock",
    arity: 3,
    flags: &["write"],
    key_pos: 1,
    group: "generic",
    summary: "Releases a lock held with the given token; 1 when released, 0 when not held with it",
    complexity: "O(N) where N is the number of masters",
    args: &[ArgDoc::new("key", "key"), ArgDoc::new("token", "string")],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let key = shared.lock_key(client.db, &argv[1]);
    let token = argv[2].clone();
    if client.session_locks.forget(&key, &token) {
        return Err(Error::LockLost(
            String::from_utf8_lossy(&argv[1]).into_owned(),
        ));
    }
    let shared = shared.clone();
    Ok(Outcome::later(async move {
        match shared.release(&key, &token).await {
            Ok(released) => Reply::Integer(i64::from(released)),
            Err(noquorum) => noquorum,
        }
    }))
}
