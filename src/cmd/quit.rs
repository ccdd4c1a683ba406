//! `QUIT`: `+OK`, then the connection closes once earlier replies are out.

use std::sync::Arc;

use bytes::Bytes;

use super::{Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "quit",
    arity: -1,
    flags: &["fast", "no-auth"],
    key_pos: 0,
    group: "connection",
    summary: "Closes the connection",
    complexity: "O(1)",
    args: &[],
    no_auth: true,
    run,
};

fn run(_: Vec<Bytes>, _: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    Ok(Outcome::Close(Reply::ok()))
}
