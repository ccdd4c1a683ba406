//! `EXISTS key [key ...]`: how many of the keys a quorum of masters holds as a lock.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "exists",
    arity: -2,
    flags: &["readonly", "fast"],
    key_pos: 1,
    group: "generic",
    summary: "Counts the given locks that a quorum of masters holds",
    complexity: "O(N*K) for N masters and K keys",
    args: &[ArgDoc::many("key", "key", false)],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let (db, locks) = (client.db, client.locks.service().clone());
    Ok(Outcome::later(async move {
        let mut held = 0;
        for holder in join_all(argv[1..].iter().map(|k| locks.inspect(db, k))).await {
            held += i64::from(holder?.is_some());
        }
        Ok(Reply::Integer(held))
    }))
}
