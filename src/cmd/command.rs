//! `COMMAND`, `COMMAND COUNT|LIST|INFO|DOCS`: the command table described in Redis 7's formats,
//! so redis-cli shows argument hints and `help LOCK`.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, COMMANDS, Client, Outcome, Shared, Spec, lookup};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "command",
    arity: -1,
    flags: &["loading", "stale"],
    key_pos: 0,
    group: "server",
    summary: "Describes the proxy's commands: COUNT, LIST, INFO, DOCS",
    complexity: "O(N) where N is the number of commands",
    args: &[ArgDoc::optional("subcommand", "string")],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, _: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let Some(sub) = argv.get(1) else {
        return Ok(Reply::Array(COMMANDS.iter().map(|s| info(s)).collect()).into());
    };
    let names = &argv[2..];
    let reply = match &sub.to_ascii_lowercase()[..] {
        b"count" if names.is_empty() => Reply::Integer(COMMANDS.len() as i64),
        b"list" if names.is_empty() => {
            Reply::Array(COMMANDS.iter().map(|s| Reply::bulk(s.name)).collect())
        }
        b"info" => Reply::Array(
            selected(names)
                .map(|s| s.map_or(Reply::Null, info))
                .collect(),
        ),
        b"docs" => Reply::Map(
            selected(names)
                .flatten()
                .map(|s| (Reply::bulk(s.name), docs(s)))
                .collect(),
        ),
        b"count" | b"list" => return Err(Error::Syntax),
        _ => return Err(Error::unknown_subcommand("COMMAND", sub)),
    };
    Ok(reply.into())
}

/// The specs named, or all of them when none is named.
fn selected(names: &[Bytes]) -> Box<dyn Iterator<Item = Option<&'static Spec>> + '_> {
    if names.is_empty() {
        Box::new(COMMANDS.iter().map(|s| Some(*s)))
    } else {
        Box::new(names.iter().map(|n| lookup(n)))
    }
}

/// Redis 7's command info: name, arity, flags, first key, last key, step, ACL categories, tips,
/// key specs, subcommands.
fn info(spec: &Spec) -> Reply {
    let key = i64::from(spec.key_pos);
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Set(
            spec.flags
                .iter()
                .map(|f| Reply::Status((*f).into()))
                .collect(),
        ),
        Reply::Integer(key),
        Reply::Integer(key),
        Reply::Integer(i64::from(key != 0)),
        Reply::Set(Vec::new()),
        Reply::Set(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// Redis 7's command docs: a map of summary, since, group, complexity and arguments.
fn docs(spec: &Spec) -> Reply {
    let args = spec
        .args
        .iter()
        .map(|a| {
            let mut fields = vec![
                (Reply::bulk("name"), Reply::bulk(a.name)),
                (Reply::bulk("type"), Reply::bulk(a.kind)),
            ];
            if a.kind == "key" {
                fields.push((Reply::bulk("key_spec_index"), Reply::Integer(0)));
            }
            let flags: Vec<Reply> = [("optional", a.optional), ("multiple", a.multiple)]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(f, _)| Reply::Status(f.into()))
                .collect();
            if !flags.is_empty() {
                fields.push((Reply::bulk("flags"), Reply::Set(flags)));
            }
            Reply::Map(fields)
        })
        .collect();
    Reply::Map(vec![
        (Reply::bulk("summary"), Reply::bulk(spec.summary)),
        (Reply::bulk("since"), Reply::bulk("0.1.0")),
        (Reply::bulk("group"), Reply::bulk(spec.group)),
        (Reply::bulk("complexity"), Reply::bulk(spec.complexity)),
        (Reply::bulk("arguments"), Reply::Array(args)),
    ])
}
