//! `HELLO [protover [AUTH username password] [SETNAME clientname]]`: switch protocol (2 or 3),
//! optionally authenticate and name the connection, and describe the server as a map — clients
//! such as redis-py check its `proto` field.

use std::sync::Arc;

use bytes::Bytes;

use super::auth::{check_credentials, failed};
use super::client::validate_name;
use super::{ArgDoc, Client, Outcome, Shared, Spec, parse_int};
use crate::error::Error;
use crate::protocol::{Protocol, Reply};

pub const SPEC: Spec = Spec {
    name: "hello",
    arity: -1,
    flags: &["fast", "no-auth"],
    key_pos: 0,
    group: "connection",
    summary: "Switches the protocol, optionally authenticates, and describes the server",
    complexity: "O(1)",
    args: &[
        ArgDoc::optional("protover", "integer"),
        ArgDoc::optional("AUTH username password", "string"),
        ArgDoc::optional("SETNAME clientname", "string"),
    ],
    no_auth: true,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let mut proto = client.proto;
    if let Some(ver) = argv.get(1) {
        proto = match parse_int(ver) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Err(Error::NoProto),
            Err(_) => {
                return Err(Error::Request(
                    "Protocol version is not an integer or out of range".into(),
                ));
            }
        };
    }
    let mut credentials = None;
    let mut name = None;
    let mut i = 2;
    while i < argv.len() {
        let left = argv.len() - i - 1;
        if argv[i].eq_ignore_ascii_case(b"AUTH") && left >= 2 {
            credentials = Some((&argv[i + 1], &argv[i + 2]));
            i += 3;
        } else if argv[i].eq_ignore_ascii_case(b"SETNAME") && left >= 1 {
            name = Some(&argv[i + 1]);
            i += 2;
        } else {
            return Err(Error::Request(format!(
                "Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&argv[i])
            )));
        }
    }
    if let Some((user, pass)) = credentials {
        if let Err(e) = check_credentials(shared, Some(user), pass) {
            return failed(e, client, shared);
        }
        client.authenticated = true;
    }
    if !client.authenticated {
        return Err(Error::NoAuth);
    }
    if let Some(name) = name {
        validate_name(name)?;
        client.name = (!name.is_empty()).then(|| name.clone());
    }
    client.proto = proto;
    let proto_num = match proto {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    Ok(Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redlock-proxy")),
        (
            Reply::bulk("version"),
            Reply::bulk(env!("CARGO_PKG_VERSION")),
        ),
        (Reply::bulk("proto"), Reply::Integer(proto_num)),
        (
            Reply::bulk("id"),
            Reply::Integer(i64::try_from(client.id).unwrap_or(i64::MAX)),
        ),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ])
    .into())
}
