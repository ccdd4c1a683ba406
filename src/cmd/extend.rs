//! `EXTEND key token ttl-ms`: reset a held lock's TTL on the masters. `:1` when a quorum extended
//! it with validity to spare, `:0` otherwise (not held with that token, or too slow).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;

use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_ttl_ms};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "extend",
    arity: 4,
    flags: &["write"],
    key_pos: 1,
    group: "generic",
    summary: "Sets a held lock's TTL anew; 1 when a quorum extended it in time, 0 otherwise",
    complexity: "O(N) where N is the number of masters",
    args: &[
        ArgDoc::new("key", "key"),
        ArgDoc::new("token", "string"),
        ArgDoc::new("ttl-ms", "integer"),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let ttl_ms = parse_ttl_ms(&argv[3], "extend", shared)?;
    let extended = client
        .locks
        .extend(client.db, argv[1].clone(), argv[2].clone(), ttl_ms);
    Ok(Outcome::later(
        extended.map(|extended| Ok(Reply::Integer(i64::from(extended?)))),
    ))
}
