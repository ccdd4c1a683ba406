//! `PING [message]`: `+PONG`, or the message as a bulk string.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::{Protocol, Reply};

pub const SPEC: Spec = Spec {
    name: "ping",
    arity: -1,
    flags: &["fast"],
    key_pos: 0,
    group: "connection",
    summary: "Returns PONG, or the message given",
    complexity: "O(1)",
    args: &[ArgDoc::optional("message", "string")],
    no_auth: false,
    run,
};

fn run(mut argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    if client.proto == Protocol::Resp2 && !client.subscriptions.is_empty() {
        // As Redis answers PING on a subscribed RESP2 connection.
        let message = argv.get(1).cloned().unwrap_or_default();
        return match argv.len() {
            1 | 2 => Ok(Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(message)]).into()),
            _ => Err(Error::WrongArity("ping")),
        };
    }
    match argv.len() {
        1 => Ok(Reply::Status("PONG".into()).into()),
        2 => Ok(Reply::Bulk(argv.swap_remove(1)).into()),
        _ => Err(Error::WrongArity("ping")),
    }
}
