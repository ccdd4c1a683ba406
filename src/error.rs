//! Errors a command can end in, by origin, and the one place they become RESP error replies.
//! Client mistakes use Redis's own wording, so clients and people recognise them; failures of
//! the masters start with `NOQUORUM`, so they are never confused with "held by someone else"
//! (which is not an error at all: it is a null reply).

use crate::locks;
use crate::protocol::Reply;
use crate::redlock::LockError;

/// Why a command produced an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The command name is not one the proxy knows.
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand {
        /// The name as sent (truncated).
        name: String,
        /// The first arguments, quoted, as Redis lists them.
        args: String,
    },
    /// A known command with an unknown subcommand.
    #[error("ERR unknown subcommand '{sub}'. Try {cmd} HELP.")]
    UnknownSubcommand {
        /// The command, upper case.
        cmd: &'static str,
        /// The subcommand as sent (truncated).
        sub: String,
    },
    /// Too many or too few arguments.
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(&'static str),
    /// An argument that must be an integer is not one, or does not fit.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// A TTL outside what the proxy grants.
    #[error("ERR invalid expire time in '{cmd}' command: ttl-ms must be between {min} and {max}")]
    InvalidTtl {
        /// The command, lower case.
        cmd: &'static str,
        /// Smallest TTL that leaves any validity.
        min: u64,
        /// The configured `max-ttl-ms`.
        max: u64,
    },
    /// Arguments in a form the command does not take.
    #[error("ERR syntax error")]
    Syntax,
    /// A request the proxy refuses for a reason it states.
    #[error("ERR {0}")]
    Request(String),
    /// A command other than AUTH/HELLO/QUIT before authenticating.
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// Wrong user or password.
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    /// HELLO with a protocol version other than 2 or 3.
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    /// EVALSHA of a script the proxy does not know: clients then send the body.
    #[error("NOSCRIPT No matching script. Please use EVAL.")]
    NoScript,
    /// A session lock of this connection whose extension failed: the client no longer holds it.
    #[error("LOCKLOST the session lock on '{0}' was lost: an extension did not reach a quorum")]
    LockLost(String),
    /// The key is in use as another kind of lock, or a semaphore of another count.
    #[error("WRONGTYPE {0}")]
    WrongKind(String),
    /// The masters could not decide.
    #[error("NOQUORUM {0}")]
    NoQuorum(#[from] LockError),
}

impl From<locks::Error> for Error {
    fn from(e: locks::Error) -> Error {
        match e {
            locks::Error::Masters(e) => Error::NoQuorum(e),
            locks::Error::LockLost { key } => {
                Error::LockLost(String::from_utf8_lossy(&key).into_owned())
            }
            locks::Error::TooManySessionLocks { max } => Error::Request(format!(
                "max number of SESSION locks per connection reached ({max}, \
                 max_session_locks_per_client): UNLOCK one first"
            )),
            locks::Error::WrongKind { key, held, asked } => Error::WrongKind(format!(
                "'{}' is held as {}, not as {}",
                String::from_utf8_lossy(&key[..key.len().min(128)]),
                describe(held),
                describe(asked)
            )),
            locks::Error::NotASemaphore { key, held } => Error::WrongKind(format!(
                "'{}' is held as {}, not as a semaphore: ZREM releases a semaphore's permits",
                String::from_utf8_lossy(&key[..key.len().min(128)]),
                describe(held)
            )),
            locks::Error::TooManyWaits { max } => Error::Request(format!(
                "max number of LOCK ... WAIT per connection reached ({max}, max_waits_per_client)"
            )),
        }
    }
}

impl Error {
    /// `ERR unknown command` with Redis's rendering of the name and first arguments.
    pub fn unknown_command(argv: &[bytes::Bytes]) -> Error {
        let mut args = String::new();
        for arg in argv.iter().skip(1) {
            if args.len() >= 128 {
                break;
            }
            let room = 128 - args.len();
            args.push('\'');
            args.push_str(&truncate(arg, room));
            args.push_str("' ");
        }
        Error::UnknownCommand {
            name: truncate(argv.first().map_or(&b""[..], |a| &a[..]), 128),
            args,
        }
    }

    /// The masters could not decide: the reply starts with `NOQUORUM`.
    pub fn is_noquorum(&self) -> bool {
        matches!(self, Error::NoQuorum(_))
    }

    /// `ERR unknown subcommand` for `cmd`.
    pub fn unknown_subcommand(cmd: &'static str, sub: &[u8]) -> Error {
        Error::UnknownSubcommand {
            cmd,
            sub: truncate(sub, 128),
        }
    }
}

impl From<Error> for Reply {
    fn from(e: Error) -> Reply {
        Reply::error(e.to_string())
    }
}

/// A kind of lock as an error names it.
fn describe(kind: locks::Kind) -> String {
    match kind {
        locks::Kind::Exclusive => "an exclusive lock".into(),
        locks::Kind::Shared => "a read lock (SHARED)".into(),
        locks::Kind::Permits(n) => format!("a semaphore of {n} permits (PERMITS {n})"),
    }
}

fn truncate(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn unknown_command_matches_redis_wording() {
        let argv: Vec<Bytes> = ["FOO", "a", "b"].into_iter().map(Bytes::from).collect();
        assert_eq!(
            Error::unknown_command(&argv).to_string(),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        let argv = vec![Bytes::from("x")];
        assert_eq!(
            Error::unknown_command(&argv).to_string(),
            "ERR unknown command 'x', with args beginning with: "
        );
    }

    #[test]
    fn a_kind_conflict_names_both_kinds() {
        let e: Error = locks::Error::WrongKind {
            key: Bytes::from("jobs"),
            held: locks::Kind::Permits(4),
            asked: locks::Kind::Permits(2),
        }
        .into();
        assert_eq!(
            e.to_string(),
            "WRONGTYPE 'jobs' is held as a semaphore of 4 permits (PERMITS 4), \
             not as a semaphore of 2 permits (PERMITS 2)"
        );
    }

    #[test]
    fn lock_errors_keep_their_prefix() {
        let e: Error = LockError::NoQuorum {
            answered: 1,
            needed: 2,
            total: 3,
        }
        .into();
        assert_eq!(e.to_string(), "NOQUORUM 1 of 3 masters answered, 2 needed");
    }
}
