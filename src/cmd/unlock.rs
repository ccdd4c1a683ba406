//! `UNLOCK key token`: release a lock on every master where it still holds `token`. `:1` when a
//! quorum released it, `:0` when the key is not held with that token.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;

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

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let released = client
        .locks
        .release(client.db, argv[1].clone(), argv[2].clone());
    Ok(Outcome::later(
        released.map(|released| Ok(Reply::Integer(i64::from(released?)))),
    ))
}
