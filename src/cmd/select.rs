//! `SELECT db`: picks a database. Locks in different databases are distinct, as keys are in
//! Redis; the masters keep them apart by key prefix.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_int};
use crate::error::Error;
use crate::protocol::Reply;

/// Databases, as a default Redis has them.
pub const DATABASES: u32 = 16;

pub const SPEC: Spec = Spec {
    name: "select",
    arity: 2,
    flags: &["fast"],
    key_pos: 0,
    group: "connection",
    summary: "Selects the database whose locks the connection uses",
    complexity: "O(1)",
    args: &[ArgDoc::new("index", "integer")],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let db = parse_int(&argv[1])?;
    client.db = u32::try_from(db)
        .ok()
        .filter(|db| *db < DATABASES)
        .ok_or_else(|| Error::Request("DB index is out of range".into()))?;
    Ok(Reply::ok().into())
}
