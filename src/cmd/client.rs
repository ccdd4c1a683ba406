//! `CLIENT SETNAME|GETNAME|ID|SETINFO|INFO|HELP`: the connection-level subcommands clients send
//! on connect. Others (e.g. `MAINT_NOTIFICATIONS`) get Redis's unknown-subcommand error, which
//! the clients that send them ignore.

use std::sync::Arc;

use bytes::Bytes;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "client",
    arity: -2,
    flags: &["fast"],
    key_pos: 0,
    group: "connection",
    summary: "Connection commands: SETNAME, GETNAME, ID, SETINFO, INFO, HELP",
    complexity: "O(1)",
    args: &[
        ArgDoc::new("subcommand", "string"),
        ArgDoc::many("arg", "string", true),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, _: &Arc<Shared>) -> Result<Outcome, Error> {
    let sub = argv[1].to_ascii_lowercase();
    let arity = |n: usize, name: &'static str| {
        if argv.len() == n {
            Ok(())
        } else {
            Err(Error::WrongArity(name))
        }
    };
    let reply = match &sub[..] {
        b"setname" => {
            arity(3, "client|setname")?;
            validate_name(&argv[2])?;
            client.name = (!argv[2].is_empty()).then(|| argv[2].clone());
            Reply::ok()
        }
        b"getname" => {
            arity(2, "client|getname")?;
            client.name.clone().map_or(Reply::Null, Reply::Bulk)
        }
        b"id" => {
            arity(2, "client|id")?;
            Reply::Integer(i64::try_from(client.id).unwrap_or(i64::MAX))
        }
        b"setinfo" => {
            arity(4, "client|setinfo")?;
            let value = &argv[3];
            let attr = argv[2].to_ascii_uppercase();
            let label = match &attr[..] {
                b"LIB-NAME" => "LIB-NAME",
                b"LIB-VER" => "LIB-VER",
                _ => {
                    return Err(Error::Request(format!(
                        "Unrecognized option '{}'",
                        String::from_utf8_lossy(&argv[2])
                    )));
                }
            };
            if !value.iter().all(|&c| (b'!'..=b'~').contains(&c)) {
                return Err(Error::Request(format!(
                    "{label} cannot contain spaces, newlines or special characters."
                )));
            }
            let value = (!value.is_empty()).then(|| value.clone());
            if label == "LIB-NAME" {
                client.lib_name = value;
            } else {
                client.lib_ver = value;
            }
            Reply::ok()
        }
        b"info" => {
            arity(2, "client|info")?;
            Reply::Verbatim(Bytes::from(describe(client)))
        }
        b"help" => Reply::Array(
            [
                "CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "INFO",
                "    Return information about the current client connection.",
                "SETINFO <option> <value>",
                "    Set client meta attr. Options are:",
                "    * LIB-NAME: the client lib name.",
                "    * LIB-VER: the client lib version.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ]
            .into_iter()
            .map(|l| Reply::Status(l.into()))
            .collect(),
        ),
        _ => return Err(Error::unknown_subcommand("CLIENT", &argv[1])),
    };
    Ok(reply.into())
}

/// Redis's rule for client names: printable ASCII without spaces.
pub fn validate_name(name: &[u8]) -> Result<(), Error> {
    if name.iter().all(|&c| (b'!'..=b'~').contains(&c)) {
        Ok(())
    } else {
        Err(Error::Request(
            "Client names cannot contain spaces, newlines or special characters.".into(),
        ))
    }
}

fn describe(client: &Client) -> String {
    let text = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    format!(
        "id={} addr={} name={} db={} resp={} lib-name={} lib-ver={}\n",
        client.id,
        client.addr,
        text(&client.name),
        client.db,
        match client.proto {
            crate::protocol::Protocol::Resp2 => 2,
            crate::protocol::Protocol::Resp3 => 3,
        },
        text(&client.lib_name),
        text(&client.lib_ver),
    )
}
