//! `CONFIG GET pattern ...`: benign answers for the parameters tools ask about (redis-benchmark
//! reads `save` and `appendonly`). The proxy itself is configured by its file and flags, so
//! `CONFIG SET` is refused with a message that says so.

use std::sync::Arc;

use bytes::Bytes;

use super::select::DATABASES;
use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;

pub const SPEC: Spec = Spec {
    name: "config",
    arity: -2,
    flags: &["admin", "loading", "stale"],
    key_pos: 0,
    group: "server",
    summary: "CONFIG GET answers for common parameters; the proxy is configured by its file",
    complexity: "O(N) where N is the number of parameters",
    args: &[
        ArgDoc::new("subcommand", "string"),
        ArgDoc::many("parameter", "string", true),
    ],
    no_auth: false,
    run,
};

fn run(argv: Vec<Bytes>, _: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let sub = argv[1].to_ascii_lowercase();
    match &sub[..] {
        b"get" => {
            if argv.len() < 3 {
                return Err(Error::WrongArity("config|get"));
            }
            let params = parameters(shared);
            let pairs = params
                .into_iter()
                .filter(|(name, _)| {
                    argv[2..]
                        .iter()
                        .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
                })
                .map(|(name, value)| (Reply::bulk(name), Reply::bulk(value)))
                .collect();
            Ok(Reply::Map(pairs).into())
        }
        b"set" => Err(Error::Request(
            "CONFIG SET is not supported: the proxy is configured by its config file and flags"
                .into(),
        )),
        b"resetstat" => Ok(Reply::ok().into()),
        _ => Err(Error::unknown_subcommand("CONFIG", &argv[1])),
    }
}

fn parameters(shared: &Shared) -> Vec<(&'static str, String)> {
    vec![
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("databases", DATABASES.to_string()),
        ("maxclients", shared.config.server.max_clients.to_string()),
        (
            "timeout",
            (shared.config.server.idle_timeout_ms / 1000).to_string(),
        ),
        (
            "tcp-keepalive",
            shared.config.server.tcp_keepalive_secs.to_string(),
        ),
        ("port", shared.port.to_string()),
    ]
}

/// Redis-style glob: `*` any run, `?` any byte; everything else literal.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match(b"save", b"save"));
        assert!(glob_match(b"*", b"appendonly"));
        assert!(glob_match(b"app*", b"appendonly"));
        assert!(glob_match(b"*only", b"appendonly"));
        assert!(glob_match(b"s?ve", b"save"));
        assert!(glob_match(b"*a*e*", b"save"));
        assert!(!glob_match(b"sav", b"save"));
        assert!(!glob_match(b"save?", b"save"));
        assert!(glob_match(b"", b""));
    }
}
