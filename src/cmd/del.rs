//! `DEL key [key ...]`: force-release locks, whoever holds them — what an operator clearing a
//! stuck lock expects (see `LockService::force_release`: a holder who took the key in between is
//! not touched). Returns how many locks were released.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "del",
    arity: -2,
    flags: &["write"],
    key_pos: 1,
    group: "generic",
    summary: "Force-releases the given locks, whoever holds them; returns how many were released",
    complexity: "O(N*K) for N masters and K keys",
    args: &[ArgDoc::many("key", "key", false)],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let (db, locks) = (client.db, client.locks.service().clone());
    Ok(Outcome::later(async move {
        let mut released = 0;
        for done in join_all(argv[1..].iter().map(|k| locks.force_release(db, k))).await {
            released += i64::from(done?);
        }
        Ok(Reply::Integer(released))
    }))
}
