//! `ECHO message`: the message back (redis-cli `--pipe` waits for its own ECHO).

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "echo",
    arity: 2,
    flags: &["fast"],
    key_pos: 0,
    group: "connection",
    summary: "Returns the message given",
    complexity: "O(1)",
    args: &[ArgDoc::new("message", "string")],
    no_auth: false,
    run,
};

fn run(mut argv: Vec<Bytes>, _: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    Ok(Reply::Bulk(argv.swap_remove(1)).into())
}
