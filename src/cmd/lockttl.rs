//! `LOCKTTL key [token]`: the lock's remaining validity in ms, as a quorum of masters sees it
//! (the time for which a quorum still holds the same token, less drift); `:-2` when no quorum
//! holds it. With a token, that holder's validity: a mutex's, a reader's (`SHARED`) or a
//! permit's (`PERMITS`), whose keys have many holders and so no one token without it.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "lockttl",
    arity: -2,
    flags: &["readonly"],
    key_pos: 1,
    group: "generic",
    summary: "Returns a lock's remaining validity in milliseconds as a quorum sees it, or -2 when not held",
    complexity: "O(N) where N is the number of masters",
    args: &[
        ArgDoc::new("key", "key"),
        ArgDoc::optional("token", "string"),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    match &argv[..] {
        [_, _] => {}
        [_, key, token] => {
            let left = client
                .locks
                .inspect_token(client.db, key.clone(), token.clone());
            return Ok(Outcome::later(left.map(|left| {
                Ok(Reply::Integer(
                    left?.map_or(-2, |ms| i64::try_from(ms).unwrap_or(i64::MAX)),
                ))
            })));
        }
        _ => return Err(Error::WrongArity("lockttl")),
    }
    let holder = client.locks.inspect(client.db, argv[1].clone());
    Ok(Outcome::later(holder.map(|holder| {
        Ok(Reply::Integer(match holder? {
            Some(holder) => i64::try_from(holder.validity_ms).unwrap_or(i64::MAX),
            None => -2,
        }))
    })))
}
