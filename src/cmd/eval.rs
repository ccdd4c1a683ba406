//! `EVALSHA sha numkeys key... arg...` and `EVAL script numkeys key... arg...`: the known lock
//! scripts of client libraries (see `lock_scripts`), answered as quorum operations. An unknown
//! SHA1 gets `NOSCRIPT`, so libraries fall back to sending the body; an unknown body is refused.

use std::sync::Arc;

use bytes::Bytes;

use super::lock_scripts::{self, Known};
use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_int};
use crate::error::Error;

const ARGS: &[ArgDoc] = &[
    ArgDoc::new("script", "string"),
    ArgDoc::new("numkeys", "integer"),
    ArgDoc::many("key", "key", true),
    ArgDoc::many("arg", "string", true),
];

pub const EVAL: Spec = Spec {
    name: "eval",
    arity: -3,
    flags: &["noscript"],
    key_pos: 3,
    group: "scripting",
    summary: "Runs a known client library's lock script (by its exact body) as a quorum operation",
    complexity: "O(N*K) for N masters and K keys",
    args: ARGS,
    no_auth: false,
    run: |argv, client, shared| {
        let script = lock_scripts::by_sha(lock_scripts::sha1_hex(&argv[1]).as_bytes())
            .ok_or_else(|| lock_scripts::unknown_body(&argv[1]))?;
        call(script, "eval", argv, client, shared)
    },
};

pub const EVALSHA: Spec = Spec {
    name: "evalsha",
    summary: "Runs a known client library's lock script (by SHA1) as a quorum operation",
    run: |argv, client, shared| {
        let script = lock_scripts::by_sha(&argv[1]).ok_or(Error::NoScript)?;
        call(script, "evalsha", argv, client, shared)
    },
    ..EVAL
};

fn call(
    script: &'static Known,
    cmd: &'static str,
    mut argv: Vec<Bytes>,
    client: &mut Client,
    shared: &Arc<Shared>,
) -> Result<Outcome, Error> {
    let numkeys = parse_int(&argv[2])?;
    let numkeys = usize::try_from(numkeys)
        .map_err(|_| Error::Request("Number of keys can't be negative".into()))?;
    if numkeys > argv.len() - 3 {
        return Err(Error::Request(
            "Number of keys can't be greater than number of args".into(),
        ));
    }
    let args = argv.split_off(3 + numkeys);
    let keys = argv.split_off(3);
    lock_scripts::run(script, cmd, client, keys, args, shared)
}
