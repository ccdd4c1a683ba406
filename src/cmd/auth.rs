//! `AUTH [username] password`: only the `default` user exists; its password is `requirepass`.
//! Without `requirepass` the replies are Redis's for a default user with no password. A wrong
//! password is counted (`INFO stats` `acl_access_denied_auth`), logged at most once per
//! [`LOG_EVERY`], and the connection is closed at its `max_auth_failures`-th, so one
//! connection cannot guess without end.

use std::sync::Arc;

use bytes::Bytes;

use tracing::warn;

use super::{ArgDoc, Client, Outcome, Shared, Spec};
use crate::error::Error;
use crate::protocol::Reply;
use crate::stats::{LOG_EVERY, Stats};

pub const SPEC: Spec = Spec {
    name: "auth",
    arity: -2,
    flags: &["fast", "no-auth"],
    key_pos: 0,
    group: "connection",
    summary: "Authenticates the connection",
    complexity: "O(1)",
    args: &[
        ArgDoc::optional("username", "string"),
        ArgDoc::new("password", "string"),
    ],
    no_auth: true,
    run,
};

fn run(argv: Vec<Bytes>, client: &mut Client, shared: &Arc<Shared>) -> Result<Outcome, Error> {
    let (user, pass) = match &argv[1..] {
        [pass] => (None, pass),
        [user, pass] => (Some(&user[..]), pass),
        _ => return Err(Error::Syntax),
    };
    if let Err(e) = check_credentials(shared, user, pass) {
        return failed(e, client, shared);
    }
    client.authenticated = true;
    Ok(Reply::ok().into())
}

/// What a failed `AUTH` or `HELLO ... AUTH` gets: the error, and the connection closed after
/// it once the connection has failed `max_auth_failures` times.
pub fn failed(e: Error, client: &mut Client, shared: &Shared) -> Result<Outcome, Error> {
    if e != Error::WrongPass {
        return Err(e);
    }
    Stats::bump(&shared.stats.auth_failures);
    client.auth_failures = client.auth_failures.saturating_add(1);
    let limit = shared.config.server.max_auth_failures;
    if let Some(unlogged) = shared
        .stats
        .auth_failure_log
        .allow(std::time::Instant::now())
    {
        warn!(
            "failed AUTH from {} ({} of {limit} on that connection; {unlogged} more failed \
             AUTHs in the {} s before, not logged)",
            client.addr,
            client.auth_failures,
            LOG_EVERY.as_secs()
        );
    }
    if client.auth_failures >= limit {
        return Ok(Outcome::Close(e.into()));
    }
    Err(e)
}

/// Checks a user and password, as both AUTH and `HELLO ... AUTH` do.
pub fn check_credentials(shared: &Shared, user: Option<&[u8]>, pass: &[u8]) -> Result<(), Error> {
    let is_default = user.is_none_or(|u| u == b"default");
    let expected = shared.config.server.requirepass.expose().as_bytes();
    if expected.is_empty() {
        return match user {
            None => Err(Error::Request(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?"
                    .into(),
            )),
            // The default user has no password: any password is accepted, as in Redis.
            Some(_) if is_default => Ok(()),
            Some(_) => Err(Error::WrongPass),
        };
    }
    if is_default && constant_time_eq(pass, expected) {
        Ok(())
    } else {
        Err(Error::WrongPass)
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
