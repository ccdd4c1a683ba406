//! `SCRIPT LOAD|EXISTS|FLUSH`: what redis-py and the Rust crate do after a `NOSCRIPT`. A known
//! lock script loads to its SHA1; anything else is refused, since the proxy runs no Lua.

use std::sync::Arc;

use bytes::Bytes;

use super::lock_scripts;
use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "script",
    arity: -2,
    flags: &["noscript"],
    key_pos: 0,
    group: "scripting",
    summary: "SCRIPT LOAD / EXISTS for the known lock scripts; FLUSH is accepted",
    complexity: "O(N) where N is the number of scripts named",
    args: &[
        ArgDoc::new("subcommand", "string"),
        ArgDoc::many("arg", "string", true),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, _: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let reply = match &argv[1].to_ascii_lowercase()[..] {
        b"load" => {
            let [_, _, body] = &argv[..] else {
                return Err(Error::WrongArity("script|load"));
            };
            let sha = lock_scripts::sha1_hex(body);
            if lock_scripts::by_sha(sha.as_bytes()).is_none() {
                return Err(lock_scripts::unknown_body(body));
            }
            Reply::bulk(sha)
        }
        b"exists" if argv.len() > 2 => Reply::Array(
            argv[2..]
                .iter()
                .map(|sha| Reply::Integer(i64::from(lock_scripts::by_sha(sha).is_some())))
                .collect(),
        ),
        b"exists" => return Err(Error::WrongArity("script|exists")),
        // The known scripts are built in: there is nothing to flush.
        b"flush" => Reply::ok(),
        _ => return Err(Error::unknown_subcommand("SCRIPT", &argv[1])),
    };
    Ok(reply.into())
}
