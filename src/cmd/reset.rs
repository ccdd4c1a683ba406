//! `RESET`: back to a fresh connection's state (RESP2, database 0, no name, no session locks,
//! and unauthenticated when a password is configured).

use std::sync::Arc;

use bytes::Bytes;

use super::{Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "reset",
    arity: 1,
    flags: &["fast", "no-auth"],
    key_pos: 0,
    group: "connection",
    summary: "Resets the connection's state",
    complexity: "O(1)",
    args: &[],
    no_auth: true,
    run,
};

fn run(_: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let old = std::mem::replace(client, Client::new(client.id, client.addr, shared));
    // Failed AUTHs outlive a reset: else RESET would give a guesser a fresh allowance.
    client.auth_failures = old.auth_failures;
    // A reset connection holds nothing: its session locks are released before the reply.
    Ok(Outcome::later(async move {
        old.close().await;
        Ok(Reply::Status("RESET".into()))
    }))
}
